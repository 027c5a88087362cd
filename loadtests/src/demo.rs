//! `loadtests demo`: the platform's main job in one command. Starts the
//! whole [`Platform`] on loopback, streams the sample live, and lets a
//! crowd of SDK viewers with simulated players join one after another and
//! watch; prints progress while it runs and a summary at the end.
//!
//! Every figure comes from what happened: bytes by source from the
//! viewers' sessions, stalls and startup from their players, and every
//! byte a player received is compared with the packaged file it should be.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use loaves_client_sdk::player::{self, PlaybackReport};
use loaves_client_sdk::{LoavesBuilder, RenditionName, Session, Stats};
use loaves_proto::manifest::sha256;
use serde::Serialize;

use crate::platform::{Platform, PlatformConfig, VIEWER_UPLOAD_BYTES_PER_SECOND};
use crate::report::{Report, quantile};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Viewers in the crowd.
    pub viewers: usize,
    /// Time between two viewers joining.
    pub join_interval: Duration,
    /// How long each viewer watches (the last one to join, with
    /// `leave_together`).
    pub watch: Duration,
    /// Viewers stay until the last one watched `watch`, so everyone leaves
    /// at once (the simulator's model of an event); otherwise each viewer
    /// watches `watch` from its own join.
    pub leave_together: bool,
    /// How far behind the live edge players start, in segments.
    pub latency_segments: u64,
    /// P2P on (the product) or off (the CDN-only baseline).
    pub p2p: bool,
    /// The rendition the crowd watches.
    pub rendition: String,
    /// ISPs viewers are spread over (round robin), all in one region.
    pub isps: Vec<String>,
    /// Show progress while running.
    pub progress: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            viewers: 20,
            join_interval: Duration::from_millis(1500),
            watch: Duration::from_secs(50),
            leave_together: false,
            latency_segments: 3,
            p2p: true,
            rendition: "video_720p".into(),
            isps: vec!["as64500".into(), "as64501".into()],
            progress: true,
        }
    }
}

/// One viewer's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerOutcome {
    /// Its account.
    pub account: String,
    /// Its ISP.
    pub isp: String,
    /// The session's counters at the end.
    #[serde(skip)]
    pub stats: Stats,
    /// Verified bytes from other viewers.
    pub bytes_peer: u64,
    /// Verified bytes from the seed.
    pub bytes_seed: u64,
    /// Verified bytes from the CDN.
    pub bytes_cdn: u64,
    /// First live segment played.
    pub first_sequence: u64,
    /// Segments played.
    pub segments: u64,
    /// Startup, milliseconds: from opening the session to the first
    /// segment in the player.
    pub startup_ms: u64,
    /// Stalls and their total length.
    pub rebuffers: u32,
    /// Total stall time, milliseconds.
    pub rebuffer_ms: u64,
    /// Media time played, milliseconds.
    pub played_ms: u64,
    /// Bytes the player received that differ from the packaged bytes.
    pub corrupt_bytes: u64,
    /// Why the viewer failed, if it did.
    pub error: Option<String>,
}

/// The sessions being watched, for the progress display.
type Live = Arc<Mutex<Crowd>>;

/// The crowd as the progress display (and the swarm's sampler) sees it.
#[derive(Default)]
pub(crate) struct Crowd {
    /// Sessions playing now.
    pub(crate) watching: Vec<Arc<Session>>,
    /// Final counters of the viewers who left.
    pub(crate) left: Vec<Stats>,
}

impl Crowd {
    /// The counters of everyone so far: those watching now and those who
    /// left.
    pub(crate) fn stats(&self) -> Vec<Stats> {
        let mut stats: Vec<Stats> = self.watching.iter().map(|s| s.stats()).collect();
        stats.extend(self.left.iter().copied());
        stats
    }
}

