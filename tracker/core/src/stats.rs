//! Viewers' counters: clamping and aggregation (pure, no I/O, no clock).
//!
//! Each announce carries the counters since the previous announce on the
//! same connection. They are claims, not facts: a report is checked against
//! what is physically possible in the time it covers (the *window*: seconds
//! since the previous report on the connection, or a fixed allowance for the
//! first one), and what is impossible is clamped or dropped, and counted.
//!
//! Rules, per report with window `w` seconds:
//! - bytes downloaded (peers + seeds + CDN) above `max_download_bytes_per_s · w`:
//!   the report's byte counters are all dropped (an inflated report is not
//!   trusted in part, so it cannot skew offload either way);
//! - bytes uploaded above `max_upload_bytes_per_s · w`: dropped;
//! - cross-ISP / cross-region bytes are clamped to the bytes downloaded;
//! - rebuffer and played time are clamped to `w`; rebuffer events to one per
//!   second of window;
//! - a startup time above `max_startup_ms` is dropped.
//!
//! Aggregates are kept per (title, region, ISP, cohort). The cohort is
//! `p2p` or `cdn_only`, from the report's `cdn_only` flag (absent in older
//! clients' reports: `p2p`), so P2P viewers' quality can be compared with
//! CDN-only viewers'. The number of label sets is bounded: beyond
//! `max_label_sets`, new combinations are filed under title, region and ISP
//! `other` (keeping the cohort, two values), so memory and Prometheus
//! cardinality stay bounded.

use confique::Config;
use std::collections::{HashMap, VecDeque};

use loaves_proto::{UnixSeconds, pb};
use serde::Serialize;

/// Bounds on what one report may claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct StatsLimits {
    /// Highest plausible download rate of one viewer, bytes per second.
    #[config(default = 125_000_000)]
    pub max_download_bytes_per_s: u64,
    /// Highest plausible upload rate of one viewer, bytes per second.
    #[config(default = 125_000_000)]
    pub max_upload_bytes_per_s: u64,
    /// Window granted to the first report of a connection, seconds.
    #[config(default = 120)]
    pub first_report_window_s: u64,
    /// Longest window a report may cover, seconds.
    #[config(default = 600)]
    pub max_window_s: u64,
    /// Longest plausible startup time, milliseconds.
    #[config(default = 120_000)]
    pub max_startup_ms: u32,
    /// Distinct (title, region, ISP) label sets kept.
    #[config(default = 10_000)]
    pub max_label_sets: usize,
    /// Longest label value; longer ones become `other`.
    #[config(default = 64)]
    pub max_label_len: usize,
    /// Samples of history kept for the dashboard.
    #[config(default = 720)]
    pub history_len: usize,
}

impl Default for StatsLimits {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        crate::config_defaults()
    }
}

/// Counters, summed. All saturating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Bytes downloaded from other viewers.
    pub bytes_from_peers: u64,
    /// Bytes downloaded from seeds.
    pub bytes_from_seeds: u64,
    /// Bytes downloaded from the CDN.
    pub bytes_from_cdn: u64,
    /// Bytes uploaded to other viewers.
    pub bytes_uploaded: u64,
    /// Downloaded bytes whose sender was in another ISP.
    pub bytes_cross_isp: u64,
    /// Downloaded bytes whose sender was in another region.
    pub bytes_cross_region: u64,
    /// Time spent rebuffering, milliseconds.
    pub rebuffer_ms: u64,
    /// Rebuffering events.
    pub rebuffer_count: u64,
    /// Sum of reported startup times, milliseconds.
    pub startup_ms_sum: u64,
    /// Number of startup times reported.
    pub startup_count: u64,
    /// Time played, milliseconds.
    pub played_ms: u64,
}

