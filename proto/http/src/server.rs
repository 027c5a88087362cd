//! HTTP/1.1 serving of an axum [`Router`] with limits on every connection.
//!
//! hyper drives each connection directly (not `axum::serve`), so the server
//! owns the connection and can bound it:
//!
//! - **Caps at accept** ([`Limits::max_connections`],
//!   [`Limits::max_connections_per_ip`]): checked before any read; a
//!   refused connection is reset at once and counted.
//! - **Header-read timeout** ([`Limits::header_read_timeout`], hyper's
//!   own): the request head must be complete this long after the
//!   connection opened, or after the previous response on a keep-alive
//!   connection (hyper restarts the clock when the connection goes idle).
//!   A client sending a head byte by byte cannot hold the connection past
//!   it.
//! - **Idle timeout** ([`Limits::idle_timeout`]): a keep-alive connection
//!   that sends no byte of a next request is closed. hyper's header clock
//!   also runs while idle, so this can only be shorter than the
//!   header-read timeout, and [`Builder::build`] refuses a longer one.
//! - **Head size** ([`Limits::max_header_bytes`], [`Limits::max_headers`]):
//!   a bigger head is answered 431 and the connection closed.
//! - **Request timeout** ([`Limits::request_timeout`], optional): the
//!   handler, including reading the request body, must produce a response
//!   head in time, or the client gets 408 and the connection is closed. It
//!   does not bound streaming the response body.
//! - **Write timeout** ([`Limits::write_timeout`]): a response write that
//!   makes no progress this long (the client stopped reading) closes the
//!   connection.
//! - **Graceful shutdown** ([`Limits::shutdown_grace`]): stop accepting,
//!   let in-flight requests finish (idle connections close at once), cut
//!   whatever is still open when the grace period ends.
//!
//! Every connection closed or refused by a limit is counted by reason on
//! the server's [`ConnMetrics`].

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::limiter::{ConnectionLimiter, ConnectionPermit};
use crate::metrics::{ConnMetrics, ShedReason};

/// Smallest `max_header_bytes` hyper accepts (its read buffer minimum).
pub const MIN_HEADER_BYTES: usize = 8192;

/// How long the accept loop pauses after an `accept` error such as
/// `EMFILE`: the pending connection stays in the backlog, so retrying at
/// once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of one HTTP/1.1 listener. [`Limits::default`] suits a public
/// listener; each field says why its default is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Time allowed for a complete request head, from the connection's
    /// start or from the end of the previous response. Default 10 s: an
    /// honest client sends its head in one write, so even a slow mobile
    /// link needs well under a second; 10 s leaves room for loss and
    /// retransmits while a Slowloris client trickling a byte at a time
    /// frees its connection quickly.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may wait for the first byte of its
    /// next request. At most `header_read_timeout` (hyper's header clock
    /// runs while idle too). Default 10 s: a player fetching segments
    /// every 2-6 s keeps its connection; an abandoned one holds its file
    /// descriptor no longer.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; at
    /// least [`MIN_HEADER_BYTES`]. Default 16 KiB: our clients send a few
    /// short headers (no cookies); hyper's default of ~400 KiB would let
    /// each of hundreds of connections pin that much memory.
    pub max_header_bytes: usize,
    /// Most header fields in one request. Default 64, for the same reason.
    pub max_headers: usize,
    /// Most connections open at once. Default 512: below the common soft
    /// limit of 1024 file descriptors, leaving room for the store, files
    /// and the process's other listeners; past it, connections are reset
    /// at accept instead of `accept` failing for everyone.
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv4, or IPv6 /64).
    /// Default 64: a browser opens 6 per host and a player a few, so 64 is
    /// generous for any honest client while one address cannot take the
    /// whole of `max_connections`. Raise it for a listener behind a proxy
    /// or CDN, where every request comes from a few addresses.
    pub max_connections_per_ip: usize,
    /// Time allowed for the handler to produce a response head, request
    /// body included; `None` for no bound (for handlers that long-poll).
    /// Default 30 s: every handler here answers from memory or one store
    /// query, so 30 s only ever catches a client feeding its body slowly.
    pub request_timeout: Option<Duration>,
    /// Time a response write may make no progress before the connection is
    /// closed. Default 30 s: TCP itself retries for minutes, which would
    /// let a client that stopped reading hold the connection and its
    /// buffered response that long.
    pub write_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown begins;
    /// connections still open then are cut. Default 10 s, within the 30 s
    /// a process manager usually waits after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_connections: 512,
            max_connections_per_ip: 64,
            request_timeout: Some(Duration::from_secs(30)),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Why a set of [`Limits`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A duration that must be positive is zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// `idle_timeout` is longer than `header_read_timeout`.
    #[error(
        "idle_timeout ({idle:?}) is longer than header_read_timeout ({header:?}), \
         which also bounds an idle connection"
    )]
    IdleLongerThanHeader {
        /// The idle timeout.
        idle: Duration,
        /// The header-read timeout.
        header: Duration,
    },
    /// `max_header_bytes` is below [`MIN_HEADER_BYTES`].
    #[error("max_header_bytes ({0}) is below {MIN_HEADER_BYTES}")]
    HeaderBytes(usize),
}

