//! A discrete-event simulator of one live event, in virtual time.
//!
//! It runs the real scheduler ([`loaves_scheduler`]) in every
//! viewer and the real tracker swarm book ([`loaves_swarm::swarm::SwarmBook`])
//! for peer lists — no copies of their logic — over a flow-level network
//! model: each transfer's rate is the smaller of its sender's upload share
//! and its receiver's download share (capacity divided equally among a
//! node's active transfers), recomputed whenever a transfer starts or ends
//! at either end. The CDN has no capacity limit of its own; seeds have an
//! upload capacity. Viewers join at random times in a window, start a few
//! segments behind the live edge, and play in real (virtual) time; a
//! segment missing at its playback instant is a stall.
//!
//! A viewer's scheduler runs on events (its own completions, a neighbour's
//! HAVE, the player's `tick_ms` playhead report) and at the instants it
//! asks for itself (`Scheduler::poll_timeout`: a waiting segment's start,
//! a stall or pace check, the end of a BUSY back-off), as the SDK's driver
//! does: decisions that depend only on time are taken when they are due.
//!
//! Simplifications, stated: HAVE notices reach neighbours after half the
//! RTT (their peer map is updated at once; their scheduler runs then, if it
//! still wants that segment, and no sooner than `have_poll_interval_ms`
//! after its previous run); the player reports its playhead every
//! `tick_ms` (a poll follows when the scheduler has work); latency
//! enters otherwise only as the RTT the scheduler is told; no peer
//! misbehaves (corruption is covered by the real-process tests, not here),
//! so `corrupt_bytes_to_player` is 0 by construction. Churn: a configured
//! share of viewers leaves for good after watching a while (their
//! transfers end, receivers see them fail, neighbours drop them and the
//! tracker is told); departed viewers' played time counts until they left.
//!
//! Cost: each transfer in flight has one pending completion (an indexed
//! heap), so a change of rate moves it instead of queueing another event.
//! A re-share still touches every transfer of the sender: a seed with
//! thousands of concurrent uploads makes each of its transfer starts and
//! ends cost thousands of updates (see BENCHMARKS.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use loaves_proto::{UnixSeconds, pb};
use loaves_scheduler::{
    Action, Locality, Millis, Mode, Outcome, PeerId, PeerInfo, PeerKind, Scheduler,
    SchedulerConfig, Source, TransferId,
};
use loaves_swarm::swarm::{PeerKey, Requester, SwarmBook, SwarmConfig};

pub mod report;

use crate::report::{Report, quantile};
pub use loaves_scheduler::AnyPolicy;

/// What to simulate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Viewers of the event (one swarm: one title, one rendition).
    pub viewers: u64,
    /// Length of the event, virtual seconds.
    pub duration_s: u64,
    /// Video bitrate, bits per second.
    pub bitrate_bps: u64,
    /// Segment duration.
    pub segment_ms: u32,
    /// Viewers join uniformly at random in `[0, join_window_s)`.
    pub join_window_s: u64,
    /// Mean viewer upload capacity (each gets 0.5x..1.5x of it), bits/s.
    pub viewer_upload_bps: u64,
    /// Viewer download capacity, bits/s.
    pub viewer_download_bps: u64,
    /// Edge seeds.
    pub seeds: u32,
    /// Upload capacity of each seed, bits/s.
    pub seed_upload_bps: u64,
    /// When positive, the concurrent uploads a seed accepts; beyond them it
    /// answers BUSY at once (the edge seed's `max_concurrent_uploads`, 512
    /// by default there). 0 = no limit: the seed's capacity is shared
    /// among all its uploads, as before this parameter existed.
    pub seed_upload_slots: usize,
    /// When positive, a seed also answers BUSY when the bytes its uploads
    /// still have to send would take longer than this at its capacity (the
    /// edge seed's `max_egress_backlog_ms`, which applies when it is given
    /// an egress budget; 0 = no budget, the edge seed's default).
    pub seed_max_backlog_ms: u64,
    /// ISPs viewers are spread over.
    pub isps: u32,
    /// Regions the ISPs are spread over.
    pub regions: u32,
    /// Round-trip time between viewers (told to the scheduler).
    pub rtt_ms: u32,
    /// Segments behind the live edge a viewer starts at.
    pub live_delay_segments: u64,
    /// "deadline-first" or "cdn-only".
    pub policy: String,
    /// Seed of every random choice (joins, capacities, schedulers, tracker).
    pub seed: u64,
    /// How often each viewer's player and scheduler run, virtual ms.
    pub tick_ms: u64,
    /// A viewer's scheduler runs on a neighbour's HAVE of a segment it
    /// still wants (see `Scheduler::is_wanted`), no sooner than this long
    /// after its previous run (HAVEs arriving meanwhile are handled
    /// together), virtual ms. Runs on its own tick and on its own
    /// completions are not delayed.
    pub have_poll_interval_ms: u64,
    /// Seconds between tracker announces.
    pub announce_interval_s: u64,
    /// Most neighbours per viewer.
    pub max_peers: usize,
    /// Concurrent uploads a viewer accepts; beyond them it answers BUSY at
    /// once (as the SDK's upload server does), so requesters go elsewhere.
    pub upload_slots: usize,
    /// Churn: the share of viewers (0..=1) who leave before the end. Each
    /// of them watches 0.25x..1.75x of `churn_watch_s` (uniform) from its
    /// join, then leaves for good. 0 = nobody leaves.
    pub churn_leave_fraction: f64,
    /// Churn: the mean watch time of a viewer who leaves, seconds.
    pub churn_watch_s: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            viewers: 1_000,
            duration_s: 600,
            bitrate_bps: 5_000_000,
            segment_ms: 2_000,
            join_window_s: 60,
            viewer_upload_bps: 10_000_000,
            viewer_download_bps: 50_000_000,
            seeds: 2,
            seed_upload_bps: 1_000_000_000,
            seed_upload_slots: 0,
            seed_max_backlog_ms: 0,
            isps: 4,
            regions: 2,
            rtt_ms: 40,
            live_delay_segments: 6,
            policy: "deadline-first".into(),
            seed: 1,
            tick_ms: 500,
            have_poll_interval_ms: 0,
            announce_interval_s: 15,
            max_peers: 20,
            upload_slots: 4,
            churn_leave_fraction: 0.0,
            churn_watch_s: 120,
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("invalid simulation config: {0}")]
    Invalid(String),
}

