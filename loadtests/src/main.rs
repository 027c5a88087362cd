//! `loadtests`: the demo, the swarm scenarios and the simulator.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loaves_loadtests::demo::{self, DemoConfig};
use loaves_loadtests::sim::{SimConfig, Simulation};
use loaves_loadtests::{lab, soak, swarm};

#[derive(Debug, Parser)]
#[command(version, about = "Loaves load tests and simulator")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole platform on this machine: license server, live packager,
    /// tracker, an edge seed as seed and CDN origin, and a crowd of viewers
    /// joining a live stream one after another. Prints offload and quality.
    Demo {
        /// Viewers in the crowd.
        #[arg(long, default_value_t = 20)]
        viewers: usize,
        /// Seconds each viewer watches.
        #[arg(long, default_value_t = 50)]
        watch_s: u64,
        /// Milliseconds between two viewers joining.
        #[arg(long, default_value_t = 1500)]
        join_interval_ms: u64,
        /// Everyone stays until the last viewer watched --watch-s, then all
        /// leave at once (the simulator's model of an event).
        #[arg(long)]
        leave_together: bool,
        /// Run the crowd with P2P off (every byte from the CDN): the baseline.
        #[arg(long, conflicts_with = "with_baseline")]
        cdn_only: bool,
        /// Run the crowd twice, P2P on then off, and report both.
        #[arg(long)]
        with_baseline: bool,
        /// Write the report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress display.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a scenario (loadtests/scenarios/*.toml) on real processes over
    /// loopback: the license server, tracker and edge seeds as their own
    /// binaries, a crowd of SDK viewers with emulated links, and the
    /// scenario's faults. Prints the report; writes JSON and HTML.
    Swarm {
        /// The scenario file.
        #[arg(long)]
        scenario: PathBuf,
        /// Write the report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Write the HTML report (plots) here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Also run the same scenario with P2P off and report both.
        #[arg(long)]
        with_baseline: bool,
    },
    /// Viewers who watch a whole film, and a live event as long, on real
    /// processes over loopback (license server, tracker, edge seed, CDN),
    /// with the license server's default policy unless the scenario says
    /// otherwise: a session token lives 90 s, so every session crosses many
    /// renewals. Prints one row per window (a minute by default): bytes by
    /// source per title, stalls, license renewals, token refreshes and
    /// announces at the tracker, token refusals counted by the tracker, the
    /// seeds and the license server (must be 0), connections open, ClearKey
    /// answers through each viewer's player endpoint. Exits non-zero if a
    /// viewer failed, a token was refused or a ClearKey answer was wrong.
    Soak {
        /// The scenario file (default: loadtests/scenarios/soak.toml, the
        /// 10-minute soak).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Override the scenario's duration, seconds.
        #[arg(long)]
        duration_s: Option<u64>,
        /// Override the scenario's window (one report row), seconds.
        #[arg(long)]
        window_s: Option<u64>,
        /// Override the number of VOD viewers.
        #[arg(long)]
        vod_viewers: Option<usize>,
        /// Override the number of live viewers.
        #[arg(long)]
        live_viewers: Option<usize>,
        /// Write the report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// The network lab (root only): builds network namespaces on this
    /// machine, an "internet" with the license server, tracker, a swarm
    /// seed and the CDN origin, and homes behind NATs in nftables (full
    /// cone, port-restricted, symmetric, carrier-grade double NAT, UDP
    /// blocked), runs one `loaves-viewer` process per viewer in its home,
    /// and prints per viewer and per NAT pair whether peers connected
    /// directly, the peer offload and the stalls. Everything it built is
    /// torn down at the end, also after an error, SIGINT or SIGTERM.
    Lab {
        /// The scenario file (loadtests/lab/*.toml).
        #[arg(long)]
        scenario: PathBuf,
        /// Override the seconds each viewer watches.
        #[arg(long)]
        watch_s: Option<u64>,
        /// Write the report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also run the same crowd with P2P off (every byte from the CDN)
        /// in a lab built again the same way, and report both.
        #[arg(long)]
        with_baseline: bool,
    },
    /// Simulate a live event in virtual time with the real scheduler and the
    /// real tracker swarm book, and print the report (JSON).
    Sim {
        /// TOML file with a `SimConfig` (every field optional).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Viewers (overrides the file).
        #[arg(long)]
        viewers: Option<u64>,
        /// Event length in virtual seconds (overrides the file).
        #[arg(long)]
        duration_s: Option<u64>,
        /// "deadline-first" or "cdn-only" (overrides the file).
        #[arg(long)]
        policy: Option<String>,
        /// Also run the same event with P2P off and print both.
        #[arg(long)]
        with_baseline: bool,
        /// Write the report(s) here as JSON.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Demo {
            viewers,
            watch_s,
            join_interval_ms,
            leave_together,
            cdn_only,
            with_baseline,
            report,
            quiet,
        } => {
            let config = DemoConfig {
                viewers,
                watch: std::time::Duration::from_secs(watch_s),
                join_interval: std::time::Duration::from_millis(join_interval_ms),
                leave_together,
                p2p: !cdn_only,
                progress: !quiet,
                ..DemoConfig::default()
            };
            run_demo(&config, with_baseline, report.as_deref())
        }
        Command::Swarm {
            scenario,
            report,
            html,
            with_baseline,
        } => run_swarm(&scenario, report.as_deref(), html.as_deref(), with_baseline),
        Command::Soak {
            scenario,
            duration_s,
            window_s,
            vod_viewers,
            live_viewers,
            report,
        } => {
            let path = scenario.unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/soak.toml")
            });
            let mut config = soak::SoakConfig::load(&path)?;
            config.duration_s = duration_s.unwrap_or(config.duration_s);
            config.window_s = window_s.unwrap_or(config.window_s);
            config.vod_viewers = vod_viewers.unwrap_or(config.vod_viewers);
            config.live_viewers = live_viewers.unwrap_or(config.live_viewers);
            run_soak(&config, report.as_deref())
        }
        Command::Lab {
            scenario,
            watch_s,
            report,
            with_baseline,
        } => {
            let mut scenario = lab::Scenario::load(&scenario)?;
            scenario.watch_s = watch_s.unwrap_or(scenario.watch_s);
            run_lab(&scenario, report.as_deref(), with_baseline)
        }
        Command::Sim {
            config,
            viewers,
            duration_s,
            policy,
            with_baseline,
            report,
        } => {
            let mut sim = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str::<SimConfig>(&text)
                        .with_context(|| format!("parsing {}", path.display()))?
                }
                None => SimConfig::default(),
            };
            if let Some(v) = viewers {
                sim.viewers = v;
            }
            if let Some(d) = duration_s {
                sim.duration_s = d;
            }
            if let Some(p) = policy {
                sim.policy = p;
            }
            let mut runs = vec![sim.clone()];
            if with_baseline {
                runs.push(SimConfig {
                    policy: "cdn-only".into(),
                    ..sim
                });
            }
            let mut reports = Vec::new();
            for run in runs {
                let viewer_seconds = run.viewers as f64 * run.duration_s as f64;
                let started = Instant::now();
                let (report, engine) = Simulation::new(run)?.run();
                let wall = started.elapsed().as_secs_f64();
                let output = serde_json::json!({
                    "report": report,
                    "engine": engine,
                    "wall_s": wall,
                    "events_per_s": engine.events as f64 / wall.max(1e-9),
                    // The speed goal's unit: viewers × virtual seconds.
                    "viewer_seconds_per_s": viewer_seconds / wall.max(1e-9),
                });
                println!("{}", serde_json::to_string_pretty(&output)?);
                reports.push(output);
            }
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&reports)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn run_demo(
    config: &DemoConfig,
    with_baseline: bool,
    report_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (report, outcomes) = runtime.block_on(demo::run(config))?;
    let baseline = if with_baseline {
        let cdn_only = DemoConfig {
            p2p: false,
            ..config.clone()
        };
        eprintln!("\nthe same crowd with P2P off (baseline):");
        Some(runtime.block_on(demo::run(&cdn_only))?)
    } else {
        None
    };
    for outcome in outcomes
        .iter()
        .chain(baseline.iter().flat_map(|(_, o)| o.iter()))
    {
        if let Some(error) = &outcome.error {
            eprintln!("{}: {error}", outcome.account);
        }
    }
    println!();
    print!(
        "{}",
        demo::table(&report, baseline.as_ref().map(|(r, _)| r))
    );
    if let Some(path) = report_path {
        let json = demo::report_json(
            &report,
            &outcomes,
            baseline.as_ref().map(|(r, o)| (r, o.as_slice())),
        )?;
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    anyhow::ensure!(failed == 0, "{failed} viewer(s) failed");
    anyhow::ensure!(
        report.corrupt_bytes_to_player == 0,
        "corrupt bytes reached a player"
    );
    Ok(())
}

fn run_swarm(
    scenario: &std::path::Path,
    report_path: Option<&std::path::Path>,
    html_path: Option<&std::path::Path>,
    with_baseline: bool,
) -> anyhow::Result<()> {
    let scenario = swarm::Scenario::load(scenario)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let run = runtime.block_on(swarm::run(&scenario, true))?;
    let baseline = if with_baseline {
        eprintln!("\nthe same scenario with P2P off (baseline):");
        Some(runtime.block_on(swarm::run(&scenario, false))?)
    } else {
        None
    };
    for outcome in run
        .outcomes
        .iter()
        .chain(baseline.iter().flat_map(|b| b.outcomes.iter()))
    {
        if let Some(error) = &outcome.error {
            eprintln!("{}: {error}", outcome.account);
        }
    }
    println!();
    print!(
        "{}",
        demo::table(&run.report, baseline.as_ref().map(|b| &b.report))
    );
    print!("{}", swarm::titles_table(&run, baseline.as_ref()));
    println!(
        "peers banned by honest viewers: {}; segments they rejected: {}",
        run.peers_banned, run.segments_rejected
    );
    if let Some(path) = report_path {
        let json = swarm::report_json(&run, baseline.as_ref())?;
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = html_path {
        std::fs::write(path, swarm::html::page(&scenario, &run, baseline.as_ref()))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("HTML report written to {}", path.display());
    }
    let failed = run.outcomes.iter().filter(|o| o.error.is_some()).count();
    anyhow::ensure!(failed == 0, "{failed} viewer(s) failed");
    anyhow::ensure!(
        run.report.corrupt_bytes_to_player == 0,
        "corrupt bytes reached a player"
    );
    Ok(())
}

fn run_soak(
    config: &soak::SoakConfig,
    report_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    config.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let run = runtime.block_on(soak::run(config))?;
    println!();
    println!(
        "{}: {} VOD and {} live viewers, {} s each, token lifetime {} s",
        config.name,
        config.vod_viewers,
        config.live_viewers,
        config.duration_s,
        run.token_lifetime_s
    );
    print!("{}", run.table());
    if let Some(path) = report_path {
        std::fs::write(path, serde_json::to_string_pretty(&run)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let problems = run.problems();
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    anyhow::ensure!(problems.is_empty(), "the soak failed");
    Ok(())
}

fn run_lab(
    scenario: &lab::Scenario,
    report_path: Option<&std::path::Path>,
    with_baseline: bool,
) -> anyhow::Result<()> {
    let run = lab::run(scenario, true)?;
    let baseline = if with_baseline {
        eprintln!("\nthe same crowd with P2P off (baseline):");
        Some(lab::run(scenario, false)?)
    } else {
        None
    };
    println!();
    print!("{}", run.table());
    if let Some(baseline) = &baseline {
        println!();
        print!("{}", baseline.table());
    }
    for viewer in run
        .viewers
        .iter()
        .chain(baseline.iter().flat_map(|b| &b.viewers))
    {
        if let Some(error) = &viewer.error {
            eprintln!("{}: {error}", viewer.name);
        }
    }
    if let Some(path) = report_path {
        let json = serde_json::json!({ "run": &run, "baseline": &baseline });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let failed = run
        .viewers
        .iter()
        .chain(baseline.iter().flat_map(|b| &b.viewers))
        .filter(|v| !v.ok)
        .count();
    anyhow::ensure!(failed == 0, "{failed} viewer(s) failed");
    Ok(())
}
