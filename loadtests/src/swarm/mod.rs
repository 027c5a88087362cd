//! `loadtests swarm`: scenarios on real processes over loopback. A
//! scenario (a TOML file under `loadtests/scenarios/`) says who joins when,
//! for how long, from where, over which emulated link, and which faults
//! happen: seeds killed, the tracker killed and restarted, viewers that
//! tamper with what they upload or lie about what they hold.
//!
//! A scenario is live (one title, `player::play_live`) unless it has a
//! `[vod]` table: then it serves several VOD titles, each viewer picks one
//! by Zipf popularity (a seeded draw, so runs repeat) and plays it from the
//! start to the end with `player::play`, and the report adds a row per
//! title.
//!
//! The license server, tracker and edge seeds are their own binaries
//! ([`deploy`]); viewers are SDK sessions in this process (an app embeds
//! the SDK; a load generator hosts many).
//! The report is the demo's, computed by the same functions; the HTML
//! report ([`html`]) plots offload by source over time (sampled from the
//! sessions' counters), buffer levels and stalls (from the sessions'
//! events).

pub mod deploy;
pub mod html;
pub mod procs;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use loaves_client_sdk::cdn::LinkLimits;
use loaves_client_sdk::player;
use loaves_client_sdk::{Event, LoavesBuilder, RenditionName, Upload};
use serde::{Deserialize, Serialize};

use crate::demo::{self, Crowd, ViewerOutcome, lock};
use crate::encoder::LoopedRendition;
use crate::platform::TITLE;
use crate::report::Report;
use deploy::{Content, Deployment, Location};

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name (the report's `kind`).
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Viewers joining at the start.
    pub viewers: usize,
    /// Those joins are spread evenly over this many seconds.
    pub join_window_s: f64,
    /// Seconds each viewer watches (unless it leaves early, see `churn`).
    /// Live only: VOD viewers watch their title to the end.
    pub watch_s: f64,
    /// The rendition watched.
    pub rendition: String,
    /// How far behind the live edge players start, in segments (live only).
    pub latency_segments: u64,
    /// VOD titles instead of the live stream.
    pub vod: Option<Vod>,
    /// Viewers' locations, assigned round robin.
    pub locations: Vec<Location>,
    /// One swarm seed per entry.
    pub seeds: Vec<Location>,
    /// Every viewer's emulated link.
    pub link: LinkSpec,
    /// Viewers leaving early and others joining later.
    pub churn: Churn,
    /// Faults injected.
    pub faults: Faults,
}

/// VOD over several titles. Title `vod-k` (k = 1..=`titles`) is picked by
/// each viewer with probability proportional to 1/k^`zipf_exponent`; every
/// viewer plays its title from the first segment to the last.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Vod {
    /// Number of titles.
    pub titles: usize,
    /// Zipf exponent (0: uniform; larger: more viewers on the first titles).
    pub zipf_exponent: f64,
    /// Length of every title in segments (the sample looped).
    pub segments: u64,
    /// Seed of the viewers' title draws.
    pub seed: u64,
}

impl Default for Vod {
    fn default() -> Self {
        Self {
            titles: 5,
            zipf_exponent: 1.0,
            segments: 30,
            seed: 1,
        }
    }
}

impl Vod {
    /// The id of the title of popularity rank `rank` (1 = most popular).
    pub fn title(rank: usize) -> String {
        format!("vod-{rank}")
    }

    /// Every title's expected share of the viewers, by rank.
    pub fn popularity(&self) -> Vec<f64> {
        let weights: Vec<f64> = (1..=self.titles)
            .map(|k| (k as f64).powf(-self.zipf_exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }

    /// The titles of `viewers` viewers, drawn in join order from the Zipf
    /// popularity with a generator seeded by `seed` (the same every run).
    pub fn draw(&self, viewers: usize) -> Vec<String> {
        let popularity = self.popularity();
        let mut rng = SplitMix64(self.seed);
        (0..viewers)
            .map(|_| {
                let u = rng.unit();
                let mut cumulative = 0.0;
                let rank = popularity
                    .iter()
                    .position(|p| {
                        cumulative += p;
                        u < cumulative
                    })
                    // Rounding can leave u just above the last sum.
                    .unwrap_or(popularity.len().saturating_sub(1));
                Self::title(rank + 1)
            })
            .collect()
    }

    fn check(&self, scenario: &Scenario) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=100).contains(&self.titles),
            "vod.titles is 1 to 100 (got {})",
            self.titles
        );
        anyhow::ensure!(
            self.zipf_exponent.is_finite() && (0.0..=10.0).contains(&self.zipf_exponent),
            "vod.zipf_exponent is 0 to 10 (got {})",
            self.zipf_exponent
        );
        anyhow::ensure!(
            (1..=1800).contains(&self.segments),
            "vod.segments is 1 to 1800 (got {})",
            self.segments
        );
        anyhow::ensure!(
            scenario.churn.leavers == 0,
            "churn.leavers is not supported with [vod]: VOD viewers watch their title to the end"
        );
        Ok(())
    }
}

