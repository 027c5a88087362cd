#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Small versions of the swarm scenarios (loadtests/scenarios/*.toml) on
//! the platform's real binaries: a few viewers for about ten seconds each.
//! They check what each scenario is about, not offload figures (those are
//! benchmarks, BENCHMARKS.md).
//!
//! The binaries (`license-server`, `loaves-tracker`, `edge-seed`) must be
//! built: `cargo test --workspace` builds them (their packages have
//! integration tests); `cargo test -p loadtests` alone may not, and then
//! these tests fail naming `cargo build -p license-server -p tracker -p
//! edge-seed`. They are not built from here: a nested cargo would wait on
//! the build lock of the cargo running these tests, and a cold build takes
//! minutes on a small machine.
//!
//! The runs are serialized (one at a time): each starts five processes and
//! a crowd, and they would otherwise compete for the machine's cores.

use std::path::Path;
use std::sync::Mutex;

use loaves_loadtests::swarm::{self, Role, Scenario, SwarmRun};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The scenario file `name`, shrunk to a CI run: `viewers` viewers joining
/// within 2 s, watching 10 s, two segments behind the live edge.
fn small(name: &str, viewers: usize) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    let mut scenario = Scenario::load(&path).unwrap();
    scenario.viewers = viewers;
    scenario.join_window_s = 2.0;
    scenario.watch_s = 10.0;
    scenario.latency_segments = 2;
    scenario
}

fn run(scenario: &Scenario) -> SwarmRun {
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = runtime.block_on(swarm::run(scenario, true)).unwrap();
    eprintln!("{}", loaves_loadtests::demo::table(&run.report, None));
    eprint!("{}", swarm::titles_table(&run, None));
    run
}

fn honest(
    run: &SwarmRun,
) -> impl Iterator<Item = (&swarm::ViewerTrace, &loaves_loadtests::demo::ViewerOutcome)> {
    run.traces
        .iter()
        .zip(&run.outcomes)
        .filter(|(t, _)| t.role == Some(Role::Honest))
}

fn all_finished(run: &SwarmRun) {
    for (_, outcome) in honest(run) {
        assert!(outcome.error.is_none(), "{outcome:?}");
        assert!(outcome.segments >= 3, "{outcome:?}");
    }
    assert_eq!(run.report.corrupt_bytes_to_player, 0);
}

