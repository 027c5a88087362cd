//! The tracker announcer: per active rendition, an announce on the
//! tracker's interval with the stats gathered since the last one, the
//! viewer's address candidates and what it holds; at the end, a `Stop` per
//! swarm with the last counters.
//!
//! The tracker of the title is one shard of the configured list
//! (rendezvous hashing, as every component maps titles), resolved at each
//! (re)connect. The connection's hello proves the session token; when the
//! license renewal brings a new token, the next round presents it on the
//! same connection (a refresh hello) before the old one expires. The hello's
//! answer says where the tracker sees the connection come from: the
//! viewer's public mapping, its best address candidate.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loaves_proto::names::RenditionName;
use loaves_proto::pb;
use loaves_wire::tracker_client::{ClientEndpoint, ClientError, TrackerConnection};
use tokio::sync::watch;

use super::{Context, claimed};
use crate::config::Upload;
use crate::events::Event;
use crate::lock;
use crate::scheduler::SchedulerStats;
use crate::session::Shared;
use crate::stats::Stats;

/// Bound on leaving the swarm at close: every `Stop` (and one reconnect if
/// the tracker connection is gone) must fit in it, so a dead tracker delays
/// `Session::close` by at most this much.
pub(crate) const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the accept loop waits for the announcer to finish before it
/// closes the endpoint they share: its own bound plus a margin for the task
/// to notice the cancellation and be polled.
const CLOSE_WAIT: Duration = Duration::from_millis(2_500);

/// Bound on resolving the tracker's name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the announcer; the receiver returned is its end (see [`finished`]).
pub(super) fn spawn(
    shared: Arc<Shared>,
    client: ClientEndpoint,
    role: Role,
) -> watch::Receiver<()> {
    let (done_tx, done) = watch::channel(());
    shared.clone().spawn(async move {
        announcer(shared, client, role).await;
        drop(done_tx);
    });
    done
}

/// Waits until the announcer task has finished, at most [`CLOSE_WAIT`] (it
/// bounds its own final stops; this is the backstop should the task not
/// be polled). The task holds the sender of `done` and never sends: the
/// sender's drop is the signal.
pub(super) async fn finished(mut done: watch::Receiver<()>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while done.changed().await.is_ok() {} }).await;
}

/// The tracker shard of the session's title, by name.
fn shard(shared: &Shared) -> Option<&str> {
    loaves_proto::shard::shard_for(shared.title.as_str(), &shared.config.trackers)
        .map(String::as_str)
}

/// The tracker's address when its name is already one (no lookup): whether
/// it is on loopback decides whether loopback candidates are any use.
pub(super) fn tracker_hint(shared: &Shared) -> Option<SocketAddr> {
    shard(shared)?.parse().ok()
}

/// Resolves the tracker's name, the socket's family first.
async fn resolve(name: &str, local: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Ok(address) = name.parse::<SocketAddr>() {
        return Ok(address);
    }
    let found: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name))
            .await
            .map_err(|_| format!("resolving {name}: timed out"))?
            .map_err(|e| format!("resolving {name}: {e}"))?
            .collect();
    let v4_only = local.is_some_and(|l| l.is_ipv4());
    found
        .iter()
        .find(|a| a.is_ipv4() == v4_only || !v4_only)
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{name} resolves to no address"))
}

/// What the tracker has been told: the counters as of its last
/// acknowledged report, per rendition and session-wide.
#[derive(Debug, Default)]
struct Reported {
    renditions: HashMap<RenditionName, SchedulerStats>,
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
        rendition: &RenditionName,
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
    fn acknowledged(&mut self, rendition: &RenditionName, report: &Report) {
        self.renditions
            .insert(rendition.clone(), report.rendition_now);
        if let Some(session) = report.session_now {
            self.session = session;
            self.startup |= session.startup_time.is_some();
        }
    }
}

/// What the announcer is for.
pub(super) enum Role {
    /// P2P on: advertise this viewer and what it holds, connect to the
    /// peers and seeds the replies name.
    Swarm(Arc<Context>),
    /// P2P off: report stats only. Nothing advertised, nothing held, no
    /// upload capacity; the replies' peers are ignored.
    StatsOnly,
}

/// A tracker connection and the token generation it presented.
struct Connected {
    connection: TrackerConnection,
    generation: u64,
}

/// The announcer's state between rounds.
struct Announcer {
    shared: Arc<Shared>,
    client: ClientEndpoint,
    /// `None` with P2P off.
    swarm: Option<Arc<Context>>,
    connection: Option<Connected>,
    /// Next announce of each rendition announced so far.
    next_due: HashMap<RenditionName, Instant>,
    reported: Reported,
    retry_at: Instant,
}

