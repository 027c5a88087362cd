//! The network lab: the platform's real binaries and a crowd of
//! `loaves-viewer` processes on one machine, each viewer in its own network
//! namespace behind a home router doing NAT with nftables (full cone,
//! port-restricted cone, symmetric, carrier-grade double NAT, UDP
//! blocked), optional link rates (`tc tbf`) and random loss (nftables
//! `numgen`). Root only; it installs nothing (scripts/test.d/nftables.sh
//! does).
//!
//! The servers (license server, tracker, a swarm seed, the CDN origin)
//! run in the lab's "internet" namespace on public-looking addresses (see
//! [`plan`]); the runner moves one thread of its own into that namespace
//! ([`net::enter`]) and runs the deployment from there, the live packager
//! included, so nothing of the lab listens in the host's namespace and no
//! packet of it leaves the lab's namespaces.
//!
//! Results: per viewer (bytes by source, stalls, the NAT class it
//! detected, its connection attempts), per viewer pair (whether a direct
//! connection formed, how long it took), per NAT pair, and the tracker's
//! own connection counters.

pub mod net;
pub mod plan;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;

pub use plan::{Home, NatKind, Scenario};

use crate::platform::TITLE;
use crate::scrape;
use crate::swarm::deploy::{Content, DeployOptions, Deployment, ListenIps, Location};
use crate::swarm::procs::{Proc, binary};

/// The rendition every viewer plays.
const RENDITION: &str = "video_720p";
/// Time a viewer may take beyond its watch time (startup, a slow machine).
const VIEWER_SLACK: Duration = Duration::from_secs(60);

/// A finished lab run.
#[derive(Debug, Clone, Serialize)]
pub struct LabRun {
    /// The scenario's name.
    pub scenario: String,
    /// Whether the viewers had P2P on.
    pub p2p: bool,
    /// Seconds from the first namespace to the last viewer's end.
    pub wall_s: f64,
    /// Seconds the servers took to come up in the lab.
    pub stack_up_s: f64,
    /// Every viewer.
    pub viewers: Vec<ViewerResult>,
    /// Every pair of viewers.
    pub pairs: Vec<PairResult>,
    /// The pairs summed by NAT kinds.
    pub matrix: Vec<MatrixRow>,
    /// Bytes from peers over all bytes, every viewer.
    pub offload: f64,
    /// Stalls, every viewer.
    pub stalls: u64,
    /// The tracker's own counters at the end: connection attempts by
    /// result and NAT class pair (`loaves_tracker_p2p_connect_attempts_total`),
    /// announces by NAT class, punch requests by result.
    pub tracker: BTreeMap<String, f64>,
}

/// One viewer's outcome, from its final report.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerResult {
    /// Name.
    pub name: String,
    /// Its home.
    pub home: String,
    /// The NAT in front of it.
    pub nat: NatKind,
    /// Whether it played to the end.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// The NAT class it detected (`open`, `ei`, `ed`, `unknown`).
    pub nat_class: String,
    /// Bytes from peers.
    pub bytes_from_peers: u64,
    /// Bytes from seeds.
    pub bytes_from_seeds: u64,
    /// Bytes from the CDN.
    pub bytes_from_cdn: u64,
    /// Bytes it uploaded to peers.
    pub bytes_uploaded: u64,
    /// Stalls (rebuffering events).
    pub stalls: u64,
    /// Seconds stalled.
    pub stall_s: f64,
    /// Media seconds played.
    pub played_s: f64,
    /// Punch requests it sent through the tracker.
    pub punch_requests: u64,
    /// Punch notices it got.
    pub punch_notices: u64,
    /// Its connections to peers and seeds that completed or were given up.
    pub connections: Vec<Connection>,
}

/// One connection outcome of a viewer (`Event::PeerConnect`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Connection {
    /// The other side's key (hex).
    pub peer: String,
    /// Whether it is a seed.
    pub seed: bool,
    /// The candidates tried.
    pub tried: Vec<String>,
    /// The one that answered.
    pub address: Option<String>,
    /// Whether a punch was asked for.
    pub punched: bool,
    /// Seconds to connect or give up.
    pub elapsed_s: f64,
}

