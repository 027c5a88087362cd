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
use loaves_proto::pb;

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

/// Largest punch notice read (a swarm id, a key and a few addresses).
pub const MAX_NOTICE_LEN: usize = 2048;

/// Bound on the QUIC handshake with the tracker.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client endpoint (one UDP socket) that can open many connections.
#[derive(Debug, Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    /// QUIC keep-alive of its tracker connections (see [`client_config`]).
    keep_alive: Option<Duration>,
}

impl ClientEndpoint {
    /// Uses an existing endpoint (one that also serves peers, for instance).
    pub fn from_endpoint(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            keep_alive: None,
        }
    }

    /// Sends a QUIC keep-alive on its tracker connections every `interval`
    /// of silence: what keeps a NAT's mapping of the socket (which its
    /// peers reach it at) alive between announces. `None`: none, the
    /// announces alone keep the connection up.
    pub fn with_keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Binds an ephemeral UDP socket on `bind`.
    pub fn bind(bind: SocketAddr) -> Result<Self, ClientError> {
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self::from_endpoint(endpoint))
    }

    /// Connects to a tracker as `identity` and says hello with `hello`.
    pub async fn connect(
        &self,
        tracker: SocketAddr,
        identity: &PeerIdentity,
        hello: pb::TrackerHello,
    ) -> Result<TrackerConnection, ClientError> {
        self.connect_with(
            client_config_with(identity, self.keep_alive)?,
            tracker,
            hello,
        )
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
        let mut client = TrackerConnection {
            connection,
            session: Arc::new(tokio::sync::Mutex::new(Some(session))),
            timeout,
            observed: None,
        };
        client.observed = client.hello(hello).await?;
        Ok(client)
    }

    /// Closes the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u8.into(), b"bye");
    }

    /// The endpoint's local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
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
    client_config_with(identity, None)
}

/// [`client_config`] with a QUIC keep-alive every `keep_alive` of silence.
pub fn client_config_with(
    identity: &PeerIdentity,
    keep_alive: Option<Duration>,
) -> Result<quinn::ClientConfig, ClientError> {
    let mut tls = identity
        .client_config(loaves_proto::ALPN_TRACKER)
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    // The tracker issues no session tickets (a session is one long-lived
    // connection), so a resumption cache would only hold memory: rustls
    // sizes its default one for 256 servers, about 13 KB per configuration.
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // The keep-alive is the caller's: a viewer whose peers reach it
        // through a NAT mapping of this socket keeps the mapping alive with
        // it (consumer routers forget a UDP mapping after as little as
        // 30 s, announces come every 30 s); each one costs the tracker a
        // PING and an ACK per viewer and interval (BENCHMARKS.md). Without
        // one the announces keep the connection up. The idle timeout is
        // set well past the announce interval (quinn's default, 30 s, is
        // the interval itself); a connection idle longer than this is gone
        // and the next announce reconnects.
        .keep_alive_interval(keep_alive)
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
    /// What the tracker saw this connection come from, at the hello.
    observed: Option<SocketAddr>,
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
    /// Sends a hello on the session (the first, or a refresh with a newer
    /// credential for the same key and title) and returns the address the
    /// tracker says the connection comes from, if it said (trackers before
    /// address discovery do not).
    pub async fn hello(&self, hello: pb::TrackerHello) -> Result<Option<SocketAddr>, ClientError> {
        let response = self
            .request(&pb::TrackerRequest {
                kind: Some(pb::tracker_request::Kind::Hello(hello)),
            })
            .await?;
        match response.kind {
            Some(pb::tracker_response::Kind::Ack(ack)) => Ok(ack.observed_address.parse().ok()),
            _ => Err(ClientError::NoResponse),
        }
    }

    /// The address the tracker saw this connection come from at its hello:
    /// the client's public mapping when it is behind a NAT.
    pub fn observed_address(&self) -> Option<SocketAddr> {
        self.observed
    }

    /// Asks the tracker to tell `target` (a viewer of `swarm`) to open
    /// towards this viewer now.
    pub async fn punch(&self, swarm: pb::SwarmId, target: &[u8; 32]) -> Result<(), ClientError> {
        let response = self
            .request(&pb::TrackerRequest {
                kind: Some(pb::tracker_request::Kind::Punch(pb::PunchRequest {
                    swarm: Some(swarm),
                    target_key: target.to_vec(),
                })),
            })
            .await?;
        match response.kind {
            Some(pb::tracker_response::Kind::Ack(_)) => Ok(()),
            _ => Err(ClientError::NoResponse),
        }
    }

    /// The next punch notice the tracker sends on this connection (a
    /// datagram); `None` once the connection is gone. Datagrams that do not
    /// decode, or are larger than [`MAX_NOTICE_LEN`], are skipped.
    pub async fn next_punch_notice(&self) -> Option<pb::PunchNotice> {
        loop {
            let datagram = self.connection.read_datagram().await.ok()?;
            if datagram.len() > MAX_NOTICE_LEN {
                continue;
            }
            if let Ok(notice) = <pb::PunchNotice as prost::Message>::decode(datagram) {
                return Some(notice);
            }
        }
    }

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
