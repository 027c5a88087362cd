//! The scheduler: which source each segment comes from, and when.
//!
//! Sans-I/O, in the manner of quinn-proto: no sockets, no clock, no
//! randomness of its own. The driver (or the simulator) feeds it events —
//! time, the playhead, the segments of the manifest, peers and what they
//! hold, transfer progress and outcomes — and calls [`Scheduler::poll`] to get
//! [`Action`]s: fetch a segment (or a byte range of it) from a peer, a seed or
//! the CDN; cancel a transfer; drop a peer. Time is a [`Millis`] value the
//! caller passes in; the only randomness is a seeded generator created from
//! [`SchedulerConfig::seed`], so a run replays exactly.
//!
//! Every segment has a deadline: the instant the player needs it, computed
//! from the playhead and the durations of the segments before it. *What* to
//! do about each segment is the [`Policy`]'s decision (see [`policy`]); the
//! scheduler does the book-keeping: transfers in flight, per-source
//! throughput estimates, the bytes each source delivered, bans.
//!
//! ## Invariants
//!
//! - A segment has at most one transfer in flight, except for the moment a
//!   late peer transfer is cancelled and its missing tail requested from the
//!   CDN (the cancel is emitted first, in the same batch).
//! - A cancelled transfer's bytes stay valid as the prefix of the range fetch
//!   that completes it: the driver keeps them and appends the range.
//! - A peer banned for misbehaving (corrupt bytes, false claims) is never
//!   asked again in this session; one dropped for being slow or stalled may
//!   come back when it connects again (it was busy, not dishonest), with
//!   its strikes reset.
//! - Nothing is fetched beyond the look-ahead window, and the number of
//!   transfers in flight is bounded (per peer and in total).

pub mod policy;

use std::collections::{BTreeMap, HashSet};

pub use policy::{AnyPolicy, CdnOnly, Choice, DeadlineFirst, DeadlineFirstThresholds, Policy};

/// Milliseconds on the caller's clock (virtual time in the simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// `self - earlier`, or 0 if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A peer (viewer or seed) known to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

/// One transfer the scheduler asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

/// Where bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Another viewer.
    Peer(PeerId),
    /// An edge seed (operator infrastructure, peer protocol).
    Seed(PeerId),
    /// The CDN (HTTP byte ranges).
    Cdn,
}

impl Source {
    /// The peer behind this source, if any.
    pub fn peer(self) -> Option<PeerId> {
        match self {
            Self::Peer(peer) | Self::Seed(peer) => Some(peer),
            Self::Cdn => None,
        }
    }
}

/// Whether a peer is a viewer or an edge seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// Another viewer of the same swarm.
    Viewer,
    /// An operator's edge seed.
    Seed,
}

/// Network distance of a peer, from the tracker's region / ISP hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Locality {
    /// Same ISP (and so the same region).
    SameIsp,
    /// Same region, another ISP.
    SameRegion,
    /// Elsewhere.
    Remote,
}

/// What the driver knows of a peer when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// Viewer or seed.
    pub kind: PeerKind,
    /// Distance.
    pub locality: Locality,
    /// Measured round-trip time.
    pub rtt_ms: u32,
    /// Initial throughput estimate, bytes per second (refined by transfers).
    pub throughput_bytes_per_s: u64,
}

/// Live or video on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live: follow the live edge; inject new segments into the swarm.
    Live,
    /// VOD: rarest first beyond the urgent window.
    Vod,
}

/// Book-keeping limits of the scheduler (the policy has its own thresholds).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Live or VOD.
    pub mode: Mode,
    /// How many segments past the playhead are considered.
    pub lookahead_segments: u64,
    /// Most transfers in flight to one peer.
    pub max_inflight_per_peer: u32,
    /// Most transfers in flight in total.
    pub max_inflight_total: usize,
    /// CDN throughput estimate before any CDN transfer was measured, bytes/s.
    pub cdn_throughput_bytes_per_s: u64,
    /// CDN round-trip time estimate.
    pub cdn_rtt_ms: u32,
    /// A transfer with no progress for this long is abandoned.
    pub stall_timeout_ms: u64,
    /// Before playback starts, the first segment's deadline is this far away.
    pub startup_target_ms: u64,
    /// Seed of the deterministic random generator.
    pub seed: u64,
    /// Most peers tracked at once (further `add_peer` calls are ignored).
    pub max_peers: usize,
    /// A peer or seed that answered BUSY is not asked again for this long.
    /// It is at capacity: asking again at once only gets another BUSY
    /// while the deadline comes closer, and the CDN or another source is
    /// the better bet meanwhile.
    pub busy_backoff_ms: u64,
    /// The longest a peer or seed whose transfers keep failing (connection
    /// errors, refusals such as a session token it does not accept) is
    /// left out. One failure costs nothing (transient); from the second in
    /// a row the source is left out for `busy_backoff_ms`, doubling with
    /// each further failure up to this bound, until it delivers a segment
    /// again. Without it a source that refuses every request at once is
    /// asked again at every poll.
    pub failure_backoff_max_ms: u64,
    /// While a peer transfer is in flight, how often its pace is checked
    /// against its deadline (see [`Scheduler::poll_timeout`]).
    pub late_check_interval_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Live,
            lookahead_segments: 8,
            max_inflight_per_peer: 2,
            max_inflight_total: 8,
            cdn_throughput_bytes_per_s: 2_500_000,
            cdn_rtt_ms: 50,
            stall_timeout_ms: 2_000,
            startup_target_ms: 1_000,
            seed: 0,
            max_peers: 64,
            busy_backoff_ms: 1_000,
            failure_backoff_max_ms: 16_000,
            late_check_interval_ms: 200,
        }
    }
}