/// Two viewers.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    /// One viewer.
    pub a: String,
    /// The other.
    pub b: String,
    /// The NAT in front of `a`.
    pub nat_a: NatKind,
    /// The NAT in front of `b`.
    pub nat_b: NatKind,
    /// Both behind one router.
    pub same_home: bool,
    /// Whether a direct connection should form, as the NATs' theory says.
    pub expected: bool,
    /// Connection attempts between them, either way.
    pub attempts: u64,
    /// Attempts that connected.
    pub direct: u64,
    /// Seconds the first successful attempt took.
    pub connect_s: Option<f64>,
}

/// Pairs summed by the NAT kinds of their two sides.
#[derive(Debug, Clone, Serialize)]
pub struct MatrixRow {
    /// The kinds (`same-lan` for two viewers behind one router).
    pub nat_pair: String,
    /// Pairs.
    pub pairs: u64,
    /// Pairs that connected directly.
    pub connected: u64,
    /// Attempts, either way.
    pub attempts: u64,
    /// Attempts that connected.
    pub direct: u64,
    /// Attempts given up.
    pub failed: u64,
    /// Median time of the connecting attempts, seconds.
    pub p50_s: Option<f64>,
    /// 95th percentile, seconds.
    pub p95_s: Option<f64>,
}

impl LabRun {
    /// The viewer called `name`.
    pub fn viewer(&self, name: &str) -> Option<&ViewerResult> {
        self.viewers.iter().find(|v| v.name == name)
    }

    /// The pair of viewers `a` and `b` (either order).
    pub fn pair(&self, a: &str, b: &str) -> Option<&PairResult> {
        self.pairs
            .iter()
            .find(|p| (p.a == a && p.b == b) || (p.a == b && p.b == a))
    }

    /// The report as text: viewers, then the NAT pair matrix.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} viewers, P2P {}, offload {:.1} %, {} stalls, {:.0} s",
            self.scenario,
            self.viewers.len(),
            if self.p2p { "on" } else { "off" },
            100.0 * self.offload,
            self.stalls,
            self.wall_s
        );
        let _ = writeln!(
            out,
            "{:<14} {:<16} {:>4} {:>3} {:>10} {:>10} {:>10} {:>10} {:>6} {:>5}",
            "viewer", "nat", "seen", "ok", "peers B", "seeds B", "CDN B", "up B", "stalls", "conn"
        );
        for v in &self.viewers {
            let connected = v
                .connections
                .iter()
                .filter(|c| !c.seed && c.address.is_some())
                .count();
            let _ = writeln!(
                out,
                "{:<14} {:<16} {:>4} {:>3} {:>10} {:>10} {:>10} {:>10} {:>6} {:>5}",
                v.name,
                v.nat.name(),
                v.nat_class,
                if v.ok { "yes" } else { "NO" },
                v.bytes_from_peers,
                v.bytes_from_seeds,
                v.bytes_from_cdn,
                v.bytes_uploaded,
                v.stalls,
                connected
            );
        }
        let _ = writeln!(
            out,
            "\n{:<34} {:>5} {:>9} {:>8} {:>6} {:>6} {:>7} {:>7}",
            "NAT pair", "pairs", "connected", "attempts", "direct", "failed", "p50 s", "p95 s"
        );
        let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
        for row in &self.matrix {
            let _ = writeln!(
                out,
                "{:<34} {:>5} {:>9} {:>8} {:>6} {:>6} {:>7} {:>7}",
                row.nat_pair,
                row.pairs,
                row.connected,
                row.attempts,
                row.direct,
                row.failed,
                secs(row.p50_s),
                secs(row.p95_s)
            );
        }
        out
    }
}

