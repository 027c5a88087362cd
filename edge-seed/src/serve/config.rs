//! Configuration of `edge-seed serve`: a documented TOML file whose every
//! field has a default that runs as is, overridden by the environment
//! (`LOAVES_SEED_<FIELD>`, `LOAVES_SEED_<SECTION>__<FIELD>`, and the older
//! names in [`ENV`]`.aliases`), then by flags (`cli.rs`), all through
//! `loaves_service::config`. `edge-seed serve print-config --commented`
//! prints every setting with these doc comments.
//!
//! ```toml
//! name = "seed-par-1"              # operator-chosen, appears in logs
//! quic_listen = "0.0.0.0:4433"     # peer wire (QUIC, ALPN loaves-peer/1)
//! http_listen = "0.0.0.0:8080"     # HTTP origin/CDN role, /metrics, /healthz
//! advertise = ["203.0.113.7:4433"] # addresses announced to the tracker
//! identity_key = "seed.key"        # Ed25519 PKCS#8 PEM; its key is in the credential
//! credential = "seed.credential"   # signed SeedCredential (binary): `edge-seed credential`
//! license_public_keys = ["license.pub"]  # trusted for session tokens
//! origin_public_keys = ["origin.pub"]    # trusted for manifest signatures
//! origin = "https://origin.internal/vod" # or a local directory
//! titles = ["big-buck"]            # each title is a packager output dir under origin
//! drain_timeout_s = 10
//!
//! [cache]
//! memory_bytes = 536870912
//! disk_dir = "/var/cache/loaves-seed"   # absent: no disk cache
//! disk_bytes = 10737418240
//!
//! [capacity]
//! max_connections = 2000
//! max_connections_per_ip = 32
//! max_requests_per_connection = 16
//! max_concurrent_uploads = 512
//! egress_bytes_per_second = 0      # 0: unlimited
//! max_egress_backlog_ms = 250      # beyond: BUSY
//!
//! [origin_fetch]
//! timeout_ms = 10000
//! attempts = 3
//! retry_backoff_ms = 200
//! max_segment_bytes = 67108864
//!
//! [live]
//! poll_interval_ms = 1000
//! prefetch_window = 3
//!
//! [tracker]
//! # Shard names, "host:port" (IP or DNS name, resolved at each announce);
//! # the same strings, in the same order, as the trackers' `shards`: titles
//! # map to trackers by rendezvous hash of these names.
//! addresses = ["tracker-0.tracker:4433"]
//! announce_interval_s = 30
//! upload_capacity_bps = 1000000000
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use loaves_service::config::{Alias, EnvScheme};
use loaves_service::{Config, confique};
use serde::Serialize;

pub use loaves_service::config::ConfigError;

/// Variable of the `--config` flag (not a setting).
pub const ENV_CONFIG: &str = "LOAVES_SEED_CONFIG";

/// How the seed's settings are named in the environment: the derived
/// names, and the names its flags read before (still accepted).
pub const ENV: EnvScheme = EnvScheme {
    binary: "edge-seed serve",
    prefix: "LOAVES_SEED_",
    aliases: &[
        Alias {
            old: "LOAVES_SEED_LICENSE_KEYS",
            setting: "license_public_keys",
        },
        Alias {
            old: "LOAVES_SEED_ORIGIN_KEYS",
            setting: "origin_public_keys",
        },
        Alias {
            old: "LOAVES_SEED_CACHE_DIR",
            setting: "cache.disk_dir",
        },
        Alias {
            old: "LOAVES_SEED_MEMORY_CACHE_BYTES",
            setting: "cache.memory_bytes",
        },
        Alias {
            old: "LOAVES_SEED_DISK_CACHE_BYTES",
            setting: "cache.disk_bytes",
        },
        Alias {
            old: "LOAVES_SEED_MAX_CONNECTIONS",
            setting: "capacity.max_connections",
        },
        Alias {
            old: "LOAVES_SEED_MAX_UPLOADS",
            setting: "capacity.max_concurrent_uploads",
        },
        Alias {
            old: "LOAVES_SEED_EGRESS_BYTES_PER_SECOND",
            setting: "capacity.egress_bytes_per_second",
        },
        Alias {
            old: "LOAVES_SEED_TRACKERS",
            setting: "tracker.addresses",
        },
    ],
    reserved: &[ENV_CONFIG],
};

