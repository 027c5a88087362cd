//! The peer wire protocol over QUIC, written once for every speaker: viewers
//! (as clients and as upload servers) and edge seeds.
//!
//! The messages are in `schemas/loaves/v1/peer.proto`; this module holds the
//! mechanics around them:
//!
//! - **Hello** ([`accept_hello`], [`client_hello`], [`connect`]): the client
//!   opens the first bidirectional stream and sends a [`pb::PeerHello`] with its
//!   credential (a session token, or a seed credential); the server verifies
//!   it offline ([`CredentialVerifier`]), checks that the key it names is the
//!   key of the connection's TLS certificate and that it covers the swarm's
//!   title (and rendition), and answers with its own hello, which the client
//!   checks the same way. A refused hello closes the connection with an
//!   application code from [`close_code`] and a short reason.
//! - **Requests** ([`request_segment`], [`fetch_segment`], [`serve_requests`]):
//!   one bidirectional stream per request, a [`pb::SegmentRequest`] frame
//!   answered by a [`pb::SegmentResponseHeader`] frame and exactly `length`
//!   raw bytes. The server side validates the rendition against the
//!   credential and the byte range against the segment size *here*, so every
//!   server refuses the same things the same way; what to serve comes from a
//!   [`RequestHandler`].
//! - **HAVE notices** ([`HaveSender`], [`HaveReceiver`]): one unidirectional
//!   stream of [`pb::HaveNotice`] frames per direction.
//!
//! Every frame has a size limit and every read or write a timeout
//! ([`Limits`]); a body write that makes no progress for
//! [`Limits::stall_timeout`], or that runs slower than
//! [`Limits::min_body_rate`], resets the stream, so a reader that never reads
//! holds at most one flow-control window of a shared [`Bytes`] buffer.
//! Bodies are written as slices of the caller's [`Bytes`]: serving a cached
//! segment to a hundred peers copies nothing.

use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ed25519_dalek::VerifyingKey;
use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;

use crate::framing::{self, FrameError};
use crate::identity::{self, PeerIdentity};
use loaves_proto::keys::{Keyring, SigningKeyPair, verifying_key_from_slice};
use loaves_proto::pb::segment_response_header::Status;
use loaves_proto::token::{MAX_TOKEN_LEN, SessionToken, TokenError, TokenVerifier};
use loaves_proto::{ALPN_PEER, UnixSeconds};
use loaves_proto::{
    pb,
    signed::{self, Purpose},
};

/// Version sent in [`pb::PeerHello::protocol_version`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Most sequences one HAVE notice may list.
pub const MAX_HAVE_SEQUENCES: usize = 4096;

/// Application codes for closing a connection.
pub mod close_code {
    /// Normal end.
    pub const DONE: u32 = 0;
    /// No, a bad, or an expired credential, or one naming another key.
    pub const UNAUTHENTICATED: u32 = 0x10;
    /// A valid credential that does not cover the swarm.
    pub const FORBIDDEN: u32 = 0x11;
    /// The peer broke the protocol (no hello, malformed frames).
    pub const PROTOCOL: u32 = 0x12;
    /// The server is at capacity.
    pub const BUSY: u32 = 0x13;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 0x14;
}

/// Application codes for resetting or stopping a stream.
pub mod stream_code {
    /// The transfer was too slow or stalled.
    pub const TIMEOUT: u32 = 1;
    /// The receiver no longer wants the bytes.
    pub const CANCELLED: u32 = 2;
    /// Malformed frames on the stream.
    pub const PROTOCOL: u32 = 3;
}

/// Sizes and timeouts of the protocol. `Default` suits the public Internet.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest hello, request, header or HAVE frame.
    pub max_frame_len: usize,
    /// Time for the whole hello exchange.
    pub hello_timeout: Duration,
    /// Time for the client to send its request once it opened a stream.
    pub request_timeout: Duration,
    /// Time for the server to answer with a header.
    pub header_timeout: Duration,
    /// Longest time a body read or write may make no progress.
    pub stall_timeout: Duration,
    /// Slowest acceptable body transfer, bytes per second: a body of `n`
    /// bytes must complete within `stall_timeout + n / min_body_rate`.
    pub min_body_rate: u64,
    /// Largest segment a client accepts.
    pub max_segment_len: u64,
    /// Size of the slices a body is written in (and paced by).
    pub write_chunk_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: framing::DEFAULT_MAX_FRAME_LEN,
            hello_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(5),
            min_body_rate: 64 * 1024,
            max_segment_len: 64 << 20,
            write_chunk_len: 64 * 1024,
        }
    }
}

impl Limits {
    /// Deadline for moving a body of `len` bytes.
    pub fn body_deadline(&self, len: u64) -> Duration {
        let rate = self.min_body_rate.max(1);
        self.stall_timeout + Duration::from_millis(len.saturating_mul(1000) / rate)
    }
}

/// Why a hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The credential did not verify (signature, validity, encoding).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The credential names another key than the TLS certificate's.
    #[error("credential key does not match the TLS certificate key")]
    KeyMismatch,
    /// The hello carried no credential.
    #[error("hello without a credential")]
    Missing,
    /// The hello names no swarm, or an empty title.
    #[error("hello without a swarm")]
    NoSwarm,
    /// The credential does not cover the swarm's title or rendition.
    #[error("credential does not cover {0}")]
    NotCovered(String),
    /// The server does not serve the title.
    #[error("title not served here")]
    UnknownTitle,
    /// Unsupported protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u32),
}