impl Counters {
    /// Adds `other` into `self`, saturating.
    pub fn add(&mut self, other: &Counters) {
        self.bytes_from_peers = self.bytes_from_peers.saturating_add(other.bytes_from_peers);
        self.bytes_from_seeds = self.bytes_from_seeds.saturating_add(other.bytes_from_seeds);
        self.bytes_from_cdn = self.bytes_from_cdn.saturating_add(other.bytes_from_cdn);
        self.bytes_uploaded = self.bytes_uploaded.saturating_add(other.bytes_uploaded);
        self.bytes_cross_isp = self.bytes_cross_isp.saturating_add(other.bytes_cross_isp);
        self.bytes_cross_region = self
            .bytes_cross_region
            .saturating_add(other.bytes_cross_region);
        self.rebuffer_ms = self.rebuffer_ms.saturating_add(other.rebuffer_ms);
        self.rebuffer_count = self.rebuffer_count.saturating_add(other.rebuffer_count);
        self.startup_ms_sum = self.startup_ms_sum.saturating_add(other.startup_ms_sum);
        self.startup_count = self.startup_count.saturating_add(other.startup_count);
        self.played_ms = self.played_ms.saturating_add(other.played_ms);
    }

    /// All downloaded bytes.
    pub fn bytes_downloaded(&self) -> u64 {
        self.bytes_from_peers
            .saturating_add(self.bytes_from_seeds)
            .saturating_add(self.bytes_from_cdn)
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// What clamping did to one report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClampReport {
    /// Download byte counters dropped as impossible.
    pub downloads_dropped: bool,
    /// Upload counter dropped as impossible.
    pub upload_dropped: bool,
    /// Fields clamped (cross bytes, times, counts, startup).
    pub fields_clamped: u32,
}

impl ClampReport {
    /// Whether anything was changed.
    pub fn any(&self) -> bool {
        self.downloads_dropped || self.upload_dropped || self.fields_clamped > 0
    }
}

/// The label of a pair of NAT classes, in a fixed order (`ed-ei`, not
/// `ei-ed` and `ed-ei` both): `open`, `ei` (endpoint-independent), `ed`
/// (endpoint-dependent), `unknown`.
pub fn nat_pair_label(a: i32, b: i32) -> &'static str {
    const PAIRS: [&str; 16] = [
        "unknown-unknown",
        "open-unknown",
        "ei-unknown",
        "ed-unknown",
        "open-unknown",
        "open-open",
        "ei-open",
        "ed-open",
        "ei-unknown",
        "ei-open",
        "ei-ei",
        "ed-ei",
        "ed-unknown",
        "ed-open",
        "ed-ei",
        "ed-ed",
    ];
    let index = |class: i32| match pb::NatClass::try_from(class) {
        Ok(pb::NatClass::Open) => 1,
        Ok(pb::NatClass::EndpointIndependent) => 2,
        Ok(pb::NatClass::EndpointDependent) => 3,
        _ => 0,
    };
    PAIRS[index(a) * 4 + index(b)]
}

/// Connection attempts of one NAT pair, as viewers reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectCounts {
    /// Connected without help.
    pub direct: u64,
    /// Connected after a punch.
    pub punched: u64,
    /// Given up.
    pub failed: u64,
    /// Time to connect, summed over the successes, milliseconds.
    pub connect_ms_sum: u64,
}

/// One row of the connection matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectRow {
    /// The pair (see [`nat_pair_label`]).
    pub pair: &'static str,
    /// Its counts.
    #[serde(flatten)]
    pub counts: ConnectCounts,
}

/// Connection attempts by NAT pair since start: at most 10 rows (the
/// distinct pairs), whatever viewers report.
#[derive(Debug, Clone, Default)]
pub struct ConnectMatrix {
    pairs: std::collections::BTreeMap<&'static str, ConnectCounts>,
}

impl ConnectMatrix {
    /// One reported attempt; results other than direct, punched and
    /// failed are ignored. A time over a minute is a wrong clock and is
    /// counted as a minute.
    pub fn record(&mut self, report: &pb::ConnectReport) {
        let pair = nat_pair_label(report.local, report.remote);
        let counts = self.pairs.entry(pair).or_default();
        let millis = u64::from(report.millis.min(60_000));
        match pb::ConnectResult::try_from(report.result) {
            Ok(pb::ConnectResult::Direct) => {
                counts.direct += 1;
                counts.connect_ms_sum += millis;
            }
            Ok(pb::ConnectResult::Punched) => {
                counts.punched += 1;
                counts.connect_ms_sum += millis;
            }
            Ok(pb::ConnectResult::Failed) => counts.failed += 1,
            _ => {}
        }
    }

