//! A TLS front end for tonic servers, and the tonic settings this project
//! recommends.
//!
//! tonic's own TLS (`Server::tls_config`) handshakes without a timeout and
//! accepts every connection, so a client that opens TCP connections and
//! never finishes its ClientHello holds each one (and a file descriptor)
//! for as long as it likes. [`TlsIncoming`] takes its place: it accepts
//! TCP, applies the total and per-address caps of [`TlsLimits`] before any
//! read, runs the rustls handshake and reads the HTTP/2 connection preface
//! under one deadline ([`TlsLimits::handshake_timeout`]), each on a task of
//! its own so a slow handshake delays nobody else, and yields the
//! connections that made it to `Server::serve_with_incoming_shutdown`.
//! Each yielded [`TlsConn`] holds its [`ConnectionPermit`] until tonic
//! drops the connection. Dropping the [`TlsIncoming`] (tonic does when it
//! stops accepting) closes the listener.
//!
//! Past the handshake, HTTP/2 itself needs bounds, set with
//! [`GrpcLimits::apply`]: without `MAX_CONCURRENT_STREAMS` a single
//! connection can open thousands of streams, and without a request timeout
//! each stream that never sends its body lives forever. See each field of
//! [`GrpcLimits`] for what it bounds.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::limiter::{ConnectionLimiter, ConnectionPermit};
use crate::metrics::{ConnMetrics, ShedReason};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections handshaken but not yet taken by tonic. tonic takes them as
/// fast as it can spawn a task, so this only absorbs bursts.
const READY_QUEUE: usize = 64;

/// Pause after an `accept` error such as `EMFILE` (see the HTTP server).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of a TLS listener, before HTTP/2 begins.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsLimits {
    /// Time from accept to a finished handshake and the HTTP/2 preface.
    /// Default 5 s: a TLS 1.3 handshake is one round trip and the preface
    /// follows at once, so even a slow link needs a second; a client that
    /// stalls its ClientHello frees its connection after 5 s.
    pub handshake_timeout: Duration,
    /// Most connections open at once (handshaking or serving). Default
    /// 1024: each costs a file descriptor and tens of KiB of TLS and
    /// HTTP/2 state; set it below the process's descriptor limit, minus
    /// what the store and the other listeners need.
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv4, or IPv6
    /// /64). Default 64: a client needs one HTTP/2 connection, but many
    /// viewers can share one address behind a NAT; raise it where they do.
    pub max_connections_per_ip: usize,
    /// Whether the HTTP/2 preface must arrive within the handshake
    /// deadline (tonic serves HTTP/2 only). Default true: otherwise a
    /// client could finish the handshake and then send nothing, which
    /// HTTP/2 itself does not time out.
    pub require_h2_preface: bool,
}

impl Default for TlsLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_connections_per_ip: 64,
            require_h2_preface: true,
        }
    }
}

/// Why a TLS front end could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A limit is zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// The listener's address could not be read.
    #[error("reading the listener's address: {source}")]
    LocalAddr {
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The PEM holds no certificate.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The PEM holds no private key, or one that cannot be read.
    #[error("reading the PEM private key: {source}")]
    Key {
        /// The error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate could not be read.
    #[error("reading a PEM certificate: {source}")]
    Certificate {
        /// The error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration (a key that does not match the
    /// certificate, an unsupported key type...).
    #[error("TLS configuration: {source}")]
    Rustls {
        /// The error.
        #[source]
        source: rustls::Error,
    },
}

/// A rustls server configuration for gRPC: the certificate chain and key
/// (PEM), the ring provider, TLS 1.2 and 1.3, ALPN `h2`.
pub fn grpc_server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate { source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key { source })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls { source })?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Rustls { source })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Builds a [`TlsIncoming`].
#[derive(Debug)]
#[must_use]
pub struct TlsIncomingBuilder {
    config: Arc<ServerConfig>,
    limits: TlsLimits,
    metrics: Option<ConnMetrics>,
}

impl TlsIncomingBuilder {
    /// The limits (default [`TlsLimits::default`]).
    pub fn limits(mut self, limits: TlsLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Where shed connections are counted.
    pub fn metrics(mut self, metrics: ConnMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Starts accepting on `listener` (needs a tokio runtime).
    pub fn serve(self, listener: TcpListener) -> Result<TlsIncoming, TlsError> {
        let limits = self.limits;
        if limits.handshake_timeout.is_zero() {
            return Err(TlsError::Zero("handshake_timeout"));
        }
        if limits.max_connections == 0 {
            return Err(TlsError::Zero("max_connections"));
        }
        if limits.max_connections_per_ip == 0 {
            return Err(TlsError::Zero("max_connections_per_ip"));
        }
        let local_addr = listener
            .local_addr()
            .map_err(|source| TlsError::LocalAddr { source })?;
        let metrics = self.metrics.unwrap_or_default();
        let limiter = ConnectionLimiter::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            metrics.clone(),
        );
        let (tx, rx) = mpsc::channel(READY_QUEUE);
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.config),
            limits,
            limiter,
            metrics.clone(),
            tx,
        ));
        Ok(TlsIncoming {
            rx,
            accept,
            local_addr,
            metrics,
        })
    }
}

/// Handshaken TLS connections for `Server::serve_with_incoming_shutdown`.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConn>,
    accept: JoinHandle<()>,
    local_addr: SocketAddr,
    metrics: ConnMetrics,
}

