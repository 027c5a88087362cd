//! Integration over real QUIC on 127.0.0.1: tokens, certificates, announces,
//! limits and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::{UnixSeconds, pb};
use tracker::client::ClientError;
use tracker::server::FrontEndOptions;

fn refused_code(result: Result<impl std::fmt::Debug, ClientError>) -> pb::tracker_error::Code {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_announce_and_see_each_other_nearest_first() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewers = [
        Viewer::new("eu", "isp-a"),
        Viewer::new("eu", "isp-a"),
        Viewer::new("eu", "isp-b"),
        Viewer::new("us", "isp-c"),
    ];
    let mut connections = Vec::new();
    for (i, viewer) in viewers.iter().enumerate() {
        let connection = viewer.connect(&tracker, "film").await.unwrap();
        connection
            .announce(announce("film", "720p", 5000 + i as u16))
            .await
            .unwrap();
        connections.push(connection);
    }
    for (i, (viewer, connection)) in viewers.iter().zip(&connections).enumerate() {
        // Several announces on one connection, in turn on its session stream.
        let reply = connection
            .announce(announce("film", "720p", 5000 + i as u16))
            .await
            .unwrap();
        assert_eq!(reply.swarm_size, 4);
        assert_eq!(reply.peers.len(), 3);
        assert!(
            reply
                .peers
                .iter()
                .all(|p| p.peer_public_key != viewer.key_bytes())
        );
        if i == 0 {
            // The other isp-a viewer comes first, then eu, then elsewhere.
            assert_eq!(reply.peers[0].peer_public_key, viewers[1].key_bytes());
            assert_eq!(reply.peers[1].isp, "isp-b");
            assert_eq!(reply.peers[2].region, "us");
            assert_eq!(reply.peers[0].addresses, vec!["127.0.0.1:5001"]);
        }
    }
    assert_eq!(
        tracker.metric("loaves_tracker_announces_total", &[]).await,
        Some(8.0)
    );
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_mismatched_credentials_are_rejected() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");

    // Signed by a key the tracker does not trust.
    let rogue = SigningKeyPair::from_seed(&[0x66; 32]);
    let result = tracker
        .client
        .connect(
            tracker.addr(),
            &viewer.identity,
            hello_with(viewer.token("film", &rogue, 600)),
        )
        .await;
    assert_eq!(
        refused_code(result),
        pb::tracker_error::Code::Unauthenticated
    );

    // A trusted token with one flipped bit in the signature.
    let mut token = viewer.token("film", &license_key(), 600);
    let last = token.len() - 1;
    token[last] ^= 1;
    let result = tracker
        .client
        .connect(tracker.addr(), &viewer.identity, hello_with(token))
        .await;
    assert_eq!(
        refused_code(result),
        pb::tracker_error::Code::Unauthenticated
    );

    // Expired an hour ago.
    let result = tracker
        .client
        .connect(
            tracker.addr(),
            &viewer.identity,
            hello_with(viewer.token("film", &license_key(), -3600)),
        )
        .await;
    assert_eq!(
        refused_code(result),
        pb::tracker_error::Code::Unauthenticated
    );

    // A valid token for another key than the connection's certificate.
    let thief = Viewer::new("eu", "isp-a");
    let result = tracker
        .client
        .connect(tracker.addr(), &thief.identity, viewer.hello("film"))
        .await;
    assert_eq!(
        refused_code(result),
        pb::tracker_error::Code::Unauthenticated
    );

    // Garbage instead of a token.
    let result = tracker
        .client
        .connect(
            tracker.addr(),
            &viewer.identity,
            hello_with(vec![0xff; 100]),
        )
        .await;
    assert_eq!(
        refused_code(result),
        pb::tracker_error::Code::Unauthenticated
    );

    for (reason, count) in [
        ("unknown_signer", 1.0),
        ("bad_signature", 1.0),
        ("expired", 1.0),
        ("key_mismatch", 1.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            tracker
                .metric(
                    "loaves_tracker_rejected_tokens_total",
                    &[("reason", reason)]
                )
                .await,
            Some(count),
            "{reason}"
        );
    }
    // Nobody got in.
    assert_eq!(tracker.running.shared.with_book(|b| b.total_peers()), 0);
    // The genuine holder does.
    viewer.connect(&tracker, "film").await.unwrap();
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_outside_the_token_are_forbidden() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, "film").await.unwrap();
    let result = connection
        .announce(announce("other-film", "720p", 5000))
        .await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::Forbidden);
    let result = connection.announce(announce("film", "4k", 5000)).await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::Forbidden);
    // A viewer cannot register as a seed.
    let result = connection
        .request(&pb::TrackerRequest {
            kind: Some(pb::tracker_request::Kind::RegisterSeed(
                pb::SeedRegistration {
                    swarms: vec![pb::SwarmId {
                        title: "film".into(),
                        rendition: "720p".into(),
                    }],
                    addresses: vec!["127.0.0.1:9".into()],
                    upload_capacity_bps: 1,
                    upload_in_use_bps: 0,
                },
            )),
        })
        .await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::Forbidden);
    // The connection is still usable for what the token covers.
    connection
        .announce(announce("film", "1080p", 5000))
        .await
        .unwrap();
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_rejected_tokens_total",
                &[("reason", "wrong_title")]
            )
            .await,
        Some(1.0)
    );
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_register_with_a_credential_and_are_listed() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let seed_key = SigningKeyPair::generate().unwrap();
    let seed_identity = loaves_wire::identity::PeerIdentity::new(&seed_key).unwrap();
    let now = UnixSeconds::now().0;
    let credential = tracker::credential::sign_seed_credential(
        &pb::SeedCredentialBody {
            seed_name: "seed-par-1".into(),
            peer_public_key: seed_key.verifying_key().as_bytes().to_vec(),
            region: "eu".into(),
            isp: "transit".into(),
            titles: vec!["film".into()],
            not_before: now - 60,
            expires_at: now + 3600,
        },
        &license_key(),
    );
    let seed = tracker
        .client
        .connect(
            tracker.addr(),
            &seed_identity,
            pb::TrackerHello {
                credential: Some(pb::tracker_hello::Credential::SeedCredential(credential)),
            },
        )
        .await
        .unwrap();
    let register = |title: &str| pb::TrackerRequest {
        kind: Some(pb::tracker_request::Kind::RegisterSeed(
            pb::SeedRegistration {
                swarms: vec![pb::SwarmId {
                    title: title.into(),
                    rendition: "720p".into(),
                }],
                addresses: vec!["127.0.0.1:7000".into()],
                upload_capacity_bps: 1_000_000_000,
                upload_in_use_bps: 0,
            },
        )),
    };
    let result = seed.request(&register("not-covered")).await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::Forbidden);
    seed.request(&register("film")).await.unwrap();
    // Seeds do not announce as viewers.
    let result = seed.announce(announce("film", "720p", 7000)).await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::Forbidden);

    let viewer = Viewer::new("us", "isp-c");
    let connection = viewer.connect(&tracker, "film").await.unwrap();
    let reply = connection
        .announce(announce("film", "720p", 5000))
        .await
        .unwrap();
    assert!(reply.peers.is_empty());
    assert_eq!(reply.seeds.len(), 1);
    assert!(reply.seeds[0].is_seed);
    assert_eq!(
        reply.seeds[0].peer_public_key,
        seed_key.verifying_key().as_bytes().to_vec()
    );
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_dashboard_reflect_reported_counters() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, "film").await.unwrap();
    let mut first = announce("film", "720p", 5000);
    first.stats = Some(pb::StatsDelta {
        bytes_from_peers: 6_000_000,
        bytes_from_seeds: 1_000_000,
        bytes_from_cdn: 3_000_000,
        bytes_uploaded: 2_000_000,
        bytes_cross_isp: 400_000,
        bytes_cross_region: 100_000,
        rebuffer_ms: 1500,
        rebuffer_count: 1,
        startup_ms: 700,
        played_ms: 60_000,
        cdn_only: false,
        connects: vec![
            pb::ConnectReport {
                local: pb::NatClass::EndpointIndependent as i32,
                remote: pb::NatClass::EndpointIndependent as i32,
                result: pb::ConnectResult::Punched as i32,
                millis: 800,
            },
            pb::ConnectReport {
                local: pb::NatClass::EndpointDependent as i32,
                remote: pb::NatClass::EndpointDependent as i32,
                result: pb::ConnectResult::Failed as i32,
                millis: 2000,
            },
            // Nonsense is skipped.
            pb::ConnectReport {
                local: 77,
                remote: -3,
                result: 99,
                millis: u32::MAX,
            },
        ],
    });
    connection.announce(first).await.unwrap();
    // An absurd report right after: dropped, and counted as clamped.
    let mut absurd = announce("film", "720p", 5000);
    absurd.stats = Some(pb::StatsDelta {
        bytes_from_peers: u64::MAX / 2,
        ..Default::default()
    });
    connection.announce(absurd).await.unwrap();

    let labels = |source| {
        [
            ("source", source),
            ("title", "film"),
            ("region", "eu"),
            ("isp", "isp-a"),
        ]
    };
    assert_eq!(
        tracker
            .metric("loaves_tracker_bytes_total", &labels("peer"))
            .await,
        Some(6e6)
    );
    assert_eq!(
        tracker
            .metric("loaves_tracker_bytes_total", &labels("seed"))
            .await,
        Some(1e6)
    );
    assert_eq!(
        tracker
            .metric("loaves_tracker_bytes_total", &labels("cdn"))
            .await,
        Some(3e6)
    );
    let tri = [("title", "film"), ("region", "eu"), ("isp", "isp-a")];
    assert_eq!(
        tracker
            .metric("loaves_tracker_cross_isp_bytes_total", &tri)
            .await,
        Some(4e5)
    );
    assert_eq!(
        tracker
            .metric("loaves_tracker_rebuffer_seconds_total", &tri)
            .await,
        Some(1.5)
    );
    assert_eq!(
        tracker
            .metric("loaves_tracker_uploaded_bytes_total", &tri)
            .await,
        Some(2e6)
    );
    assert_eq!(
        tracker
            .metric("loaves_tracker_clamped_total", &[("kind", "downloads")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        tracker
            .metric("loaves_tracker_startup_seconds_count", &[("title", "film")])
            .await,
        Some(1.0)
    );

    tracker.running.shared.housekeeping(UnixSeconds::now());
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_swarm_peers",
                &[("title", "film"), ("rendition", "720p")]
            )
            .await,
        Some(1.0)
    );
    let (status, body) = tracker.get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = tracker.get("/api/dashboard").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["totals"]["bytes_from_peers"], 6_000_000);
    assert_eq!(json["by_title"][0]["name"], "film");
    assert_eq!(json["by_isp"][0]["name"], "isp-a");
    assert_eq!(json["swarms"][0]["peers"], 1);
    assert!(!json["history"].as_array().unwrap().is_empty());
    // The connection matrix, most attempts first, nonsense dropped.
    let connects = json["connects"].as_array().unwrap();
    assert_eq!(connects.len(), 2, "{connects:?}");
    let ei = connects.iter().find(|r| r["pair"] == "ei-ei").unwrap();
    assert_eq!(
        (&ei["punched"], &ei["connect_ms_sum"]),
        (&1.into(), &800.into())
    );
    let ed = connects.iter().find(|r| r["pair"] == "ed-ed").unwrap();
    assert_eq!((&ed["failed"], &ed["direct"]), (&1.into(), &0.into()));
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_p2p_connect_attempts_total",
                &[("result", "punched"), ("nat_pair", "ei-ei")]
            )
            .await,
        Some(1.0)
    );
    let (status, page) = tracker.get("/dashboard").await;
    assert_eq!(status, 200);
    assert!(page.contains("<canvas") && !page.contains("<script src"));
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_floods_are_bounded() {
    let options = FrontEndOptions {
        max_connections_per_ip: 2,
        request_burst: 3.0,
        requests_per_second: 0.01,
        ..FrontEndOptions::default()
    };
    let tracker = TestTracker::start(options).await;
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, "film").await.unwrap();

    // Rate limit: the burst of 3 passes, the 4th is refused.
    for _ in 0..3 {
        connection
            .announce(announce("film", "720p", 5000))
            .await
            .unwrap();
    }
    let result = connection.announce(announce("film", "720p", 5000)).await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::RateLimited);

    // Per-address connection cap: 2 open, the 3rd is refused.
    let second = Viewer::new("eu", "isp-a");
    let _second = second.connect(&tracker, "film").await.unwrap();
    let third = Viewer::new("eu", "isp-a");
    assert!(matches!(
        third.connect(&tracker, "film").await,
        Err(ClientError::Connection(_))
    ));
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_refused_connections_total",
                &[("reason", "per_ip")]
            )
            .await,
        Some(1.0)
    );

    tracker.running.shutdown().await;
}

