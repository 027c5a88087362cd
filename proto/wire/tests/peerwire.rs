#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The peer wire protocol over real QUIC on 127.0.0.1: hello and credential
//! checks, whole and ranged fetches verified against a signed manifest,
//! refusals, oversized frames, slow readers, HAVE notices, egress pacing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::manifest::{Manifest, ManifestWriter, Scheme, SegmentInfo, verify_chunk};
use loaves_proto::pb;
use loaves_proto::pb::segment_response_header::Status;
use loaves_proto::token::SessionToken;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire::{
    self, AuthenticatedPeer, CredentialVerifier, EgressLimiter, HaveReceiver, HaveSender, Limits,
    Outcome, PeerWireError, Reply, RequestHandler, TransportOptions, close_code,
};

const TITLE: &str = "big-buck";

struct Fixture {
    license: SigningKeyPair,
    verifier: CredentialVerifier,
    segments: HashMap<(String, u64), Bytes>,
    manifest: Manifest,
}

fn fixture() -> Fixture {
    let license = SigningKeyPair::from_seed(&[1; 32]);
    let origin = SigningKeyPair::from_seed(&[2; 32]);
    let mut keyring = Keyring::new();
    keyring.insert(license.verifying_key());
    let mut segments = HashMap::new();
    let mut infos = Vec::new();
    for sequence in 0..3u64 {
        let bytes: Vec<u8> = (0..300_000u32)
            .map(|i| (i as u64 * 31 + sequence * 7) as u8)
            .collect();
        infos.push(SegmentInfo::describe(sequence, 2000, 0, &bytes));
        segments.insert(("720p".to_owned(), sequence), Bytes::from(bytes));
    }
    let mut writer = ManifestWriter::new(TITLE, "720p", b"init", Scheme::Cenc, 0);
    let chunk = writer
        .append(&origin, &infos, true, UnixSeconds(1_000))
        .unwrap();
    let mut origin_ring = Keyring::new();
    origin_ring.insert(origin.verifying_key());
    let manifest = Manifest::from_chunk(verify_chunk(&origin_ring, &chunk).unwrap());
    Fixture {
        license,
        verifier: CredentialVerifier::new(keyring, 30),
        segments,
        manifest,
    }
}

fn token(license: &SigningKeyPair, key: &SigningKeyPair, title: &str, expires_in: i64) -> Vec<u8> {
    let now = UnixSeconds::now().0 as i64;
    SessionToken {
        session_id: SessionId([9; 16]),
        account: "acct".into(),
        title: title.into(),
        renditions: vec!["720p".into()],
        peer_key: key.verifying_key(),
        region: "eu".into(),
        isp: "isp".into(),
        not_before: UnixSeconds((now - 3600) as u64),
        expires_at: UnixSeconds((now + expires_in) as u64),
    }
    .sign(license)
}

#[derive(Default)]
struct Handler {
    segments: HashMap<(String, u64), Bytes>,
    outcomes: Mutex<Vec<Outcome>>,
}

impl RequestHandler for Handler {
    async fn handle(&self, _peer: &AuthenticatedPeer, request: &pb::SegmentRequest) -> Reply {
        match self
            .segments
            .get(&(request.rendition.clone(), request.sequence))
        {
            Some(bytes) => Reply::Segment {
                bytes: bytes.clone(),
                guard: None,
            },
            None => Reply::Refuse {
                status: Status::NotFound,
                message: "no such segment".into(),
            },
        }
    }

    fn finished(&self, _peer: &AuthenticatedPeer, _request: &pb::SegmentRequest, outcome: Outcome) {
        self.outcomes.lock().unwrap().push(outcome);
    }
}

struct Server {
    address: SocketAddr,
    handler: Arc<Handler>,
    seed_key: SigningKeyPair,
    _endpoint: quinn::Endpoint,
}

