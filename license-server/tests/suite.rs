//! The license server's behaviour over real gRPC/TLS on 127.0.0.1, against
//! both stores: every test runs once on SQLite and once on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Db, Harness, Viewer, get_keys, http, open_license, raw_call};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::pb;
use loaves_proto::token::TokenVerifier;
use tonic::Code;

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::Postgres).await
                }
            )*
        }
    };
}

on_both_stores!(
    acquire_renew_release_cycle,
    concurrency_limit_holds_under_50_parallel_acquires,
    missed_renewals_free_the_slot_after_grace,
    bad_acquisitions_get_specific_statuses_and_write_nothing,
    bad_renewals_and_releases_write_nothing,
    key_service_bad_requests_write_nothing,
    restart_keeps_keys_and_wrong_kek_is_refused,
    parallel_get_or_create_hands_out_one_key,
    clearkey_endpoint_serves_licensed_keys_only,
    metrics_and_health,
    live_rotation_delivers_next_periods_on_renewal,
    malformed_and_oversized_messages_get_grpcs_statuses,
);

async fn acquire_renew_release_cycle(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let mut client = h.licenses().await;
    let keyring = h.license_keyring();
    let mut viewer = Viewer::new();
    let entitlement = h.entitlement("acct-cycle", 2);

    let response = client
        .acquire_license(viewer.acquire_request(entitlement, "demo"))
        .await
        .unwrap()
        .into_inner();
    let (license, keys) = open_license(&keyring, &mut viewer, &response, h.now());
    let session_id = viewer.session_id.unwrap();
    assert_eq!(license.title, "demo");
    assert_eq!(license.renewal_sequence, 0);
    assert_eq!(license.policy.issued_at, common::T0);
    assert_eq!(license.policy.expires_at, common::T0 + 60 + 30);
    assert_eq!(license.policy.renewal_interval_s, 60);
    assert_eq!(license.policy.renewal_grace_s, 30);
    assert!(!license.policy.can_persist);
    assert_eq!(
        license.policy.renditions,
        ["audio", "360p", "720p", "1080p"]
    );
    // One key per track type of the demo title, for the current period 0.
    let mut tracks: Vec<_> = keys
        .iter()
        .map(|k| (k.track_type.clone(), k.key_period))
        .collect();
    tracks.sort();
    assert_eq!(
        tracks,
        [("audio".into(), 0), ("hd".into(), 0), ("sd".into(), 0)]
    );

    // The keys opened from the license are the packager's keys.
    let mut packager = h.keys().await;
    for key in &keys {
        let stored = get_keys(&mut packager, "demo", &[(&key.track_type, key.key_period)])
            .await
            .unwrap();
        assert_eq!(stored[0].key_id, key.key_id.0);
        assert_eq!(stored[0].key, key.key.as_bytes());
    }

    // The session token verifies offline for this title and names the peer key.
    let verifier = TokenVerifier::new(keyring.clone());
    let token = verifier
        .verify(&license.session_token, h.now(), "demo")
        .unwrap();
    assert_eq!(token.session_id, session_id);
    assert_eq!(token.account, "acct-cycle");
    assert_eq!(token.peer_key, viewer.peer.verifying_key());
    assert_eq!(token.region, "eu-west");
    assert_eq!(token.expires_at, UnixSeconds(common::T0 + 90));

    // Heartbeat 50 s later, asking for the next period too.
    h.clock.advance(50);
    let renewal = pb::RenewLicenseRequest {
        request: Some(viewer.renew_envelope(Some((0, 2)))),
    };
    let response = client
        .renew_license(renewal.clone())
        .await
        .unwrap()
        .into_inner();
    let (renewed, renewed_keys) = open_license(&keyring, &mut viewer, &response, h.now());
    assert_eq!(renewed.renewal_sequence, 1);
    assert_eq!(renewed.policy.expires_at, common::T0 + 50 + 90);
    assert_eq!(renewed_keys.len(), 6, "3 track types x 2 periods");
    for old in &keys {
        assert!(
            renewed_keys
                .iter()
                .any(|k| k.key_id == old.key_id && k.key == old.key),
            "period 0 keys are the same keys"
        );
    }
    let token = verifier
        .verify(&renewed.session_token, h.now(), "demo")
        .unwrap();
    assert_eq!(token.expires_at, UnixSeconds(common::T0 + 140));

    // The same renewal again is a replay.
    let status = client.renew_license(renewal).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Release, then the session is over.
    let release = pb::ReleaseSessionRequest {
        request: Some(viewer.renew_envelope(None)),
    };
    client.release_session(release).await.unwrap();
    let status = client
        .renew_license(pb::RenewLicenseRequest {
            request: Some(viewer.renew_envelope(None)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(h.store().active_sessions(h.now()).await.unwrap(), 0);
}

async fn concurrency_limit_holds_under_50_parallel_acquires(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let entitlement = h.entitlement("acct-limit", 2);
    let channel = h.channel().await;
    let mut tasks = tokio::task::JoinSet::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    for _ in 0..50 {
        let mut client =
            loaves_grpc::license_service_client::LicenseServiceClient::new(channel.clone());
        let request = Viewer::new().acquire_request(entitlement.clone(), "demo");
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            client.acquire_license(request).await.map(|_| ())
        });
    }
    let mut ok = 0;
    let mut exhausted = 0;
    let results = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("50 acquisitions within a minute");
    for result in results {
        match result {
            Ok(()) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    status.message().contains("concurrent stream limit"),
                    "{status:?}"
                );
                exhausted += 1;
            }
            Err(status) => panic!("unexpected status {status:?}"),
        }
    }
    assert_eq!((ok, exhausted), (2, 48));
    assert_eq!(h.counts().await.sessions, 2);
    assert_eq!(h.store().active_sessions(h.now()).await.unwrap(), 2);
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        metrics.contains("loaves_license_denials_total{reason=\"concurrency_limit\"} 48"),
        "{metrics}"
    );
    assert!(metrics.contains("loaves_license_licenses_issued_total 2"));
}