/// Builds the lab of `scenario`, runs it with P2P on or off, tears the lab
/// down and returns what happened. Blocking (it runs its own runtime on a
/// thread inside the lab's internet); SIGINT and SIGTERM stop the run
/// and still tear everything down.
pub fn run(scenario: &Scenario, p2p: bool) -> anyhow::Result<LabRun> {
    if let Some(why) = net::unavailable() {
        bail!("{why}");
    }
    let homes = scenario.plan()?;
    let swept = net::sweep_stale()?;
    if swept > 0 {
        eprintln!("lab: removed {swept} namespace(s) a killed lab left behind");
    }
    let started = Instant::now();
    let mut network = net::Net::build(&homes)?;
    eprintln!(
        "lab {}: {} namespaces up in {:.1} s",
        scenario.name,
        network.namespaces().len(),
        started.elapsed().as_secs_f64()
    );
    let internet = network.internet();
    let viewer_ns: Vec<Vec<String>> = homes
        .iter()
        .map(|h| {
            (0..h.viewers.len())
                .map(|j| network.viewer_ns(h, j))
                .collect()
        })
        .collect();
    let scenario_copy = scenario.clone();
    let homes_copy = homes.clone();
    let worker = std::thread::Builder::new()
        .name("lab-internet".into())
        .spawn(move || -> anyhow::Result<LabRun> {
            net::enter(&internet)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the lab's runtime")?;
            runtime.block_on(async {
                tokio::select! {
                    run = stack(&scenario_copy, &homes_copy, &viewer_ns, p2p) => run,
                    signal = interrupted() => Err(anyhow!("the lab was interrupted ({signal})")),
                }
            })
        })
        .context("starting the lab's thread")?;
    let result = worker
        .join()
        .map_err(|_| anyhow!("the lab's thread panicked"));
    let namespaces: Vec<String> = network.namespaces().to_vec();
    network.teardown()?;
    let left: Vec<String> = net::lab_namespaces()?
        .into_iter()
        .filter(|n| namespaces.contains(n))
        .collect();
    anyhow::ensure!(left.is_empty(), "namespaces left after teardown: {left:?}");
    let mut run = result??;
    run.wall_s = started.elapsed().as_secs_f64();
    Ok(run)
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // No handler: never resolves (the run's own bounds still hold).
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The servers in the internet, the viewers in their homes.
async fn stack(
    scenario: &Scenario,
    homes: &[Home],
    viewer_ns: &[Vec<String>],
    p2p: bool,
) -> anyhow::Result<LabRun> {
    let started = Instant::now();
    let options = DeployOptions {
        listen: Some(ListenIps {
            // Every address of the internet: the viewers reach it on its
            // public one, the live packager (in this process) over
            // loopback, the name its development certificate is issued to.
            license: std::net::Ipv4Addr::UNSPECIFIED.into(),
            tracker: plan::TRACKER_IP.into(),
            cdn: plan::CDN_IP.into(),
            seeds: plan::SEED_IP.into(),
        }),
        ..DeployOptions::default()
    };
    let seeds = [Location {
        region: "lab".into(),
        isp: "lab".into(),
    }];
    let mut deployment =
        Deployment::start_with(&Content::live(vec![RENDITION.into()]), &seeds, &options).await?;
    let stack_up_s = started.elapsed().as_secs_f64();
    eprintln!(
        "lab {}: servers up in {stack_up_s:.1} s (logs in {})",
        scenario.name,
        deployment.dir.path().join("logs").display()
    );
    let result = crowd(scenario, homes, viewer_ns, p2p, &mut deployment).await;
    // reqwest is built without a default TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scraped = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => scrape::scrape(&http, deployment.tracker_http).await,
        Err(e) => Err(e.into()),
    };
    let tracker = match scraped {
        Ok(exposition) => tracker_counters(&exposition),
        Err(e) => {
            eprintln!("lab: scraping the tracker: {e:#}");
            BTreeMap::new()
        }
    };
    let stopped = deployment.shutdown();
    let viewers = result?;
    stopped?;
    Ok(summarise(
        scenario, homes, p2p, viewers, tracker, stack_up_s,
    ))
}