/// A byte range `[start, end)` of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a peer is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Its transfers kept arriving too late and had to be completed elsewhere.
    Slow,
    /// A transfer made no progress within the stall timeout.
    Stalled,
    /// It sent bytes that failed manifest verification.
    Corrupt,
    /// It kept announcing segments it then said it did not hold.
    FalseClaims,
}

impl DropReason {
    /// Whether the peer misbehaved (banned for the session) rather than
    /// being slow (dropped; it may connect again later).
    pub fn is_misbehaviour(self) -> bool {
        matches!(self, Self::Corrupt | Self::FalseClaims)
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a transfer of `range` of segment `sequence` from `source`. When
    /// `range.start > 0`, the bytes before it come from the transfer this
    /// one completes.
    Fetch {
        /// Id to report progress and outcome under.
        transfer: TransferId,
        /// Segment.
        sequence: u64,
        /// Where from.
        source: Source,
        /// Which bytes.
        range: ByteRange,
    },
    /// Stop a transfer (keep the bytes it delivered if a range fetch of the
    /// same segment follows).
    Cancel {
        /// The transfer.
        transfer: TransferId,
    },
    /// Stop using this peer for the rest of the session.
    DropPeer {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: DropReason,
    },
}

/// How a transfer ended, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All bytes arrived and the whole segment verified against the manifest.
    Verified,
    /// The assembled segment failed manifest verification.
    Corrupt,
    /// The transfer failed (connection lost, HTTP error, timeout).
    Failed,
    /// The source refused at once because it is at capacity.
    Busy,
    /// The peer answered that it does not hold the segment, which it had
    /// announced (a HAVE notice or its tracker holdings).
    NotHeld,
}

/// Bytes delivered (verified) by each kind of source, and other counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerStats {
    /// Bytes from viewers.
    pub bytes_from_peers: u64,
    /// Bytes from edge seeds.
    pub bytes_from_seeds: u64,
    /// Bytes from the CDN.
    pub bytes_from_cdn: u64,
    /// Peer transfers completed by a CDN byte range instead of restarting.
    pub range_completions: u64,
    /// Segments fetched early from seed / CDN to inject them into the swarm.
    pub injections: u64,
    /// Peers dropped (any reason).
    pub peers_dropped: u64,
    /// Segments verified and handed to the player.
    pub segments_completed: u64,
}

#[derive(Debug, Clone)]
struct Segment {
    size: u64,
    duration_ms: u32,
    held: bool,
    /// The single transfer in flight for it, if any.
    transfer: Option<TransferId>,
    /// Viewers (not seeds) known to hold it.
    holders: u32,
    /// Whether it was considered for live injection already.
    injection_decided: bool,
}

impl Segment {
    /// Not held and nothing fetching it: `poll` would place it.
    fn unplaced(&self) -> bool {
        !self.held && self.transfer.is_none()
    }
}

#[derive(Debug, Clone)]
struct Peer {
    info: PeerInfo,
    /// Segments it announced, sorted and unique (a small window: binary
    /// search over a contiguous vector beats a tree here).
    holds: Holds,
    inflight: u32,
    /// Measured throughput (EWMA), bytes per second.
    throughput: f64,
    late_strikes: u32,
    /// Announced segments it then said it did not hold.
    false_claims: u32,
    /// It answered BUSY, or its transfers keep failing: not a candidate
    /// before this instant.
    busy_until: Millis,
    /// Transfers from it that failed in a row (reset by a verified one).
    failures_in_a_row: u32,
}

/// How long a source is left out after `failures_in_a_row` failed
/// transfers: nothing for the first, then `base_ms` doubling per further
/// failure, at most `max_ms`.
fn failure_backoff_ms(failures_in_a_row: u32, base_ms: u64, max_ms: u64) -> Option<u64> {
    let doublings = failures_in_a_row.checked_sub(2)?;
    let factor = 1u64.checked_shl(doublings.min(32)).unwrap_or(u64::MAX);
    Some(base_ms.saturating_mul(factor).min(max_ms))
}

#[derive(Debug, Clone)]
struct Transfer {
    sequence: u64,
    source: Source,
    range: ByteRange,
    started_at: Millis,
    last_progress_at: Millis,
    received: u64,
    /// For a CDN range completion: the source (peer or seed) whose prefix
    /// it completes, and how many bytes that prefix holds.
    completes: Option<(Source, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Playhead {
    sequence: u64,
    offset_ms: u64,
    at: Millis,
    playing: bool,
}

/// The view of one candidate source the policy decides on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The source.
    pub source: Source,
    /// Distance (CDN: [`Locality::Remote`]).
    pub locality: Locality,
    /// When the whole segment would arrive if asked now.
    pub projected_finish: Millis,
}

/// Everything the policy sees about one segment to decide where it comes from.
#[derive(Debug, Clone)]
pub struct SegmentDecision<'a> {
    /// Current time.
    pub now: Millis,
    /// The segment.
    pub sequence: u64,
    /// Its size.
    pub size: u64,
    /// When the player needs it.
    pub deadline: Millis,
    /// Live or VOD.
    pub mode: Mode,
    /// Viewers that hold it and have a free slot, best first.
    pub peers: &'a [Candidate],
    /// Seeds with a free slot (seeds hold every segment), best first.
    pub seeds: &'a [Candidate],
    /// The CDN.
    pub cdn: Candidate,
    /// Other viewers in the swarm: the tracker's count when reported,
    /// else the neighbours the scheduler knows.
    pub swarm_size: usize,
    /// Whether no viewer is known to hold it yet (a fresh live segment).
    pub is_fresh: bool,
    /// A uniform random number in [0, 1) drawn for this decision.
    pub random: f64,
}