    /// The rows, most attempts first.
    pub fn rows(&self) -> Vec<ConnectRow> {
        let mut rows: Vec<ConnectRow> = self
            .pairs
            .iter()
            .map(|(pair, counts)| ConnectRow {
                pair,
                counts: *counts,
            })
            .filter(|row| row.counts.direct + row.counts.punched + row.counts.failed > 0)
            .collect();
        rows.sort_by_key(|row| {
            std::cmp::Reverse(row.counts.direct + row.counts.punched + row.counts.failed)
        });
        rows
    }
}

/// The window a report covers: seconds since the previous report on the
/// connection, or the first-report allowance; at least 1, at most the cap.
pub fn report_window(previous: Option<UnixSeconds>, now: UnixSeconds, limits: &StatsLimits) -> u64 {
    let window = match previous {
        Some(previous) => now.0.saturating_sub(previous.0),
        None => limits.first_report_window_s,
    };
    window.clamp(1, limits.max_window_s.max(1))
}

/// Clamps one report (see the module docs for the rules).
pub fn clamp(
    delta: &pb::StatsDelta,
    window_s: u64,
    limits: &StatsLimits,
) -> (Counters, ClampReport) {
    let mut report = ClampReport::default();
    let mut out = Counters {
        bytes_from_peers: delta.bytes_from_peers,
        bytes_from_seeds: delta.bytes_from_seeds,
        bytes_from_cdn: delta.bytes_from_cdn,
        bytes_uploaded: delta.bytes_uploaded,
        bytes_cross_isp: delta.bytes_cross_isp,
        bytes_cross_region: delta.bytes_cross_region,
        rebuffer_ms: delta.rebuffer_ms,
        rebuffer_count: u64::from(delta.rebuffer_count),
        startup_ms_sum: u64::from(delta.startup_ms),
        startup_count: u64::from(delta.startup_ms > 0),
        played_ms: delta.played_ms,
    };
    let download_budget = limits.max_download_bytes_per_s.saturating_mul(window_s);
    if out.bytes_downloaded() > download_budget || out.bytes_downloaded() == u64::MAX {
        out.bytes_from_peers = 0;
        out.bytes_from_seeds = 0;
        out.bytes_from_cdn = 0;
        out.bytes_cross_isp = 0;
        out.bytes_cross_region = 0;
        report.downloads_dropped = true;
    }
    if out.bytes_uploaded > limits.max_upload_bytes_per_s.saturating_mul(window_s) {
        out.bytes_uploaded = 0;
        report.upload_dropped = true;
    }
    let downloaded = out.bytes_downloaded();
    let window_ms = window_s.saturating_mul(1000);
    for (value, max) in [
        (&mut out.bytes_cross_isp, downloaded),
        (&mut out.bytes_cross_region, downloaded),
        (&mut out.rebuffer_ms, window_ms),
        (&mut out.played_ms, window_ms),
        (&mut out.rebuffer_count, window_s),
    ] {
        if *value > max {
            *value = max;
            report.fields_clamped += 1;
        }
    }
    if out.startup_ms_sum > u64::from(limits.max_startup_ms) {
        out.startup_ms_sum = 0;
        out.startup_count = 0;
        report.fields_clamped += 1;
    }
    (out, report)
}

/// Whether the reporting viewer had P2P on: its quality cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cohort {
    /// P2P on (also every report from clients that predate the flag).
    P2p,
    /// P2P off: every byte from the CDN (or seeds over HTTP).
    CdnOnly,
}

impl Cohort {
    /// The cohort a report claims.
    pub fn of(delta: &pb::StatsDelta) -> Self {
        if delta.cdn_only {
            Self::CdnOnly
        } else {
            Self::P2p
        }
    }

    /// The Prometheus label value: `p2p` or `cdn_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P2p => "p2p",
            Self::CdnOnly => "cdn_only",
        }
    }
}