/// SplitMix64: a small generator whose sequence is fixed by its seed (the
/// title draws must not change with a dependency's version).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A viewer's emulated access link.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkSpec {
    /// Download rate, bytes per second (0: unlimited).
    pub download_bytes_per_second: u64,
    /// Upload cap, bytes per second.
    pub upload_bytes_per_second: u64,
    /// Added to every request.
    pub latency_ms: u64,
}

/// Churn.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// How many of the first viewers leave early (the last ones to join).
    pub leavers: usize,
    /// ... after watching this many seconds.
    pub leave_after_s: f64,
    /// Viewers joining later.
    pub joiners: usize,
    /// The first of them joins this long after the crowd started...
    pub join_after_s: f64,
    /// ... and they are spread evenly over this many seconds.
    pub join_window_s: f64,
}

/// Faults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Kill the first seed (SIGKILL) this long after the crowd started.
    pub kill_seed_at_s: Option<f64>,
    /// Kill the tracker this long after the crowd started...
    pub restart_tracker_at_s: Option<f64>,
    /// ... and start it again on the same addresses after this long.
    pub tracker_down_s: f64,
    /// How many viewers (the first to join) flip a byte of every segment
    /// they upload.
    pub tamper_viewers: usize,
    /// How many viewers (after those) announce and HAVE segments they do
    /// not hold.
    pub lying_viewers: usize,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            download_bytes_per_second: 0,
            upload_bytes_per_second: crate::platform::VIEWER_UPLOAD_BYTES_PER_SECOND,
            latency_ms: 0,
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        let location = |region: &str, isp: &str| Location {
            region: region.into(),
            isp: isp.into(),
        };
        Self {
            name: "swarm".into(),
            description: String::new(),
            viewers: 10,
            join_window_s: 10.0,
            watch_s: 30.0,
            rendition: "video_720p".into(),
            latency_segments: 3,
            vod: None,
            locations: vec![
                location("eu-west", "as64500"),
                location("eu-west", "as64501"),
            ],
            seeds: vec![location("eu-west", "as64500")],
            link: LinkSpec::default(),
            churn: Churn::default(),
            faults: Faults::default(),
        }
    }
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let scenario: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.viewers > 0, "at least one viewer");
        anyhow::ensure!(!self.locations.is_empty(), "at least one location");
        anyhow::ensure!(
            self.faults.tamper_viewers + self.faults.lying_viewers < self.viewers,
            "some viewers must be honest"
        );
        anyhow::ensure!(
            self.churn.leavers <= self.viewers,
            "more leavers than viewers"
        );
        anyhow::ensure!(
            self.faults.kill_seed_at_s.is_none() || !self.seeds.is_empty(),
            "kill_seed_at_s needs a seed"
        );
        for s in [
            self.join_window_s,
            self.watch_s,
            self.churn.leave_after_s,
            self.churn.join_after_s,
            self.churn.join_window_s,
            self.faults.tracker_down_s,
        ] {
            anyhow::ensure!(
                s.is_finite() && (0.0..=3600.0).contains(&s),
                "times are 0 to 3600 s"
            );
        }
        if let Some(vod) = &self.vod {
            vod.check(self)?;
        }
        Ok(())
    }

    /// The content the deployment serves.
    pub fn content(&self) -> Content {
        match &self.vod {
            None => Content::live(vec![self.rendition.clone()]),
            Some(vod) => Content::vod(
                (1..=vod.titles).map(Vod::title).collect(),
                self.rendition.clone(),
                vod.segments,
            ),
        }
    }

    /// Media length of a VOD title (from the sample's segment durations).
    fn title_length(&self, vod: &Vod) -> anyhow::Result<Duration> {
        let sample = LoopedRendition::load(&crate::platform::sample_dir().join(&self.rendition))?;
        let ms: u64 = (0..vod.segments).map(|n| sample.duration_ms(n)).sum();
        Ok(Duration::from_millis(ms))
    }

    /// Who joins when, watches what and how long, from where, behaving
    /// how.
    pub fn plan(&self) -> anyhow::Result<Vec<ViewerPlan>> {
        let spread = |i: usize, n: usize, window: f64| {
            if n <= 1 {
                0.0
            } else {
                window * i as f64 / (n - 1) as f64
            }
        };
        let mut plans = Vec::new();
        let total = self.viewers + self.churn.joiners;
        let (titles, title_length) = match &self.vod {
            Some(vod) => (vod.draw(total), Some(self.title_length(vod)?)),
            None => (vec![TITLE.to_owned(); total], None),
        };
        for (index, title) in titles.into_iter().enumerate() {
            let (join_at, watch) = if index < self.viewers {
                let leaves = index >= self.viewers - self.churn.leavers;
                (
                    spread(index, self.viewers, self.join_window_s),
                    if leaves {
                        self.churn.leave_after_s
                    } else {
                        self.watch_s
                    },
                )
            } else {
                let j = index - self.viewers;
                (
                    self.churn.join_after_s
                        + spread(j, self.churn.joiners, self.churn.join_window_s),
                    self.watch_s,
                )
            };
            let role = if index < self.faults.tamper_viewers {
                Role::Tamper
            } else if index < self.faults.tamper_viewers + self.faults.lying_viewers {
                Role::Liar
            } else {
                Role::Honest
            };
            plans.push(ViewerPlan {
                account: format!("viewer-{index:03}"),
                title,
                join_at: Duration::from_secs_f64(join_at),
                watch: title_length.unwrap_or(Duration::from_secs_f64(watch)),
                location: self.locations[index % self.locations.len()].clone(),
                role,
            });
        }
        Ok(plans)
    }
}

