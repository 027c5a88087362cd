//! Service configuration, loaded by `loaves_service::config`: defaults,
//! then a TOML file, then the environment (`LOAVES_LICENSE_<FIELD>`,
//! `LOAVES_LICENSE_<SECTION>__<FIELD>`, and the older names in
//! [`ENV`]`.aliases`), then flags; then [`Config::validate`].
//! `license-server print-config --commented` prints every setting with
//! these doc comments.
//!
//! Every field has a default, so an empty file (or none) gives a server that
//! runs as it is on one machine: TLS with a generated development
//! certificate, an SQLite store, a key-encryption key, license signing key,
//! admin credential and development entitlement signer created in
//! `data_dir` on first start. Production deployments point these at their
//! own files and at PostgreSQL.
//!
//! Secrets are never read from the TOML file or flags (they would leak into
//! version control and `ps`): the key-encryption key, the admin credential
//! and a store URL with a password come from the environment
//! (`LOAVES_LICENSE_KEK`, `LOAVES_LICENSE_ADMIN_TOKEN`,
//! `LOAVES_LICENSE_STORE__URL`) or from files named by `*_file` settings,
//! which must not be readable by group or others
//! (`loaves_service::secret`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use loaves_service::config::{self as service_config, Alias, EnvScheme};
use loaves_service::confique;
use loaves_service::secret::SecretError;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Environment variable holding the key-encryption key as 64 hex digits.
pub const ENV_KEK: &str = "LOAVES_LICENSE_KEK";
/// Environment variable holding the admin (packager) credential.
pub const ENV_ADMIN_TOKEN: &str = "LOAVES_LICENSE_ADMIN_TOKEN";
/// Variable of the `--config` flag (not a setting).
pub const ENV_CONFIG: &str = "LOAVES_LICENSE_CONFIG";

/// How the license server's settings are named in the environment: the
/// derived names, and the names its flags read before (still accepted).
pub const ENV: EnvScheme = EnvScheme {
    binary: "license-server",
    prefix: "LOAVES_LICENSE_",
    aliases: &[
        Alias {
            old: "LOAVES_LICENSE_STORE_URL",
            setting: "store.url",
        },
        Alias {
            old: "LOAVES_LICENSE_TLS_CERT",
            setting: "tls.cert_file",
        },
        Alias {
            old: "LOAVES_LICENSE_TLS_KEY",
            setting: "tls.key_file",
        },
        Alias {
            old: "LOAVES_LICENSE_DEV_CERT_OUT",
            setting: "tls.dev_cert_out",
        },
        Alias {
            old: "LOAVES_LICENSE_SIGNING_KEY",
            setting: "keys.signing_key_file",
        },
        Alias {
            old: "LOAVES_LICENSE_KEK_FILE",
            setting: "keys.kek_file",
        },
        Alias {
            old: "LOAVES_LICENSE_ADMIN_TOKEN_FILE",
            setting: "keys.admin_token_file",
        },
        Alias {
            old: "LOAVES_LICENSE_ENTITLEMENT_KEYS",
            setting: "keys.entitlement_public_keys",
        },
    ],
    reserved: &[ENV_CONFIG, ENV_KEK, ENV_ADMIN_TOKEN],
};

/// The header lines of `print-config --commented` about secrets.
const SECRET_NOTES: &[&str] = &[
    "Secrets are not settings: LOAVES_LICENSE_KEK (64 hex digits) or",
    "keys.kek_file, LOAVES_LICENSE_ADMIN_TOKEN or keys.admin_token_file, and a",
    "store URL with a password in LOAVES_LICENSE_STORE__URL or store.url_file.",
    "A *_file names a file whose trimmed content is the secret; it must not be",
    "readable by group or others (chmod 600). A value in the environment wins",
    "over the file. print-config shows no secret.",
];

pub use loaves_service::config::ConfigError;

