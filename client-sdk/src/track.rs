//! The driver of one rendition: a tokio task that owns a [`Scheduler`] and
//! executes its actions. Thin glue: every decision is the scheduler's; this
//! task moves bytes, verifies them against the signed manifest, stores them
//! and reports outcomes.
//!
//! Player requests, peers coming and going (from [`crate::peers`]), HAVE
//! notices and the pieces and ends of the transfers it spawned reach the
//! task as [`TrackMsg`]s on one bounded channel, every one of them sent
//! with `send().await`: none is ever dropped. What is state rather than
//! news (the player's reported playhead, the swarm's size) is a `watch`
//! value, of which the newest always arrives however busy the queue is.
//! The session's cancellation stops the task. Between events the task
//! sleeps until the instant the scheduler asks to be polled again
//! ([`Scheduler::poll_timeout`]); time for the scheduler is milliseconds
//! since the task started.
//!
//! Live renditions (manifest not final at `open`) have a second, small task,
//! [`crate::live::follow`], that appends verified chunks to the rendition's
//! manifest and nudges this one. The track gives the scheduler (in
//! [`Mode::Live`]) the listed segments from the playhead to a little past
//! its look-ahead, and forgets manifest entries far behind the playhead,
//! so an event of any length takes bounded memory.
//!
//! Invariants:
//! - Only bytes that verified against the manifest leave this task (to the
//!   player, the store, or HAVE notices).
//! - A peer transfer is a series of ranged requests (`PEER_PIECE` bytes
//!   each), so its progress is known and, when the scheduler cancels it to
//!   complete it from the CDN, the bytes received so far are kept as the
//!   prefix of that completion.
//! - Waiters per segment and transfers in flight are bounded (the latter by
//!   the scheduler's configuration).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use loaves_proto::names::RenditionName;
use loaves_proto::pb::segment_response_header::Status;
use loaves_wire::peerwire::{self, Limits};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::events::Event;
use crate::lock;
use crate::scheduler::{
    Action, AnyPolicy, ByteRange, CdnOnly, DeadlineFirst, Millis, Mode, Outcome, PeerId, PeerInfo,
    Scheduler, SchedulerConfig, Source, TransferId,
};
use crate::session::presentation::segment_file;
use crate::session::{Rendition, Shared};
use crate::stats::Counters;
use crate::store::SegmentKey;

/// Bytes asked of a peer per request of a peer transfer.
const PEER_PIECE: u64 = 64 * 1024;
/// Most player requests waiting for one segment.
const MAX_WAITERS: usize = 16;
/// Depth of a track's message queue.
const QUEUE: usize = 512;
/// How long a player request waits for its segment.
pub(crate) const WANT_TIMEOUT: Duration = Duration::from_secs(30);
/// After an explicit playhead report, player requests stop moving the
/// playhead for this long.
const EXPLICIT_PLAYHEAD_HOLD: Duration = Duration::from_secs(3);
/// Live: segments kept in the manifest behind the playhead (or behind the
/// live edge for a rendition nobody plays). Older entries are forgotten so
/// an event of many hours takes bounded memory; the store may still hold
/// and serve their bytes.
pub(crate) const LIVE_HISTORY: u64 = 120;
/// Live: segments past the playhead given to the scheduler (beyond its
/// look-ahead window they are not needed yet; they are added as it moves).
const LIVE_AHEAD_SLACK: u64 = 4;
/// Longest sleep between polls when the scheduler asks for none (a
/// backstop: every event that can change a decision polls at once).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Why a player request for a segment failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WantError {
    #[error("no such segment")]
    NotFound,
    #[error("timed out waiting for the segment")]
    Timeout,
    #[error("too many requests for the segment")]
    Busy,
    #[error("session closed")]
    Closed,
}

/// A connected peer, as the track knows it.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub(crate) connection: quinn::Connection,
    /// Hex of its key, for events.
    pub(crate) name: String,
    pub(crate) cross_isp: bool,
    pub(crate) cross_region: bool,
    /// Generation of the session token this viewer last presented on the
    /// connection (its hello, or a refresh riding on a request): when the
    /// session's token is newer, the next request carries it.
    pub(crate) presented: Arc<AtomicU64>,
}