fn limits() -> Limits {
    Limits {
        stall_timeout: Duration::from_millis(800),
        hello_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

async fn start_server(fixture: &Fixture, egress: Option<Arc<EgressLimiter>>) -> Server {
    let seed_key = SigningKeyPair::from_seed(&[3; 32]);
    let identity = PeerIdentity::new(&seed_key).unwrap();
    let credential = peerwire::sign_seed_credential(
        &pb::SeedCredentialBody {
            seed_name: "seed-1".into(),
            peer_public_key: seed_key.verifying_key().as_bytes().to_vec(),
            region: "eu".into(),
            isp: "isp".into(),
            titles: vec!["*".into()],
            not_before: 0,
            expires_at: UnixSeconds::now().0 + 3600,
        },
        &fixture.license,
    );
    let options = TransportOptions {
        stream_receive_window: 64 * 1024,
        send_window: 256 * 1024,
        ..TransportOptions::default()
    };
    let config = peerwire::server_config(&identity, &options).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    let handler = Arc::new(Handler {
        segments: fixture.segments.clone(),
        ..Handler::default()
    });
    let verifier = Arc::new(fixture.verifier.clone());
    let own = peerwire::seed_hello(credential);
    {
        let endpoint = endpoint.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let handler = handler.clone();
                let verifier = verifier.clone();
                let own = own.clone();
                let egress = egress.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    let limits = limits();
                    let Ok(peer) = peerwire::accept_hello(
                        &connection,
                        &verifier,
                        &own,
                        |title| title == TITLE,
                        UnixSeconds::now(),
                        &limits,
                    )
                    .await
                    else {
                        return;
                    };
                    peerwire::serve_requests(
                        connection,
                        Arc::new(peer),
                        handler,
                        verifier,
                        Arc::new(limits),
                        egress,
                        std::future::pending(),
                    )
                    .await;
                });
            }
        });
    }
    Server {
        address,
        handler,
        seed_key,
        _endpoint: endpoint,
    }
}

struct Client {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

fn client(key: &SigningKeyPair) -> Client {
    client_with(key, &TransportOptions::default())
}

fn client_with(key: &SigningKeyPair, options: &TransportOptions) -> Client {
    let identity = PeerIdentity::new(key).unwrap();
    let config = peerwire::client_config(&identity, options).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    Client { endpoint, config }
}

async fn connect(
    fixture: &Fixture,
    server: &Server,
    key: &SigningKeyPair,
    hello: pb::PeerHello,
) -> Result<peerwire::PeerConnection, PeerWireError> {
    let client = client(key);
    peerwire::connect(
        &client.endpoint,
        server.address,
        client.config,
        &hello,
        &fixture.verifier,
        UnixSeconds::now(),
        &limits(),
    )
    .await
}

#[tokio::test]
async fn authorized_client_fetches_whole_and_ranges_that_verify() {
    let fixture = fixture();
    let server = start_server(&fixture, None).await;
    let key = SigningKeyPair::from_seed(&[4; 32]);
    let hello = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, 600), TITLE, "720p");
    let peer = connect(&fixture, &server, &key, hello).await.unwrap();
    match &peer.remote.credential {
        peerwire::PeerCredential::Seed(seed) => {
            assert_eq!(seed.seed_name, "seed-1");
            assert_eq!(seed.peer_key, server.seed_key.verifying_key());
        }
        other => panic!("unexpected credential {other:?}"),
    }
    let limits = limits();
    for sequence in 0..3 {
        let whole = peerwire::request_segment(&peer.connection, "720p", sequence, None, &limits)
            .await
            .unwrap();
        fixture.manifest.verify_segment(sequence, &whole).unwrap();
    }
    let whole = fixture.segments[&("720p".to_owned(), 1)].clone();
    let reply = peerwire::fetch_segment(&peer.connection, "720p", 1, Some(1000..70_001), &limits)
        .await
        .unwrap();
    assert_eq!(reply.total_size, whole.len() as u64);
    assert_eq!(reply.offset, 1000);
    assert_eq!(reply.bytes, whole.slice(1000..70_001));
    // Concurrent ranges reassemble into a segment that verifies.
    let mut parts = Vec::new();
    for start in (0..whole.len() as u64).step_by(100_000) {
        let end = (start + 100_000).min(whole.len() as u64);
        let connection = peer.connection.clone();
        let limits = limits.clone();
        parts.push(tokio::spawn(async move {
            peerwire::request_segment(&connection, "720p", 1, Some(start..end), &limits).await
        }));
    }
    let mut assembled = Vec::new();
    for part in parts {
        assembled.extend_from_slice(&part.await.unwrap().unwrap());
    }
    fixture.manifest.verify_segment(1, &assembled).unwrap();
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_status() {
    let fixture = fixture();
    let server = start_server(&fixture, None).await;
    let key = SigningKeyPair::from_seed(&[5; 32]);
    let hello = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, 600), TITLE, "720p");
    let peer = connect(&fixture, &server, &key, hello).await.unwrap();
    let limits = limits();
    let status = |r: Result<Bytes, PeerWireError>| r.unwrap_err().status();
    assert_eq!(
        status(peerwire::request_segment(&peer.connection, "720p", 99, None, &limits).await),
        Some(Status::NotFound)
    );
    assert_eq!(
        status(
            peerwire::request_segment(&peer.connection, "720p", 0, Some(10..400_000), &limits)
                .await
        ),
        Some(Status::BadRange)
    );
    assert_eq!(
        status(peerwire::request_segment(&peer.connection, "1080p", 0, None, &limits).await),
        Some(Status::Forbidden),
        "a rendition the token does not list"
    );
    // The connection still works afterwards.
    peerwire::request_segment(&peer.connection, "720p", 0, Some(0..10), &limits)
        .await
        .unwrap();
}