impl TlsIncoming {
    /// A builder with the server's rustls configuration (see
    /// [`grpc_server_config`]).
    pub fn builder(config: Arc<ServerConfig>) -> TlsIncomingBuilder {
        TlsIncomingBuilder {
            config,
            limits: TlsLimits::default(),
            metrics: None,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters of this listener.
    pub fn metrics(&self) -> &ConnMetrics {
        &self.metrics
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        // Stops accepting and closes the listener; handshakes under way
        // end at their deadline and find nobody to hand their connection to.
        self.accept.abort();
    }
}

impl futures_core::Stream for TlsIncoming {
    type Item = Result<TlsConn, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: TlsLimits,
    limiter: ConnectionLimiter,
    metrics: ConnMetrics,
    tx: mpsc::Sender<TlsConn>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        tracing::warn!(error = %e, "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let permit = match limiter.try_acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(reason) => {
                metrics.shed(reason);
                tracing::debug!(%peer, %reason, "connection refused");
                let _ = stream.set_zero_linger();
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let metrics = metrics.clone();
        let tx = tx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            match handshake(stream, &acceptor, &limits).await {
                Ok((tls, prefix)) => {
                    let conn = TlsConn {
                        inner: tls,
                        prefix,
                        prefix_pos: 0,
                        _permit: permit,
                    };
                    // Fails only when tonic stopped accepting: the
                    // connection is dropped, its permit released.
                    let _ = tx.send(conn).await;
                }
                Err(reason) => {
                    metrics.shed(reason);
                    tracing::debug!(%peer, %reason, "TLS connection closed");
                }
            }
        });
    }
}

async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    limits: &TlsLimits,
) -> Result<(TlsStream<TcpStream>, Vec<u8>), ShedReason> {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let mut tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => return Err(ShedReason::HandshakeTimeout),
        Ok(Err(_)) => return Err(ShedReason::HandshakeFailed),
        Ok(Ok(tls)) => tls,
    };
    if !limits.require_h2_preface {
        return Ok((tls, Vec::new()));
    }
    let mut preface = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout_at(deadline, tls.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == H2_PREFACE => Ok((tls, preface.to_vec())),
        _ => Err(ShedReason::BadPreface),
    }
}

/// A handshaken TLS connection holding its place under the caps. What was
/// read to check the HTTP/2 preface is replayed to the reader first.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    prefix: Vec<u8>,
    prefix_pos: usize,
    _permit: ConnectionPermit,
}

impl TlsConn {
    /// The TLS stream.
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.inner
    }
}

impl Connected for TlsConn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.prefix_pos < this.prefix.len() {
            let rest = &this.prefix[this.prefix_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n;
            if this.prefix_pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The tonic server settings this project recommends, as values to set
/// with [`GrpcLimits::apply`]. Each default is sized for the license
/// server's unary calls (requests of at most a few KiB, answered from
/// memory or one store transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcLimits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one connection may have
    /// open; the peer's extra streams are refused (`REFUSED_STREAM`).
    /// Default 64: a client with a few calls in flight never needs more,
    /// and one connection can no longer hold thousands of streams and
    /// their memory. tonic's default is unlimited.
    pub max_concurrent_streams: u32,
    /// Requests one connection may have in service at once; the rest of
    /// its open streams wait. Default 16: spreads the server's admission
    /// slots over connections.
    pub concurrency_per_connection: usize,
    /// Time a request may take, from its headers to its answer, including
    /// waiting for its body (tonic's timeout wraps the whole service call,
    /// which reads the body). Default 10 s: a stream that never sends its
    /// body is answered `CANCELLED` and closed, instead of living forever.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 PINGs on a quiet connection. Default 30 s:
    /// finds peers that vanished without a FIN (a mobile client that lost
    /// its network) in under a minute.
    pub keepalive_interval: Duration,
    /// Time a PING may go unanswered before the connection is closed.
    /// Default 10 s.
    pub keepalive_timeout: Duration,
    /// Largest header list (HPACK-decoded) of one request. Default 16 KiB:
    /// gRPC requests carry a handful of short headers.
    pub max_header_list_bytes: u32,
    /// Initial flow-control window of one stream: how much request body
    /// the server buffers per stream before the client must wait. Default
    /// 64 KiB, the size of the largest request (hyper's is 1 MiB).
    pub stream_window_bytes: u32,
    /// Initial flow-control window of one connection: what all its streams
    /// together may have buffered. Default 256 KiB (hyper's is 1 MiB), so
    /// 1,024 connections buffer at most 256 MiB.
    pub connection_window_bytes: u32,
    /// Age after which a connection is asked to go away (clients
    /// reconnect); `None` for no limit. Default 1 h: HTTP/2 has no idle
    /// timeout, and a client that answers PINGs but never calls would
    /// otherwise keep its place for good.
    pub max_connection_age: Option<Duration>,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 64,
            concurrency_per_connection: 16,
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_header_list_bytes: 16 * 1024,
            stream_window_bytes: 64 * 1024,
            connection_window_bytes: 256 * 1024,
            max_connection_age: Some(Duration::from_secs(3600)),
        }
    }
}

impl GrpcLimits {
    /// Sets these limits on a tonic server builder. The grace after
    /// `max_connection_age` is the request timeout: calls in flight may
    /// finish, then the connection is cut.
    pub fn apply<L>(&self, server: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        let server = server
            .max_concurrent_streams(self.max_concurrent_streams)
            .concurrency_limit_per_connection(self.concurrency_per_connection.max(1))
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .http2_max_header_list_size(self.max_header_list_bytes)
            .initial_stream_window_size(self.stream_window_bytes)
            .initial_connection_window_size(self.connection_window_bytes)
            .tcp_nodelay(true);
        match self.max_connection_age {
            Some(age) => server
                .max_connection_age(age)
                .max_connection_age_grace(self.request_timeout),
            None => server,
        }
    }
}
