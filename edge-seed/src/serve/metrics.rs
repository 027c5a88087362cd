//! Prometheus series of the edge seed. Label values are bounded: titles come
//! from the configuration, the rest are fixed words.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every series, registered in one [`Registry`].
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Body bytes served, by title and protocol (`quic`, `http`).
    pub bytes_served: IntCounterVec,
    /// Requests answered, by protocol and status.
    pub requests: IntCounterVec,
    /// Cache hits by tier (`memory`, `disk`).
    pub cache_hits: IntCounterVec,
    /// Lookups that found the segment in no cache.
    pub cache_misses: IntCounter,
    /// Evictions by tier.
    pub cache_evictions: IntCounterVec,
    /// Bytes held, by tier.
    pub cache_bytes: IntGaugeVec,
    /// Origin requests made (segments, manifests, playlists).
    pub origin_fetches: IntCounterVec,
    /// Duration of successful origin fetches.
    pub origin_latency: Histogram,
    /// Origin failures by reason (`http_status`, `io`, `timeout`,
    /// `too_large`, `size`, `hash`, `manifest`).
    pub origin_errors: IntCounterVec,
    /// Refusals by reason (`max_connections`, `per_ip`, `uploads`,
    /// `egress`, `draining`).
    pub refused: IntCounterVec,
    /// Hellos refused, by reason.
    pub hello_refused: IntCounterVec,
    /// Open peer connections.
    pub connections: IntGauge,
    /// Peer connections accepted since start.
    pub connections_total: IntCounter,
    /// Uploads in progress.
    pub uploads_in_flight: IntGauge,
    /// Live segments announced in HAVE notices.
    pub have_notices: IntCounter,
    /// Tracker registrations by result (`ok`, `error`).
    pub registrations: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

impl Metrics {
    /// Creates and registers every series.
    ///
    /// Panics only on a programming error (duplicate or malformed names),
    /// never on input.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("register");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("register");
            metric
        };
        let origin_latency = Histogram::with_opts(
            HistogramOpts::new(
                "loaves_seed_origin_fetch_seconds",
                "Duration of successful origin fetches.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(origin_latency.clone()))
            .expect("register");
        let cache_bytes = IntGaugeVec::new(
            Opts::new("loaves_seed_cache_bytes", "Bytes held in cache, by tier."),
            &["tier"],
        )
        .expect("metric");
        registry
            .register(Box::new(cache_bytes.clone()))
            .expect("register");
        Self {
            registry: registry.clone(),
            bytes_served: counter_vec(
                &registry,
                "loaves_seed_bytes_served_total",
                "Body bytes served, by title and protocol.",
                &["title", "protocol"],
            ),
            requests: counter_vec(
                &registry,
                "loaves_seed_requests_total",
                "Requests answered, by protocol and status.",
                &["protocol", "status"],
            ),
            cache_hits: counter_vec(
                &registry,
                "loaves_seed_cache_hits_total",
                "Segment lookups served from a cache tier.",
                &["tier"],
            ),
            cache_misses: counter(
                "loaves_seed_cache_misses_total",
                "Segment lookups found in no cache.",
            ),
            cache_evictions: counter_vec(
                &registry,
                "loaves_seed_cache_evictions_total",
                "Segments evicted, by tier.",
                &["tier"],
            ),
            cache_bytes,
            origin_fetches: counter_vec(
                &registry,
                "loaves_seed_origin_fetches_total",
                "Origin requests, by kind.",
                &["kind"],
            ),
            origin_latency,
            origin_errors: counter_vec(
                &registry,
                "loaves_seed_origin_errors_total",
                "Failed or rejected origin responses, by reason.",
                &["reason"],
            ),
            refused: counter_vec(
                &registry,
                "loaves_seed_refused_total",
                "Connections and requests refused for capacity, by reason.",
                &["reason"],
            ),
            hello_refused: counter_vec(
                &registry,
                "loaves_seed_hello_refused_total",
                "Peer hellos refused, by reason.",
                &["reason"],
            ),
            connections: gauge("loaves_seed_connections", "Open peer connections."),
            connections_total: counter(
                "loaves_seed_connections_total",
                "Peer connections accepted.",
            ),
            uploads_in_flight: gauge("loaves_seed_uploads_in_flight", "Uploads in progress."),
            have_notices: counter(
                "loaves_seed_have_notices_total",
                "Live segments announced to peers.",
            ),
            registrations: counter_vec(
                &registry,
                "loaves_seed_tracker_registrations_total",
                "Tracker registrations, by result.",
                &["result"],
            ),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
