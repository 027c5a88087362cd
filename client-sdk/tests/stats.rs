#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What the tracker learns from viewers' stats, over 127.0.0.1 with the real
//! license server, tracker and HTTP origin: a session with P2P off still
//! reports to a configured tracker (the `cdn_only` cohort) without any peer
//! traffic, and sessions report their played time.

mod common;

use std::time::{Duration, Instant};

use common::stack;
use loaves_client_sdk::player;
use loaves_testkit::wait::eventually;

const RENDITION: &str = "audio";
const AHEAD: Duration = Duration::from_secs(8);
/// Bound on waiting for the announces that carry the last counters.
const REPORT_WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_off_reports_the_cdn_only_cohort_without_peers() {
    let stack = stack(true).await;
    let session = stack.viewer("cdn-only", stack.options(false)).await;
    assert!(session.peer_addr().is_none());
    player::play(&session, &common::r(RENDITION), AHEAD)
        .await
        .unwrap();
    let stats = session.stats();
    assert!(stats.bytes_from_cdn > 0);
    assert_eq!(stats.bytes_from_peers + stats.bytes_from_seeds, 0);
    assert_eq!(stats.bytes_uploaded, 0);
    assert!(stats.played_time > Duration::ZERO, "{stats:?}");

    let cdn_only = r#"cohort="cdn_only""#;
    let cdn_bytes = r#"source="cdn""#;
    eventually(
        "cdn_only bytes and played time at the tracker",
        REPORT_WAIT,
        async || {
            stack.tracker_metric("loaves_tracker_bytes_total", &[cdn_only, cdn_bytes]) > 0.0
                && stack.tracker_metric("loaves_tracker_played_seconds_total", &[cdn_only]) > 0.0
        },
    )
    .await;
    // Every report was filed as CDN-only, and nothing was served to or
    // taken from peers.
    let p2p = r#"cohort="p2p""#;
    assert_eq!(
        stack.tracker_metric("loaves_tracker_bytes_total", &[p2p]),
        0.0
    );
    assert_eq!(
        stack.tracker_metric("loaves_tracker_played_seconds_total", &[p2p]),
        0.0
    );
    assert_eq!(
        stack.tracker_metric("loaves_tracker_uploaded_bytes_total", &[]),
        0.0
    );
    let stats = session.stats();
    assert_eq!(stats.bytes_uploaded, 0);
    assert_eq!(stats.bytes_from_peers + stats.bytes_from_seeds, 0);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_on_reports_played_time() {
    let stack = stack(true).await;
    let session = stack.viewer("p2p", stack.options(true)).await;
    let opened = Instant::now();
    assert!(session.peer_addr().is_some());
    player::play(&session, &common::r(RENDITION), AHEAD)
        .await
        .unwrap();
    let stats = session.stats();
    assert!(stats.played_time > Duration::ZERO, "{stats:?}");
    assert!(
        stats.played_time + stats.rebuffer_time <= opened.elapsed(),
        "{stats:?}"
    );

    // The clock stops while the player is stalled or paused, and runs on
    // once it plays again.
    for stalled in [true, false] {
        if stalled {
            session.player_rebuffer_start();
        } else {
            session
                .set_playhead(&common::r(RENDITION), 0, Duration::ZERO, false)
                .unwrap();
        }
        let before = session.stats().played_time;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(session.stats().played_time, before);
        session.player_rebuffer_end(Duration::from_millis(50));
        let resumed = session.stats().played_time;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(session.stats().played_time > resumed);
    }

    let p2p = r#"cohort="p2p""#;
    eventually("p2p played time at the tracker", REPORT_WAIT, async || {
        stack.tracker_metric("loaves_tracker_played_seconds_total", &[p2p]) > 0.0
    })
    .await;
    assert_eq!(
        stack.tracker_metric(
            "loaves_tracker_played_seconds_total",
            &[r#"cohort="cdn_only""#]
        ),
        0.0
    );
    session.close().await.unwrap();
}
