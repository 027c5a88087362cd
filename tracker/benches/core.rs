//! Announces per second of the swarm core alone (one thread = one core).
//!
//! `cargo bench -p tracker --bench core` (release). Prints one line per
//! scenario. No I/O, no clock inside the core: the loop passes `now`.

use std::hint::black_box;
use std::time::Instant;

use loaves_proto::{UnixSeconds, pb};
use tracker::rng::SplitMix64;
use tracker::stats::{self, StatsBook, StatsLimits};
use tracker::swarm::{Requester, SwarmBook, SwarmConfig};

const REGIONS: [&str; 3] = ["eu-west", "eu-central", "us-east"];
const ISPS: [&str; 6] = ["isp-a", "isp-b", "isp-c", "isp-d", "isp-e", "isp-f"];

#[derive(Clone, Copy)]
struct Peer {
    key: [u8; 32],
    region: &'static str,
    isp: &'static str,
    swarm: usize,
}

fn key(i: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k[8] = 1;
    k
}

fn announce_for(peer: &Peer, index: usize, round: u64, want: u32) -> pb::Announce {
    let head = 1000 + round + (index as u64 % 7);
    pb::Announce {
        nat_class: 0,
        swarm: Some(pb::SwarmId {
            title: format!("title-{}", peer.swarm),
            rendition: "720p".into(),
        }),
        addresses: vec![format!(
            "10.{}.{}.{}:4433",
            index >> 16 & 255,
            index >> 8 & 255,
            index & 255
        )],
        holdings: Some(pb::Holdings {
            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                first_sequence: head - 20,
                last_sequence: head,
            })),
        }),
        next_sequence: head + 1,
        upload_capacity_bps: 5_000_000 + (index as u64 % 10) * 1_000_000,
        upload_in_use_bps: (index as u64 % 5) * 1_000_000,
        stats: Some(pb::StatsDelta {
            bytes_from_peers: 3_000_000,
            bytes_from_seeds: 500_000,
            bytes_from_cdn: 1_000_000,
            bytes_uploaded: 2_000_000,
            played_ms: 30_000,
            ..Default::default()
        }),
        max_peers: want,
    }
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), so the
/// figure is per core even when other processes share the machine.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn scenario(name: &str, swarms: usize, peers_per_swarm: usize, want: u32, with_stats: bool) {
    // `LOAVES_BENCH_ONLY=<substring>` runs the matching scenarios only.
    if let Ok(only) = std::env::var("LOAVES_BENCH_ONLY")
        && !name.contains(&only)
    {
        return;
    }
    let config = SwarmConfig {
        max_total_peers: swarms * peers_per_swarm + 1,
        max_peers_per_swarm: peers_per_swarm + 1,
        ..SwarmConfig::default()
    };
    let mut book = SwarmBook::new(config, 1);
    let mut stats_book = StatsBook::new(StatsLimits::default());
    let mut rng = SplitMix64::new(5);
    let total = swarms * peers_per_swarm;
    let peers: Vec<Peer> = (0..total)
        .map(|i| Peer {
            key: key(i),
            region: REGIONS[rng.below(REGIONS.len())],
            isp: ISPS[rng.below(ISPS.len())],
            swarm: i % swarms,
        })
        .collect();
    // Pre-built announces, a few variants per swarm: decoding is the
    // driver's job, and a freshly decoded request is hot in the cache, so the
    // core is not charged for fetching 100,000 cold messages.
    const VARIANTS: usize = 4;
    let messages: Vec<pb::Announce> = (0..swarms * VARIANTS)
        .map(|m| {
            let peer = &peers[(m / VARIANTS) % total.max(1)];
            announce_for(peer, m, 0, want)
        })
        .collect();
    let message_of = |i: usize| &messages[peers[i].swarm * VARIANTS + i % VARIANTS];
    let now = UnixSeconds(1_000_000);
    for (i, peer) in peers.iter().enumerate() {
        let message = message_of(i);
        let who = Requester {
            key: &peer.key,
            region: peer.region,
            isp: peer.isp,
            observed: None,
        };
        book.announce(now, &who, message).ok();
    }
    // Measure re-announces in a shuffled order.
    let mut order: Vec<usize> = (0..total).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    // The requests of one round, laid out in the order they are sent: a
    // driver hands the core a request it has just decoded, so the harness
    // must not add a cache miss of its own (looking up a random viewer of
    // 100,000) to each announce. The core's work is unchanged: same
    // requests, same order, same replies.
    let requests: Vec<(Peer, &pb::Announce)> =
        order.iter().map(|&i| (peers[i], message_of(i))).collect();
    let rounds = (2_000_000 / total).max(1);
    let mut returned = 0u64;
    let mut bytes = 0u64;
    // `LOAVES_BENCH_DIGEST=1`: FNV-1a over every reply (slow: not for
    // timing). Equal digests from two builds mean the core chose and encoded
    // exactly the same replies (same seed, same order).
    let check = std::env::var_os("LOAVES_BENCH_DIGEST").is_some();
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    let started = Instant::now();
    let cpu_started = thread_cpu_ns();
    for round in 0..rounds {
        let now = UnixSeconds(1_000_000 + round as u64);
        for (peer, message) in &requests {
            let who = Requester {
                key: &peer.key,
                region: peer.region,
                isp: peer.isp,
                observed: None,
            };
            if with_stats && let Some(delta) = &message.stats {
                let window =
                    stats::report_window(Some(UnixSeconds(now.0 - 30)), now, stats_book.limits());
                let (counters, _) = stats::clamp(delta, window, stats_book.limits());
                let labels = stats_book.labels_for(
                    message.swarm.as_ref().map_or("", |s| s.title.as_str()),
                    peer.region,
                    peer.isp,
                    stats::Cohort::of(delta),
                );
                stats_book.ingest(&labels, &counters);
            }
            if let Ok(outcome) = book.announce(now, &who, black_box(message)) {
                returned += u64::from(outcome.peers);
                bytes += outcome.reply.len() as u64;
                black_box(&outcome.reply);
                if check {
                    for &b in &outcome.reply {
                        digest = (digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                    }
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu_started, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9,
        _ => wall,
    };
    let announces = (rounds * total) as f64;
    println!(
        "{name:<44} {:>9.0} announces per CPU-second ({:.0} ns each; wall-clock {:.0}/s; {:.1} peers and {:.0} bytes per reply; {} peers in {} swarms; replies digest {digest:016x})",
        announces / cpu,
        cpu * 1e9 / announces,
        announces / wall,
        returned as f64 / announces,
        bytes as f64 / announces,
        total,
        swarms,
    );
}

fn main() {
    println!("tracker core: single thread, release build");
    scenario(
        "1000 swarms x 100 peers, 30 per reply",
        1000,
        100,
        30,
        false,
    );
    scenario(
        "100 swarms x 1000 peers, 30 per reply",
        100,
        1000,
        30,
        false,
    );
    scenario(
        "10 swarms x 10000 peers, 30 per reply",
        10,
        10_000,
        30,
        false,
    );
    scenario(
        "1 swarm x 100000 peers, 30 per reply",
        1,
        100_000,
        30,
        false,
    );
    scenario(
        "100 swarms x 1000 peers, 50 per reply",
        100,
        1000,
        50,
        false,
    );
    scenario(
        "100 swarms x 1000 peers, 10 per reply",
        100,
        1000,
        10,
        false,
    );
    scenario(
        "100 swarms x 1000 peers, 30/reply + stats",
        100,
        1000,
        30,
        true,
    );
}