/// Engine counters, for reporting the simulator's own speed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct EngineStats {
    /// Events processed.
    pub events: u64,
    /// Scheduler polls.
    pub polls: u64,
    /// Transfers started.
    pub transfers: u64,
    /// Fresh live segments fetched early from seed / CDN (all viewers).
    pub injections: u64,
    /// Late peer transfers completed by a CDN byte range (all viewers).
    pub range_completions: u64,
    /// Peers dropped by schedulers (slow, stalled).
    pub peers_dropped: u64,
    /// Viewers who left before the end (churn).
    pub departures: u64,
    /// Polls at the instants schedulers asked for (`poll_timeout`), among
    /// `polls`.
    pub timer_polls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Publish(u64),
    Join(u32),
    Tick(u32),
    /// A neighbour's HAVE arrived: run the scheduler (coalesced).
    Poll(u32),
    /// The instant the viewer's scheduler asked to be polled at
    /// (`Scheduler::poll_timeout`); stale when a later one replaced it.
    Timer(u32),
    Announce(u32),
    SeedRegistration,
    /// A viewer leaves for good (churn).
    Leave(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Viewer(u32),
    Seed(u32),
    Cdn,
}

#[derive(Debug)]
struct Transfer {
    from: Node,
    to: u32,
    id: TransferId,
    sequence: u64,
    total: f64,
    done: f64,
    /// Bytes per virtual millisecond.
    rate: f64,
    last_ms: u64,
    cross_isp: bool,
}

#[derive(Debug, Default)]
struct Player {
    start_sequence: u64,
    playhead: u64,
    offset_ms: u64,
    started: bool,
    playing: bool,
    startup_ms: Option<u64>,
    rebuffer_ms: u64,
    rebuffer_events: u64,
    played_ms: u64,
    last_tick_ms: u64,
}

#[derive(Debug)]
struct Viewer {
    scheduler: Scheduler<AnyPolicy>,
    joined: bool,
    join_ms: u64,
    /// When it leaves for good (churn), if it does.
    leave_ms: Option<u64>,
    left: bool,
    isp: u32,
    up: f64,
    down: f64,
    /// Segments held, with the virtual instant each arrived.
    held: Held,
    neighbours: Vec<u32>,
    uploads: Vec<u32>,
    downloads: Vec<u32>,
    player: Player,
    poll_pending: bool,
    /// When its scheduler last ran.
    last_step_ms: u64,
    /// The instant of its pending `Timer` event (`u64::MAX`: none).
    timer_at: u64,
}

#[derive(Debug)]
struct SeedNode {
    up: f64,
    uploads: Vec<u32>,
}

/// The simulator.
#[derive(Debug)]
pub struct Simulation {
    config: SimConfig,
    viewers: Vec<Viewer>,
    seeds: Vec<SeedNode>,
    book: SwarmBook,
    swarm: pb::SwarmId,
    transfers: Vec<Option<Transfer>>,
    free_slots: Vec<u32>,
    /// One pending completion per transfer in flight.
    completions: Completions,
    /// Every other event.
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    /// Reused buffer of transfer slots (re-sharing).
    scratch: Vec<u32>,
    order: u64,
    now: u64,
    latest_published: Option<u64>,
    cross_isp_bytes: f64,
    isp_names: Vec<String>,
    region_names: Vec<String>,
    engine: EngineStats,
}

const EPOCH: u64 = 1_800_000_000;

fn bytes_per_ms(bps: u64) -> f64 {
    bps as f64 / 8.0 / 1000.0
}

fn key_of(node: u64) -> PeerKey {
    let mut key = [0xA5u8; 32];
    key[..8].copy_from_slice(&node.to_le_bytes());
    key
}

