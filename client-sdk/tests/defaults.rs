#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Viewers configured with only what an app must set (license server,
//! manifest keys, CDN, ClearKey, tracker) and every other setting as the
//! SDK defaults it — the peer socket on the unspecified address, the
//! default upload cap, announces every 30 s, real-time playback — still
//! exchange bytes: nothing advertises an address no one can reach.

mod common;

use std::time::Duration;

use common::stack;
use loaves_client_sdk::player;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_with_default_options_get_bytes_from_a_peer() {
    let stack = stack(true).await;
    let first = stack.viewer("first", stack.minimal_options()).await;
    // What it announces is reachable: no unspecified address.
    let candidates = first.peer_candidates();
    assert!(!candidates.is_empty());
    assert!(
        candidates.iter().all(|a| !a.ip().is_unspecified()),
        "{candidates:?}"
    );
    let rendition = first.renditions()[0].clone();
    let buffer = Duration::from_secs(8);
    player::play(&first, &rendition, buffer).await.unwrap();

    // The second viewer's first announce names the first, which holds
    // everything: it should come from there rather than the CDN.
    let second = stack.viewer("second", stack.minimal_options()).await;
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        player::play(&second, &rendition, buffer),
    )
    .await
    .expect("playback finishes in time")
    .unwrap();
    assert_eq!(report.rebuffers, 0);
    let stats = second.stats();
    eprintln!("second: {stats:?}\nfirst: {:?}", first.stats());
    assert!(stats.bytes_from_peers > 0, "{stats:?}");
    assert!(first.stats().bytes_uploaded > 0);
    second.close().await.unwrap();
    first.close().await.unwrap();
}