async fn refused_hello(
    fixture: &Fixture,
    server: &Server,
    key: &SigningKeyPair,
    hello: pb::PeerHello,
) -> u32 {
    let error = connect(fixture, server, key, hello).await.unwrap_err();
    error
        .close_code()
        .unwrap_or_else(|| panic!("expected a close code, got {error:?}"))
}

#[tokio::test]
async fn bad_credentials_are_refused_at_hello() {
    let fixture = fixture();
    let server = start_server(&fixture, None).await;
    let key = SigningKeyPair::from_seed(&[6; 32]);
    // No credential at all.
    let mut none = peerwire::viewer_hello(vec![], TITLE, "720p");
    none.credential = None;
    assert_eq!(
        refused_hello(&fixture, &server, &key, none).await,
        close_code::UNAUTHENTICATED
    );
    // Forged: signed by a key the verifier does not trust.
    let forger = SigningKeyPair::from_seed(&[66; 32]);
    let forged = peerwire::viewer_hello(token(&forger, &key, TITLE, 600), TITLE, "720p");
    assert_eq!(
        refused_hello(&fixture, &server, &key, forged).await,
        close_code::UNAUTHENTICATED
    );
    // Garbage bytes.
    let garbage = peerwire::viewer_hello(vec![0xff; 200], TITLE, "720p");
    assert_eq!(
        refused_hello(&fixture, &server, &key, garbage).await,
        close_code::UNAUTHENTICATED
    );
    // Expired (beyond the skew).
    let expired = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, -600), TITLE, "720p");
    assert_eq!(
        refused_hello(&fixture, &server, &key, expired).await,
        close_code::UNAUTHENTICATED
    );
    // A valid token naming another key than the client certificate's.
    let other = SigningKeyPair::from_seed(&[7; 32]);
    let stolen = peerwire::viewer_hello(token(&fixture.license, &other, TITLE, 600), TITLE, "720p");
    assert_eq!(
        refused_hello(&fixture, &server, &key, stolen).await,
        close_code::UNAUTHENTICATED
    );
    // A token for a title the hello does not name.
    let mismatch =
        peerwire::viewer_hello(token(&fixture.license, &key, "other", 600), TITLE, "720p");
    assert_eq!(
        refused_hello(&fixture, &server, &key, mismatch).await,
        close_code::FORBIDDEN
    );
    // A valid token for a title the server does not serve.
    let unknown = peerwire::viewer_hello(
        token(&fixture.license, &key, "unknown", 600),
        "unknown",
        "720p",
    );
    assert_eq!(
        refused_hello(&fixture, &server, &key, unknown).await,
        close_code::FORBIDDEN
    );
    // And an honest client still gets in.
    let good = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, 600), TITLE, "720p");
    connect(&fixture, &server, &key, good).await.unwrap();
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_hello_timeout() {
    let fixture = fixture();
    let server = start_server(&fixture, None).await;
    let key = SigningKeyPair::from_seed(&[8; 32]);
    let client = client(&key);
    let connection = client
        .endpoint
        .connect_with(
            client.config,
            server.address,
            loaves_wire::identity::SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    let started = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{reason:?}");
}

#[tokio::test]
async fn oversized_and_truncated_requests_reset_only_their_stream() {
    let fixture = fixture();
    let server = start_server(&fixture, None).await;
    let key = SigningKeyPair::from_seed(&[9; 32]);
    let hello = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, 600), TITLE, "720p");
    let peer = connect(&fixture, &server, &key, hello).await.unwrap();
    // A length prefix claiming 1 GiB.
    let (mut send, mut recv) = peer.connection.open_bi().await.unwrap();
    send.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    send.write_all(&[0; 1000]).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .unwrap();
    assert!(read.is_err(), "the server resets the stream: {read:?}");
    // A request that never completes.
    let (mut send, mut recv) = peer.connection.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 50, 1, 2]).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .unwrap();
    assert!(read.is_err(), "timed out and reset: {read:?}");
    peerwire::request_segment(&peer.connection, "720p", 2, None, &limits())
        .await
        .unwrap();
}