/// The whole service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct Config {
    /// gRPC (TLS) address of the license and key services.
    #[config(default = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Plain HTTP address of `/metrics` and `/healthz` (keep it internal).
    #[config(default = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// HTTP address of the W3C ClearKey endpoint (`POST /clearkey`); "off"
    /// disables it. Put TLS in front of it outside development.
    #[config(default = "127.0.0.1:7480", deserialize_with = addr_or_off)]
    #[serde(serialize_with = "serialize_addr_or_off")]
    pub clearkey_listen: AddrOrOff,
    /// Where generated development material and the default SQLite database
    /// live. Created (mode 0700) if missing.
    #[config(default = "license-server-data")]
    pub data_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax).
    #[config(default = "info,sqlx=warn,h2=warn,hyper=warn,tower=warn")]
    pub log: String,
    /// The durable store.
    #[config(nested)]
    pub store: StoreConfig,
    /// TLS of the gRPC listener.
    #[config(nested)]
    pub tls: TlsConfig,
    /// Key material.
    #[config(nested)]
    pub keys: KeysConfig,
    /// License policy.
    #[config(nested)]
    pub policy: PolicyConfig,
    /// Admission and size limits.
    #[config(nested)]
    pub limits: LimitsConfig,
    /// The titles this server licenses. Requests for any other title are
    /// refused with `NOT_FOUND`. Each is a table, `{ id = "...",
    /// key_period_s = 0, period_epoch = 0, renditions = [{ name = "720p",
    /// track_type = "hd", height = 720 }, ...] }` (`key_period_s`: length
    /// of a key period for live key rotation, 0 for VOD; `period_epoch`:
    /// Unix time period 0 starts; `track_type`: the key protecting the
    /// rendition; `height`: checked against an entitlement's `max_height`),
    /// or the name of the built-in demonstration title, `"demo"` (audio,
    /// 360p sd, 720p and 1080p hd).
    #[config(default = ["demo"])]
    pub titles: Vec<TitleConfig>,
}

impl Default for Config {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        service_config::defaults()
    }
}

/// An address that can be turned off. A named alias, because confique
/// reads a field spelled `Option<_>` as a setting without a default, and
/// this one has a default: "off" is how to turn it off.
pub type AddrOrOff = Option<SocketAddr>;

/// `clearkey_listen`: an address, or "off" (or empty) for none.
fn addr_or_off<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

fn serialize_addr_or_off<S: serde::Serializer>(
    addr: &Option<SocketAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => serializer.collect_str(addr),
        None => serializer.serialize_str("off"),
    }
}

/// The durable store.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`. Absent means
    /// `sqlite://<data_dir>/license-server.db` (created mode 0600). Use
    /// PostgreSQL when more than one replica serves the same keys. A URL
    /// with a password is a secret: give it in the environment
    /// (`LOAVES_LICENSE_STORE__URL`) or in `url_file`, not in this file.
    pub url: Option<String>,
    /// File whose trimmed content is the store URL (a secret file: not
    /// readable by group or others). `url` wins when both are set.
    pub url_file: Option<PathBuf>,
    /// Largest number of pooled database connections.
    #[config(default = 8)]
    pub max_connections: u32,
}

impl Default for StoreConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// TLS of the gRPC listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
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
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct KeysConfig {
    /// Ed25519 license signing key (PKCS#8 PEM). Default
    /// `<data_dir>/license.key`, generated if missing; its public half
    /// (`license.pub`) is the root of trust of trackers, seeds and clients.
    pub signing_key_file: Option<PathBuf>,
    /// Key-encryption key sealing content keys at rest: 32 raw bytes or 64
    /// hex digits (a secret file: not readable by group or others). The
    /// `LOAVES_LICENSE_KEK` variable (64 hex digits) takes precedence.
    /// Default `<data_dir>/kek`, generated (mode 0600) if missing.
    pub kek_file: Option<PathBuf>,
    /// Public keys (SPKI PEM) of the sign-in systems whose entitlements are
    /// trusted. Empty means a development signer
    /// `<data_dir>/entitlement-dev.key` / `.pub`, generated if missing, for
    /// use with `license-server mint-entitlement`.
    #[config(default = [])]
    pub entitlement_public_keys: Vec<PathBuf>,
    /// File holding the packager / operator credential expected as
    /// `authorization: Bearer <secret>` on the key service (a secret file:
    /// not readable by group or others; its content trimmed). The
    /// `LOAVES_LICENSE_ADMIN_TOKEN` variable takes precedence. Default
    /// `<data_dir>/admin-token`, generated (mode 0600) if missing.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for KeysConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        service_config::defaults()
    }
}