/// The deadline-aware scheduler.
#[derive(Debug)]
pub struct Scheduler<P: Policy> {
    config: SchedulerConfig,
    policy: P,
    segments: BTreeMap<u64, Segment>,
    /// Ordered by id: candidates are visited in id order (ties in the
    /// policy's rank keep that order), without sorting on every decision.
    peers: PeerTable,
    banned: HashSet<PeerId>,
    /// Ordered by id, so stall checks and bans visit transfers in a
    /// replayable order.
    transfers: BTreeMap<TransferId, Transfer>,
    next_transfer: u64,
    playhead: Option<Playhead>,
    cdn_throughput: f64,
    rng_state: u64,
    stats: SchedulerStats,
    /// Viewers in the swarm as the tracker counts them (the scheduler only
    /// knows its neighbours otherwise).
    /// `None` until the tracker's first answer: the swarm is unknown.
    reported_swarm_size: Option<usize>,
    /// When the last `poll` ran.
    last_poll: Millis,
    /// The earliest instant a segment the last `poll` left waiting needs a
    /// new decision (its policy's `Choice::Wait { until }`).
    wake_at: Option<Millis>,
}

impl<P: Policy> Scheduler<P> {
    /// A scheduler with no segments and no peers yet.
    pub fn new(config: SchedulerConfig, policy: P) -> Self {
        let cdn_throughput = config.cdn_throughput_bytes_per_s.max(1) as f64;
        let rng_state = config.seed;
        Self {
            config,
            policy,
            segments: BTreeMap::new(),
            peers: PeerTable::default(),
            banned: Default::default(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
            playhead: None,
            cdn_throughput,
            rng_state,
            stats: SchedulerStats::default(),
            reported_swarm_size: None,
            last_poll: Millis(0),
            wake_at: None,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// The policy in use.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The swarm's size as the tracker reported it in its last announce
    /// reply (live injection is shared among all its viewers, not only the
    /// neighbours this scheduler knows).
    pub fn set_swarm_size(&mut self, viewers: usize) {
        self.reported_swarm_size = Some(viewers);
    }

    /// A segment of the (verified) manifest.
    pub fn add_segment(&mut self, sequence: u64, size: u64, duration_ms: u32) {
        self.segments.entry(sequence).or_insert(Segment {
            size,
            duration_ms,
            held: false,
            transfer: None,
            holders: 0,
            injection_decided: false,
        });
        // A viewer may have announced it before the manifest listed it.
        let holders = self
            .peers
            .values()
            .filter(|p| p.info.kind == PeerKind::Viewer && p.holds.contains(&sequence))
            .count() as u32;
        if let Some(segment) = self.segments.get_mut(&sequence) {
            segment.holders = holders;
        }
    }

    /// The driver no longer holds `sequence` (its store evicted it): it is
    /// fetched again if it comes back into the window.
    pub fn forget_held(&mut self, sequence: u64) {
        if let Some(segment) = self.segments.get_mut(&sequence) {
            segment.held = false;
        }
    }

    /// Whether the segment is held (verified) locally.
    pub fn is_held(&self, sequence: u64) -> bool {
        self.segments.get(&sequence).is_some_and(|s| s.held)
    }

    /// Whether `poll` has anything to look at: a transfer in flight, or a
    /// segment of the look-ahead window still to be placed. When not,
    /// `poll` returns no action and changes nothing, so a driver may skip it.
    pub fn has_work(&self) -> bool {
        if !self.transfers.is_empty() {
            return true;
        }
        let Some(window) = self.window() else {
            return false;
        };
        self.segments.range(window).any(|(_, s)| s.unplaced())
    }

    /// Whether `sequence` is one `poll` would still place: listed, within
    /// the look-ahead window, not held and with no transfer in flight. A
    /// driver may use it to skip polling on news (a HAVE notice) about
    /// segments that are not.
    pub fn is_wanted(&self, sequence: u64) -> bool {
        self.window().is_some_and(|w| w.contains(&sequence))
            && self.segments.get(&sequence).is_some_and(Segment::unplaced)
    }

    /// The look-ahead window: the segments from the playhead's on that
    /// `poll` places.
    fn window(&self) -> Option<std::ops::Range<u64>> {
        let from = self.playhead?.sequence;
        Some(from..from.saturating_add(self.config.lookahead_segments))
    }

    /// Where the player is: segment `sequence`, `offset_ms` into it, at
    /// `now`; `playing` is false before startup and during a stall.
    pub fn set_playhead(&mut self, now: Millis, sequence: u64, offset_ms: u64, playing: bool) {
        self.playhead = Some(Playhead {
            sequence,
            offset_ms,
            at: now,
            playing,
        });
        // Segments behind the playhead are of no further use to the player;
        // drop their book-keeping to bound memory (the driver's store keeps
        // the bytes for upload as long as its budget allows).
        let keep_from = sequence.saturating_sub(1);
        let stale: Vec<u64> = self
            .segments
            .range(..keep_from)
            .filter(|(_, s)| s.transfer.is_none())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in stale {
            self.segments.remove(&seq);
        }
    }

    /// A peer connected. Ignored when banned or when `max_peers` are known.
    pub fn add_peer(&mut self, peer: PeerId, info: PeerInfo) {
        if self.banned.contains(&peer)
            || (self.peers.len() >= self.config.max_peers && !self.peers.contains_key(&peer))
        {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                info,
                holds: Default::default(),
                inflight: 0,
                throughput: info.throughput_bytes_per_s.max(1) as f64,
                late_strikes: 0,
                false_claims: 0,
                busy_until: Millis(0),
                failures_in_a_row: 0,
            },
        );
    }

    /// A peer went away; its transfers are abandoned by the driver (report
    /// them as [`Outcome::Failed`]).
    pub fn remove_peer(&mut self, peer: PeerId) {
        if let Some(gone) = self.peers.remove(&peer)
            && gone.info.kind == PeerKind::Viewer
        {
            for seq in gone.holds {
                if let Some(segment) = self.segments.get_mut(&seq) {
                    segment.holders = segment.holders.saturating_sub(1);
                }
            }
        }
    }

    /// A peer holds `sequence` (from a HAVE notice or a tracker announce).
    pub fn peer_has(&mut self, peer: PeerId, sequence: u64) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        // Bound what is remembered per peer to the useful window.
        let floor = self.playhead.map_or(0, |p| p.sequence);
        if sequence < floor
            || sequence > floor.saturating_add(4 * self.config.lookahead_segments + 64)
        {
            return;
        }
        if state.holds.insert(sequence)
            && state.info.kind == PeerKind::Viewer
            && let Some(segment) = self.segments.get_mut(&sequence)
        {
            segment.holders += 1;
        }
        state.holds.drop_below(floor);
    }

    /// Progress of a transfer: `received` bytes of its range so far.
    pub fn on_progress(&mut self, now: Millis, transfer: TransferId, received: u64) {
        let Some(state) = self.transfers.get_mut(&transfer) else {
            return;
        };
        let received = received.min(state.range.len());
        if received > state.received {
            state.received = received;
            state.last_progress_at = now;
        }
        let elapsed_ms = now.since(state.started_at);
        let (source, received) = (state.source, state.received);
        // Below ~100 ms the estimate is mostly RTT noise.
        if elapsed_ms >= 100 && received > 0 {
            let rate = received as f64 * 1000.0 / elapsed_ms as f64;
            self.update_throughput(source, rate);
        }
    }

    /// A transfer ended.
    pub fn on_complete(
        &mut self,
        now: Millis,
        transfer: TransferId,
        outcome: Outcome,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(state) = self.transfers.remove(&transfer) else {
            return actions;
        };
        if let Some(peer) = state.source.peer().and_then(|p| self.peers.get_mut(&p)) {
            peer.inflight = peer.inflight.saturating_sub(1);
        }
        let Some(segment) = self.segments.get_mut(&state.sequence) else {
            return actions;
        };
        if segment.transfer == Some(transfer) {
            segment.transfer = None;
        }
        match outcome {
            Outcome::Verified => {
                segment.held = true;
                if let Some(peer) = state.source.peer().and_then(|p| self.peers.get_mut(&p)) {
                    peer.failures_in_a_row = 0;
                }
                let elapsed_ms = now.since(state.started_at).max(1);
                self.update_throughput(
                    state.source,
                    state.range.len() as f64 * 1000.0 / elapsed_ms as f64,
                );
                self.stats.segments_completed += 1;
                self.account(state.source, state.range.len());
                // The prefix counts for the source that sent it (even if
                // that peer is gone by now).
                if let Some((source, prefix)) = state.completes {
                    self.account(source, prefix);
                }
            }
            Outcome::Corrupt => {
                // Blame the peer that sent bytes; the CDN is the trusted path.
                // For a range completion the suspect is the prefix's peer.
                let suspect = state
                    .source
                    .peer()
                    .or(state.completes.and_then(|(s, _)| s.peer()));
                if let Some(peer) = suspect {
                    self.ban(peer, DropReason::Corrupt, &mut actions);
                }
            }
            Outcome::Failed | Outcome::Busy | Outcome::NotHeld => {
                if outcome == Outcome::Busy
                    && let Some(peer) = state.source.peer()
                    && let Some(peer_state) = self.peers.get_mut(&peer)
                {
                    peer_state.busy_until = now.plus(self.config.busy_backoff_ms);
                }
                if outcome == Outcome::Failed
                    && let Some(peer) = state.source.peer()
                    && let Some(peer_state) = self.peers.get_mut(&peer)
                {
                    peer_state.failures_in_a_row = peer_state.failures_in_a_row.saturating_add(1);
                    if let Some(backoff) = failure_backoff_ms(
                        peer_state.failures_in_a_row,
                        self.config.busy_backoff_ms,
                        self.config.failure_backoff_max_ms,
                    ) {
                        peer_state.busy_until = peer_state.busy_until.max(now.plus(backoff));
                    }
                }
                // Failed or denied: ask somebody else next time, forget that
                // this peer offers the segment (it may have evicted it). BUSY
                // says nothing of the segment, only of the peer's capacity,
                // which the back-off above covers: once it is over, the peer
                // is a holder like any other.
                if outcome != Outcome::Busy
                    && let Some(peer) = state.source.peer()
                    && let Some(peer_state) = self.peers.get_mut(&peer)
                    && peer_state.holds.remove(&state.sequence)
                    && peer_state.info.kind == PeerKind::Viewer
                    && let Some(segment) = self.segments.get_mut(&state.sequence)
                {
                    segment.holders = segment.holders.saturating_sub(1);
                }
                // A peer that keeps denying what it announced lies in its
                // HAVE notices: each lie costs its neighbours a request.
                if outcome == Outcome::NotHeld
                    && let Some(peer) = state.source.peer()
                {
                    let claims = self.peers.get_mut(&peer).map(|p| {
                        p.false_claims += 1;
                        p.false_claims
                    });
                    if claims.is_some_and(|c| c >= self.policy.max_false_claims()) {
                        self.ban(peer, DropReason::FalseClaims, &mut actions);
                    }
                }
            }
        }
        actions
    }

    /// The instant `poll` must run next if no event (a playhead report,
    /// a peer, a HAVE, transfer progress or end) comes before it, like
    /// quinn-proto's `poll_timeout`: the earliest of
    /// - a transfer's stall deadline (no progress for `stall_timeout_ms`),
    /// - the next check of a peer transfer's pace against its deadline
    ///   (every `late_check_interval_ms` while one is in flight: its
    ///   projected finish slips with every moment without progress),
    /// - the end of a peer's BUSY back-off (it becomes a candidate again),
    /// - the instant a waiting segment must be placed (the policy's
    ///   [`Choice::Wait`]).
    ///
    /// `None`: nothing will change until an event. A driver sleeps until
    /// this instant; the simulator schedules the viewer's next poll there.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut earliest = self.wake_at;
        let mut consider = |at: Millis| {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        };
        let mut peer_transfer = false;
        for transfer in self.transfers.values() {
            consider(transfer.last_progress_at.plus(self.config.stall_timeout_ms));
            peer_transfer |= transfer.source.peer().is_some();
        }
        if peer_transfer {
            consider(self.last_poll.plus(self.config.late_check_interval_ms));
        }
        if self.window().is_some() {
            for peer in self.peers.values() {
                if peer.busy_until > self.last_poll {
                    consider(peer.busy_until);
                }
            }
        }
        earliest
    }