/// Closes a viewer's session once its player is done, noting a failure to
/// close in `outcome`.
pub(crate) async fn close_session(session: Arc<Session>, outcome: &mut ViewerOutcome) {
    match Arc::try_unwrap(session) {
        Ok(session) => {
            if let Err(e) = session.close().await {
                outcome.error.get_or_insert(format!("close: {e}"));
            }
        }
        Err(_) => {
            outcome
                .error
                .get_or_insert("session still shared at close".into());
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the demo: starts the platform, the crowd, waits for every viewer.
pub async fn run(config: &DemoConfig) -> anyhow::Result<(Report, Vec<ViewerOutcome>)> {
    anyhow::ensure!(config.viewers > 0, "at least one viewer");
    anyhow::ensure!(!config.isps.is_empty(), "at least one ISP");
    let platform_config = PlatformConfig {
        renditions: vec![config.rendition.clone()],
        ..PlatformConfig::default()
    };
    let started = Instant::now();
    let platform = Arc::new(Platform::start(&platform_config).await?);
    eprintln!(
        "platform up in {:.1} s: license server https://{}, tracker quic://{}, edge seed quic://{} + http://{}",
        started.elapsed().as_secs_f64(),
        platform.license.grpc_addr,
        platform.tracker.quic_addr,
        platform.seed.quic_address,
        platform.seed.http_address,
    );
    eprintln!("dashboard: {}", platform.dashboard_url());
    eprintln!(
        "{} viewers ({}), one every {:.1} s, each watching {} s of the live stream",
        config.viewers,
        if config.p2p { "P2P on" } else { "CDN only" },
        config.join_interval.as_secs_f64(),
        config.watch.as_secs()
    );

    // Viewers join an event already under way: with fewer segments out
    // than the players' latency, the first viewers would have to sit at the
    // live edge and wait for every segment as it is encoded.
    let needed = config.latency_segments + 1;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while platform.published() < needed {
        anyhow::ensure!(
            Instant::now() < wait_until,
            "the live stream did not reach {needed} segments within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: Live = Arc::new(Mutex::new(Crowd::default()));
    let crowd_started = Instant::now();
    let mut viewers = Vec::new();
    let progress = Progress::new(config, live.clone());
    for index in 0..config.viewers {
        if index > 0 {
            progress
                .wait(config.join_interval, viewers.len(), &viewers)
                .await;
        }
        let platform = platform.clone();
        let live = live.clone();
        let config = config.clone();
        viewers.push(tokio::spawn(async move {
            viewer(&platform, &config, index, &live).await
        }));
    }
    // Every viewer ends by itself once it watched; the bound only guards
    // against a hang.
    let bound = watch_of(config, 0) + Duration::from_secs(90);
    let mut outcomes = Vec::new();
    let waited = tokio::time::timeout(bound, async {
        loop {
            if viewers.iter().all(tokio::task::JoinHandle::is_finished) {
                break;
            }
            progress
                .wait(Duration::from_millis(500), viewers.len(), &viewers)
                .await;
        }
    })
    .await;
    if waited.is_err() {
        for viewer in &viewers {
            viewer.abort();
        }
    }
    for (index, viewer) in viewers.into_iter().enumerate() {
        match viewer.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => outcomes.push(ViewerOutcome::failed(index, config, e.to_string())),
        }
    }
    progress.finish();
    let duration = crowd_started.elapsed();
    let report = summarize(config, &outcomes, duration, &platform)?;
    match Arc::try_unwrap(platform) {
        Ok(platform) => platform.shutdown().await?,
        Err(_) => anyhow::bail!("a viewer still holds the platform"),
    }
    Ok((report, outcomes))
}

impl ViewerOutcome {
    fn failed(index: usize, config: &DemoConfig, error: String) -> Self {
        Self::failed_as(
            account(index),
            config.isps[index % config.isps.len()].clone(),
            error,
        )
    }

    /// The outcome of a viewer that failed with `error`.
    pub fn failed_as(account: String, isp: String, error: String) -> Self {
        Self {
            account,
            isp,
            stats: Stats::default(),
            bytes_peer: 0,
            bytes_seed: 0,
            bytes_cdn: 0,
            first_sequence: 0,
            segments: 0,
            startup_ms: 0,
            rebuffers: 0,
            rebuffer_ms: 0,
            played_ms: 0,
            corrupt_bytes: 0,
            error: Some(error),
        }
    }
}

impl ViewerOutcome {
    /// The same outcome with the session's final counters.
    pub fn with_stats(mut self, stats: Stats) -> Self {
        self.bytes_peer = stats.bytes_from_peers;
        self.bytes_seed = stats.bytes_from_seeds;
        self.bytes_cdn = stats.bytes_from_cdn;
        self.stats = stats;
        self
    }
}

/// How long viewer `index` watches.
pub fn watch_of(config: &DemoConfig, index: usize) -> Duration {
    if config.leave_together {
        let later_joins = config.viewers.saturating_sub(index + 1) as u32;
        config.watch + config.join_interval * later_joins
    } else {
        config.watch
    }
}

fn account(index: usize) -> String {
    format!("viewer-{index:03}")
}

async fn viewer(
    platform: &Platform,
    config: &DemoConfig,
    index: usize,
    live: &Live,
) -> ViewerOutcome {
    let isp = config.isps[index % config.isps.len()].clone();
    let (region, _) = PlatformConfig::default().seed_location;
    let options = platform.viewer_builder(config.p2p, &region, &isp);
    // Startup as the viewer sees it: from pressing play (license, manifest,
    // init segment included) to the first frame.
    let pressed_play = Instant::now();
    let session = match open(platform, options, &account(index)).await {
        Ok(session) => Arc::new(session),
        Err(e) => return ViewerOutcome::failed(index, config, format!("{e:#}")),
    };
    let opening = pressed_play.elapsed();
    lock(live).watching.push(session.clone());
    let played = match RenditionName::new(config.rendition.as_str()) {
        Ok(rendition) => {
            player::play_live(
                &session,
                &rendition,
                config.latency_segments,
                watch_of(config, index),
            )
            .await
        }
        Err(e) => Err(loaves_client_sdk::Error::from(e).into()),
    };
    let stats = session.stats();
    {
        let mut crowd = lock(live);
        crowd.watching.retain(|s| !Arc::ptr_eq(s, &session));
        crowd.left.push(stats);
    }
    let mut outcome = match played {
        Ok(report) => outcome_of(platform, config, index, &isp, stats, opening, &report),
        Err(e) => ViewerOutcome::failed(index, config, e.to_string()).with_stats(stats),
    };
    close_session(session, &mut outcome).await;
    outcome
}

async fn open(
    platform: &Platform,
    options: LoavesBuilder,
    account: &str,
) -> anyhow::Result<Session> {
    open_session(options, platform.entitlement(account)).await
}

/// Opens a viewer's session on the platform's title.
pub async fn open_session(options: LoavesBuilder, entitlement: Vec<u8>) -> anyhow::Result<Session> {
    let loaves = options.build()?;
    Ok(loaves.open(crate::platform::TITLE, entitlement).await?)
}

/// Compares what the player got with the packaged files.
fn outcome_of(
    platform: &Platform,
    config: &DemoConfig,
    index: usize,
    isp: &str,
    stats: Stats,
    opening: Duration,
    report: &PlaybackReport,
) -> ViewerOutcome {
    let corrupt = corrupt_bytes(&platform.packaged, &config.rendition, report);
    ViewerOutcome::played(
        account(index),
        isp,
        opening,
        report,
        watch_of(config, index),
        corrupt,
    )
    .with_stats(stats)
}

/// Bytes a player received that differ from the packaged files under
/// `packaged` (the packager's output root): every object that differs
/// counts its packaged size (1 when the packaged file is missing).
pub fn corrupt_bytes(packaged: &std::path::Path, rendition: &str, report: &PlaybackReport) -> u64 {
    corrupt_bytes_of_title(packaged, crate::platform::TITLE, rendition, report)
}

/// [`corrupt_bytes`] for a player of `title`.
pub fn corrupt_bytes_of_title(
    packaged: &std::path::Path,
    title: &str,
    rendition: &str,
    report: &PlaybackReport,
) -> u64 {
    let mut corrupt = 0u64;
    let mut expected = Vec::with_capacity(report.sha256.len());
    expected.push(crate::platform::packaged_title_init(
        packaged, title, rendition,
    ));
    for i in 0..report.sha256.len().saturating_sub(1) as u64 {
        expected.push(crate::platform::packaged_title_segment(
            packaged,
            title,
            rendition,
            report.first_sequence + i,
        ));
    }
    for (got, want) in report.sha256.iter().zip(&expected) {
        match want {
            Some(bytes) if sha256(bytes) == *got => {}
            // A player must never get bytes other than the packaged ones;
            // their size is that of the packaged object (or unknown: 1).
            Some(bytes) => corrupt += bytes.len() as u64,
            None => corrupt += 1,
        }
    }
    corrupt
}

impl ViewerOutcome {
    /// The outcome of a viewer whose player finished with `report` after
    /// opening its session in `opening` and watching `watched`; add the
    /// counters with [`ViewerOutcome::with_stats`].
    pub fn played(
        account: String,
        isp: &str,
        opening: Duration,
        report: &PlaybackReport,
        watched: Duration,
        corrupt: u64,
    ) -> Self {
        let segments = report.sha256.len().saturating_sub(1) as u64;
        Self {
            account,
            isp: isp.to_owned(),
            stats: Stats::default(),
            bytes_peer: 0,
            bytes_seed: 0,
            bytes_cdn: 0,
            first_sequence: report.first_sequence,
            segments,
            startup_ms: (opening + report.startup).as_millis() as u64,
            rebuffers: report.rebuffers,
            rebuffer_ms: report.rebuffer_time.as_millis() as u64,
            played_ms: watched.as_millis() as u64,
            corrupt_bytes: corrupt,
            error: None,
        }
    }
}

/// The report of a finished crowd.
fn summarize(
    config: &DemoConfig,
    outcomes: &[ViewerOutcome],
    duration: Duration,
    platform: &Platform,
) -> anyhow::Result<Report> {
    let limit = offload_limit(
        outcomes,
        &platform.packaged,
        &config.rendition,
        VIEWER_UPLOAD_BYTES_PER_SECOND,
    )?;
    Ok(report_of("demo", config.p2p, outcomes, duration, limit))
}

/// The report of a finished crowd of `outcomes` over `duration`, with its
/// offload limit (see [`offload_limit`]).
pub fn report_of(
    kind: &str,
    p2p: bool,
    outcomes: &[ViewerOutcome],
    duration: Duration,
    offload_limit: f64,
) -> Report {
    let sum = |f: &dyn Fn(&ViewerOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let bytes_peer = sum(&|o| o.stats.bytes_from_peers);
    let bytes_seed = sum(&|o| o.stats.bytes_from_seeds);
    let bytes_cdn = sum(&|o| o.stats.bytes_from_cdn);
    let rebuffer_ms = sum(&|o| o.rebuffer_ms);
    let played_ms = sum(&|o| o.played_ms);
    let mut startups: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| o.startup_ms)
        .collect();
    Report {
        kind: kind.into(),
        policy: if p2p {
            "deadline-first".into()
        } else {
            "cdn-only".into()
        },
        viewers: outcomes.len() as u64,
        duration_s: duration.as_secs_f64(),
        bytes_peer,
        bytes_seed,
        bytes_cdn,
        offload_peer: Report::peer_share(bytes_peer, bytes_seed, bytes_cdn),
        offload_limit,
        rebuffer_ratio: if played_ms + rebuffer_ms == 0 {
            0.0
        } else {
            rebuffer_ms as f64 / (played_ms + rebuffer_ms) as f64
        },
        rebuffer_events: sum(&|o| u64::from(o.rebuffers)),
        startup_ms_p50: quantile(&mut startups, 0.5),
        startup_ms_p95: quantile(&mut startups, 0.95),
        cross_isp_bytes: sum(&|o| o.stats.bytes_cross_isp),
        corrupt_bytes_to_player: sum(&|o| o.corrupt_bytes),
    }
}

/// DESIGN.md's limit, `min(1 − 1/N, U / (N·r))`, applied per segment: with
/// staggered joins and leaves the number of viewers N differs from segment
/// to segment, and each segment must leave the infrastructure once. Sizes
/// come from the packaged files under `packaged`; every viewer uploads at
/// most `upload_bytes_per_second`.
pub fn offload_limit(
    outcomes: &[ViewerOutcome],
    packaged: &std::path::Path,
    rendition: &str,
    upload_bytes_per_second: u64,
) -> anyhow::Result<f64> {
    Ok(swarm_offload_limit(
        outcomes,
        packaged,
        crate::platform::TITLE,
        rendition,
        upload_bytes_per_second,
    )?
    .limit)
}

/// The offload limit of one swarm and the bytes its viewers watched, which
/// weigh it when limits of several swarms are aggregated
/// ([`Report::offload_limit_over_swarms`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwarmLimit {
    /// The limit.
    pub limit: f64,
    /// Bytes of the segments played, summed over the viewers.
    pub bytes: u64,
}

/// [`offload_limit`] of the swarm of `title` and `rendition`: `outcomes`
/// are its viewers only (a viewer of another title holds nothing this
/// swarm wants).
pub fn swarm_offload_limit(
    outcomes: &[ViewerOutcome],
    packaged: &std::path::Path,
    title: &str,
    rendition: &str,
    upload_bytes_per_second: u64,
) -> anyhow::Result<SwarmLimit> {
    let mut watchers: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for outcome in outcomes.iter().filter(|o| o.segments > 0) {
        for sequence in outcome.first_sequence..outcome.first_sequence + outcome.segments {
            *watchers.entry(sequence).or_default() += 1;
        }
    }
    let (mut reachable, mut all) = (0u64, 0u64);
    for (sequence, n) in &watchers {
        let size = crate::platform::packaged_title_segment(packaged, title, rendition, *sequence)
            .with_context(|| format!("{title}: packaged segment {sequence} missing"))?
            .len() as u64;
        reachable += (n - 1) * size;
        all += n * size;
    }
    if all == 0 {
        return Ok(SwarmLimit {
            limit: 0.0,
            bytes: 0,
        });
    }
    let by_copies = reachable as f64 / all as f64;
    // The upload bound: all viewers' upload caps against what they watch.
    let viewers = outcomes.len() as u64;
    let bitrate_bps = (all as f64 * 8.0 / (sum_played_s(outcomes).max(1e-9))) as u64;
    let by_upload = Report::offload_limit(
        viewers,
        bitrate_bps.max(1),
        viewers * upload_bytes_per_second * 8,
    );
    Ok(SwarmLimit {
        limit: by_copies.min(by_upload.max(0.0)).min(1.0),
        bytes: all,
    })
}

fn sum_played_s(outcomes: &[ViewerOutcome]) -> f64 {
    outcomes.iter().map(|o| o.played_ms as f64 / 1000.0).sum()
}

/// The progress display: a bar on a terminal, a line every few seconds
/// otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    live: Live,
    viewers: usize,
    last_line: Mutex<Instant>,
}

impl Progress {
    fn new(config: &DemoConfig, live: Live) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (config.progress && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(config.viewers as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:20}] {pos}/{len} joined · {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            plain: config.progress && !terminal,
            live,
            viewers: config.viewers,
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Waits `duration`, refreshing the display.
    async fn wait(
        &self,
        duration: Duration,
        joined: usize,
        viewers: &[tokio::task::JoinHandle<ViewerOutcome>],
    ) {
        let end = Instant::now() + duration;
        loop {
            self.show(joined, viewers.iter().filter(|v| v.is_finished()).count());
            let now = Instant::now();
            if now >= end {
                return;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(250))).await;
        }
    }

    fn show(&self, joined: usize, finished: usize) {
        // Everyone so far: those watching now and those who left.
        let (watching, stats) = {
            let crowd = lock(&self.live);
            (crowd.watching.len(), crowd.stats())
        };
        let peer: u64 = stats.iter().map(|s| s.bytes_from_peers).sum();
        let seed: u64 = stats.iter().map(|s| s.bytes_from_seeds).sum();
        let cdn: u64 = stats.iter().map(|s| s.bytes_from_cdn).sum();
        let stalls: u32 = stats.iter().map(|s| s.rebuffer_count).sum();
        let total = (peer + seed + cdn).max(1) as f64;
        let message = format!(
            "watching {watching} · peers {:.0}% seed {:.0}% CDN {:.0}% · stalls {stalls}",
            100.0 * peer as f64 / total,
            100.0 * seed as f64 / total,
            100.0 * cdn as f64 / total,
        );
        if let Some(bar) = &self.bar {
            bar.set_position(joined as u64);
            bar.set_message(message);
        } else if self.plain {
            let mut last = lock(&self.last_line);
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                eprintln!(
                    "joined {joined}/{} · finished {finished} · {message}",
                    self.viewers
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The JSON report: the run's fields at the top level with its viewers'
/// outcomes, the baseline's (when there is one) under "baseline".
pub fn report_json(
    report: &Report,
    outcomes: &[ViewerOutcome],
    baseline: Option<(&Report, &[ViewerOutcome])>,
) -> anyhow::Result<serde_json::Value> {
    let mut json = serde_json::to_value(report)?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert("viewer_outcomes".into(), serde_json::to_value(outcomes)?);
        if let Some((base, base_outcomes)) = baseline {
            let mut base = serde_json::to_value(base)?;
            if let Some(base_fields) = base.as_object_mut() {
                base_fields.insert(
                    "viewer_outcomes".into(),
                    serde_json::to_value(base_outcomes)?,
                );
            }
            fields.insert("baseline".into(), base);
        }
    }
    Ok(json)
}

/// The summary table, with the baseline beside when there is one.
pub fn table(report: &Report, baseline: Option<&Report>) -> String {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let rows = |r: &Report| -> Vec<(&'static str, String)> {
        vec![
            ("viewers", r.viewers.to_string()),
            ("duration", format!("{:.0} s", r.duration_s)),
            ("bytes from peers", mb(r.bytes_peer)),
            ("bytes from the seed", mb(r.bytes_seed)),
            ("bytes from the CDN", mb(r.bytes_cdn)),
            ("offload to peers", pct(r.offload_peer)),
            ("offload limit", pct(r.offload_limit)),
            (
                "of the limit",
                if r.offload_limit > 0.0 {
                    pct(r.offload_peer / r.offload_limit)
                } else {
                    "-".into()
                },
            ),
            ("rebuffer ratio", format!("{:.4}", r.rebuffer_ratio)),
            ("rebuffer events", r.rebuffer_events.to_string()),
            ("startup p50", format!("{} ms", r.startup_ms_p50)),
            ("startup p95", format!("{} ms", r.startup_ms_p95)),
            ("cross-ISP bytes", mb(r.cross_isp_bytes)),
            (
                "corrupt bytes to players",
                r.corrupt_bytes_to_player.to_string(),
            ),
        ]
    };
    let mut out = String::new();
    let header = match baseline {
        Some(_) => format!(
            "{:<26}{:>16}{:>16}\n",
            "",
            report.policy.as_str(),
            "cdn-only"
        ),
        None => format!("{:<26}{:>16}\n", "", report.policy.as_str()),
    };
    out.push_str(&header);
    let base_rows = baseline.map(rows);
    for (i, (name, value)) in rows(report).into_iter().enumerate() {
        match &base_rows {
            Some(base) => out.push_str(&format!("{name:<26}{value:>16}{:>16}\n", base[i].1)),
            None => out.push_str(&format!("{name:<26}{value:>16}\n")),
        }
    }
    out
}