/// License policy.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct PolicyConfig {
    /// Seconds between heartbeats a client is asked to keep.
    #[config(default = 60)]
    pub renewal_interval_s: u32,
    /// Extra seconds after a missed heartbeat before the session is over and
    /// its concurrency slot free. A license and its token expire at
    /// `issued_at + renewal_interval_s + renewal_grace_s`.
    #[config(default = 30)]
    pub renewal_grace_s: u32,
    /// How many key periods past the title's current one a client may ask
    /// for (live key rotation delivers the next periods ahead of time).
    #[config(default = 2)]
    pub key_period_lookahead: u32,
    /// Most key periods in one license request.
    #[config(default = 8)]
    pub max_periods_per_request: u32,
    /// Upper bound on an entitlement's `max_concurrent_streams`, whatever
    /// the sign-in system says.
    #[config(default = 16)]
    pub max_concurrent_streams_cap: u32,
    /// Clock skew tolerated on entitlements, in seconds.
    #[config(default = 30)]
    pub max_clock_skew_s: u64,
    /// Whether licenses allow persisting keys offline.
    #[config(default = false)]
    pub can_persist: bool,
}

impl Default for PolicyConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Admission and size limits.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct LimitsConfig {
    /// Most requests processed at once across all connections; others wait
    /// up to `admission_timeout_ms`, then get `RESOURCE_EXHAUSTED`.
    #[config(default = 256)]
    pub max_in_flight: usize,
    /// How long a request may wait for admission.
    #[config(default = 2000)]
    pub admission_timeout_ms: u64,
    /// Largest encoded gRPC request accepted (bigger ones get
    /// `RESOURCE_EXHAUSTED` before they are decoded).
    #[config(default = 65_536)]
    pub max_request_bytes: usize,
    /// Most keys in one key-service request.
    #[config(default = 64)]
    pub max_keys_per_request: usize,
    /// Seconds in-flight requests get to finish on SIGTERM.
    #[config(default = 20)]
    pub shutdown_grace_s: u64,
    /// Connection limits of the gRPC (TLS) listener.
    #[config(nested)]
    pub grpc: GrpcLimitsConfig,
    /// Connection limits of each plain HTTP listener (ClearKey, and the
    /// operators' `/metrics` and `/healthz`; each has its own caps).
    #[config(nested)]
    pub http: HttpLimitsConfig,
}

impl Default for LimitsConfig {
    /// The `#[config(default = ...)]` values.
    fn default() -> Self {
        loaves_service::config::defaults()
    }
}

/// Connection limits of the gRPC listener: caps and a handshake timeout
/// before TLS, HTTP/2 bounds after it. Without them one client could hold
/// a thousand connections that never finish a ClientHello, or open ten
/// thousand streams on one connection that never send their bodies.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct GrpcLimitsConfig {
    /// Most connections open at once, handshaking or serving; more are
    /// reset at accept. Keep the sum of every listener's cap below the
    /// process's file descriptor limit.
    #[config(default = 1024)]
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv4, or IPv6 /64).
    /// Viewers behind one NAT share an address: raise it where they do.
    #[config(default = 256)]
    pub max_connections_per_ip: usize,
    /// Time from accept to a finished TLS handshake and HTTP/2 preface.
    #[config(default = 5000)]
    pub handshake_timeout_ms: u64,
    /// HTTP/2 `MAX_CONCURRENT_STREAMS`: streams one connection may have
    /// open; extra streams are refused.
    #[config(default = 64)]
    pub max_concurrent_streams: u32,
    /// Requests one connection may have in service at once (the rest of
    /// its open streams wait).
    #[config(default = 16)]
    pub concurrency_per_connection: usize,
    /// Time a call may take from its headers to its answer, including
    /// waiting for its request body; then it is answered `CANCELLED`.
    #[config(default = 10_000)]
    pub request_timeout_ms: u64,
    /// Seconds between HTTP/2 PINGs on a quiet connection (finds peers
    /// that vanished without closing).
    #[config(default = 30)]
    pub keepalive_interval_s: u64,
    /// Seconds a PING may go unanswered before the connection is closed.
    #[config(default = 10)]
    pub keepalive_timeout_s: u64,
    /// Largest decoded header list of one request.
    #[config(default = 16_384)]
    pub max_header_list_bytes: u32,
    /// Seconds after which a connection is asked to go away (clients
    /// reconnect); 0 for no limit. HTTP/2 has no idle timeout, so this
    /// bounds how long a connection that never calls keeps its place.
    #[config(default = 3600)]
    pub max_connection_age_s: u64,
}