/// How a viewer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// As an app would.
    Honest,
    /// Uploads corrupt bytes.
    Tamper,
    /// Claims segments it does not hold.
    Liar,
}

/// One viewer of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerPlan {
    /// Its account.
    pub account: String,
    /// The title it watches.
    pub title: String,
    /// When it joins, after the crowd started.
    pub join_at: Duration,
    /// How long it watches.
    pub watch: Duration,
    /// Where it is.
    pub location: Location,
    /// How it behaves.
    pub role: Role,
}

/// What happened to one viewer over time (for the HTML report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerTrace {
    /// Its account.
    pub account: String,
    /// Its role.
    pub role: Option<Role>,
    /// Seconds after the crowd started: session opened, closed.
    pub joined_s: f64,
    /// See `joined_s`.
    pub left_s: f64,
    /// Playback started (first frame), seconds.
    pub started_s: Option<f64>,
    /// Stalls as (start, end) seconds.
    pub stalls: Vec<(f64, f64)>,
    /// Segments delivered: (seconds, sequence).
    pub delivered: Vec<(f64, u64)>,
    /// Why it dropped each peer it banned (`Corrupt`, `FalseClaims`...).
    pub banned: Vec<String>,
    /// First segment played.
    pub first_sequence: u64,
    /// Buffer level samples: (seconds, media seconds buffered).
    pub buffer: Vec<(f64, f64)>,
}

/// A sample of the crowd's counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds after the crowd started.
    pub t_s: f64,
    /// Cumulative bytes from peers, seeds, the CDN.
    pub peer: u64,
    /// See `peer`.
    pub seed: u64,
    /// See `peer`.
    pub cdn: u64,
    /// Sessions open.
    pub watching: usize,
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds after the crowd started.
    pub t_s: f64,
    /// What.
    pub what: String,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmRun {
    /// The report (the demo's fields).
    pub report: Report,
    /// Per viewer.
    pub outcomes: Vec<ViewerOutcome>,
    /// Per viewer, over time.
    pub traces: Vec<ViewerTrace>,
    /// The crowd's counters over time.
    pub samples: Vec<Sample>,
    /// Faults injected.
    pub faults: Vec<FaultEvent>,
    /// Peers banned by honest viewers.
    pub peers_banned: u64,
    /// Segments honest viewers rejected (failed verification).
    pub segments_rejected: u64,
    /// VOD: one row per title, by popularity rank (empty for live).
    pub titles: Vec<TitleReport>,
}