async fn missed_renewals_free_the_slot_after_grace(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let mut client = h.licenses().await;
    let keyring = h.license_keyring();
    let entitlement = h.entitlement("acct-grace", 1);

    let mut first = Viewer::new();
    let response = client
        .acquire_license(first.acquire_request(entitlement.clone(), "demo"))
        .await
        .unwrap()
        .into_inner();
    open_license(&keyring, &mut first, &response, h.now());

    // A renewal inside the grace period keeps the session (and its slot).
    h.clock.advance(80);
    let renewed = client
        .renew_license(pb::RenewLicenseRequest {
            request: Some(first.renew_envelope(None)),
        })
        .await
        .unwrap()
        .into_inner();
    open_license(&keyring, &mut first, &renewed, h.now());
    let second_request = Viewer::new().acquire_request(entitlement.clone(), "demo");
    let status = client.acquire_license(second_request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);

    // Stop renewing: at the last second of grace the slot is still taken...
    h.clock.advance(90);
    let status = client
        .acquire_license(Viewer::new().acquire_request(entitlement.clone(), "demo"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // ...one second later the session is over and another may start.
    h.clock.advance(1);
    assert_eq!(h.store().active_sessions(h.now()).await.unwrap(), 0);
    let mut second = Viewer::new();
    let response = client
        .acquire_license(second.acquire_request(entitlement, "demo"))
        .await
        .unwrap()
        .into_inner();
    open_license(&keyring, &mut second, &response, h.now());
    // The lapsed session cannot come back.
    let status = client
        .renew_license(pb::RenewLicenseRequest {
            request: Some(first.renew_envelope(None)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

/// Sends a request and asserts its status code and that no row was written.
macro_rules! refused {
    ($h:expr, $call:expr, $code:expr) => {{
        let before = $h.counts().await;
        let status = $call.await.expect_err("request should be refused");
        assert_eq!(status.code(), $code, "{status:?}");
        assert!(!status.message().is_empty());
        assert_eq!($h.counts().await, before, "nothing written for {status:?}");
        status
    }};
}

async fn bad_acquisitions_get_specific_statuses_and_write_nothing(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let mut client = h.licenses().await;
    let good = h.entitlement("acct-bad", 2);
    let viewer = Viewer::new();
    let request = |f: &dyn Fn(&mut pb::AcquireLicenseRequest)| {
        let mut r = viewer.acquire_request(good.clone(), "demo");
        f(&mut r);
        r
    };

    // Malformed entitlement bytes.
    refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = vec![0xff; 40])),
        Code::InvalidArgument
    );
    // Entitlement over its own size limit, and a request over the gRPC limit.
    refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = vec![7; 5000])),
        Code::InvalidArgument
    );
    refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = vec![7; 100_000])),
        Code::ResourceExhausted
    );
    // Forged: signed by a key the server does not trust.
    let forger = SigningKeyPair::generate().unwrap();
    let forged = {
        let now = h.now();
        loaves_proto::entitlement::Entitlement {
            account: "acct-bad".into(),
            titles: vec!["*".into()],
            max_concurrent_streams: 9,
            renditions: vec![],
            max_height: 0,
            issued_at: now,
            expires_at: now.plus(100),
        }
        .sign(&forger)
    };
    refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = forged.clone())),
        Code::Unauthenticated
    );
    // Tampered: one body bit flipped under a valid signature.
    let tampered = {
        use prost::Message;
        let mut envelope = pb::Signed::decode(good.as_slice()).unwrap();
        envelope.body[3] ^= 1;
        envelope.encode_to_vec()
    };
    let status = refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = tampered.clone())),
        Code::Unauthenticated
    );
    assert!(
        status.message().contains("signature") || status.message().contains("malformed"),
        "{status:?}"
    );
    // Expired.
    let expired = h.entitlement_with("acct-bad", 2, |e| {
        e.issued_at = UnixSeconds(common::T0 - 1000);
        e.expires_at = UnixSeconds(common::T0 - 100);
    });
    let status = refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = expired.clone())),
        Code::Unauthenticated
    );
    assert!(status.message().contains("expired"), "{status:?}");
    // Unknown title; title not covered by the entitlement.
    refused!(
        h,
        client.acquire_license(request(&|r| r.title = "no-such-title".into())),
        Code::NotFound
    );
    let only_live = h.entitlement_with("acct-bad", 2, |e| e.titles = vec!["live".into()]);
    refused!(
        h,
        client.acquire_license(request(&|r| r.entitlement = only_live.clone())),
        Code::PermissionDenied
    );
    // No rendition allowed (asks only for one the entitlement excludes).
    let sd_only = h.entitlement_with("acct-bad", 2, |e| e.max_height = 480);
    refused!(
        h,
        client.acquire_license(request(&|r| {
            r.entitlement = sd_only.clone();
            r.renditions = vec!["1080p".into()];
        })),
        Code::PermissionDenied
    );
    // Low-order and malformed X25519 keys.
    for point in loaves_testkit::fixtures::X25519_LOW_ORDER_POINTS {
        let key = hex::decode(point).unwrap();
        let status = refused!(
            h,
            client.acquire_license(request(&|r| r.client_hpke_public_key = key.clone())),
            Code::InvalidArgument
        );
        assert!(
            status.message().contains("low-order"),
            "{point}: {status:?}"
        );
    }
    refused!(
        h,
        client.acquire_license(request(&|r| r.client_hpke_public_key = vec![9; 31])),
        Code::InvalidArgument
    );
    refused!(
        h,
        client.acquire_license(request(&|r| r.client_hpke_public_key.clear())),
        Code::InvalidArgument
    );
    // Peer keys: wrong length, and not a point / a weak point.
    refused!(
        h,
        client.acquire_license(request(&|r| r.peer_public_key = vec![1; 33])),
        Code::InvalidArgument
    );
    refused!(
        h,
        client.acquire_license(request(&|r| r.peer_public_key = vec![0; 32])),
        Code::InvalidArgument
    );
    // Key periods: beyond the lookahead (VOD: current 0, lookahead 2), empty,
    // too many, overflowing.
    let periods = |first, count| Some(pb::KeyPeriodRange { first, count });
    refused!(
        h,
        client.acquire_license(request(&|r| r.key_periods = periods(3, 1))),
        Code::OutOfRange
    );
    refused!(
        h,
        client.acquire_license(request(&|r| r.key_periods = periods(0, 0))),
        Code::OutOfRange
    );
    refused!(
        h,
        client.acquire_license(request(&|r| r.key_periods = periods(0, 9))),
        Code::OutOfRange
    );
    refused!(
        h,
        client.acquire_license(request(&|r| r.key_periods = periods(u32::MAX, 2))),
        Code::OutOfRange
    );
    // Live title: current period 10, so 13 is beyond and 12 is the edge.
    refused!(
        h,
        client.acquire_license(request(&|r| {
            r.title = "live".into();
            r.key_periods = periods(11, 3);
        })),
        Code::OutOfRange
    );
    // Oversized hints.
    refused!(
        h,
        client.acquire_license(request(&|r| r.region = "x".repeat(65))),
        Code::InvalidArgument
    );

    // Nothing so far wrote a row; the good request does, and its replay is refused.
    assert_eq!(h.counts().await, Default::default());
    let mut live_viewer = Viewer::new();
    let mut live_request = live_viewer.acquire_request(good.clone(), "live");
    live_request.key_periods = periods(10, 3);
    let response = client
        .acquire_license(live_request.clone())
        .await
        .unwrap()
        .into_inner();
    let (_, keys) = open_license(&h.license_keyring(), &mut live_viewer, &response, h.now());
    assert_eq!(keys.len(), 9, "3 track types x periods 10..=12");
    let status = refused!(h, client.acquire_license(live_request), Code::AlreadyExists);
    assert!(status.message().contains("replay"), "{status:?}");
    // Now that the keys exist (and are cached) a low-order point is refused
    // on the path that wraps before admission, still writing nothing.
    for point in loaves_testkit::fixtures::X25519_LOW_ORDER_POINTS {
        let key = hex::decode(point).unwrap();
        let status = refused!(
            h,
            client.acquire_license(request(&|r| {
                r.title = "live".into();
                r.key_periods = periods(10, 3);
                r.client_hpke_public_key = key.clone();
            })),
            Code::InvalidArgument
        );
        assert!(
            status.message().contains("low-order"),
            "{point}: {status:?}"
        );
    }

    let (_, metrics) = h.http_get("/metrics").await;
    for reason in [
        "entitlement_malformed",
        "entitlement_too_large",
        "entitlement_unknown_signer",
        "entitlement_expired",
        "unknown_title",
        "title_not_entitled",
        "rendition_not_allowed",
        "low_order_client_key",
        "invalid_client_key",
        "invalid_peer_key",
        "key_periods_out_of_range",
        "replay",
        "request_too_large",
    ] {
        assert!(
            metrics.contains(&format!(
                "loaves_license_denials_total{{reason=\"{reason}\"}}"
            )),
            "no denial counted for {reason}"
        );
    }
}

