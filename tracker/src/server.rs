//! The QUIC front end: a thin tokio + quinn driver around the swarm book.
//!
//! A connection must be mutually authenticated TLS with a self-signed Ed25519
//! client certificate ([`loaves_wire::identity`]). It carries one
//! bidirectional stream, the session: first a `TrackerHello` with a session
//! token (viewers) or a seed credential (seeds), which must verify offline
//! and name the certificate's key; then, on the same stream, one request
//! (announce, stop, seed registration) after another, each answered in turn
//! by one response, for as long as the connection lives and the credential
//! is valid. One stream for the whole session, rather than one per request,
//! spares QUIC the stream set-up, teardown and credit of every announce.
//!
//! Bounds: a global connection cap and a per-address cap (checked before the
//! handshake), one stream per connection (QUIC stream limit), a token-bucket
//! request rate per connection (a client that keeps going far past it is
//! disconnected); every frame is size-limited, the wait for the next request
//! is bounded by the idle timeout and the rest of a started frame, like
//! every write, by the I/O timeout. Core state sits behind one mutex: each
//! request holds it for microseconds.

use loaves_service::{Config, confique};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use loaves_proto::shard::ShardMap;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::framing::{self, FrameError};
use loaves_wire::identity::{self, PeerIdentity};
use loaves_wire::tracker_client;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::credential::{Credential, CredentialVerifier};
use crate::metrics::Metrics;
use crate::stats::{self, StatsBook, StatsLimits};
use crate::swarm::{CoreError, Requester, SwarmBook, SwarmConfig};
use crate::wire;

/// QUIC application close codes.
pub mod close_code {
    /// Normal close (shutdown).
    pub const SHUTDOWN: u32 = 0;
    /// The hello was refused.
    pub const UNAUTHENTICATED: u32 = 1;
    /// The peer broke the protocol (bad frames, timeouts).
    pub const PROTOCOL: u32 = 2;
    /// Too many requests.
    pub const RATE_LIMITED: u32 = 3;
}

/// Options of the QUIC front end. `Default` runs as is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct FrontEndOptions {
    /// Largest request frame, bytes.
    #[config(default = 65_536)]
    pub max_frame_len: usize,
    /// Time allowed for the hello after the handshake, milliseconds.
    #[config(default = 5_000)]
    pub hello_timeout_ms: u64,
    /// Time allowed to finish reading a request once it has started, or to
    /// write one response, milliseconds.
    #[config(default = 5_000)]
    pub io_timeout_ms: u64,
    /// Connections without a request for this long are closed,
    /// milliseconds (QUIC's own idle timeout, for peers that send no
    /// packets at all, is twice this).
    #[config(default = 120_000)]
    pub idle_timeout_ms: u64,
    /// Open connections, all addresses.
    #[config(default = 200_000)]
    pub max_connections: usize,
    /// Open connections from one IP address.
    #[config(default = 64)]
    pub max_connections_per_ip: usize,
    /// Sustained requests per second per connection.
    #[config(default = 2.0)]
    pub requests_per_second: f64,
    /// Burst of requests allowed above the sustained rate.
    #[config(default = 10.0)]
    pub request_burst: f64,
    /// Seconds between expiry sweeps and metrics refreshes.
    #[config(default = 5)]
    pub housekeeping_interval_s: u64,
    /// Swarms exported per swarm in metrics (largest first).
    #[config(default = 200)]
    pub metrics_top_swarms: usize,
    /// Clock skew tolerated on credentials, seconds.
    #[config(default = 30)]
    pub max_clock_skew_s: u64,
    /// UDP socket receive and send buffer requested, bytes (the kernel caps
    /// it at net.core.rmem_max / wmem_max).
    #[config(default = 8_388_608)]
    pub udp_buffer_bytes: usize,
}