    /// Decides what to do now.
    pub fn poll(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.last_poll = now;
        self.wake_at = None;
        self.check_transfers(now, &mut actions);
        self.plan_fetches(now, &mut actions);
        actions
    }

    /// Checks the book-keeping invariants (module documentation); panics
    /// naming the one broken. The simulator runs it after every step of a
    /// debug build, the property tests after every interaction.
    #[cfg(any(test, debug_assertions))]
    pub fn check_invariants(&self) {
        let mut per_segment: BTreeMap<u64, usize> = BTreeMap::new();
        for (id, transfer) in &self.transfers {
            *per_segment.entry(transfer.sequence).or_default() += 1;
            assert!(
                transfer.received <= transfer.range.len(),
                "transfer {id:?} received more than its range"
            );
            if let Some(segment) = self.segments.get(&transfer.sequence) {
                assert!(
                    transfer.range.end <= segment.size,
                    "transfer {id:?} asks past the end of segment {}",
                    transfer.sequence
                );
            }
        }
        for (sequence, count) in &per_segment {
            assert!(
                *count <= 1,
                "segment {sequence} has {count} transfers in flight"
            );
        }
        for (sequence, segment) in &self.segments {
            if let Some(id) = segment.transfer {
                let transfer = self.transfers.get(&id);
                assert!(
                    transfer.is_some_and(|t| t.sequence == *sequence),
                    "segment {sequence} points at transfer {id:?}, which is not its own"
                );
                assert!(
                    !segment.held,
                    "held segment {sequence} is still being fetched"
                );
            }
            let holders = self
                .peers
                .values()
                .filter(|p| p.info.kind == PeerKind::Viewer && p.holds.contains(sequence))
                .count() as u32;
            assert!(
                segment.holders >= holders,
                "segment {sequence}: {} holders counted, {holders} viewers hold it",
                segment.holders
            );
        }
        assert!(
            self.transfers.len() <= self.config.max_inflight_total,
            "{} transfers in flight, more than {}",
            self.transfers.len(),
            self.config.max_inflight_total
        );
        assert!(self.peers.len() <= self.config.max_peers, "too many peers");
        let viewers = self
            .peers
            .values()
            .filter(|p| p.info.kind == PeerKind::Viewer)
            .count();
        assert_eq!(viewers, self.peers.viewers(), "viewer count out of step");
        for (id, peer) in self.peers.iter() {
            assert!(
                !self.banned.contains(id),
                "banned peer {id:?} is a candidate"
            );
            // A peer removed and added again starts at 0 while its old
            // transfers are still reported: at most, never more.
            let in_flight = self
                .transfers
                .values()
                .filter(|t| t.source.peer() == Some(*id))
                .count();
            assert!(
                peer.inflight as usize <= in_flight,
                "peer {id:?} counts {} transfers, {in_flight} in flight",
                peer.inflight
            );
        }
    }