impl Limits {
    /// Checks that the limits are consistent.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let positive = [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            (
                "request_timeout",
                self.request_timeout.unwrap_or(Duration::MAX),
            ),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(LimitsError::Zero(name));
            }
        }
        if self.max_connections == 0 {
            return Err(LimitsError::Zero("max_connections"));
        }
        if self.max_connections_per_ip == 0 {
            return Err(LimitsError::Zero("max_connections_per_ip"));
        }
        if self.max_headers == 0 {
            return Err(LimitsError::Zero("max_headers"));
        }
        if self.idle_timeout > self.header_read_timeout {
            return Err(LimitsError::IdleLongerThanHeader {
                idle: self.idle_timeout,
                header: self.header_read_timeout,
            });
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(LimitsError::HeaderBytes(self.max_header_bytes));
        }
        Ok(())
    }
}

/// Builds an [`HttpServer`].
#[derive(Debug)]
#[must_use]
pub struct Builder {
    router: Router,
    limits: Limits,
    metrics: Option<ConnMetrics>,
}

impl Builder {
    /// The limits (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Where shed connections are counted (default: counters in no
    /// registry, readable through [`HttpServer::metrics`]).
    pub fn metrics(mut self, metrics: ConnMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the limits.
    pub fn build(self) -> Result<HttpServer, LimitsError> {
        self.limits.validate()?;
        let metrics = self.metrics.unwrap_or_default();
        let limiter = ConnectionLimiter::new(
            self.limits.max_connections,
            self.limits.max_connections_per_ip,
            metrics.clone(),
        );
        Ok(HttpServer {
            shared: Arc::new(Shared {
                router: self.router,
                limits: self.limits,
                metrics,
                limiter,
            }),
        })
    }
}

#[derive(Debug)]
struct Shared {
    router: Router,
    limits: Limits,
    metrics: ConnMetrics,
    limiter: ConnectionLimiter,
}

/// An HTTP/1.1 server of one axum router, with [`Limits`].
#[derive(Debug, Clone)]
pub struct HttpServer {
    shared: Arc<Shared>,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections still open when the grace period ended, and cut.
    pub cut: usize,
}

impl HttpServer {
    /// A builder serving `router`.
    pub fn builder(router: Router) -> Builder {
        Builder {
            router,
            limits: Limits::default(),
            metrics: None,
        }
    }

    /// The counters of this server.
    pub fn metrics(&self) -> &ConnMetrics {
        &self.shared.metrics
    }

    /// The limits of this server.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Serves `listener` until `signal` completes, then shuts down
    /// gracefully: stops accepting (the listener is closed), lets in-flight
    /// requests finish within [`Limits::shutdown_grace`], and cuts the rest.
    pub async fn run<F>(&self, listener: TcpListener, signal: F) -> ShutdownReport
    where
        F: Future<Output = ()> + Send,
    {
        let shared = &self.shared;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match shared.limiter.try_acquire(peer.ip()) {
                        Ok(permit) => {
                            connections.spawn(serve_connection(
                                shared.clone(),
                                stream,
                                permit,
                                stop_rx.clone(),
                            ));
                        }
                        Err(reason) => shed_at_accept(&shared.metrics, stream, peer, reason),
                    },
                    Err(e) => accept_failed(e).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let deadline = Instant::now() + shared.limits.shutdown_grace;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, connections.join_next()).await {}
        let cut = connections.len();
        for _ in 0..cut {
            shared.metrics.shed(ShedReason::Shutdown);
        }
        if cut > 0 {
            tracing::warn!(cut, "shutdown grace over: cutting open connections");
        }
        connections.shutdown().await;
        ShutdownReport { cut }
    }

