#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Leaving the swarm at `Session::close`, over 127.0.0.1 with the real
//! license server, tracker and HTTP origin: a closed viewer is no longer
//! named to others (without waiting for the tracker's expiry), the counters
//! gathered after the last announce reach the tracker (both cohorts), and a
//! dead tracker delays close only by the final report's bound.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TITLE, stack};
use loaves_client_sdk::license::{LicenseClient, LicenseRequest};
use loaves_client_sdk::{Event, player};
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::identity::PeerIdentity;
use loaves_wire::tracker_client::{ClientEndpoint, TrackerConnection};

const RENDITION: &str = "audio";

fn rendition() -> loaves_client_sdk::RenditionName {
    common::r(RENDITION)
}
const AHEAD: Duration = Duration::from_secs(8);
/// Bound on waiting for the tracker to learn of a viewer.
const JOIN_WAIT: Duration = Duration::from_secs(20);
/// Longer than any test here: a periodic announce never carries the last
/// counters, only the final stop can.
const LONG_INTERVAL: Duration = Duration::from_secs(600);

/// A second viewer speaking the tracker protocol itself, so the test reads
/// the announce replies the tracker gives the others.
struct Observer {
    connection: TrackerConnection,
}

impl Observer {
    async fn join(stack: &common::Stack, account: &str) -> Self {
        let key = SigningKeyPair::generate().unwrap();
        let mut license = LicenseClient::connect(&stack.license_config())
            .await
            .unwrap();
        let licensed = license
            .acquire(
                &LicenseRequest {
                    entitlement: stack.entitlement(account),
                    title: TITLE.into(),
                    region: "eu-west".into(),
                    isp: "as1".into(),
                    ..LicenseRequest::default()
                },
                &key,
                UnixSeconds::now(),
            )
            .await
            .unwrap();
        let identity = PeerIdentity::new(&key).unwrap();
        let client = ClientEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let hello = pb::TrackerHello {
            credential: Some(pb::tracker_hello::Credential::SessionToken(
                licensed.session_token().to_vec(),
            )),
        };
        let tracker = stack.tracker.as_ref().unwrap().quic_addr;
        let connection = client.connect(tracker, &identity, hello).await.unwrap();
        Self { connection }
    }

    async fn announce(&self) -> pb::AnnounceReply {
        self.connection
            .announce(pb::Announce {
                swarm: Some(pb::SwarmId {
                    title: TITLE.into(),
                    rendition: RENDITION.into(),
                }),
                addresses: vec!["127.0.0.1:9".into()],
                max_peers: 50,
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

fn names(reply: &pb::AnnounceReply, addresses: &[SocketAddr]) -> bool {
    reply.peers.iter().any(|p| {
        addresses
            .iter()
            .any(|address| p.addresses.contains(&address.to_string()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_viewer_is_no_longer_named_to_others() {
    let stack = stack(true).await;
    let leaving = stack.viewer("leaving", stack.options(true)).await;
    let address = leaving.peer_candidates();
    assert!(!address.is_empty(), "the viewer advertises no address");
    player::play(&leaving, &rendition(), AHEAD).await.unwrap();
    let observer = Observer::join(&stack, "observer").await;
    let since = Instant::now();
    loop {
        let reply = observer.announce().await;
        if reply.swarm_size == 2 && names(&reply, &address) {
            break;
        }
        assert!(
            since.elapsed() < JOIN_WAIT,
            "the viewer never showed in the swarm: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    leaving.close().await.unwrap();
    // At once: close returns after the tracker acknowledged the stop, long
    // before the departed viewer would expire.
    let reply = observer.announce().await;
    assert_eq!(reply.swarm_size, 1, "{reply:?}");
    assert!(!names(&reply, &address), "{reply:?}");
}

/// Plays to the end with announces too far apart to carry the counters,
/// closes, and checks the tracker counted exactly the session's bytes.
async fn last_counters_reach_the_tracker(p2p: bool) {
    let stack = stack(true).await;
    let options = stack.options(p2p).max_announce_interval(LONG_INTERVAL);
    let session = stack.viewer("short", options).await;
    player::play(&session, &rendition(), AHEAD).await.unwrap();
    let stats = session.stats();
    assert!(stats.bytes_from_cdn > 0, "{stats:?}");
    let cohort = if p2p {
        r#"cohort="p2p""#
    } else {
        r#"cohort="cdn_only""#
    };
    let other = if p2p {
        r#"cohort="cdn_only""#
    } else {
        r#"cohort="p2p""#
    };
    let bytes = |source: &str| {
        stack.tracker_metric(
            "loaves_tracker_bytes_total",
            &[cohort, &format!(r#"source="{source}""#)],
        )
    };
    // Only the first announce has reached the tracker, early in playback:
    // without the final report, the tracker would under-count.
    assert!(
        bytes("cdn") < stats.bytes_from_cdn as f64,
        "the periodic announces already carried everything"
    );

    session.close().await.unwrap();
    assert_eq!(bytes("cdn"), stats.bytes_from_cdn as f64);
    assert_eq!(bytes("peer"), stats.bytes_from_peers as f64);
    assert_eq!(bytes("seed"), stats.bytes_from_seeds as f64);
    assert_eq!(
        stack.tracker_metric("loaves_tracker_bytes_total", &[other]),
        0.0,
        "filed under the wrong cohort"
    );
    assert!(
        stack.tracker_metric("loaves_tracker_played_seconds_total", &[cohort]) > 0.0,
        "played time of the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_counters_of_a_p2p_session_reach_the_tracker() {
    last_counters_reach_the_tracker(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_counters_of_a_cdn_only_session_reach_the_tracker() {
    last_counters_reach_the_tracker(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_bounded_when_the_tracker_is_gone() {
    let mut stack = stack(true).await;
    let session = stack.viewer("orphan", stack.options(true)).await;
    let mut events = session.events();
    player::play(&session, &rendition(), AHEAD).await.unwrap();
    let since = Instant::now();
    while stack
        .tracker
        .as_ref()
        .unwrap()
        .shared
        .with_book(|b| b.total_peers())
        == 0
    {
        assert!(since.elapsed() < JOIN_WAIT, "the viewer never announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.tracker.take().unwrap().shutdown().await;

    let closing = Instant::now();
    session.close().await.unwrap();
    // The final report's bound is 2 s; a reconnect to the dead tracker
    // alone would wait out the 10 s handshake timeout, and an unanswered
    // stop the 10 s reply timeout. The margin is for a loaded machine.
    let took = closing.elapsed();
    assert!(took < Duration::from_secs(7), "close took {took:?}");
    let mut reported = false;
    while let Some(event) = events.try_next() {
        if let Event::TrackerUnavailable { message } = event {
            reported |= message.starts_with("final report");
        }
    }
    assert!(reported, "the failed final report was not reported");
}