/// The labels one report is filed under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Labels {
    /// Title.
    pub title: String,
    /// Region ("unknown" when not given).
    pub region: String,
    /// ISP ("unknown" when not given).
    pub isp: String,
    /// P2P on or off.
    pub cohort: Cohort,
}

/// One point of the dashboard's history: cumulative totals at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    /// Cumulative totals at `t`.
    pub totals: Counters,
    /// Viewers tracked at `t`.
    pub peers: u64,
}

/// Aggregated counters per label set, with a bounded history of totals.
#[derive(Debug)]
pub struct StatsBook {
    limits: StatsLimits,
    by_labels: HashMap<Labels, Counters>,
    totals: Counters,
    history: VecDeque<Sample>,
    connects: ConnectMatrix,
}

const OTHER: &str = "other";
const UNKNOWN: &str = "unknown";

impl StatsBook {
    /// An empty book.
    pub fn new(limits: StatsLimits) -> Self {
        Self {
            limits,
            by_labels: HashMap::new(),
            totals: Counters::default(),
            history: VecDeque::new(),
            connects: ConnectMatrix::default(),
        }
    }

    /// Connection attempts by NAT pair.
    pub fn connects(&self) -> &ConnectMatrix {
        &self.connects
    }

    /// Records one reported connection attempt.
    pub fn record_connect(&mut self, report: &pb::ConnectReport) {
        self.connects.record(report);
    }

    /// The limits in force.
    pub fn limits(&self) -> &StatsLimits {
        &self.limits
    }

    fn label(&self, value: &str) -> String {
        if value.is_empty() {
            UNKNOWN.to_owned()
        } else if value.len() > self.limits.max_label_len || value.chars().any(|c| c.is_control()) {
            OTHER.to_owned()
        } else {
            value.to_owned()
        }
    }

    /// The labels a report for (title, region, isp) of `cohort` is filed
    /// under, folding title, region and ISP into `other` once
    /// `max_label_sets` is reached (so at most `max_label_sets` + 2 sets:
    /// the cohort is kept, and it has two values).
    pub fn labels_for(&self, title: &str, region: &str, isp: &str, cohort: Cohort) -> Labels {
        let labels = Labels {
            title: self.label(title),
            region: self.label(region),
            isp: self.label(isp),
            cohort,
        };
        if self.by_labels.contains_key(&labels) || self.by_labels.len() < self.limits.max_label_sets
        {
            labels
        } else {
            Labels {
                title: OTHER.to_owned(),
                region: OTHER.to_owned(),
                isp: OTHER.to_owned(),
                cohort,
            }
        }
    }

    /// Adds clamped counters under `labels` (from [`Self::labels_for`]).
    pub fn ingest(&mut self, labels: &Labels, counters: &Counters) {
        if counters.is_zero() {
            return;
        }
        if let Some(sum) = self.by_labels.get_mut(labels) {
            sum.add(counters);
        } else {
            self.by_labels.insert(labels.clone(), *counters);
        }
        self.totals.add(counters);
    }

    /// Totals over every label set.
    pub fn totals(&self) -> &Counters {
        &self.totals
    }

    /// Counters per label set.
    pub fn by_labels(&self) -> impl Iterator<Item = (&Labels, &Counters)> {
        self.by_labels.iter()
    }

    /// Counters summed per value of one label, sorted by bytes downloaded.
    pub fn group_by(&self, key: impl Fn(&Labels) -> &str) -> Vec<(String, Counters)> {
        let mut groups: HashMap<&str, Counters> = HashMap::new();
        for (labels, counters) in &self.by_labels {
            groups.entry(key(labels)).or_default().add(counters);
        }
        let mut out: Vec<(String, Counters)> =
            groups.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        out.sort_by(|a, b| {
            b.1.bytes_downloaded()
                .cmp(&a.1.bytes_downloaded())
                .then_with(|| a.0.cmp(&b.0))
        });
        out
    }

    /// Records the current totals in the history (bounded ring).
    pub fn sample(&mut self, now: UnixSeconds, peers: u64) {
        if self.limits.history_len == 0 {
            return;
        }
        while self.history.len() >= self.limits.history_len {
            self.history.pop_front();
        }
        self.history.push_back(Sample {
            t: now.0,
            totals: self.totals,
            peers,
        });
    }

