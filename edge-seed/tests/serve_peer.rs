#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The seed's peer wire over real QUIC on 127.0.0.1: authorized fetches
//! (whole and ranges) that verify, every kind of bad input refused, corrupt
//! origin responses never served, single-flight origin pulls, the disk
//! cache across restarts, BUSY at capacity, HAVE notices for live segments,
//! and a flood of silent connections that does not starve an honest client.

mod serve_common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loaves_proto::keys::SigningKeyPair;
use loaves_proto::pb;
use loaves_proto::pb::segment_response_header::Status;
use loaves_wire::peerwire::{self, HaveReceiver, close_code};
use serve_common::*;

const SIZE: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_client_fetches_whole_and_ranges_that_verify() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p", "360p"], 4, SIZE, false);
    let (origin, url) = start_origin(media.path()).await;
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let peer = viewer(seed.quic_address, TITLE, 1).await;
    match &peer.remote.credential {
        peerwire::PeerCredential::Seed(credential) => assert_eq!(credential.seed_name, "seed-test"),
        other => panic!("expected a seed credential, got {other:?}"),
    }
    let manifest = manifest(media.path(), TITLE, "720p");
    for sequence in 0..4 {
        let bytes = peerwire::request_segment(&peer.connection, "720p", sequence, None, &limits())
            .await
            .unwrap();
        manifest.verify_segment(sequence, &bytes).unwrap();
    }
    // Ranges of a segment reassemble into bytes that verify.
    let mut whole = Vec::new();
    for start in (0..SIZE as u64).step_by(65_536) {
        let end = (start + 65_536).min(SIZE as u64);
        let part =
            peerwire::request_segment(&peer.connection, "720p", 2, Some(start..end), &limits())
                .await
                .unwrap();
        assert_eq!(part.len() as u64, end - start);
        whole.extend_from_slice(&part);
    }
    manifest.verify_segment(2, &whole).unwrap();
    // A range of an uncached segment (pulled once, then cut).
    let part = peerwire::request_segment(&peer.connection, "360p", 3, Some(10..20), &limits())
        .await
        .unwrap();
    assert_eq!(&part[..], &segment_bytes("360p", 3, SIZE)[10..20]);
    assert_eq!(
        origin.count(&format!("{TITLE}/720p/seg_00002.m4s")),
        1,
        "served from cache"
    );
    let metrics = seed.metrics.render();
    assert!(
        metrics.contains("loaves_seed_bytes_served_total{protocol=\"quic\",title=\"big-buck\"}")
    );
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_refused() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 2, 1000, false);
    let (_origin, url) = start_origin(media.path()).await;
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let endpoint = client_endpoint();
    let key = SigningKeyPair::from_seed(&[50; 32]);
    let refused = |result: Result<peerwire::PeerConnection, peerwire::PeerWireError>| {
        let error = result.expect_err("hello must be refused");
        error
            .close_code()
            .unwrap_or_else(|| panic!("no close code: {error:?}"))
    };
    // No token.
    let mut hello = peerwire::viewer_hello(vec![], TITLE, "720p");
    hello.credential = None;
    assert_eq!(
        refused(connect_with(&endpoint, seed.quic_address, &key, &hello).await),
        close_code::UNAUTHENTICATED
    );
    // Forged (signed by an unknown key) — build it by hand.
    let forged = loaves_proto::token::SessionToken {
        session_id: loaves_proto::keys::SessionId([1; 16]),
        account: "a".into(),
        title: TITLE.into(),
        renditions: vec!["720p".into()],
        peer_key: key.verifying_key(),
        region: String::new(),
        isp: String::new(),
        not_before: loaves_proto::UnixSeconds(0),
        expires_at: loaves_proto::UnixSeconds::now().plus(600),
    }
    .sign(&SigningKeyPair::from_seed(&[99; 32]));
    let hello = peerwire::viewer_hello(forged, TITLE, "720p");
    assert_eq!(
        refused(connect_with(&endpoint, seed.quic_address, &key, &hello).await),
        close_code::UNAUTHENTICATED
    );
    // Expired.
    let hello = peerwire::viewer_hello(token_for(&key, TITLE, &["720p"], -600), TITLE, "720p");
    assert_eq!(
        refused(connect_with(&endpoint, seed.quic_address, &key, &hello).await),
        close_code::UNAUTHENTICATED
    );
    // Certificate key differs from the token's key.
    let other = SigningKeyPair::from_seed(&[51; 32]);
    let hello = peerwire::viewer_hello(token_for(&other, TITLE, &["720p"], 600), TITLE, "720p");
    assert_eq!(
        refused(connect_with(&endpoint, seed.quic_address, &key, &hello).await),
        close_code::UNAUTHENTICATED
    );
    // Unknown title, with a valid token for it.
    let hello = peerwire::viewer_hello(token_for(&key, "nope", &["720p"], 600), "nope", "720p");
    assert_eq!(
        refused(connect_with(&endpoint, seed.quic_address, &key, &hello).await),
        close_code::FORBIDDEN
    );
    let metrics = seed.metrics.render();
    for reason in [
        "missing",
        "unknown_signer",
        "expired",
        "key_mismatch",
        "unknown_title",
    ] {
        assert!(
            metrics.contains(&format!(
                "loaves_seed_hello_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_connection_survives() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p", "1080p"], 2, 5000, false);
    let (_origin, url) = start_origin(media.path()).await;
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let peer = viewer(seed.quic_address, TITLE, 2).await;
    let status = |r: Result<bytes::Bytes, peerwire::PeerWireError>| r.unwrap_err().status();
    let c = &peer.connection;
    assert_eq!(
        status(peerwire::request_segment(c, "720p", 2, None, &limits()).await),
        Some(Status::NotFound)
    );
    assert_eq!(
        status(peerwire::request_segment(c, "720p", u64::MAX, None, &limits()).await),
        Some(Status::NotFound)
    );
    assert_eq!(
        status(peerwire::request_segment(c, "240p", 0, None, &limits()).await),
        Some(Status::Forbidden)
    );
    assert_eq!(
        status(peerwire::request_segment(c, "1080p", 0, None, &limits()).await),
        Some(Status::Forbidden),
        "the token does not list 1080p"
    );
    assert_eq!(
        status(peerwire::request_segment(c, "720p", 0, Some(4000..5001), &limits()).await),
        Some(Status::BadRange)
    );
    // Oversized request frame: the stream is reset, nothing allocated.
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
        .await
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");
    // Garbage protobuf.
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
        .await
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");
    // Still fine.
    peerwire::request_segment(c, "720p", 1, Some(0..100), &limits())
        .await
        .unwrap();
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_origin_responses_are_never_served() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 3, 50_000, false);
    let (origin, url) = start_origin(media.path()).await;
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let peer = viewer(seed.quic_address, TITLE, 3).await;
    // Always corrupt: the client gets an error, never bytes.
    origin.corrupt_always.store(true, Ordering::SeqCst);
    let error = peerwire::request_segment(&peer.connection, "720p", 0, None, &limits())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(Status::Internal), "{error:?}");
    assert_eq!(
        origin.count(&format!("{TITLE}/720p/seg_00000.m4s")),
        3,
        "every attempt used"
    );
    // The HTTP role refuses too.
    let http = reqwest::get(format!(
        "http://{}/{TITLE}/720p/seg_00000.m4s",
        seed.http_address
    ))
    .await
    .unwrap();
    assert_eq!(http.status(), 502);
    // Corrupt once: retried, and the good bytes are served and cached.
    origin.corrupt_always.store(false, Ordering::SeqCst);
    origin.corrupt_next.store(1, Ordering::SeqCst);
    let bytes = peerwire::request_segment(&peer.connection, "720p", 1, None, &limits())
        .await
        .unwrap();
    manifest(media.path(), TITLE, "720p")
        .verify_segment(1, &bytes)
        .unwrap();
    assert_eq!(origin.count(&format!("{TITLE}/720p/seg_00001.m4s")), 2);
    let metrics = seed.metrics.render();
    assert!(
        metrics.contains("loaves_seed_origin_errors_total{reason=\"hash\"} 7"),
        "{metrics}"
    );
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_cause_one_origin_fetch() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 2, 500_000, false);
    let (origin, url) = start_origin(media.path()).await;
    origin.delay_ms.store(300, Ordering::SeqCst);
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let mut peers = Vec::new();
    for n in 0..10 {
        peers.push(viewer(seed.quic_address, TITLE, 10 + n).await);
    }
    let manifest = Arc::new(manifest(media.path(), TITLE, "720p"));
    let mut fetches = Vec::new();
    for i in 0..100 {
        let connection = peers[i % peers.len()].connection.clone();
        let manifest = manifest.clone();
        fetches.push(tokio::spawn(async move {
            let bytes = peerwire::request_segment(&connection, "720p", 1, None, &limits())
                .await
                .unwrap();
            manifest.verify_segment(1, &bytes).unwrap();
        }));
    }
    for fetch in fetches {
        fetch.await.unwrap();
    }
    assert_eq!(origin.count(&format!("{TITLE}/720p/seg_00001.m4s")), 1);
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_disk_cache() {
    let media = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 3, 100_000, false);
    let (origin, url) = start_origin(media.path()).await;
    let mut config = config(&url, &[TITLE]);
    config.cache.disk_dir = Some(cache.path().to_owned());
    let seed = start_seed(&config).await;
    let peer = viewer(seed.quic_address, TITLE, 30).await;
    for sequence in 0..3 {
        peerwire::request_segment(&peer.connection, "720p", sequence, None, &limits())
            .await
            .unwrap();
    }
    assert_eq!(origin.segment_count(), 3);
    drop(peer);
    seed.shutdown().await;
    // Tamper with one cached file: it must be detected and refetched.
    let tampered = cache.path().join(TITLE).join("720p").join("2.seg");
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&tampered, bytes).unwrap();

    let seed = start_seed(&config).await;
    let peer = viewer(seed.quic_address, TITLE, 31).await;
    let manifest = manifest(media.path(), TITLE, "720p");
    for sequence in 0..3 {
        let bytes = peerwire::request_segment(&peer.connection, "720p", sequence, None, &limits())
            .await
            .unwrap();
        manifest.verify_segment(sequence, &bytes).unwrap();
    }
    assert_eq!(
        origin.count(&format!("{TITLE}/720p/seg_00000.m4s")),
        1,
        "from disk"
    );
    assert_eq!(
        origin.count(&format!("{TITLE}/720p/seg_00001.m4s")),
        1,
        "from disk"
    );
    assert_eq!(
        origin.count(&format!("{TITLE}/720p/seg_00002.m4s")),
        2,
        "tampered: refetched"
    );
    let metrics = seed.metrics.render();
    assert!(
        metrics.contains("loaves_seed_cache_hits_total{tier=\"disk\"} 2"),
        "{metrics}"
    );
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_requests_get_busy_at_once() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 3, 10_000, false);
    let (origin, url) = start_origin(media.path()).await;
    origin.delay_ms.store(1500, Ordering::SeqCst);
    let mut config = config(&url, &[TITLE]);
    config.capacity.max_concurrent_uploads = 1;
    let seed = start_seed(&config).await;
    let peer = viewer(seed.quic_address, TITLE, 40).await;
    let slow = {
        let connection = peer.connection.clone();
        tokio::spawn(async move {
            peerwire::request_segment(&connection, "720p", 0, None, &limits()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let error = peerwire::request_segment(&peer.connection, "720p", 1, None, &limits())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(Status::Busy));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // HTTP shares the slots: 503 with Retry-After.
    let http = reqwest::get(format!(
        "http://{}/{TITLE}/720p/seg_00001.m4s",
        seed.http_address
    ))
    .await
    .unwrap();
    assert_eq!(http.status(), 503);
    assert!(http.headers().contains_key("retry-after"));
    slow.await.unwrap().unwrap();
    assert!(
        seed.metrics
            .render()
            .contains("loaves_seed_refused_total{reason=\"uploads\"} 2")
    );
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_a_silent_flood_do_not_starve_honest_clients() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 2, 10_000, false);
    let (_origin, url) = start_origin(media.path()).await;
    let mut config = config(&url, &[TITLE]);
    config.capacity.max_connections = 40;
    config.capacity.max_connections_per_ip = 40;
    let seed = start_seed(&config).await;
    // 30 connections that complete the handshake and never say hello.
    let endpoint = client_endpoint();
    let mut silent = Vec::new();
    for n in 0..30u8 {
        let identity =
            loaves_wire::identity::PeerIdentity::new(&SigningKeyPair::from_seed(&[n; 32])).unwrap();
        let client = peerwire::client_config(&identity, &Default::default()).unwrap();
        let connection = endpoint
            .connect_with(
                client,
                seed.quic_address,
                loaves_wire::identity::SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap();
        silent.push(connection);
    }
    // An honest client still gets in and is served.
    let started = Instant::now();
    let peer = viewer(seed.quic_address, TITLE, 60).await;
    peerwire::request_segment(&peer.connection, "720p", 0, None, &limits())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // The silent ones are closed after the hello timeout, freeing slots.
    for connection in &silent {
        tokio::time::timeout(Duration::from_secs(10), connection.closed())
            .await
            .unwrap();
    }
    // Beyond the connection cap, refused before the handshake.
    let mut held = Vec::new();
    for n in 0..40u8 {
        let identity =
            loaves_wire::identity::PeerIdentity::new(&SigningKeyPair::from_seed(&[n; 32])).unwrap();
        let client = peerwire::client_config(&identity, &Default::default()).unwrap();
        if let Ok(connecting) = endpoint.connect_with(
            client,
            seed.quic_address,
            loaves_wire::identity::SERVER_NAME,
        ) {
            held.push(connecting.await);
        }
    }
    assert!(
        held.iter().any(Result::is_err),
        "some connections refused at the cap"
    );
    assert!(
        seed.metrics
            .render()
            .contains("loaves_seed_refused_total{reason=\"max_connections\"}")
    );
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_segments_are_prefetched_and_announced() {
    let media = tempfile::tempdir().unwrap();
    let mut writer = TitleWriter::create(media.path(), TITLE, &["720p"], 2, 20_000, true);
    let (origin, url) = start_origin(media.path()).await;
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let peer = viewer(seed.quic_address, TITLE, 70).await;
    // Make sure the seed's hello is done before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let published = writer.append("720p", 1, false);
    assert_eq!(published, vec![2]);
    let mut have = tokio::time::timeout(
        Duration::from_secs(5),
        HaveReceiver::accept(&peer.connection, limits()),
    )
    .await
    .expect("a HAVE stream is opened")
    .unwrap();
    let notice: pb::HaveNotice = have.next(Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(notice.rendition, "720p");
    assert_eq!(notice.sequences, vec![2]);
    // Prefetched: the seed pulled it before anyone asked.
    assert_eq!(origin.count(&format!("{TITLE}/720p/seg_00002.m4s")), 1);
    let bytes = peerwire::request_segment(&peer.connection, "720p", 2, None, &limits())
        .await
        .unwrap();
    manifest(media.path(), TITLE, "720p")
        .verify_segment(2, &bytes)
        .unwrap();
    assert_eq!(origin.count(&format!("{TITLE}/720p/seg_00002.m4s")), 1);
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_transfers_in_flight() {
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 2, 100_000, false);
    let (origin, url) = start_origin(media.path()).await;
    origin.delay_ms.store(800, Ordering::SeqCst);
    let seed = start_seed(&config(&url, &[TITLE])).await;
    let peer = viewer(seed.quic_address, TITLE, 80).await;
    let transfer = {
        let connection = peer.connection.clone();
        tokio::spawn(async move {
            peerwire::request_segment(&connection, "720p", 1, None, &limits()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let address = seed.quic_address;
    seed.shutdown().await;
    transfer.await.unwrap().unwrap();
    // After the drain nobody is accepted.
    let key = SigningKeyPair::from_seed(&[81; 32]);
    let hello = peerwire::viewer_hello(token_for(&key, TITLE, &["720p"], 600), TITLE, "720p");
    assert!(
        tokio::time::timeout(
            Duration::from_secs(5),
            connect_with(&client_endpoint(), address, &key, &hello)
        )
        .await
        .map(|r| r.is_err())
        .unwrap_or(true)
    );
}