impl HelloError {
    /// A short, stable label for metrics and close reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(error) => error.reason(),
            Self::KeyMismatch => "key_mismatch",
            Self::Missing => "missing",
            Self::NoSwarm => "no_swarm",
            Self::NotCovered(_) => "not_covered",
            Self::UnknownTitle => "unknown_title",
            Self::Version(_) => "version",
        }
    }

    /// The close code this refusal is sent with.
    pub fn close_code(&self) -> u32 {
        match self {
            Self::NotCovered(_) | Self::UnknownTitle => close_code::FORBIDDEN,
            Self::NoSwarm | Self::Version(_) => close_code::PROTOCOL,
            _ => close_code::UNAUTHENTICATED,
        }
    }
}

/// Why a peer wire operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerWireError {
    /// The endpoint or TLS configuration could not be built.
    #[error("setup: {0}")]
    Setup(String),
    /// Connecting failed before the handshake.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be read or written (size, truncation, timeout).
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer's hello was refused by us.
    #[error("hello refused: {0}")]
    Hello(#[from] HelloError),
    /// The connection presents no usable certificate.
    #[error("certificate: {0}")]
    Certificate(#[from] identity::IdentityError),
    /// The server answered the request with a non-OK status.
    #[error("refused with {status:?}: {message}")]
    Refused {
        /// Status of the header.
        status: Status,
        /// Server's message.
        message: String,
    },
    /// The peer broke the protocol (inconsistent header, missing hello...).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A body transfer stalled or was too slow.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A stream was reset, stopped or failed.
    #[error("stream: {0}")]
    Stream(String),
}

impl PeerWireError {
    /// The refusal status, when the server refused the request.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The application close code, when the peer closed the connection.
    pub fn close_code(&self) -> Option<u32> {
        match self {
            Self::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
                u32::try_from(close.error_code.into_inner()).ok()
            }
            _ => None,
        }
    }
}

/// A seed's verified credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedCredential {
    /// Operator-chosen name.
    pub seed_name: String,
    /// Key of the seed's QUIC certificate.
    pub peer_key: VerifyingKey,
    /// Region.
    pub region: String,
    /// ISP.
    pub isp: String,
    /// Titles the seed may serve ("*" = all).
    pub titles: Vec<String>,
    /// Start of validity.
    pub not_before: UnixSeconds,
    /// End of validity.
    pub expires_at: UnixSeconds,
}

impl SeedCredential {
    /// Whether the credential covers `title`.
    pub fn allows_title(&self, title: &str) -> bool {
        self.titles.iter().any(|t| t == "*" || t == title)
    }
}

/// Signs a seed credential (operators' tooling and tests).
pub fn sign_seed_credential(body: &pb::SeedCredentialBody, key: &SigningKeyPair) -> Vec<u8> {
    signed::sign(key, Purpose::SeedCredential, body.encode_to_vec()).encode_to_vec()
}

/// What the other side of a connection proved in its hello.
#[derive(Debug, Clone)]
pub enum PeerCredential {
    /// A viewer with a session token.
    Viewer(SessionToken),
    /// An edge seed.
    Seed(SeedCredential),
}

impl PeerCredential {
    /// The key the credential names.
    pub fn peer_key(&self) -> &VerifyingKey {
        match self {
            Self::Viewer(token) => &token.peer_key,
            Self::Seed(seed) => &seed.peer_key,
        }
    }

    /// End of validity.
    pub fn expires_at(&self) -> UnixSeconds {
        match self {
            Self::Viewer(token) => token.expires_at,
            Self::Seed(seed) => seed.expires_at,
        }
    }

    /// Whether the credential covers `title`.
    pub fn allows_title(&self, title: &str) -> bool {
        match self {
            Self::Viewer(token) => token.title == title,
            Self::Seed(seed) => seed.allows_title(title),
        }
    }

    /// Whether the credential lets its holder fetch `rendition` of `title`.
    /// Seeds may fetch every rendition of their titles.
    pub fn allows_rendition(&self, title: &str, rendition: &str) -> bool {
        match self {
            Self::Viewer(token) => token.title == title && token.allows_rendition(rendition),
            Self::Seed(_) => self.allows_title(title),
        }
    }

    /// Region hint.
    pub fn region(&self) -> &str {
        match self {
            Self::Viewer(token) => &token.region,
            Self::Seed(seed) => &seed.region,
        }
    }

    /// ISP hint.
    pub fn isp(&self) -> &str {
        match self {
            Self::Viewer(token) => &token.isp,
            Self::Seed(seed) => &seed.isp,
        }
    }
}

/// Verifies hello credentials offline against the license server's keys.
#[derive(Debug, Clone)]
pub struct CredentialVerifier {
    tokens: TokenVerifier,
    keyring: Keyring,
    max_clock_skew_s: u64,
}

impl CredentialVerifier {
    /// Trusts `keyring` (the license server's public keys).
    pub fn new(keyring: Keyring, max_clock_skew_s: u64) -> Self {
        Self {
            tokens: TokenVerifier::new(keyring.clone()).with_max_clock_skew(max_clock_skew_s),
            keyring,
            max_clock_skew_s,
        }
    }