    /// The history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Sample> {
        self.history.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn delta() -> pb::StatsDelta {
        pb::StatsDelta {
            bytes_from_peers: 6_000_000,
            bytes_from_seeds: 1_000_000,
            bytes_from_cdn: 3_000_000,
            bytes_uploaded: 5_000_000,
            bytes_cross_isp: 500_000,
            bytes_cross_region: 100_000,
            rebuffer_ms: 1500,
            rebuffer_count: 2,
            startup_ms: 800,
            played_ms: 30_000,
            cdn_only: false,
            connects: Vec::new(),
        }
    }

    #[test]
    fn plausible_reports_pass_unchanged() {
        let (c, report) = clamp(&delta(), 30, &StatsLimits::default());
        assert!(!report.any());
        assert_eq!(c.bytes_from_peers, 6_000_000);
        assert_eq!(c.bytes_downloaded(), 10_000_000);
        assert_eq!((c.startup_ms_sum, c.startup_count), (800, 1));
    }

    #[test]
    fn absurd_downloads_are_dropped_not_trusted_in_part() {
        let mut d = delta();
        d.bytes_from_peers = u64::MAX;
        let (c, report) = clamp(&d, 30, &StatsLimits::default());
        assert!(report.downloads_dropped);
        assert_eq!(c.bytes_downloaded(), 0);
        assert_eq!(c.bytes_cross_isp, 0);
        // Time counters are still usable.
        assert_eq!(c.played_ms, 30_000);
        // 1 Gbit/s for 30 s is 3.75 GB: 4 GB is impossible.
        let mut d = delta();
        d.bytes_from_cdn = 4_000_000_000;
        assert!(clamp(&d, 30, &StatsLimits::default()).1.downloads_dropped);
        assert!(!clamp(&d, 60, &StatsLimits::default()).1.downloads_dropped);
    }

    #[test]
    fn times_and_cross_bytes_are_clamped() {
        let mut d = delta();
        d.rebuffer_ms = 1_000_000;
        d.played_ms = 1_000_000;
        d.rebuffer_count = 1000;
        d.bytes_cross_isp = 20_000_000;
        d.startup_ms = 4_000_000;
        d.bytes_uploaded = 10_000_000_000;
        let (c, report) = clamp(&d, 10, &StatsLimits::default());
        assert_eq!(c.rebuffer_ms, 10_000);
        assert_eq!(c.played_ms, 10_000);
        assert_eq!(c.rebuffer_count, 10);
        assert_eq!(c.bytes_cross_isp, 10_000_000);
        assert_eq!(c.startup_count, 0);
        assert!(report.upload_dropped);
        assert_eq!(c.bytes_uploaded, 0);
        assert_eq!(report.fields_clamped, 5);
    }

    #[test]
    fn windows() {
        let limits = StatsLimits::default();
        assert_eq!(report_window(None, UnixSeconds(100), &limits), 120);
        assert_eq!(
            report_window(Some(UnixSeconds(90)), UnixSeconds(100), &limits),
            10
        );
        assert_eq!(
            report_window(Some(UnixSeconds(100)), UnixSeconds(100), &limits),
            1
        );
        assert_eq!(
            report_window(Some(UnixSeconds(200)), UnixSeconds(100), &limits),
            1
        );
        assert_eq!(
            report_window(Some(UnixSeconds(0)), UnixSeconds(100_000), &limits),
            600
        );
    }

