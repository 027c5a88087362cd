//! A small tracker client over QUIC. A connection opens one bidirectional
//! stream, the session: the hello first, then every later request on the
//! same stream, each answered in order by one response (no stream per
//! request, which is what a tracker request cost most in QUIC). The client
//! SDK and the seeds use it; the tracker crate re-exports it
//! (`tracker::client`) for its integration tests and QUIC benchmark.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;

use crate::framing::{self, FrameError};
use crate::identity::{self, PeerIdentity};
use crate::pb;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The QUIC endpoint or TLS configuration could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be written or read.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The tracker answered with an error.
    #[error("tracker refused: {code:?} {message}")]
    Refused {
        /// Error code.
        code: pb::tracker_error::Code,
        /// Message.
        message: String,
    },
    /// The stream ended without a response, or with an unexpected one.
    #[error("no or unexpected response")]
    NoResponse,
}

/// Largest response accepted (replies carry many peer entries).
pub const MAX_RESPONSE_LEN: usize = 256 * 1024;

/// Bound on the QUIC handshake with the tracker.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client endpoint (one UDP socket) that can open many connections.
#[derive(Debug, Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
}

impl ClientEndpoint {
    /// Uses an existing endpoint (one that also serves peers, for instance).
    pub fn from_endpoint(endpoint: quinn::Endpoint) -> Self {
        Self { endpoint }
    }

    /// Binds an ephemeral UDP socket on `bind`.
    pub fn bind(bind: SocketAddr) -> Result<Self, ClientError> {
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self { endpoint })
    }

    /// Connects to a tracker as `identity` and says hello with `hello`.
    pub async fn connect(
        &self,
        tracker: SocketAddr,
        identity: &PeerIdentity,
        hello: pb::TrackerHello,
    ) -> Result<TrackerConnection, ClientError> {
        self.connect_with(client_config(identity)?, tracker, hello)
            .await
    }

    /// [`Self::connect`] with a configuration from [`client_config`] built
    /// once (a client that reconnects keeps it, and its setup errors show
    /// at start rather than at the first connect).
    pub async fn connect_with(
        &self,
        config: quinn::ClientConfig,
        tracker: SocketAddr,
        hello: pb::TrackerHello,
    ) -> Result<TrackerConnection, ClientError> {
        let connecting = self
            .endpoint
            .connect_with(config, tracker, identity::SERVER_NAME)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| ClientError::Connect("handshake timed out".into()))??;
        let timeout = Duration::from_secs(10);
        let session = tokio::time::timeout(timeout, connection.open_bi())
            .await
            .map_err(|_| ClientError::Frame(FrameError::Timeout("open")))??;
        let client = TrackerConnection {
            connection,
            session: Arc::new(tokio::sync::Mutex::new(Some(session))),
            timeout,
        };
        client
            .request(&pb::TrackerRequest {
                kind: Some(pb::tracker_request::Kind::Hello(hello)),
            })
            .await?;
        Ok(client)
    }

    /// Closes the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u8.into(), b"bye");
    }
}

/// Writes one already length-prefixed frame on a session stream (either
/// side), bounded by `timeout`. `write_chunk` hands the buffer to quinn
/// without another copy.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<(), FrameError> {
    tokio::time::timeout(timeout, send.write_chunk(frame.into()))
        .await
        .map_err(|_| FrameError::Timeout("write"))?
        .map_err(|e| FrameError::Io(e.into()))
}

/// How long a tracker connection may stay silent before it is dropped,
/// milliseconds: four announce intervals.
pub const IDLE_TIMEOUT_MS: u32 = 120_000;