/// Where the player says it is (see [`crate::Session::set_playhead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Playhead {
    pub(crate) sequence: u64,
    pub(crate) offset_ms: u64,
    pub(crate) playing: bool,
}

/// What a track task is told. Every message is sent with `send().await`.
#[derive(Debug)]
pub(crate) enum TrackMsg {
    Want {
        sequence: u64,
        reply: oneshot::Sender<Result<Bytes, WantError>>,
    },
    PeerUp {
        peer: PeerId,
        info: PeerInfo,
        link: PeerLink,
    },
    PeerHas {
        peer: PeerId,
        sequences: Vec<u64>,
    },
    PeerDown {
        peer: PeerId,
    },
    Piece {
        transfer: TransferId,
        bytes: Bytes,
    },
    Done {
        transfer: TransferId,
        end: TransferEnd,
    },
}

/// A handle to a track task.
#[derive(Debug, Clone)]
pub(crate) struct TrackHandle {
    tx: mpsc::Sender<TrackMsg>,
    /// The player's reported playhead (newest wins).
    playhead: Arc<watch::Sender<Option<Playhead>>>,
    /// Viewers in the swarm, as the tracker counts them (newest wins).
    swarm_size: Arc<watch::Sender<Option<usize>>>,
    /// "Look again": the live manifest grew.
    nudge: Arc<Notify>,
}

impl TrackHandle {
    /// Sends, waiting for room; false once the track has ended.
    pub(crate) async fn send(&self, msg: TrackMsg) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// The player's position (state: the newest report always arrives).
    pub(crate) fn set_playhead(&self, playhead: Playhead) {
        self.playhead.send_replace(Some(playhead));
    }

    /// The swarm's size from the tracker's latest reply.
    pub(crate) fn set_swarm_size(&self, viewers: usize) {
        self.swarm_size.send_replace(Some(viewers));
    }

    /// Something changed that the track should look at (the live manifest
    /// grew); nudges coalesce.
    pub(crate) fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The verified bytes of segment `sequence`, through the scheduler.
    pub(crate) async fn want(&self, sequence: u64) -> Result<Bytes, WantError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(TrackMsg::Want { sequence, reply }).await {
            return Err(WantError::Closed);
        }
        match tokio::time::timeout(WANT_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WantError::Closed),
            Err(_) => Err(WantError::Timeout),
        }
    }
}

struct Transfer {
    sequence: u64,
    source: Source,
    range: ByteRange,
    started: Instant,
    buffer: BytesMut,
    task: AbortHandle,
}

struct Track {
    shared: Arc<Shared>,
    rendition: Arc<Rendition>,
    scheduler: Scheduler<AnyPolicy>,
    epoch: Instant,
    active: bool,
    transfers: HashMap<TransferId, Transfer>,
    /// Prefixes kept from cancelled peer transfers: (peer, bytes).
    partials: HashMap<u64, (PeerId, Bytes)>,
    waiters: HashMap<u64, Vec<oneshot::Sender<Result<Bytes, WantError>>>>,
    peers: HashMap<PeerId, PeerLink>,
    tx: mpsc::Sender<TrackMsg>,
    explicit_playhead_at: Option<Instant>,
    /// The playhead last given to the scheduler.
    playhead: u64,
    limits: Arc<Limits>,
    /// Live: segments are given to the scheduler as the manifest grows.
    live: bool,
    /// Live: the next sequence not yet given to the scheduler.
    next_add: u64,
    /// Live: how far past the playhead segments are given to the scheduler.
    live_ahead: u64,
}

