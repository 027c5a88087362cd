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
