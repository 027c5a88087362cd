//! The session's QUIC side: one quinn endpoint (one UDP socket) that
//! - serves other viewers (the upload server: hello with session tokens,
//!   requests answered from the segment store, HAVE notices of every newly
//!   verified segment, a connection cap and a shared upload rate cap),
//! - connects to the peers the tracker names (hello both ways, then HAVE
//!   notices feed the rendition's scheduler),
//! - announces to the tracker, per active rendition, with the stats deltas,
//!   and at the shutdown leaves each swarm with a `Stop` carrying the last
//!   deltas (bounded by [`FINAL_REPORT_TIMEOUT`]).
//!
//! With P2P off none of that runs but the announcer, on a client-only
//! endpoint ([`start_stats_only`]): it reports the stats (the CDN-only
//! cohort, final `Stop` included), advertises nothing, holds nothing, and
//! ignores the peers the tracker names.
//!
//! The wire protocol is `loaves_proto::peerwire`; the tracker client is
//! `loaves_proto::tracker_client`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loaves_proto::peerwire::{
    self, AuthenticatedPeer, CredentialVerifier, EgressLimiter, HaveReceiver, HaveSender, Limits,
    Reply, RequestHandler, TransportOptions,
};
use loaves_proto::tracker_client::{ClientEndpoint, ClientError, TrackerConnection};
use loaves_proto::{UnixSeconds, pb};
use tokio::sync::{Semaphore, watch};

use crate::scheduler::{Locality, PeerId, PeerInfo, PeerKind, SchedulerStats};
use crate::session::{Error, Event, Shared, Stats, Upload, lock};
use crate::store::SegmentKey;
use crate::track::{PeerLink, TrackHandle, TrackMsg};

/// Clock skew tolerated on peers' credentials.
const MAX_CLOCK_SKEW_S: u64 = 30;
/// Initial throughput estimate of a new peer, bytes per second.
const INITIAL_PEER_THROUGHPUT: u64 = 2_500_000;
/// A HAVE stream idle for this long is no longer read (the connection stays).
const HAVE_IDLE: Duration = Duration::from_secs(120);
/// With `Options::lie_about_holdings`: how many segments past each held
/// one a lying session claims.
const LIE_AHEAD: u64 = 3;

/// What this session claims to hold: the truth, or (fault injection) the
/// truth plus the next [`LIE_AHEAD`] segments after each held one.
fn claimed(shared: &Shared, held: BTreeSet<u64>) -> BTreeSet<u64> {
    if !shared.options.lie_about_holdings {
        return held;
    }
    held.iter()
        .flat_map(|s| *s..=s.saturating_add(LIE_AHEAD))
        .collect()
}

/// Peer ids are stable per (rendition, key): a banned key stays banned.
#[derive(Debug, Default)]
struct Registry {
    ids: Mutex<HashMap<(String, [u8; 32]), PeerId>>,
    connected: Mutex<HashSet<(String, [u8; 32])>>,
    next: AtomicU64,
}

