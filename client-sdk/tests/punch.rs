#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The punching path end to end over 127.0.0.1: viewers that act as if
//! behind endpoint-independent NATs (on loopback every viewer is `Open`)
//! ask the real tracker to have each other open, follow its notices, and
//! exchange segments; viewers that act as if both behind endpoint-dependent
//! NATs do not punch and play from seeds and the CDN with no stall.

mod common;

use std::time::Duration;

use common::{Stack, stack};
use loaves_client_sdk::{Event, Events, Faults, NatType, Session, player};

const RENDITION: &str = "video_360p";
const AHEAD: Duration = Duration::from_secs(8);

/// Two viewers acting as if behind `nat`: the first plays the title to the
/// end, then the second plays it (its events subscribed before it starts),
/// both without a stall.
async fn a_pair_behind(stack: &Stack, nat: NatType) -> (Session, Session, Events) {
    let options = || {
        stack.options(true).faults(Faults {
            nat: Some(nat),
            ..Default::default()
        })
    };
    let first = stack.viewer("first", options()).await;
    let first_report = player::play(&first, &common::r(RENDITION), AHEAD)
        .await
        .unwrap();
    assert_eq!(first_report.rebuffers, 0);
    let second = stack.viewer("second", options()).await;
    let events = second.events();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        player::play(&second, &common::r(RENDITION), AHEAD),
    )
    .await
    .expect("playback finishes in time")
    .unwrap();
    assert_eq!(report.rebuffers, 0);
    (first, second, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_behind_cone_nats_punch_through_the_tracker_and_share() {
    let stack = stack(true).await;
    let (first, second, mut events) = a_pair_behind(&stack, NatType::EndpointIndependent).await;
    let (asked, told) = (second.stats(), first.stats());
    eprintln!("second: {asked:?}\nfirst: {told:?}");
    assert_eq!(asked.nat, NatType::EndpointIndependent);
    assert!(asked.punch_requests >= 1, "{asked:?}");
    assert!(asked.peer_connects_punched >= 1, "{asked:?}");
    assert!(told.punch_notices >= 1, "{told:?}");
    assert!(asked.bytes_from_peers > 0, "{asked:?}");
    let mut punched_connect = false;
    while let Some(event) = events.try_next() {
        if let Event::PeerConnect {
            punched: true,
            address: Some(_),
            ..
        } = event
        {
            punched_connect = true;
        }
    }
    assert!(punched_connect, "no punched PeerConnect event");
    second.close().await.unwrap();
    first.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_behind_symmetric_nats_do_not_punch_and_play_without_stalls() {
    let stack = stack(true).await;
    let (first, second, _events) = a_pair_behind(&stack, NatType::EndpointDependent).await;
    let stats = second.stats();
    eprintln!("second: {stats:?}");
    assert_eq!(stats.punch_requests, 0, "{stats:?}");
    assert_eq!(first.stats().punch_notices, 0);
    second.close().await.unwrap();
    first.close().await.unwrap();
}
