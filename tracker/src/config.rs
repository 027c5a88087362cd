//! Service configuration: a TOML file, overridden by environment variables,
//! overridden by command-line flags. Every field has a default that runs.
//!
//! ```toml
//! quic_listen = "0.0.0.0:4433"
//! http_listen = "0.0.0.0:9464"
//! trusted_keys = ["/etc/loaves/license.pub"]
//! identity_key = "/var/lib/loaves/tracker.key"   # optional; ephemeral if absent
//! shards = ["tracker-0:4433", "tracker-1:4433"] # optional
//! shard_name = "tracker-0:4433"
//!
//! [swarm]
//! peer_ttl_s = 90
//! max_swarms = 100000
//!
//! [stats]
//! max_download_bytes_per_s = 125000000
//!
//! [front_end]
//! max_connections_per_ip = 64
//! ```
//!
//! Environment: `LOAVES_TRACKER_<FIELD>` for top-level fields (lists are
//! comma-separated), `LOAVES_TRACKER_<SECTION>__<FIELD>` for section fields,
//! e.g. `LOAVES_TRACKER_SWARM__PEER_TTL_S=60`. Values are parsed as TOML
//! literals when they can be, as strings otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::server::FrontEndOptions;
use crate::stats::StatsLimits;
use crate::swarm::SwarmConfig;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "LOAVES_TRACKER_";

/// The tracker's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address of the QUIC endpoint.
    pub quic_listen: SocketAddr,
    /// TCP address of `/metrics`, `/healthz`, `/dashboard`.
    pub http_listen: SocketAddr,
    /// Files holding the license server's public keys (SPKI PEM), trusted
    /// for session tokens and seed credentials. At least one is required.
    pub trusted_keys: Vec<PathBuf>,
    /// PKCS#8 PEM private key of the tracker's QUIC identity. A fresh
    /// ephemeral key is used when absent (clients do not pin the tracker).
    pub identity_key: Option<PathBuf>,
    /// Every tracker shard, as clients name them (see `loaves_proto::shard`).
    /// Empty: this tracker serves every title.
    pub shards: Vec<String>,
    /// This tracker's name in `shards`.
    pub shard_name: Option<String>,
    /// Log filter (tracing `EnvFilter` syntax), e.g. "info".
    pub log: String,
    /// Swarm book tunables.
    pub swarm: SwarmConfig,
    /// Stats plausibility limits.
    pub stats: StatsLimits,
    /// QUIC front-end limits and timeouts.
    pub front_end: FrontEndOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            trusted_keys: Vec::new(),
            identity_key: None,
            shards: Vec::new(),
            shard_name: None,
            log: "info".to_owned(),
            swarm: SwarmConfig::default(),
            stats: StatsLimits::default(),
            front_end: FrontEndOptions::default(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML (file or merged overrides) is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` (if given) over the defaults, then applies environment
    /// overrides from `env` (pass `std::env::vars()`).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let base = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let file: Config =
            toml::from_str(&base).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut value =
            toml::Value::try_from(&file).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "CONFIG" {
                // The path of the file itself (a flag's environment form).
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut value, &path, &raw)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        }
        value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }

    /// The configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

/// Parses an override: a TOML literal if possible (numbers, booleans,
/// arrays), else a string; for list fields a comma-separated string.
fn parse_value(raw: &str, current: Option<&toml::Value>) -> toml::Value {
    if let Some(toml::Value::Array(_)) = current
        && !raw.trim_start().starts_with('[')
    {
        return toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        );
    }
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) if !matches!(current, Some(toml::Value::String(_)) | None) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(value: &mut toml::Value, path: &[String], raw: &str) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut table = value.as_table_mut().ok_or("not a table")?;
    for key in parents {
        table = table
            .get_mut(key)
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| format!("unknown section {key:?}"))?;
    }
    let parsed = parse_value(raw, table.get(last));
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_round_trip() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert_eq!(config, Config::default());
        let text = config.to_toml().unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracker.toml");
        std::fs::write(
            &path,
            "quic_listen = \"127.0.0.1:5000\"\ntrusted_keys = [\"a.pub\"]\n[swarm]\npeer_ttl_s = 10\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("LOAVES_TRACKER_SWARM__PEER_TTL_S", "60"),
                ("LOAVES_TRACKER_HTTP_LISTEN", "127.0.0.1:9999"),
                ("LOAVES_TRACKER_SHARDS", "a:1, b:2"),
                ("LOAVES_TRACKER_LOG", "debug"),
                ("LOAVES_TRACKER_CONFIG", "/ignored/here.toml"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.quic_listen.port(), 5000);
        assert_eq!(config.http_listen.port(), 9999);
        assert_eq!(config.swarm.peer_ttl_s, 60);
        assert_eq!(config.shards, vec!["a:1", "b:2"]);
        assert_eq!(config.trusted_keys, vec![PathBuf::from("a.pub")]);
        assert_eq!(config.log, "debug");
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(Config::load(None, env(&[("LOAVES_TRACKER_SWARM__PEER_TTL_S", "soon")])).is_err());
        assert!(Config::load(None, env(&[("LOAVES_TRACKER_NOPE__X", "1")])).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "unknown_field = 1\n").unwrap();
        assert!(Config::load(Some(&path), Vec::new()).is_err());
    }
}
