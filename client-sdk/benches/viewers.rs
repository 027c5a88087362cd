//! SDK cost per viewer at 5 Mbit/s, and segment-delivery latency from
//! peers vs from the CDN, measured side by side in one run.
//!
//! ```text
//! cargo bench -p client-sdk --bench viewers
//! ```
//!
//! Environment: `BENCH_VIEWERS` (default 8), `BENCH_SECONDS` (media
//! duration, default 30), `BENCH_BITRATE` (bits per second, default
//! 5,000,000), `BENCH_JOIN_MS` (gap between joins, default 2000).
//!
//! One process, two tokio runtimes. The "stack" runtime runs the local
//! platform as the tests do (license server, tracker, an HTTP origin
//! serving synthetic CMAF — edge-seed's `synthetic` generator, packaged
//! with `cenc` by the real packager). The "sdk" runtime runs only the
//! viewers: real SDK sessions with P2P on, each played to the end by the
//! simulated player in real time (playback speed 1). SDK CPU is the CPU
//! time of the "sdk" runtime's threads (`/proc/self/task/*/schedstat`,
//! selected by thread name; its blocking threads are kept alive for the
//! run so none takes its count away by exiting), so the origin's, tracker's and license
//! server's work is not counted; the baseline is the same runtime with 0
//! viewers over an idle window. Memory is process RSS (`VmRSS`): the peak
//! during the run minus the RSS with the stack up and no viewer, per
//! viewer; it includes what the stack allocated to serve them (the origin
//! reads each requested file), so it is an upper bound of the SDK's share.
//! Latency: every `Event::SegmentDelivered { source, elapsed }` of every
//! viewer, grouped by source (elapsed: fetch decision to verified bytes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edge_seed::synthetic::{SyntheticTrack, init_segment, media_segment};
use loaves_client_sdk::scheduler::Source;
use loaves_client_sdk::{Event, player};
use loaves_proto::manifest::Scheme;

const RENDITION: &str = "video_720p";
const SEGMENT_MS: u32 = 2000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (ns) of this process's threads whose name starts with `prefix`.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        if let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    total
}

/// CPU time (ns) of the whole process, user + system, exited threads
/// included (`/proc/self/stat`, in clock ticks of 10 ms: Linux's USER_HZ).
fn process_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th of the whole line.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 10_000_000)
        })
        .unwrap_or(0)
}

/// Resident set size in bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

struct ViewerResult {
    events: Vec<Event>,
    wall: Duration,
    stats: loaves_client_sdk::Stats,
}

