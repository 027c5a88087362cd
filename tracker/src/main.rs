//! `loaves-tracker`: the tracker service binary (thin: parse, wire, run).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use loaves_proto::identity::PeerIdentity;
use loaves_proto::keygen::{read_public_key, read_signing_key};
use loaves_proto::keys::{Keyring, SigningKeyPair, random_array};
use loaves_proto::shard::ShardMap;
use tracker::config::Config;
use tracker::credential::CredentialVerifier;
use tracker::metrics::Metrics;
use tracker::server::{RunningTracker, Shared};

/// Loaves tracker: QUIC swarm coordinator with locality-aware peer lists and
/// offload metrics.
///
/// Configuration is read from the TOML file (if any), then environment
/// variables LOAVES_TRACKER_<FIELD> and LOAVES_TRACKER_<SECTION>__<FIELD>,
/// then these flags. `--print-config` shows the result.
#[derive(Debug, Parser)]
#[command(name = "loaves-tracker", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short, env = "LOAVES_TRACKER_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address of the QUIC endpoint.
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// TCP address of /metrics, /healthz and /dashboard.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Trusted license-server public key (SPKI PEM); repeat for several.
    #[arg(long = "trusted-key")]
    trusted_keys: Vec<PathBuf>,
    /// Private key (PKCS#8 PEM) of the tracker's QUIC identity.
    #[arg(long)]
    identity_key: Option<PathBuf>,
    /// A tracker shard name; repeat for every shard.
    #[arg(long = "shard")]
    shards: Vec<String>,
    /// This tracker's name among the shards.
    #[arg(long)]
    shard_name: Option<String>,
    /// Log filter, e.g. "info" or "tracker=debug".
    #[arg(long)]
    log: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn effective_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(addr) = args.quic_listen {
        config.quic_listen = addr;
    }
    if let Some(addr) = args.http_listen {
        config.http_listen = addr;
    }
    if !args.trusted_keys.is_empty() {
        config.trusted_keys.clone_from(&args.trusted_keys);
    }
    if let Some(path) = &args.identity_key {
        config.identity_key = Some(path.clone());
    }
    if !args.shards.is_empty() {
        config.shards.clone_from(&args.shards);
    }
    if let Some(name) = &args.shard_name {
        config.shard_name = Some(name.clone());
    }
    if let Some(log) = &args.log {
        config.log.clone_from(log);
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = effective_config(&args)?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).context("log filter")?)
        .init();

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

    wait_for_signal().await?;
    tracing::info!("shutting down: closing connections");
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

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