async fn bad_renewals_and_releases_write_nothing(db: Db) {
    let Some(h) = Harness::start_with(db, |c| c.policy.max_periods_per_request = 2).await else {
        return;
    };
    let mut client = h.licenses().await;
    let keyring = h.license_keyring();
    let mut viewer = Viewer::new();
    let response = client
        .acquire_license(viewer.acquire_request(h.entitlement("acct-renew", 1), "demo"))
        .await
        .unwrap()
        .into_inner();
    open_license(&keyring, &mut viewer, &response, h.now());
    let renew = |envelope: Option<pb::Signed>| pb::RenewLicenseRequest { request: envelope };

    refused!(h, client.renew_license(renew(None)), Code::InvalidArgument);
    let garbage = pb::Signed {
        body: vec![0xff; 20],
        signer_key_id: vec![0; 8],
        signature: vec![0; 64],
    };
    refused!(
        h,
        client.renew_license(renew(Some(garbage))),
        Code::InvalidArgument
    );
    // Signed by another key than the session's peer key.
    let mut impostor = Viewer::new();
    impostor.session_id = viewer.session_id;
    refused!(
        h,
        client.renew_license(renew(Some(impostor.envelope(1, None)))),
        Code::Unauthenticated
    );
    // A valid signature over a tampered body.
    let mut tampered = viewer.envelope(1, None);
    tampered.body.push(0x10);
    tampered.body.push(0x05);
    refused!(
        h,
        client.renew_license(renew(Some(tampered))),
        Code::Unauthenticated
    );
    // Unknown session.
    let mut stranger = Viewer::new();
    stranger.session_id = Some(loaves_proto::keys::SessionId([3; 16]));
    refused!(
        h,
        client.renew_license(renew(Some(stranger.envelope(1, None)))),
        Code::NotFound
    );
    // Sequence 0 is the acquisition's: a replay.
    refused!(
        h,
        client.renew_license(renew(Some(viewer.envelope(0, None)))),
        Code::AlreadyExists
    );
    // Key periods beyond the lookahead, or more than allowed per request.
    refused!(
        h,
        client.renew_license(renew(Some(viewer.envelope(1, Some((2, 2)))))),
        Code::OutOfRange
    );
    refused!(
        h,
        client.renew_license(renew(Some(viewer.envelope(1, Some((0, 3)))))),
        Code::OutOfRange
    );
    // Release with a bad signature or a stale sequence.
    refused!(
        h,
        client.release_session(pb::ReleaseSessionRequest {
            request: Some(impostor.envelope(5, None))
        }),
        Code::Unauthenticated
    );
    refused!(
        h,
        client.release_session(pb::ReleaseSessionRequest {
            request: Some(viewer.envelope(0, None))
        }),
        Code::AlreadyExists
    );
    // The entitlement lapsing stops renewals.
    let mut short = Viewer::new();
    let entitlement = h.entitlement_with("acct-short", 1, |e| e.expires_at = e.issued_at.plus(100));
    let response = client
        .acquire_license(short.acquire_request(entitlement, "demo"))
        .await
        .unwrap()
        .into_inner();
    open_license(&keyring, &mut short, &response, h.now());
    h.clock.advance(60);
    client
        .renew_license(renew(Some(short.renew_envelope(None))))
        .await
        .unwrap();
    h.clock.advance(60);
    refused!(
        h,
        client.renew_license(renew(Some(short.renew_envelope(None)))),
        Code::PermissionDenied
    );
    // The session still works with a proper renewal afterwards? No: the first
    // viewer's session lapsed meanwhile (120 s > 90 s), so it is over.
    refused!(
        h,
        client.renew_license(renew(Some(viewer.envelope(1, None)))),
        Code::FailedPrecondition
    );
}

