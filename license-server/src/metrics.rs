//! Prometheus metrics, served on `/metrics` by [`crate::http`].
//!
//! Series (all prefixed `loaves_license_`):
//! - `licenses_issued_total`, `renewals_total`, `releases_total`
//! - `denials_total{reason}`: every refused request, by [`Denial::reason`]
//! - `content_keys_served_total`: keys returned by the packager key service
//! - `active_sessions`: live sessions in the store (all replicas), read at scrape
//! - `request_duration_seconds{method}`: latency of every gRPC call
//! - `requests_in_flight`: admitted requests being processed
//! - `http_connections_shed_total{listener, reason}`: connections refused
//!   or closed by a connection limit (`listener` is `grpc`, `clearkey` or
//!   `ops`; reasons in `loaves_http::ShedReason`)
//! - `http_connections_open{listener}`: connections open now

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use loaves_http::ConnMetrics;

use crate::error::Denial;

/// The service's metrics and their registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Licenses issued by AcquireLicense.
    pub licenses_issued: IntCounter,
    /// Successful renewals.
    pub renewals: IntCounter,
    /// Successful releases.
    pub releases: IntCounter,
    /// Refusals by reason.
    pub denials: IntCounterVec,
    /// Keys returned by the key service.
    pub keys_served: IntCounter,
    /// Live sessions (set at scrape time).
    pub active_sessions: IntGauge,
    /// Request latency by method.
    pub request_duration: HistogramVec,
    /// Requests being processed.
    pub in_flight: IntGauge,
    /// Connections of the gRPC listener.
    pub grpc_connections: ConnMetrics,
    /// Connections of the ClearKey listener.
    pub clearkey_connections: ConnMetrics,
    /// Connections of the operators' listener.
    pub ops_connections: ConnMetrics,
}

/// Why the metrics could not be registered or encoded.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A series of this crate.
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The connection series.
    #[error(transparent)]
    Connections(#[from] loaves_http::MetricsError),
}

impl Metrics {
    /// Registers every series in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("loaves_license".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let licenses_issued = counter("licenses_issued_total", "Licenses issued (acquisitions).")?;
        let renewals = counter("renewals_total", "Successful license renewals.")?;
        let releases = counter("releases_total", "Sessions released by their client.")?;
        let keys_served = counter(
            "content_keys_served_total",
            "Content keys returned to packagers.",
        )?;
        let denials = IntCounterVec::new(
            Opts::new("denials_total", "Refused requests, by reason."),
            &["reason"],
        )?;
        registry.register(Box::new(denials.clone()))?;
        let active_sessions = IntGauge::new("active_sessions", "Live sessions in the store.")?;
        registry.register(Box::new(active_sessions.clone()))?;
        let in_flight = IntGauge::new("requests_in_flight", "Requests being processed.")?;
        registry.register(Box::new(in_flight.clone()))?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "gRPC request latency.").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let connections = |listener| ConnMetrics::register(&registry, "", listener);
        let grpc_connections = connections("grpc")?;
        let clearkey_connections = connections("clearkey")?;
        let ops_connections = connections("ops")?;
        Ok(Self {
            grpc_connections,
            clearkey_connections,
            ops_connections,
            registry,
            licenses_issued,
            renewals,
            releases,
            denials,
            keys_served,
            active_sessions,
            request_duration,
            in_flight,
        })
    }

    /// Counts a refusal.
    pub fn deny(&self, denial: &Denial) {
        self.denials.with_label_values(&[denial.reason()]).inc();
    }

    /// The latency histogram of one method.
    pub fn latency(&self, method: &str) -> Histogram {
        self.request_duration.with_label_values(&[method])
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