/// Everything `edge-seed serve` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct SeedConfig {
    /// Operator-chosen name (logs).
    #[config(default = "edge-seed")]
    pub name: String,
    /// UDP address of the peer wire server.
    #[config(default = "0.0.0.0:4433")]
    pub quic_listen: SocketAddr,
    /// TCP address of the HTTP server (origin role, metrics, health).
    #[config(default = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
    /// Addresses announced to the tracker; empty: the QUIC listen address.
    #[config(default = [])]
    pub advertise: Vec<String>,
    /// Ed25519 key (PKCS#8 PEM) of the QUIC identity; absent: a fresh key
    /// per run (only useful without a credential, i.e. for tests).
    pub identity_key: Option<PathBuf>,
    /// The signed seed credential (binary); required for peers to accept
    /// the seed's hello.
    pub credential: Option<PathBuf>,
    /// Public keys (PEM) of the license server, trusted for session tokens.
    #[config(default = [])]
    pub license_public_keys: Vec<PathBuf>,
    /// Public keys (PEM) of the origin, trusted for manifest chunks.
    #[config(default = [])]
    pub origin_public_keys: Vec<PathBuf>,
    /// `http(s)://...` base URL or a local directory; each title is a
    /// packager output directory below it.
    #[config(default = "./out")]
    pub origin: String,
    /// Titles this seed serves.
    #[config(default = [])]
    pub titles: Vec<String>,
    /// Time allowed for in-flight transfers on SIGTERM.
    #[config(default = 10)]
    pub drain_timeout_s: u64,
    /// Clock skew tolerated on peers' session tokens and seed credentials,
    /// seconds: a token is still accepted this long after its expiry (and
    /// this long before its start). The tracker's
    /// `front_end.max_clock_skew_s` is the same setting.
    #[config(default = 30)]
    pub max_clock_skew_s: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    #[config(default = "info")]
    pub log: String,
    /// Caches.
    #[config(nested)]
    pub cache: CacheConfig,
    /// Admission and bandwidth.
    #[config(nested)]
    pub capacity: CapacityConfig,
    /// Origin pulls.
    #[config(nested)]
    pub origin_fetch: OriginFetchConfig,
    /// Live following.
    #[config(nested)]
    pub live: LiveConfig,
    /// Tracker registration.
    #[config(nested)]
    pub tracker: TrackerConfig,
}

impl Default for SeedConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Memory and disk caches.
#[derive(Debug, Clone, PartialEq, Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct CacheConfig {
    /// Byte budget of the in-memory LRU.
    #[config(default = 536_870_912)]
    pub memory_bytes: u64,
    /// Directory of the disk cache; absent: none.
    pub disk_dir: Option<PathBuf>,
    /// Byte budget of the disk cache.
    #[config(default = 10_737_418_240_u64)]
    pub disk_bytes: u64,
}

impl Default for CacheConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Admission control: beyond these, requests get BUSY at once.
#[derive(Debug, Clone, PartialEq, Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct CapacityConfig {
    /// Concurrent QUIC connections.
    #[config(default = 2000)]
    pub max_connections: usize,
    /// Concurrent QUIC connections from one IP address.
    #[config(default = 32)]
    pub max_connections_per_ip: usize,
    /// Concurrent requests (streams) per connection.
    #[config(default = 16)]
    pub max_requests_per_connection: u32,
    /// Concurrent uploads (QUIC and HTTP together).
    #[config(default = 512)]
    pub max_concurrent_uploads: usize,
    /// Egress limit for peer uploads, bytes per second; 0: unlimited.
    #[config(default = 0)]
    pub egress_bytes_per_second: u64,
    /// A request that would wait longer than this for egress gets BUSY.
    #[config(default = 250)]
    pub max_egress_backlog_ms: u64,
}

impl Default for CapacityConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Origin pulls.
#[derive(Debug, Clone, PartialEq, Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct OriginFetchConfig {
    /// Timeout of one origin request.
    #[config(default = 10_000)]
    pub timeout_ms: u64,
    /// Attempts per segment before giving up (bad responses included).
    #[config(default = 3)]
    pub attempts: u32,
    /// Pause between attempts (doubles each time).
    #[config(default = 200)]
    pub retry_backoff_ms: u64,
    /// Largest object accepted from the origin.
    #[config(default = 67_108_864)]
    pub max_segment_bytes: u64,
}

impl Default for OriginFetchConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Live manifests.
#[derive(Debug, Clone, PartialEq, Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct LiveConfig {
    /// How often live manifests are re-read.
    #[config(default = 1000)]
    pub poll_interval_ms: u64,
    /// On joining a live stream, how many of the newest segments to pull.
    #[config(default = 3)]
    pub prefetch_window: u64,
}