fn announce_request(title: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::TrackerRequest {
        kind: Some(pb::tracker_request::Kind::Announce(announce(
            title, "720p", 5000,
        ))),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_on_the_session_stream_are_answered_or_end_it() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");

    // An announce before any hello: unauthenticated, and the end.
    let mut session = RawSession::without_hello(&tracker, &viewer).await;
    session.write(&announce_request("film")).await;
    session
        .refused_then_closed(
            pb::tracker_error::Code::Unauthenticated,
            tracker::server::close_code::UNAUTHENTICATED,
        )
        .await;

    // A whole frame that is not a request: an error, and the session goes on.
    let mut session = RawSession::open(&tracker, &viewer, "film").await;
    session.write(&[0xff; 40]).await;
    assert_eq!(
        session.error_code().await,
        pb::tracker_error::Code::Malformed
    );
    // A second hello is a refresh of the credential: acknowledged.
    let hello = prost::Message::encode_to_vec(&pb::TrackerRequest {
        kind: Some(pb::tracker_request::Kind::Hello(viewer.hello("film"))),
    });
    session.write(&hello).await;
    assert!(matches!(
        session.response().await.and_then(|r| r.kind),
        Some(pb::tracker_response::Kind::Ack(_))
    ));
    // An announce for a title the token does not cover.
    session.write(&announce_request("other-film")).await;
    assert_eq!(
        session.error_code().await,
        pb::tracker_error::Code::Forbidden
    );
    // A good announce on the same stream still works.
    session.write(&announce_request("film")).await;
    assert!(matches!(
        session.response().await.and_then(|r| r.kind),
        Some(pb::tracker_response::Kind::Announce(_))
    ));

    // A frame claiming 1 MiB: refused before allocation, session closed.
    session.write_raw(&(1u32 << 20).to_be_bytes()).await;
    session.write_raw(&[0u8; 64]).await;
    session
        .refused_then_closed(
            pb::tracker_error::Code::Malformed,
            tracker::server::close_code::PROTOCOL,
        )
        .await;
    // Nothing of it was left in the book but the good announce.
    assert_eq!(tracker.running.shared.with_book(|b| b.total_peers()), 1);
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_and_idle_sessions_are_closed() {
    let options = FrontEndOptions {
        io_timeout_ms: 200,
        idle_timeout_ms: 1_000,
        ..FrontEndOptions::default()
    };
    let tracker = TestTracker::start(options).await;
    let viewer = Viewer::new("eu", "isp-a");

    // A frame that starts and never finishes: an error, then the close.
    let mut session = RawSession::open(&tracker, &viewer, "film").await;
    let request = announce_request("film");
    let frame = loaves_wire::framing::encode_frame(&request, 1 << 16).unwrap();
    session.write_raw(&frame[..frame.len() / 2]).await;
    session
        .refused_then_closed(
            pb::tracker_error::Code::Malformed,
            tracker::server::close_code::PROTOCOL,
        )
        .await;

    // A session that says nothing after its hello is closed as idle (the
    // keep-alives of the stock client do not count as requests).
    let quiet = viewer.connect(&tracker, "film").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), quiet.quic().closed())
        .await
        .unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code.into_inner(),
            u64::from(tracker::server::close_code::SHUTDOWN)
        ),
        other => panic!("unexpected {other:?}"),
    }
    // The stock client reports the closed connection, it does not hang.
    assert!(matches!(
        quiet.announce(announce("film", "720p", 5000)).await,
        Err(ClientError::Connection(_) | ClientError::Frame(_))
    ));
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_the_rate_limit_is_disconnected() {
    let options = FrontEndOptions {
        request_burst: 3.0,
        requests_per_second: 0.01,
        ..FrontEndOptions::default()
    };
    let tracker = TestTracker::start(options).await;
    let viewer = Viewer::new("eu", "isp-a");
    let mut session = RawSession::open(&tracker, &viewer, "film").await;
    // 200 announces back to back without waiting for the answers.
    let request = announce_request("film");
    let frame = loaves_wire::framing::encode_frame(&request, 1 << 16).unwrap();
    let flood: Vec<u8> = frame.repeat(200);
    session.write_raw(&flood).await;
    let mut answers = Vec::new();
    while let Some(response) = session.response().await {
        answers.push(response.kind);
        assert!(answers.len() <= 200);
    }
    // The burst passes, then refusals, then the tracker hangs up long before
    // the 200th.
    assert!(
        answers[..3]
            .iter()
            .all(|a| matches!(a, Some(pb::tracker_response::Kind::Announce(_))))
    );
    assert!(answers[3..].iter().all(|a| matches!(
        a,
        Some(pb::tracker_response::Kind::Error(e))
            if e.code == pb::tracker_error::Code::RateLimited as i32
    )));
    assert!(answers.len() < 100, "{} answers", answers.len());
    assert_eq!(
        session.closed_with().await,
        u64::from(tracker::server::close_code::RATE_LIMITED)
    );
    tracker.running.shutdown().await;
}