fn tracker_counters(exposition: &scrape::Exposition) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in [
        "loaves_tracker_p2p_connect_attempts_total",
        "loaves_tracker_announces_by_nat_class_total",
        "loaves_tracker_punch_requests_total",
    ] {
        for sample in exposition.samples().filter(|s| s.name == name) {
            out.insert(format!("{name}{{{}}}", sample.labels), sample.value);
        }
    }
    out
}

/// Starts every viewer (one process each, in its namespace), waits for
/// them all, and reads their reports.
async fn crowd(
    scenario: &Scenario,
    homes: &[Home],
    viewer_ns: &[Vec<String>],
    p2p: bool,
    deployment: &mut Deployment,
) -> anyhow::Result<Vec<ViewerResult>> {
    let needed = scenario.latency_segments + 1;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while deployment.published() < needed {
        anyhow::ensure!(
            Instant::now() < wait_until,
            "the live stream did not reach {needed} segments within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let viewer_bin = binary("loaves-viewer", "loaves-viewer")?;
    let root = deployment.dir.path().to_owned();
    let logs = root.join("logs");
    let entitlements = root.join("entitlements");
    std::fs::create_dir_all(&entitlements)?;
    let common = common_args(deployment);
    let mut procs: Vec<(usize, usize, Proc)> = Vec::new();
    let t0 = Instant::now();
    // Homes interleaved: the n-th viewer of every home, then the next.
    let most = homes.iter().map(|h| h.viewers.len()).max().unwrap_or(0);
    let order: Vec<(usize, usize)> = (0..most)
        .flat_map(|j| {
            homes
                .iter()
                .enumerate()
                .filter(move |(_, h)| j < h.viewers.len())
                .map(move |(i, _)| (i, j))
        })
        .collect();
    for (n, &(h, j)) in order.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(scenario.join_interval_ms)).await;
        }
        let viewer = &homes[h].viewers[j];
        let entitlement = entitlements.join(format!("{}.entitlement", viewer.name));
        std::fs::write(
            &entitlement,
            deployment.entitlement(&format!("lab-{}", viewer.name)),
        )?;
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            viewer_ns[h][j].clone(),
            viewer_bin.display().to_string(),
        ];
        args.extend(common.iter().cloned());
        args.extend([
            "--entitlement".into(),
            entitlement.display().to_string(),
            "--latency-segments".into(),
            scenario.latency_segments.to_string(),
            "--watch-seconds".into(),
            scenario.watch_s.to_string(),
            "--bind".into(),
            format!("0.0.0.0:{}", viewer.port),
            "--region".into(),
            "lab".into(),
            "--isp".into(),
            format!("home-{}", homes[h].name),
        ]);
        if !p2p {
            args.push("--no-p2p".into());
        }
        if let Some(kbps) = scenario.viewer_upload_kbps {
            args.extend(["--upload-kbps".into(), kbps.to_string()]);
        }
        let proc = Proc::spawn(
            &format!("viewer-{}", viewer.name),
            Path::new("ip"),
            &args,
            &logs,
        )?;
        procs.push((h, j, proc));
    }
    let deadline = t0
        + Duration::from_millis(scenario.join_interval_ms.saturating_mul(order.len() as u64))
        + Duration::from_secs(scenario.watch_s)
        + VIEWER_SLACK;
    let mut next_line = Instant::now();
    loop {
        let running = procs
            .iter_mut()
            .map(|(_, _, p)| p.running())
            .filter(|r| *r)
            .count();
        if running == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("lab: {running} viewer(s) still running at the deadline: stopped");
            break;
        }
        if Instant::now() >= next_line {
            eprintln!(
                "lab: {:>4.0} s · {running} of {} viewers playing",
                t0.elapsed().as_secs_f64(),
                procs.len()
            );
            next_line += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut results = Vec::new();
    for (h, j, mut proc) in procs {
        proc.stop();
        results.push((h, j, viewer_result(&homes[h], j, &proc.log)));
    }
    // In the plan's order (home by home), as the pairs count them.
    results.sort_by_key(|(h, j, _)| (*h, *j));
    Ok(results.into_iter().map(|(_, _, r)| r).collect())
}

