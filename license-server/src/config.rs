//! Service configuration: a TOML file, then environment variables and flags
//! on top (applied by the binary), then [`Config::validate`].
//!
//! Every field has a default, so an empty file (or none) gives a server that
//! runs as it is on one machine: TLS with a generated development
//! certificate, an SQLite store, a key-encryption key, license signing key,
//! admin credential and development entitlement signer created in
//! `data_dir` on first start. Production deployments point these at their
//! own files and at PostgreSQL.
//!
//! Secrets are never read from the TOML file or flags (they would leak into
//! version control and `ps`): the key-encryption key and the admin
//! credential come from files or from the `LOAVES_LICENSE_KEK` and
//! `LOAVES_LICENSE_ADMIN_TOKEN` environment variables.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable holding the key-encryption key as 64 hex digits.
pub const ENV_KEK: &str = "LOAVES_LICENSE_KEK";
/// Environment variable holding the admin (packager) credential.
pub const ENV_ADMIN_TOKEN: &str = "LOAVES_LICENSE_ADMIN_TOKEN";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC (TLS) address of the license and key services.
    pub listen: SocketAddr,
    /// Plain HTTP address of `/metrics` and `/healthz` (keep it internal).
    pub metrics_listen: SocketAddr,
    /// HTTP address of the W3C ClearKey endpoint (`POST /clearkey`); absent
    /// disables it. Put TLS in front of it outside development.
    pub clearkey_listen: Option<SocketAddr>,
    /// Where generated development material and the default SQLite database
    /// live. Created if missing.
    pub data_dir: PathBuf,
    /// The durable store.
    pub store: StoreConfig,
    /// TLS of the gRPC listener.
    pub tls: TlsConfig,
    /// Key material.
    pub keys: KeysConfig,
    /// License policy.
    pub policy: PolicyConfig,
    /// Admission and size limits.
    pub limits: LimitsConfig,
    /// The titles this server licenses. Requests for any other title are
    /// refused with `NOT_FOUND`.
    pub titles: Vec<TitleConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            clearkey_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7480))),
            data_dir: PathBuf::from("license-server-data"),
            store: StoreConfig::default(),
            tls: TlsConfig::default(),
            keys: KeysConfig::default(),
            policy: PolicyConfig::default(),
            limits: LimitsConfig::default(),
            titles: vec![TitleConfig::demo()],
        }
    }
}

/// The durable store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`. Absent means
    /// `sqlite://<data_dir>/license-server.db`. Use PostgreSQL when more than
    /// one replica serves the same keys.
    pub url: Option<String>,
    /// Largest number of pooled database connections.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
        }
    }
}

/// TLS of the gRPC listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key_file`; when both are absent a
    /// self-signed development certificate for `localhost` and 127.0.0.1 is
    /// generated at start and its SHA-256 fingerprint logged.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub key_file: Option<PathBuf>,
    /// Where to write the generated development certificate (PEM), so
    /// clients can trust it. Ignored when `cert_file` is set.
    pub dev_cert_out: Option<PathBuf>,
}

/// Key material. Files that are absent are generated in `data_dir` on first
/// start (development); production sets them explicitly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Ed25519 license signing key (PKCS#8 PEM). Default
    /// `<data_dir>/license.key`, generated if missing; its public half
    /// (`license.pub`) is the root of trust of trackers, seeds and clients.
    pub signing_key_file: Option<PathBuf>,
    /// Key-encryption key sealing content keys at rest: 32 raw bytes or 64
    /// hex digits. The `LOAVES_LICENSE_KEK` variable (64 hex digits) takes
    /// precedence. Default `<data_dir>/kek`, generated if missing.
    pub kek_file: Option<PathBuf>,
    /// Public keys (SPKI PEM) of the sign-in systems whose entitlements are
    /// trusted. Empty means a development signer
    /// `<data_dir>/entitlement-dev.key` / `.pub`, generated if missing, for
    /// use with `license-server mint-entitlement`.
    pub entitlement_public_keys: Vec<PathBuf>,
    /// File holding the packager / operator credential expected as
    /// `authorization: Bearer <secret>` on the key service. The
    /// `LOAVES_LICENSE_ADMIN_TOKEN` variable takes precedence. Default
    /// `<data_dir>/admin-token`, generated (mode 0600) if missing.
    pub admin_token_file: Option<PathBuf>,
}

/// License policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Seconds between heartbeats a client is asked to keep.
    pub renewal_interval_s: u32,
    /// Extra seconds after a missed heartbeat before the session is over and
    /// its concurrency slot free. A license and its token expire at
    /// `issued_at + renewal_interval_s + renewal_grace_s`.
    pub renewal_grace_s: u32,
    /// How many key periods past the title's current one a client may ask
    /// for (live key rotation delivers the next periods ahead of time).
    pub key_period_lookahead: u32,
    /// Most key periods in one license request.
    pub max_periods_per_request: u32,
    /// Upper bound on an entitlement's `max_concurrent_streams`, whatever
    /// the sign-in system says.
    pub max_concurrent_streams_cap: u32,
    /// Clock skew tolerated on entitlements, in seconds.
    pub max_clock_skew_s: u64,
    /// Whether licenses allow persisting keys offline.
    pub can_persist: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            renewal_interval_s: 60,
            renewal_grace_s: 30,
            key_period_lookahead: 2,
            max_periods_per_request: 8,
            max_concurrent_streams_cap: 16,
            max_clock_skew_s: 30,
            can_persist: false,
        }
    }
}