/// Starts the driver task of `rendition`.
pub(crate) fn spawn(shared: Arc<Shared>, rendition: Arc<Rendition>) -> TrackHandle {
    let (tx, rx) = mpsc::channel(QUEUE);
    let config = &shared.config;
    let speed = config.playback_speed;
    let typical_ms = (f64::from(rendition.typical_ms()) / speed).max(1.0);
    let lookahead =
        ((config.buffer_target.as_secs_f64() * 1000.0 / speed) / typical_ms).ceil() as u64;
    let lookahead = lookahead.clamp(1, 64);
    let scheduler_config = SchedulerConfig {
        mode: if rendition.live {
            Mode::Live
        } else {
            Mode::Vod
        },
        lookahead_segments: lookahead,
        max_peers: config.max_peers,
        seed: u64::from_le_bytes(
            shared.identity.public_key().as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ),
        ..SchedulerConfig::default()
    };
    let policy = if config.p2p {
        AnyPolicy::DeadlineFirst(DeadlineFirst::default())
    } else {
        AnyPolicy::CdnOnly(CdnOnly)
    };
    let mut scheduler = Scheduler::new(scheduler_config, policy);
    // VOD: the whole book at once. Live: segments are added near the
    // playhead as the manifest grows (`sync_live`).
    if !rendition.live {
        for segment in rendition.manifest().segments() {
            scheduler.add_segment(
                segment.sequence,
                segment.size,
                scaled(segment.duration_ms, speed),
            );
        }
    }
    let live = rendition.live;
    let handle = TrackHandle {
        tx: tx.clone(),
        playhead: Arc::new(watch::channel(None).0),
        swarm_size: Arc::new(watch::channel(None).0),
        nudge: Arc::new(Notify::new()),
    };
    let track = Track {
        shared: shared.clone(),
        rendition,
        scheduler,
        epoch: Instant::now(),
        active: false,
        transfers: HashMap::new(),
        partials: HashMap::new(),
        waiters: HashMap::new(),
        peers: HashMap::new(),
        tx,
        explicit_playhead_at: None,
        playhead: 0,
        limits: Arc::new(Limits::default()),
        live,
        next_add: 0,
        live_ahead: lookahead + LIVE_AHEAD_SLACK,
    };
    shared.spawn(track.run(rx, handle.clone()));
    handle
}