    fn check_transfers(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let ids: Vec<TransferId> = self.transfers.keys().copied().collect();
        for id in ids {
            let Some(transfer) = self.transfers.get(&id).cloned() else {
                continue;
            };
            if now.since(transfer.last_progress_at) >= self.config.stall_timeout_ms {
                self.abandon(id, actions);
                if let Some(peer) = transfer.source.peer() {
                    self.ban(peer, DropReason::Stalled, actions);
                }
                continue;
            }
            let (Source::Peer(peer) | Source::Seed(peer)) = transfer.source else {
                continue;
            };
            let Some(deadline) = self.deadline(now, transfer.sequence) else {
                continue;
            };
            let remaining = transfer.range.len().saturating_sub(transfer.received);
            // The transfer's own pace says more than the peer's average:
            // a peer that slows down mid-transfer must be noticed at once.
            let elapsed_ms = now.since(transfer.started_at);
            let rate = if elapsed_ms >= 300 && transfer.received > 0 {
                transfer.received as f64 * 1000.0 / elapsed_ms as f64
            } else {
                self.peers.get(&peer).map_or(1.0, |p| p.throughput)
            };
            let projected = now.plus((remaining as f64 * 1000.0 / rate.max(1.0)) as u64);
            let cdn_finish = self.cdn_projection(now, remaining);
            if self
                .policy
                .complete_from_cdn(now, deadline, projected, cdn_finish)
            {
                // Keep the prefix, fetch the missing tail from the CDN.
                let prefix_end = transfer.range.start + transfer.received;
                let size = transfer.range.end;
                self.abandon(id, actions);
                self.stats.range_completions += 1;
                let strikes = self.peers.get_mut(&peer).map(|p| {
                    p.late_strikes += 1;
                    p.late_strikes
                });
                if strikes.is_some_and(|s| s >= self.policy.max_late_strikes()) {
                    self.ban(peer, DropReason::Slow, actions);
                }
                self.start(
                    now,
                    transfer.sequence,
                    Source::Cdn,
                    ByteRange {
                        start: prefix_end,
                        end: size,
                    },
                    Some((transfer.source, transfer.received)),
                    actions,
                );
            }
        }
    }