    /// Serves `listener` on a task of its own; see [`SpawnedServer`].
    pub fn spawn(&self, listener: TcpListener) -> io::Result<SpawnedServer> {
        let local_addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = self.clone();
        let task = tokio::spawn(async move {
            server
                .run(listener, async move {
                    let _ = rx.await;
                })
                .await
        });
        Ok(SpawnedServer {
            local_addr,
            stop: Some(tx),
            task,
        })
    }
}

/// A server running on its own task. Dropping it shuts it down in the
/// background; [`SpawnedServer::shutdown`] waits for the shutdown.
#[derive(Debug)]
pub struct SpawnedServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<ShutdownReport>,
}

/// The server task ended without a report.
#[derive(Debug, thiserror::Error)]
#[error("HTTP server task: {source}")]
pub struct TaskError {
    #[source]
    source: tokio::task::JoinError,
}

impl SpawnedServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shuts down gracefully (see [`HttpServer::run`]) and waits.
    pub async fn shutdown(mut self) -> Result<ShutdownReport, TaskError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|source| TaskError { source })
    }
}

fn shed_at_accept(metrics: &ConnMetrics, stream: TcpStream, peer: SocketAddr, reason: ShedReason) {
    metrics.shed(reason);
    tracing::debug!(%peer, %reason, "connection refused");
    // A reset rather than a FIN: nothing was read, nothing will be sent,
    // and the socket leaves no TIME_WAIT behind.
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn accept_failed(e: io::Error) {
    match e.kind() {
        // The peer gave up between SYN and accept: nothing to do.
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {}
        _ => {
            tracing::warn!(error = %e, "accept failed; pausing");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
    }
}

/// What one connection has been doing, shared by its I/O wrapper, its
/// requests' bodies and its watchdog (all on the connection's task, hence
/// relaxed atomics).
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Successful reads so far.
    reads: AtomicU64,
    /// Requests handed to the router so far.
    served: AtomicU64,
    /// Requests whose response is not finished.
    in_flight: AtomicU32,
    /// When the connection last went idle (ms since `start`), or `NEVER`.
    idle_since: AtomicU64,
    /// `reads` when it went idle: more reads since mean a next request.
    reads_at_idle: AtomicU64,
    /// Since when a write has been blocked (ms since `start`), or `NEVER`.
    write_blocked_since: AtomicU64,
    /// Woken when a deadline appears: idle start, write blocked.
    changed: Notify,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            reads: AtomicU64::new(0),
            served: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(NEVER),
            reads_at_idle: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(NEVER),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn at(&self, ms: u64, plus: Duration) -> Instant {
        self.start + Duration::from_millis(ms) + plus
    }

    fn request_started(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.idle_since.store(NEVER, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.reads_at_idle
                .store(self.reads.load(Ordering::Relaxed), Ordering::Relaxed);
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// Idle on keep-alive: a request was served, none is in flight, and no
    /// byte of a next one has arrived.
    fn keep_alive_idle(&self) -> Option<u64> {
        let since = self.idle_since.load(Ordering::Relaxed);
        (since != NEVER
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.reads.load(Ordering::Relaxed) == self.reads_at_idle.load(Ordering::Relaxed))
        .then_some(since)
    }

    fn write_blocked(&self, blocked: bool) {
        if blocked {
            if self.write_blocked_since.load(Ordering::Relaxed) == NEVER {
                self.write_blocked_since
                    .store(self.now_ms(), Ordering::Relaxed);
                self.changed.notify_one();
            }
        } else {
            self.write_blocked_since.store(NEVER, Ordering::Relaxed);
        }
    }

    /// The earliest watchdog deadline and what it would shed.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, ShedReason)> {
        let idle = self
            .keep_alive_idle()
            .map(|since| (self.at(since, limits.idle_timeout), ShedReason::IdleTimeout));
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        let write = (blocked != NEVER).then(|| {
            (
                self.at(blocked, limits.write_timeout),
                ShedReason::WriteTimeout,
            )
        });
        match (idle, write) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// Marks a request in flight until its response body ends or is dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The router's response body, ending its request's [`InFlight`] mark.
#[derive(Debug)]
struct TrackedBody {
    inner: Body,
    in_flight: Option<InFlight>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The hyper service of one connection: the router, under the request
/// timeout, with in-flight tracking.
#[derive(Debug, Clone)]
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
    request_timeout: Option<Duration>,
    metrics: ConnMetrics,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        let in_flight = InFlight(self.activity.clone());
        let mut router = self.router.clone();
        let timeout = self.request_timeout;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let call = async {
                // A Router is always ready; poll it anyway, as the Service
                // contract asks.
                let ready = poll_fn(|cx| {
                    tower_service::Service::<Request<Incoming>>::poll_ready(&mut router, cx)
                })
                .await;
                match ready {
                    Ok(()) => tower_service::Service::call(&mut router, request).await,
                    Err(never) => match never {},
                }
            };
            let response = match timeout {
                None => call.await,
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(response) => response,
                    Err(_) => {
                        metrics.shed(ShedReason::RequestTimeout);
                        Ok(request_timed_out())
                    }
                },
            };
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| TrackedBody {
                inner,
                in_flight: Some(in_flight),
            }))
        })
    }
}