/// A request abandoned after it was sent (the caller's timeout) must not
/// leave its late response on the session stream for the next request to
/// read as its own: the connection is given up instead.
///
/// One thread runs the test, the tracker and both connection drivers, so
/// nothing can answer the announce before the test yields: on several
/// threads, a test thread descheduled between the write and the read could
/// find the reply already there.
#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_request_does_not_answer_the_next_one() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, "film").await.unwrap();
    // Polled once, then dropped: the announce is written, its reply cannot
    // have arrived yet.
    let mut abandoned = Box::pin(connection.announce(announce("film", "720p", 5000)));
    let first_poll = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(abandoned.as_mut(), cx).is_pending())
    })
    .await;
    assert!(first_poll, "the reply came back within one poll");
    drop(abandoned);
    // Let the late reply arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Without the guard this would read the abandoned announce's reply.
    let next = connection
        .request(&pb::TrackerRequest {
            kind: Some(pb::tracker_request::Kind::Stop(pb::Stop {
                swarm: Some(pb::SwarmId {
                    title: "film".into(),
                    rendition: "720p".into(),
                }),
                stats: None,
            })),
        })
        .await;
    assert!(
        matches!(next, Err(ClientError::Connection(_))),
        "expected the connection to be given up, got {next:?}"
    );
    // A new connection works.
    let fresh = viewer.connect(&tracker, "film").await.unwrap();
    fresh
        .announce(announce("film", "720p", 5000))
        .await
        .unwrap();
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, "film").await.unwrap();
    connection
        .announce(announce("film", "720p", 5000))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), tracker.running.shutdown())
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.quic().closed())
        .await
        .unwrap();
    assert!(matches!(
        closed,
        quinn::ConnectionError::ApplicationClosed(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_refuses_titles_of_other_shards() {
    use loaves_proto::shard::ShardMap;
    let map = ShardMap::new(["tracker-0:4433", "tracker-1:4433"]);
    let tracker = TestTracker::start_with(
        FrontEndOptions::default(),
        Some((map.clone(), "tracker-0:4433".to_owned())),
    )
    .await;
    // One title served here, one served by the other shard.
    let titles: Vec<String> = (0..100).map(|i| format!("title-{i}")).collect();
    let mine = titles
        .iter()
        .find(|t| map.is_served_by(t, "tracker-0:4433"))
        .unwrap();
    let theirs = titles
        .iter()
        .find(|t| map.is_served_by(t, "tracker-1:4433"))
        .unwrap();
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, mine).await.unwrap();
    connection
        .announce(announce(mine, "720p", 5000))
        .await
        .unwrap();
    let other = Viewer::new("eu", "isp-a");
    let connection = other.connect(&tracker, theirs).await.unwrap();
    let result = connection.announce(announce(theirs, "720p", 5000)).await;
    assert_eq!(refused_code(result), pb::tracker_error::Code::Forbidden);
    assert_eq!(tracker.running.shared.with_book(|b| b.swarm_count()), 1);
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_answer_says_where_the_connection_comes_from() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");
    let connection = viewer.connect(&tracker, "film").await.unwrap();
    let observed = connection.observed_address().expect("an observed address");
    assert!(observed.ip().is_loopback(), "{observed}");
    assert_eq!(observed.port(), tracker.client_port());
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_token_refreshes_the_open_session() {
    let tracker = TestTracker::start(FrontEndOptions {
        max_clock_skew_s: 0,
        ..FrontEndOptions::default()
    })
    .await;
    let viewer = Viewer::new("eu", "isp-a");
    // A token about to expire: announces must go on under its successor,
    // on the same connection.
    let short = viewer.token("film", &license_key(), 2);
    let connection = tracker
        .client
        .connect(tracker.addr(), &viewer.identity, hello_with(short))
        .await
        .unwrap();
    connection
        .announce(announce("film", "720p", 5000))
        .await
        .unwrap();
    let renewed = viewer.token("film", &license_key(), 600);
    let observed = connection.hello(hello_with(renewed)).await.unwrap();
    assert!(observed.is_some());
    // Past the first token's expiry (the tracker of this test tolerates
    // no clock skew).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    connection
        .announce(announce("film", "720p", 5000))
        .await
        .expect("the session goes on under the renewed token");
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_requests_total",
                &[("kind", "refresh"), ("result", "ok")]
            )
            .await,
        Some(1.0)
    );
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_for_another_key_or_title_is_refused_and_ends_the_session() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let viewer = Viewer::new("eu", "isp-a");
    let stranger = Viewer::new("eu", "isp-a");
    for forged in [
        // Someone else's token, on this viewer's connection.
        stranger.token("film", &license_key(), 600),
        // This viewer's token, for another title.
        viewer.token("other-film", &license_key(), 600),
        // Not signed by the license server.
        viewer.token("film", &SigningKeyPair::generate().unwrap(), 600),
    ] {
        let connection = viewer.connect(&tracker, "film").await.unwrap();
        let refused = connection.hello(hello_with(forged)).await;
        assert_eq!(
            refused_code(refused),
            pb::tracker_error::Code::Unauthenticated
        );
        assert!(
            connection
                .announce(announce("film", "720p", 5000))
                .await
                .is_err(),
            "the session ends with a refused refresh"
        );
    }
    tracker.running.shutdown().await;
}

fn swarm(title: &str) -> pb::SwarmId {
    pb::SwarmId {
        title: title.into(),
        rendition: "720p".into(),
    }
}

fn key_of(viewer: &Viewer) -> [u8; 32] {
    viewer.key_bytes().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_punch_request_reaches_the_target_with_the_requesters_addresses() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let (alice, bob) = (Viewer::new("eu", "isp-a"), Viewer::new("eu", "isp-b"));
    let alice_connection = alice.connect(&tracker, "film").await.unwrap();
    let bob_connection = bob.connect(&tracker, "film").await.unwrap();
    let mut alice_announce = announce("film", "720p", 5000);
    alice_announce.nat_class = pb::NatClass::EndpointIndependent as i32;
    alice_connection.announce(alice_announce).await.unwrap();
    bob_connection
        .announce(announce("film", "720p", 5001))
        .await
        .unwrap();

    alice_connection
        .punch(swarm("film"), &key_of(&bob))
        .await
        .expect("forwarded");
    let notice = tokio::time::timeout(Duration::from_secs(10), bob_connection.next_punch_notice())
        .await
        .expect("a notice in time")
        .expect("the connection is open");
    assert_eq!(notice.from_key, alice.key_bytes());
    assert_eq!(notice.addresses, vec!["127.0.0.1:5000".to_owned()]);
    assert_eq!(notice.nat_class, pb::NatClass::EndpointIndependent as i32);
    assert_eq!(notice.swarm, Some(swarm("film")));
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_punch_requests_total",
                &[("result", "forwarded")]
            )
            .await,
        Some(1.0)
    );
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punch_requests_outside_the_swarm_or_to_oneself_are_refused() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let (alice, bob, carol) = (
        Viewer::new("eu", "isp-a"),
        Viewer::new("eu", "isp-a"),
        Viewer::new("eu", "isp-a"),
    );
    let alice_connection = alice.connect(&tracker, "film").await.unwrap();
    let bob_connection = bob.connect(&tracker, "film").await.unwrap();
    // Carol watches another title: nobody of "film" may make her open.
    let carol_connection = carol.connect(&tracker, "other").await.unwrap();
    carol_connection
        .announce(announce("other", "720p", 5002))
        .await
        .unwrap();
    // Alice has not announced yet: she is not a member.
    bob_connection
        .announce(announce("film", "720p", 5001))
        .await
        .unwrap();
    assert_eq!(
        refused_code(alice_connection.punch(swarm("film"), &key_of(&bob)).await),
        pb::tracker_error::Code::Forbidden
    );
    alice_connection
        .announce(announce("film", "720p", 5000))
        .await
        .unwrap();
    // Carol's swarm is not in Alice's token at all.
    assert_eq!(
        refused_code(
            alice_connection
                .punch(swarm("other"), &key_of(&carol))
                .await
        ),
        pb::tracker_error::Code::Forbidden
    );
    for (target, swarm_id) in [
        (key_of(&carol), swarm("film")),
        (key_of(&alice), swarm("film")),
        ([7u8; 32], swarm("film")),
    ] {
        assert_eq!(
            refused_code(alice_connection.punch(swarm_id, &target).await),
            pb::tracker_error::Code::Forbidden
        );
    }
    // Carol got nothing.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            carol_connection.next_punch_notice()
        )
        .await
        .is_err()
    );
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_punch_requests_total",
                &[("result", "not_in_swarm")]
            )
            .await,
        Some(4.0)
    );
    assert_eq!(
        tracker
            .metric(
                "loaves_tracker_punch_requests_total",
                &[("result", "forbidden")]
            )
            .await,
        Some(1.0)
    );
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punch_requests_are_rate_limited_per_requester() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let (alice, bob) = (Viewer::new("eu", "isp-a"), Viewer::new("eu", "isp-a"));
    let alice_connection = alice.connect(&tracker, "film").await.unwrap();
    let bob_connection = bob.connect(&tracker, "film").await.unwrap();
    for (connection, port) in [(&alice_connection, 5000), (&bob_connection, 5001)] {
        connection
            .announce(announce("film", "720p", port))
            .await
            .unwrap();
    }
    // A burst far past the allowance: the first ones pass (more than the
    // connection's general burst: punches have their own), then refusals.
    let mut refused = 0;
    for _ in 0..60 {
        match alice_connection.punch(swarm("film"), &key_of(&bob)).await {
            Ok(()) => {}
            Err(ClientError::Refused { code, .. }) => {
                assert_eq!(code, pb::tracker_error::Code::RateLimited);
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!((20..=40).contains(&refused), "{refused} of 60 refused");
    let limited = tracker
        .metric(
            "loaves_tracker_punch_requests_total",
            &[("result", "rate_limited")],
        )
        .await;
    assert_eq!(limited, Some(f64::from(refused)));
    tracker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_to_one_target_are_bounded_whoever_asks() {
    let tracker = TestTracker::start(FrontEndOptions::default()).await;
    let target = Viewer::new("eu", "isp-a");
    let target_connection = target.connect(&tracker, "film").await.unwrap();
    target_connection
        .announce(announce("film", "720p", 5000))
        .await
        .unwrap();
    let mut requesters = Vec::new();
    for port in 5001..5005 {
        let viewer = Viewer::new("eu", "isp-a");
        let connection = viewer.connect(&tracker, "film").await.unwrap();
        connection
            .announce(announce("film", "720p", port))
            .await
            .unwrap();
        requesters.push(connection);
    }
    // 60 requests for one target, each requester within its own allowance.
    let mut refused = 0;
    for _ in 0..15 {
        for connection in &requesters {
            match connection.punch(swarm("film"), &key_of(&target)).await {
                Ok(()) => {}
                Err(ClientError::Refused { code, .. }) => {
                    assert_eq!(code, pb::tracker_error::Code::RateLimited);
                    refused += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    assert!(refused >= 20, "{refused} of 60 refused");
    tracker.running.shutdown().await;
}