    fn plan_fetches(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let (Some(playhead), Some(window)) = (self.playhead, self.window()) else {
            return;
        };
        // One pass over the window: each segment's deadline adds the
        // durations of the segments before it (as `deadline` does).
        let mut wanted: Vec<(u64, Millis, u32)> = Vec::new();
        let mut ahead_ms = 0u64;
        for (&seq, s) in self.segments.range(window) {
            if s.unplaced() {
                wanted.push((seq, self.deadline_after(now, playhead, ahead_ms), s.holders));
            }
            ahead_ms += u64::from(s.duration_ms);
        }
        // Deadline order; for VOD, segments with slack go rarest first.
        let urgent_horizon = now.plus(self.policy.urgent_window_ms());
        wanted.sort_by_key(|&(seq, deadline, holders)| {
            let urgent = deadline <= urgent_horizon;
            match self.config.mode {
                Mode::Vod if !urgent => (1, holders, seq),
                _ => (0, 0, seq),
            }
        });
        if wanted.is_empty() {
            return;
        }
        let neighbours = self.peers.viewers();
        // The tracker counts the viewers who share (announced an address):
        // this one among them unless it does not upload, in which case one
        // other is left out here, which errs towards injecting.
        let swarm_size = neighbours.max(self.reported_swarm_size.unwrap_or(0).saturating_sub(1));
        // Whether this viewer knows its swarm at all: right after joining,
        // before the tracker answered and before any neighbour connected,
        // every segment looks fresh (no known holder) and the swarm looks
        // empty, so every one of them would be injected from the
        // infrastructure. Until then only deadlines decide.
        let swarm_known = self.reported_swarm_size.is_some() || neighbours > 0;
        let (mut peers, mut seeds) = (Vec::new(), Vec::new());
        for (sequence, deadline, holders) in wanted {
            if self.transfers.len() >= self.config.max_inflight_total {
                break;
            }
            let Some(size) = self.segments.get(&sequence).map(|s| s.size) else {
                continue;
            };
            self.candidates(now, sequence, size, &mut peers, &mut seeds);
            let is_fresh = holders == 0;
            let random = self.next_random();
            let decision = SegmentDecision {
                now,
                sequence,
                size,
                deadline,
                mode: self.config.mode,
                peers: &peers,
                seeds: &seeds,
                cdn: Candidate {
                    source: Source::Cdn,
                    locality: Locality::Remote,
                    projected_finish: self.cdn_projection(now, size),
                },
                swarm_size,
                is_fresh,
                random,
            };
            let injection_first_look = self.config.mode == Mode::Live
                && swarm_known
                && is_fresh
                && self
                    .segments
                    .get(&sequence)
                    .is_some_and(|s| !s.injection_decided);
            let choice = self.policy.choose(&decision, injection_first_look);
            if injection_first_look && let Some(segment) = self.segments.get_mut(&sequence) {
                segment.injection_decided = true;
            }
            let source = match choice {
                Choice::Wait { until } => {
                    self.wake_at = Some(self.wake_at.map_or(until, |at| at.min(until)));
                    continue;
                }
                Choice::Inject(source) => {
                    self.stats.injections += 1;
                    source
                }
                Choice::Fetch(source) => source,
            };
            self.start(
                now,
                sequence,
                source,
                ByteRange {
                    start: 0,
                    end: size,
                },
                None,
                actions,
            );
        }
    }

    /// Fills `peers` and `seeds` (emptied first) with the sources that
    /// could send `sequence` now, best first.
    fn candidates(
        &self,
        now: Millis,
        sequence: u64,
        size: u64,
        peers: &mut Vec<Candidate>,
        seeds: &mut Vec<Candidate>,
    ) {
        peers.clear();
        seeds.clear();
        // `holders` never undercounts (it can overcount after a peer
        // reconnects), so zero means no viewer can be a candidate.
        let any_holder = self.segments.get(&sequence).is_some_and(|s| s.holders > 0);
        for (id, peer) in self.peers.iter() {
            if peer.inflight >= self.config.max_inflight_per_peer || peer.busy_until > now {
                continue;
            }
            // Seeds hold every segment; a viewer only what it announced.
            let is_seed = peer.info.kind == PeerKind::Seed;
            let offers = is_seed || (any_holder && peer.holds.contains(&sequence));
            if !offers {
                continue;
            }
            // Queue: transfers already in flight to this peer share its rate.
            let queued: u64 = self
                .transfers
                .values()
                .filter(|t| t.source.peer() == Some(*id))
                .map(|t| t.range.len().saturating_sub(t.received))
                .sum();
            let transfer_ms = ((queued + size) as f64 * 1000.0 / peer.throughput.max(1.0)) as u64;
            let candidate = Candidate {
                source: match peer.info.kind {
                    PeerKind::Viewer => Source::Peer(*id),
                    PeerKind::Seed => Source::Seed(*id),
                },
                locality: peer.info.locality,
                projected_finish: now.plus(u64::from(peer.info.rtt_ms) + transfer_ms),
            };
            if is_seed {
                seeds.push(candidate);
            } else {
                peers.push(candidate);
            }
        }
        let rank = |c: &Candidate| self.policy.rank(c);
        peers.sort_by_key(rank);
        seeds.sort_by_key(rank);
    }

