//! Counters of shed connections by reason, and a gauge of open connections.
//!
//! [`ConnMetrics::new`] gives counters that count but are in no registry
//! (tests, or a server without metrics); [`ConnMetrics::register`] puts
//! the same counters into a server's own Prometheus registry as
//!
//! - `<prefix>_http_connections_shed_total{listener, reason}`: connections
//!   closed or refused by a limit, one series per [`ShedReason`] (all
//!   present from the start, at 0, so alerts can use `rate()` at once);
//! - `<prefix>_http_connections_open{listener}`: connections holding a
//!   [`crate::ConnectionPermit`] now.
//!
//! `listener` is a constant label telling several listeners of one process
//! apart (the license server has `grpc`, `clearkey` and `ops`); an empty
//! listener name leaves it out, for a process with one listener. With a
//! registry that adds its own prefix (`Registry::new_custom`), pass an
//! empty `prefix`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a connection was refused or closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShedReason {
    /// Refused at accept: the listener's total connection cap was reached.
    MaxConnections,
    /// Refused at accept: the peer's address (IPv4, or IPv6 /64) had its
    /// cap of connections open.
    PerIp,
    /// The request head did not arrive within the header-read timeout
    /// (a half-sent request, or a new connection that sent nothing).
    HeaderTimeout,
    /// A keep-alive connection sent no next request within the idle
    /// timeout.
    IdleTimeout,
    /// The handler did not answer within the request timeout (408).
    RequestTimeout,
    /// A response write made no progress within the write timeout (the
    /// client stopped reading).
    WriteTimeout,
    /// The request head was larger than the limit (431).
    HeaderTooLarge,
    /// The request was not valid HTTP/1.
    Malformed,
    /// The TLS handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// After the TLS handshake, the client did not send the HTTP/2
    /// connection preface in time, or sent something else.
    BadPreface,
    /// Still open when the shutdown grace period ended, and cut.
    Shutdown,
}

impl ShedReason {
    /// Every reason, in label order.
    pub const ALL: [ShedReason; 12] = [
        ShedReason::MaxConnections,
        ShedReason::PerIp,
        ShedReason::HeaderTimeout,
        ShedReason::IdleTimeout,
        ShedReason::RequestTimeout,
        ShedReason::WriteTimeout,
        ShedReason::HeaderTooLarge,
        ShedReason::Malformed,
        ShedReason::HandshakeTimeout,
        ShedReason::HandshakeFailed,
        ShedReason::BadPreface,
        ShedReason::Shutdown,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::MaxConnections => "max_connections",
            ShedReason::PerIp => "per_ip",
            ShedReason::HeaderTimeout => "header_timeout",
            ShedReason::IdleTimeout => "idle_timeout",
            ShedReason::RequestTimeout => "request_timeout",
            ShedReason::WriteTimeout => "write_timeout",
            ShedReason::HeaderTooLarge => "header_too_large",
            ShedReason::Malformed => "malformed",
            ShedReason::HandshakeTimeout => "handshake_timeout",
            ShedReason::HandshakeFailed => "handshake_failed",
            ShedReason::BadPreface => "bad_preface",
            ShedReason::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        // ALL is in declaration order.
        self as usize
    }
}

impl std::fmt::Display for ShedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the metrics could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("registering HTTP connection metrics: {source}")]
pub struct MetricsError {
    #[source]
    source: prometheus::Error,
}

impl From<prometheus::Error> for MetricsError {
    fn from(source: prometheus::Error) -> Self {
        Self { source }
    }
}

/// Shed counters and the open-connections gauge of one listener. Cheap to
/// clone (the counters are shared).
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    shed: Vec<IntCounter>,
    open: IntGauge,
}

impl Default for ConnMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}_{name}")
    }
}

impl ConnMetrics {
    /// Counters in no registry.
    pub fn new() -> Self {
        // With a fixed valid name, no listener label and no registry,
        // building cannot fail (prometheus only refuses invalid names and
        // duplicate registrations).
        #[allow(clippy::expect_used)]
        let (metrics, _, _) = Self::build("", "").expect("fixed metric names are valid");
        metrics
    }

    /// Counters registered in `registry` as
    /// `<prefix>_http_connections_shed_total{listener, reason}` and
    /// `<prefix>_http_connections_open{listener}`.
    pub fn register(
        registry: &Registry,
        prefix: &str,
        listener: &str,
    ) -> Result<Self, MetricsError> {
        let (metrics, shed, open) = Self::build(prefix, listener)?;
        registry.register(Box::new(shed))?;
        registry.register(Box::new(open))?;
        Ok(metrics)
    }

    fn build(
        prefix: &str,
        listener: &str,
    ) -> Result<(Self, IntCounterVec, IntGauge), prometheus::Error> {
        let mut shed_opts = Opts::new(
            name(prefix, "http_connections_shed_total"),
            "Connections refused or closed by a limit, by reason.",
        );
        let mut open_opts = Opts::new(
            name(prefix, "http_connections_open"),
            "Connections open now.",
        );
        if !listener.is_empty() {
            shed_opts = shed_opts.const_label("listener", listener);
            open_opts = open_opts.const_label("listener", listener);
        }
        let vec = IntCounterVec::new(shed_opts, &["reason"])?;
        let shed = ShedReason::ALL
            .iter()
            .map(|r| vec.with_label_values(&[r.as_str()]))
            .collect();
        let open = IntGauge::with_opts(open_opts)?;
        Ok((
            Self {
                shed,
                open: open.clone(),
            },
            vec,
            open,
        ))
    }

    /// Counts one shed connection.
    pub fn shed(&self, reason: ShedReason) {
        if let Some(counter) = self.shed.get(reason.index()) {
            counter.inc();
        }
    }

    /// How many connections were shed for `reason` so far.
    pub fn shed_count(&self, reason: ShedReason) -> u64 {
        self.shed.get(reason.index()).map_or(0, IntCounter::get)
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    pub(crate) fn opened(&self) {
        self.open.inc();
    }

    pub(crate) fn closed(&self) {
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_labels() {
        for (i, r) in ShedReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn registered_series_are_exposed_per_listener() {
        let registry = Registry::new_custom(Some("loaves_test".into()), None).unwrap();
        let a = ConnMetrics::register(&registry, "", "grpc").unwrap();
        let b = ConnMetrics::register(&registry, "", "ops").unwrap();
        a.shed(ShedReason::PerIp);
        a.shed(ShedReason::PerIp);
        b.opened();
        assert_eq!(a.shed_count(ShedReason::PerIp), 2);
        assert_eq!(b.shed_count(ShedReason::PerIp), 0);
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(
                "loaves_test_http_connections_shed_total{listener=\"grpc\",reason=\"per_ip\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("loaves_test_http_connections_open{listener=\"ops\"} 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"header_timeout\"} 0"), "{text}");
        let plain = Registry::new();
        ConnMetrics::register(&plain, "loaves_tracker", "dashboard").unwrap();
        let names: Vec<String> = plain.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.contains(&"loaves_tracker_http_connections_shed_total".to_owned()));
        assert!(
            ConnMetrics::register(&plain, "loaves_tracker", "dashboard").is_err(),
            "the same listener twice is refused"
        );
    }
}
