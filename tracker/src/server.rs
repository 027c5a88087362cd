//! The QUIC front end: a thin tokio + quinn driver around the swarm book.
//!
//! A connection must be mutually authenticated TLS with a self-signed Ed25519
//! client certificate ([`loaves_proto::identity`]). It carries one
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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use loaves_proto::framing::{self, FrameError};
use loaves_proto::identity::{self, PeerIdentity};
use loaves_proto::shard::ShardMap;
use loaves_proto::tracker_client;
use loaves_proto::{UnixSeconds, pb};
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontEndOptions {
    /// Largest request frame, bytes.
    pub max_frame_len: usize,
    /// Time allowed for the hello after the handshake, milliseconds.
    pub hello_timeout_ms: u64,
    /// Time allowed to finish reading a request once it has started, or to
    /// write one response, milliseconds.
    pub io_timeout_ms: u64,
    /// Connections without a request for this long are closed,
    /// milliseconds (QUIC's own idle timeout, for peers that send no
    /// packets at all, is twice this).
    pub idle_timeout_ms: u64,
    /// Open connections, all addresses.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Sustained requests per second per connection.
    pub requests_per_second: f64,
    /// Burst of requests allowed above the sustained rate.
    pub request_burst: f64,
    /// Seconds between expiry sweeps and metrics refreshes.
    pub housekeeping_interval_s: u64,
    /// Swarms exported per swarm in metrics (largest first).
    pub metrics_top_swarms: usize,
    /// Clock skew tolerated on credentials, seconds.
    pub max_clock_skew_s: u64,
    /// UDP socket receive and send buffer requested, bytes (the kernel caps
    /// it at net.core.rmem_max / wmem_max).
    pub udp_buffer_bytes: usize,
}

impl Default for FrontEndOptions {
    fn default() -> Self {
        Self {
            max_frame_len: framing::DEFAULT_MAX_FRAME_LEN,
            hello_timeout_ms: 5_000,
            io_timeout_ms: 5_000,
            idle_timeout_ms: 120_000,
            max_connections: 200_000,
            max_connections_per_ip: 64,
            requests_per_second: 2.0,
            request_burst: 10.0,
            housekeeping_interval_s: 5,
            metrics_top_swarms: 200,
            max_clock_skew_s: loaves_proto::token::DEFAULT_MAX_CLOCK_SKEW_S,
            udp_buffer_bytes: 8 * 1024 * 1024,
        }
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

/// Builds the quinn server configuration for `identity`.
pub fn quinn_server_config(
    identity: &PeerIdentity,
    options: &FrontEndOptions,
) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = identity.server_config(loaves_proto::ALPN_TRACKER)?;
    // A session is one long-lived connection and clients keep no resumption
    // cache: tickets would only cost every handshake their encryption and
    // bytes.
    tls.send_tls13_tickets = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // One stream per connection, the session; a second is never granted.
        .max_concurrent_bidi_streams(1u8.into())
        .max_concurrent_uni_streams(0u8.into())
        // The session closes itself after `idle_timeout_ms` without a
        // request, with a reason; QUIC's own idle timeout (no packets at
        // all) is a backstop behind it, twice as long so the two never race.
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_millis(
            options.idle_timeout_ms.saturating_mul(2),
        ))?));
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
        kind: Some(pb::tracker_response::Kind::Ack(pb::Ack { interval_s })),
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
    respond(&mut send, &ack(interval), options).await?;
    shared
        .metrics
        .requests
        .with_label_values(&["hello", "ok"])
        .inc();

    let mut state = ConnectionState {
        credential,
        last_report: None,
        bucket: TokenBucket::new(options.request_burst, options.requests_per_second),
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
        if !state.bucket.take(Instant::now()) {
            shared
                .metrics
                .requests
                .with_label_values(&["any", "rate_limited"])
                .inc();
            if state.bucket.abusive() {
                respond_and_close(
                    connection,
                    &mut send,
                    &error_response(pb::tracker_error::Code::RateLimited, "rate limited"),
                    options,
                    close_code::RATE_LIMITED,
                    b"rate limited",
                )
                .await;
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
        let request = match <pb::TrackerRequest as prost::Message>::decode(frame.as_slice()) {
            Ok(request) => request,
            Err(error) => {
                // The frame was whole: answer and carry on with the next.
                shared
                    .metrics
                    .requests
                    .with_label_values(&["any", "malformed"])
                    .inc();
                respond(
                    &mut send,
                    &error_response(pb::tracker_error::Code::Malformed, &error.to_string()),
                    options,
                )
                .await?;
                continue;
            }
        };
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
                respond_and_close(
                    connection,
                    &mut send,
                    &message,
                    options,
                    close_code::UNAUTHENTICATED,
                    b"credential expired",
                )
                .await;
                return Ok(());
            }
        }
    }
}

/// Per-connection state.
#[derive(Debug)]
struct ConnectionState {
    credential: Credential,
    /// Time of the previous stats report on this connection.
    last_report: Option<UnixSeconds>,
    bucket: TokenBucket,
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
    let ConnectionState {
        credential,
        last_report,
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
    };
    let (kind, result) = match (request.kind, &*credential) {
        (Some(Kind::Announce(announce)), Credential::Viewer(token)) => {
            if let Some(refusal) = check_swarm(shared, token, announce.swarm.as_ref()) {
                return finish(metrics, "announce", refusal);
            }
            ingest_stats(shared, last_report, token, announce.stats.as_ref(), now);
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
        (Some(Kind::Announce(_) | Kind::Stop(_)), Credential::Seed(_)) => (
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
    ) -> anyhow::Result<Self> {
        let config = quinn_server_config(identity, &shared.options)?;
        let endpoint = crate::udp::endpoint(addr, shared.options.udp_buffer_bytes, Some(config))?;
        let quic_addr = endpoint.local_addr()?;
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