fn node_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl Simulation {
    /// Prepares a run.
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        if config.viewers == 0 || config.viewers > u64::from(u32::MAX / 2) {
            return Err(SimError::Invalid("viewers must be 1..2^31".into()));
        }
        if config.segment_ms == 0 || config.tick_ms == 0 || config.bitrate_bps == 0 {
            return Err(SimError::Invalid(
                "segment_ms, tick_ms and bitrate_bps must be positive".into(),
            ));
        }
        if config.isps == 0 || config.regions == 0 {
            return Err(SimError::Invalid(
                "isps and regions must be positive".into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.churn_leave_fraction)
            || (config.churn_leave_fraction > 0.0 && config.churn_watch_s == 0)
        {
            return Err(SimError::Invalid(
                "churn_leave_fraction must be in 0..=1, with a positive churn_watch_s".into(),
            ));
        }
        let policy = AnyPolicy::parse(&config.policy)
            .ok_or_else(|| SimError::Invalid(format!("unknown policy {:?}", config.policy)))?;
        let mut rng = config.seed ^ 0x5EED_0F10_AF5E_u64;
        // Churn draws from its own stream, so runs without churn keep the
        // joins and capacities they had before churn existed.
        let mut churn_rng = config.seed ^ 0xC4A2_11E5_u64;
        let mut viewers = Vec::with_capacity(config.viewers as usize);
        for index in 0..config.viewers {
            let jitter = 0.5 + next_unit(&mut rng);
            let scheduler_config = SchedulerConfig {
                mode: Mode::Live,
                lookahead_segments: config.live_delay_segments + 2,
                cdn_throughput_bytes_per_s: config.viewer_download_bps / 8,
                cdn_rtt_ms: config.rtt_ms,
                seed: config.seed.wrapping_mul(31).wrapping_add(index),
                max_peers: config.max_peers + config.seeds as usize,
                ..SchedulerConfig::default()
            };
            let join_ms = (next_unit(&mut rng) * config.join_window_s as f64 * 1000.0) as u64;
            let leaves = next_unit(&mut churn_rng) < config.churn_leave_fraction;
            let watch = 0.25 + 1.5 * next_unit(&mut churn_rng);
            let leave_ms = leaves
                .then(|| join_ms + (watch * config.churn_watch_s as f64 * 1000.0).max(1.0) as u64);
            viewers.push(Viewer {
                scheduler: Scheduler::new(scheduler_config, policy.clone()),
                joined: false,
                join_ms,
                leave_ms,
                left: false,
                isp: (index % u64::from(config.isps)) as u32,
                up: bytes_per_ms(config.viewer_upload_bps) * jitter,
                down: bytes_per_ms(config.viewer_download_bps),
                held: Held::default(),
                neighbours: Vec::new(),
                uploads: Vec::new(),
                downloads: Vec::new(),
                player: Player::default(),
                poll_pending: false,
                timer_at: u64::MAX,
                last_step_ms: 0,
            });
        }
        let seeds = (0..config.seeds)
            .map(|_| SeedNode {
                up: bytes_per_ms(config.seed_upload_bps),
                uploads: Vec::new(),
            })
            .collect();
        let swarm_config = SwarmConfig {
            announce_interval_s: config.announce_interval_s as u32,
            default_peers_per_reply: config.max_peers,
            ..SwarmConfig::default()
        };
        let isp_names = (0..config.isps).map(|i| format!("isp-{i}")).collect();
        let region_names = (0..config.regions).map(|r| format!("region-{r}")).collect();
        let mut simulation = Self {
            book: SwarmBook::new(swarm_config, config.seed),
            swarm: pb::SwarmId {
                title: "event".into(),
                rendition: "1080p".into(),
            },
            viewers,
            seeds,
            transfers: Vec::new(),
            free_slots: Vec::new(),
            completions: Completions::default(),
            queue: BinaryHeap::new(),
            scratch: Vec::new(),
            order: 0,
            now: 0,
            latest_published: None,
            cross_isp_bytes: 0.0,
            isp_names,
            region_names,
            engine: EngineStats::default(),
            config,
        };
        simulation.schedule(0, Event::SeedRegistration);
        simulation.schedule(0, Event::Publish(0));
        for v in 0..simulation.viewers.len() {
            let at = simulation.viewers[v].join_ms;
            simulation.schedule(at, Event::Join(v as u32));
            if let Some(at) = simulation.viewers[v].leave_ms {
                simulation.schedule(at, Event::Leave(v as u32));
            }
        }
        Ok(simulation)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Reverse((at, self.order, event)));
    }

    fn region_of_isp(&self, isp: u32) -> u32 {
        isp % self.config.regions
    }

    /// Runs to the end and returns the report and the engine's counters.
    pub fn run(mut self) -> (Report, EngineStats) {
        let end = self.config.duration_s * 1000;
        loop {
            let next_event = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let next_completion = self.completions.peek();
            // A completion goes first when it is due at the same instant.
            if let Some((at, slot)) = next_completion
                && next_event.is_none_or(|e| at <= e)
            {
                if at > end {
                    break;
                }
                self.now = at;
                self.engine.events += 1;
                self.transfer_done(slot);
                continue;
            }
            let Some(Reverse((at, _, event))) = self.queue.pop() else {
                break;
            };
            if at > end {
                break;
            }
            self.now = at;
            self.engine.events += 1;
            // A viewer that left runs nothing more.
            if let Event::Tick(v) | Event::Poll(v) | Event::Timer(v) | Event::Announce(v) = event
                && self.viewers[v as usize].left
            {
                continue;
            }
            match event {
                Event::Publish(sequence) => self.publish(sequence),
                Event::Join(v) => self.join(v),
                Event::Tick(v) => self.tick(v),
                Event::Poll(v) => {
                    self.viewers[v as usize].poll_pending = false;
                    self.step(v);
                }
                Event::Timer(v) => {
                    if self.viewers[v as usize].timer_at == at {
                        self.viewers[v as usize].timer_at = u64::MAX;
                        self.engine.timer_polls += 1;
                        self.step(v);
                    }
                }
                Event::Announce(v) => self.announce(v),
                Event::SeedRegistration => self.register_seeds(),
                Event::Leave(v) => self.leave(v),
            }
        }
        self.now = end;
        for v in 0..self.viewers.len() {
            if self.viewers[v].joined && !self.viewers[v].left {
                self.advance_player(v as u32);
            }
        }
        for viewer in &self.viewers {
            let stats = viewer.scheduler.stats();
            self.engine.injections += stats.injections;
            self.engine.range_completions += stats.range_completions;
            self.engine.peers_dropped += stats.peers_dropped;
        }
        (self.report(), self.engine)
    }

    fn publish(&mut self, sequence: u64) {
        self.latest_published = Some(sequence);
        let (size, duration) = (self.segment_bytes(), self.config.segment_ms);
        for viewer in self.viewers.iter_mut().filter(|v| v.joined && !v.left) {
            viewer.scheduler.add_segment(sequence, size, duration);
        }
        self.schedule(
            self.now + u64::from(self.config.segment_ms),
            Event::Publish(sequence + 1),
        );
    }

    fn segment_bytes(&self) -> u64 {
        self.config.bitrate_bps * u64::from(self.config.segment_ms) / 8 / 1000
    }

    fn join(&mut self, v: u32) {
        let latest = self.latest_published.unwrap_or(0);
        let start = latest.saturating_sub(self.config.live_delay_segments);
        let (size, duration, now) = (self.segment_bytes(), self.config.segment_ms, self.now);
        let viewer = &mut self.viewers[v as usize];
        viewer.joined = true;
        viewer.player = Player {
            start_sequence: start,
            playhead: start,
            last_tick_ms: now,
            ..Player::default()
        };
        for sequence in start..=latest {
            viewer.scheduler.add_segment(sequence, size, duration);
        }
        viewer.scheduler.set_playhead(Millis(now), start, 0, false);
        self.announce(v);
        self.tick(v);
    }

    /// Viewer `v` leaves for good: its downloads end, its neighbours drop
    /// it, what it was sending fails at the receivers (who go elsewhere),
    /// and the tracker forgets it.
    fn leave(&mut self, v: u32) {
        if !self.viewers[v as usize].joined || self.viewers[v as usize].left {
            return;
        }
        self.advance_player(v);
        self.engine.departures += 1;
        let viewer = &mut self.viewers[v as usize];
        viewer.left = true;
        viewer.held = Held::default();
        let neighbours = std::mem::take(&mut viewer.neighbours);
        let downloads = viewer.downloads.clone();
        for slot in downloads {
            self.finish(slot);
        }
        let gone = PeerId(u64::from(v));
        for n in neighbours {
            let neighbour = &mut self.viewers[n as usize];
            neighbour.neighbours.retain(|&x| x != v);
            neighbour.scheduler.remove_peer(gone);
        }
        let uploads = self.viewers[v as usize].uploads.clone();
        let now = Millis(self.now);
        for slot in uploads {
            if let Some(transfer) = self.finish(slot) {
                let receiver = &mut self.viewers[transfer.to as usize];
                receiver.scheduler.remove_peer(gone);
                let actions = receiver
                    .scheduler
                    .on_complete(now, transfer.id, Outcome::Failed);
                self.apply(transfer.to, actions);
            }
        }
        self.book.stop(&key_of(u64::from(v)), &self.swarm);
    }

    fn register_seeds(&mut self) {
        for s in 0..self.seeds.len() as u32 {
            let key = key_of(self.config.viewers + u64::from(s));
            let isp = s % self.config.isps;
            let region = self.region_of_isp(isp);
            let registration = pb::SeedRegistration {
                swarms: vec![self.swarm.clone()],
                addresses: vec![format!("127.1.{}.{}:4433", s / 250, s % 250 + 1)],
                upload_capacity_bps: self.config.seed_upload_bps,
                upload_in_use_bps: 0,
            };
            let who = Requester {
                key: &key,
                region: &self.region_names[region as usize],
                isp: &self.isp_names[isp as usize],
                observed: None,
            };
            let _ =
                self.book
                    .register_seed(UnixSeconds(EPOCH + self.now / 1000), &who, &registration);
        }
        self.schedule(self.now + 60_000, Event::SeedRegistration);
    }

    fn announce(&mut self, v: u32) {
        let viewer = &self.viewers[v as usize];
        let playhead = viewer.player.playhead;
        let mut last = None;
        let mut sequence = playhead;
        while viewer.held.contains(sequence) {
            last = Some(sequence);
            sequence += 1;
        }
        let holdings = last.map(|last| pb::Holdings {
            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                first_sequence: playhead,
                last_sequence: last,
            })),
        });
        let announce = pb::Announce {
            swarm: Some(self.swarm.clone()),
            addresses: vec![format!(
                "127.{}.{}.{}:4433",
                (v >> 16) & 0xff,
                (v >> 8) & 0xff,
                v & 0xff
            )],
            holdings,
            next_sequence: playhead,
            upload_capacity_bps: (viewer.up * 8.0 * 1000.0) as u64,
            upload_in_use_bps: 0,
            stats: None,
            max_peers: self.config.max_peers as u32,
            nat_class: 0,
        };
        let key = key_of(u64::from(v));
        let isp = viewer.isp;
        let region = self.region_of_isp(isp);
        let who = Requester {
            key: &key,
            region: &self.region_names[region as usize],
            isp: &self.isp_names[isp as usize],
            observed: None,
        };
        let reply = self
            .book
            .announce(UnixSeconds(EPOCH + self.now / 1000), &who, &announce)
            .ok()
            .and_then(|outcome| loaves_swarm::wire::decode_reply(&outcome.reply).ok());
        // Debug builds (the tests) check the book after every announce.
        #[cfg(debug_assertions)]
        if let Err(broken) = self.book.check_invariants() {
            panic!("swarm book invariant broken: {broken}");
        }
        if let Some(reply) = reply {
            self.viewers[v as usize]
                .scheduler
                .set_swarm_size(reply.swarm_size as usize);
            for entry in reply.peers.iter().chain(reply.seeds.iter()) {
                let Some(node) = node_of(&entry.peer_public_key) else {
                    continue;
                };
                self.connect(v, node);
            }
        }
        let next = self.now + self.config.announce_interval_s * 1000;
        self.schedule(next, Event::Announce(v));
    }

    fn locality(&self, a_isp: u32, b_isp: u32) -> Locality {
        if a_isp == b_isp {
            Locality::SameIsp
        } else if self.region_of_isp(a_isp) == self.region_of_isp(b_isp) {
            Locality::SameRegion
        } else {
            Locality::Remote
        }
    }

    /// Connects viewer `v` to node `other` (a viewer or a seed), both ways.
    fn connect(&mut self, v: u32, other: u64) {
        let viewers = self.config.viewers;
        if other >= viewers {
            let seed = (other - viewers) as u32;
            if seed as usize >= self.seeds.len() {
                return;
            }
            let isp = seed % self.config.isps;
            let info = PeerInfo {
                kind: PeerKind::Seed,
                locality: self.locality(self.viewers[v as usize].isp, isp),
                rtt_ms: self.config.rtt_ms / 2,
                throughput_bytes_per_s: self.config.viewer_download_bps / 8,
            };
            self.viewers[v as usize]
                .scheduler
                .add_peer(PeerId(other), info);
            return;
        }
        let u = other as u32;
        if u == v || !self.viewers[u as usize].joined || self.viewers[u as usize].left {
            return;
        }
        let max = self.config.max_peers;
        let (a, b) = (&self.viewers[v as usize], &self.viewers[u as usize]);
        if a.neighbours.contains(&u) || a.neighbours.len() >= max || b.neighbours.len() >= max {
            return;
        }
        let locality = self.locality(a.isp, b.isp);
        for (from, to) in [(v, u), (u, v)] {
            let sender_up = self.viewers[to as usize].up;
            let info = PeerInfo {
                kind: PeerKind::Viewer,
                locality,
                rtt_ms: self.config.rtt_ms,
                // A guess until transfers measure it: a quarter of the
                // sender's upload.
                throughput_bytes_per_s: (sender_up * 1000.0 / 4.0) as u64,
            };
            let held: Vec<u64> = self.viewers[to as usize].held.iter().collect();
            let viewer = &mut self.viewers[from as usize];
            viewer.neighbours.push(to);
            viewer.scheduler.add_peer(PeerId(u64::from(to)), info);
            for sequence in held {
                viewer.scheduler.peer_has(PeerId(u64::from(to)), sequence);
            }
        }
    }

    fn tick(&mut self, v: u32) {
        self.advance_player(v);
        // A poll with nothing in flight and nothing to place does nothing.
        if self.viewers[v as usize].scheduler.has_work() {
            self.step(v);
        }
        self.schedule(self.now + self.config.tick_ms, Event::Tick(v));
    }

    /// Plays from the last tick to now. Arrival instants are exact, so a
    /// stall is measured from the moment the playhead reached a missing
    /// segment to the moment it arrived, not to the next tick.
    fn advance_player(&mut self, v: u32) {
        let now = self.now;
        let segment_ms = u64::from(self.config.segment_ms);
        let viewer = &mut self.viewers[v as usize];
        let player = &mut viewer.player;
        let mut elapsed = now.saturating_sub(player.last_tick_ms);
        player.last_tick_ms = now;
        if !player.started {
            let Some(arrived) = viewer.held.get(player.start_sequence) else {
                return;
            };
            player.started = true;
            player.playing = true;
            player.startup_ms = Some(arrived.saturating_sub(viewer.join_ms));
            elapsed = now.saturating_sub(arrived);
        }
        while elapsed > 0 {
            // The virtual instant playback has reached.
            let at = now - elapsed;
            if player.playing {
                let left = segment_ms - player.offset_ms;
                if elapsed < left {
                    player.offset_ms += elapsed;
                    player.played_ms += elapsed;
                    elapsed = 0;
                } else {
                    elapsed -= left;
                    player.played_ms += left;
                    player.playhead += 1;
                    player.offset_ms = 0;
                    let boundary = now - elapsed;
                    if viewer
                        .held
                        .get(player.playhead)
                        .is_none_or(|arrived| arrived > boundary)
                    {
                        player.playing = false;
                        player.rebuffer_events += 1;
                    }
                }
            } else {
                match viewer.held.get(player.playhead) {
                    Some(arrived) => {
                        let stalled = arrived.saturating_sub(at).min(elapsed);
                        player.rebuffer_ms += stalled;
                        elapsed -= stalled;
                        player.playing = true;
                    }
                    None => {
                        player.rebuffer_ms += elapsed;
                        elapsed = 0;
                    }
                }
            }
        }
        if player.started {
            let (playhead, offset, playing) = (player.playhead, player.offset_ms, player.playing);
            viewer
                .scheduler
                .set_playhead(Millis(now), playhead, offset, playing);
            let floor = playhead.saturating_sub(8);
            viewer.held.drop_below(floor);
        }
    }

    /// Reports progress to `v`'s scheduler, polls it and carries out its actions.
    fn step(&mut self, v: u32) {
        let now = self.now;
        self.viewers[v as usize].last_step_ms = now;
        for i in 0..self.viewers[v as usize].downloads.len() {
            let slot = self.viewers[v as usize].downloads[i];
            self.settle(slot);
            if let Some(t) = &self.transfers[slot as usize] {
                let (id, done) = (t.id, t.done as u64);
                self.viewers[v as usize]
                    .scheduler
                    .on_progress(Millis(now), id, done);
            }
        }
        self.engine.polls += 1;
        let actions = self.viewers[v as usize].scheduler.poll(Millis(now));
        self.apply(v, actions);
        // Debug builds (the tests) check the scheduler after every step.
        #[cfg(debug_assertions)]
        self.viewers[v as usize].scheduler.check_invariants();
        // The next instant the scheduler itself needs to run: a timer, as
        // the SDK's driver sleeps until it (one pending timer per viewer;
        // an earlier one replaces a later one).
        if let Some(Millis(at)) = self.viewers[v as usize].scheduler.poll_timeout() {
            let at = at.max(now + 1);
            let viewer = &mut self.viewers[v as usize];
            if at < viewer.timer_at || viewer.timer_at <= now {
                viewer.timer_at = at;
                self.schedule(at, Event::Timer(v));
            }
        }
    }

    fn apply(&mut self, v: u32, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Fetch {
                    transfer,
                    sequence,
                    source,
                    range,
                } => self.start_transfer(v, transfer, sequence, source, range.len()),
                Action::Cancel { transfer } => {
                    let slot = self.viewers[v as usize]
                        .downloads
                        .iter()
                        .copied()
                        .find(|&s| {
                            self.transfers[s as usize]
                                .as_ref()
                                .is_some_and(|t| t.id == transfer)
                        });
                    if let Some(slot) = slot {
                        self.finish(slot);
                    }
                }
                Action::DropPeer { peer, .. } => {
                    let peer = peer.0 as u32;
                    self.viewers[v as usize].neighbours.retain(|&n| n != peer);
                }
            }
        }
    }

    fn start_transfer(
        &mut self,
        v: u32,
        id: TransferId,
        sequence: u64,
        source: Source,
        bytes: u64,
    ) {
        let viewers = self.config.viewers;
        let from = match source {
            Source::Cdn => Node::Cdn,
            Source::Seed(p) => Node::Seed((p.0 - viewers) as u32),
            Source::Peer(p) => Node::Viewer(p.0 as u32),
        };
        if let Node::Viewer(u) = from {
            let sender = &self.viewers[u as usize];
            // The peer no longer holds it (evicted), or all its upload slots
            // are taken: the request is refused at once.
            let refusal = if !sender.held.contains(sequence) {
                Some(Outcome::Failed)
            } else if sender.uploads.len() >= self.config.upload_slots {
                Some(Outcome::Busy)
            } else {
                None
            };
            if let Some(outcome) = refusal {
                self.refuse(v, id, outcome);
                return;
            }
        }
        if let Node::Seed(s) = from
            && self.seed_is_full(s)
        {
            self.refuse(v, id, Outcome::Busy);
            return;
        }
        let cross_isp = match from {
            Node::Viewer(u) => self.viewers[u as usize].isp != self.viewers[v as usize].isp,
            _ => false,
        };
        let transfer = Transfer {
            from,
            to: v,
            id,
            sequence,
            total: bytes as f64,
            done: 0.0,
            rate: 0.0,
            last_ms: self.now,
            cross_isp,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.transfers[slot as usize] = Some(transfer);
                slot
            }
            None => {
                self.transfers.push(Some(transfer));
                (self.transfers.len() - 1) as u32
            }
        };
        self.engine.transfers += 1;
        self.viewers[v as usize].downloads.push(slot);
        match from {
            Node::Viewer(u) => self.viewers[u as usize].uploads.push(slot),
            Node::Seed(s) => self.seeds[s as usize].uploads.push(slot),
            Node::Cdn => {}
        }
        self.reshare(from, v);
    }

    /// A request answered at once with `outcome` (never started).
    fn refuse(&mut self, v: u32, id: TransferId, outcome: Outcome) {
        let actions = self.viewers[v as usize]
            .scheduler
            .on_complete(Millis(self.now), id, outcome);
        self.apply(v, actions);
    }

    /// Whether seed `s` refuses another upload (admission control).
    fn seed_is_full(&mut self, s: u32) -> bool {
        let seed = &self.seeds[s as usize];
        let slots = self.config.seed_upload_slots;
        if slots > 0 && seed.uploads.len() >= slots {
            return true;
        }
        if self.config.seed_max_backlog_ms == 0 {
            return false;
        }
        let uploads = seed.uploads.clone();
        let up = seed.up;
        let mut backlog = 0.0;
        for slot in uploads {
            self.settle(slot);
            if let Some(t) = &self.transfers[slot as usize] {
                backlog += t.total - t.done;
            }
        }
        backlog / up > self.config.seed_max_backlog_ms as f64
    }

    /// Advances a transfer's bytes to now.
    fn settle(&mut self, slot: u32) {
        let now = self.now;
        if let Some(t) = self.transfers[slot as usize].as_mut() {
            let elapsed = now.saturating_sub(t.last_ms) as f64;
            t.done = (t.done + t.rate * elapsed).min(t.total);
            t.last_ms = now;
        }
    }

    /// Recomputes the rates of every transfer sent by `from` or received by
    /// `to`, after the number of transfers at either changed.
    fn reshare(&mut self, from: Node, to: u32) {
        let mut affected = std::mem::take(&mut self.scratch);
        affected.clear();
        match from {
            Node::Viewer(u) => affected.extend_from_slice(&self.viewers[u as usize].uploads),
            Node::Seed(s) => affected.extend_from_slice(&self.seeds[s as usize].uploads),
            Node::Cdn => {}
        }
        // The receiver's downloads, but for those from `from` (listed
        // already: every slot is handled once).
        for &slot in &self.viewers[to as usize].downloads {
            let listed = from != Node::Cdn
                && self.transfers[slot as usize]
                    .as_ref()
                    .is_some_and(|t| t.from == from);
            if !listed {
                affected.push(slot);
            }
        }
        for &slot in &affected {
            let Some(t) = self.transfers[slot as usize].as_ref() else {
                continue;
            };
            let down = self.viewers[t.to as usize].down
                / self.viewers[t.to as usize].downloads.len().max(1) as f64;
            let up = match t.from {
                Node::Viewer(u) => {
                    let n = &self.viewers[u as usize];
                    n.up / n.uploads.len().max(1) as f64
                }
                Node::Seed(s) => {
                    let n = &self.seeds[s as usize];
                    n.up / n.uploads.len().max(1) as f64
                }
                Node::Cdn => f64::INFINITY,
            };
            let rate = down.min(up).max(1e-9);
            // Bytes move linearly at an unchanged rate: its completion
            // stands. (A new transfer's rate is 0, so it is always placed.)
            if rate == t.rate {
                continue;
            }
            self.settle(slot);
            let Some(t) = self.transfers[slot as usize].as_ref() else {
                continue;
            };
            let remaining = (t.total - t.done).max(0.0);
            let finish = self.now + (remaining / rate).ceil() as u64;
            if let Some(t) = self.transfers[slot as usize].as_mut() {
                t.rate = rate;
            }
            // Moves this transfer's one pending completion.
            self.completions.set(slot, finish);
        }
        self.scratch = affected;
    }

    /// Removes a transfer (finished or cancelled) and re-shares capacity.
    fn finish(&mut self, slot: u32) -> Option<Transfer> {
        self.settle(slot);
        let transfer = self.transfers[slot as usize].take()?;
        self.free_slots.push(slot);
        self.completions.remove(slot);
        // Downloads keep their order (progress is reported in it); the
        // order of uploads does not matter (completions are keyed by
        // instant and slot), so a seed's long list need not shift.
        self.viewers[transfer.to as usize]
            .downloads
            .retain(|&s| s != slot);
        match transfer.from {
            Node::Viewer(u) => unlist(&mut self.viewers[u as usize].uploads, slot),
            Node::Seed(s) => unlist(&mut self.seeds[s as usize].uploads, slot),
            Node::Cdn => {}
        }
        if transfer.cross_isp {
            self.cross_isp_bytes += transfer.done;
        }
        self.reshare(transfer.from, transfer.to);
        Some(transfer)
    }

    fn transfer_done(&mut self, slot: u32) {
        let Some(transfer) = self.finish(slot) else {
            return;
        };
        let v = transfer.to;
        let now = Millis(self.now);
        let viewer = &mut self.viewers[v as usize];
        viewer
            .scheduler
            .on_progress(now, transfer.id, transfer.total as u64);
        let actions = viewer
            .scheduler
            .on_complete(now, transfer.id, Outcome::Verified);
        self.apply(v, actions);
        self.note_held(v, transfer.sequence);
        self.step(v);
    }

    /// Records `sequence` as held by `v` if its transfer made it so (the
    /// only segment a completion can add), and tells its neighbours (HAVE).
    fn note_held(&mut self, v: u32, sequence: u64) {
        let viewer = &self.viewers[v as usize];
        if sequence < viewer.player.playhead
            || !viewer.scheduler.is_held(sequence)
            || viewer.held.contains(sequence)
        {
            return;
        }
        let now = self.now;
        self.viewers[v as usize].held.insert(sequence, now);
        // HAVE notices reach neighbours half a round trip later; each
        // neighbour's scheduler then runs once for all notices of that
        // moment, and no sooner than `have_poll_interval_ms` after its
        // previous run.
        let arrival = now + u64::from(self.config.rtt_ms / 2);
        let interval = self.config.have_poll_interval_ms;
        for i in 0..self.viewers[v as usize].neighbours.len() {
            let n = self.viewers[v as usize].neighbours[i];
            let neighbour = &mut self.viewers[n as usize];
            neighbour.scheduler.peer_has(PeerId(u64::from(v)), sequence);
            // News of a segment it already has or is fetching changes
            // nothing for the neighbour until its next tick.
            if !neighbour.poll_pending && neighbour.scheduler.is_wanted(sequence) {
                neighbour.poll_pending = true;
                let at = arrival.max(neighbour.last_step_ms + interval);
                self.schedule(at, Event::Poll(n));
            }
        }
    }

    fn report(&self) -> Report {
        let (mut peer, mut seed, mut cdn) = (0u64, 0u64, 0u64);
        let (mut played, mut rebuffer, mut events) = (0u64, 0u64, 0u64);
        let mut startups = Vec::new();
        let mut upload_bps = 0u64;
        let mut joined = 0u64;
        for viewer in self.viewers.iter().filter(|v| v.joined) {
            joined += 1;
            let stats = viewer.scheduler.stats();
            peer += stats.bytes_from_peers;
            seed += stats.bytes_from_seeds;
            cdn += stats.bytes_from_cdn;
            played += viewer.player.played_ms;
            rebuffer += viewer.player.rebuffer_ms;
            events += viewer.player.rebuffer_events;
            startups.extend(viewer.player.startup_ms);
            upload_bps += (viewer.up * 8.0 * 1000.0) as u64;
        }
        let watch = played + rebuffer;
        Report {
            kind: "sim".into(),
            policy: self.config.policy.clone(),
            viewers: joined,
            duration_s: self.config.duration_s as f64,
            bytes_peer: peer,
            bytes_seed: seed,
            bytes_cdn: cdn,
            offload_peer: Report::peer_share(peer, seed, cdn),
            offload_limit: Report::offload_limit(joined, self.config.bitrate_bps, upload_bps),
            rebuffer_ratio: if watch == 0 {
                0.0
            } else {
                rebuffer as f64 / watch as f64
            },
            rebuffer_events: events,
            startup_ms_p50: quantile(&mut startups.clone(), 0.5),
            startup_ms_p95: quantile(&mut startups, 0.95),
            cross_isp_bytes: self.cross_isp_bytes as u64,
            corrupt_bytes_to_player: 0,
        }
    }
}