/// Admission and size limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most requests processed at once across all connections; others wait
    /// up to `admission_timeout_ms`, then get `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    /// How long a request may wait for admission.
    pub admission_timeout_ms: u64,
    /// Largest encoded gRPC request accepted (bigger ones get `OUT_OF_RANGE`
    /// before they are decoded).
    pub max_request_bytes: usize,
    /// Most keys in one key-service request.
    pub max_keys_per_request: usize,
    /// Seconds in-flight requests get to finish on SIGTERM.
    pub shutdown_grace_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            admission_timeout_ms: 2000,
            max_request_bytes: 64 * 1024,
            max_keys_per_request: 64,
            shutdown_grace_s: 20,
        }
    }
}

/// One licensed title.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TitleConfig {
    /// The title id, as the packager and players name it.
    pub id: String,
    /// Length of a key period in seconds (live key rotation); 0 means the
    /// current period is always 0 (VOD).
    #[serde(default)]
    pub key_period_s: u64,
    /// Unix time at which period 0 starts.
    #[serde(default)]
    pub period_epoch: u64,
    /// The renditions of the title.
    pub renditions: Vec<RenditionConfig>,
}

impl TitleConfig {
    /// The demonstration title of the default configuration.
    pub fn demo() -> Self {
        let rendition = |name: &str, track_type: &str, height| RenditionConfig {
            name: name.to_owned(),
            track_type: track_type.to_owned(),
            height,
        };
        Self {
            id: "demo".to_owned(),
            key_period_s: 0,
            period_epoch: 0,
            renditions: vec![
                rendition("audio", "audio", 0),
                rendition("360p", "sd", 360),
                rendition("720p", "hd", 720),
                rendition("1080p", "hd", 1080),
            ],
        }
    }
}

/// One rendition of a title.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenditionConfig {
    /// Rendition name ("720p").
    pub name: String,
    /// Track type whose key protects it ("audio", "sd", "hd", ...).
    pub track_type: String,
    /// Picture height (0 for audio), checked against an entitlement's
    /// `max_height`.
    pub height: u32,
}

/// Longest title id, track type or rendition name.
pub const MAX_NAME_LEN: usize = 128;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text; missing fields take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML (e.g. to print the defaults).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The store URL, with the default filled in.
    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("license-server.db").display()
            ),
        }
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let p = &self.policy;
        if p.renewal_interval_s == 0 {
            return invalid("policy.renewal_interval_s must be at least 1".into());
        }
        if p.max_periods_per_request == 0 || p.max_periods_per_request > 1024 {
            return invalid("policy.max_periods_per_request must be in 1..=1024".into());
        }
        if p.max_concurrent_streams_cap == 0 || p.max_concurrent_streams_cap > 100_000 {
            return invalid("policy.max_concurrent_streams_cap must be in 1..=100000".into());
        }
        let l = &self.limits;
        if l.max_in_flight == 0 || l.max_request_bytes < 1024 || l.max_keys_per_request == 0 {
            return invalid(
                "limits: max_in_flight and max_keys_per_request must be positive, \
                 max_request_bytes at least 1024"
                    .into(),
            );
        }
        if self.store.max_connections == 0 {
            return invalid("store.max_connections must be positive".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid("tls.cert_file and tls.key_file go together".into());
        }
        let mut ids = HashSet::new();
        for title in &self.titles {
            if !valid_name(&title.id) {
                return invalid(format!(
                    "title id {:?}: use letters, digits, . _ - : /",
                    title.id
                ));
            }
            if !ids.insert(&title.id) {
                return invalid(format!("title {:?} is listed twice", title.id));
            }
            if title.renditions.is_empty() {
                return invalid(format!("title {:?} has no renditions", title.id));
            }
            let mut names = HashSet::new();
            for r in &title.renditions {
                if !valid_name(&r.name) || !valid_name(&r.track_type) {
                    return invalid(format!(
                        "title {:?}: invalid rendition or track name",
                        title.id
                    ));
                }
                if !names.insert(&r.name) {
                    return invalid(format!(
                        "title {:?}: rendition {:?} twice",
                        title.id, r.name
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn defaults_round_trip_and_validate() {
        let config = Config::default();
        config.validate().unwrap();
        let text = config.to_toml().unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), config);
        assert_eq!(Config::from_toml("").unwrap(), config);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config =
            Config::from_toml("listen = \"0.0.0.0:9000\"\n[policy]\nrenewal_grace_s = 5\n")
                .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.policy.renewal_grace_s, 5);
        assert_eq!(config.policy.renewal_interval_s, 60);
        assert!(
            Config::from_toml("lisen = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let mut config = Config::default();
        config.titles.push(TitleConfig::demo());
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.policy.renewal_interval_s = 0;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.tls.cert_file = Some("x.pem".into());
        assert!(config.validate().is_err());
    }
}
