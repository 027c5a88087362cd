//! Shared helpers: a tracker on 127.0.0.1 with a test license key, viewers
//! with real tokens and certificates, a tiny HTTP GET.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::token::SessionToken;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::identity::PeerIdentity;
use tracker::client::{ClientEndpoint, ClientError, TrackerConnection};
use tracker::credential::CredentialVerifier;
use tracker::metrics::Metrics;
use tracker::server::{FrontEndOptions, RunningTracker, Shared};
use tracker::stats::StatsLimits;
use tracker::swarm::SwarmConfig;

pub fn license_key() -> SigningKeyPair {
    loaves_testkit::keys::fixed(0x11)
}

pub struct TestTracker {
    pub running: RunningTracker,
    pub http: SocketAddr,
    pub client: ClientEndpoint,
}

impl TestTracker {
    pub async fn start(options: FrontEndOptions) -> Self {
        Self::start_with(options, None).await
    }

    pub async fn start_with(
        options: FrontEndOptions,
        shards: Option<(loaves_proto::shard::ShardMap, String)>,
    ) -> Self {
        let keyring: Keyring = [license_key().verifying_key()].into_iter().collect();
        let skew = options.max_clock_skew_s;
        let shared = Arc::new(Shared::new(
            SwarmConfig::default(),
            StatsLimits::default(),
            options,
            CredentialVerifier::new(keyring, skew),
            shards,
            Metrics::new().unwrap(),
            7,
        ));
        let identity = PeerIdentity::new(&SigningKeyPair::generate().unwrap()).unwrap();
        let running =
            RunningTracker::start("127.0.0.1:0".parse().unwrap(), &identity, shared.clone())
                .unwrap();
        let listener = tracker::http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let http = listener.local_addr().unwrap();
        tokio::spawn(tracker::http::serve(
            listener,
            shared,
            running.shutdown_signal(),
        ));
        let client = ClientEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self {
            running,
            http,
            client,
        }
    }

    /// The local port of the test's client endpoint.
    pub fn client_port(&self) -> u16 {
        self.client.local_addr().unwrap().port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.quic_addr
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        loaves_testkit::http::get(self.http, path).await
    }

    /// The value of the first metric line naming `name` and every label.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        loaves_testkit::metrics::Exposition::new(body).value(name, labels)
    }
}

pub struct Viewer {
    pub key: SigningKeyPair,
    pub identity: PeerIdentity,
    pub region: String,
    pub isp: String,
}

impl Viewer {
    pub fn new(region: &str, isp: &str) -> Self {
        let key = SigningKeyPair::generate().unwrap();
        let identity = PeerIdentity::new(&key).unwrap();
        Self {
            key,
            identity,
            region: region.into(),
            isp: isp.into(),
        }
    }

    pub fn key_bytes(&self) -> Vec<u8> {
        self.key.verifying_key().as_bytes().to_vec()
    }

    pub fn token(&self, title: &str, signer: &SigningKeyPair, expires_in: i64) -> Vec<u8> {
        let now = UnixSeconds::now().0 as i64;
        SessionToken {
            session_id: SessionId::random().unwrap(),
            account: "acct".into(),
            title: title.into(),
            renditions: vec!["720p".into(), "1080p".into()],
            peer_key: self.key.verifying_key(),
            region: self.region.clone(),
            isp: self.isp.clone(),
            not_before: UnixSeconds((now - 7200) as u64),
            expires_at: UnixSeconds((now + expires_in) as u64),
        }
        .sign(signer)
    }

    pub fn hello(&self, title: &str) -> pb::TrackerHello {
        hello_with(self.token(title, &license_key(), 600))
    }

    pub async fn connect(
        &self,
        tracker: &TestTracker,
        title: &str,
    ) -> Result<TrackerConnection, ClientError> {
        tracker
            .client
            .connect(tracker.addr(), &self.identity, self.hello(title))
            .await
    }
}

/// A session opened by hand, for writing frames the client never would:
/// the QUIC connection and its session stream, hello already acknowledged.
pub struct RawSession {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl RawSession {
    pub async fn open(tracker: &TestTracker, viewer: &Viewer, title: &str) -> Self {
        let mut session = Self::without_hello(tracker, viewer).await;
        let hello = pb::TrackerRequest {
            kind: Some(pb::tracker_request::Kind::Hello(viewer.hello(title))),
        };
        session.write(&prost::Message::encode_to_vec(&hello)).await;
        assert!(matches!(
            session.response().await.and_then(|r| r.kind),
            Some(pb::tracker_response::Kind::Ack(_))
        ));
        session
    }

    /// Connected, the session stream open, nothing sent yet.
    pub async fn without_hello(tracker: &TestTracker, viewer: &Viewer) -> Self {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = tracker::client::client_config(&viewer.identity).unwrap();
        let connection = endpoint
            .connect_with(config, tracker.addr(), loaves_wire::identity::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = connection.open_bi().await.unwrap();
        Self {
            endpoint,
            connection,
            send,
            recv,
        }
    }

    /// Writes `payload` as one frame.
    pub async fn write(&mut self, payload: &[u8]) {
        let frame = loaves_wire::framing::encode_frame(payload, u32::MAX as usize).unwrap();
        self.send.write_all(&frame).await.unwrap();
    }

    /// Writes raw bytes (a frame's pieces, a lying prefix).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next response; `None` when the stream ended or failed.
    pub async fn response(&mut self) -> Option<pb::TrackerResponse> {
        loaves_wire::framing::read_message(
            &mut self.recv,
            1 << 20,
            std::time::Duration::from_secs(10),
        )
        .await
        .ok()
        .flatten()
    }

    /// The error code of the next response (panics on anything else).
    pub async fn error_code(&mut self) -> pb::tracker_error::Code {
        match self.response().await.and_then(|r| r.kind) {
            Some(pb::tracker_response::Kind::Error(error)) => {
                pb::tracker_error::Code::try_from(error.code).unwrap()
            }
            other => panic!("expected an error response, got {other:?}"),
        }
    }

    /// Asserts that the next response is the error `code` and that the
    /// tracker then closes the connection with `close`.
    pub async fn refused_then_closed(
        &mut self,
        code: pb::tracker_error::Code,
        close: impl Into<u64>,
    ) {
        assert_eq!(self.error_code().await, code);
        assert_eq!(self.closed_with().await, close.into());
    }

    /// Waits (bounded) for the tracker to close the connection; returns its
    /// application close code.
    pub async fn closed_with(&self) -> u64 {
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.connection.closed())
                .await
                .expect("the tracker closes the connection");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
            other => panic!("expected an application close, got {other:?}"),
        }
    }
}

pub fn hello_with(token: Vec<u8>) -> pb::TrackerHello {
    pb::TrackerHello {
        credential: Some(pb::tracker_hello::Credential::SessionToken(token)),
    }
}

pub fn announce(title: &str, rendition: &str, port: u16) -> pb::Announce {
    loaves_testkit::fixtures::announce(title, rendition, &format!("127.0.0.1:{port}"))
}