fn main() {
    let viewers = env("BENCH_VIEWERS", 8) as usize;
    let seconds = env("BENCH_SECONDS", 30);
    let bitrate = env("BENCH_BITRATE", 5_000_000);
    let join_gap = Duration::from_millis(env("BENCH_JOIN_MS", 2000));

    // Synthetic clear CMAF: one 720p video rendition at the bitrate.
    let input = tempfile::tempdir().unwrap();
    let track = SyntheticTrack {
        video: Some((1280, 720)),
        fps: 25,
        bitrate,
    };
    let dir = input.path().join(RENDITION);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("init.mp4"), init_segment(&track)).unwrap();
    let segments = (seconds * 1000).div_ceil(u64::from(SEGMENT_MS));
    for seq in 0..segments {
        std::fs::write(
            dir.join(format!("seg_{seq:05}.m4s")),
            media_segment(&track, seq, SEGMENT_MS, 7),
        )
        .unwrap();
    }

    let stack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("stack")
        .enable_all()
        .build()
        .unwrap();
    // Blocking threads kept alive for the whole run, so that their CPU
    // time is still readable at the end.
    let sdk_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sdk")
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap();
    let stack = Arc::new(stack_rt.block_on(common::stack_from(
        true,
        Scheme::Cenc,
        input.path().to_path_buf(),
    )));

    // Baseline: the stack up, the SDK runtime idle, no viewer.
    let idle = Duration::from_secs(3);
    let rss_idle = rss_bytes();
    let sdk_before = threads_cpu_ns("sdk");
    let process_before = process_cpu_ns();
    std::thread::sleep(idle);
    let baseline_sdk_ns = threads_cpu_ns("sdk") - sdk_before;
    let baseline_process_ns = process_cpu_ns() - process_before;

    // The run.
    let peak_rss = Arc::new(AtomicU64::new(rss_bytes()));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak_rss.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let sdk_start = threads_cpu_ns("sdk");
    let process_start = process_cpu_ns();
    let started = Instant::now();
    let s = stack.clone();
    let results: Vec<ViewerResult> = sdk_rt
        .block_on(sdk_rt.spawn(async move {
            let mut plays = Vec::new();
            for i in 0..viewers {
                let loaves = s
                    .options(true)
                    .playback_speed(1.0)
                    .buffer_target(Duration::from_secs(10))
                    .event_capacity(4096)
                    .build()
                    .unwrap();
                let entitlement = s.entitlement(&format!("bench-{i}"));
                plays.push(tokio::spawn(async move {
                    let opened = Instant::now();
                    let session = loaves.open(common::TITLE, entitlement).await.unwrap();
                    let mut events = session.events();
                    let report = tokio::time::timeout(
                        Duration::from_secs(seconds * 3 + 60),
                        player::play(&session, &common::r(RENDITION), Duration::from_secs(10)),
                    )
                    .await
                    .expect("playback finishes in time")
                    .unwrap();
                    assert_eq!(report.sha256.len() as u64, segments + 1);
                    let stats = session.stats();
                    let mut out = Vec::new();
                    while let Some(event) = events.try_next() {
                        out.push(event);
                    }
                    let wall = opened.elapsed();
                    session.close().await.unwrap();
                    ViewerResult {
                        events: out,
                        wall,
                        stats,
                    }
                }));
                tokio::time::sleep(join_gap).await;
            }
            let mut results = Vec::new();
            for play in plays {
                results.push(play.await.unwrap());
            }
            results
        }))
        .unwrap();
    let elapsed = started.elapsed();
    let sdk_ns = threads_cpu_ns("sdk") - sdk_start;
    let process_ns = process_cpu_ns() - process_start;
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak_rss.load(Ordering::Relaxed);

    // Figures.
    let viewer_seconds: f64 = results.iter().map(|r| r.wall.as_secs_f64()).sum();
    let mut by_source: [(&str, Vec<Duration>, u64); 3] = [
        ("peers", Vec::new(), 0),
        ("seeds", Vec::new(), 0),
        ("CDN", Vec::new(), 0),
    ];
    let mut rebuffers = 0;
    let mut store = 0;
    for r in &results {
        rebuffers += r.stats.rebuffer_count;
        store += r.stats.store_bytes;
        for event in &r.events {
            if let Event::SegmentDelivered {
                source,
                elapsed,
                bytes,
                ..
            } = event
            {
                let slot = match source {
                    Source::Peer(_) => 0,
                    Source::Seed(_) => 1,
                    Source::Cdn => 2,
                };
                by_source[slot].1.push(*elapsed);
                by_source[slot].2 += bytes;
            }
        }
    }
    let total_bytes: u64 = by_source.iter().map(|s| s.2).sum();
    let sdk_cpu = Duration::from_nanos(sdk_ns);
    println!(
        "{viewers} viewers, {seconds} s of {:.1} Mbit/s synthetic video ({segments} segments of {} s), joins {} ms apart, playback speed 1",
        bitrate as f64 / 1e6,
        SEGMENT_MS / 1000,
        join_gap.as_millis()
    );
    println!(
        "run: {:.1} s wall, {viewer_seconds:.1} viewer-seconds, {rebuffers} rebuffers",
        elapsed.as_secs_f64()
    );
    println!();
    println!("| measurement | value |");
    println!("|---|---:|");
    println!(
        "| SDK runtime CPU, 0 viewers (baseline, {} s idle) | {:.2} % of a core |",
        idle.as_secs(),
        baseline_sdk_ns as f64 / idle.as_nanos() as f64 * 100.0
    );
    println!(
        "| SDK runtime CPU, {viewers} viewers | {:.2} s over {:.1} s ({:.1} % of a core) |",
        sdk_cpu.as_secs_f64(),
        elapsed.as_secs_f64(),
        sdk_cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0
    );
    println!(
        "| SDK CPU per viewer while playing (CPU s / viewer-s) | {:.2} % of a core |",
        (sdk_cpu.as_secs_f64()
            - baseline_sdk_ns as f64 / idle.as_nanos() as f64 * elapsed.as_secs_f64())
            / viewer_seconds
            * 100.0
    );
    println!(
        "| SDK CPU per MB delivered to players | {:.1} ms |",
        sdk_cpu.as_secs_f64() * 1000.0 / (total_bytes as f64 / 1e6)
    );
    println!(
        "| whole process CPU (stack + SDK), 0 viewers / {viewers} viewers | {:.2} % / {:.1} % of a core |",
        baseline_process_ns as f64 / idle.as_nanos() as f64 * 100.0,
        process_ns as f64 / elapsed.as_nanos() as f64 * 100.0
    );
    println!(
        "| RSS, 0 viewers / peak with {viewers} | {:.1} MB / {:.1} MB |",
        rss_idle as f64 / 1e6,
        peak as f64 / 1e6
    );
    println!(
        "| RSS per viewer (peak - idle) / {viewers} | {:.1} MB |",
        peak.saturating_sub(rss_idle) as f64 / 1e6 / viewers as f64
    );
    println!(
        "| segment store per viewer at the end (in that RSS) | {:.1} MB |",
        store as f64 / 1e6 / viewers as f64
    );
    println!();
    println!("| source | segments | share of bytes | p50 delivery | p95 delivery | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, times, bytes) in &mut by_source {
        if times.is_empty() {
            continue;
        }
        times.sort();
        println!(
            "| {name} | {} | {:.2} | {} | {} | {} |",
            times.len(),
            *bytes as f64 / total_bytes as f64,
            ms(percentile(times, 50)),
            ms(percentile(times, 95)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
        );
    }
    drop(sdk_rt);
    // The stack's servers are dropped inside their runtime.
    stack_rt.block_on(async move { drop(stack) });
    drop(stack_rt);
}