async fn key_service_bad_requests_write_nothing(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let mut client = h.keys().await;
    let request = |title: &str, keys: Vec<(&str, u32)>| pb::GetContentKeysRequest {
        title: title.to_owned(),
        keys: keys
            .into_iter()
            .map(|(t, p)| pb::ContentKeyRequest {
                track_type: t.to_owned(),
                key_period: p,
            })
            .collect(),
    };
    // No credential, a wrong one, a malformed header.
    refused!(
        h,
        client.get_content_keys(request("demo", vec![("hd", 0)])),
        Code::Unauthenticated
    );
    for value in ["Bearer wrong", "Basic dGVzdA==", "Bearer"] {
        let mut r = tonic::Request::new(request("demo", vec![("hd", 0)]));
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        refused!(h, client.get_content_keys(r), Code::Unauthenticated);
    }
    refused!(
        h,
        get_keys(&mut client, "nope", &[("hd", 0)]),
        Code::NotFound
    );
    refused!(
        h,
        get_keys(&mut client, "demo", &[("uhd", 0)]),
        Code::InvalidArgument
    );
    refused!(h, get_keys(&mut client, "demo", &[]), Code::InvalidArgument);
    let too_many: Vec<(&str, u32)> = (0..65).map(|p| ("hd", p)).collect();
    refused!(
        h,
        get_keys(&mut client, "demo", &too_many),
        Code::InvalidArgument
    );
    assert_eq!(h.counts().await.content_keys, 0);
    // A good request creates exactly what it asked for, duplicates once.
    let keys = get_keys(&mut client, "demo", &[("hd", 0), ("sd", 0), ("hd", 0)])
        .await
        .unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0].key_id, keys[2].key_id);
    assert_eq!(h.counts().await.content_keys, 2);
}

