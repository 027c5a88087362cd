//! Prometheus metrics of the tracker (`prometheus` crate, own registry).
//!
//! Names follow Prometheus conventions: `loaves_tracker_` prefix, base units
//! (bytes, seconds), `_total` for counters. Label values for title, region
//! and ISP come from [`crate::stats::StatsBook::labels_for`], which bounds
//! their cardinality. Bytes by source, rebuffering, play time and startup
//! also carry `cohort` (`p2p` or `cdn_only`, two values), so dashboards can
//! compare viewers with P2P on against viewers with it off.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use loaves_proto::pb;

use crate::stats::{ClampReport, Counters, Labels};
use crate::swarm::SwarmSize;

/// Every metric of the tracker.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Bytes downloaded by viewers, by source (peer, seed, cdn).
    pub bytes: IntCounterVec,
    /// Bytes viewers uploaded to other viewers.
    pub uploaded_bytes: IntCounterVec,
    /// Downloaded bytes that crossed an ISP boundary.
    pub cross_isp_bytes: IntCounterVec,
    /// Downloaded bytes that crossed a region boundary.
    pub cross_region_bytes: IntCounterVec,
    /// Time spent rebuffering.
    pub rebuffer_seconds: prometheus::CounterVec,
    /// Rebuffering events.
    pub rebuffer_events: IntCounterVec,
    /// Time played.
    pub played_seconds: prometheus::CounterVec,
    /// Startup time per session.
    pub startup_seconds: HistogramVec,
    /// Viewers per swarm (the largest swarms only).
    pub swarm_peers: GaugeVec,
    /// Seeds per swarm (the largest swarms only).
    pub swarm_seeds: GaugeVec,
    /// Swarms tracked.
    pub swarms: IntGauge,
    /// Viewers tracked.
    pub peers: IntGauge,
    /// Seeds tracked.
    pub seeds: IntGauge,
    /// Open QUIC connections.
    pub connections: IntGauge,
    /// Announces answered with peers.
    pub announces: IntCounter,
    /// Requests by kind and result.
    pub requests: IntCounterVec,
    /// Credentials refused, by reason.
    pub rejected_tokens: IntCounterVec,
    /// Connections refused before the handshake, by reason.
    pub refused_connections: IntCounterVec,
    /// Reports or announce fields not trusted as sent, by kind.
    pub clamped: IntCounterVec,
    /// Time to process one request (core work, not network).
    pub request_seconds: Histogram,
    /// Sum of viewers' spare upload per swarm, bits per second.
    pub swarm_spare_upload: Gauge,
    /// Viewers' connection attempts to peers, by result and NAT class pair.
    pub p2p_connects: IntCounterVec,
    /// Time to connect (or to give up), by result.
    pub p2p_connect_seconds: HistogramVec,
    /// Announces by the NAT class the viewer reported.
    pub nat_classes: IntCounterVec,
    /// Punch requests, by result.
    pub punches: IntCounterVec,
}

fn labels3(labels: &Labels) -> [&str; 3] {
    [&labels.title, &labels.region, &labels.isp]
}

/// Labels of the cohort-split quality series.
const QUALITY: [&str; 4] = ["title", "region", "isp", "cohort"];

/// The label of a NAT class.
pub fn nat_label(class: i32) -> &'static str {
    match pb::NatClass::try_from(class) {
        Ok(pb::NatClass::Open) => "open",
        Ok(pb::NatClass::EndpointIndependent) => "ei",
        Ok(pb::NatClass::EndpointDependent) => "ed",
        _ => "unknown",
    }
}