    /// Verifies `hello`: credential valid at `now`, naming `certificate_key`,
    /// covering the hello's swarm (title, and rendition when named).
    pub fn verify_hello(
        &self,
        hello: &pb::PeerHello,
        certificate_key: &VerifyingKey,
        now: UnixSeconds,
    ) -> Result<PeerCredential, HelloError> {
        use pb::peer_hello::Credential as Wire;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(HelloError::Version(hello.protocol_version));
        }
        let credential = match &hello.credential {
            Some(Wire::SessionToken(bytes)) => {
                PeerCredential::Viewer(self.tokens.verify_any_title(bytes, now)?)
            }
            Some(Wire::SeedCredential(bytes)) => {
                PeerCredential::Seed(self.verify_seed(bytes, now)?)
            }
            None => return Err(HelloError::Missing),
        };
        if credential.peer_key() != certificate_key {
            return Err(HelloError::KeyMismatch);
        }
        let swarm = hello.swarm.as_ref().ok_or(HelloError::NoSwarm)?;
        if swarm.title.is_empty() {
            return Err(HelloError::NoSwarm);
        }
        if !credential.allows_title(&swarm.title) {
            return Err(HelloError::NotCovered(format!("title {:?}", swarm.title)));
        }
        if !swarm.rendition.is_empty()
            && !credential.allows_rendition(&swarm.title, &swarm.rendition)
        {
            return Err(HelloError::NotCovered(format!(
                "rendition {:?}",
                swarm.rendition
            )));
        }
        Ok(credential)
    }

    /// Verifies a session token presented on an open connection to replace
    /// `current` (the requester renewed its license): valid at `now`, naming
    /// the same peer key (so the connection's certificate) and the
    /// connection's `title`. Seeds do not refresh: their credential is long
    /// lived and a new one takes a new connection.
    pub fn verify_refresh(
        &self,
        token: &[u8],
        current: &PeerCredential,
        title: &str,
        now: UnixSeconds,
    ) -> Result<PeerCredential, HelloError> {
        let PeerCredential::Viewer(_) = current else {
            return Err(HelloError::NotCovered(
                "refresh of a seed credential".into(),
            ));
        };
        let refreshed = PeerCredential::Viewer(self.tokens.verify(token, now, title)?);
        if refreshed.peer_key() != current.peer_key() {
            return Err(HelloError::KeyMismatch);
        }
        Ok(refreshed)
    }

    /// Whether `credential` is still valid at `now` (connections outlive
    /// short tokens: every request re-checks).
    pub fn still_valid(
        &self,
        credential: &PeerCredential,
        now: UnixSeconds,
    ) -> Result<(), TokenError> {
        let expires_at = credential.expires_at();
        if now.0 > expires_at.0.saturating_add(self.max_clock_skew_s) {
            return Err(TokenError::Expired { expires_at, now });
        }
        Ok(())
    }

    /// Verifies a seed credential (signed for [`Purpose::SeedCredential`]).
    pub fn verify_seed(
        &self,
        bytes: &[u8],
        now: UnixSeconds,
    ) -> Result<SeedCredential, TokenError> {
        let (_, body) = signed::open::<pb::SeedCredentialBody>(
            &self.keyring,
            Purpose::SeedCredential,
            bytes,
            MAX_TOKEN_LEN,
        )?;
        let peer_key = verifying_key_from_slice(&body.peer_public_key)
            .map_err(|_| TokenError::InvalidField("peer_public_key"))?;
        if body.expires_at <= body.not_before {
            return Err(TokenError::InvalidField("expires_at"));
        }
        if body.titles.is_empty() {
            return Err(TokenError::InvalidField("titles"));
        }
        if now.0.saturating_add(self.max_clock_skew_s) < body.not_before {
            return Err(TokenError::NotYetValid {
                not_before: UnixSeconds(body.not_before),
                now,
            });
        }
        if now.0 > body.expires_at.saturating_add(self.max_clock_skew_s) {
            return Err(TokenError::Expired {
                expires_at: UnixSeconds(body.expires_at),
                now,
            });
        }
        Ok(SeedCredential {
            seed_name: body.seed_name,
            peer_key,
            region: body.region,
            isp: body.isp,
            titles: body.titles,
            not_before: UnixSeconds(body.not_before),
            expires_at: UnixSeconds(body.expires_at),
        })
    }
}

/// Transport settings of peer wire endpoints.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Concurrent requests (bidirectional streams) per connection.
    pub max_concurrent_requests: u32,
    /// A connection idle for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval (clients).
    pub keep_alive: Duration,
    /// Unacknowledged bytes one connection may have in flight (server
    /// memory per connection is bounded by it).
    pub send_window: u64,
    /// Receive window per stream (clients: bytes in flight per request).
    pub stream_receive_window: u32,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 16,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            send_window: 8 << 20,
            stream_receive_window: 4 << 20,
        }
    }
}