    #[test]
    fn aggregation_by_labels_and_groups() {
        let mut book = StatsBook::new(StatsLimits::default());
        let (c, _) = clamp(&delta(), 30, book.limits());
        let a = book.labels_for("film", "eu", "isp-a", Cohort::P2p);
        let b = book.labels_for("film", "eu", "isp-b", Cohort::P2p);
        let s = book.labels_for("series", "us", "", Cohort::P2p);
        book.ingest(&a, &c);
        book.ingest(&a, &c);
        book.ingest(&b, &c);
        book.ingest(&s, &c);
        assert_eq!(s.isp, "unknown");
        assert_eq!(book.totals().bytes_from_peers, 24_000_000);
        let by_title = book.group_by(|l| &l.title);
        assert_eq!(by_title[0].0, "film");
        assert_eq!(by_title[0].1.bytes_from_peers, 18_000_000);
        assert_eq!(by_title[1].1.bytes_from_cdn, 3_000_000);
        let by_isp = book.group_by(|l| &l.isp);
        assert_eq!(by_isp.len(), 3);
        assert_eq!(by_isp[0].0, "isp-a");
    }

    #[test]
    fn label_sets_are_bounded() {
        let limits = StatsLimits {
            max_label_sets: 2,
            ..StatsLimits::default()
        };
        let mut book = StatsBook::new(limits);
        let (c, _) = clamp(&delta(), 30, book.limits());
        for i in 0..10 {
            let labels = book.labels_for(&format!("t{i}"), "r", "i", Cohort::P2p);
            book.ingest(&labels, &c);
        }
        assert_eq!(book.by_labels().count(), 3); // two real + "other"
        assert_eq!(book.totals().bytes_from_peers, 60_000_000);
        assert_eq!(
            book.labels_for(&"x".repeat(100), "r", "i", Cohort::P2p)
                .title,
            "other"
        );
        // The cohort survives the folding: at most one more set.
        let folded = book.labels_for("t99", "r", "i", Cohort::CdnOnly);
        assert_eq!(
            (folded.title.as_str(), folded.cohort),
            ("other", Cohort::CdnOnly)
        );
        book.ingest(&folded, &c);
        for i in 0..10 {
            let labels = book.labels_for(&format!("u{i}"), "r", "i", Cohort::CdnOnly);
            book.ingest(&labels, &c);
        }
        assert_eq!(book.by_labels().count(), 4);
    }

    #[test]
    fn cohort_comes_from_the_report_and_defaults_to_p2p() {
        // A report from a client without the field decodes as P2P on.
        let old = pb::StatsDelta {
            played_ms: 1000,
            ..Default::default()
        };
        assert_eq!(Cohort::of(&old), Cohort::P2p);
        let bytes = prost::Message::encode_to_vec(&old);
        let decoded: pb::StatsDelta = prost::Message::decode(bytes.as_slice()).unwrap();
        assert!(!decoded.cdn_only);
        let cdn = pb::StatsDelta {
            cdn_only: true,
            ..old
        };
        assert_eq!(Cohort::of(&cdn), Cohort::CdnOnly);
        assert_eq!(Cohort::P2p.as_str(), "p2p");
        assert_eq!(Cohort::CdnOnly.as_str(), "cdn_only");

        // The two cohorts of one (title, region, ISP) are kept apart.
        let mut book = StatsBook::new(StatsLimits::default());
        let (c, _) = clamp(&delta(), 30, book.limits());
        let p2p = book.labels_for("film", "eu", "isp-a", Cohort::of(&delta()));
        let cdn_delta = pb::StatsDelta {
            cdn_only: true,
            ..delta()
        };
        let cdn = book.labels_for("film", "eu", "isp-a", Cohort::of(&cdn_delta));
        book.ingest(&p2p, &c);
        book.ingest(&cdn, &c);
        book.ingest(&cdn, &c);
        let mut by_cohort: Vec<(Cohort, u64)> = book
            .by_labels()
            .map(|(l, c)| (l.cohort, c.rebuffer_ms))
            .collect();
        by_cohort.sort();
        assert_eq!(
            by_cohort,
            vec![(Cohort::P2p, 1500), (Cohort::CdnOnly, 3000)]
        );
    }

    #[test]
    fn history_is_a_bounded_ring() {
        let mut book = StatsBook::new(StatsLimits {
            history_len: 3,
            ..StatsLimits::default()
        });
        for t in 0..5 {
            book.sample(UnixSeconds(t), t);
        }
        let times: Vec<u64> = book.history().map(|s| s.t).collect();
        assert_eq!(times, vec![2, 3, 4]);
    }
}
