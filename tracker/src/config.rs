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
//! Loaded by `loaves_service::config`: defaults, the file, the environment
//! (`LOAVES_TRACKER_<FIELD>`, `LOAVES_TRACKER_<SECTION>__<FIELD>`, e.g.
//! `LOAVES_TRACKER_SWARM__PEER_TTL_S=60`; lists comma-separated), then
//! flags. `loaves-tracker print-config --commented` prints every setting
//! with these doc comments.

use std::net::SocketAddr;
use std::path::PathBuf;

use loaves_service::config::{self as service_config, EnvScheme};
use loaves_service::confique;
use serde::Serialize;

use crate::server::FrontEndOptions;
use crate::stats::StatsLimits;
use crate::swarm::SwarmConfig;

pub use loaves_service::config::ConfigError;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "LOAVES_TRACKER_";

/// Variable of the `--config` flag (not a setting).
pub const ENV_CONFIG: &str = "LOAVES_TRACKER_CONFIG";

/// How the tracker's settings are named in the environment.
pub const ENV: EnvScheme = EnvScheme {
    binary: "loaves-tracker",
    prefix: ENV_PREFIX,
    aliases: &[],
    reserved: &[ENV_CONFIG],
};

/// The tracker's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct Config {
    /// UDP address of the QUIC endpoint.
    #[config(default = "0.0.0.0:4433")]
    pub quic_listen: SocketAddr,
    /// TCP address of `/metrics`, `/healthz`, `/dashboard`.
    #[config(default = "0.0.0.0:9464")]
    pub http_listen: SocketAddr,
    /// Files holding the license server's public keys (SPKI PEM), trusted
    /// for session tokens and seed credentials. At least one is required.
    #[config(default = [])]
    pub trusted_keys: Vec<PathBuf>,
    /// PKCS#8 PEM private key of the tracker's QUIC identity. A fresh
    /// ephemeral key is used when absent (clients do not pin the tracker).
    pub identity_key: Option<PathBuf>,
    /// Every tracker shard, as clients name them (see `loaves_proto::shard`).
    /// Empty: this tracker serves every title.
    #[config(default = [])]
    pub shards: Vec<String>,
    /// This tracker's name in `shards`.
    pub shard_name: Option<String>,
    /// Log filter (tracing `EnvFilter` syntax), e.g. "info".
    #[config(default = "info")]
    pub log: String,
    /// Swarm book tunables.
    #[config(nested)]
    pub swarm: SwarmConfig,
    /// Stats plausibility limits.
    #[config(nested)]
    pub stats: StatsLimits,
    /// QUIC front-end limits and timeouts.
    #[config(nested)]
    pub front_end: FrontEndOptions,
}

impl Default for Config {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        service_config::defaults()
    }
}

loaves_service::layered_config!(
    Config,
    scheme: ENV,
    notes: &["The tracker holds no secret: its identity key is a file (identity_key)."],
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use loaves_service::config::Overrides;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_round_trip() {
        let config = Config::load(None, &[], &Overrides::new()).unwrap();
        assert_eq!(config, Config::default());
        let text = config.to_toml().unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn defaults_match_the_protocol_constants() {
        let config = Config::default();
        assert_eq!(
            config.front_end.max_frame_len,
            loaves_proto::framing::DEFAULT_MAX_FRAME_LEN
        );
        assert_eq!(
            config.front_end.max_clock_skew_s,
            loaves_proto::token::DEFAULT_MAX_CLOCK_SKEW_S
        );
        assert!(config.swarm.max_locality_names <= crate::swarm::MAX_LOCALITY_NAMES);
    }

    #[test]
    fn the_commented_reference_parses_back_to_the_defaults() {
        let text = Config::commented();
        assert!(text.contains("LOAVES_TRACKER_"), "{text}");
        assert!(text.contains("[swarm.holdings]"), "{text}");
        assert!(
            text.contains("# Seconds a silent peer stays listed."),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
        let uncommented = service_config::uncomment_defaults(&text);
        assert!(uncommented.contains("\npeer_ttl_s = 90"), "{uncommented}");
        assert_eq!(Config::from_toml(&uncommented).unwrap(), Config::default());
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracker.toml");
        std::fs::write(
            &path,
            "quic_listen = \"127.0.0.1:5000\"\ntrusted_keys = [\"a.pub\"]\n[swarm]\npeer_ttl_s = 10\n",
        )
        .unwrap();
        let mut flags = Overrides::new();
        flags.set("log", "warn");
        let config = Config::load(
            Some(&path),
            &env(&[
                ("LOAVES_TRACKER_SWARM__PEER_TTL_S", "60"),
                ("LOAVES_TRACKER_SWARM__HOLDINGS__MAX_LIVE_WINDOW", "7"),
                ("LOAVES_TRACKER_HTTP_LISTEN", "127.0.0.1:9999"),
                ("LOAVES_TRACKER_SHARDS", "a:1, b:2"),
                ("LOAVES_TRACKER_LOG", "debug"),
                ("LOAVES_TRACKER_CONFIG", "/ignored/here.toml"),
                ("UNRELATED", "x"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(config.quic_listen.port(), 5000);
        assert_eq!(config.http_listen.port(), 9999);
        assert_eq!(config.swarm.peer_ttl_s, 60);
        assert_eq!(config.swarm.holdings.max_live_window, 7);
        assert_eq!(config.shards, vec!["a:1", "b:2"]);
        assert_eq!(config.trusted_keys, vec![PathBuf::from("a.pub")]);
        assert_eq!(config.log, "warn");
    }

    #[test]
    fn mistakes_are_reported() {
        let none = Overrides::new();
        assert!(
            Config::load(
                None,
                &env(&[("LOAVES_TRACKER_SWARM__PEER_TTL_S", "soon")]),
                &none
            )
            .is_err()
        );
        assert!(Config::load(None, &env(&[("LOAVES_TRACKER_NOPE__X", "1")]), &none).is_err());
        let error = Config::load(
            None,
            &env(&[("LOAVES_TRACKER_SERVICE_HOST", "10.0.0.1")]),
            &none,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("LOAVES_TRACKER_SERVICE_HOST"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "unknown_field = 1\n").unwrap();
        assert!(Config::load(Some(&path), &[], &none).is_err());
        std::fs::write(&path, "[swarm]\npeer_tl_s = 1\n").unwrap();
        assert!(Config::load(Some(&path), &[], &none).is_err());
    }
}
