//! The driver of one rendition: a tokio task that owns a [`Scheduler`] and
//! executes its actions. Thin glue: every decision is the scheduler's; this
//! task moves bytes, verifies them against the signed manifest, stores them
//! and reports outcomes.
//!
//! Everything reaches the task as a [`TrackMsg`] on one bounded channel:
//! requests from the player endpoint, playhead reports, peers coming and
//! going (from [`crate::peers`]), HAVE notices, and the pieces and ends of
//! the transfers it spawned. A 50 ms tick drives `poll` when nothing else
//! happens. Time for the scheduler is milliseconds since the task started.
//!
//! Live renditions (manifest not final at `open`) have a second, small task,
//! [`follow_live`], that re-reads the manifest's new bytes (a byte range
//! from what it already consumed) every half segment, verifies each new
//! chunk and appends it to the rendition's shared manifest. The track gives
//! the scheduler (in [`Mode::Live`]) the listed segments from the playhead
//! to a little past its look-ahead on every tick, and forgets manifest
//! entries far behind the playhead, so an event of any length takes bounded
//! memory.
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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::pb::segment_response_header::Status;
use loaves_proto::peerwire::{self, Limits};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::license::{LicenseClient, LicensedSession};
use crate::scheduler::{
    Action, AnyPolicy, ByteRange, CdnOnly, DeadlineFirst, Millis, Mode, Outcome, PeerId, PeerInfo,
    Scheduler, SchedulerConfig, Source,
};
use crate::session::{Event, Rendition, Shared, lock};
use crate::store::SegmentKey;
use loaves_proto::manifest::verify_chunk;

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
/// Live manifest polling: bounds of the interval (half a segment).
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(5);
/// Live manifest polling: longest delay after repeated failures.
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(15);

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
}

/// What a track task is told.
#[derive(Debug)]
pub(crate) enum TrackMsg {
    Want {
        sequence: u64,
        reply: oneshot::Sender<Result<Bytes, WantError>>,
    },
    Playhead {
        sequence: u64,
        offset_ms: u64,
        playing: bool,
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
    /// Viewers in the swarm, as the tracker counts them.
    SwarmSize {
        viewers: usize,
    },
    Piece {
        transfer: crate::scheduler::TransferId,
        bytes: Bytes,
    },
    Done {
        transfer: crate::scheduler::TransferId,
        end: TransferEnd,
    },
    /// The live manifest grew (a nudge: the track also looks on every tick).
    ManifestGrew,
    Tick,
    Stop,
}

/// A handle to a track task.
#[derive(Debug, Clone)]
pub(crate) struct TrackHandle {
    tx: mpsc::Sender<TrackMsg>,
}

impl TrackHandle {
    /// Sends without waiting; a full queue drops the message (every message
    /// sent this way is advisory or repeated).
    pub(crate) fn send(&self, msg: TrackMsg) {
        let _ = self.tx.try_send(msg);
    }