#[tokio::test]
async fn slow_reader_is_reset_with_bounded_effort() {
    let fixture = fixture();
    let server = start_server(&fixture, None).await;
    let key = SigningKeyPair::from_seed(&[10; 32]);
    let hello = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, 600), TITLE, "720p");
    // A receive window smaller than the segment: the server must block.
    let small = client_with(
        &key,
        &TransportOptions {
            stream_receive_window: 32 * 1024,
            ..TransportOptions::default()
        },
    );
    let peer = peerwire::connect(
        &small.endpoint,
        server.address,
        small.config,
        &hello,
        &fixture.verifier,
        UnixSeconds::now(),
        &limits(),
    )
    .await
    .unwrap();
    // Ask for a whole segment and never read it.
    let (mut send, _recv) = peer.connection.open_bi().await.unwrap();
    let request = pb::SegmentRequest {
        rendition: "720p".into(),
        sequence: 0,
        range: None,
        ..Default::default()
    };
    loaves_wire::framing::write_message(&mut send, &request, 1024, Duration::from_secs(1))
        .await
        .unwrap();
    send.finish().unwrap();
    let started = Instant::now();
    loop {
        if server
            .handler
            .outcomes
            .lock()
            .unwrap()
            .contains(&Outcome::Failed)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Meanwhile honest requests on the same connection succeed.
    peerwire::request_segment(&peer.connection, "720p", 1, Some(0..100), &limits())
        .await
        .unwrap();
}

#[tokio::test]
async fn have_notices_flow_on_a_unidirectional_stream() {
    let key = SigningKeyPair::from_seed(&[11; 32]);
    let fixture_key = SigningKeyPair::from_seed(&[12; 32]);
    let identity = PeerIdentity::new(&fixture_key).unwrap();
    let config = peerwire::server_config(&identity, &TransportOptions::default()).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let mut have = HaveReceiver::accept(&connection, Limits::default())
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(notice) = have.next(Duration::from_secs(5)).await.unwrap() {
            got.extend(notice.sequences);
        }
        got
    });
    let client = client(&key);
    let connection = client
        .endpoint
        .connect_with(client.config, address, loaves_wire::identity::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let mut sender = HaveSender::open(&connection, Limits::default())
        .await
        .unwrap();
    for sequence in 10..15 {
        sender
            .send(&pb::HaveNotice {
                rendition: "720p".into(),
                sequences: vec![sequence],
            })
            .await
            .unwrap();
    }
    let too_many = pb::HaveNotice {
        rendition: "720p".into(),
        sequences: vec![1; peerwire::MAX_HAVE_SEQUENCES + 1],
    };
    assert!(sender.send(&too_many).await.is_err());
    sender.finish();
    assert_eq!(receiver.await.unwrap(), vec![10, 11, 12, 13, 14]);
}

#[tokio::test]
async fn egress_limit_paces_uploads() {
    let fixture = fixture();
    // 1 MB/s, tiny burst: three 300 kB segments take about 0.9 s.
    let egress = Arc::new(EgressLimiter::new(1_000_000, Duration::from_millis(10)));
    let server = start_server(&fixture, Some(egress)).await;
    let key = SigningKeyPair::from_seed(&[13; 32]);
    let hello = peerwire::viewer_hello(token(&fixture.license, &key, TITLE, 600), TITLE, "720p");
    let peer = connect(&fixture, &server, &key, hello).await.unwrap();
    let started = Instant::now();
    let mut fetches = Vec::new();
    for sequence in 0..3 {
        let connection = peer.connection.clone();
        fetches.push(tokio::spawn(async move {
            peerwire::request_segment(&connection, "720p", sequence, None, &limits()).await
        }));
    }
    for fetch in fetches {
        fetch.await.unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed > Duration::from_millis(700) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}