fn transport(options: &TransportOptions) -> Result<quinn::TransportConfig, PeerWireError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(options.idle_timeout)
        .map_err(|e| PeerWireError::Setup(e.to_string()))?;
    transport
        .max_concurrent_bidi_streams(options.max_concurrent_requests.into())
        .max_concurrent_uni_streams(2u8.into())
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(options.keep_alive))
        .send_window(options.send_window)
        .stream_receive_window(options.stream_receive_window.into())
        .receive_window(
            (u64::from(options.stream_receive_window) * 4)
                .min(u64::from(u32::MAX))
                .try_into()
                .unwrap_or(quinn::VarInt::from_u32(u32::MAX)),
        );
    Ok(transport)
}

/// A quinn server configuration for the peer protocol: mutual TLS with
/// `identity`, ALPN [`ALPN_PEER`].
pub fn server_config(
    identity: &PeerIdentity,
    options: &TransportOptions,
) -> Result<quinn::ServerConfig, PeerWireError> {
    let tls = identity
        .server_config(ALPN_PEER)
        .map_err(|e| PeerWireError::Setup(e.to_string()))?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| PeerWireError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(options)?));
    Ok(config)
}

/// A quinn client configuration for the peer protocol presenting `identity`.
pub fn client_config(
    identity: &PeerIdentity,
    options: &TransportOptions,
) -> Result<quinn::ClientConfig, PeerWireError> {
    let tls = identity
        .client_config(ALPN_PEER)
        .map_err(|e| PeerWireError::Setup(e.to_string()))?;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| PeerWireError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(options)?));
    Ok(config)
}

/// The Ed25519 key of the connection's TLS certificate.
pub fn connection_peer_key(connection: &quinn::Connection) -> Result<VerifyingKey, PeerWireError> {
    let chain = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(identity::IdentityError::NoCertificate)?;
    Ok(identity::peer_public_key(&chain)?)
}

/// The other side of an authenticated connection.
#[derive(Debug, Clone)]
pub struct AuthenticatedPeer {
    /// Its verified credential.
    pub credential: PeerCredential,
    /// Its hello as received (swarm, holdings).
    pub hello: pb::PeerHello,
}

impl AuthenticatedPeer {
    /// The swarm's title from the hello.
    pub fn title(&self) -> &str {
        self.hello.swarm.as_ref().map_or("", |s| s.title.as_str())
    }
}

fn refuse(connection: &quinn::Connection, error: &HelloError) {
    connection.close(error.close_code().into(), error.reason().as_bytes());
}

/// Server side of the hello: reads the client's hello from the first
/// bidirectional stream, verifies it (`serves_title` says whether this
/// server serves the swarm's title) and answers with `own` (whose swarm is
/// set to the client's). Refusals close the connection.
pub async fn accept_hello(
    connection: &quinn::Connection,
    verifier: &CredentialVerifier,
    own: &pb::PeerHello,
    serves_title: impl Fn(&str) -> bool,
    now: UnixSeconds,
    limits: &Limits,
) -> Result<AuthenticatedPeer, PeerWireError> {
    let certificate_key = match connection_peer_key(connection) {
        Ok(key) => key,
        Err(error) => {
            connection.close(close_code::UNAUTHENTICATED.into(), b"certificate");
            return Err(error);
        }
    };
    let exchange = async {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let hello: pb::PeerHello =
            framing::read_message(&mut recv, limits.max_frame_len, limits.hello_timeout)
                .await?
                .ok_or(PeerWireError::Protocol("stream ended before the hello"))?;
        let credential = match verifier.verify_hello(&hello, &certificate_key, now) {
            Ok(credential)
                if serves_title(hello.swarm.as_ref().map_or("", |s| s.title.as_str())) =>
            {
                credential
            }
            Ok(_) => return Err(HelloError::UnknownTitle.into()),
            Err(error) => return Err(error.into()),
        };
        let mut answer = own.clone();
        answer.protocol_version = PROTOCOL_VERSION;
        answer.swarm = hello.swarm.clone();
        // Where this side sees the connection come from: the connecting
        // viewer's public mapping, one more observation of its NAT.
        answer.observed_address = connection.remote_address().to_string();
        framing::write_message(
            &mut send,
            &answer,
            limits.max_frame_len,
            limits.hello_timeout,
        )
        .await?;
        let _ = send.finish();
        Ok(AuthenticatedPeer { credential, hello })
    };
    let result = match tokio::time::timeout(limits.hello_timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PeerWireError::Frame(FrameError::Timeout("hello"))),
    };
    match &result {
        Ok(_) => {}
        Err(PeerWireError::Hello(error)) => refuse(connection, error),
        Err(PeerWireError::Connection(_)) => {}
        Err(_) => connection.close(close_code::PROTOCOL.into(), b"hello"),
    }
    result
}