    /// Sends, waiting for room.
    pub(crate) async fn send_wait(&self, msg: TrackMsg) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// The verified bytes of segment `sequence`, through the scheduler.
    pub(crate) async fn want(&self, sequence: u64) -> Result<Bytes, WantError> {
        let (reply, rx) = oneshot::channel();
        if !self.send_wait(TrackMsg::Want { sequence, reply }).await {
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
    transfers: HashMap<crate::scheduler::TransferId, Transfer>,
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
    let options = &shared.options;
    let speed = options.playback_speed;
    let typical_ms = (f64::from(rendition.typical_ms()) / speed).max(1.0);
    let lookahead =
        ((options.buffer_target.as_secs_f64() * 1000.0 / speed) / typical_ms).ceil() as u64;
    let lookahead = lookahead.clamp(1, 64);
    let config = SchedulerConfig {
        mode: if rendition.live {
            Mode::Live
        } else {
            Mode::Vod
        },
        lookahead_segments: lookahead,
        max_peers: options.max_peers,
        seed: u64::from_le_bytes(
            shared.identity.public_key().as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ),
        ..SchedulerConfig::default()
    };
    let policy = if options.p2p {
        AnyPolicy::DeadlineFirst(DeadlineFirst::default())
    } else {
        AnyPolicy::CdnOnly(CdnOnly)
    };
    let mut scheduler = Scheduler::new(config, policy);
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
    let track = Track {
        shared,
        rendition,
        scheduler,
        epoch: Instant::now(),
        active: false,
        transfers: HashMap::new(),
        partials: HashMap::new(),
        waiters: HashMap::new(),
        peers: HashMap::new(),
        tx: tx.clone(),
        explicit_playhead_at: None,
        playhead: 0,
        limits: Arc::new(Limits::default()),
        live,
        next_add: 0,
        live_ahead: lookahead + LIVE_AHEAD_SLACK,
    };
    tokio::spawn(track.run(rx));
    TrackHandle { tx }
}

impl Track {
    fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<TrackMsg>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                _ = tick.tick() => Some(TrackMsg::Tick),
            };
            let Some(msg) = msg else { break };
            if matches!(msg, TrackMsg::Stop) {
                break;
            }
            self.handle(msg);
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

    fn publish_stats(&self) {
        lock(&self.shared.scheduler_stats)
            .insert(self.rendition.name.clone(), self.scheduler.stats());
    }

    fn handle(&mut self, msg: TrackMsg) {
        let now = self.now();
        match msg {
            TrackMsg::Want { sequence, reply } => self.want(sequence, reply),
            TrackMsg::Playhead {
                sequence,
                offset_ms,
                playing,
            } => {
                self.active = true;
                self.explicit_playhead_at = Some(Instant::now());
                self.move_playhead(sequence);
                self.scheduler
                    .set_playhead(now, sequence, offset_ms, playing);
                self.sync_live();
            }
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
            TrackMsg::SwarmSize { viewers } => self.scheduler.set_swarm_size(viewers),
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
            TrackMsg::Tick | TrackMsg::ManifestGrew => self.sync_live(),
            TrackMsg::Stop => {}
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
        let speed = self.shared.options.playback_speed;
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
        let duration = scaled(duration_ms, self.shared.options.playback_speed);
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
                        self.shared.counters.banned.fetch_add(1, Ordering::Relaxed);
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

    fn start(
        &mut self,
        transfer: crate::scheduler::TransferId,
        sequence: u64,
        source: Source,
        range: ByteRange,
    ) {
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
                tokio::spawn(async move {
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
                let connection = self.peers.get(&peer).map(|l| l.connection.clone());
                let rendition = self.rendition.name.clone();
                let limits = self.limits.clone();
                let link = self.shared.cdn.link().clone();
                tokio::spawn(async move {
                    let end = match connection {
                        Some(connection) => {
                            peer_transfer(
                                &connection,
                                &rendition,
                                sequence,
                                range.start..range.end,
                                (&limits, &link),
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

    fn finish(&mut self, id: crate::scheduler::TransferId, end: TransferEnd) {
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

/// A peer transfer: `range` in pieces of [`PEER_PIECE`], each reported as it
/// arrives. True when every piece arrived. The session's emulated link (if
/// any) delays each piece request and paces each piece's bytes.
async fn peer_transfer(
    connection: &quinn::Connection,
    rendition: &str,
    sequence: u64,
    range: Range<u64>,
    (limits, link): (&Limits, &crate::cdn::Link),
    transfer: crate::scheduler::TransferId,
    tx: &mpsc::Sender<TrackMsg>,
) -> TransferEnd {
    let mut at = range.start;
    while at < range.end {
        let end = (at + PEER_PIECE).min(range.end);
        link.request_delay().await;
        match peerwire::request_segment(connection, rendition, sequence, Some(at..end), limits)
            .await
        {
            Ok(bytes) if bytes.len() as u64 == end - at => {
                link.pace(bytes.len()).await;
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

/// Follows a live rendition's manifest until it is final or the session
/// stops: every half segment (wall time at the playback speed, bounded),
/// asks the CDN for the bytes past those already consumed, verifies each
/// new chunk and appends it to the shared manifest, then nudges the track.
/// A chunk that fails verification is never applied: an event is emitted
/// and following resumes from the last good chunk, with backoff (the
/// origin may correct the file). Fetch failures back off the same way.
pub(crate) async fn follow_live(
    shared: Arc<Shared>,
    rendition: Arc<Rendition>,
    track: TrackHandle,
) {
    let path = crate::session::manifest_path(&shared.title, &rendition.name);
    let playlist_path = format!("{}/{}/media.m3u8", shared.title, rendition.name);
    // Key tags are learned from the origin's playlist only if it has any.
    let keyed = !lock(&rendition.key_lines).is_empty();
    let mut shutdown = shared.shutdown.clone();
    let mut failures: u32 = 0;
    loop {
        let typical = match rendition.typical_ms() {
            0 => 2_000,
            ms => ms,
        };
        let half = Duration::from_millis(u64::from(typical) / 2)
            .div_f64(shared.options.playback_speed)
            .clamp(POLL_MIN, POLL_MAX);
        let delay = (half * 2u32.pow(failures.min(6))).min(POLL_BACKOFF_MAX.max(half));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::session::stopped(&mut shutdown) => return,
        }
        let offset = rendition.consumed.load(Ordering::Relaxed);
        let tail = match shared.cdn.fetch_from(&path, offset).await {
            Ok(tail) => tail,
            Err(error) => {
                if failures == 0 {
                    shared.emit(Event::ManifestUnavailable {
                        rendition: rendition.name.clone(),
                        message: error.to_string(),
                    });
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
        match append_chunks(&shared, &rendition, &tail) {
            Ok(0) => failures = 0,
            Ok(_) => {
                failures = 0;
                track.send(TrackMsg::ManifestGrew);
                if keyed && missing_key_lines(&rendition) {
                    // The playlist is written after the manifest: a period
                    // still missing is looked for again at the next poll.
                    if let Ok(playlist) = shared.cdn.fetch(&playlist_path, None).await {
                        rendition.learn_key_lines(&playlist);
                    }
                }
            }
            Err(message) => {
                shared.emit(Event::ManifestRejected {
                    rendition: rendition.name.clone(),
                    message,
                });
                failures = failures.saturating_add(1);
            }
        }
        if rendition.manifest().is_final() {
            track.send(TrackMsg::ManifestGrew);
            return;
        }
    }
}

/// Verifies and appends the whole chunks in `tail` (the manifest file's
/// bytes past those consumed); returns how many were appended. Stops at the
/// first chunk that fails: it and everything after it are left unapplied
/// and unconsumed.
fn append_chunks(shared: &Shared, rendition: &Rendition, tail: &[u8]) -> Result<usize, String> {
    let (frames, _) = crate::session::manifest_frames(tail).map_err(|e| e.to_string())?;
    let mut appended = 0;
    for frame in frames {
        let chunk =
            verify_chunk(&shared.options.manifest_keys, frame).map_err(|e| e.to_string())?;
        let durations: Vec<u32> = chunk.segments.iter().map(|s| s.duration_ms).collect();
        rendition
            .manifest_mut()
            .append(chunk)
            .map_err(|e| e.to_string())?;
        rendition.saw_durations(durations.into_iter());
        // The frame's prefix and payload are now consumed.
        let frame_len = (frame.len() + loaves_proto::framing::LENGTH_PREFIX_LEN) as u64;
        rendition.consumed.fetch_add(frame_len, Ordering::Relaxed);
        appended += 1;
    }
    Ok(appended)
}

/// Whether a listed segment's key period has no known key tags.
fn missing_key_lines(rendition: &Rendition) -> bool {
    let known = lock(&rendition.key_lines);
    let manifest = rendition.manifest();
    manifest
        .segments()
        .any(|s| !known.contains_key(&s.key_period))
}

/// The file name of segment `sequence` in the packager's layout.
pub(crate) fn segment_file(sequence: u64) -> String {
    format!("seg_{sequence:05}.m4s")
}

/// The sequence number of a segment file name.
pub(crate) fn parse_segment_file(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg_")?.strip_suffix(".m4s")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The license heartbeat: renews on the policy's interval (or the
/// configured one, when shorter) until stopped; returns the client and
/// session for the release.
pub(crate) async fn heartbeat(
    shared: Arc<Shared>,
    mut client: LicenseClient,
    mut licensed: LicensedSession,
    key: Arc<SigningKeyPair>,
    mut stop: oneshot::Receiver<()>,
) -> Option<(LicenseClient, LicensedSession)> {
    loop {
        let policy = Duration::from_secs(u64::from(licensed.renewal_interval_s().max(1)));
        let interval = match shared.options.renewal_interval {
            Some(configured) => configured.min(policy),
            None => policy,
        };
        tokio::select! {
            _ = &mut stop => return Some((client, licensed)),
            () = tokio::time::sleep(interval) => {}
        }
        match client
            .renew(&mut licensed, &key, None, UnixSeconds::now())
            .await
        {
            Ok(()) => {
                // A renewal may carry keys of new key periods.
                shared.learn_keys(&licensed);
                shared.emit(Event::LicenseRenewed);
            }
            Err(e) => shared.emit(Event::LicenseRenewalFailed {
                message: e.to_string(),
            }),
        }
    }
}