/// Removes `slot` from a list of transfer slots, not keeping order.
fn unlist(slots: &mut Vec<u32>, slot: u32) {
    if let Some(at) = slots.iter().position(|&s| s == slot) {
        slots.swap_remove(at);
    }
}

/// A uniform number in [0, 1) from a SplitMix64 state.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Segments one viewer holds, with the virtual instant each arrived: a dense
/// window from `base` (a viewer holds a run of segments near its playhead).
#[derive(Debug, Default)]
struct Held {
    base: u64,
    arrivals: VecDeque<u64>,
}

/// An `arrivals` entry of a segment not held.
const NOT_HELD: u64 = u64::MAX;

impl Held {
    fn get(&self, sequence: u64) -> Option<u64> {
        let index = usize::try_from(sequence.checked_sub(self.base)?).ok()?;
        self.arrivals
            .get(index)
            .copied()
            .filter(|&at| at != NOT_HELD)
    }

    fn contains(&self, sequence: u64) -> bool {
        self.get(sequence).is_some()
    }

    fn insert(&mut self, sequence: u64, at: u64) {
        if self.arrivals.is_empty() {
            self.base = sequence;
        }
        while sequence < self.base {
            self.arrivals.push_front(NOT_HELD);
            self.base -= 1;
        }
        let index = (sequence - self.base) as usize;
        if self.arrivals.len() <= index {
            self.arrivals.resize(index + 1, NOT_HELD);
        }
        self.arrivals[index] = at;
    }

