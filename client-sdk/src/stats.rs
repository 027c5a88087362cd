//! A session's counters: [`Stats`] is the snapshot an app reads; the
//! counters behind it are shared by the session's tasks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A snapshot of a session's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Verified bytes from other viewers.
    pub bytes_from_peers: u64,
    /// Verified bytes from edge seeds.
    pub bytes_from_seeds: u64,
    /// Verified bytes from the CDN.
    pub bytes_from_cdn: u64,
    /// Verified bytes whose peer was in another ISP.
    pub bytes_cross_isp: u64,
    /// Verified bytes whose peer was in another region.
    pub bytes_cross_region: u64,
    /// Bytes uploaded to other viewers.
    pub bytes_uploaded: u64,
    /// Requests from other viewers answered BUSY because the uploads in
    /// progress were already more than the upload backlog behind the cap.
    pub uploads_refused_busy: u64,
    /// Share of downloaded bytes that did not come from the CDN.
    pub offload_ratio: f64,
    /// Segments verified.
    pub segments_delivered: u64,
    /// Transfers whose bytes failed verification.
    pub segments_rejected: u64,
    /// Peers dropped (corrupt, slow, stalled).
    pub peers_banned: u64,
    /// Connections to peers and seeds attempted.
    pub peer_connect_attempts: u64,
    /// Connections to peers and seeds that completed their hello.
    pub peer_connects: u64,
    /// Connections to peers and seeds that failed (unreachable, refused,
    /// timed out, bad credential).
    pub peer_connect_failures: u64,
    /// Connections to other viewers open now (hello completed, not yet
    /// closed), over every rendition.
    pub peers_connected: u64,
    /// Connections to edge seeds open now.
    pub seeds_connected: u64,
    /// Connections that needed a punch (the tracker asked the peer to open
    /// towards this viewer at the same time), among `peer_connects`.
    pub peer_connects_punched: u64,
    /// Punch requests sent to the tracker.
    pub punch_requests: u64,
    /// Punch notices received: peers that asked this viewer to open.
    pub punch_notices: u64,
    /// What kind of NAT this viewer is behind, as far as it knows.
    pub nat: NatType,
    /// License renewals that succeeded.
    pub license_renewals: u64,
    /// Total stall time reported by the player.
    pub rebuffer_time: Duration,
    /// Stalls reported by the player.
    pub rebuffer_count: u32,
    /// Wall time the player reported playing: from `player_started` or a
    /// playing playhead, minus stalls and paused playhead reports. Wall
    /// time, like `rebuffer_time`, so that rebuffer / (played + rebuffer)
    /// is a share of the viewer's time.
    pub played_time: Duration,
    /// Time from `open` returning to the first segment played.
    pub startup_time: Option<Duration>,
    /// Bytes of verified segments held now (at most the store budget).
    pub store_bytes: u64,
}

/// What kind of NAT a viewer is behind, from what others saw of its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NatType {
    /// Not known yet (fewer than two observers, or nothing conclusive).
    #[default]
    Unknown,
    /// No NAT: others reach the socket's own address.
    Open,
    /// One public port whatever the destination (full cone, restricted and
    /// port-restricted cones): peers reach it after a hole punch.
    EndpointIndependent,
    /// A new public port per destination ("symmetric"): peers behind such
    /// a NAT too cannot reach it; open and endpoint-independent ones can.
    EndpointDependent,
}

impl From<loaves_proto::pb::NatClass> for NatType {
    fn from(class: loaves_proto::pb::NatClass) -> Self {
        use loaves_proto::pb::NatClass;
        match class {
            NatClass::Open => Self::Open,
            NatClass::EndpointIndependent => Self::EndpointIndependent,
            NatClass::EndpointDependent => Self::EndpointDependent,
            NatClass::Unknown => Self::Unknown,
        }
    }
}

impl From<NatType> for loaves_proto::pb::NatClass {
    fn from(nat: NatType) -> Self {
        match nat {
            NatType::Open => Self::Open,
            NatType::EndpointIndependent => Self::EndpointIndependent,
            NatType::EndpointDependent => Self::EndpointDependent,
            NatType::Unknown => Self::Unknown,
        }
    }
}

impl Stats {
    /// Bytes downloaded from every source.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_from_peers + self.bytes_from_seeds + self.bytes_from_cdn
    }
}

/// Counters shared by the session's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cross_isp: AtomicU64,
    pub(crate) cross_region: AtomicU64,
    pub(crate) uploaded: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) banned: AtomicU64,
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) peers_connected: AtomicU64,
    pub(crate) seeds_connected: AtomicU64,
    pub(crate) connects_punched: AtomicU64,
    pub(crate) punch_requests: AtomicU64,
    pub(crate) punch_notices: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) rebuffer_ms: AtomicU64,
    pub(crate) rebuffer_count: AtomicU64,
    /// Startup in ms + 1 (0: not started).
    pub(crate) startup_ms_plus_one: AtomicU64,
    pub(crate) play_clock: Mutex<PlayClock>,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The session-wide part of a snapshot (the per-rendition byte counts
    /// come from the schedulers).
    pub(crate) fn fill(&self, stats: &mut Stats) {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        stats.bytes_cross_isp = read(&self.cross_isp);
        stats.bytes_cross_region = read(&self.cross_region);
        stats.bytes_uploaded = read(&self.uploaded);
        stats.uploads_refused_busy = read(&self.refused_busy);
        stats.segments_rejected = read(&self.rejected);
        stats.peers_banned = read(&self.banned);
        stats.peer_connect_attempts = read(&self.connect_attempts);
        stats.peer_connects = read(&self.connects);
        stats.peer_connect_failures = read(&self.connect_failures);
        stats.peers_connected = read(&self.peers_connected);
        stats.seeds_connected = read(&self.seeds_connected);
        stats.peer_connects_punched = read(&self.connects_punched);
        stats.punch_requests = read(&self.punch_requests);
        stats.punch_notices = read(&self.punch_notices);
        stats.license_renewals = read(&self.renewals);
        stats.rebuffer_time = Duration::from_millis(read(&self.rebuffer_ms));
        stats.rebuffer_count = u32::try_from(read(&self.rebuffer_count)).unwrap_or(u32::MAX);
        stats.played_time = crate::lock(&self.play_clock).total(Instant::now());
        stats.startup_time = match read(&self.startup_ms_plus_one) {
            0 => None,
            ms => Some(Duration::from_millis(ms - 1)),
        };
    }
}

/// Counts one open connection in a gauge of [`Counters`] while it lives
/// (a task aborted mid-connection still gives its count back).
#[derive(Debug)]
pub(crate) struct Open<'a>(&'a AtomicU64);

impl<'a> Open<'a> {
    pub(crate) fn count(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wall time the player spent playing. The player's hooks switch it on
/// (started, playing playhead, stall over) and off (stall, paused
/// playhead); a std lock because every use is a short update.
#[derive(Debug, Default)]
pub(crate) struct PlayClock {
    /// Played before the current run.
    played: Duration,
    /// Start of the current run, while playing.
    since: Option<Instant>,
}

impl PlayClock {
    /// The player is playing from `now` (no-op if it already was).
    pub(crate) fn play(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// The player stopped at `now` (stalled, paused or gone).
    pub(crate) fn pause(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.played += now.saturating_duration_since(since);
        }
    }

    /// Played up to `now`.
    pub(crate) fn total(&self, now: Instant) -> Duration {
        self.played
            + self
                .since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}