fn request_timed_out() -> Response<Body> {
    let mut response = Response::new(Body::from("request timeout\n"));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    // The client may still be sending its body; the connection is no
    // longer in a known state.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A TCP stream that reports reads and blocked writes to its [`Activity`].
#[derive(Debug)]
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl TrackedIo {
    fn wrote<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.write_blocked(polled.is_pending());
        polled
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    permit: ConnectionPermit,
    mut stop: watch::Receiver<bool>,
) {
    // Held until the connection is gone, whatever ends it.
    let _permit = permit;
    let limits = &shared.limits;
    let metrics = &shared.metrics;
    // Small answers (JSON, playlists) should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = ConnService {
        router: shared.router.clone(),
        activity: activity.clone(),
        request_timeout: limits.request_timeout,
        metrics: metrics.clone(),
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let connection = http.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(limits);
        let watchdog = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    classify_end(metrics, &activity, &e);
                }
                return;
            }
            () = activity.changed.notified() => {}
            _ = stop.changed(), if !draining => {
                // Finishes the request in flight, then closes; an idle
                // connection closes at once.
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = watchdog => {
                // Recomputed: a read or a finished write may have moved it.
                if let Some((at, reason)) = activity.deadline(limits)
                    && at <= Instant::now()
                {
                    metrics.shed(reason);
                    tracing::debug!(%reason, "closing connection");
                    return;
                }
            }
        }
    }
}

fn classify_end(metrics: &ConnMetrics, activity: &Activity, e: &hyper::Error) {
    let reason = if e.is_timeout() {
        // hyper's header clock runs from the connection's start and again
        // from each idle moment: silence after a response is idleness.
        if activity.keep_alive_idle().is_some() {
            ShedReason::IdleTimeout
        } else {
            ShedReason::HeaderTimeout
        }
    } else if e.is_parse_too_large() {
        ShedReason::HeaderTooLarge
    } else if e.is_parse() {
        ShedReason::Malformed
    } else {
        // The client went away, mid-message or not: not a limit of ours.
        tracing::debug!(error = %e, "connection ended");
        return;
    };
    metrics.shed(reason);
    tracing::debug!(%reason, "connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid_and_bad_ones_refused() {
        Limits::default().validate().unwrap();
        let mut limits = Limits::default();
        limits.idle_timeout = limits.header_read_timeout + Duration::from_secs(1);
        assert!(matches!(
            limits.validate(),
            Err(LimitsError::IdleLongerThanHeader { .. })
        ));
        let limits = Limits {
            max_header_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(limits.validate(), Err(LimitsError::HeaderBytes(100)));
        let limits = Limits {
            request_timeout: Some(Duration::ZERO),
            ..Limits::default()
        };
        assert_eq!(limits.validate(), Err(LimitsError::Zero("request_timeout")));
        let limits = Limits {
            request_timeout: None,
            ..Limits::default()
        };
        limits.validate().unwrap();
        let limits = Limits {
            max_connections_per_ip: 0,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
    }
}