impl Default for GrpcLimitsConfig {
    /// The `#[config(default = ...)]` values: `loaves_http`'s recommended
    /// limits, but for the per-address cap (viewers behind one carrier-grade
    /// or corporate NAT share an address and each keeps a connection for
    /// its renewals; a quarter of the total still keeps one address from
    /// taking all). A test keeps them equal to `loaves_http`'s.
    fn default() -> Self {
        service_config::defaults()
    }
}

impl GrpcLimitsConfig {
    /// The limits of the TLS front end.
    pub fn tls_limits(&self) -> loaves_http::tls::TlsLimits {
        let mut limits = loaves_http::tls::TlsLimits::default();
        limits.max_connections = self.max_connections;
        limits.max_connections_per_ip = self.max_connections_per_ip;
        limits.handshake_timeout = Duration::from_millis(self.handshake_timeout_ms);
        limits
    }

    /// The HTTP/2 and tonic limits.
    pub fn grpc_limits(&self) -> loaves_http::tls::GrpcLimits {
        let mut limits = loaves_http::tls::GrpcLimits::default();
        limits.max_concurrent_streams = self.max_concurrent_streams;
        limits.concurrency_per_connection = self.concurrency_per_connection;
        limits.request_timeout = Duration::from_millis(self.request_timeout_ms);
        limits.keepalive_interval = Duration::from_secs(self.keepalive_interval_s);
        limits.keepalive_timeout = Duration::from_secs(self.keepalive_timeout_s);
        limits.max_header_list_bytes = self.max_header_list_bytes;
        limits.max_connection_age =
            (self.max_connection_age_s > 0).then(|| Duration::from_secs(self.max_connection_age_s));
        limits
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            (
                "concurrency_per_connection",
                self.concurrency_per_connection as u64,
            ),
            ("request_timeout_ms", self.request_timeout_ms),
            ("keepalive_interval_s", self.keepalive_interval_s),
            ("keepalive_timeout_s", self.keepalive_timeout_s),
            (
                "max_header_list_bytes",
                u64::from(self.max_header_list_bytes),
            ),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("limits.grpc.{name} must be positive")),
            None => Ok(()),
        }
    }
}

/// Connection limits of a plain HTTP listener (see `loaves_http::Limits`
/// for why each exists). Without them a few hundred half-sent requests
/// held every connection the process could open.
#[derive(Debug, Clone, PartialEq, Serialize, loaves_service::Config)]
#[config(layer_attr(serde(deny_unknown_fields)))]
pub struct HttpLimitsConfig {
    /// Time allowed for a request head, from the connection's start or the
    /// end of the previous response.
    #[config(default = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Time a keep-alive connection may wait for its next request; at most
    /// `header_read_timeout_ms`.
    #[config(default = 10_000)]
    pub idle_timeout_ms: u64,
    /// Largest request head; at least 8192.
    #[config(default = 16_384)]
    pub max_header_bytes: usize,
    /// Most connections open at once on the listener.
    #[config(default = 256)]
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv4, or IPv6 /64).
    #[config(default = 64)]
    pub max_connections_per_ip: usize,
    /// Time the handler may take, request body included (answered 408).
    #[config(default = 30_000)]
    pub request_timeout_ms: u64,
    /// Time a response write may make no progress (a client that stopped
    /// reading) before the connection is closed.
    #[config(default = 30_000)]
    pub write_timeout_ms: u64,
}

impl Default for HttpLimitsConfig {
    /// The `#[config(default = ...)]` values: `loaves_http`'s, but for
    /// `max_connections` (the ClearKey and operators' listeners serve a few
    /// requests per viewer session and per scrape: a quarter of the gRPC
    /// port's descriptors each is plenty). A test keeps them equal to
    /// `loaves_http`'s.
    fn default() -> Self {
        service_config::defaults()
    }
}