impl Registry {
    fn id(&self, rendition: &str, key: [u8; 32]) -> PeerId {
        *lock(&self.ids)
            .entry((rendition.to_owned(), key))
            .or_insert_with(|| PeerId(self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

struct Context {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<String, TrackHandle>>,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    verifier: Arc<CredentialVerifier>,
    limits: Arc<Limits>,
    registry: Registry,
    advertise: SocketAddr,
}

/// Starts the QUIC endpoint, the upload server (unless upload is off) and
/// the tracker announcer (when a tracker is configured). Returns the
/// address peers reach this viewer at, and the announcer's end (see
/// [`finished`]) when there is one.
pub(crate) fn start(
    shared: Arc<Shared>,
    tracks: Arc<HashMap<String, TrackHandle>>,
) -> Result<(SocketAddr, Option<watch::Receiver<()>>), Error> {
    let transport = TransportOptions::default();
    let server_config = peerwire::server_config(&shared.identity, &transport)
        .map_err(|e| Error::Setup(e.to_string()))?;
    let client_config = peerwire::client_config(&shared.identity, &transport)
        .map_err(|e| Error::Setup(e.to_string()))?;
    let endpoint = quinn::Endpoint::server(server_config, shared.options.peer_bind)
        .map_err(|e| Error::Setup(e.to_string()))?;
    let local = endpoint
        .local_addr()
        .map_err(|e| Error::Setup(e.to_string()))?;
    let advertise = shared.options.peer_advertise.unwrap_or(local);
    let context = Arc::new(Context {
        verifier: Arc::new(CredentialVerifier::new(
            shared.options.license.trusted_keys.clone(),
            MAX_CLOCK_SKEW_S,
        )),
        shared,
        tracks,
        endpoint,
        client_config,
        limits: Arc::new(Limits::default()),
        registry: Registry::default(),
        advertise,
    });
    let announcer_done = context.shared.options.tracker.is_some().then(|| {
        let client = ClientEndpoint::from_endpoint(context.endpoint.clone());
        spawn_announcer(context.shared.clone(), client, Role::Swarm(context.clone()))
    });
    tokio::spawn(accept_loop(context, announcer_done.clone()));
    Ok((advertise, announcer_done))
}

/// P2P off: starts the tracker announcer alone (when a tracker is
/// configured), so the tracker gets this session's stats in the CDN-only
/// cohort. Its QUIC endpoint is client-only, on an ephemeral port: nothing
/// can connect in, and the peer port is left alone. Returns the
/// announcer's end (see [`finished`]) when there is one.
pub(crate) fn start_stats_only(shared: Arc<Shared>) -> Option<watch::Receiver<()>> {
    let tracker = shared.options.tracker?;
    let bind = SocketAddr::new(
        match tracker {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    match ClientEndpoint::bind(bind) {
        Ok(client) => Some(spawn_announcer(shared, client, Role::StatsOnly)),
        // Stats are not worth failing playback for (P2P may be off precisely
        // because UDP is unusable here).
        Err(e) => {
            shared.emit(Event::TrackerUnavailable {
                message: e.to_string(),
            });
            None
        }
    }
}

// ---------------------------------------------------------------- upload

struct UploadHandler {
    shared: Arc<Shared>,
    /// The upload cap's limiter, shared by every connection served.
    egress: Option<Arc<EgressLimiter>>,
}

impl UploadHandler {
    /// Why a new request cannot be served now, if it cannot.
    fn refusal(&self) -> Option<&'static str> {
        if !self.shared.upload_allowed() {
            return Some("not uploading now");
        }
        // Admission by rate: queued behind uploads already too late for the
        // cap, this one would only hold its requester up.
        let behind = self
            .egress
            .as_ref()
            .is_some_and(|egress| egress.backlog() > self.shared.options.max_upload_backlog);
        if behind {
            self.shared
                .counters
                .refused_busy
                .fetch_add(1, Ordering::Relaxed);
            return Some("upload budget exhausted");
        }
        None
    }
}

impl RequestHandler for UploadHandler {
    fn handle(
        &self,
        _peer: &AuthenticatedPeer,
        request: &pb::SegmentRequest,
    ) -> impl std::future::Future<Output = Reply> + Send {
        let reply = if let Some(reason) = self.refusal() {
            Reply::Refuse {
                status: pb::segment_response_header::Status::Busy,
                message: reason.into(),
            }
        } else {
            let key = SegmentKey {
                rendition: request.rendition.clone(),
                sequence: request.sequence,
            };
            match lock(&self.shared.store).get(&key) {
                Some(bytes) if self.shared.options.tamper_uploads && !bytes.is_empty() => {
                    let mut lie = bytes.to_vec();
                    let middle = lie.len() / 2;
                    lie[middle] ^= 0x5a;
                    Reply::Segment {
                        bytes: lie.into(),
                        guard: None,
                    }
                }
                Some(bytes) => Reply::Segment { bytes, guard: None },
                None => Reply::Refuse {
                    status: pb::segment_response_header::Status::NotFound,
                    message: "not held".into(),
                },
            }
        };
        std::future::ready(reply)
    }

    fn finished(
        &self,
        _peer: &AuthenticatedPeer,
        _request: &pb::SegmentRequest,
        outcome: peerwire::Outcome,
    ) {
        if let peerwire::Outcome::Served { bytes } = outcome {
            self.shared
                .counters
                .uploaded
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Serves other viewers until the shutdown. `announcer_done` is the end of
/// the announcer sharing this endpoint: closing the endpoint would cut its
/// final `Stop`s short, so the close waits for it (bounded).
async fn accept_loop(context: Arc<Context>, announcer_done: Option<watch::Receiver<()>>) {
    let shared = &context.shared;
    let slots = Arc::new(Semaphore::new(shared.options.max_upload_connections));
    let egress = match shared.options.upload {
        Upload::Capped { bytes_per_second } => Some(Arc::new(EgressLimiter::new(
            bytes_per_second,
            Duration::from_millis(250),
        ))),
        Upload::Off => None,
    };
    let handler = Arc::new(UploadHandler {
        shared: shared.clone(),
        egress: egress.clone(),
    });
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            incoming = context.endpoint.accept() => incoming,
            _ = crate::session::stopped(&mut shutdown) => break,
        };
        let Some(incoming) = incoming else { break };
        if !shared.upload_allowed() {
            incoming.refuse();
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let context = context.clone();
        let handler = handler.clone();
        let egress = egress.clone();
        tokio::spawn(async move {
            serve_peer(&context, incoming, handler, egress).await;
            drop(permit);
        });
    }
    if let Some(done) = announcer_done {
        finished(done).await;
    }
    context
        .endpoint
        .close(peerwire::close_code::SHUTDOWN.into(), b"closing");
}

async fn serve_peer(
    context: &Context,
    incoming: quinn::Incoming,
    handler: Arc<UploadHandler>,
    egress: Option<Arc<EgressLimiter>>,
) {
    let shared = &context.shared;
    let Ok(Ok(connection)) = tokio::time::timeout(context.limits.hello_timeout, incoming).await
    else {
        return;
    };
    let own = peerwire::viewer_hello(shared.token.clone(), &shared.title, "");
    let title = shared.title.clone();
    let Ok(peer) = peerwire::accept_hello(
        &connection,
        &context.verifier,
        &own,
        |t| t == title,
        UnixSeconds::now(),
        &context.limits,
    )
    .await
    else {
        return;
    };
    let rendition = peer
        .hello
        .swarm
        .as_ref()
        .map(|s| s.rendition.clone())
        .unwrap_or_default();
    // HAVE notices: what is held now, then every new segment.
    let mut news = shared.have_tx.subscribe();
    let have_connection = connection.clone();
    let limits = (*context.limits).clone();
    let held = lock(&shared.held)
        .get(&rendition)
        .cloned()
        .unwrap_or_default();
    let held: Vec<u64> = claimed(shared, held)
        .into_iter()
        .take(peerwire::MAX_HAVE_SEQUENCES)
        .collect();
    let lie = shared.options.lie_about_holdings;
    let have_rendition = rendition.clone();
    let have_task = tokio::spawn(async move {
        let Ok(mut sender) = HaveSender::open(&have_connection, limits).await else {
            return;
        };
        let mut notice = pb::HaveNotice {
            rendition: have_rendition.clone(),
            sequences: held,
        };
        loop {
            if !notice.sequences.is_empty() && sender.send(&notice).await.is_err() {
                return;
            }
            notice.sequences.clear();
            match news.recv().await {
                Ok((r, sequence)) if r == have_rendition => {
                    notice.sequences.push(sequence);
                    if lie {
                        notice
                            .sequences
                            .extend((1..=LIE_AHEAD).filter_map(|n| sequence.checked_add(n)));
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut shutdown = shared.shutdown.clone();
    peerwire::serve_requests(
        connection.clone(),
        Arc::new(peer),
        handler,
        context.verifier.clone(),
        context.limits.clone(),
        egress,
        async move {
            crate::session::stopped(&mut shutdown).await;
        },
    )
    .await;
    have_task.abort();
    connection.close(peerwire::close_code::DONE.into(), b"bye");
}

// ---------------------------------------------------------------- download

fn locality(shared: &Shared, region: &str, isp: &str) -> Locality {
    let o = &shared.options;
    if region == o.region && isp == o.isp {
        Locality::SameIsp
    } else if region == o.region {
        Locality::SameRegion
    } else {
        Locality::Remote
    }
}

fn holdings_sequences(holdings: Option<&pb::Holdings>) -> Vec<u64> {
    match holdings.and_then(|h| h.kind.as_ref()) {
        Some(pb::holdings::Kind::LiveWindow(w)) if w.last_sequence >= w.first_sequence => {
            (w.first_sequence..=w.last_sequence)
                .take(peerwire::MAX_HAVE_SEQUENCES)
                .collect()
        }
        Some(pb::holdings::Kind::Bitmap(b)) => b
            .bits
            .iter()
            .enumerate()
            .flat_map(|(i, byte)| {
                (0..8u64)
                    .filter(move |bit| byte & (1 << bit) != 0)
                    .map(move |bit| i as u64 * 8 + bit)
            })
            .take(peerwire::MAX_HAVE_SEQUENCES)
            .filter_map(|offset| b.first_sequence.checked_add(offset))
            .collect(),
        _ => Vec::new(),
    }
}

fn bitmap(held: &BTreeSet<u64>) -> Option<pb::Holdings> {
    let first = *held.first()?;
    let last = *held.last()?;
    let len = usize::try_from(last - first).ok()? / 8 + 1;
    if len > 64 * 1024 {
        return None;
    }
    let mut bits = vec![0u8; len];
    for sequence in held {
        let offset = (sequence - first) as usize;
        bits[offset / 8] |= 1 << (offset % 8);
    }
    Some(pb::Holdings {
        kind: Some(pb::holdings::Kind::Bitmap(pb::SegmentBitmap {
            first_sequence: first,
            bits,
        })),
    })
}

async fn connect_peer(context: Arc<Context>, rendition: String, entry: pb::PeerEntry) {
    let shared = &context.shared;
    let Ok(key) = <[u8; 32]>::try_from(entry.peer_public_key.as_slice()) else {
        return;
    };
    let Some(track) = context.tracks.get(&rendition) else {
        return;
    };
    let Some(address) = entry
        .addresses
        .iter()
        .find_map(|a| a.parse::<SocketAddr>().ok())
    else {
        return;
    };
    let slot = (rendition.clone(), key);
    {
        let mut connected = lock(&context.registry.connected);
        let here = connected.iter().filter(|(r, _)| *r == rendition).count();
        if here >= shared.options.max_peers || !connected.insert(slot.clone()) {
            return;
        }
    }
    let hello = peerwire::viewer_hello(shared.token.clone(), &shared.title, &rendition);
    let result = peerwire::connect(
        &context.endpoint,
        address,
        context.client_config.clone(),
        &hello,
        &context.verifier,
        UnixSeconds::now(),
        &context.limits,
    )
    .await;
    let Ok(connected) = result else {
        lock(&context.registry.connected).remove(&slot);
        return;
    };
    let connection = connected.connection;
    // The tracker named this key: the peer must prove it is that key.
    if connected.remote.credential.peer_key().as_bytes() != &key {
        connection.close(peerwire::close_code::UNAUTHENTICATED.into(), b"key");
        lock(&context.registry.connected).remove(&slot);
        return;
    }
    let peer = context.registry.id(&rendition, key);
    let credential = &connected.remote.credential;
    let kind = if entry.is_seed {
        PeerKind::Seed
    } else {
        PeerKind::Viewer
    };
    let o = &shared.options;
    let info = PeerInfo {
        kind,
        locality: locality(shared, credential.region(), credential.isp()),
        rtt_ms: u32::try_from(connection.rtt().as_millis()).unwrap_or(u32::MAX),
        throughput_bytes_per_s: INITIAL_PEER_THROUGHPUT,
    };
    let link = PeerLink {
        connection: connection.clone(),
        name: key.iter().map(|b| format!("{b:02x}")).collect(),
        cross_isp: credential.isp() != o.isp || credential.region() != o.region,
        cross_region: credential.region() != o.region,
    };
    if track.send_wait(TrackMsg::PeerUp { peer, info, link }).await {
        let initial = holdings_sequences(entry.holdings.as_ref());
        if !initial.is_empty() {
            track
                .send_wait(TrackMsg::PeerHas {
                    peer,
                    sequences: initial,
                })
                .await;
        }
        let have = async {
            let Ok(mut receiver) =
                HaveReceiver::accept(&connection, (*context.limits).clone()).await
            else {
                return;
            };
            while let Ok(Some(notice)) = receiver.next(HAVE_IDLE).await {
                if notice.rendition == rendition
                    && !track
                        .send_wait(TrackMsg::PeerHas {
                            peer,
                            sequences: notice.sequences,
                        })
                        .await
                {
                    return;
                }
            }
        };
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            () = have => { connection.closed().await; }
            _ = connection.closed() => {}
            _ = crate::session::stopped(&mut shutdown) => {}
        }
        track.send(TrackMsg::PeerDown { peer });
    }
    connection.close(peerwire::close_code::DONE.into(), b"bye");
    lock(&context.registry.connected).remove(&slot);
}

// ---------------------------------------------------------------- tracker

/// Bound on leaving the swarm at close: every `Stop` (and one reconnect if
/// the tracker connection is gone) must fit in it, so a dead tracker delays
/// `Session::close` by at most this much.
pub(crate) const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `Session::close` waits for the announcer to finish: its own
/// bound plus a margin for the task to notice the shutdown and be polled.
const CLOSE_WAIT: Duration = Duration::from_millis(2_500);

/// Runs the announcer; the receiver returned is its end (see [`finished`]).
fn spawn_announcer(shared: Arc<Shared>, client: ClientEndpoint, role: Role) -> watch::Receiver<()> {
    let (done_tx, done) = watch::channel(());
    tokio::spawn(async move {
        announcer(shared, client, role).await;
        drop(done_tx);
    });
    done
}

/// Waits until the announcer task has finished, at most [`CLOSE_WAIT`] (it
/// bounds its own final stops; this is the backstop should the task not
/// be polled). The task holds the sender of `done` and never sends: the
/// sender's drop is the signal.
pub(crate) async fn finished(mut done: watch::Receiver<()>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while done.changed().await.is_ok() {} }).await;
}

/// What the tracker has been told: the counters as of its last
/// acknowledged report, per rendition and session-wide.
#[derive(Debug, Default)]
struct Reported {
    renditions: HashMap<String, SchedulerStats>,
    session: Stats,
    startup: bool,
}

/// A stats delta to send, with the snapshots it was computed from; they
/// become the new baseline only once the tracker acknowledged it.
#[derive(Debug)]
struct Report {
    stats: pb::StatsDelta,
    rendition_now: SchedulerStats,
    /// `Some` when the session-wide counters ride on this report.
    session_now: Option<Stats>,
}

impl Reported {
    /// The counters of `rendition` (and, with `with_session`, the
    /// session-wide ones) gathered since the last acknowledged report. The
    /// one computation behind both announces and the final stops.
    fn delta(
        &self,
        shared: &Shared,
        rendition: &str,
        with_session: bool,
        cdn_only: bool,
    ) -> Report {
        let now = lock(&shared.scheduler_stats)
            .get(rendition)
            .copied()
            .unwrap_or_default();
        let before = self.renditions.get(rendition).copied().unwrap_or_default();
        let mut stats = pb::StatsDelta {
            bytes_from_peers: now.bytes_from_peers.saturating_sub(before.bytes_from_peers),
            bytes_from_seeds: now.bytes_from_seeds.saturating_sub(before.bytes_from_seeds),
            bytes_from_cdn: now.bytes_from_cdn.saturating_sub(before.bytes_from_cdn),
            // The tracker's quality cohort.
            cdn_only,
            ..Default::default()
        };
        let session_now = with_session.then(|| shared.stats());
        if let Some(session) = &session_now {
            let b = &self.session;
            stats.bytes_uploaded = session.bytes_uploaded.saturating_sub(b.bytes_uploaded);
            stats.bytes_cross_isp = session.bytes_cross_isp.saturating_sub(b.bytes_cross_isp);
            stats.bytes_cross_region = session
                .bytes_cross_region
                .saturating_sub(b.bytes_cross_region);
            stats.rebuffer_ms = session
                .rebuffer_time
                .saturating_sub(b.rebuffer_time)
                .as_millis() as u64;
            stats.rebuffer_count = session.rebuffer_count.saturating_sub(b.rebuffer_count);
            stats.played_ms = session
                .played_time
                .saturating_sub(b.played_time)
                .as_millis() as u64;
            if !self.startup
                && let Some(startup) = session.startup_time
            {
                stats.startup_ms = u32::try_from(startup.as_millis()).unwrap_or(u32::MAX);
            }
        }
        Report {
            stats,
            rendition_now: now,
            session_now,
        }
    }

    /// The tracker acknowledged `report`: it is the new baseline.
    fn acknowledged(&mut self, rendition: &str, report: &Report) {
        self.renditions
            .insert(rendition.to_owned(), report.rendition_now);
        if let Some(session) = report.session_now {
            self.session = session;
            self.startup |= session.startup_time.is_some();
        }
    }
}

/// Uses an announce reply with P2P on: connects to the peers and seeds
/// it names.
fn join_swarm(context: &Arc<Context>, rendition: &str, reply: pb::AnnounceReply) {
    // The whole swarm's size, not only the neighbours this
    // viewer knows: live injection shares the work of
    // bringing each new segment in among all its viewers.
    if let Some(track) = context.tracks.get(rendition) {
        track.send(TrackMsg::SwarmSize {
            viewers: reply.swarm_size as usize,
        });
    }
    let own = context.shared.identity.public_key();
    for entry in reply.peers.into_iter().chain(reply.seeds) {
        if entry.peer_public_key == own.as_bytes() {
            continue;
        }
        tokio::spawn(connect_peer(context.clone(), rendition.to_owned(), entry));
    }
}

/// What the announcer is for.
enum Role {
    /// P2P on: advertise this viewer and what it holds, connect to the
    /// peers and seeds the replies name.
    Swarm(Arc<Context>),
    /// P2P off: report stats only. Nothing advertised, nothing held, no
    /// upload capacity; the replies' peers are ignored.
    StatsOnly,
}

/// The announcer's state between rounds.
struct Announcer {
    shared: Arc<Shared>,
    client: ClientEndpoint,
    tracker: SocketAddr,
    /// `None` with P2P off.
    swarm: Option<Arc<Context>>,
    connection: Option<TrackerConnection>,
    /// Next announce of each rendition announced so far.
    next_due: HashMap<String, Instant>,
    reported: Reported,
    retry_at: Instant,
}

async fn announcer(shared: Arc<Shared>, client: ClientEndpoint, role: Role) {
    let Some(tracker) = shared.options.tracker else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    let mut state = Announcer {
        swarm: match role {
            Role::Swarm(context) => Some(context),
            Role::StatsOnly => None,
        },
        shared,
        client,
        tracker,
        connection: None,
        next_due: HashMap::new(),
        reported: Reported::default(),
        retry_at: Instant::now(),
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = crate::session::stopped(&mut shutdown) => break,
        }
        // A round can wait on a handshake or a reply for many seconds: the
        // shutdown cuts it short (an announce cut half-way gives up the
        // tracker connection, and leaving reconnects).
        tokio::select! {
            () = state.round() => {}
            _ = crate::session::stopped(&mut shutdown) => break,
        }
    }
    match tokio::time::timeout(FINAL_REPORT_TIMEOUT, state.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => state.shared.emit(Event::TrackerUnavailable {
            message: format!("final report: {message}"),
        }),
        Err(_) => state.shared.emit(Event::TrackerUnavailable {
            message: format!("final report: no answer within {FINAL_REPORT_TIMEOUT:?}"),
        }),
    }
    if state.swarm.is_none() {
        // The endpoint is this task's own (with P2P on, the accept loop
        // closes the shared one once this task is done).
        state.client.close();
    }
}

impl Announcer {
    /// A new tracker connection, the session token proven at its hello.
    async fn connect(&self) -> Result<TrackerConnection, ClientError> {
        let hello = pb::TrackerHello {
            credential: Some(pb::tracker_hello::Credential::SessionToken(
                self.shared.token.clone(),
            )),
        };
        self.client
            .connect(self.tracker, &self.shared.identity, hello)
            .await
    }

    fn swarm_id(&self, rendition: &str) -> pb::SwarmId {
        pb::SwarmId {
            title: self.shared.title.clone(),
            rendition: rendition.to_owned(),
        }
    }

    /// Announces every rendition that is due.
    async fn round(&mut self) {
        let shared = self.shared.clone();
        let active: Vec<String> = lock(&shared.scheduler_stats).keys().cloned().collect();
        let now = Instant::now();
        let due: Vec<String> = active
            .into_iter()
            .filter(|r| self.next_due.get(r).is_none_or(|at| *at <= now))
            .collect();
        if due.is_empty() {
            return;
        }
        if self.connection.is_none() {
            if now < self.retry_at {
                return;
            }
            match self.connect().await {
                Ok(c) => self.connection = Some(c),
                Err(e) => {
                    shared.emit(Event::TrackerUnavailable {
                        message: e.to_string(),
                    });
                    self.retry_at = Instant::now() + shared.options.max_announce_interval;
                    return;
                }
            }
        }
        let Some(tracker_connection) = self.connection.clone() else {
            return;
        };
        for (index, rendition) in due.into_iter().enumerate() {
            // Session-wide counters ride on the first announce of a round.
            let report = self
                .reported
                .delta(&shared, &rendition, index == 0, self.swarm.is_none());
            let announce = self.announce(&rendition, report.stats);
            let mut interval = shared.options.max_announce_interval;
            match tracker_connection.announce(announce).await {
                Ok(reply) => {
                    self.reported.acknowledged(&rendition, &report);
                    if reply.interval_s > 0 {
                        interval = interval.min(Duration::from_secs(u64::from(reply.interval_s)));
                    }
                    // Stats only: the peers named are not for this viewer.
                    if let Some(context) = &self.swarm {
                        join_swarm(context, &rendition, reply);
                    }
                }
                Err(ClientError::Refused { code, message }) => {
                    shared.emit(Event::TrackerUnavailable {
                        message: format!("{code:?}: {message}"),
                    });
                }
                Err(e) => {
                    shared.emit(Event::TrackerUnavailable {
                        message: e.to_string(),
                    });
                    self.connection = None;
                    self.retry_at = Instant::now() + shared.options.max_announce_interval;
                    return;
                }
            }
            self.next_due.insert(rendition, Instant::now() + interval);
        }
    }

    fn announce(&self, rendition: &str, stats: pb::StatsDelta) -> pb::Announce {
        let shared = &self.shared;
        let Some(context) = &self.swarm else {
            // No address: the tracker files this viewer as unreachable and
            // never names it to others.
            return pb::Announce {
                swarm: Some(self.swarm_id(rendition)),
                stats: Some(stats),
                // 0 would mean the tracker's default: ask for the fewest
                // entries (they are ignored).
                max_peers: 1,
                ..Default::default()
            };
        };
        let held = claimed(
            shared,
            lock(&shared.held)
                .get(rendition)
                .cloned()
                .unwrap_or_default(),
        );
        let uploading = shared.upload_allowed();
        let capacity = match shared.options.upload {
            Upload::Capped { bytes_per_second } if uploading => bytes_per_second * 8,
            _ => 0,
        };
        pb::Announce {
            swarm: Some(self.swarm_id(rendition)),
            addresses: if uploading {
                vec![context.advertise.to_string()]
            } else {
                Vec::new()
            },
            holdings: bitmap(&held),
            next_sequence: held.last().map_or(0, |s| s + 1),
            upload_capacity_bps: capacity,
            upload_in_use_bps: 0,
            stats: Some(stats),
            max_peers: u32::try_from(shared.options.max_peers).unwrap_or(u32::MAX),
        }
    }

    /// Leaves the swarm: one `Stop` per rendition announced (or with
    /// counters not yet reported), carrying the counters gathered since the
    /// last acknowledged report, so the tracker stops naming this viewer at
    /// once and counts the session's last bytes. The caller bounds it.
    async fn leave(&mut self) -> Result<(), String> {
        let shared = self.shared.clone();
        let cdn_only = self.swarm.is_none();
        let mut renditions: BTreeSet<String> = self.next_due.keys().cloned().collect();
        let active: Vec<String> = lock(&shared.scheduler_stats).keys().cloned().collect();
        let nothing = pb::StatsDelta {
            cdn_only,
            ..Default::default()
        };
        for rendition in active {
            if self
                .reported
                .delta(&shared, &rendition, false, cdn_only)
                .stats
                != nothing
            {
                renditions.insert(rendition);
            }
        }
        for (index, rendition) in renditions.into_iter().enumerate() {
            // Session-wide counters ride on the first stop, as on the first
            // announce of a round.
            let report = self
                .reported
                .delta(&shared, &rendition, index == 0, cdn_only);
            let request = pb::TrackerRequest {
                kind: Some(pb::tracker_request::Kind::Stop(pb::Stop {
                    swarm: Some(self.swarm_id(&rendition)),
                    stats: Some(report.stats),
                })),
            };
            self.request(&request).await?;
            self.reported.acknowledged(&rendition, &report);
        }
        Ok(())
    }

    /// Sends `request` on the tracker connection, reconnecting once if
    /// there is none or it has failed (an announce cut short by the
    /// shutdown gives up the connection's session stream).
    async fn request(&mut self, request: &pb::TrackerRequest) -> Result<(), String> {
        if let Some(connection) = &self.connection {
            match connection.request(request).await {
                Ok(_) => return Ok(()),
                Err(ClientError::Refused { code, message }) => {
                    return Err(format!("{code:?}: {message}"));
                }
                Err(_) => self.connection = None,
            }
        }
        let connection = self.connect().await.map_err(|e| e.to_string())?;
        self.connection = Some(connection.clone());
        connection
            .request(request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