/// Client side of the hello: sends `own` on a fresh stream, reads the
/// server's hello and verifies it covers `own`'s swarm title.
pub async fn client_hello(
    connection: &quinn::Connection,
    own: &pb::PeerHello,
    verifier: &CredentialVerifier,
    now: UnixSeconds,
    limits: &Limits,
) -> Result<AuthenticatedPeer, PeerWireError> {
    let certificate_key = connection_peer_key(connection)?;
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        let mut hello = own.clone();
        hello.protocol_version = PROTOCOL_VERSION;
        framing::write_message(
            &mut send,
            &hello,
            limits.max_frame_len,
            limits.hello_timeout,
        )
        .await?;
        let _ = send.finish();
        let answer: Option<pb::PeerHello> =
            framing::read_message(&mut recv, limits.max_frame_len, limits.hello_timeout).await?;
        let Some(mut answer) = answer else {
            // The server closed instead of answering: surface its reason.
            let reason = connection.closed().await;
            return Err(PeerWireError::Connection(reason));
        };
        // The server echoes our swarm; check its credential covers our title.
        answer.swarm = own.swarm.clone();
        let credential = verifier.verify_hello(&answer, &certificate_key, now)?;
        Ok(AuthenticatedPeer {
            credential,
            hello: answer,
        })
    };
    let result = match tokio::time::timeout(limits.hello_timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PeerWireError::Frame(FrameError::Timeout("hello"))),
    };
    match result {
        // A read that failed because the server closed: report the close.
        Err(PeerWireError::Frame(FrameError::Io(_))) => match connection.close_reason() {
            Some(reason) => Err(PeerWireError::Connection(reason)),
            None => Err(PeerWireError::Protocol("hello stream failed")),
        },
        Err(PeerWireError::Hello(error)) => {
            refuse(connection, &error);
            Err(PeerWireError::Hello(error))
        }
        other => other,
    }
}

/// An authenticated client connection.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// The server and what it proved.
    pub remote: AuthenticatedPeer,
}

/// Connects to `address` as `identity` and runs the hello.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    address: std::net::SocketAddr,
    config: quinn::ClientConfig,
    own: &pb::PeerHello,
    verifier: &CredentialVerifier,
    now: UnixSeconds,
    limits: &Limits,
) -> Result<PeerConnection, PeerWireError> {
    let connecting = endpoint
        .connect_with(config, address, identity::SERVER_NAME)
        .map_err(|e| PeerWireError::Connect(e.to_string()))?;
    let connection = tokio::time::timeout(limits.hello_timeout, connecting)
        .await
        .map_err(|_| PeerWireError::Timeout("handshake"))??;
    let remote = client_hello(&connection, own, verifier, now, limits).await?;
    Ok(PeerConnection { connection, remote })
}

/// A hello for a viewer holding `token`, in `swarm`.
pub fn viewer_hello(token: Vec<u8>, title: &str, rendition: &str) -> pb::PeerHello {
    pb::PeerHello {
        protocol_version: PROTOCOL_VERSION,
        credential: Some(pb::peer_hello::Credential::SessionToken(token)),
        swarm: Some(pb::SwarmId {
            title: title.to_owned(),
            rendition: rendition.to_owned(),
        }),
        holdings: None,
        observed_address: String::new(),
    }
}

/// A hello for a seed holding `credential`.
pub fn seed_hello(credential: Vec<u8>) -> pb::PeerHello {
    pb::PeerHello {
        protocol_version: PROTOCOL_VERSION,
        credential: Some(pb::peer_hello::Credential::SeedCredential(credential)),
        swarm: None,
        holdings: None,
        observed_address: String::new(),
    }
}

/// A segment, or part of one, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReply {
    /// Size of the whole segment.
    pub total_size: u64,
    /// Offset of `bytes` in the segment.
    pub offset: u64,
    /// The bytes.
    pub bytes: Bytes,
}

/// A request for segment `sequence` of `rendition` (whole, or `range` of
/// it), carrying `refreshed_token` when the requester's session token is
/// newer than the one it presented on the connection.
pub fn segment_request(
    rendition: &str,
    sequence: u64,
    range: Option<Range<u64>>,
    refreshed_token: Option<Vec<u8>>,
) -> pb::SegmentRequest {
    pb::SegmentRequest {
        rendition: rendition.to_owned(),
        sequence,
        range: range.map(|r| pb::ByteRange {
            start: r.start,
            end: r.end,
        }),
        session_token: refreshed_token.unwrap_or_default(),
    }
}

/// Requests segment `sequence` of `rendition` (whole, or `range` of it) and
/// returns its bytes. The caller verifies them against the manifest.
pub async fn request_segment(
    connection: &quinn::Connection,
    rendition: &str,
    sequence: u64,
    range: Option<Range<u64>>,
    limits: &Limits,
) -> Result<Bytes, PeerWireError> {
    let asked = segment_request(rendition, sequence, range, None);
    request(connection, &asked, limits).await
}

/// Sends `request` and returns the bytes it asked for.
pub async fn request(
    connection: &quinn::Connection,
    request: &pb::SegmentRequest,
    limits: &Limits,
) -> Result<Bytes, PeerWireError> {
    Ok(fetch(connection, request, limits).await?.bytes)
}

/// Like [`request_segment`], with the header's sizes.
pub async fn fetch_segment(
    connection: &quinn::Connection,
    rendition: &str,
    sequence: u64,
    range: Option<Range<u64>>,
    limits: &Limits,
) -> Result<SegmentReply, PeerWireError> {
    fetch(
        connection,
        &segment_request(rendition, sequence, range, None),
        limits,
    )
    .await
}