/// The viewer arguments every viewer shares.
fn common_args(deployment: &Deployment) -> Vec<String> {
    let e = &deployment.endpoints;
    // The license server listens on every address of the internet; the
    // viewers use its public one.
    let license_port = e.license_url.rsplit_once(':').map_or("", |(_, port)| port);
    let mut args: Vec<String> = vec![
        "--license".into(),
        format!("https://{}:{license_port}", plan::LICENSE_IP),
        "--license-ca".into(),
        deployment.license_cert.display().to_string(),
        // The license server's development certificate names localhost.
        "--license-tls-name".into(),
        "localhost".into(),
        "--license-key".into(),
        deployment.license_public_key.display().to_string(),
        "--manifest-key".into(),
        deployment.origin_public_key.display().to_string(),
        "--tracker".into(),
        e.tracker.to_string(),
        "--title".into(),
        TITLE.into(),
        "--rendition".into(),
        RENDITION.into(),
    ];
    for cdn in &e.cdn_urls {
        args.extend(["--cdn".into(), cdn.clone()]);
    }
    args
}

/// Reads a viewer's final report (the last JSON object in its log).
fn viewer_result(home: &Home, j: usize, log: &Path) -> ViewerResult {
    let viewer = &home.viewers[j];
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let report = text
        .lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let mut result = ViewerResult {
        name: viewer.name.clone(),
        home: home.name.clone(),
        nat: home.nat,
        ok: false,
        error: None,
        nat_class: "unknown".into(),
        bytes_from_peers: 0,
        bytes_from_seeds: 0,
        bytes_from_cdn: 0,
        bytes_uploaded: 0,
        stalls: 0,
        stall_s: 0.0,
        played_s: 0.0,
        punch_requests: 0,
        punch_notices: 0,
        connections: Vec::new(),
    };
    let Some(report) = report else {
        let lines: Vec<&str> = text.lines().collect();
        result.error = Some(format!(
            "no report in {}:\n{}",
            log.display(),
            lines[lines.len().saturating_sub(10)..].join("\n")
        ));
        return result;
    };
    let stats = &report["stats"];
    let n = |key: &str| stats[key].as_u64().unwrap_or(0);
    result.ok = report["ok"].as_bool().unwrap_or(false);
    result.error = report["error"].as_str().map(str::to_owned);
    result.nat_class = stats["nat"].as_str().unwrap_or("unknown").to_owned();
    result.bytes_from_peers = n("bytes_from_peers");
    result.bytes_from_seeds = n("bytes_from_seeds");
    result.bytes_from_cdn = n("bytes_from_cdn");
    result.bytes_uploaded = n("bytes_uploaded");
    result.stalls = n("rebuffer_count");
    result.stall_s = stats["rebuffer_s"].as_f64().unwrap_or(0.0);
    result.played_s = stats["played_s"].as_f64().unwrap_or(0.0);
    result.punch_requests = n("punch_requests");
    result.punch_notices = n("punch_notices");
    result.connections = serde_json::from_value(report["connections"].clone()).unwrap_or_default();
    result
}

