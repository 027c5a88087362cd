//! Announces per second over real QUIC on 127.0.0.1, with many simulated
//! viewers on persistent, mutually authenticated connections.
//!
//! `cargo bench -p tracker --bench quic -- [PEERS] [SECONDS] [SERVER_THREADS]`
//! (defaults: 10000 peers, 10 s, 1 server thread). The tracker and the load
//! generator run in one process on separate tokio runtimes: the tracker on
//! `SERVER_THREADS` worker threads, the viewers on one. Each viewer connects
//! once (TLS 1.3 with its own Ed25519 certificate, hello with a signed
//! session token), then announces in a loop on its session stream, waiting
//! for each reply (like a real client, only without the 30 s interval).
//! Reports the handshake rate, announces per second, announce latency
//! percentiles, and the CPU time each runtime spent per announce (from
//! `/proc/self/task/*/schedstat`, so it does not depend on how busy the
//! machine is).
//!
//! `LOAVES_BENCH_INFLIGHT=N` (default 256; 0 = no limit) bounds the announces
//! in flight over all connections together, like a load tester's window:
//! every connection stays open and announces in turn (a fair semaphore
//! hands the window round the viewers), but the tracker is not asked to
//! queue 10,000 requests at once. Latency is measured from when the viewer
//! gets its turn, so it is the tracker's (and the loopback's), not the
//! generator's queue. The last line (`RESULT ...`) is for scripts.
//!
//! `LOAVES_BENCH_PACE_MS=N` (default 0) paces each viewer like a real
//! client instead: first announce at a staggered offset within `N` ms, then
//! one every `N` ms (30000 is the protocol's interval). The tracker's CPU
//! and packets per announce then include what an idle connection costs
//! between announces (keep-alives and their ACKs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::token::SessionToken;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::identity::PeerIdentity;
use tracker::client::{ClientEndpoint, TrackerConnection};
use tracker::credential::CredentialVerifier;
use tracker::metrics::Metrics;
use tracker::server::{FrontEndOptions, RunningTracker, Shared};
use tracker::stats::StatsLimits;
use tracker::swarm::SwarmConfig;

const REGIONS: [&str; 3] = ["eu-west", "eu-central", "us-east"];
const ISPS: [&str; 6] = ["isp-a", "isp-b", "isp-c", "isp-d", "isp-e", "isp-f"];
const TITLES: usize = 100;
const CLIENT_ENDPOINTS: usize = 8;
const TRACKER_THREADS: &str = "bench-tracker";
const VIEWER_THREADS: &str = "bench-viewers";

