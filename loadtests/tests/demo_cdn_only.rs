#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The demo's baseline: the same kind of crowd with P2P off takes every
//! byte from the CDN, verified.

use std::time::Duration;

use loaves_loadtests::demo::{self, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_only_crowd_takes_every_byte_from_the_cdn() {
    let config = DemoConfig {
        viewers: 4,
        join_interval: Duration::from_millis(1000),
        watch: Duration::from_secs(10),
        p2p: false,
        progress: false,
        ..DemoConfig::default()
    };
    let (report, outcomes) = demo::run(&config).await.unwrap();
    for outcome in &outcomes {
        assert!(outcome.error.is_none(), "{outcome:?}");
        assert!(outcome.segments >= 4, "{outcome:?}");
        assert_eq!(outcome.corrupt_bytes, 0);
    }
    assert_eq!(report.bytes_peer, 0);
    assert_eq!(report.bytes_seed, 0);
    assert_eq!(report.cross_isp_bytes, 0);
    assert!(report.bytes_cdn > 0);
    assert_eq!(report.policy, "cdn-only");
    assert_eq!(report.corrupt_bytes_to_player, 0);
}
