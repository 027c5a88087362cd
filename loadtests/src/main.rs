//! `loadtests`: the simulator today; the demo and swarm scenarios next.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loaves_loadtests::sim::{SimConfig, Simulation};

#[derive(Debug, Parser)]
#[command(version, about = "Loaves load tests and simulator")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
                let started = Instant::now();
                let (report, engine) = Simulation::new(run)?.run();
                let wall = started.elapsed().as_secs_f64();
                let output = serde_json::json!({
                    "report": report,
                    "engine": engine,
                    "wall_s": wall,
                    "events_per_s": engine.events as f64 / wall.max(1e-9),
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