/// A request that is not valid protobuf for its method is the client's
/// fault (INVALID_ARGUMENT), one over the size limit a limit
/// (RESOURCE_EXHAUSTED), on every method, sent as raw bytes over real
/// gRPC; each is counted by reason and writes nothing.
async fn malformed_and_oversized_messages_get_grpcs_statuses(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let methods = [
        "/loaves.v1.LicenseService/AcquireLicense",
        "/loaves.v1.LicenseService/RenewLicense",
        "/loaves.v1.LicenseService/ReleaseSession",
        "/loaves.v1.KeyService/GetContentKeys",
    ];
    // An invalid wire type, and a length-delimited field cut short.
    let malformed: [&[u8]; 2] = [&[0xff, 0xff, 0xff], &[0x0a, 50, 1, 2]];
    for path in methods {
        for bytes in malformed {
            let status = raw_call(h.channel().await, path, bytes.to_vec())
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            assert!(status.message().contains("malformed"), "{status:?}");
        }
        let status = raw_call(h.channel().await, path, vec![0; 70_000])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
        assert!(status.message().contains("over the limit"), "{status:?}");
    }
    let (_, metrics) = h.http_get("/metrics").await;
    for (reason, count) in [("malformed_request", 8), ("request_too_large", 4)] {
        let line = format!("loaves_license_denials_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    let counts = h.counts().await;
    assert_eq!((counts.sessions, counts.content_keys), (0, 0));
    // A valid message on the same server still gets through.
    let keys = get_keys(&mut h.keys().await, "demo", &[("hd", 0)])
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
}

async fn restart_keeps_keys_and_wrong_kek_is_refused(db: Db) {
    let Some(mut h) = Harness::start(db).await else {
        return;
    };
    let wanted = [("audio", 0), ("sd", 0), ("hd", 0), ("hd", 1), ("hd", 7)];
    let before = get_keys(&mut h.keys().await, "demo", &wanted)
        .await
        .unwrap();
    let mut viewer = Viewer::new();
    let entitlement = h.entitlement("acct-restart", 1);
    let response = h
        .licenses()
        .await
        .acquire_license(viewer.acquire_request(entitlement, "demo"))
        .await
        .unwrap()
        .into_inner();
    let (_, licensed) = open_license(&h.license_keyring(), &mut viewer, &response, h.now());

    h.restart().await;
    let after = get_keys(&mut h.keys().await, "demo", &wanted)
        .await
        .unwrap();
    assert_eq!(
        before
            .iter()
            .map(|k| (&k.key_id, &k.key))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|k| (&k.key_id, &k.key))
            .collect::<Vec<_>>()
    );
    // The session survived too: it renews on the new process.
    let response = h
        .licenses()
        .await
        .renew_license(pb::RenewLicenseRequest {
            request: Some(viewer.renew_envelope(None)),
        })
        .await
        .unwrap()
        .into_inner();
    let (_, renewed) = open_license(&h.license_keyring(), &mut viewer, &response, h.now());
    for key in &licensed {
        assert!(
            renewed
                .iter()
                .any(|k| k.key_id == key.key_id && k.key == key.key)
        );
    }

    // Another KEK against the same store is refused at start.
    let url = h.config.store_url().unwrap();
    h.server.take().unwrap().shutdown().await.unwrap();
    let wrong = license_server::seal::Kek::from_hex(&"02".repeat(32)).unwrap();
    let err = license_server::Store::open(&url, 2, wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(err, license_server::store::StoreError::WrongKek),
        "{err}"
    );
}

async fn parallel_get_or_create_hands_out_one_key(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let channel = h.channel().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24u32 {
        let mut client = loaves_grpc::key_service_client::KeyServiceClient::new(channel.clone());
        tasks.spawn(async move {
            // Everyone wants period 5; each also wants a period of its own.
            get_keys(&mut client, "live", &[("hd", 5), ("sd", 100 + i)])
                .await
                .unwrap()
        });
    }
    let results = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("in time");
    let shared: HashSet<_> = results
        .iter()
        .map(|r| (r[0].key_id.clone(), r[0].key.clone()))
        .collect();
    assert_eq!(shared.len(), 1, "one key for (live, hd, 5)");
    let mut ids: HashSet<Vec<u8>> = results.iter().map(|r| r[1].key_id.clone()).collect();
    let mut key_bytes: HashSet<Vec<u8>> = results.iter().map(|r| r[1].key.clone()).collect();
    assert_eq!(ids.len(), 24);
    assert_eq!(key_bytes.len(), 24);
    ids.insert(results[0][0].key_id.clone());
    key_bytes.insert(results[0][0].key.clone());
    assert_eq!((ids.len(), key_bytes.len()), (25, 25), "keys never reused");
    assert_eq!(h.counts().await.content_keys, 25);
}

async fn clearkey_endpoint_serves_licensed_keys_only(db: Db) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let addr = h.server().clearkey_addr.unwrap();
    let mut client = h.licenses().await;
    let mut viewer = Viewer::new();
    // An SD-only account: the HD key must not come out of ClearKey either.
    let entitlement = h.entitlement_with("acct-ck", 1, |e| e.max_height = 480);
    let response = client
        .acquire_license(viewer.acquire_request(entitlement, "demo"))
        .await
        .unwrap()
        .into_inner();
    let (license, keys) = open_license(&h.license_keyring(), &mut viewer, &response, h.now());
    assert_eq!(keys.len(), 2, "audio and sd");
    let hd = get_keys(&mut h.keys().await, "demo", &[("hd", 0)])
        .await
        .unwrap();
    let other_title = get_keys(&mut h.keys().await, "live", &[("sd", 10)])
        .await
        .unwrap();

    let token = B64.encode(&license.session_token);
    let bearer = format!("Bearer {token}");
    let kids: Vec<String> = keys
        .iter()
        .map(|k| B64.encode(k.key_id.0))
        .chain([
            B64.encode(&hd[0].key_id),
            B64.encode(&other_title[0].key_id),
        ])
        .collect();
    let body = serde_json::json!({ "kids": kids, "type": "temporary" }).to_string();
    let post = |headers: Vec<(&'static str, String)>, body: String| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        http(addr, "POST", "/clearkey", &headers, body.as_bytes()).await
    };

    let (status, text) = post(vec![("Authorization", bearer.clone())], body.clone()).await;
    assert_eq!(status, 200, "{text}");
    let jwks: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(jwks["type"], "temporary");
    let served = jwks["keys"].as_array().unwrap();
    assert_eq!(
        served.len(),
        2,
        "only the licensed audio and sd keys: {text}"
    );
    for key in &keys {
        let jwk = served
            .iter()
            .find(|j| j["kid"] == B64.encode(key.key_id.0))
            .expect("licensed key served");
        assert_eq!(jwk["kty"], "oct");
        assert_eq!(jwk["k"], B64.encode(key.key.as_bytes()));
        assert!(!jwk["k"].as_str().unwrap().contains('='));
    }

    // No token, a forged token, a malformed body, only unlicensed kids.
    let (status, _) = post(vec![], body.clone()).await;
    assert_eq!(status, 401);
    let mut forged = license.session_token.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (status, _) = post(
        vec![("Authorization", format!("Bearer {}", B64.encode(&forged)))],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(vec![("Authorization", bearer.clone())], "{\"kids\":".into()).await;
    assert_eq!(status, 400);
    let only_hd =
        serde_json::json!({ "kids": [B64.encode(&hd[0].key_id)], "type": "temporary" }).to_string();
    let (status, _) = post(vec![("Authorization", bearer.clone())], only_hd).await;
    assert_eq!(status, 403);
    // A body over the limit is refused before anything else, and counted.
    let (status, _) = post(vec![("Authorization", bearer.clone())], "x".repeat(20_000)).await;
    assert_eq!(status, 413);
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        metrics.contains("loaves_license_denials_total{reason=\"clearkey_too_large\"} 1"),
        "{metrics}"
    );

    // After release the token no longer opens keys.
    client
        .release_session(pb::ReleaseSessionRequest {
            request: Some(viewer.renew_envelope(None)),
        })
        .await
        .unwrap();
    let (status, _) = post(vec![("Authorization", bearer)], body).await;
    assert_eq!(status, 403);
    // CORS preflight for browsers.
    let (status, _) = http(addr, "OPTIONS", "/clearkey", &[], b"").await;
    assert_eq!(status, 204);
}