/// CPU time so far of this process's threads named `name`, nanoseconds
/// (0 where /proc is not available).
fn cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Resident memory of this process, kilobytes (0 where /proc is not
/// available).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Datagrams sent and received, ACK frames sent and received, summed over
/// `connections`.
fn packets(connections: &[quinn::Connection]) -> [u64; 4] {
    connections.iter().fold([0; 4], |sum, c| {
        let stats = c.stats();
        [
            sum[0] + stats.udp_tx.datagrams,
            sum[1] + stats.udp_rx.datagrams,
            sum[2] + stats.frame_tx.acks,
            sum[3] + stats.frame_rx.acks,
        ]
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[rank]) / 1000.0
}

fn main() -> anyhow::Result<()> {
    let peers = arg(0, 10_000) as usize;
    let seconds = arg(1, 10);
    let server_threads = arg(2, 1) as usize;
    let inflight: usize = std::env::var("LOAVES_BENCH_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let pace_ms: u64 = std::env::var("LOAVES_BENCH_PACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    let license = SigningKeyPair::generate()?;
    let keyring: Keyring = [license.verifying_key()].into_iter().collect();
    let options = FrontEndOptions {
        max_connections_per_ip: peers + 10,
        requests_per_second: 1e9,
        request_burst: 1e9,
        ..FrontEndOptions::default()
    };
    let swarm = SwarmConfig {
        max_peers_per_swarm: peers,
        ..SwarmConfig::default()
    };
    let shared = Arc::new(Shared::new(
        swarm,
        StatsLimits::default(),
        options,
        CredentialVerifier::new(keyring, 30),
        None,
        Metrics::new()?,
        1,
    ));

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name(TRACKER_THREADS)
        .enable_all()
        .build()?;
    let tracker_identity = PeerIdentity::new(&SigningKeyPair::generate()?)?;
    let running = {
        let _guard = server_runtime.enter();
        RunningTracker::start("127.0.0.1:0".parse()?, &tracker_identity, shared.clone())?
    };
    let addr = running.quic_addr;

    println!("preparing {peers} viewer identities and tokens…");
    let now = UnixSeconds::now();
    let viewers: Vec<(PeerIdentity, pb::TrackerHello, usize)> = (0..peers)
        .map(|i| {
            let key = SigningKeyPair::generate()?;
            let identity = PeerIdentity::new(&key)?;
            let token = SessionToken {
                session_id: SessionId::random()?,
                account: format!("acct-{i}"),
                title: format!("title-{}", i % TITLES),
                renditions: vec!["720p".into()],
                peer_key: key.verifying_key(),
                region: REGIONS[i % REGIONS.len()].into(),
                isp: ISPS[(i / 3) % ISPS.len()].into(),
                not_before: UnixSeconds(now.0 - 60),
                expires_at: now.plus(3600),
            }
            .sign(&license);
            let hello = pb::TrackerHello {
                credential: Some(pb::tracker_hello::Credential::SessionToken(token)),
            };
            Ok((identity, hello, i))
        })
        .collect::<anyhow::Result<_>>()?;

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(VIEWER_THREADS)
        .enable_all()
        .build()?;
    client_runtime.block_on(async move {
        let endpoints: Vec<ClientEndpoint> = (0..CLIENT_ENDPOINTS)
            .map(|_| ClientEndpoint::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))))
            .collect::<Result<_, _>>()?;

        // Phase 1: connect everybody (bounded concurrency).
        let rss_before = rss_kb();
        let started = Instant::now();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(128));
        let mut tasks = Vec::with_capacity(peers);
        for (identity, hello, i) in viewers {
            let endpoint = endpoints[i % CLIENT_ENDPOINTS].clone();
            let semaphore = semaphore.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = semaphore.acquire_owned().await.ok()?;
                endpoint.connect(addr, &identity, hello).await.ok().map(|c| (c, i))
            }));
        }
        let mut connections: Vec<(TrackerConnection, usize)> = Vec::with_capacity(peers);
        for task in tasks {
            if let Ok(Some(connection)) = task.await {
                connections.push(connection);
            }
        }
        let connect_s = started.elapsed().as_secs_f64();
        println!(
            "connected {} of {peers} in {connect_s:.1} s ({:.0} handshakes + hellos per second)",
            connections.len(),
            connections.len() as f64 / connect_s
        );
        println!(
            "memory: {:.1} KB resident per connection, both ends (tracker and viewer) together",
            rss_kb().saturating_sub(rss_before) as f64 / connections.len().max(1) as f64
        );

        // Phase 2: announce in a loop on every connection.
        let window = (inflight > 0).then(|| Arc::new(tokio::sync::Semaphore::new(inflight)));
        let stop = Arc::new(AtomicBool::new(false));
        let cpu_before = (cpu_ns(TRACKER_THREADS), cpu_ns(VIEWER_THREADS));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(connections.len());
        let connected = connections.len();
        let quics: Vec<quinn::Connection> = connections.iter().map(|(c, _)| c.quic().clone()).collect();
        let packets_before = packets(&quics);
        for (connection, i) in connections {
            let stop = stop.clone();
            let window = window.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies_us: Vec<u32> = Vec::new();
                let mut errors = 0u64;
                let mut round = 0u64;
                if pace_ms > 0 {
                    // Spread the first announces evenly over one interval.
                    let offset = pace_ms * i as u64 / peers.max(1) as u64;
                    tokio::time::sleep(Duration::from_millis(offset)).await;
                }
                while !stop.load(Ordering::Relaxed) {
                    if round > 0 && pace_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(pace_ms)).await;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    round += 1;
                    let head = 1000 + round;
                    let announce = pb::Announce {
                        nat_class: 0,
                        swarm: Some(pb::SwarmId {
                            title: format!("title-{}", i % TITLES),
                            rendition: "720p".into(),
                        }),
                        addresses: vec![format!("10.{}.{}.{}:4433", (i >> 16) & 255, (i >> 8) & 255, i & 255)],
                        holdings: Some(pb::Holdings {
                            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                                first_sequence: head - 20,
                                last_sequence: head,
                            })),
                        }),
                        next_sequence: head + 1,
                        upload_capacity_bps: 8_000_000,
                        upload_in_use_bps: 1_000_000,
                        stats: Some(pb::StatsDelta {
                            bytes_from_peers: 100_000,
                            bytes_from_cdn: 50_000,
                            played_ms: 1000,
                            ..Default::default()
                        }),
                        max_peers: 0,
                    };
                    let _turn = match &window {
                        Some(window) => match window.acquire().await {
                            Ok(permit) => Some(permit),
                            Err(_) => break,
                        },
                        None => None,
                    };
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = Instant::now();
                    match connection.announce(announce).await {
                        Ok(_) => latencies_us.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        Err(error) => {
                            if errors == 0 && i % 1000 == 0 {
                                eprintln!("viewer {i}: {error}");
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies_us, errors)
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let cpu_after = (cpu_ns(TRACKER_THREADS), cpu_ns(VIEWER_THREADS));
        let packets_after = packets(&quics);
        let window_s = started.elapsed().as_secs_f64();
        if let Some(window) = &window {
            window.close();
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            if let Ok((mut l, e)) = task.await {
                latencies.append(&mut l);
                errors += e;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        // CPU over the announce window (before the stop), per announce
        // completed in that window (estimated at the average rate).
        let in_window = (latencies.len() as f64 * window_s / elapsed).max(1.0);
        let tracker_cpu_s = cpu_after.0.saturating_sub(cpu_before.0) as f64 / 1e9;
        let viewers_cpu_s = cpu_after.1.saturating_sub(cpu_before.1) as f64 / 1e9;
        let tracker_us = tracker_cpu_s * 1e6 / in_window;
        let viewers_us = viewers_cpu_s * 1e6 / in_window;
        println!(
            "CPU over {window_s:.1} s: tracker runtime {tracker_cpu_s:.2} s ({:.0}% of a core, {tracker_us:.1} µs per announce), viewers runtime {viewers_cpu_s:.2} s ({:.0}%, {viewers_us:.1} µs per announce)",
            100.0 * tracker_cpu_s / window_s,
            100.0 * viewers_cpu_s / window_s,
        );
        let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / in_window;
        println!(
            "per announce, viewer side: {:.2} datagrams sent, {:.2} received, {:.2} ACK frames sent, {:.2} received",
            per(packets_after[0], packets_before[0]),
            per(packets_after[1], packets_before[1]),
            per(packets_after[2], packets_before[2]),
            per(packets_after[3], packets_before[3]),
        );
        println!(
            "{} announces in {elapsed:.1} s: {:.0} announces/s, {errors} errors; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.90),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
        println!(
            "RESULT quic viewers={connected} inflight={inflight} server_threads={server_threads} announces_per_s={:.0} p50_ms={:.2} p99_ms={:.2} errors={errors} tracker_cpu_us_per_announce={tracker_us:.1} viewers_cpu_us_per_announce={viewers_us:.1}",
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
        );
        for endpoint in &endpoints {
            endpoint.close();
        }
        anyhow::Ok(())
    })?;
    let tracked = shared.with_book(|b| b.total_peers());
    println!("tracker saw {tracked} viewers; server runtime threads: {server_threads}");
    server_runtime.block_on(running.shutdown());
    Ok(())
}