    fn start(
        &mut self,
        now: Millis,
        sequence: u64,
        source: Source,
        range: ByteRange,
        completes: Option<(Source, u64)>,
        actions: &mut Vec<Action>,
    ) {
        let transfer = TransferId(self.next_transfer);
        self.next_transfer += 1;
        if let Some(peer) = source.peer().and_then(|p| self.peers.get_mut(&p)) {
            peer.inflight += 1;
        }
        if let Some(segment) = self.segments.get_mut(&sequence) {
            segment.transfer = Some(transfer);
        }
        self.transfers.insert(
            transfer,
            Transfer {
                sequence,
                source,
                range,
                started_at: now,
                last_progress_at: now,
                received: 0,
                completes,
            },
        );
        actions.push(Action::Fetch {
            transfer,
            sequence,
            source,
            range,
        });
    }

    fn abandon(&mut self, id: TransferId, actions: &mut Vec<Action>) {
        if let Some(transfer) = self.transfers.remove(&id) {
            if let Some(peer) = transfer.source.peer().and_then(|p| self.peers.get_mut(&p)) {
                peer.inflight = peer.inflight.saturating_sub(1);
            }
            if let Some(segment) = self.segments.get_mut(&transfer.sequence)
                && segment.transfer == Some(id)
            {
                segment.transfer = None;
            }
            actions.push(Action::Cancel { transfer: id });
        }
    }

    fn ban(&mut self, peer: PeerId, reason: DropReason, actions: &mut Vec<Action>) {
        if self.banned.contains(&peer) {
            return;
        }
        if reason.is_misbehaviour() {
            // Even when it is gone already: it must not come back.
            self.banned.insert(peer);
        } else if !self.peers.contains_key(&peer) {
            return;
        }
        let in_flight: Vec<TransferId> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.source.peer() == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for id in in_flight {
            self.abandon(id, actions);
        }
        self.remove_peer(peer);
        self.stats.peers_dropped += 1;
        actions.push(Action::DropPeer { peer, reason });
    }

    fn account(&mut self, source: Source, bytes: u64) {
        match source {
            Source::Peer(_) => self.stats.bytes_from_peers += bytes,
            Source::Seed(_) => self.stats.bytes_from_seeds += bytes,
            Source::Cdn => self.stats.bytes_from_cdn += bytes,
        }
    }

    fn update_throughput(&mut self, source: Source, rate: f64) {
        const WEIGHT: f64 = 0.3;
        let estimate = match source.peer() {
            Some(peer) => match self.peers.get_mut(&peer) {
                Some(state) => &mut state.throughput,
                None => return,
            },
            None => &mut self.cdn_throughput,
        };
        *estimate = (1.0 - WEIGHT) * *estimate + WEIGHT * rate.max(1.0);
    }

    fn cdn_projection(&self, now: Millis, bytes: u64) -> Millis {
        now.plus(
            u64::from(self.config.cdn_rtt_ms)
                + (bytes as f64 * 1000.0 / self.cdn_throughput) as u64,
        )
    }

    /// When the player needs `sequence`, from the playhead and durations.
    fn deadline(&self, now: Millis, sequence: u64) -> Option<Millis> {
        let playhead = self.playhead?;
        if sequence < playhead.sequence {
            return None;
        }
        let ahead_ms: u64 = self
            .segments
            .range(playhead.sequence..sequence)
            .map(|(_, s)| u64::from(s.duration_ms))
            .sum();
        Some(self.deadline_after(now, playhead, ahead_ms))
    }

    /// The deadline of a segment `ahead_ms` of playback past the playhead's
    /// segment start.
    fn deadline_after(&self, now: Millis, playhead: Playhead, ahead_ms: u64) -> Millis {
        if playhead.playing {
            Millis(
                playhead
                    .at
                    .plus(ahead_ms)
                    .0
                    .saturating_sub(playhead.offset_ms),
            )
        } else {
            now.plus(self.config.startup_target_ms).plus(ahead_ms)
        }
    }