    /// Forgets every segment before `floor`.
    fn drop_below(&mut self, floor: u64) {
        while self.base < floor && self.arrivals.pop_front().is_some() {
            self.base += 1;
        }
        if self.arrivals.is_empty() {
            self.base = self.base.max(floor);
        }
    }

    /// The segments held, in order.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.arrivals
            .iter()
            .enumerate()
            .filter(|(_, at)| **at != NOT_HELD)
            .map(|(index, _)| self.base + index as u64)
    }
}

/// The pending completion of every transfer in flight, one each: a binary
/// min-heap of (instant, slot) that knows where each slot sits, so a
/// transfer whose rate changed is moved in place. (A plain event queue
/// would keep a stale event for every change of rate.)
#[derive(Debug, Default)]
struct Completions {
    heap: Vec<(u64, u32)>,
    /// Position in `heap` of each transfer slot, `NOWHERE` if none.
    position: Vec<u32>,
}

const NOWHERE: u32 = u32::MAX;

impl Completions {
    fn peek(&self) -> Option<(u64, u32)> {
        self.heap.first().copied()
    }

    /// Sets (or moves) the completion of `slot` to instant `at`.
    fn set(&mut self, slot: u32, at: u64) {
        let s = slot as usize;
        if self.position.len() <= s {
            self.position.resize(s + 1, NOWHERE);
        }
        match self.position[s] {
            NOWHERE => {
                self.heap.push((at, slot));
                let last = self.heap.len() - 1;
                self.position[s] = last as u32;
                self.sift_up(last);
            }
            index => {
                let index = index as usize;
                self.heap[index].0 = at;
                let index = self.sift_up(index);
                self.sift_down(index);
            }
        }
    }