/// Sends `request`; the reply with the header's sizes.
pub async fn fetch(
    connection: &quinn::Connection,
    request: &pb::SegmentRequest,
    limits: &Limits,
) -> Result<SegmentReply, PeerWireError> {
    let range = request.range.as_ref().map(|r| r.start..r.end);
    if let Some(range) = &range
        && (range.start >= range.end || range.end - range.start > limits.max_segment_len)
    {
        return Err(PeerWireError::Protocol(
            "empty or oversized range requested",
        ));
    }
    let (mut send, mut recv) = connection.open_bi().await?;
    framing::write_message(
        &mut send,
        request,
        limits.max_frame_len,
        limits.request_timeout,
    )
    .await?;
    let _ = send.finish();
    let header: pb::SegmentResponseHeader =
        framing::read_message(&mut recv, limits.max_frame_len, limits.header_timeout)
            .await?
            .ok_or(PeerWireError::Protocol("stream ended before the header"))?;
    let status = Status::try_from(header.status).unwrap_or(Status::Unspecified);
    if status != Status::Ok {
        let _ = recv.stop(stream_code::CANCELLED.into());
        let mut message = header.message;
        message.truncate(256);
        return Err(PeerWireError::Refused { status, message });
    }
    // Parse, don't validate: the header must describe exactly what we asked.
    let expected = match &range {
        Some(range) => range.clone(),
        None => 0..header.total_size,
    };
    if header.total_size > limits.max_segment_len
        || header.offset != expected.start
        || header.length != expected.end - expected.start
        || expected.end > header.total_size
    {
        let _ = recv.stop(stream_code::PROTOCOL.into());
        return Err(PeerWireError::Protocol("header does not match the request"));
    }
    let length = usize::try_from(header.length)
        .map_err(|_| PeerWireError::Protocol("length does not fit in memory"))?;
    let bytes = read_body(&mut recv, length, limits).await?;
    Ok(SegmentReply {
        total_size: header.total_size,
        offset: header.offset,
        bytes,
    })
}

async fn read_body(
    recv: &mut quinn::RecvStream,
    length: usize,
    limits: &Limits,
) -> Result<Bytes, PeerWireError> {
    let deadline = tokio::time::Instant::now() + limits.body_deadline(length as u64);
    let mut body = BytesMut::with_capacity(length);
    while body.len() < length {
        let wanted = length - body.len();
        let next = tokio::time::timeout(limits.stall_timeout, recv.read_chunk(wanted, true));
        let chunk = match tokio::time::timeout_at(deadline, next).await {
            Ok(Ok(result)) => result.map_err(|e| PeerWireError::Stream(e.to_string()))?,
            Ok(Err(_)) | Err(_) => {
                let _ = recv.stop(stream_code::TIMEOUT.into());
                return Err(PeerWireError::Timeout("body read"));
            }
        };
        match chunk {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(PeerWireError::Protocol("body shorter than announced")),
        }
    }
    Ok(body.freeze())
}

/// What a [`RequestHandler`] answers.
#[derive(Debug)]
pub enum Reply {
    /// The whole segment; [`serve_requests`] cuts the requested range.
    Segment {
        /// The segment's exact bytes.
        bytes: Bytes,
        /// Held until the transfer ends (an upload slot, for instance).
        guard: Option<UploadGuard>,
    },
    /// A refusal.
    Refuse {
        /// NOT_FOUND, BUSY, FORBIDDEN, INTERNAL...
        status: Status,
        /// A short message for the peer's logs.
        message: String,
    },
}

/// Anything held for the duration of one upload, released on drop.
pub struct UploadGuard(pub Box<dyn Send + Sync>);

impl std::fmt::Debug for UploadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadGuard")
    }
}

/// How one request ended, for the handler's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `bytes` body bytes were written and the stream finished.
    Served {
        /// Body bytes written.
        bytes: u64,
    },
    /// Answered with a non-OK status.
    Refused(Status),
    /// The transfer failed (reset, stall, too slow, connection lost).
    Failed,
}

/// Where a server's segments come from.
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers `request` from `peer`, whose credential is known to cover
    /// `request.rendition`.
    fn handle(
        &self,
        peer: &AuthenticatedPeer,
        request: &pb::SegmentRequest,
    ) -> impl Future<Output = Reply> + Send;

    /// Called once per request when it is over.
    fn finished(
        &self,
        _peer: &AuthenticatedPeer,
        _request: &pb::SegmentRequest,
        _outcome: Outcome,
    ) {
    }
}

/// The byte range `requested` resolves to in a segment of `total` bytes, or
/// `None` when it is empty or out of bounds.
pub fn resolve_range(requested: Option<&pb::ByteRange>, total: u64) -> Option<Range<u64>> {
    match requested {
        None => Some(0..total),
        Some(range) if range.start < range.end && range.end <= total => {
            Some(range.start..range.end)
        }
        Some(_) => None,
    }
}

