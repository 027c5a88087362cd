//! `edge-seed serve`: flags and environment (`LOAVES_SEED_*`) over the TOML
//! file over the defaults, then run until SIGTERM or Ctrl-C and drain.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{SeedConfig, SeedKeys, ServeError};

/// Flags of `edge-seed serve`. Each overrides the configuration file.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see `edge_seed::serve::config`).
    #[arg(long, env = "LOAVES_SEED_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address of the peer wire server.
    #[arg(long, env = "LOAVES_SEED_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// TCP address of the HTTP origin, /metrics and /healthz.
    #[arg(long, env = "LOAVES_SEED_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Origin: http(s) base URL or directory holding one packaged title per
    /// subdirectory.
    #[arg(long, env = "LOAVES_SEED_ORIGIN")]
    pub origin: Option<String>,
    /// Titles to serve (repeat, or comma-separated).
    #[arg(long = "title", env = "LOAVES_SEED_TITLES", value_delimiter = ',')]
    pub titles: Vec<String>,
    /// Ed25519 identity key (PKCS#8 PEM).
    #[arg(long, env = "LOAVES_SEED_IDENTITY_KEY")]
    pub identity_key: Option<PathBuf>,
    /// Signed seed credential file.
    #[arg(long, env = "LOAVES_SEED_CREDENTIAL")]
    pub credential: Option<PathBuf>,
    /// License server public key (PEM); repeat for several.
    #[arg(
        long = "license-key",
        env = "LOAVES_SEED_LICENSE_KEYS",
        value_delimiter = ','
    )]
    pub license_keys: Vec<PathBuf>,
    /// Origin manifest public key (PEM); repeat for several.
    #[arg(
        long = "origin-key",
        env = "LOAVES_SEED_ORIGIN_KEYS",
        value_delimiter = ','
    )]
    pub origin_keys: Vec<PathBuf>,
    /// Disk cache directory.
    #[arg(long, env = "LOAVES_SEED_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Memory cache budget, bytes.
    #[arg(long, env = "LOAVES_SEED_MEMORY_CACHE_BYTES")]
    pub memory_cache_bytes: Option<u64>,
    /// Disk cache budget, bytes.
    #[arg(long, env = "LOAVES_SEED_DISK_CACHE_BYTES")]
    pub disk_cache_bytes: Option<u64>,
    /// Maximum QUIC connections.
    #[arg(long, env = "LOAVES_SEED_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Maximum concurrent uploads.
    #[arg(long, env = "LOAVES_SEED_MAX_UPLOADS")]
    pub max_uploads: Option<usize>,
    /// Egress limit for peer uploads, bytes per second (0: none).
    #[arg(long, env = "LOAVES_SEED_EGRESS_BYTES_PER_SECOND")]
    pub egress_bytes_per_second: Option<u64>,
    /// Tracker shard addresses (repeat, or comma-separated).
    #[arg(long = "tracker", env = "LOAVES_SEED_TRACKERS", value_delimiter = ',')]
    pub trackers: Vec<String>,
    /// Addresses announced to the tracker.
    #[arg(
        long = "advertise",
        env = "LOAVES_SEED_ADVERTISE",
        value_delimiter = ','
    )]
    pub advertise: Vec<String>,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "LOAVES_SEED_LOG", default_value = "info")]
    pub log: String,
}

impl ServeArgs {
    /// The effective configuration.
    pub fn config(&self) -> Result<SeedConfig, ServeError> {
        let mut config = match &self.config {
            Some(path) => SeedConfig::from_file(path)?,
            None => SeedConfig::default(),
        };
        let args = self.clone();
        if let Some(v) = args.quic_listen {
            config.quic_listen = v;
        }
        if let Some(v) = args.http_listen {
            config.http_listen = v;
        }
        if let Some(v) = args.origin {
            config.origin = v;
        }
        if !args.titles.is_empty() {
            config.titles = args.titles;
        }
        if let Some(v) = args.identity_key {
            config.identity_key = Some(v);
        }
        if let Some(v) = args.credential {
            config.credential = Some(v);
        }
        if !args.license_keys.is_empty() {
            config.license_public_keys = args.license_keys;
        }
        if !args.origin_keys.is_empty() {
            config.origin_public_keys = args.origin_keys;
        }
        if let Some(v) = args.cache_dir {
            config.cache.disk_dir = Some(v);
        }
        if let Some(v) = args.memory_cache_bytes {
            config.cache.memory_bytes = v;
        }
        if let Some(v) = args.disk_cache_bytes {
            config.cache.disk_bytes = v;
        }
        if let Some(v) = args.max_connections {
            config.capacity.max_connections = v;
        }
        if let Some(v) = args.max_uploads {
            config.capacity.max_concurrent_uploads = v;
        }
        if let Some(v) = args.egress_bytes_per_second {
            config.capacity.egress_bytes_per_second = v;
        }
        if !args.trackers.is_empty() {
            config.tracker.addresses = args.trackers;
        }
        if !args.advertise.is_empty() {
            config.advertise = args.advertise;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs the seed until SIGTERM or Ctrl-C, then drains.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let config = args.config()?;
    let keys = SeedKeys::load(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    runtime.block_on(async {
        let seed = super::start(&config, keys).await?;
        wait_for_signal().await;
        tracing::info!(drain_s = config.drain_timeout_s, "draining");
        seed.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
