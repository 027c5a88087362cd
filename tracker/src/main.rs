//! `loaves-tracker`: the tracker service binary (thin: parse, wire, run).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loaves_proto::keygen::{read_public_key, read_signing_key};
use loaves_proto::keys::{Keyring, SigningKeyPair, random_array};
use loaves_proto::shard::ShardMap;
use loaves_service::config::Overrides;
use loaves_wire::identity::PeerIdentity;
use tracker::config::Config;
use tracker::credential::CredentialVerifier;
use tracker::metrics::Metrics;
use tracker::server::{RunningTracker, Shared};

/// Loaves tracker: QUIC swarm coordinator with locality-aware peer lists and
/// offload metrics.
///
/// Configuration: built-in defaults, then the TOML file (--config), then
/// environment variables LOAVES_TRACKER_<FIELD> and
/// LOAVES_TRACKER_<SECTION>__<FIELD>, then these flags. `print-config`
/// shows the result, `print-config --commented` every setting.
#[derive(Debug, Parser)]
#[command(name = "loaves-tracker", version, long_about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short, env = "LOAVES_TRACKER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// UDP address of the QUIC endpoint.
    #[arg(long, global = true)]
    quic_listen: Option<SocketAddr>,
    /// TCP address of /metrics, /healthz and /dashboard.
    #[arg(long, global = true)]
    http_listen: Option<SocketAddr>,
    /// Trusted license-server public key (SPKI PEM); repeat for several.
    #[arg(long = "trusted-key", global = true)]
    trusted_keys: Vec<PathBuf>,
    /// Private key (PKCS#8 PEM) of the tracker's QUIC identity.
    #[arg(long, global = true)]
    identity_key: Option<PathBuf>,
    /// A tracker shard name; repeat for every shard.
    #[arg(long = "shard", global = true)]
    shards: Vec<String>,
    /// This tracker's name among the shards.
    #[arg(long, global = true)]
    shard_name: Option<String>,
    /// Log filter, e.g. "info" or "tracker=debug".
    #[arg(long, global = true)]
    log: Option<String>,
    /// Same as the print-config command (kept for older scripts).
    #[arg(long, hide = true)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default when no command is given).
    Serve,
    /// Print the effective configuration as TOML (defaults, file,
    /// environment, flags), or with --commented the full commented
    /// reference of every setting and its default.
    PrintConfig {
        /// Every setting with its documentation and default, commented out.
        #[arg(long)]
        commented: bool,
    },
}

fn effective_config(args: &Args) -> anyhow::Result<Config> {
    let mut flags = Overrides::new();
    flags
        .set_some("quic_listen", args.quic_listen)
        .set_some("http_listen", args.http_listen)
        .set_list("trusted_keys", &args.trusted_keys)
        .set_some("identity_key", args.identity_key.as_ref())
        .set_list("shards", &args.shards)
        .set_some("shard_name", args.shard_name.as_ref())
        .set_some("log", args.log.as_ref());
    Ok(Config::load(
        args.config.as_deref(),
        &loaves_service::config::process_env(),
        &flags,
    )?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match (&args.command, args.print_config) {
        (Some(Command::PrintConfig { commented: true }), _) => {
            print!("{}", Config::commented());
            return Ok(());
        }
        (Some(Command::PrintConfig { commented: false }), _) | (_, true) => {
            print!("{}", effective_config(&args)?.to_toml()?);
            return Ok(());
        }
        (Some(Command::Serve) | None, false) => {}
    }
    let config = effective_config(&args)?;
    loaves_service::telemetry::init_tracing(&config.log)?;

    anyhow::ensure!(
        !config.trusted_keys.is_empty(),
        "no trusted license-server key: set trusted_keys (or --trusted-key)"
    );
    let mut keyring = Keyring::new();
    for path in &config.trusted_keys {
        let key = read_public_key(path)?;
        let id = keyring.insert(key);
        tracing::info!(path = %path.display(), key_id = %id, "trusting license-server key");
    }
    let key = match &config.identity_key {
        Some(path) => read_signing_key(path)?,
        None => SigningKeyPair::generate()?,
    };
    let identity = PeerIdentity::new(&key)?;
    let shards = match (config.shards.is_empty(), &config.shard_name) {
        (true, _) => None,
        (false, Some(name)) => {
            let map = ShardMap::new(config.shards.iter().cloned());
            anyhow::ensure!(
                map.shards().contains(name),
                "shard_name {name:?} is not in shards"
            );
            Some((map, name.clone()))
        }
        (false, None) => anyhow::bail!("shards configured but shard_name missing"),
    };
    let seed = u64::from_le_bytes(random_array::<8>()?);
    let shared = Arc::new(Shared::new(
        config.swarm.clone(),
        config.stats.clone(),
        config.front_end.clone(),
        CredentialVerifier::new(keyring, config.front_end.max_clock_skew_s),
        shards,
        Metrics::new()?,
        seed,
    ));
    let tracker = RunningTracker::start(config.quic_listen, &identity, shared.clone())?;
    let listener = tracker::http::bind(config.http_listen)
        .await
        .with_context(|| format!("binding {}", config.http_listen))?;
    tracing::info!(
        quic = %tracker.quic_addr,
        http = %listener.local_addr()?,
        key = %hex_key(&identity),
        "tracker started"
    );
    let http = tokio::spawn(tracker::http::serve(
        listener,
        shared,
        tracker.shutdown_signal(),
    ));

    let signal = loaves_service::signal::shutdown_signal().await;
    tracing::info!(?signal, "shutting down: closing connections");
    tracker.shutdown().await;
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

fn hex_key(identity: &PeerIdentity) -> String {
    identity
        .public_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