async fn metrics_and_health(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let (status, body) = h.http_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // grpc.health.v1 on the TLS listener.
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel().await);
    for service in ["loaves.v1.LicenseService", "loaves.v1.KeyService"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let mut viewer = Viewer::new();
    let mut client = h.licenses().await;
    let response = client
        .acquire_license(viewer.acquire_request(h.entitlement("acct-m", 3), "demo"))
        .await
        .unwrap()
        .into_inner();
    let (license, _) = open_license(&h.license_keyring(), &mut viewer, &response, h.now());
    client
        .renew_license(pb::RenewLicenseRequest {
            request: Some(viewer.renew_envelope(None)),
        })
        .await
        .unwrap();
    let (status, metrics) = h.http_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "loaves_license_licenses_issued_total 1",
        "loaves_license_renewals_total 1",
        "loaves_license_active_sessions 1",
        "loaves_license_request_duration_seconds_count{method=\"acquire\"} 1",
        "loaves_license_request_duration_seconds_count{method=\"renew\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // Secrets never appear in the exposition.
    let token_hex = hex::encode(&license.session_token);
    assert!(!metrics.contains(&token_hex[..32]));
    let (status, _) = h.http_get("/nope").await;
    assert_eq!(status, 404);
}

async fn live_rotation_delivers_next_periods_on_renewal(db: Db) {
    let Some(h) = Harness::start(db).await else {
        return;
    };
    let mut client = h.licenses().await;
    let keyring = h.license_keyring();
    let mut viewer = Viewer::new();
    // The "live" title rotates keys every 600 s; period 10 is current at T0.
    let mut request = viewer.acquire_request(h.entitlement("acct-live", 1), "live");
    request.renditions = vec!["720p".into()];
    let response = client.acquire_license(request).await.unwrap().into_inner();
    let (_, keys) = open_license(&keyring, &mut viewer, &response, h.now());
    let periods: Vec<u32> = keys.iter().map(|k| k.key_period).collect();
    assert_eq!(periods, [10], "no range asked: the current period, hd only");
    let mut packager = h.keys().await;
    // Heartbeats every 55 s for 11 minutes; each asks for the current period
    // and the next two, which the lookahead of 2 allows.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..12 {
        h.clock.advance(55);
        let current = 10 + u32::try_from((h.now().0 - common::T0) / 600).unwrap();
        let response = client
            .renew_license(pb::RenewLicenseRequest {
                request: Some(viewer.renew_envelope(Some((current, 3)))),
            })
            .await
            .unwrap()
            .into_inner();
        let (_, keys) = open_license(&keyring, &mut viewer, &response, h.now());
        let got: Vec<u32> = keys.iter().map(|k| k.key_period).collect();
        assert_eq!(got, [current, current + 1, current + 2]);
        for key in keys {
            let previous = seen.insert(key.key_period, (key.key_id, key.key.clone()));
            if let Some((id, bytes)) = previous {
                assert_eq!(
                    (id, bytes),
                    (key.key_id, key.key),
                    "a period's key never changes"
                );
            }
        }
        // One period further than the lookahead is refused.
        let status = client
            .renew_license(pb::RenewLicenseRequest {
                request: Some(viewer.renew_envelope(Some((current, 4)))),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange);
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [10, 11, 12, 13]);
    // The packager sees the same keys for those periods.
    for (period, (id, key)) in &seen {
        let stored = get_keys(&mut packager, "live", &[("hd", *period)])
            .await
            .unwrap();
        assert_eq!(
            (&stored[0].key_id[..], &stored[0].key[..]),
            (&id.0[..], &key.as_bytes()[..])
        );
    }
}
