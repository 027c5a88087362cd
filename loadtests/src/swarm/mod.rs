//! `loadtests swarm`: scenarios on real processes over loopback. A
//! scenario (a TOML file under `loadtests/scenarios/`) says who joins when,
//! for how long, from where, over which emulated link, and which faults
//! happen: seeds killed, the tracker killed and restarted, viewers that
//! tamper with what they upload or lie about what they hold.
//!
//! The license server, tracker and edge seeds are their own binaries
//! ([`deploy`]); viewers are SDK sessions in this process (an app embeds
//! the SDK; a load generator hosts many), each with `player::play_live`.
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
use loaves_client_sdk::{Event, Upload};
use serde::{Deserialize, Serialize};

use crate::demo::{self, Crowd, ViewerOutcome, lock};
use crate::encoder::LoopedRendition;
use crate::report::Report;
use deploy::{Deployment, Location};

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
    pub watch_s: f64,
    /// The rendition watched.
    pub rendition: String,
    /// How far behind the live edge players start, in segments.
    pub latency_segments: u64,
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
        Ok(())
    }

    /// Who joins when, watches how long, from where, behaving how.
    pub fn plan(&self) -> Vec<ViewerPlan> {
        let spread = |i: usize, n: usize, window: f64| {
            if n <= 1 {
                0.0
            } else {
                window * i as f64 / (n - 1) as f64
            }
        };
        let mut plans = Vec::new();
        let total = self.viewers + self.churn.joiners;
        for index in 0..total {
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
                join_at: Duration::from_secs_f64(join_at),
                watch: Duration::from_secs_f64(watch),
                location: self.locations[index % self.locations.len()].clone(),
                role,
            });
        }
        plans
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
    let mut deployment =
        Deployment::start(std::slice::from_ref(&scenario.rendition), &scenario.seeds).await?;
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
    // Join an event under way (as the demo does).
    let needed = scenario.latency_segments + 1;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while deployment.published() < needed {
        anyhow::ensure!(
            Instant::now() < wait_until,
            "the live stream did not reach {needed} segments within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plans = scenario.plan();
    let crowd = Arc::new(Mutex::new(Crowd::default()));
    let t0 = Instant::now();
    let mut viewers = Vec::new();
    for plan in &plans {
        let options = viewer_options(scenario, deployment, plan, p2p);
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
    let limit = demo::offload_limit(
        &outcomes,
        &deployment.packaged,
        &scenario.rendition,
        scenario.link.upload_bytes_per_second,
    )?;
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

fn viewer_options(
    scenario: &Scenario,
    deployment: &Deployment,
    plan: &ViewerPlan,
    p2p: bool,
) -> loaves_client_sdk::Options {
    let mut options =
        deployment
            .endpoints
            .viewer_options(p2p, &plan.location.region, &plan.location.isp);
    options.upload = Upload::Capped {
        bytes_per_second: scenario.link.upload_bytes_per_second,
    };
    options.link = LinkLimits {
        download_bytes_per_second: scenario.link.download_bytes_per_second,
        added_latency: Duration::from_millis(scenario.link.latency_ms),
    };
    options.tamper_uploads = plan.role == Role::Tamper;
    options.lie_about_holdings = plan.role == Role::Liar;
    options
}

async fn viewer(
    scenario: &Scenario,
    plan: &ViewerPlan,
    options: loaves_client_sdk::Options,
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
    let session = match demo::open_session(options, entitlement).await {
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
    let played = player::play_live(
        &session,
        &scenario.rendition,
        scenario.latency_segments,
        plan.watch,
    )
    .await;
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
            demo::corrupt_bytes(packaged, &scenario.rendition, report),
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
    }
    Ok(json)
}