pub use crate::stats::nat_pair_label;

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let tri = ["title", "region", "isp"];
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let m = Self {
            bytes: counter_vec(
                "loaves_tracker_bytes_total",
                "Bytes downloaded by viewers, by source (peer, seed, cdn), as reported and clamped.",
                &["source", "title", "region", "isp", "cohort"],
            )?,
            uploaded_bytes: counter_vec(
                "loaves_tracker_uploaded_bytes_total",
                "Bytes viewers uploaded to other viewers.",
                &tri,
            )?,
            cross_isp_bytes: counter_vec(
                "loaves_tracker_cross_isp_bytes_total",
                "Downloaded bytes whose sender was in another ISP.",
                &tri,
            )?,
            cross_region_bytes: counter_vec(
                "loaves_tracker_cross_region_bytes_total",
                "Downloaded bytes whose sender was in another region.",
                &tri,
            )?,
            rebuffer_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "loaves_tracker_rebuffer_seconds_total",
                    "Time viewers spent rebuffering.",
                ),
                &QUALITY,
            )?,
            rebuffer_events: counter_vec(
                "loaves_tracker_rebuffer_events_total",
                "Rebuffering events.",
                &QUALITY,
            )?,
            played_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "loaves_tracker_played_seconds_total",
                    "Time viewers played.",
                ),
                &QUALITY,
            )?,
            startup_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "loaves_tracker_startup_seconds",
                    "Startup time of sessions.",
                )
                .buckets(vec![0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
                &["title", "cohort"],
            )?,
            swarm_peers: GaugeVec::new(
                Opts::new(
                    "loaves_tracker_swarm_peers",
                    "Viewers in a swarm (largest swarms).",
                ),
                &["title", "rendition"],
            )?,
            swarm_seeds: GaugeVec::new(
                Opts::new(
                    "loaves_tracker_swarm_seeds",
                    "Seeds of a swarm (largest swarms).",
                ),
                &["title", "rendition"],
            )?,
            swarms: IntGauge::new("loaves_tracker_swarms", "Swarms tracked.")?,
            peers: IntGauge::new("loaves_tracker_peers", "Viewers tracked, all swarms.")?,
            seeds: IntGauge::new("loaves_tracker_seeds", "Seeds tracked.")?,
            connections: IntGauge::new("loaves_tracker_connections", "Open QUIC connections.")?,
            announces: IntCounter::new("loaves_tracker_announces_total", "Announces answered.")?,
            requests: counter_vec(
                "loaves_tracker_requests_total",
                "Requests by kind and result.",
                &["kind", "result"],
            )?,
            rejected_tokens: counter_vec(
                "loaves_tracker_rejected_tokens_total",
                "Session tokens and seed credentials refused, by reason.",
                &["reason"],
            )?,
            refused_connections: counter_vec(
                "loaves_tracker_refused_connections_total",
                "Connections refused, by reason.",
                &["reason"],
            )?,
            clamped: counter_vec(
                "loaves_tracker_clamped_total",
                "Reported values not trusted as sent, by kind.",
                &["kind"],
            )?,
            request_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "loaves_tracker_request_duration_seconds",
                    "Time to process one request inside the tracker.",
                )
                .buckets(vec![1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2]),
            )?,
            swarm_spare_upload: Gauge::new(
                "loaves_tracker_spare_upload_bits_per_second",
                "Spare upload capacity of all viewers.",
            )?,
            p2p_connects: counter_vec(
                "loaves_tracker_p2p_connect_attempts_total",
                "Viewers' attempts to connect to peers, as reported: result (direct, punched, failed) and the NAT classes of the pair (open, ei = endpoint-independent, ed = endpoint-dependent, unknown).",
                &["result", "nat_pair"],
            )?,
            p2p_connect_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "loaves_tracker_p2p_connect_seconds",
                    "Time viewers took to connect to a peer (or to give up), as reported.",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
                &["result"],
            )?,
            nat_classes: counter_vec(
                "loaves_tracker_announces_by_nat_class_total",
                "Announces by the NAT class the viewer reported.",
                &["class"],
            )?,
            punches: counter_vec(
                "loaves_tracker_punch_requests_total",
                "Hole-punch requests, by result (forwarded, not_in_swarm, not_connected, rate_limited, forbidden).",
                &["result"],
            )?,
            registry,
        };
        m.register_all()?;
        Ok(m)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.bytes.clone()))?;
        r.register(Box::new(self.uploaded_bytes.clone()))?;
        r.register(Box::new(self.cross_isp_bytes.clone()))?;
        r.register(Box::new(self.cross_region_bytes.clone()))?;
        r.register(Box::new(self.rebuffer_seconds.clone()))?;
        r.register(Box::new(self.rebuffer_events.clone()))?;
        r.register(Box::new(self.played_seconds.clone()))?;
        r.register(Box::new(self.startup_seconds.clone()))?;
        r.register(Box::new(self.swarm_peers.clone()))?;
        r.register(Box::new(self.swarm_seeds.clone()))?;
        r.register(Box::new(self.swarms.clone()))?;
        r.register(Box::new(self.peers.clone()))?;
        r.register(Box::new(self.seeds.clone()))?;
        r.register(Box::new(self.connections.clone()))?;
        r.register(Box::new(self.p2p_connects.clone()))?;
        r.register(Box::new(self.p2p_connect_seconds.clone()))?;
        r.register(Box::new(self.nat_classes.clone()))?;
        r.register(Box::new(self.punches.clone()))?;
        r.register(Box::new(self.announces.clone()))?;
        r.register(Box::new(self.requests.clone()))?;
        r.register(Box::new(self.rejected_tokens.clone()))?;
        r.register(Box::new(self.refused_connections.clone()))?;
        r.register(Box::new(self.clamped.clone()))?;
        r.register(Box::new(self.request_seconds.clone()))?;
        r.register(Box::new(self.swarm_spare_upload.clone()))?;
        Ok(())
    }

    /// Adds one clamped report.
    pub fn ingest(&self, labels: &Labels, c: &Counters, clamp: &ClampReport) {
        let [t, r, i] = labels3(labels);
        let cohort = labels.cohort.as_str();
        let quality = [t, r, i, cohort];
        for (source, value) in [
            ("peer", c.bytes_from_peers),
            ("seed", c.bytes_from_seeds),
            ("cdn", c.bytes_from_cdn),
        ] {
            if value > 0 {
                self.bytes
                    .with_label_values(&[source, t, r, i, cohort])
                    .inc_by(value);
            }
        }
        let tri = [t, r, i];
        if c.bytes_uploaded > 0 {
            self.uploaded_bytes
                .with_label_values(&tri)
                .inc_by(c.bytes_uploaded);
        }
        if c.bytes_cross_isp > 0 {
            self.cross_isp_bytes
                .with_label_values(&tri)
                .inc_by(c.bytes_cross_isp);
        }
        if c.bytes_cross_region > 0 {
            self.cross_region_bytes
                .with_label_values(&tri)
                .inc_by(c.bytes_cross_region);
        }
        if c.rebuffer_ms > 0 {
            self.rebuffer_seconds
                .with_label_values(&quality)
                .inc_by(c.rebuffer_ms as f64 / 1000.0);
        }
        if c.rebuffer_count > 0 {
            self.rebuffer_events
                .with_label_values(&quality)
                .inc_by(c.rebuffer_count);
        }
        if c.played_ms > 0 {
            self.played_seconds
                .with_label_values(&quality)
                .inc_by(c.played_ms as f64 / 1000.0);
        }
        if c.startup_count > 0 {
            self.startup_seconds
                .with_label_values(&[t, cohort])
                .observe(c.startup_ms_sum as f64 / 1000.0);
        }
        if clamp.downloads_dropped {
            self.clamped.with_label_values(&["downloads"]).inc();
        }
        if clamp.upload_dropped {
            self.clamped.with_label_values(&["upload"]).inc();
        }
        if clamp.fields_clamped > 0 {
            self.clamped
                .with_label_values(&["field"])
                .inc_by(u64::from(clamp.fields_clamped));
        }
    }

    /// Refreshes the swarm gauges: totals, and per swarm for the `top`
    /// largest swarms (bounded cardinality).
    pub fn set_swarms(&self, sizes: &[SwarmSize], peers: usize, seeds: usize, top: usize) {
        self.swarms.set(sizes.len() as i64);
        self.peers.set(peers as i64);
        self.seeds.set(seeds as i64);
        self.swarm_peers.reset();
        self.swarm_seeds.reset();
        let mut spare = 0u64;
        for size in sizes {
            spare = spare.saturating_add(size.spare_upload_bps);
        }
        self.swarm_spare_upload.set(spare as f64);
        for size in sizes.iter().take(top) {
            let labels = [size.title.as_str(), size.rendition.as_str()];
            self.swarm_peers
                .with_label_values(&labels)
                .set(size.peers as f64);
            self.swarm_seeds
                .with_label_values(&labels)
                .set(size.seeds as f64);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::{Cohort, StatsBook, StatsLimits, clamp};
    use loaves_proto::pb;

    fn line<'a>(text: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|want| l.contains(want)))
    }

    #[test]
    fn quality_and_bytes_carry_the_cohort_label() {
        let metrics = Metrics::new().unwrap();
        let book = StatsBook::new(StatsLimits::default());
        let report = |cdn_only: bool| pb::StatsDelta {
            bytes_from_peers: if cdn_only { 0 } else { 4_000 },
            bytes_from_cdn: 1_000,
            rebuffer_ms: if cdn_only { 3_000 } else { 500 },
            rebuffer_count: 1,
            startup_ms: 900,
            played_ms: 20_000,
            cdn_only,
            ..Default::default()
        };
        for cdn_only in [false, true] {
            let delta = report(cdn_only);
            let (counters, clamped) = clamp(&delta, 30, book.limits());
            let labels = book.labels_for("film", "eu", "isp-a", Cohort::of(&delta));
            metrics.ingest(&labels, &counters, &clamped);
        }
        let text = metrics.render();
        let p2p = r#"cohort="p2p""#;
        let cdn = r#"cohort="cdn_only""#;
        for cohort in [p2p, cdn] {
            for name in [
                "loaves_tracker_rebuffer_seconds_total",
                "loaves_tracker_rebuffer_events_total",
                "loaves_tracker_played_seconds_total",
                "loaves_tracker_startup_seconds_count",
            ] {
                assert!(
                    line(&text, name, &[cohort, r#"title="film""#]).is_some(),
                    "{name} {cohort}:\n{text}"
                );
            }
            assert!(
                line(
                    &text,
                    "loaves_tracker_bytes_total",
                    &[cohort, r#"source="cdn""#, r#"isp="isp-a""#]
                )
                .is_some()
            );
        }
        let rebuffer = |cohort| {
            line(&text, "loaves_tracker_rebuffer_seconds_total", &[cohort])
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(rebuffer(p2p), Some(0.5));
        assert_eq!(rebuffer(cdn), Some(3.0));
        // CDN-only viewers downloaded nothing from peers: no such series.
        assert!(
            line(
                &text,
                "loaves_tracker_bytes_total",
                &[cdn, r#"source="peer""#]
            )
            .is_none()
        );
        // Series not split by cohort keep their three labels.
        let uploaded = line(&text, "loaves_tracker_cross_isp_bytes_total", &[]);
        assert!(uploaded.is_none_or(|l| !l.contains("cohort")));
    }
}