impl Track {
    fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// The instant of a scheduler time.
    fn instant(&self, at: Millis) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_millis(at.0))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<TrackMsg>, handle: TrackHandle) {
        let mut playhead = handle.playhead.subscribe();
        let mut swarm_size = handle.swarm_size.subscribe();
        let nudge = handle.nudge.clone();
        // The handle's senders stay with the session's handles, not here:
        // the task ends on the cancellation, never by waiting for them.
        drop(handle);
        let cancel = self.shared.cancel.clone();
        loop {
            let wake = self
                .active
                .then(|| self.scheduler.poll_timeout())
                .flatten()
                .map(|at| self.instant(at))
                .unwrap_or_else(|| tokio::time::Instant::now() + IDLE_POLL);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                Ok(()) = playhead.changed() => {
                    let reported = *playhead.borrow_and_update();
                    if let Some(reported) = reported {
                        self.reported_playhead(reported);
                    }
                }
                Ok(()) = swarm_size.changed() => {
                    let viewers = *swarm_size.borrow_and_update();
                    if let Some(viewers) = viewers {
                        self.scheduler.set_swarm_size(viewers);
                    }
                }
                () = nudge.notified() => self.sync_live(),
                () = tokio::time::sleep_until(wake) => self.sync_live(),
            }
            if self.active {
                let actions = self.scheduler.poll(self.now());
                self.execute(actions);
            }
        }
        for transfer in self.transfers.values() {
            transfer.task.abort();
        }
        for link in self.peers.values() {
            link.connection
                .close(peerwire::close_code::DONE.into(), b"bye");
        }
        for (_, waiters) in self.waiters.drain() {
            for waiter in waiters {
                let _ = waiter.send(Err(WantError::Closed));
            }
        }
    }

    /// The player reported where it is.
    fn reported_playhead(&mut self, reported: Playhead) {
        let now = self.now();
        self.active = true;
        self.explicit_playhead_at = Some(Instant::now());
        self.move_playhead(reported.sequence);
        self.scheduler
            .set_playhead(now, reported.sequence, reported.offset_ms, reported.playing);
        self.sync_live();
    }

    fn publish_stats(&self) {
        lock(&self.shared.scheduler_stats)
            .insert(self.rendition.name.clone(), self.scheduler.stats());
    }

    fn handle(&mut self, msg: TrackMsg) {
        let now = self.now();
        match msg {
            TrackMsg::Want { sequence, reply } => self.want(sequence, reply),
            TrackMsg::PeerUp { peer, info, link } => {
                self.scheduler.add_peer(peer, info);
                if let Some(old) = self.peers.insert(peer, link) {
                    old.connection
                        .close(peerwire::close_code::DONE.into(), b"replaced");
                }
            }
            TrackMsg::PeerHas { peer, sequences } => {
                if self.peers.contains_key(&peer) {
                    for sequence in sequences {
                        self.scheduler.peer_has(peer, sequence);
                    }
                }
            }
            TrackMsg::PeerDown { peer } => {
                self.peers.remove(&peer);
                self.scheduler.remove_peer(peer);
            }
            TrackMsg::Piece { transfer, bytes } => {
                if let Some(t) = self.transfers.get_mut(&transfer) {
                    // The source cannot send more than the range asked.
                    if (t.buffer.len() + bytes.len()) as u64 <= t.range.len() {
                        t.buffer.extend_from_slice(&bytes);
                        let received = t.buffer.len() as u64;
                        self.scheduler.on_progress(now, transfer, received);
                    }
                }
            }
            TrackMsg::Done { transfer, end } => self.finish(transfer, end),
        }
    }

    /// Live: gives the scheduler the listed segments from the playhead to
    /// `live_ahead` past it, and forgets what is far behind (manifest
    /// entries, kept transfer prefixes) so memory stays bounded however
    /// long the event runs.
    fn sync_live(&mut self) {
        if !self.live {
            return;
        }
        let speed = self.shared.config.playback_speed;
        let mut fresh = Vec::new();
        let (oldest, newest) = {
            let manifest = self.rendition.manifest();
            let oldest = manifest.segments().next().map(|s| s.sequence);
            let newest = manifest.segments().last().map(|s| s.sequence);
            if self.active {
                let from = self.next_add.max(self.playhead);
                let to = self.playhead.saturating_add(self.live_ahead);
                for sequence in from..to {
                    let Some(info) = manifest.segment(sequence) else {
                        break;
                    };
                    fresh.push((sequence, info.size, scaled(info.duration_ms, speed)));
                }
            }
            (oldest, newest)
        };
        if let Some(&(last, _, _)) = fresh.last() {
            self.next_add = last + 1;
        }
        for (sequence, size, duration) in fresh {
            self.scheduler.add_segment(sequence, size, duration);
        }
        let Some(newest) = newest else { return };
        let anchor = if self.active {
            self.playhead.min(newest)
        } else {
            newest
        };
        let floor = anchor.saturating_sub(LIVE_HISTORY);
        if oldest.is_some_and(|oldest| oldest < floor) {
            self.rendition.manifest_mut().forget_before(floor);
        }
        self.partials.retain(|sequence, _| *sequence >= floor);
        self.waiters.retain(|_, waiters| {
            waiters.retain(|w| !w.is_closed());
            !waiters.is_empty()
        });
    }

    fn want(&mut self, sequence: u64, reply: oneshot::Sender<Result<Bytes, WantError>>) {
        let key = SegmentKey {
            rendition: self.rendition.name.clone(),
            sequence,
        };
        // Only verified bytes are stored: a held segment is served even if
        // a live manifest has forgotten its entry since.
        if let Some(bytes) = lock(&self.shared.store).get(&key) {
            let _ = reply.send(Ok(bytes));
            return;
        }
        let Some((size, duration_ms)) = self
            .rendition
            .manifest()
            .segment(sequence)
            .map(|info| (info.size, info.duration_ms))
        else {
            let _ = reply.send(Err(WantError::NotFound));
            return;
        };
        self.active = true;
        // A segment behind the playhead may have left the scheduler's book
        // (seek back) or the store (eviction): make it wanted again.
        let duration = scaled(duration_ms, self.shared.config.playback_speed);
        self.scheduler.add_segment(sequence, size, duration);
        if self.scheduler.is_held(sequence) {
            self.scheduler.forget_held(sequence);
        }
        let explicit = self
            .explicit_playhead_at
            .is_some_and(|at| at.elapsed() < EXPLICIT_PLAYHEAD_HOLD);
        if !explicit || sequence < self.playhead {
            // The player waits for this segment now (or seeked back to it):
            // it is the playhead.
            let now = self.now();
            self.scheduler.set_playhead(now, sequence, 0, true);
            self.move_playhead(sequence);
        }
        let waiters = self.waiters.entry(sequence).or_default();
        waiters.retain(|w| !w.is_closed());
        if waiters.len() >= MAX_WAITERS {
            let _ = reply.send(Err(WantError::Busy));
        } else {
            waiters.push(reply);
        }
    }

    /// Records the playhead; a jump back (seek) makes live segments from
    /// there on be given to the scheduler again.
    fn move_playhead(&mut self, sequence: u64) {
        if sequence < self.playhead {
            self.next_add = self.next_add.min(sequence);
        }
        self.playhead = sequence;
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Fetch {
                    transfer,
                    sequence,
                    source,
                    range,
                } => self.start(transfer, sequence, source, range),
                Action::Cancel { transfer } => {
                    if let Some(t) = self.transfers.remove(&transfer) {
                        t.task.abort();
                        if let Some(peer) = t.source.peer()
                            && !t.buffer.is_empty()
                        {
                            self.partials.insert(t.sequence, (peer, t.buffer.freeze()));
                        }
                    }
                }
                Action::DropPeer { peer, reason } => {
                    if let Some(link) = self.peers.remove(&peer) {
                        // A slow peer may be offered again by the tracker
                        // and reconnect; a misbehaving one is refused.
                        let code = if reason.is_misbehaviour() {
                            peerwire::close_code::FORBIDDEN
                        } else {
                            peerwire::close_code::DONE
                        };
                        link.connection.close(code.into(), b"dropped");
                        Counters::add(&self.shared.counters.banned, 1);
                        self.shared.emit(Event::PeerBanned {
                            rendition: self.rendition.name.clone(),
                            peer: link.name,
                            reason,
                        });
                    }
                    self.scheduler.remove_peer(peer);
                }
            }
        }
        self.publish_stats();
    }

    fn start(&mut self, transfer: TransferId, sequence: u64, source: Source, range: ByteRange) {
        let tx = self.tx.clone();
        let task = match source {
            Source::Cdn => {
                let shared = self.shared.clone();
                let path = format!(
                    "{}/{}/{}",
                    shared.title,
                    self.rendition.name,
                    segment_file(sequence)
                );
                let size = self
                    .rendition
                    .manifest()
                    .segment(sequence)
                    .map_or(0, |s| s.size);
                let asked = (range.start > 0 || range.end < size).then_some(range);
                self.shared.spawn(async move {
                    let end = match shared.cdn.fetch(&path, asked).await {
                        Ok(bytes) => match tx.send(TrackMsg::Piece { transfer, bytes }).await {
                            Ok(()) => TransferEnd::Complete,
                            Err(_) => TransferEnd::Failed,
                        },
                        Err(_) => TransferEnd::Failed,
                    };
                    let _ = tx.send(TrackMsg::Done { transfer, end }).await;
                })
            }
            Source::Peer(peer) | Source::Seed(peer) => {
                let link = self.peers.get(&peer).map(|l| PeerRequester {
                    connection: l.connection.clone(),
                    presented: l.presented.clone(),
                });
                let rendition = self.rendition.name.clone();
                let limits = self.limits.clone();
                let shared = self.shared.clone();
                self.shared.spawn(async move {
                    let end = match link {
                        Some(link) => {
                            peer_transfer(
                                &shared,
                                &link,
                                &rendition,
                                sequence,
                                range.start..range.end,
                                &limits,
                                transfer,
                                &tx,
                            )
                            .await
                        }
                        None => TransferEnd::Failed,
                    };
                    let _ = tx.send(TrackMsg::Done { transfer, end }).await;
                })
            }
        };
        self.transfers.insert(
            transfer,
            Transfer {
                sequence,
                source,
                range,
                started: Instant::now(),
                buffer: BytesMut::new(),
                task: task.abort_handle(),
            },
        );
    }

    fn finish(&mut self, id: TransferId, end: TransferEnd) {
        let Some(transfer) = self.transfers.remove(&id) else {
            return;
        };
        let now = self.now();
        let failure = match end {
            TransferEnd::Complete if transfer.buffer.len() as u64 == transfer.range.len() => None,
            TransferEnd::Complete | TransferEnd::Failed => Some(Outcome::Failed),
            TransferEnd::Busy => Some(Outcome::Busy),
            TransferEnd::NotHeld => Some(Outcome::NotHeld),
        };
        if let Some(outcome) = failure {
            let actions = self.scheduler.on_complete(now, id, outcome);
            self.execute(actions);
            return;
        }
        // Assemble: a range completion appends to the kept prefix.
        let mut prefix_peer = None;
        let bytes = if transfer.range.start > 0 {
            match self.partials.remove(&transfer.sequence) {
                Some((peer, prefix)) if prefix.len() as u64 >= transfer.range.start => {
                    prefix_peer = Some(peer);
                    let mut whole = BytesMut::with_capacity(
                        transfer.range.start as usize + transfer.buffer.len(),
                    );
                    whole.extend_from_slice(&prefix[..transfer.range.start as usize]);
                    whole.extend_from_slice(&transfer.buffer);
                    whole.freeze()
                }
                _ => {
                    let actions = self.scheduler.on_complete(now, id, Outcome::Failed);
                    self.execute(actions);
                    return;
                }
            }
        } else {
            transfer.buffer.freeze()
        };
        let sequence = transfer.sequence;
        let verified = self
            .rendition
            .manifest()
            .verify_segment(sequence, &bytes)
            .is_ok();
        if !verified {
            self.shared
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
            self.shared.emit(Event::SegmentRejected {
                rendition: self.rendition.name.clone(),
                sequence,
                source: transfer.source,
            });
            let actions = self.scheduler.on_complete(now, id, Outcome::Corrupt);
            self.execute(actions);
            return;
        }
        // Locality accounting of the peer bytes.
        let peer_bytes = [
            (transfer.source.peer(), transfer.range.len()),
            (prefix_peer, transfer.range.start),
        ];
        for (peer, n) in peer_bytes {
            if let Some(link) = peer.and_then(|p| self.peers.get(&p)) {
                if link.cross_isp {
                    self.shared
                        .counters
                        .cross_isp
                        .fetch_add(n, Ordering::Relaxed);
                }
                if link.cross_region {
                    self.shared
                        .counters
                        .cross_region
                        .fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        self.partials.remove(&sequence);
        self.shared
            .store_verified(&self.rendition.name, sequence, bytes.clone());
        // Counters before the bytes: whoever receives them may read the
        // session's stats next and must find this segment counted.
        let actions = self.scheduler.on_complete(now, id, Outcome::Verified);
        self.publish_stats();
        if let Some(waiters) = self.waiters.remove(&sequence) {
            for waiter in waiters {
                let _ = waiter.send(Ok(bytes.clone()));
            }
        }
        self.shared.emit(Event::SegmentDelivered {
            rendition: self.rendition.name.clone(),
            sequence,
            source: transfer.source,
            bytes: bytes.len() as u64,
            elapsed: transfer.started.elapsed(),
        });
        self.execute(actions);
    }
}

/// The connection a peer transfer asks on, and what this viewer presented
/// on it.
struct PeerRequester {
    connection: quinn::Connection,
    presented: Arc<AtomicU64>,
}

/// A peer transfer: `range` in pieces of [`PEER_PIECE`], each reported as it
/// arrives. True when every piece arrived. The session's emulated link (if
/// any) delays each piece request and paces each piece's bytes. When the
/// session's token is newer than the one presented on the connection, the
/// next request carries it (the uploader re-checks the requester's token on
/// every request, and the one of the hello expires).
#[allow(clippy::too_many_arguments)]
async fn peer_transfer(
    shared: &Shared,
    link: &PeerRequester,
    rendition: &RenditionName,
    sequence: u64,
    range: Range<u64>,
    limits: &Limits,
    transfer: TransferId,
    tx: &mpsc::Sender<TrackMsg>,
) -> TransferEnd {
    let emulated = shared.cdn.link();
    let mut at = range.start;
    while at < range.end {
        let end = (at + PEER_PIECE).min(range.end);
        emulated.request_delay().await;
        let credential = shared.credentials.current();
        let refresh = (credential.generation > link.presented.load(Ordering::Relaxed))
            .then(|| credential.token.to_vec());
        let refreshing = refresh.is_some();
        let request =
            peerwire::segment_request(rendition.as_str(), sequence, Some(at..end), refresh);
        match peerwire::request(&link.connection, &request, limits).await {
            Ok(bytes) if bytes.len() as u64 == end - at => {
                if refreshing {
                    link.presented
                        .fetch_max(credential.generation, Ordering::Relaxed);
                }
                emulated.pace(bytes.len()).await;
                if tx.send(TrackMsg::Piece { transfer, bytes }).await.is_err() {
                    return TransferEnd::Failed;
                }
            }
            Err(peerwire::PeerWireError::Refused { status, .. }) => {
                return match status {
                    Status::Busy => TransferEnd::Busy,
                    Status::NotFound => TransferEnd::NotHeld,
                    _ => TransferEnd::Failed,
                };
            }
            _ => return TransferEnd::Failed,
        }
        at = end;
    }
    TransferEnd::Complete
}

/// How a transfer task ended, as its source answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEnd {
    /// Every byte asked for arrived (verification comes next).
    Complete,
    /// Connection, timeout, protocol or HTTP failure.
    Failed,
    /// The peer is at capacity.
    Busy,
    /// The peer does not hold the segment.
    NotHeld,
}

/// A media duration in scheduler milliseconds (wall time at the playback
/// speed), at least 1.
fn scaled(duration_ms: u32, speed: f64) -> u32 {
    (f64::from(duration_ms) / speed).round().max(1.0) as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn handle(queue: usize) -> (TrackHandle, mpsc::Receiver<TrackMsg>) {
        let (tx, rx) = mpsc::channel(queue);
        let handle = TrackHandle {
            tx,
            playhead: Arc::new(watch::channel(None).0),
            swarm_size: Arc::new(watch::channel(None).0),
            nudge: Arc::new(Notify::new()),
        };
        (handle, rx)
    }

    /// With the queue full, a `PeerDown` waits for room instead of being
    /// dropped (a peer that is gone must never stay a candidate), and the
    /// playhead and the swarm's size, which are state, keep only their
    /// newest values however many reports come in.
    #[tokio::test]
    async fn nothing_is_dropped_when_the_queue_is_full() {
        let (handle, mut rx) = handle(1);
        let mut playhead = handle.playhead.subscribe();
        let mut swarm_size = handle.swarm_size.subscribe();
        assert!(
            handle
                .send(TrackMsg::PeerHas {
                    peer: PeerId(1),
                    sequences: vec![3],
                })
                .await
        );
        let sender = handle.clone();
        let down =
            tokio::spawn(async move { sender.send(TrackMsg::PeerDown { peer: PeerId(7) }).await });
        for sequence in 0..10_000 {
            handle.set_playhead(Playhead {
                sequence,
                offset_ms: 0,
                playing: true,
            });
            handle.set_swarm_size(sequence as usize);
        }
        tokio::task::yield_now().await;
        assert!(!down.is_finished(), "the PeerDown waits for room");
        assert!(matches!(rx.recv().await, Some(TrackMsg::PeerHas { .. })));
        assert!(down.await.unwrap());
        assert!(matches!(
            rx.recv().await,
            Some(TrackMsg::PeerDown { peer: PeerId(7) })
        ));
        assert!(playhead.has_changed().unwrap());
        assert_eq!(playhead.borrow_and_update().unwrap().sequence, 9_999);
        assert_eq!(*swarm_size.borrow_and_update(), Some(9_999));
        // A track that has ended says so instead of losing the message.
        drop(rx);
        assert!(!handle.send(TrackMsg::PeerDown { peer: PeerId(8) }).await);
    }
}