async fn announcer(shared: Arc<Shared>, client: ClientEndpoint, role: Role) {
    let cancel = shared.cancel.clone();
    let mut state = Announcer {
        swarm: match role {
            Role::Swarm(context) => Some(context),
            Role::StatsOnly => None,
        },
        shared,
        client,
        connection: None,
        next_due: HashMap::new(),
        reported: Reported::default(),
        retry_at: Instant::now(),
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = cancel.cancelled() => break,
        }
        // A round can wait on a handshake or a reply for many seconds: the
        // cancellation cuts it short (an announce cut half-way gives up the
        // tracker connection, and leaving reconnects).
        tokio::select! {
            () = state.round() => {}
            () = cancel.cancelled() => break,
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
    fn hello(&self) -> (pb::TrackerHello, u64) {
        let credential = self.shared.credentials.current();
        let hello = pb::TrackerHello {
            credential: Some(pb::tracker_hello::Credential::SessionToken(
                credential.token.to_vec(),
            )),
        };
        (hello, credential.generation)
    }

    /// A new tracker connection, the newest session token proven at its
    /// hello; learns the address the tracker observed.
    async fn connect(&self) -> Result<Connected, String> {
        let name = shard(&self.shared).ok_or("no tracker configured")?;
        let tracker = resolve(name, self.client.local_addr()).await?;
        let (hello, generation) = self.hello();
        let connection = self
            .client
            .connect(tracker, &self.shared.identity, hello)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(context) = &self.swarm {
            context.learn_addresses(connection.observed_address(), Some(tracker));
            // Punch requests go out on this connection; punch notices
            // arrive on it (datagrams).
            *lock(&context.tracker) = Some(connection.clone());
            let (context, notices) = (context.clone(), connection.clone());
            self.shared.spawn(async move {
                loop {
                    let notice = tokio::select! {
                        () = context.shared.cancel.cancelled() => return,
                        notice = notices.next_punch_notice() => notice,
                    };
                    match notice {
                        Some(notice) => super::download::follow_notice(&context, notice),
                        None => return,
                    }
                }
            });
        }
        Ok(Connected {
            connection,
            generation,
        })
    }

    /// The connection to use, (re)connected if needed, with the newest
    /// token presented (a refresh hello when the license renewal brought a
    /// new one since).
    async fn ready(&mut self) -> Result<TrackerConnection, String> {
        let newest = self.shared.credentials.generation();
        if self
            .connection
            .as_ref()
            .is_some_and(|c| c.generation < newest)
        {
            let (hello, generation) = self.hello();
            let refreshed = match &self.connection {
                Some(connected) => connected
                    .connection
                    .hello(hello)
                    .await
                    .map(|observed| (observed, connected.connection.quic().remote_address())),
                None => Err(ClientError::NoResponse),
            };
            match refreshed {
                Ok((observed, tracker)) => {
                    if let Some(connected) = &mut self.connection {
                        connected.generation = generation;
                    }
                    if let (Some(context), Some(observed)) = (&self.swarm, observed) {
                        context.learn_addresses(Some(observed), Some(tracker));
                    }
                }
                // A tracker that refuses the refresh closes the connection:
                // connect again, with the new token at the hello.
                Err(_) => self.connection = None,
            }
        }
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        self.connection
            .as_ref()
            .map(|c| c.connection.clone())
            .ok_or_else(|| "no tracker connection".to_owned())
    }

    fn swarm_id(&self, rendition: &RenditionName) -> pb::SwarmId {
        pb::SwarmId {
            title: self.shared.title.to_string(),
            rendition: rendition.to_string(),
        }
    }

    /// Announces every rendition that is due.
    async fn round(&mut self) {
        let shared = self.shared.clone();
        let active: Vec<RenditionName> = lock(&shared.scheduler_stats).keys().cloned().collect();
        let now = Instant::now();
        let due: Vec<RenditionName> = active
            .into_iter()
            .filter(|r| self.next_due.get(r).is_none_or(|at| *at <= now))
            .collect();
        // A renewed token is presented promptly, due or not: the old one
        // expires while the next announce may be 30 s away.
        let stale = self
            .connection
            .as_ref()
            .is_some_and(|c| c.generation < shared.credentials.generation());
        if due.is_empty() && !stale {
            return;
        }
        if self.connection.is_none() && now < self.retry_at {
            return;
        }
        let tracker_connection = match self.ready().await {
            Ok(connection) => connection,
            Err(message) => {
                shared.emit(Event::TrackerUnavailable { message });
                self.retry_at = Instant::now() + shared.config.max_announce_interval;
                return;
            }
        };
        for (index, rendition) in due.into_iter().enumerate() {
            // Session-wide counters ride on the first announce of a round,
            // and so do the connection attempts made since the last one.
            let mut report =
                self.reported
                    .delta(&shared, &rendition, index == 0, self.swarm.is_none());
            let connects: Vec<pb::ConnectReport> = if index == 0 {
                lock(&shared.connect_reports).drain(..).collect()
            } else {
                Vec::new()
            };
            report.stats.connects.clone_from(&connects);
            let announce = self.announce(&rendition, report.stats.clone());
            let mut interval = shared.config.max_announce_interval;
            match tracker_connection.announce(announce).await {
                Ok(reply) => {
                    self.reported.acknowledged(&rendition, &report);
                    if reply.interval_s > 0 {
                        interval = interval.min(Duration::from_secs(u64::from(reply.interval_s)));
                    }
                    // Stats only: the peers named are not for this viewer.
                    if let Some(context) = &self.swarm {
                        super::download::join_swarm(context, &rendition, reply);
                    }
                }
                Err(ClientError::Refused { code, message }) => {
                    restore(&shared, connects);
                    shared.emit(Event::TrackerUnavailable {
                        message: format!("{code:?}: {message}"),
                    });
                }
                Err(e) => {
                    restore(&shared, connects);
                    shared.emit(Event::TrackerUnavailable {
                        message: e.to_string(),
                    });
                    self.connection = None;
                    if let Some(context) = &self.swarm {
                        *lock(&context.tracker) = None;
                    }
                    self.retry_at = Instant::now() + shared.config.max_announce_interval;
                    return;
                }
            }
            self.next_due.insert(rendition, Instant::now() + interval);
        }
    }

    fn announce(&self, rendition: &RenditionName, stats: pb::StatsDelta) -> pb::Announce {
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
        let capacity = match shared.config.upload {
            Upload::Capped { bytes_per_second } if uploading => bytes_per_second * 8,
            _ => 0,
        };
        pb::Announce {
            swarm: Some(self.swarm_id(rendition)),
            addresses: if uploading {
                context
                    .candidates()
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            } else {
                Vec::new()
            },
            holdings: bitmap(&held),
            next_sequence: held.last().map_or(0, |s| s + 1),
            upload_capacity_bps: capacity,
            upload_in_use_bps: 0,
            stats: Some(stats),
            max_peers: u32::try_from(shared.config.max_peers).unwrap_or(u32::MAX),
            nat_class: shared.nat_class() as i32,
        }
    }

    /// Leaves the swarm: one `Stop` per rendition announced (or with
    /// counters not yet reported), carrying the counters gathered since the
    /// last acknowledged report, so the tracker stops naming this viewer at
    /// once and counts the session's last bytes. The caller bounds it.
    async fn leave(&mut self) -> Result<(), String> {
        let shared = self.shared.clone();
        let cdn_only = self.swarm.is_none();
        let mut renditions: BTreeSet<RenditionName> = self.next_due.keys().cloned().collect();
        let active: Vec<RenditionName> = lock(&shared.scheduler_stats).keys().cloned().collect();
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
                    stats: Some(report.stats.clone()),
                })),
            };
            self.request(&request).await?;
            self.reported.acknowledged(&rendition, &report);
        }
        Ok(())
    }

    /// Sends `request` on the tracker connection, reconnecting once if
    /// there is none or it has failed (an announce cut short by the
    /// cancellation gives up the connection's session stream).
    async fn request(&mut self, request: &pb::TrackerRequest) -> Result<(), String> {
        if let Some(connected) = &self.connection {
            match connected.connection.request(request).await {
                Ok(_) => return Ok(()),
                Err(ClientError::Refused { code, message }) => {
                    return Err(format!("{code:?}: {message}"));
                }
                Err(_) => self.connection = None,
            }
        }
        let connected = self.connect().await?;
        let result = connected
            .connection
            .request(request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        self.connection = Some(connected);
        result
    }
}

/// Puts back connection reports an announce failed to deliver (the newest
/// stay if that exceeds the bound).
fn restore(shared: &Shared, connects: Vec<pb::ConnectReport>) {
    for report in connects {
        shared.report_connect(report);
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