/// One title's swarm in a VOD run: the report's fields over its viewers
/// only, with the swarm's own offload limit.
#[derive(Debug, Clone, Serialize)]
pub struct TitleReport {
    /// The title.
    pub title: String,
    /// Its expected share of the viewers (Zipf popularity).
    pub popularity: f64,
    /// Its viewers' report (`kind` is the title).
    pub report: Report,
}

/// How often the crowd's counters are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A viewer's run may overrun its plan by this much before it is aborted
/// (startup, the player's waits, closing).
const VIEWER_SLACK: Duration = Duration::from_secs(90);

/// Runs `scenario` with P2P on or off.
pub async fn run(scenario: &Scenario, p2p: bool) -> anyhow::Result<SwarmRun> {
    scenario.check()?;
    let started = Instant::now();
    let mut deployment = Deployment::start(&scenario.content(), &scenario.seeds).await?;
    eprintln!(
        "{}: processes up in {:.1} s (logs in {}); dashboard {}",
        scenario.name,
        started.elapsed().as_secs_f64(),
        deployment.dir.path().join("logs").display(),
        deployment.dashboard_url()
    );
    let result = crowd(scenario, p2p, &mut deployment).await;
    let stopped = deployment.shutdown();
    let run = result?;
    stopped?;
    Ok(run)
}

