#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A small demo (a few viewers, a short watch) on the real platform: the
//! same code as `loadtests demo`, P2P on and off.

use std::time::Duration;

use loaves_loadtests::demo::{self, DemoConfig};

fn small(p2p: bool) -> DemoConfig {
    DemoConfig {
        viewers: 4,
        join_interval: Duration::from_millis(1500),
        watch: Duration::from_secs(14),
        p2p,
        progress: false,
        ..DemoConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_crowd_plays_the_live_stream_with_bytes_from_peers_and_without() {
    let (report, outcomes) = demo::run(&small(true)).await.unwrap();
    eprintln!("{}", demo::table(&report, None));
    for outcome in &outcomes {
        assert!(outcome.error.is_none(), "{outcome:?}");
        assert!(outcome.segments >= 5, "{outcome:?}");
        assert_eq!(outcome.corrupt_bytes, 0, "{outcome:?}");
        assert_eq!(outcome.stats.segments_rejected, 0, "{outcome:?}");
    }
    assert_eq!(report.viewers, 4);
    assert_eq!(report.corrupt_bytes_to_player, 0);
    assert!(report.bytes_peer > 0, "{report:?}");
    assert!(report.bytes_cdn + report.bytes_seed > 0, "{report:?}");
    // Four viewers: at most three of every four copies can come from peers.
    assert!(report.offload_limit > 0.0 && report.offload_limit <= 0.75 + 1e-9);
    assert!(
        report.offload_peer <= report.offload_limit + 1e-9,
        "{report:?}"
    );
    // Viewers are spread over two ISPs, the seed sits in one of them:
    // only bytes from peers and the seed can cross, and some did.
    assert!(report.cross_isp_bytes > 0, "{report:?}");
    assert!(report.cross_isp_bytes <= report.bytes_peer + report.bytes_seed);
    assert!(report.startup_ms_p50 > 0 && report.startup_ms_p50 <= report.startup_ms_p95);
    // The JSON has the fields the issue names.
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "viewers",
        "duration_s",
        "bytes_peer",
        "bytes_seed",
        "bytes_cdn",
        "offload_peer",
        "offload_limit",
        "rebuffer_ratio",
        "rebuffer_events",
        "startup_ms_p50",
        "startup_ms_p95",
        "cross_isp_bytes",
        "corrupt_bytes_to_player",
    ] {
        assert!(json.get(field).is_some(), "{field} missing");
    }

    // The baseline, after (not beside) the P2P run: two crowds at once
    // would compete for this machine's cores.
    let (report, outcomes) = demo::run(&small(false)).await.unwrap();
    for outcome in &outcomes {
        assert!(outcome.error.is_none(), "{outcome:?}");
        assert_eq!(outcome.corrupt_bytes, 0);
    }
    assert_eq!(report.bytes_peer, 0);
    assert_eq!(report.bytes_seed, 0);
    assert!(report.bytes_cdn > 0);
    assert_eq!(report.policy, "cdn-only");
}