/// A flash crowd over several ISPs and regions with emulated links: every
/// viewer plays, some bytes come from peers, cross-ISP bytes are counted,
/// and the HTML report holds the three plots (self-contained).
#[test]
fn flash_crowd_over_isps_with_link_limits_and_html() {
    let mut scenario = small("isps", 6);
    scenario.join_window_s = 1.0;
    let run = run(&scenario);
    all_finished(&run);
    assert_eq!(run.report.viewers, 6);
    assert!(run.report.bytes_peer > 0, "{:?}", run.report);
    assert!(run.report.cross_isp_bytes > 0, "{:?}", run.report);
    assert!(run.report.cross_isp_bytes <= run.report.bytes_peer + run.report.bytes_seed);
    assert!(run.samples.len() >= 5);
    let html = swarm::html::page(&scenario, &run, None);
    for plot in ["offload-plot", "buffer-plot", "stalls-plot"] {
        assert!(html.contains(&format!("id=\"{plot}\"")), "{plot} missing");
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(html.contains("<polyline"), "no buffer line");
    let json = swarm::report_json(&run, None).unwrap();
    for field in [
        "offload_peer",
        "offload_limit",
        "cross_isp_bytes",
        "samples",
    ] {
        assert!(json.get(field).is_some(), "{field} missing");
    }
}

/// Churn: two of five viewers leave early, two others join later; all
/// finish, and those who left early played less.
#[test]
fn churn_viewers_all_finish() {
    let mut scenario = small("churn", 5);
    scenario.churn.leavers = 2;
    scenario.churn.leave_after_s = 5.0;
    scenario.churn.joiners = 2;
    scenario.churn.join_after_s = 4.0;
    scenario.churn.join_window_s = 2.0;
    let run = run(&scenario);
    all_finished(&run);
    assert_eq!(run.outcomes.len(), 7);
    let leavers = &run.outcomes[3..5];
    for outcome in leavers {
        assert_eq!(outcome.played_ms, 5_000, "{outcome:?}");
    }
    assert!(run.traces[5].joined_s >= 4.0);
}

/// The seed process killed, then the tracker process killed and restarted
/// on the same address: no viewer fails or stalls.
#[test]
fn seed_failure_and_tracker_restart_cause_no_stall() {
    let mut scenario = small("seed-failure", 5);
    scenario.faults.kill_seed_at_s = Some(4.0);
    scenario.faults.restart_tracker_at_s = Some(6.0);
    scenario.faults.tracker_down_s = 1.0;
    let run = run(&scenario);
    all_finished(&run);
    let faults: Vec<&str> = run.faults.iter().map(|f| f.what.as_str()).collect();
    assert_eq!(
        faults,
        ["seed-0 killed", "tracker killed", "tracker restarted"]
    );
    assert_eq!(run.report.rebuffer_events, 0, "{:?}", run.report);
    for trace in &run.traces {
        assert!(trace.stalls.is_empty(), "{trace:?}");
    }
}

/// One viewer corrupting its uploads, one lying about its holdings: honest
/// viewers ban the first, never give a player a corrupt byte, and finish.
#[test]
fn malicious_peers_are_banned_and_players_get_no_corrupt_byte() {
    let mut scenario = small("malicious-peers", 6);
    scenario.faults.tamper_viewers = 1;
    scenario.faults.lying_viewers = 1;
    // Long enough that honest viewers surely turn to both liars: whom they
    // ask for each segment depends on who got it first.
    scenario.watch_s = 20.0;
    let run = run(&scenario);
    all_finished(&run);
    assert!(run.segments_rejected > 0, "no corrupt segment was offered");
    assert!(run.peers_banned > 0, "the tampering viewer was not banned");
    // Both kinds of liar were caught, each for what it did.
    let reasons: Vec<&str> = run
        .traces
        .iter()
        .flat_map(|t| t.banned.iter().map(String::as_str))
        .collect();
    assert!(reasons.contains(&"Corrupt"), "{reasons:?}");
    assert!(reasons.contains(&"FalseClaims"), "{reasons:?}");
    for outcome in &run.outcomes {
        assert_eq!(outcome.corrupt_bytes, 0, "{outcome:?}");
    }
}

/// VOD over three titles with Zipf popularity: every viewer plays its
/// title to the end, players get only packaged bytes (each title has its
/// own keys, so a segment of another title would count as corrupt), every
/// title watched got bytes, the per-title rows add up to the totals, and
/// the most popular title's viewers shared some segments.
#[test]
fn vod_over_zipf_titles_reports_every_title() {
    let mut scenario = small("vod-zipf", 6);
    scenario.join_window_s = 4.0;
    let vod = scenario.vod.as_mut().unwrap();
    vod.titles = 3;
    vod.segments = 6;
    // The draw is seeded: the same titles every run.
    let plans = scenario.plan().unwrap();
    let titles: Vec<&str> = plans.iter().map(|p| p.title.as_str()).collect();
    let on_first = titles.iter().filter(|t| **t == "vod-1").count();
    assert!(on_first >= 2, "{titles:?}");
    let run = run(&scenario);
    all_finished(&run);
    for outcome in &run.outcomes {
        // Played to the end: every segment and the title's whole length.
        assert_eq!(outcome.segments, 6, "{outcome:?}");
    }
    assert_eq!(run.titles.len(), 3);
    let mut viewers = 0;
    let (mut peer, mut seed, mut cdn, mut corrupt) = (0, 0, 0, 0);
    for row in &run.titles {
        let r = &row.report;
        let watching = titles.iter().filter(|t| **t == row.title).count() as u64;
        assert_eq!(r.viewers, watching, "{row:?}");
        if watching > 0 {
            assert!(r.bytes_total() > 0, "{row:?}");
        }
        viewers += r.viewers;
        peer += r.bytes_peer;
        seed += r.bytes_seed;
        cdn += r.bytes_cdn;
        corrupt += r.corrupt_bytes_to_player;
    }
    let total = &run.report;
    assert_eq!(viewers, total.viewers);
    assert_eq!(
        (peer, seed, cdn, corrupt),
        (
            total.bytes_peer,
            total.bytes_seed,
            total.bytes_cdn,
            total.corrupt_bytes_to_player
        )
    );
    let first = &run.titles[0];
    assert_eq!(first.title, "vod-1");
    assert!(first.report.bytes_peer > 0, "{first:?}");
    // The run's limit lies within its titles' limits (their weighted mean).
    let limits = run.titles.iter().filter(|t| t.report.viewers > 0);
    let low = limits
        .clone()
        .map(|t| t.report.offload_limit)
        .fold(1.0, f64::min);
    let high = limits.map(|t| t.report.offload_limit).fold(0.0, f64::max);
    assert!(
        (low - 1e-9..=high + 1e-9).contains(&total.offload_limit),
        "{low} {high} {total:?}"
    );
    let table = swarm::titles_table(&run, None);
    assert_eq!(table.lines().count(), 4, "{table}");
    let html = swarm::html::page(&scenario, &run, None);
    assert!(html.contains("id=\"titles\""));
    let json = swarm::report_json(&run, None).unwrap();
    assert_eq!(json["titles"].as_array().map(Vec::len), Some(3));
}

/// A `[vod]` table with bad values is refused with a message naming it.
#[test]
fn vod_config_errors_are_clear() {
    let load = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        Scenario::load(&path).map_err(|e| format!("{e:#}"))
    };
    let err = load("[vod]\ntitles = 0\n").unwrap_err();
    assert!(err.contains("vod.titles"), "{err}");
    let err = load("[vod]\nzipf_exponent = -1.0\n").unwrap_err();
    assert!(err.contains("vod.zipf_exponent"), "{err}");
    let err = load("[vod]\nsegments = 0\n").unwrap_err();
    assert!(err.contains("vod.segments"), "{err}");
    let err = load("[vod]\ntitle = 3\n").unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
    let err = load("[vod]\n[churn]\nleavers = 1\n").unwrap_err();
    assert!(err.contains("churn.leavers"), "{err}");
    // The full scenario loads, and its draw follows the popularity.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/vod-zipf.toml");
    let scenario = Scenario::load(&path).unwrap();
    let vod = scenario.vod.as_ref().unwrap();
    let shares = vod.popularity();
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(shares.windows(2).all(|w| w[0] > w[1]), "{shares:?}");
    assert_eq!(vod.draw(40), vod.draw(40));
    // Over many viewers, each title's share of the draws is its popularity.
    let draws = vod.draw(100_000);
    for (rank, share) in shares.iter().enumerate() {
        let title = format!("vod-{}", rank + 1);
        let drawn = draws.iter().filter(|t| **t == title).count() as f64 / 1e5;
        assert!((drawn - share).abs() < 0.01, "{title}: {drawn} vs {share}");
    }
}
