//! Configuration of `edge-seed serve`: a documented TOML file whose every
//! field has a default that runs as is, overridden by `LOAVES_SEED_*`
//! environment variables and command-line flags (see `main.rs`).
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

use serde::Deserialize;

/// Everything `edge-seed serve` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedConfig {
    /// Operator-chosen name (logs).
    pub name: String,
    /// UDP address of the peer wire server.
    pub quic_listen: SocketAddr,
    /// TCP address of the HTTP server (origin role, metrics, health).
    pub http_listen: SocketAddr,
    /// Addresses announced to the tracker; empty: the QUIC listen address.
    pub advertise: Vec<String>,
    /// Ed25519 key (PKCS#8 PEM) of the QUIC identity; absent: a fresh key
    /// per run (only useful without a credential, i.e. for tests).
    pub identity_key: Option<PathBuf>,
    /// The signed seed credential (binary); required for peers to accept
    /// the seed's hello.
    pub credential: Option<PathBuf>,
    /// Public keys (PEM) of the license server, trusted for session tokens.
    pub license_public_keys: Vec<PathBuf>,
    /// Public keys (PEM) of the origin, trusted for manifest chunks.
    pub origin_public_keys: Vec<PathBuf>,
    /// `http(s)://...` base URL or a local directory; each title is a
    /// packager output directory below it.
    pub origin: String,
    /// Titles this seed serves.
    pub titles: Vec<String>,
    /// Time allowed for in-flight transfers on SIGTERM.
    pub drain_timeout_s: u64,
    /// Caches.
    pub cache: CacheConfig,
    /// Admission and bandwidth.
    pub capacity: CapacityConfig,
    /// Origin pulls.
    pub origin_fetch: OriginFetchConfig,
    /// Live following.
    pub live: LiveConfig,
    /// Tracker registration.
    pub tracker: TrackerConfig,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            name: "edge-seed".to_owned(),
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            advertise: Vec::new(),
            identity_key: None,
            credential: None,
            license_public_keys: Vec::new(),
            origin_public_keys: Vec::new(),
            origin: "./out".to_owned(),
            titles: Vec::new(),
            drain_timeout_s: 10,
            cache: CacheConfig::default(),
            capacity: CapacityConfig::default(),
            origin_fetch: OriginFetchConfig::default(),
            live: LiveConfig::default(),
            tracker: TrackerConfig::default(),
        }
    }
}

/// Memory and disk caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Byte budget of the in-memory LRU.
    pub memory_bytes: u64,
    /// Directory of the disk cache; absent: none.
    pub disk_dir: Option<PathBuf>,
    /// Byte budget of the disk cache.
    pub disk_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            disk_dir: None,
            disk_bytes: 10 << 30,
        }
    }
}

/// Admission control: beyond these, requests get BUSY at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    /// Concurrent QUIC connections.
    pub max_connections: usize,
    /// Concurrent QUIC connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Concurrent requests (streams) per connection.
    pub max_requests_per_connection: u32,
    /// Concurrent uploads (QUIC and HTTP together).
    pub max_concurrent_uploads: usize,
    /// Egress limit for peer uploads, bytes per second; 0: unlimited.
    pub egress_bytes_per_second: u64,
    /// A request that would wait longer than this for egress gets BUSY.
    pub max_egress_backlog_ms: u64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            max_connections: 2000,
            max_connections_per_ip: 32,
            max_requests_per_connection: 16,
            max_concurrent_uploads: 512,
            egress_bytes_per_second: 0,
            max_egress_backlog_ms: 250,
        }
    }
}

/// Origin pulls.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginFetchConfig {
    /// Timeout of one origin request.
    pub timeout_ms: u64,
    /// Attempts per segment before giving up (bad responses included).
    pub attempts: u32,
    /// Pause between attempts (doubles each time).
    pub retry_backoff_ms: u64,
    /// Largest object accepted from the origin.
    pub max_segment_bytes: u64,
}

impl Default for OriginFetchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            attempts: 3,
            retry_backoff_ms: 200,
            max_segment_bytes: 64 << 20,
        }
    }
}

/// Live manifests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// How often live manifests are re-read.
    pub poll_interval_ms: u64,
    /// On joining a live stream, how many of the newest segments to pull.
    pub prefetch_window: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            prefetch_window: 3,
        }
    }
}

/// Tracker registration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Tracker shards as "host:port" (IP literal or DNS name, resolved at
    /// each (re)connect); empty: no registration. These strings are also
    /// the shard names titles are hashed onto, so they must be the
    /// trackers' own `shards`, in order.
    pub addresses: Vec<String>,
    /// Re-announce interval when the tracker does not say.
    pub announce_interval_s: u64,
    /// Upload capacity offered, bits per second.
    pub upload_capacity_bps: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            announce_interval_s: 30,
            upload_capacity_bps: 1_000_000_000,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`SeedConfig`].
    #[error("parsing {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// A value is unusable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl SeedConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

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
    }
}