impl Default for FrontEndOptions {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// State shared by every connection and the HTTP side.
#[derive(Debug)]
pub struct Shared {
    book: Mutex<SwarmBook>,
    stats: Mutex<StatsBook>,
    /// Metrics registry.
    pub metrics: Metrics,
    verifier: CredentialVerifier,
    options: FrontEndOptions,
    shards: Option<(ShardMap, String)>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    connections: Arc<Semaphore>,
    /// The session connection of every viewer, by key: where punch notices
    /// are sent (one entry per viewer, removed when its connection ends).
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

/// A viewer's session connection, as punch notices reach it.
#[derive(Debug)]
struct Session {
    connection: quinn::Connection,
    /// Notices sent to it: a viewer is asked to open towards others at most
    /// this fast, whoever asks.
    notices: TokenBucket,
}

/// Most punch requests a viewer may make per second (and the burst).
const PUNCHES_PER_SECOND: f64 = 5.0;
const PUNCH_BURST: f64 = 20.0;
/// Most punch notices a viewer receives per second (and the burst).
const NOTICES_PER_SECOND: f64 = 10.0;
const NOTICE_BURST: f64 = 20.0;

/// Removes a viewer's session from [`Shared::sessions`] when its
/// connection's task ends, whichever way.
struct SessionGuard<'a> {
    shared: &'a Shared,
    key: [u8; 32],
    id: usize,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut sessions = lock(&self.shared.sessions);
        if sessions
            .get(&self.key)
            .is_some_and(|s| s.connection.stable_id() == self.id)
        {
            sessions.remove(&self.key);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the book inconsistent in a
    // way that matters more than stopping service: keep serving.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        swarm: SwarmConfig,
        stats: StatsLimits,
        options: FrontEndOptions,
        verifier: CredentialVerifier,
        shards: Option<(ShardMap, String)>,
        metrics: Metrics,
        seed: u64,
    ) -> Self {
        Self {
            book: Mutex::new(SwarmBook::new(swarm, seed)),
            stats: Mutex::new(StatsBook::new(stats)),
            metrics,
            verifier,
            connections: Arc::new(Semaphore::new(options.max_connections)),
            options,
            shards,
            per_ip: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` with the swarm book locked.
    pub fn with_book<R>(&self, f: impl FnOnce(&mut SwarmBook) -> R) -> R {
        f(&mut lock(&self.book))
    }

    /// Runs `f` with the stats book locked.
    pub fn with_stats<R>(&self, f: impl FnOnce(&mut StatsBook) -> R) -> R {
        f(&mut lock(&self.stats))
    }

    /// Expires silent peers, samples history and refreshes gauges.
    pub fn housekeeping(&self, now: UnixSeconds) {
        let (sizes, peers, seeds) = self.with_book(|book| {
            book.expire(now);
            (book.swarm_sizes(), book.total_peers(), book.seed_count())
        });
        self.metrics
            .set_swarms(&sizes, peers, seeds, self.options.metrics_top_swarms);
        self.with_stats(|stats| stats.sample(now, peers as u64));
    }
}

/// Why the tracker's QUIC front end could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The identity's TLS configuration could not be built.
    #[error("tracker TLS configuration")]
    Tls(#[source] loaves_wire::identity::IdentityError),
    /// rustls offers no cipher suite QUIC can use.
    #[error("QUIC crypto configuration")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// `idle_timeout_ms` is beyond what QUIC can express.
    #[error("idle timeout out of range")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
    /// The UDP socket could not be bound or read back.
    #[error("binding the QUIC socket")]
    Bind(#[source] std::io::Error),
}

/// Builds the quinn server configuration for `identity`.
pub fn quinn_server_config(
    identity: &PeerIdentity,
    options: &FrontEndOptions,
) -> Result<quinn::ServerConfig, StartError> {
    let mut tls = identity
        .server_config(loaves_proto::ALPN_TRACKER)
        .map_err(StartError::Tls)?;
    // A session is one long-lived connection and clients keep no resumption
    // cache: tickets would only cost every handshake their encryption and
    // bytes.
    tls.send_tls13_tickets = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(StartError::Quic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // One stream per connection, the session; a second is never granted.
        .max_concurrent_bidi_streams(1u8.into())
        .max_concurrent_uni_streams(0u8.into())
        // The session closes itself after `idle_timeout_ms` without a
        // request, with a reason; QUIC's own idle timeout (no packets at
        // all) is a backstop behind it, twice as long so the two never race.
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(
                options.idle_timeout_ms.saturating_mul(2),
            ))
            .map_err(StartError::IdleTimeout)?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts connections on `endpoint` until `shutdown` turns true, then
/// closes every connection and waits (bounded) for them to drain.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let housekeeping = {
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        let every = Duration::from_secs(shared.options.housekeeping_interval_s.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticker.tick() => shared.housekeeping(UnixSeconds::now()),
                    _ = shutdown.changed() => break,
                }
            }
        })
    };
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let ip = incoming.remote_address().ip();
        let Some(guard) = admit(&shared, ip) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _guard = guard;
            handle_incoming(incoming, shared).await;
        });
    }
    housekeeping.abort();
    endpoint.close(close_code::SHUTDOWN.into(), b"shutting down");
    // Drain: let connections see the close, bounded so SIGTERM completes.
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

/// Holds one connection slot, global and per address; released on drop.
#[derive(Debug)]
struct ConnectionGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.shared.per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.shared.metrics.connections.dec();
    }
}

fn admit(shared: &Arc<Shared>, ip: IpAddr) -> Option<ConnectionGuard> {
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        shared
            .metrics
            .refused_connections
            .with_label_values(&["max_connections"])
            .inc();
        return None;
    };
    {
        let mut per_ip = lock(&shared.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= shared.options.max_connections_per_ip {
            shared
                .metrics
                .refused_connections
                .with_label_values(&["per_ip"])
                .inc();
            return None;
        }
        *count += 1;
    }
    shared.metrics.connections.inc();
    Some(ConnectionGuard {
        shared: shared.clone(),
        ip,
        _permit: permit,
    })
}

fn error_response(code: pb::tracker_error::Code, message: &str) -> pb::TrackerResponse {
    pb::TrackerResponse {
        kind: Some(pb::tracker_response::Kind::Error(pb::TrackerError {
            code: code as i32,
            message: message.to_owned(),
        })),
    }
}

fn ack(interval_s: u32) -> pb::TrackerResponse {
    pb::TrackerResponse {
        kind: Some(pb::tracker_response::Kind::Ack(pb::Ack {
            interval_s,
            observed_address: String::new(),
        })),
    }
}

/// The answer to a hello: the interval and the address the connection's
/// packets come from (the client's public mapping behind a NAT).
fn hello_ack(interval_s: u32, observed: SocketAddr) -> pb::TrackerResponse {
    pb::TrackerResponse {
        kind: Some(pb::tracker_response::Kind::Ack(pb::Ack {
            interval_s,
            observed_address: observed.to_string(),
        })),
    }
}

async fn handle_incoming(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "handshake failed");
            shared
                .metrics
                .refused_connections
                .with_label_values(&["handshake"])
                .inc();
            return;
        }
    };
    let remote = connection.remote_address();
    if let Err(error) = handle_connection(&connection, &shared).await {
        tracing::debug!(%remote, error = %error, "connection ended");
    }
}

/// Why a connection was closed by us.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("connection lost: {0}")]
    Lost(#[from] quinn::ConnectionError),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("hello refused: {0}")]
    Refused(String),
    #[error("hello timed out")]
    HelloTimeout,
}

/// Writes one already framed response on the session stream.
async fn write_framed(
    send: &mut quinn::SendStream,
    frame: Vec<u8>,
    options: &FrontEndOptions,
) -> Result<(), ConnectionEnd> {
    let timeout = Duration::from_millis(options.io_timeout_ms);
    tracker_client::write_frame(send, frame, timeout).await?;
    Ok(())
}

async fn respond(
    send: &mut quinn::SendStream,
    response: &pb::TrackerResponse,
    options: &FrontEndOptions,
) -> Result<(), ConnectionEnd> {
    let frame = framing::encode_message(response, options.max_frame_len)?;
    write_framed(send, frame, options).await
}

/// Sends a last response, gives it a moment to leave, closes the connection.
async fn respond_and_close(
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
    response: &pb::TrackerResponse,
    options: &FrontEndOptions,
    code: u32,
    reason: &[u8],
) {
    let _ = respond(send, response, options).await;
    // The session stream stays open, so wait for the peer to have the bytes
    // (acknowledged) rather than for a stop; bounded either way.
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    connection.close(code.into(), reason);
}

async fn handle_connection(
    connection: &quinn::Connection,
    shared: &Arc<Shared>,
) -> Result<(), ConnectionEnd> {
    let options = &shared.options;
    let certificate_key = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| ConnectionEnd::Refused("no peer certificate".into()))
        .and_then(|chain| {
            identity::peer_public_key(&chain).map_err(|e| ConnectionEnd::Refused(e.to_string()))
        });
    let certificate_key = match certificate_key {
        Ok(key) => key,
        Err(end) => {
            connection.close(close_code::UNAUTHENTICATED.into(), b"bad certificate");
            return Err(end);
        }
    };

    // The session stream: the hello first, then every request in turn.
    let hello_deadline = Duration::from_millis(options.hello_timeout_ms);
    let (mut send, mut recv) =
        match tokio::time::timeout(hello_deadline, connection.accept_bi()).await {
            Ok(streams) => streams?,
            Err(_) => {
                connection.close(close_code::PROTOCOL.into(), b"hello timeout");
                return Err(ConnectionEnd::HelloTimeout);
            }
        };
    let request: Option<pb::TrackerRequest> =
        framing::read_message(&mut recv, options.max_frame_len, hello_deadline)
            .await
            .inspect_err(|_| connection.close(close_code::PROTOCOL.into(), b"bad hello frame"))?;
    let hello = match request.and_then(|r| r.kind) {
        Some(pb::tracker_request::Kind::Hello(hello)) => hello,
        _ => {
            shared
                .metrics
                .rejected_tokens
                .with_label_values(&["missing"])
                .inc();
            respond_and_close(
                connection,
                &mut send,
                &error_response(pb::tracker_error::Code::Unauthenticated, "hello expected"),
                options,
                close_code::UNAUTHENTICATED,
                b"hello expected",
            )
            .await;
            return Err(ConnectionEnd::Refused("no hello".into()));
        }
    };
    let credential =
        match shared
            .verifier
            .verify_hello(&hello, &certificate_key, UnixSeconds::now())
        {
            Ok(credential) => credential,
            Err(error) => {
                shared
                    .metrics
                    .rejected_tokens
                    .with_label_values(&[error.reason()])
                    .inc();
                respond_and_close(
                    connection,
                    &mut send,
                    &error_response(pb::tracker_error::Code::Unauthenticated, error.reason()),
                    options,
                    close_code::UNAUTHENTICATED,
                    error.reason().as_bytes(),
                )
                .await;
                return Err(ConnectionEnd::Refused(error.to_string()));
            }
        };
    let interval = shared.with_book(|b| b.config().announce_interval_s);
    let observed = connection.remote_address();
    respond(&mut send, &hello_ack(interval, observed), options).await?;
    shared
        .metrics
        .requests
        .with_label_values(&["hello", "ok"])
        .inc();

    // Viewers can be asked to open towards others: keep their connection
    // where punch notices find it (the newest one, if a viewer has two).
    let _session = match &credential {
        Credential::Viewer(_) => {
            let key = credential.peer_key().to_bytes();
            lock(&shared.sessions).insert(
                key,
                Session {
                    connection: connection.clone(),
                    notices: TokenBucket::new(NOTICE_BURST, NOTICES_PER_SECOND),
                },
            );
            Some(SessionGuard {
                shared,
                key,
                id: connection.stable_id(),
            })
        }
        Credential::Seed(_) => None,
    };
    let mut state = ConnectionState {
        credential,
        certificate_key,
        observed,
        last_report: None,
        bucket: TokenBucket::new(options.request_burst, options.requests_per_second),
        punches: TokenBucket::new(PUNCH_BURST, PUNCHES_PER_SECOND),
        addresses: Vec::new(),
        nat_class: 0,
    };
    let idle = Duration::from_millis(options.idle_timeout_ms);
    let timeout = Duration::from_millis(options.io_timeout_ms);
    loop {
        let frame =
            match framing::read_next_frame(&mut recv, options.max_frame_len, idle, timeout).await {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // The client ended its session.
                    connection.close(close_code::SHUTDOWN.into(), b"session ended");
                    return Ok(());
                }
                Err(FrameError::Timeout("idle")) => {
                    connection.close(close_code::SHUTDOWN.into(), b"idle");
                    return Ok(());
                }
                Err(error) => {
                    // Too large, truncated, stalled mid-frame or a stream error:
                    // the frame boundaries are lost, so the session is over.
                    shared
                        .metrics
                        .requests
                        .with_label_values(&["any", "malformed"])
                        .inc();
                    respond_and_close(
                        connection,
                        &mut send,
                        &error_response(pb::tracker_error::Code::Malformed, &error.to_string()),
                        options,
                        close_code::PROTOCOL,
                        b"bad frame",
                    )
                    .await;
                    return Err(error.into());
                }
            };
        let request = match <pb::TrackerRequest as prost::Message>::decode(frame.as_slice()) {
            Ok(request) => request,
            Err(error) => {
                // The frame was whole: answer and carry on with the next,
                // unless it is one of a flood.
                shared
                    .metrics
                    .requests
                    .with_label_values(&["any", "malformed"])
                    .inc();
                if !state.bucket.take(Instant::now()) && state.bucket.abusive() {
                    close_rate_limited(connection, &mut send, options).await;
                    return Ok(());
                }
                respond(
                    &mut send,
                    &error_response(pb::tracker_error::Code::Malformed, &error.to_string()),
                    options,
                )
                .await?;
                continue;
            }
        };
        // Punch requests have their own allowance (a joining viewer asks
        // for several at once, see PUNCH_BURST); every other request, and
        // every frame that does not decode, draws on the connection's.
        if !matches!(request.kind, Some(pb::tracker_request::Kind::Punch(_)))
            && !state.bucket.take(Instant::now())
        {
            shared
                .metrics
                .requests
                .with_label_values(&["any", "rate_limited"])
                .inc();
            if state.bucket.abusive() {
                close_rate_limited(connection, &mut send, options).await;
                return Ok(());
            }
            respond(
                &mut send,
                &error_response(pb::tracker_error::Code::RateLimited, "slow down"),
                options,
            )
            .await?;
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = handle_request(shared, &mut state, request, UnixSeconds::now());
        shared
            .metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Reply::Framed(frame) => {
                // Replies are bounded by the reply size caps; allow them a
                // larger frame than requests (a full reply with bitmaps can
                // exceed 64 KiB).
                let max = options.max_frame_len.saturating_mul(4);
                let len = frame.len().saturating_sub(framing::LENGTH_PREFIX_LEN);
                if len > max {
                    return Err(FrameError::TooLarge {
                        claimed: len as u64,
                        max,
                    }
                    .into());
                }
                write_framed(&mut send, frame, options).await?;
            }
            Reply::Message(message) => respond(&mut send, &message, options).await?,
            Reply::Close(message) => {
                let rate_limited = matches!(
                    &message.kind,
                    Some(pb::tracker_response::Kind::Error(e))
                        if e.code == pb::tracker_error::Code::RateLimited as i32
                );
                let (code, reason): (u32, &[u8]) = if rate_limited {
                    (close_code::RATE_LIMITED, b"rate limited")
                } else {
                    (close_code::UNAUTHENTICATED, b"credential refused")
                };
                respond_and_close(connection, &mut send, &message, options, code, reason).await;
                return Ok(());
            }
        }
    }
}

/// Per-connection state.
#[derive(Debug)]
struct ConnectionState {
    credential: Credential,
    /// The key of the connection's TLS certificate: a refreshed credential
    /// must name it too.
    certificate_key: VerifyingKey,
    /// Where the connection's packets come from.
    observed: SocketAddr,
    /// Time of the previous stats report on this connection.
    last_report: Option<UnixSeconds>,
    bucket: TokenBucket,
    /// Punch requests of this viewer.
    punches: TokenBucket,
    /// The addresses of its last announce that it may announce (what a
    /// punch notice tells the target), and the NAT class it reported.
    addresses: Vec<String>,
    nat_class: i32,
}

/// A token bucket: `capacity` requests, refilled at `rate` per second.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    refilled: Instant,
    refused_in_a_row: u32,
}

impl TokenBucket {
    fn new(capacity: f64, rate: f64) -> Self {
        Self {
            capacity: capacity.max(1.0),
            rate: rate.max(0.0),
            tokens: capacity.max(1.0),
            refilled: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }

    /// Many refusals in a row: the client ignores the limit.
    fn abusive(&self) -> bool {
        self.refused_in_a_row > 50
    }
}

/// Tells a client that ignores the rate limit so, and closes its
/// connection.
async fn close_rate_limited(
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
    options: &FrontEndOptions,
) {
    respond_and_close(
        connection,
        send,
        &error_response(pb::tracker_error::Code::RateLimited, "rate limited"),
        options,
        close_code::RATE_LIMITED,
        b"rate limited",
    )
    .await;
}

enum Reply {
    /// An encoded `TrackerResponse`, already framed.
    Framed(Vec<u8>),
    Message(pb::TrackerResponse),
    /// Send this and close the connection.
    Close(pb::TrackerResponse),
}

fn core_error_response(error: &CoreError) -> pb::TrackerResponse {
    let code = match error {
        CoreError::InvalidSwarm | CoreError::Holdings(_) => pb::tracker_error::Code::Malformed,
        CoreError::TooManySwarms | CoreError::SwarmFull | CoreError::TooManySeeds => {
            pb::tracker_error::Code::Overloaded
        }
    };
    error_response(code, &error.to_string())
}

fn handle_request(
    shared: &Shared,
    state: &mut ConnectionState,
    request: pb::TrackerRequest,
    now: UnixSeconds,
) -> Reply {
    use pb::tracker_error::Code;
    use pb::tracker_request::Kind;
    let metrics = &shared.metrics;
    // A hello on an open session is a refresh: checked before the
    // credential in force, which it replaces (it may just have expired).
    if let Some(Kind::Hello(hello)) = &request.kind {
        return refresh(shared, state, hello, now);
    }
    let ConnectionState {
        credential,
        observed,
        last_report,
        punches,
        addresses,
        nat_class,
        ..
    } = state;
    if let Err(error) = shared.verifier.still_valid(credential, now) {
        metrics
            .rejected_tokens
            .with_label_values(&[error.reason()])
            .inc();
        return Reply::Close(error_response(Code::Unauthenticated, error.reason()));
    }
    let key = credential.peer_key().to_bytes();
    let requester = Requester {
        key: &key,
        region: credential.region(),
        isp: credential.isp(),
        observed: Some(*observed),
    };
    let (kind, result) = match (request.kind, &*credential) {
        (Some(Kind::Announce(announce)), Credential::Viewer(token)) => {
            if let Some(refusal) = check_swarm(shared, token, announce.swarm.as_ref()) {
                return finish(metrics, "announce", refusal);
            }
            ingest_stats(shared, last_report, token, announce.stats.as_ref(), now);
            ingest_connects(shared, announce.stats.as_ref());
            let max_addresses = shared.with_book(|book| book.config().max_addresses);
            *addresses = loaves_swarm::swarm::usable_addresses(
                &announce.addresses,
                max_addresses,
                Some(*observed),
            );
            *nat_class = pb::NatClass::try_from(announce.nat_class).map_or(0, |c| c as i32);
            metrics
                .nat_classes
                .with_label_values(&[crate::metrics::nat_label(*nat_class)])
                .inc();
            let outcome = shared.with_book(|book| book.announce(now, &requester, &announce));
            match outcome {
                Ok(outcome) => {
                    metrics.announces.inc();
                    if outcome.anomalies.upload_clamped {
                        metrics
                            .clamped
                            .with_label_values(&["upload_capacity"])
                            .inc();
                    }
                    if outcome.anomalies.addresses_dropped > 0 {
                        metrics
                            .clamped
                            .with_label_values(&["address"])
                            .inc_by(u64::from(outcome.anomalies.addresses_dropped));
                    }
                    (
                        "announce",
                        Reply::Framed(wire::announce_response_frame(&outcome.reply)),
                    )
                }
                Err(error) => ("announce", Reply::Message(core_error_response(&error))),
            }
        }
        (Some(Kind::Punch(punch)), Credential::Viewer(token)) => {
            if let Some(refusal) = check_swarm(shared, token, punch.swarm.as_ref()) {
                metrics.punches.with_label_values(&["forbidden"]).inc();
                return finish(metrics, "punch", refusal);
            }
            let (result, reply) =
                forward_punch(shared, &punch, (&key, addresses, *nat_class), punches, now);
            metrics.punches.with_label_values(&[result]).inc();
            ("punch", reply)
        }
        (Some(Kind::Stop(stop)), Credential::Viewer(token)) => {
            if let Some(refusal) = check_swarm(shared, token, stop.swarm.as_ref()) {
                return finish(metrics, "stop", refusal);
            }
            ingest_stats(shared, last_report, token, stop.stats.as_ref(), now);
            if let Some(swarm) = &stop.swarm {
                shared.with_book(|book| book.stop(&key, swarm));
            }
            let interval = shared.with_book(|b| b.config().announce_interval_s);
            ("stop", Reply::Message(ack(interval)))
        }
        (Some(Kind::RegisterSeed(registration)), Credential::Seed(seed)) => {
            if let Some(id) = registration
                .swarms
                .iter()
                .find(|id| !seed.allows_title(&id.title))
            {
                let message = format!("credential does not cover title {:?}", id.title);
                return finish(
                    metrics,
                    "register_seed",
                    Reply::Message(error_response(Code::Forbidden, &message)),
                );
            }
            if let Some(id) = registration
                .swarms
                .iter()
                .find(|id| !served_here(shared, &id.title))
            {
                let message = format!("title {:?} belongs to another tracker shard", id.title);
                return finish(
                    metrics,
                    "register_seed",
                    Reply::Message(error_response(Code::Forbidden, &message)),
                );
            }
            let result =
                shared.with_book(|book| book.register_seed(now, &requester, &registration));
            let interval = shared.with_book(|b| b.config().announce_interval_s);
            match result {
                Ok(_) => ("register_seed", Reply::Message(ack(interval))),
                Err(error) => ("register_seed", Reply::Message(core_error_response(&error))),
            }
        }
        (Some(Kind::Announce(_) | Kind::Stop(_) | Kind::Punch(_)), Credential::Seed(_)) => (
            "announce",
            Reply::Message(error_response(
                Code::Forbidden,
                "seeds register, they do not announce",
            )),
        ),
        (Some(Kind::RegisterSeed(_)), Credential::Viewer(_)) => (
            "register_seed",
            Reply::Message(error_response(Code::Forbidden, "not a seed credential")),
        ),
        (Some(Kind::Hello(_)), _) | (None, _) => (
            "other",
            Reply::Message(error_response(Code::Malformed, "unexpected request")),
        ),
    };
    finish(metrics, kind, result)
}

/// A refreshed credential: it must verify, name the connection's
/// certificate key and be of the same kind (a viewer's for the same title);
/// then it replaces the one in force. A refused refresh closes the session
/// as an expired credential would (the client's old credential is about
/// to expire anyway, and a forged one earns no second try).
fn refresh(
    shared: &Shared,
    state: &mut ConnectionState,
    hello: &pb::TrackerHello,
    now: UnixSeconds,
) -> Reply {
    use pb::tracker_error::Code;
    let metrics = &shared.metrics;
    let refreshed = match shared
        .verifier
        .verify_hello(hello, &state.certificate_key, now)
    {
        Ok(refreshed) => refreshed,
        Err(error) => {
            metrics
                .rejected_tokens
                .with_label_values(&[error.reason()])
                .inc();
            return finish(
                metrics,
                "refresh",
                Reply::Close(error_response(Code::Unauthenticated, error.reason())),
            );
        }
    };
    let same_kind = match (&state.credential, &refreshed) {
        (Credential::Viewer(old), Credential::Viewer(new)) => old.title == new.title,
        (Credential::Seed(_), Credential::Seed(_)) => true,
        _ => false,
    };
    if !same_kind {
        return finish(
            metrics,
            "refresh",
            Reply::Close(error_response(
                Code::Unauthenticated,
                "a refresh must be a credential of the same kind and title",
            )),
        );
    }
    state.credential = refreshed;
    let interval = shared.with_book(|b| b.config().announce_interval_s);
    finish(
        metrics,
        "refresh",
        Reply::Message(hello_ack(interval, state.observed)),
    )
}

fn finish(metrics: &Metrics, kind: &str, reply: Reply) -> Reply {
    let result = match &reply {
        Reply::Framed(_) => "ok",
        Reply::Message(message) | Reply::Close(message) => match &message.kind {
            Some(pb::tracker_response::Kind::Error(error)) => {
                match pb::tracker_error::Code::try_from(error.code) {
                    Ok(pb::tracker_error::Code::Forbidden) => "forbidden",
                    Ok(pb::tracker_error::Code::Malformed) => "malformed",
                    Ok(pb::tracker_error::Code::Overloaded) => "overloaded",
                    Ok(pb::tracker_error::Code::Unauthenticated) => "unauthenticated",
                    Ok(pb::tracker_error::Code::RateLimited) => "rate_limited",
                    _ => "error",
                }
            }
            _ => "ok",
        },
    };
    metrics.requests.with_label_values(&[kind, result]).inc();
    reply
}

fn served_here(shared: &Shared, title: &str) -> bool {
    match &shared.shards {
        Some((map, me)) => map.is_served_by(title, me),
        None => true,
    }
}

/// Refuses a request for a swarm the token does not cover.
fn check_swarm(
    shared: &Shared,
    token: &loaves_proto::token::SessionToken,
    swarm: Option<&pb::SwarmId>,
) -> Option<Reply> {
    use pb::tracker_error::Code;
    let Some(swarm) = swarm else {
        return Some(Reply::Message(error_response(Code::Malformed, "no swarm")));
    };
    if swarm.title != token.title {
        shared
            .metrics
            .rejected_tokens
            .with_label_values(&["wrong_title"])
            .inc();
        return Some(Reply::Message(error_response(
            Code::Forbidden,
            "token does not cover this title",
        )));
    }
    if !token.allows_rendition(&swarm.rendition) {
        shared
            .metrics
            .rejected_tokens
            .with_label_values(&["wrong_rendition"])
            .inc();
        return Some(Reply::Message(error_response(
            Code::Forbidden,
            "token does not cover this rendition",
        )));
    }
    if !served_here(shared, &swarm.title) {
        return Some(Reply::Message(error_response(
            Code::Forbidden,
            "title belongs to another tracker shard",
        )));
    }
    None
}

fn ingest_stats(
    shared: &Shared,
    last_report: &mut Option<UnixSeconds>,
    token: &loaves_proto::token::SessionToken,
    delta: Option<&pb::StatsDelta>,
    now: UnixSeconds,
) {
    let Some(delta) = delta else { return };
    let previous = last_report.replace(now);
    let (labels, counters, clamp) = shared.with_stats(|book| {
        let window = stats::report_window(previous, now, book.limits());
        let (counters, clamp) = stats::clamp(delta, window, book.limits());
        let cohort = stats::Cohort::of(delta);
        let labels = book.labels_for(&token.title, &token.region, &token.isp, cohort);
        book.ingest(&labels, &counters);
        (labels, counters, clamp)
    });
    shared.metrics.ingest(&labels, &counters, &clamp);
}

/// Forwards a punch request: `target` must be a viewer of the swarm, as
/// the requester must, with a session connection here; both sides' rate
/// limits must allow it. The notice carries the requester's own announced
/// addresses (checked against where the tracker saw it), nothing the
/// request names, so the tracker cannot be used to aim viewers at a third
/// party. Returns the metric's result label and the reply.
fn forward_punch(
    shared: &Shared,
    punch: &pb::PunchRequest,
    (from, addresses, nat_class): (&[u8; 32], &[String], i32),
    bucket: &mut TokenBucket,
    now: UnixSeconds,
) -> (&'static str, Reply) {
    use pb::tracker_error::Code;
    let Some(swarm) = &punch.swarm else {
        return (
            "forbidden",
            Reply::Message(error_response(Code::Malformed, "no swarm")),
        );
    };
    if !bucket.take(Instant::now()) {
        let refusal = error_response(Code::RateLimited, "too many punch requests");
        return if bucket.abusive() {
            ("rate_limited", Reply::Close(refusal))
        } else {
            ("rate_limited", Reply::Message(refusal))
        };
    }
    let Ok(target) = <[u8; 32]>::try_from(punch.target_key.as_slice()) else {
        return (
            "not_in_swarm",
            Reply::Message(error_response(Code::Malformed, "not a peer key")),
        );
    };
    let members = shared
        .with_book(|book| book.is_member(now, swarm, from) && book.is_member(now, swarm, &target));
    if !members || addresses.is_empty() || target == *from {
        return (
            "not_in_swarm",
            Reply::Message(error_response(
                Code::Forbidden,
                "requester and target must both be viewers of the swarm, the requester reachable",
            )),
        );
    }
    let notice = pb::PunchNotice {
        swarm: Some(swarm.clone()),
        from_key: from.to_vec(),
        addresses: addresses.to_vec(),
        nat_class,
    };
    let sent = {
        let mut sessions = lock(&shared.sessions);
        match sessions.get_mut(&target) {
            None => Err("not_connected"),
            Some(session) => {
                if session.notices.take(Instant::now()) {
                    session
                        .connection
                        .send_datagram(prost::Message::encode_to_vec(&notice).into())
                        .map_err(|_| "not_connected")
                } else {
                    Err("rate_limited")
                }
            }
        }
    };
    match sent {
        Ok(()) => {
            let interval = shared.with_book(|b| b.config().announce_interval_s);
            ("forwarded", Reply::Message(ack(interval)))
        }
        Err(result) => {
            let code = if result == "rate_limited" {
                Code::RateLimited
            } else {
                Code::Forbidden
            };
            (
                result,
                Reply::Message(error_response(code, "the target cannot be reached now")),
            )
        }
    }
}

/// The connection attempts a viewer reports, into the metrics (bounded).
fn ingest_connects(shared: &Shared, delta: Option<&pb::StatsDelta>) {
    let Some(delta) = delta else { return };
    for report in delta.connects.iter().take(MAX_CONNECT_REPORTS) {
        let result = match pb::ConnectResult::try_from(report.result) {
            Ok(pb::ConnectResult::Direct) => "direct",
            Ok(pb::ConnectResult::Punched) => "punched",
            Ok(pb::ConnectResult::Failed) => "failed",
            _ => continue,
        };
        let pair = crate::metrics::nat_pair_label(report.local, report.remote);
        shared.with_stats(|stats| stats.record_connect(report));
        let m = &shared.metrics;
        m.p2p_connects.with_label_values(&[result, pair]).inc();
        // A report longer than a minute is a wrong clock, not a connection.
        let seconds = f64::from(report.millis.min(60_000)) / 1000.0;
        m.p2p_connect_seconds
            .with_label_values(&[result])
            .observe(seconds);
    }
}

/// Most connection reports taken from one stats delta.
const MAX_CONNECT_REPORTS: usize = 64;

/// A running tracker front end (for tests and the binary).
#[derive(Debug)]
pub struct RunningTracker {
    /// Address the QUIC endpoint is bound to.
    pub quic_addr: SocketAddr,
    /// Shared state (metrics, books).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningTracker {
    /// Binds `addr` and starts serving.
    pub fn start(
        addr: SocketAddr,
        identity: &PeerIdentity,
        shared: Arc<Shared>,
    ) -> Result<Self, StartError> {
        let config = quinn_server_config(identity, &shared.options)?;
        let endpoint = loaves_wire::bind_endpoint_with_buffers(
            addr,
            Some(config),
            shared.options.udp_buffer_bytes,
        )
        .map_err(StartError::Bind)?;
        let quic_addr = endpoint.local_addr().map_err(StartError::Bind)?;
        let (shutdown, receiver) = watch::channel(false);
        let task = tokio::spawn(serve(endpoint, shared.clone(), receiver));
        Ok(Self {
            quic_addr,
            shared,
            shutdown,
            task,
        })
    }

    /// A receiver that turns true at shutdown (for the HTTP side).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops accepting, closes connections, waits for the drain.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}