/// The QUIC client configuration for talking to trackers as `identity`
/// (tracker ALPN, idle timeout [`IDLE_TIMEOUT_MS`]).
pub fn client_config(identity: &PeerIdentity) -> Result<quinn::ClientConfig, ClientError> {
    let mut tls = identity
        .client_config(crate::ALPN_TRACKER)
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    // The tracker issues no session tickets (a session is one long-lived
    // connection), so a resumption cache would only hold memory: rustls
    // sizes its default one for 256 servers, about 13 KB per configuration.
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // No keep-alive: the announces, every 30 s, keep the connection
        // alive. A keep-alive shorter than that cost the tracker a PING and
        // an ACK per viewer and announce interval: a third more packets and
        // 20-30 % more CPU per announce at the protocol's pacing
        // (BENCHMARKS.md). The idle
        // timeout is set well past the interval (quinn's default, 30 s, is
        // the interval itself); a connection idle longer than this is gone
        // and the next announce reconnects. A NAT that forgets the mapping
        // between two announces costs one path validation at the next.
        .keep_alive_interval(None)
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            IDLE_TIMEOUT_MS,
        ))))
        // The tracker never opens a stream towards a client; quinn would
        // otherwise set up receive state for 100 + 100 streams it could.
        .max_concurrent_bidi_streams(0u8.into())
        .max_concurrent_uni_streams(0u8.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// One authenticated connection to a tracker. Clones share the connection
/// and its session stream; their requests take turns.
#[derive(Debug, Clone)]
pub struct TrackerConnection {
    connection: quinn::Connection,
    /// The session stream; `None` once a request failed half-way (the
    /// stream's framing can no longer be trusted, so the connection is
    /// closed and the caller reconnects).
    session: Arc<tokio::sync::Mutex<Option<(quinn::SendStream, quinn::RecvStream)>>>,
    timeout: Duration,
}

/// Application close code of a client that gave up on its session stream.
const CLOSE_BROKEN_SESSION: u32 = 2;

impl TrackerConnection {
    /// Sends one request on the session stream and returns the response; an
    /// error response becomes [`ClientError::Refused`]. A request that fails
    /// half-way (timeout, stream error) closes the connection.
    pub async fn request(
        &self,
        request: &pb::TrackerRequest,
    ) -> Result<pb::TrackerResponse, ClientError> {
        let frame = framing::encode_message(request, framing::DEFAULT_MAX_FRAME_LEN)?;
        let mut session = self.session.lock().await;
        // The stream is taken out for the exchange and put back only once its
        // response has been read whole: if this future is dropped half-way
        // (a caller's timeout or shutdown), the stream stays gone, so a later
        // request cannot read this request's late response as its own.
        let Some((mut send, mut recv)) = session.take() else {
            // A failed or abandoned exchange: the connection is of no more use.
            self.connection
                .close(CLOSE_BROKEN_SESSION.into(), b"session stream abandoned");
            return Err(ClientError::Connection(
                self.connection
                    .close_reason()
                    .unwrap_or(quinn::ConnectionError::LocallyClosed),
            ));
        };
        let exchange = async {
            write_frame(&mut send, frame, self.timeout).await?;
            framing::read_frame(&mut recv, MAX_RESPONSE_LEN, self.timeout).await
        };
        let payload = match exchange.await {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err(ClientError::NoResponse),
            Err(error) => {
                self.connection
                    .close(CLOSE_BROKEN_SESSION.into(), b"session stream failed");
                return Err(error.into());
            }
        };
        *session = Some((send, recv));
        drop(session);
        let response = <pb::TrackerResponse as prost::Message>::decode(payload.as_slice())
            .map_err(FrameError::Decode)?;
        if let Some(pb::tracker_response::Kind::Error(error)) = &response.kind {
            return Err(ClientError::Refused {
                code: pb::tracker_error::Code::try_from(error.code)
                    .unwrap_or(pb::tracker_error::Code::Unspecified),
                message: error.message.clone(),
            });
        }
        Ok(response)
    }

    /// Announces and returns the reply.
    pub async fn announce(&self, announce: pb::Announce) -> Result<pb::AnnounceReply, ClientError> {
        let response = self
            .request(&pb::TrackerRequest {
                kind: Some(pb::tracker_request::Kind::Announce(announce)),
            })
            .await?;
        match response.kind {
            Some(pb::tracker_response::Kind::Announce(reply)) => Ok(reply),
            _ => Err(ClientError::NoResponse),
        }
    }

    /// The underlying QUIC connection.
    pub fn quic(&self) -> &quinn::Connection {
        &self.connection
    }
}
