//! One hardened way to serve HTTP for every Loaves surface.
//!
//! Each of the project's HTTP listeners (license server's ClearKey and
//! operators' endpoints, tracker dashboard and metrics, edge seed origin,
//! the SDK's local player endpoint) and the license server's gRPC port
//! used to accept whatever came: a client could hold a connection forever
//! by sending half a request head, or a TLS connection by never finishing
//! its ClientHello, or open thousands of HTTP/2 streams on one connection
//! and never send their bodies. Hundreds of such connections took the
//! process to its file-descriptor limit (honest requests then time out)
//! and grew its memory for good. This crate bounds every one of those:
//!
//! - [`HttpServer`] ([`server`]): HTTP/1.1 for an axum `Router`, driven by
//!   hyper directly so each connection is bounded: header-read and idle
//!   timeouts, head size, total and per-address connection caps checked
//!   before any read, an optional request timeout, a write timeout, and a
//!   graceful shutdown with a bound.
//! - `tls` (feature `grpc`): a TLS front end for tonic's
//!   `serve_with_incoming_shutdown` with the same caps and a handshake
//!   timeout, plus the tonic server settings this project recommends
//!   (concurrent streams per connection, a request timeout that covers a
//!   stream waiting for its body, HTTP/2 keepalive, header list size).
//! - [`range`]: the one `Range` header parser, overflow-safe.
//! - [`ConnMetrics`]: shed connections counted by [`ShedReason`] and open
//!   connections, registrable in a server's own Prometheus registry.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use loaves_http::{ConnMetrics, HttpServer, Limits};
//! let registry = prometheus::Registry::new();
//! let metrics = ConnMetrics::register(&registry, "loaves_example", "api")?;
//! let mut limits = Limits::default();
//! limits.max_connections = 256;
//! let router = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
//! let server = HttpServer::builder(router).limits(limits).metrics(metrics).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let running = server.spawn(listener)?;
//! // ...
//! let report = running.shutdown().await?;
//! # let _ = report;
//! # Ok(()) }
//! ```

mod limiter;
pub mod metrics;
pub mod range;
pub mod server;
#[cfg(feature = "grpc")]
pub mod tls;

pub use limiter::{ConnectionLimiter, ConnectionPermit};
pub use metrics::{ConnMetrics, MetricsError, ShedReason};
pub use range::{ByteRange, RangeRequest, parse_content_range, parse_range};
pub use server::{Builder, HttpServer, Limits, LimitsError, ShutdownReport, SpawnedServer};