impl Default for LiveConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Tracker registration.
#[derive(Debug, Clone, PartialEq, Serialize, Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct TrackerConfig {
    /// Tracker shards as "host:port" (IP literal or DNS name, resolved at
    /// each (re)connect); empty: no registration. These strings are also
    /// the shard names titles are hashed onto, so they must be the
    /// trackers' own `shards`, in order.
    #[config(default = [])]
    pub addresses: Vec<String>,
    /// Re-announce interval when the tracker does not say.
    #[config(default = 30)]
    pub announce_interval_s: u64,
    /// Upload capacity offered, bits per second.
    #[config(default = 1_000_000_000)]
    pub upload_capacity_bps: u64,
}

impl Default for TrackerConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

loaves_service::layered_config!(
    SeedConfig,
    scheme: ENV,
    notes: &["The seed holds no secret setting: its identity key and credential are files."],
    validate: validate,
);

impl SeedConfig {
    /// Checks values that would only fail later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for title in &self.titles {
            if !super::safe_name(title) {
                return Err(ConfigError::Invalid(format!(
                    "title {title:?} is not a safe name"
                )));
            }
        }
        if self.capacity.max_connections == 0 || self.capacity.max_concurrent_uploads == 0 {
            return Err(ConfigError::Invalid(
                "capacity limits must be positive".to_owned(),
            ));
        }
        if self.origin_fetch.attempts == 0 {
            return Err(ConfigError::Invalid(
                "origin_fetch.attempts must be positive".to_owned(),
            ));
        }
        for address in &self.tracker.addresses {
            super::register::split_host_port(address)
                .map_err(|e| ConfigError::Invalid(format!("tracker.addresses: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use loaves_service::config::{self as service_config, Overrides};

    #[test]
    fn documented_example_parses() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let config = SeedConfig::from_toml(&doc).unwrap();
        assert_eq!(config.titles, vec!["big-buck"]);
        assert_eq!(config.cache.memory_bytes, 536_870_912);
        assert_eq!(config.tracker.addresses.len(), 1);
        config.validate().unwrap();
    }

    #[test]
    fn tracker_addresses_are_host_port() {
        let mut config = SeedConfig::default();
        config.tracker.addresses = vec![
            "loaves-tracker-0.loaves-tracker:4433".into(),
            "198.51.100.2:4500".into(),
            "[2001:db8::1]:4433".into(),
        ];
        config.validate().unwrap();
        config.tracker.addresses = vec!["loaves-tracker-0".into()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("tracker.addresses"), "{error}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = SeedConfig::from_toml("").unwrap();
        assert_eq!(config.capacity.max_concurrent_uploads, 512);
        assert_eq!(config, SeedConfig::default());
        let text = config.to_toml().unwrap();
        assert_eq!(SeedConfig::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn the_commented_reference_parses_back_to_the_defaults() {
        let text = SeedConfig::commented();
        loaves_testkit::text::assert_mentions(
            "the commented reference",
            &text,
            &[
                "LOAVES_SEED_TRACKERS = LOAVES_SEED_TRACKER__ADDRESSES",
                "[capacity]",
                "# Concurrent QUIC connections.",
            ],
        );
        assert_eq!(SeedConfig::from_toml(&text).unwrap(), SeedConfig::default());
        let uncommented = service_config::uncomment_defaults(&text);
        assert!(
            uncommented.contains("\nmax_connections = 2000"),
            "{uncommented}"
        );
        assert_eq!(
            SeedConfig::from_toml(&uncommented).unwrap(),
            SeedConfig::default()
        );
    }

    #[test]
    fn older_variable_names_still_work() {
        let env: Vec<(String, String)> = [
            ("LOAVES_SEED_TRACKERS", "t-0:4433,t-1:4433"),
            ("LOAVES_SEED_CACHE_DIR", "/cache"),
            ("LOAVES_SEED_MAX_UPLOADS", "9"),
            ("LOAVES_SEED_TITLES", "a,b"),
            ("LOAVES_SEED_CAPACITY__MAX_CONNECTIONS_PER_IP", "3"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let config = SeedConfig::load(None, &env, &Overrides::new()).unwrap();
        assert_eq!(config.tracker.addresses, ["t-0:4433", "t-1:4433"]);
        assert_eq!(config.cache.disk_dir, Some(PathBuf::from("/cache")));
        assert_eq!(config.capacity.max_concurrent_uploads, 9);
        assert_eq!(config.capacity.max_connections_per_ip, 3);
        assert_eq!(config.titles, ["a", "b"]);
    }
}