    fn next_random(&mut self) -> f64 {
        // SplitMix64: tiny, fast and good enough for sampling decisions; the
        // point is that the caller's seed makes every run replayable.
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A set of segment numbers: a bitmap of the `WINDOW` segments from `base`
/// (which follows the playhead, so it holds nearly everything and is
/// looked up without leaving the peer's own record), plus a sorted vector
/// for the rest.
#[derive(Debug, Clone, Default)]
struct Holds {
    base: u64,
    bits: u128,
    rest: Vec<u64>,
}

impl Holds {
    const WINDOW: u64 = u128::BITS as u64;

    /// The bit of `sequence`, if it falls in the bitmap.
    fn bit(&self, sequence: u64) -> Option<u128> {
        let offset = sequence.checked_sub(self.base)?;
        (offset < Self::WINDOW).then(|| 1u128 << offset)
    }

    fn contains(&self, sequence: &u64) -> bool {
        match self.bit(*sequence) {
            Some(bit) => self.bits & bit != 0,
            None => self.rest.binary_search(sequence).is_ok(),
        }
    }

    /// Adds `sequence`; whether it was new.
    fn insert(&mut self, sequence: u64) -> bool {
        if let Some(bit) = self.bit(sequence) {
            let new = self.bits & bit == 0;
            self.bits |= bit;
            return new;
        }
        match self.rest.binary_search(&sequence) {
            Ok(_) => false,
            Err(at) => {
                self.rest.insert(at, sequence);
                true
            }
        }
    }

    /// Removes `sequence`; whether it was there.
    fn remove(&mut self, sequence: &u64) -> bool {
        if let Some(bit) = self.bit(*sequence) {
            let was = self.bits & bit != 0;
            self.bits &= !bit;
            return was;
        }
        match self.rest.binary_search(sequence) {
            Ok(at) => {
                self.rest.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Forgets every segment before `floor` (and moves the bitmap there).
    fn drop_below(&mut self, floor: u64) {
        let below = self.rest.partition_point(|&s| s < floor);
        self.rest.drain(..below);
        if floor <= self.base {
            return;
        }
        let shift = floor - self.base;
        self.bits = if shift >= Self::WINDOW {
            0
        } else {
            self.bits >> shift
        };
        self.base = floor;
        // Segments of the vector that now fall in the bitmap move there.
        let end = floor.saturating_add(Self::WINDOW);
        let inside = self.rest.partition_point(|&s| s < end);
        for sequence in self.rest.drain(..inside) {
            self.bits |= 1u128 << (sequence - floor);
        }
    }
}

impl IntoIterator for Holds {
    type Item = u64;
    type IntoIter = std::vec::IntoIter<u64>;

    /// In no particular order.
    fn into_iter(self) -> Self::IntoIter {
        let mut all = self.rest;
        let mut bits = self.bits;
        while bits != 0 {
            let offset = u64::from(bits.trailing_zeros());
            all.push(self.base + offset);
            bits &= bits - 1;
        }
        all.into_iter()
    }
}

/// The peers, sorted by id in two parallel vectors: a few dozen entries,
/// looked up on every HAVE and walked for every segment decision, so a
/// binary search over contiguous ids beats a tree or a hashed map.
#[derive(Debug, Default)]
struct PeerTable {
    ids: Vec<PeerId>,
    peers: Vec<Peer>,
    /// How many of them are viewers (not seeds).
    viewers: usize,
}

impl PeerTable {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn viewers(&self) -> usize {
        self.viewers
    }

    fn contains_key(&self, id: &PeerId) -> bool {
        self.ids.binary_search(id).is_ok()
    }

    fn get(&self, id: &PeerId) -> Option<&Peer> {
        let at = self.ids.binary_search(id).ok()?;
        self.peers.get(at)
    }

    fn get_mut(&mut self, id: &PeerId) -> Option<&mut Peer> {
        let at = self.ids.binary_search(id).ok()?;
        self.peers.get_mut(at)
    }

    /// Adds or replaces a peer.
    fn insert(&mut self, id: PeerId, peer: Peer) {
        if peer.info.kind == PeerKind::Viewer {
            self.viewers += 1;
        }
        match self.ids.binary_search(&id) {
            Ok(at) => {
                let old = std::mem::replace(&mut self.peers[at], peer);
                if old.info.kind == PeerKind::Viewer {
                    self.viewers -= 1;
                }
            }
            Err(at) => {
                self.ids.insert(at, id);
                self.peers.insert(at, peer);
            }
        }
    }

    fn remove(&mut self, id: &PeerId) -> Option<Peer> {
        let at = self.ids.binary_search(id).ok()?;
        self.ids.remove(at);
        let gone = self.peers.remove(at);
        if gone.info.kind == PeerKind::Viewer {
            self.viewers -= 1;
        }
        Some(gone)
    }

    fn values(&self) -> std::slice::Iter<'_, Peer> {
        self.peers.iter()
    }

    /// In id order.
    fn iter(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.ids.iter().zip(self.peers.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::Holds;

    fn sorted(holds: &Holds) -> Vec<u64> {
        let mut all: Vec<u64> = holds.clone().into_iter().collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn holds_is_a_set_across_its_bitmap_and_its_vector() {
        let mut holds = Holds::default();
        // 0..128 is the bitmap at first; 500 and 130 go to the vector.
        for sequence in [5, 500, 130, 5, 127] {
            holds.insert(sequence);
        }
        assert!(!holds.insert(500) && !holds.insert(5));
        assert_eq!(sorted(&holds), vec![5, 127, 130, 500]);
        assert!(holds.contains(&130) && holds.contains(&127) && !holds.contains(&128));
        // Moving the bitmap up pulls 130 and 500 into it, drops 5.
        holds.drop_below(400);
        assert_eq!(sorted(&holds), vec![500]);
        assert!(holds.contains(&500) && !holds.contains(&130));
        holds.drop_below(10);
        assert_eq!(sorted(&holds), vec![500]);
        // Below the bitmap (a seek backwards): kept in the vector.
        assert!(holds.insert(20));
        assert!(holds.contains(&20));
        assert!(holds.remove(&20) && !holds.remove(&20));
        assert!(holds.remove(&500) && !holds.contains(&500));
        assert_eq!(sorted(&holds), Vec::<u64>::new());
        holds.insert(900);
        holds.drop_below(1_000);
        assert_eq!(sorted(&holds), Vec::<u64>::new());
    }
}