    fn remove(&mut self, slot: u32) {
        let Some(&index) = self.position.get(slot as usize) else {
            return;
        };
        if index == NOWHERE {
            return;
        }
        let index = index as usize;
        self.position[slot as usize] = NOWHERE;
        let last = self.heap.len() - 1;
        if index != last {
            self.heap.swap(index, last);
            self.heap.pop();
            self.position[self.heap[index].1 as usize] = index as u32;
            let index = self.sift_up(index);
            self.sift_down(index);
        } else {
            self.heap.pop();
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.position[self.heap[a].1 as usize] = a as u32;
        self.position[self.heap[b].1 as usize] = b as u32;
    }

    fn sift_up(&mut self, mut index: usize) -> usize {
        while index > 0 {
            let parent = (index - 1) / 2;
            if self.heap[index] >= self.heap[parent] {
                break;
            }
            self.swap(index, parent);
            index = parent;
        }
        index
    }

    fn sift_down(&mut self, mut index: usize) {
        loop {
            let (left, right) = (2 * index + 1, 2 * index + 2);
            let mut least = index;
            if left < self.heap.len() && self.heap[left] < self.heap[least] {
                least = left;
            }
            if right < self.heap.len() && self.heap[right] < self.heap[least] {
                least = right;
            }
            if least == index {
                return;
            }
            self.swap(index, least);
            index = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Completions, Held};

    #[test]
    fn completions_pop_in_order_after_moves_and_removals() {
        let mut queue = Completions::default();
        for (slot, at) in [(0, 50), (1, 10), (2, 30), (3, 40), (4, 20)] {
            queue.set(slot, at);
        }
        queue.set(0, 5); // earlier
        queue.set(1, 60); // later
        queue.remove(2);
        queue.remove(7); // never set
        let mut order = Vec::new();
        while let Some((at, slot)) = queue.peek() {
            order.push((at, slot));
            queue.remove(slot);
        }
        assert_eq!(order, vec![(5, 0), (20, 4), (40, 3), (60, 1)]);
    }

    #[test]
    fn held_window_grows_both_ways_and_drops_its_tail() {
        let mut held = Held::default();
        held.insert(10, 100);
        held.insert(13, 130);
        held.insert(8, 80);
        assert_eq!(held.iter().collect::<Vec<_>>(), vec![8, 10, 13]);
        assert_eq!(held.get(13), Some(130));
        assert!(!held.contains(11) && !held.contains(7) && !held.contains(14));
        held.drop_below(11);
        assert_eq!(held.iter().collect::<Vec<_>>(), vec![13]);
        held.drop_below(20);
        assert_eq!(held.iter().count(), 0);
        held.insert(21, 210);
        assert_eq!(held.get(21), Some(210));
    }
}