/// Which viewer (index into the flattened plan) an address is: its LAN
/// address and port, its home's public address and its port (the NATs
/// keep ports where they can), or its home's public address alone when it
/// is the only viewer there (a symmetric NAT's ports are random).
fn owner(homes: &[Home], address: &str) -> Option<usize> {
    let address: SocketAddr = address.parse().ok()?;
    let IpAddr::V4(ip) = address.ip() else {
        return None;
    };
    let mut n = 0;
    let mut by_ip = None;
    for home in homes {
        for viewer in &home.viewers {
            if address.port() == viewer.port && (ip == viewer.lan_ip || ip == home.public_ip()) {
                return Some(n);
            }
            if ip == home.public_ip() && home.viewers.len() == 1 {
                by_ip = Some(n);
            }
            n += 1;
        }
    }
    by_ip
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn summarise(
    scenario: &Scenario,
    homes: &[Home],
    p2p: bool,
    viewers: Vec<ViewerResult>,
    tracker: BTreeMap<String, f64>,
    stack_up_s: f64,
) -> LabRun {
    let flat: Vec<(usize, &plan::Viewer)> = homes
        .iter()
        .enumerate()
        .flat_map(|(h, home)| home.viewers.iter().map(move |v| (h, v)))
        .collect();
    // (a, b) with a < b → (attempts, direct, connect times).
    let mut between: BTreeMap<(usize, usize), (u64, u64, Vec<f64>)> = BTreeMap::new();
    for (a, result) in viewers.iter().enumerate() {
        for c in result.connections.iter().filter(|c| !c.seed) {
            let target = c
                .address
                .as_deref()
                .and_then(|addr| owner(homes, addr))
                .or_else(|| c.tried.iter().find_map(|t| owner(homes, t)));
            let Some(b) = target.filter(|b| *b != a) else {
                continue;
            };
            let entry = between.entry((a.min(b), a.max(b))).or_default();
            entry.0 += 1;
            if c.address.is_some() {
                entry.1 += 1;
                entry.2.push(c.elapsed_s);
            }
        }
    }
    let mut pairs = Vec::new();
    for a in 0..flat.len() {
        for b in a + 1..flat.len() {
            let (ha, va) = flat[a];
            let (hb, vb) = flat[b];
            let same_home = ha == hb;
            let (nat_a, nat_b) = (homes[ha].nat, homes[hb].nat);
            let expected = if same_home {
                nat_a != NatKind::UdpBlocked
            } else {
                nat_a.can_punch(nat_b)
            };
            let (attempts, direct, mut times) = between.remove(&(a, b)).unwrap_or_default();
            times.sort_by(f64::total_cmp);
            pairs.push(PairResult {
                a: va.name.clone(),
                b: vb.name.clone(),
                nat_a,
                nat_b,
                same_home,
                expected,
                attempts,
                direct,
                connect_s: times.first().copied(),
            });
        }
    }
    let mut rows: BTreeMap<String, (MatrixRow, Vec<f64>)> = BTreeMap::new();
    for (pair, (a, b)) in pairs
        .iter()
        .zip((0..flat.len()).flat_map(|a| (a + 1..flat.len()).map(move |b| (a, b))))
    {
        let label = if pair.same_home {
            format!("same-lan ({})", pair.nat_a.name())
        } else {
            let mut names = [pair.nat_a.name(), pair.nat_b.name()];
            names.sort_unstable();
            format!("{} × {}", names[0], names[1])
        };
        let times: Vec<f64> = viewers[a]
            .connections
            .iter()
            .chain(&viewers[b].connections)
            .filter(|c| !c.seed && c.address.is_some())
            .filter(|c| {
                let other = c.address.as_deref().and_then(|x| owner(homes, x));
                other == Some(a) || other == Some(b)
            })
            .map(|c| c.elapsed_s)
            .collect();
        let (row, all_times) = rows.entry(label.clone()).or_insert_with(|| {
            (
                MatrixRow {
                    nat_pair: label,
                    pairs: 0,
                    connected: 0,
                    attempts: 0,
                    direct: 0,
                    failed: 0,
                    p50_s: None,
                    p95_s: None,
                },
                Vec::new(),
            )
        });
        row.pairs += 1;
        row.connected += u64::from(pair.direct > 0);
        row.attempts += pair.attempts;
        row.direct += pair.direct;
        row.failed += pair.attempts - pair.direct;
        all_times.extend(times);
    }
    let matrix = rows
        .into_values()
        .map(|(mut row, mut times)| {
            times.sort_by(f64::total_cmp);
            row.p50_s = percentile(&times, 0.5);
            row.p95_s = percentile(&times, 0.95);
            row
        })
        .collect();
    let peers: u64 = viewers.iter().map(|v| v.bytes_from_peers).sum();
    let all: u64 = viewers
        .iter()
        .map(|v| v.bytes_from_peers + v.bytes_from_seeds + v.bytes_from_cdn)
        .sum();
    LabRun {
        scenario: scenario.name.clone(),
        p2p,
        wall_s: 0.0,
        stack_up_s,
        stalls: viewers.iter().map(|v| v.stalls).sum(),
        offload: if all == 0 {
            0.0
        } else {
            peers as f64 / all as f64
        },
        viewers,
        pairs,
        matrix,
        tracker,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn homes() -> Vec<Home> {
        let s: Scenario = toml::from_str(
            r#"
            name = "t"
            [[home]]
            name = "lan"
            nat = "port-restricted"
            viewers = 2
            [[home]]
            name = "sym"
            nat = "symmetric"
            "#,
        )
        .unwrap();
        s.plan().unwrap()
    }

    #[test]
    fn addresses_name_their_viewer() {
        let homes = homes();
        assert_eq!(owner(&homes, "10.1.0.11:41001"), Some(1));
        assert_eq!(owner(&homes, "198.19.1.2:41000"), Some(0));
        // Two viewers behind the router: a port it did not keep is nobody's.
        assert_eq!(owner(&homes, "198.19.1.2:50000"), None);
        // The only viewer behind a symmetric NAT, at a random port.
        assert_eq!(owner(&homes, "198.19.2.2:23456"), Some(2));
        assert_eq!(owner(&homes, "198.18.0.2:7000"), None);
        assert_eq!(owner(&homes, "garbage"), None);
    }

    fn viewer(name: &str, home: &Home, connections: Vec<Connection>) -> ViewerResult {
        ViewerResult {
            name: name.into(),
            home: home.name.clone(),
            nat: home.nat,
            ok: true,
            error: None,
            nat_class: "ei".into(),
            bytes_from_peers: 100,
            bytes_from_seeds: 0,
            bytes_from_cdn: 300,
            bytes_uploaded: 0,
            stalls: 0,
            stall_s: 0.0,
            played_s: 10.0,
            punch_requests: 0,
            punch_notices: 0,
            connections,
        }
    }

    fn connection(tried: &str, address: Option<&str>, elapsed_s: f64) -> Connection {
        Connection {
            peer: "00".into(),
            seed: false,
            tried: vec![tried.into()],
            address: address.map(str::to_owned),
            punched: true,
            elapsed_s,
        }
    }

    #[test]
    fn pairs_and_the_matrix_count_what_the_viewers_reported() {
        let homes = homes();
        let scenario: Scenario = toml::from_str("name = \"t\"\nhome = []\n").unwrap();
        let viewers = vec![
            viewer(
                "lan.1",
                &homes[0],
                vec![
                    connection("10.1.0.11:41001", Some("10.1.0.11:41001"), 0.2),
                    connection("198.19.2.2:41002", None, 3.0),
                ],
            ),
            viewer("lan.2", &homes[0], vec![]),
            viewer(
                "sym",
                &homes[1],
                vec![connection("198.19.1.2:41000", None, 3.0)],
            ),
        ];
        let run = summarise(&scenario, &homes, true, viewers, BTreeMap::new(), 1.0);
        let lan = run.pair("lan.2", "lan.1").unwrap();
        assert!(lan.same_home && lan.expected);
        assert_eq!((lan.attempts, lan.direct, lan.connect_s), (1, 1, Some(0.2)));
        let cross = run.pair("lan.1", "sym").unwrap();
        assert!(!cross.expected);
        assert_eq!((cross.attempts, cross.direct), (2, 0));
        assert_eq!(run.pair("lan.2", "sym").unwrap().attempts, 0);
        let row = run
            .matrix
            .iter()
            .find(|r| r.nat_pair == "port-restricted × symmetric")
            .unwrap();
        assert_eq!(
            (row.pairs, row.connected, row.attempts, row.failed),
            (2, 0, 2, 2)
        );
        let row = run
            .matrix
            .iter()
            .find(|r| r.nat_pair == "same-lan (port-restricted)")
            .unwrap();
        assert_eq!((row.connected, row.p50_s), (1, Some(0.2)));
        assert!((run.offload - 0.25).abs() < 1e-9);
        assert!(run.table().contains("port-restricted × symmetric"));
    }
}