async fn crowd(
    scenario: &Scenario,
    p2p: bool,
    deployment: &mut Deployment,
) -> anyhow::Result<SwarmRun> {
    // Live: join an event under way (as the demo does).
    let needed = scenario.latency_segments + 1;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while scenario.vod.is_none() && deployment.published() < needed {
        anyhow::ensure!(
            Instant::now() < wait_until,
            "the live stream did not reach {needed} segments within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plans = scenario.plan()?;
    let crowd = Arc::new(Mutex::new(Crowd::default()));
    let t0 = Instant::now();
    let mut viewers = Vec::new();
    for plan in &plans {
        let options = viewer_builder(scenario, deployment, plan, p2p);
        let entitlement = deployment.entitlement(&plan.account);
        let plan = plan.clone();
        let crowd = crowd.clone();
        let packaged = deployment.packaged.clone();
        let scenario = scenario.clone();
        viewers.push(tokio::spawn(async move {
            tokio::time::sleep(plan.join_at).await;
            viewer(
                &scenario,
                &plan,
                options,
                entitlement,
                &crowd,
                &packaged,
                t0,
            )
            .await
        }));
    }

    let end = plans
        .iter()
        .map(|p| p.join_at + p.watch)
        .max()
        .unwrap_or_default()
        + VIEWER_SLACK;
    let mut samples = Vec::new();
    let mut faults = Vec::new();
    let mut seed_killed = false;
    let mut tracker_restarted = false;
    let mut next_sample = Duration::ZERO;
    let mut next_line = Duration::ZERO;
    // Bounded by `end` (the last viewer's plan plus slack).
    while !viewers.iter().all(tokio::task::JoinHandle::is_finished) && t0.elapsed() < end {
        let now = t0.elapsed();
        if now >= next_sample {
            samples.push(sample(&crowd, now));
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_line {
            if let Some(s) = samples.last() {
                let total = (s.peer + s.seed + s.cdn).max(1) as f64;
                eprintln!(
                    "{:>4.0} s · watching {} · peers {:.0}% seed {:.0}% CDN {:.0}%",
                    s.t_s,
                    s.watching,
                    100.0 * s.peer as f64 / total,
                    100.0 * s.seed as f64 / total,
                    100.0 * s.cdn as f64 / total
                );
            }
            next_line += Duration::from_secs(5);
        }
        if let Some(at) = scenario.faults.kill_seed_at_s
            && !seed_killed
            && now.as_secs_f64() >= at
        {
            seed_killed = true;
            if let Some((seed, _)) = deployment.seeds.first_mut() {
                seed.kill();
                faults.push(FaultEvent {
                    t_s: t0.elapsed().as_secs_f64(),
                    what: format!("{} killed", seed.name),
                });
            }
        }
        if let Some(at) = scenario.faults.restart_tracker_at_s
            && !tracker_restarted
            && now.as_secs_f64() >= at
        {
            tracker_restarted = true;
            faults.push(FaultEvent {
                t_s: t0.elapsed().as_secs_f64(),
                what: "tracker killed".into(),
            });
            deployment
                .restart_tracker(Duration::from_secs_f64(scenario.faults.tracker_down_s))
                .await?;
            faults.push(FaultEvent {
                t_s: t0.elapsed().as_secs_f64(),
                what: "tracker restarted".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.push(sample(&crowd, t0.elapsed()));
    for viewer in &viewers {
        viewer.abort();
    }
    let mut outcomes = Vec::new();
    let mut traces = Vec::new();
    for (plan, viewer) in plans.iter().zip(viewers) {
        match viewer.await {
            Ok((outcome, trace)) => {
                outcomes.push(outcome);
                traces.push(trace);
            }
            Err(e) => {
                outcomes.push(ViewerOutcome::failed_as(
                    plan.account.clone(),
                    plan.location.isp.clone(),
                    format!("did not finish in time: {e}"),
                ));
                traces.push(ViewerTrace {
                    account: plan.account.clone(),
                    role: Some(plan.role),
                    ..ViewerTrace::default()
                });
            }
        }
    }
    let duration = t0.elapsed();
    // One swarm per title: each has its own limit, and the run's is theirs
    // weighted by the bytes watched in each.
    let mut swarms = Vec::new();
    let mut titles = Vec::new();
    let popularity = scenario.vod.as_ref().map(Vod::popularity);
    for (rank, title) in scenario.content().titles().iter().enumerate() {
        let of_title: Vec<ViewerOutcome> = plans
            .iter()
            .zip(&outcomes)
            .filter(|(p, _)| &p.title == title)
            .map(|(_, o)| o.clone())
            .collect();
        let limit = demo::swarm_offload_limit(
            &of_title,
            &deployment.packaged,
            title,
            &scenario.rendition,
            scenario.link.upload_bytes_per_second,
        )?;
        swarms.push((limit.limit, limit.bytes));
        if let Some(popularity) = &popularity {
            titles.push(TitleReport {
                title: title.clone(),
                popularity: popularity.get(rank).copied().unwrap_or(0.0),
                report: demo::report_of(title, p2p, &of_title, duration, limit.limit),
            });
        }
    }
    let limit = Report::offload_limit_over_swarms(&swarms);
    let report = demo::report_of(&scenario.name, p2p, &outcomes, duration, limit);
    let honest = |o: &&ViewerOutcome| {
        plans
            .iter()
            .any(|p| p.account == o.account && p.role == Role::Honest)
    };
    let peers_banned = outcomes
        .iter()
        .filter(honest)
        .map(|o| o.stats.peers_banned)
        .sum();
    let segments_rejected = outcomes
        .iter()
        .filter(honest)
        .map(|o| o.stats.segments_rejected)
        .sum();
    buffer_levels(scenario, &mut traces, duration)?;
    Ok(SwarmRun {
        report,
        outcomes,
        traces,
        samples,
        faults,
        peers_banned,
        segments_rejected,
        titles,
    })
}

fn sample(crowd: &Mutex<Crowd>, at: Duration) -> Sample {
    let crowd = lock(crowd);
    let mut sample = Sample {
        t_s: at.as_secs_f64(),
        watching: crowd.watching.len(),
        ..Sample::default()
    };
    for stats in crowd.stats() {
        sample.peer += stats.bytes_from_peers;
        sample.seed += stats.bytes_from_seeds;
        sample.cdn += stats.bytes_from_cdn;
    }
    sample
}

fn viewer_builder(
    scenario: &Scenario,
    deployment: &Deployment,
    plan: &ViewerPlan,
    p2p: bool,
) -> LoavesBuilder {
    deployment
        .endpoints
        .viewer_builder(p2p, &plan.location.region, &plan.location.isp)
        .upload(Upload::Capped {
            bytes_per_second: scenario.link.upload_bytes_per_second,
        })
        .faults(loaves_client_sdk::Faults {
            tamper_uploads: plan.role == Role::Tamper,
            lie_about_holdings: plan.role == Role::Liar,
            link: LinkLimits {
                download_bytes_per_second: scenario.link.download_bytes_per_second,
                added_latency: Duration::from_millis(scenario.link.latency_ms),
            },
            ..Default::default()
        })
}

async fn viewer(
    scenario: &Scenario,
    plan: &ViewerPlan,
    options: LoavesBuilder,
    entitlement: Vec<u8>,
    crowd: &Mutex<Crowd>,
    packaged: &std::path::Path,
    t0: Instant,
) -> (ViewerOutcome, ViewerTrace) {
    let since = |t0: Instant| t0.elapsed().as_secs_f64();
    let mut trace = ViewerTrace {
        account: plan.account.clone(),
        role: Some(plan.role),
        joined_s: since(t0),
        ..ViewerTrace::default()
    };
    let failed =
        |e: String| ViewerOutcome::failed_as(plan.account.clone(), plan.location.isp.clone(), e);
    let pressed_play = Instant::now();
    let loaves = match options.build() {
        Ok(loaves) => loaves,
        Err(e) => {
            trace.left_s = since(t0);
            return (failed(e.to_string()), trace);
        }
    };
    let buffer_ahead = loaves.buffer_target();
    let session = match open_session(&loaves, &plan.title, entitlement).await {
        Ok(session) => Arc::new(session),
        Err(e) => {
            trace.left_s = since(t0);
            return (failed(format!("{e:#}")), trace);
        }
    };
    let opening = pressed_play.elapsed();
    // The session's events, recorded as they come (the stall timeline and
    // the deliveries the buffer levels are computed from).
    let log = Arc::new(Mutex::new(trace));
    let mut events = session.events();
    let recorder = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut stall_start = None;
            while let Some(event) = events.next().await {
                let now = since(t0);
                let mut trace = lock(&log);
                match event {
                    Event::Started { .. } => trace.started_s = Some(now),
                    Event::RebufferStart => stall_start = Some(now),
                    Event::RebufferEnd { .. } => {
                        let start = stall_start.take().unwrap_or(now);
                        trace.stalls.push((start, now));
                    }
                    Event::SegmentDelivered { sequence, .. } => {
                        trace.delivered.push((now, sequence))
                    }
                    Event::PeerBanned { reason, .. } => trace.banned.push(format!("{reason:?}")),
                    _ => {}
                }
            }
        })
    };
    lock(crowd).watching.push(session.clone());
    let played = match RenditionName::new(scenario.rendition.as_str()) {
        // From the start to the end, keeping as much requested ahead as
        // the SDK buffers.
        Ok(rendition) if scenario.vod.is_some() => {
            player::play(&session, &rendition, buffer_ahead).await
        }
        Ok(rendition) => {
            player::play_live(&session, &rendition, scenario.latency_segments, plan.watch).await
        }
        Err(e) => Err(loaves_client_sdk::Error::from(e).into()),
    };
    let stats = session.stats();
    {
        let mut crowd = lock(crowd);
        crowd.watching.retain(|s| !Arc::ptr_eq(s, &session));
        crowd.left.push(stats);
    }
    let mut outcome = match &played {
        Ok(report) => ViewerOutcome::played(
            plan.account.clone(),
            &plan.location.isp,
            opening,
            report,
            plan.watch,
            demo::corrupt_bytes_of_title(packaged, &plan.title, &scenario.rendition, report),
        )
        .with_stats(stats),
        Err(e) => failed(e.to_string()).with_stats(stats),
    };
    demo::close_session(session, &mut outcome).await;
    // The event stream ends with the session; the recorder stops then.
    let _ = tokio::time::timeout(Duration::from_secs(2), recorder).await;
    let mut trace = lock(&log).clone();
    trace.left_s = since(t0);
    if let Ok(report) = &played {
        trace.first_sequence = report.first_sequence;
    }
    (outcome, trace)
}

/// Opens a viewer's session on `title`.
async fn open_session(
    loaves: &loaves_client_sdk::Loaves,
    title: &str,
    entitlement: Vec<u8>,
) -> anyhow::Result<loaves_client_sdk::Session> {
    Ok(loaves.open(title, entitlement).await?)
}

/// Buffer levels over time, from each viewer's deliveries and playback: at
/// instant t, the media of the segments delivered in order from the first
/// played one, less the media played (wall time since the first frame, less
/// the stalls).
fn buffer_levels(
    scenario: &Scenario,
    traces: &mut [ViewerTrace],
    duration: Duration,
) -> anyhow::Result<()> {
    let sample = LoopedRendition::load(&crate::platform::sample_dir().join(&scenario.rendition))?;
    let media_s = |sequence: u64| -> f64 {
        let len = sample.segment_ms.len().max(1) as u64;
        sample
            .segment_ms
            .get((sequence % len) as usize)
            .map_or(2.0, |ms| *ms as f64 / 1000.0)
    };
    let step = 0.5;
    let steps = (duration.as_secs_f64() / step).ceil() as usize;
    for trace in traces.iter_mut() {
        let Some(started) = trace.started_s else {
            continue;
        };
        let mut delivered: Vec<(f64, u64)> = trace
            .delivered
            .iter()
            .copied()
            .filter(|(_, s)| *s >= trace.first_sequence)
            .collect();
        delivered.sort_by_key(|(_, s)| *s);
        let mut levels = Vec::new();
        for i in 0..steps {
            let t = i as f64 * step;
            if t < started || t > trace.left_s {
                continue;
            }
            let mut next = trace.first_sequence;
            let mut media = 0.0;
            for (at, sequence) in &delivered {
                if *sequence == next && *at <= t {
                    media += media_s(*sequence);
                    next += 1;
                } else if *sequence > next {
                    break;
                }
            }
            let stalled: f64 = trace
                .stalls
                .iter()
                .map(|(a, b)| (b.min(t) - a).max(0.0))
                .sum();
            let played = (t - started - stalled).max(0.0);
            levels.push((t, (media - played).max(0.0)));
        }
        trace.buffer = levels;
    }
    Ok(())
}

/// The JSON report of a run (and its baseline): the report's fields at the
/// top, per-viewer outcomes, and the swarm details.
pub fn report_json(
    run: &SwarmRun,
    baseline: Option<&SwarmRun>,
) -> anyhow::Result<serde_json::Value> {
    let mut json = demo::report_json(
        &run.report,
        &run.outcomes,
        baseline.map(|b| (&b.report, b.outcomes.as_slice())),
    )?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert("peers_banned".into(), run.peers_banned.into());
        // Why peers were dropped, over all viewers (a dead seed's transfers
        // stall; a liar is caught; a slow link finishes late).
        let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
        for reason in run.traces.iter().flat_map(|t| t.banned.iter()) {
            *reasons.entry(reason.as_str()).or_default() += 1;
        }
        fields.insert("drops_by_reason".into(), serde_json::to_value(reasons)?);
        fields.insert("segments_rejected".into(), run.segments_rejected.into());
        fields.insert("faults".into(), serde_json::to_value(&run.faults)?);
        fields.insert("samples".into(), serde_json::to_value(&run.samples)?);
        if !run.titles.is_empty() {
            fields.insert("titles".into(), serde_json::to_value(&run.titles)?);
            if let (Some(base), Some(base_fields)) = (
                baseline,
                fields.get_mut("baseline").and_then(|b| b.as_object_mut()),
            ) {
                base_fields.insert("titles".into(), serde_json::to_value(&base.titles)?);
            }
        }
    }
    Ok(json)
}

/// The per-title rows of a VOD run (with the baseline's rebuffering beside
/// when there is one); empty for a live run.
pub fn titles_table(run: &SwarmRun, baseline: Option<&SwarmRun>) -> String {
    if run.titles.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<8}{:>7}{:>9}{:>10}{:>9}{:>10}{:>10}{:>12}{:>16}\n",
        "title",
        "share",
        "viewers",
        "MB",
        "peers",
        "limit",
        "of limit",
        "rebuffer",
        "cdn-only rebuf."
    );
    for row in &run.titles {
        let r = &row.report;
        let base = baseline
            .and_then(|b| b.titles.iter().find(|t| t.title == row.title))
            .map_or("-".to_owned(), |b| {
                format!(
                    "{:.4} ({})",
                    b.report.rebuffer_ratio, b.report.rebuffer_events
                )
            });
        let of_limit = if r.offload_limit > 0.0 {
            format!("{:.2}", r.offload_peer / r.offload_limit)
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "{:<8}{:>7.3}{:>9}{:>10.1}{:>9.3}{:>10.3}{:>10}{:>12}{:>16}\n",
            row.title,
            row.popularity,
            r.viewers,
            r.bytes_total() as f64 / 1e6,
            r.offload_peer,
            r.offload_limit,
            of_limit,
            format!("{:.4} ({})", r.rebuffer_ratio, r.rebuffer_events),
            base
        ));
    }
    out
}
