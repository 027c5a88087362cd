//! The report every run writes (demo, swarm scenarios, simulator): the same
//! fields, so runs compare with each other and with their baselines.

use serde::{Deserialize, Serialize};

/// Offload and quality of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What produced it ("sim", "demo", a scenario name).
    pub kind: String,
    /// Scheduling policy ("deadline-first", "cdn-only").
    pub policy: String,
    /// Viewers that joined.
    pub viewers: u64,
    /// Length of the run (virtual seconds for the simulator).
    pub duration_s: f64,
    /// Bytes viewers received from other viewers.
    pub bytes_peer: u64,
    /// Bytes viewers received from edge seeds.
    pub bytes_seed: u64,
    /// Bytes viewers received from the CDN.
    pub bytes_cdn: u64,
    /// `bytes_peer / (bytes_peer + bytes_seed + bytes_cdn)`.
    pub offload_peer: f64,
    /// The theoretical limit of `offload_peer` for this run (DESIGN.md:
    /// `min(1 - 1/N, U / (N r))`).
    pub offload_limit: f64,
    /// Time stalled / (time played + time stalled), over all viewers.
    pub rebuffer_ratio: f64,
    /// Number of stalls after startup.
    pub rebuffer_events: u64,
    /// Median startup time.
    pub startup_ms_p50: u64,
    /// 95th percentile startup time.
    pub startup_ms_p95: u64,
    /// Bytes from peers and seeds whose sender was in another ISP than the
    /// viewer (transit the streamer's ISPs carry between each other).
    pub cross_isp_bytes: u64,
    /// Bytes that reached a player without passing verification (must be 0).
    pub corrupt_bytes_to_player: u64,
}

impl Report {
    /// Bytes viewers received, from every source.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_peer + self.bytes_seed + self.bytes_cdn
    }

    /// `offload_peer` from the byte counts.
    pub fn peer_share(bytes_peer: u64, bytes_seed: u64, bytes_cdn: u64) -> f64 {
        let total = bytes_peer + bytes_seed + bytes_cdn;
        if total == 0 {
            0.0
        } else {
            bytes_peer as f64 / total as f64
        }
    }

    /// The offload limit of one swarm of `viewers` at `bitrate_bps`, whose
    /// viewers can upload `total_upload_bps` together.
    pub fn offload_limit(viewers: u64, bitrate_bps: u64, total_upload_bps: u64) -> f64 {
        if viewers == 0 || bitrate_bps == 0 {
            return 0.0;
        }
        let n = viewers as f64;
        let by_copies = 1.0 - 1.0 / n;
        let by_upload = total_upload_bps as f64 / (n * bitrate_bps as f64);
        by_copies.min(by_upload)
    }

    /// The offload limit of a run over several swarms (one per title and
    /// rendition): each swarm's `(limit, bytes)`, weighted by the bytes its
    /// viewers watched. Peer bytes are at most each swarm's limit times its
    /// bytes, so the run's share is at most this; swarms do not share
    /// segments, so a single N over all viewers would overstate it.
    pub fn offload_limit_over_swarms(swarms: &[(f64, u64)]) -> f64 {
        let bytes: u64 = swarms.iter().map(|(_, b)| b).sum();
        if bytes == 0 {
            return 0.0;
        }
        let reachable: f64 = swarms.iter().map(|(l, b)| l * *b as f64).sum();
        reachable / bytes as f64
    }
}

/// The `q`-quantile (0..=1) of `values` (sorted in place), 0 when empty.
pub fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index.min(values.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_limit_is_the_smaller_bound() {
        // Plenty of upload: one copy must come from infrastructure.
        assert!((Report::offload_limit(10, 1_000, 100_000) - 0.9).abs() < 1e-12);
        // Upload-bound: viewers upload half of what they watch.
        assert!((Report::offload_limit(1_000, 4_000_000, 2_000_000_000) - 0.5).abs() < 1e-12);
        assert_eq!(Report::offload_limit(0, 1, 1), 0.0);
    }

    #[test]
    fn offload_limit_over_swarms_weighs_by_bytes() {
        // A popular swarm near its limit and a lone viewer (limit 0).
        let limit = Report::offload_limit_over_swarms(&[(0.9, 900), (0.0, 100)]);
        assert!((limit - 0.81).abs() < 1e-12);
        // One swarm: its own limit.
        assert!((Report::offload_limit_over_swarms(&[(0.75, 10)]) - 0.75).abs() < 1e-12);
        assert_eq!(Report::offload_limit_over_swarms(&[]), 0.0);
        assert_eq!(Report::offload_limit_over_swarms(&[(0.5, 0)]), 0.0);
    }

    #[test]
    fn quantiles() {
        let mut v = vec![5, 1, 3, 2, 4];
        assert_eq!(quantile(&mut v, 0.5), 3);
        assert_eq!(quantile(&mut v, 0.95), 5);
        assert_eq!(quantile(&mut [], 0.5), 0);
    }
}