impl HttpLimitsConfig {
    /// The server limits, with the shutdown grace of the whole service.
    pub fn limits(&self, shutdown_grace: Duration) -> loaves_http::Limits {
        let mut limits = loaves_http::Limits::default();
        limits.header_read_timeout = Duration::from_millis(self.header_read_timeout_ms);
        limits.idle_timeout = Duration::from_millis(self.idle_timeout_ms);
        limits.max_header_bytes = self.max_header_bytes;
        limits.max_connections = self.max_connections;
        limits.max_connections_per_ip = self.max_connections_per_ip;
        limits.request_timeout = Some(Duration::from_millis(self.request_timeout_ms));
        limits.write_timeout = Duration::from_millis(self.write_timeout_ms);
        limits.shutdown_grace = shutdown_grace;
        limits
    }
}

#[cfg(test)]
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One licensed title. Read from a table, or from the name of a built-in
/// title (`"demo"`, [`TitleConfig::demo`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
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

impl Serialize for TitleConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Self::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for TitleConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Title;
        impl<'de> serde::de::Visitor<'de> for Title {
            type Value = TitleConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a title table or the name of a built-in title (\"demo\")")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<TitleConfig, E> {
                match name {
                    "demo" => Ok(TitleConfig::demo()),
                    other => Err(E::custom(format!(
                        "{other:?} is not a built-in title (only \"demo\" is): write the title as a table"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TitleConfig, A::Error> {
                TitleConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_any(Title)
    }
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
pub use loaves_proto::names::MAX_NAME_LEN;

/// Title ids, track types and rendition names follow the contracts' one
/// rule ([`loaves_proto::names`]), so that the catalogue never holds a name
/// the packager, the seed or the SDK would refuse.
fn valid_name(name: &str) -> bool {
    loaves_proto::names::is_valid_name(name)
}

// `to_toml` holds no secret value unless `store.url` carries a password;
// [`Config::redacted`] hides that.
loaves_service::layered_config!(Config, scheme: ENV, notes: SECRET_NOTES, validate: validate);

impl Config {
    /// A copy fit for printing: the store URL without its password.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.store.url = copy.store.url.as_deref().map(service_config::redact_url);
        copy
    }

    /// Every setting's environment variable.
    pub fn settings() -> Vec<service_config::Setting> {
        ENV.settings::<Self>()
    }

    /// The store URL: `store.url`, else the content of `store.url_file`,
    /// else the SQLite database in `data_dir`.
    pub fn store_url(&self) -> Result<Zeroizing<String>, SecretError> {
        match (&self.store.url, &self.store.url_file) {
            (Some(url), _) => Ok(Zeroizing::new(url.clone())),
            (None, Some(path)) => loaves_service::secret::read_secret_file(path),
            (None, None) => Ok(Zeroizing::new(format!(
                "sqlite://{}",
                self.data_dir.join("license-server.db").display()
            ))),
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
        if let Err(msg) = l.grpc.validate() {
            return invalid(msg);
        }
        if let Err(e) = l
            .http
            .limits(Duration::from_secs(l.shutdown_grace_s))
            .validate()
        {
            return invalid(format!("limits.http: {e}"));
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
    use loaves_service::config::Overrides;

    #[test]
    fn defaults_round_trip_and_validate() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.titles, vec![TitleConfig::demo()]);
        assert_eq!(
            config.clearkey_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7480)))
        );
        let text = config.to_toml().unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), config);
        assert_eq!(Config::from_toml("").unwrap(), config);
    }

    #[test]
    fn the_commented_reference_parses_back_to_the_defaults() {
        let text = Config::commented();
        loaves_testkit::text::assert_mentions(
            "the commented reference",
            &text,
            &[
                "LOAVES_LICENSE_STORE_URL = LOAVES_LICENSE_STORE__URL",
                "# Most requests processed at once",
                "[limits]",
                "LOAVES_LICENSE_KEK",
            ],
        );
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
        let uncommented = service_config::uncomment_defaults(&text);
        assert!(
            uncommented.contains("\nmax_in_flight = 256"),
            "{uncommented}"
        );
        assert!(uncommented.contains("\ntitles = "), "{uncommented}");
        assert_eq!(Config::from_toml(&uncommented).unwrap(), Config::default());
    }

    #[test]
    fn older_variable_names_still_work() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let config = Config::load(
            None,
            &env(&[
                ("LOAVES_LICENSE_STORE_URL", "postgres://u:pw@db/x"),
                ("LOAVES_LICENSE_ENTITLEMENT_KEYS", "a.pub,b.pub"),
                ("LOAVES_LICENSE_TLS_CERT", "c.pem"),
                ("LOAVES_LICENSE_TLS__KEY_FILE", "k.pem"),
                ("LOAVES_LICENSE_LIMITS__MAX_IN_FLIGHT", "9"),
                ("LOAVES_LICENSE_CLEARKEY_LISTEN", "off"),
                ("LOAVES_LICENSE_KEK", "not a setting, read by setup"),
            ]),
            &Overrides::new(),
        )
        .unwrap();
        assert_eq!(config.store.url.as_deref(), Some("postgres://u:pw@db/x"));
        assert_eq!(config.keys.entitlement_public_keys.len(), 2);
        assert_eq!(config.tls.cert_file, Some(PathBuf::from("c.pem")));
        assert_eq!(config.limits.max_in_flight, 9);
        assert_eq!(config.clearkey_listen, None);
        let printed = config.redacted().to_toml().unwrap();
        assert!(!printed.contains("pw"), "{printed}");
        assert!(printed.contains("clearkey_listen = \"off\""), "{printed}");
        assert_eq!(Config::from_toml(&printed).unwrap().clearkey_listen, None);
    }

    #[test]
    fn the_store_url_can_come_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-url");
        std::fs::write(&path, "postgres://u:pw@db/x\n").unwrap();
        let mut config = Config::default();
        config.store.url_file = Some(path.clone());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = config.store_url().unwrap_err().to_string();
        assert!(error.contains("readable by group or others"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(config.store_url().unwrap().as_str(), "postgres://u:pw@db/x");
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
        assert!(Config::from_toml("[policy]\nrenewal_grace = 1").is_err());
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
        let mut config = Config::default();
        config.limits.http.idle_timeout_ms = config.limits.http.header_read_timeout_ms + 1;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.limits.grpc.max_concurrent_streams = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn connection_limits_parse_from_their_tables() {
        let config = Config::from_toml(
            "[limits.grpc]\nmax_concurrent_streams = 8\nmax_connection_age_s = 0\n\
             [limits.http]\nheader_read_timeout_ms = 500\nidle_timeout_ms = 500\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits.grpc.grpc_limits().max_concurrent_streams, 8);
        assert_eq!(config.limits.grpc.grpc_limits().max_connection_age, None);
        let http = config.limits.http.limits(Duration::from_secs(3));
        assert_eq!(http.header_read_timeout, Duration::from_millis(500));
        assert_eq!(http.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.limits.http.max_connections, 256);
    }

    #[test]
    fn connection_limit_defaults_are_loaves_https() {
        let tls = loaves_http::tls::TlsLimits::default();
        let grpc = loaves_http::tls::GrpcLimits::default();
        let ours = GrpcLimitsConfig::default();
        assert_eq!(ours.max_connections, tls.max_connections);
        assert_eq!(ours.handshake_timeout_ms, millis(tls.handshake_timeout));
        assert_eq!(ours.max_concurrent_streams, grpc.max_concurrent_streams);
        assert_eq!(
            ours.concurrency_per_connection,
            grpc.concurrency_per_connection
        );
        assert_eq!(ours.request_timeout_ms, millis(grpc.request_timeout));
        assert_eq!(ours.keepalive_interval_s, grpc.keepalive_interval.as_secs());
        assert_eq!(ours.keepalive_timeout_s, grpc.keepalive_timeout.as_secs());
        assert_eq!(ours.max_header_list_bytes, grpc.max_header_list_bytes);
        assert_eq!(
            ours.max_connection_age_s,
            grpc.max_connection_age.map_or(0, |age| age.as_secs())
        );
        let http = loaves_http::Limits::default();
        let ours = HttpLimitsConfig::default();
        assert_eq!(
            ours.header_read_timeout_ms,
            millis(http.header_read_timeout)
        );
        assert_eq!(ours.idle_timeout_ms, millis(http.idle_timeout));
        assert_eq!(ours.max_header_bytes, http.max_header_bytes);
        assert_eq!(ours.max_connections_per_ip, http.max_connections_per_ip);
        assert_eq!(
            ours.request_timeout_ms,
            http.request_timeout.map_or(30_000, millis)
        );
        assert_eq!(ours.write_timeout_ms, millis(http.write_timeout));
    }
}