/// Serves request streams on an authenticated connection until the peer
/// goes away or `stop` completes; then waits for the requests in flight
/// (each bounded by its timeouts). Concurrency per connection is bounded by
/// the transport's stream limit.
pub async fn serve_requests<H: RequestHandler>(
    connection: quinn::Connection,
    peer: Arc<AuthenticatedPeer>,
    handler: Arc<H>,
    verifier: Arc<CredentialVerifier>,
    limits: Arc<Limits>,
    egress: Option<Arc<EgressLimiter>>,
    stop: impl Future<Output = ()>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    // The credential in force on this connection: the hello's, until a
    // request carries a newer token (see `pb::SegmentRequest`).
    let peer = Arc::new(Mutex::new(peer));
    loop {
        let streams = tokio::select! {
            streams = connection.accept_bi() => streams,
            () = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Ok((send, recv)) = streams else { break };
        let peer = peer.clone();
        let handler = handler.clone();
        let verifier = verifier.clone();
        let limits = limits.clone();
        let egress = egress.clone();
        tasks.spawn(async move {
            serve_one(
                send,
                recv,
                &peer,
                &*handler,
                &verifier,
                &limits,
                egress.as_deref(),
            )
            .await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The credential of a connection, replaced when a request refreshes it.
type ConnectionPeer = Mutex<Arc<AuthenticatedPeer>>;

/// Applies a refreshed token carried by `request`, if any; the peer to
/// serve the request for, or why it is refused.
fn refreshed_peer(
    peer: &ConnectionPeer,
    request: &pb::SegmentRequest,
    verifier: &CredentialVerifier,
    now: UnixSeconds,
) -> Result<Arc<AuthenticatedPeer>, Arc<AuthenticatedPeer>> {
    let current = peer.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if request.session_token.is_empty() {
        return Ok(current);
    }
    let refreshed = verifier
        .verify_refresh(
            &request.session_token,
            &current.credential,
            current.title(),
            now,
        )
        .map_err(|_| current.clone())?;
    let next = Arc::new(AuthenticatedPeer {
        credential: refreshed,
        hello: current.hello.clone(),
    });
    *peer.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
    Ok(next)
}

fn header(status: Status, message: &str) -> pb::SegmentResponseHeader {
    pb::SegmentResponseHeader {
        status: status as i32,
        message: message.to_owned(),
        ..Default::default()
    }
}

async fn serve_one<H: RequestHandler>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: &ConnectionPeer,
    handler: &H,
    verifier: &CredentialVerifier,
    limits: &Limits,
    egress: Option<&EgressLimiter>,
) {
    let request: pb::SegmentRequest = match framing::read_message(
        &mut recv,
        limits.max_frame_len,
        limits.request_timeout,
    )
    .await
    {
        Ok(Some(request)) => request,
        Ok(None) | Err(_) => {
            let _ = recv.stop(stream_code::PROTOCOL.into());
            let _ = send.reset(stream_code::PROTOCOL.into());
            return;
        }
    };
    let now = UnixSeconds::now();
    let peer = match refreshed_peer(peer, &request, verifier, now) {
        Ok(peer) => peer,
        Err(current) => {
            let refused = header(Status::Forbidden, "refreshed session token refused");
            let outcome = match write_header(&mut send, &refused, limits).await {
                Ok(()) => Outcome::Refused(Status::Forbidden),
                Err(_) => Outcome::Failed,
            };
            handler.finished(&current, &request, outcome);
            return;
        }
    };
    let peer = &*peer;
    let refusal = if verifier.still_valid(&peer.credential, now).is_err() {
        Some((Status::Forbidden, "credential expired"))
    } else if !peer
        .credential
        .allows_rendition(peer.title(), &request.rendition)
    {
        Some((Status::Forbidden, "rendition not covered by the credential"))
    } else {
        None
    };
    let reply = match refusal {
        Some((status, message)) => Reply::Refuse {
            status,
            message: message.to_owned(),
        },
        None => handler.handle(peer, &request).await,
    };
    let outcome = match reply {
        Reply::Refuse { status, message } => {
            match write_header(&mut send, &header(status, &message), limits).await {
                Ok(()) => Outcome::Refused(status),
                Err(_) => Outcome::Failed,
            }
        }
        Reply::Segment { bytes, guard } => {
            let total = bytes.len() as u64;
            match resolve_range(request.range.as_ref(), total) {
                None => {
                    let mut refused = header(Status::BadRange, "range outside the segment");
                    refused.total_size = total;
                    match write_header(&mut send, &refused, limits).await {
                        Ok(()) => Outcome::Refused(Status::BadRange),
                        Err(_) => Outcome::Failed,
                    }
                }
                Some(range) => {
                    let outcome = write_segment(&mut send, &bytes, range, limits, egress).await;
                    drop(guard);
                    outcome
                }
            }
        }
    };
    handler.finished(peer, &request, outcome);
}

async fn write_header(
    send: &mut quinn::SendStream,
    header: &pb::SegmentResponseHeader,
    limits: &Limits,
) -> Result<(), PeerWireError> {
    framing::write_message(send, header, limits.max_frame_len, limits.request_timeout).await?;
    send.finish()
        .map_err(|e| PeerWireError::Stream(e.to_string()))?;
    // Delivered before the stream (and maybe the connection) goes away.
    let _ = tokio::time::timeout(limits.request_timeout, send.stopped()).await;
    Ok(())
}

async fn write_segment(
    send: &mut quinn::SendStream,
    segment: &Bytes,
    range: Range<u64>,
    limits: &Limits,
    egress: Option<&EgressLimiter>,
) -> Outcome {
    // `range` is within `segment`, whose length fits in usize.
    let (start, end) = (range.start as usize, range.end as usize);
    let ok = pb::SegmentResponseHeader {
        status: Status::Ok as i32,
        total_size: segment.len() as u64,
        offset: range.start,
        length: range.end - range.start,
        message: String::new(),
    };
    let deadline = Instant::now() + limits.body_deadline(ok.length);
    let header = match framing::encode_message(&ok, limits.max_frame_len) {
        Ok(frame) => Bytes::from(frame),
        Err(_) => return Outcome::Failed,
    };
    let mut pieces = std::iter::once(header).chain(
        (start..end)
            .step_by(limits.write_chunk_len.max(1))
            .map(|from| segment.slice(from..(from + limits.write_chunk_len.max(1)).min(end))),
    );
    let mut paused = Duration::ZERO;
    let mut written = 0u64;
    let mut first = true;
    for piece in &mut pieces {
        if !first && let Some(egress) = egress {
            let waited = Instant::now();
            egress.acquire(piece.len() as u64).await;
            paused += waited.elapsed();
        }
        let remaining = (deadline + paused).saturating_duration_since(Instant::now());
        let len = piece.len() as u64;
        match tokio::time::timeout(remaining.min(limits.stall_timeout), send.write_chunk(piece))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Outcome::Failed,
            Err(_) => {
                let _ = send.reset(stream_code::TIMEOUT.into());
                return Outcome::Failed;
            }
        }
        if !first {
            written += len;
        }
        first = false;
    }
    if send.finish().is_err() {
        return Outcome::Failed;
    }
    // Wait until the peer acknowledged everything (bounded): the upload slot
    // stays held while the bytes are in flight, and a connection closed right
    // after (drain) does not discard them.
    let remaining = (deadline + paused).saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining.max(limits.stall_timeout), send.stopped()).await {
        Ok(Ok(None)) => Outcome::Served { bytes: written },
        _ => Outcome::Failed,
    }
}

/// A token bucket for upload bandwidth, shared by every connection of a
/// server. Callers are served in order of arrival (a virtual clock), so a
/// flood of requests cannot starve one transfer; [`Self::backlog`] tells how
/// far behind the bucket is, so servers can answer BUSY instead of queueing.
#[derive(Debug)]
pub struct EgressLimiter {
    bytes_per_second: u64,
    burst: Duration,
    /// Theoretical time at which everything reserved so far has been sent.
    next_free: Mutex<Instant>,
}

impl EgressLimiter {
    /// A limiter for `bytes_per_second`, allowing bursts of `burst` worth of
    /// bytes.
    pub fn new(bytes_per_second: u64, burst: Duration) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            burst,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u64 {
        self.bytes_per_second
    }

    fn cost(&self, bytes: u64) -> Duration {
        Duration::from_nanos(
            (u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second))
                .min(u128::from(u64::MAX)) as u64,
        )
    }

    /// How long a new reservation would wait now.
    pub fn backlog(&self) -> Duration {
        let next_free = *self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        next_free.saturating_duration_since(Instant::now() + self.burst)
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut next_free = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*next_free).max(now);
            *next_free = start + self.cost(bytes);
            next_free.saturating_duration_since(now + self.burst)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Sends HAVE notices on a unidirectional stream.
#[derive(Debug)]
pub struct HaveSender {
    send: quinn::SendStream,
    limits: Limits,
}

impl HaveSender {
    /// Opens the stream.
    pub async fn open(
        connection: &quinn::Connection,
        limits: Limits,
    ) -> Result<Self, PeerWireError> {
        let send = tokio::time::timeout(limits.request_timeout, connection.open_uni())
            .await
            .map_err(|_| PeerWireError::Timeout("opening the HAVE stream"))??;
        Ok(Self { send, limits })
    }

    /// Sends one notice (at most [`MAX_HAVE_SEQUENCES`] sequences). A peer
    /// that does not read its HAVE stream makes this time out.
    pub async fn send(&mut self, notice: &pb::HaveNotice) -> Result<(), PeerWireError> {
        if notice.sequences.len() > MAX_HAVE_SEQUENCES {
            return Err(PeerWireError::Protocol("too many sequences in one notice"));
        }
        framing::write_message(
            &mut self.send,
            notice,
            self.limits.max_frame_len,
            self.limits.stall_timeout,
        )
        .await?;
        Ok(())
    }

    /// Ends the stream.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// Receives HAVE notices from a peer's unidirectional stream.
#[derive(Debug)]
pub struct HaveReceiver {
    recv: quinn::RecvStream,
    limits: Limits,
}

impl HaveReceiver {
    /// Waits for the peer to open its HAVE stream.
    pub async fn accept(
        connection: &quinn::Connection,
        limits: Limits,
    ) -> Result<Self, PeerWireError> {
        let recv = connection.accept_uni().await?;
        Ok(Self { recv, limits })
    }

    /// The next notice; `Ok(None)` when the stream ended. Waits at most
    /// `idle` for it.
    pub async fn next(&mut self, idle: Duration) -> Result<Option<pb::HaveNotice>, PeerWireError> {
        let notice: Option<pb::HaveNotice> =
            framing::read_message(&mut self.recv, self.limits.max_frame_len, idle).await?;
        match notice {
            Some(notice) if notice.sequences.len() > MAX_HAVE_SEQUENCES => {
                let _ = self.recv.stop(stream_code::PROTOCOL.into());
                Err(PeerWireError::Protocol("too many sequences in one notice"))
            }
            other => Ok(other),
        }
    }
}
