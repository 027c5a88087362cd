//! What an SDK instance is configured with: set through [`LoavesBuilder`],
//! checked as each setting is made (a bad URL or an empty key ring fails at
//! `build()` with the setting named, not at the first request), and read
//! only inside the SDK.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use loaves_proto::keys::{Keyring, SigningKeyPair};
use url::Url;

use crate::cdn::CdnConfig;
use crate::error::{ConfigError, Error};
use crate::license::LicenseServerConfig;
use crate::session::Loaves;

/// The default of [`LoavesBuilder::nat_keepalive`]: under the 30 s after
/// which the most forgetful home routers drop an idle UDP mapping.
pub const DEFAULT_NAT_KEEPALIVE: Duration = Duration::from_secs(20);

/// Upload policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upload {
    /// Never serve other viewers (no upload server, nothing announced).
    Off,
    /// Serve other viewers at most this many bytes per second in total.
    Capped {
        /// The cap, bytes per second.
        bytes_per_second: u64,
    },
}

/// The kind of network the device is on, as the app knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkType {
    /// Wi-Fi, Ethernet: no per-byte cost.
    Unmetered,
    /// Cellular or another per-byte-billed network.
    Metered,
}

/// Fault injection and emulated links for the project's own load tests
/// (feature `test-faults`; an app never enables it).
#[cfg(feature = "test-faults")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Serve every uploaded segment with one byte flipped (a lying peer).
    pub tamper_uploads: bool,
    /// Announce and HAVE segments this session does not hold (the next few
    /// after each one it does hold), so peers ask for them and are refused.
    pub lie_about_holdings: bool,
    /// An emulated access link (download rate, added latency), applied to
    /// CDN fetches and peer transfers alike; the upload rate is the upload
    /// cap.
    pub link: crate::cdn::LinkLimits,
    /// Act as if behind this kind of NAT (the class announced and used to
    /// plan connections), whatever observers saw: on loopback, where every
    /// viewer is `Open`, this drives the punching path end to end.
    pub nat: Option<crate::stats::NatType>,
}

/// The settings of an SDK instance (read-only once built).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) license: LicenseServerConfig,
    pub(crate) clearkey_url: Option<Url>,
    pub(crate) manifest_keys: Keyring,
    pub(crate) cdn: CdnConfig,
    /// Tracker shard names (`host:port`), in the order every component
    /// lists them; a title maps to one by rendezvous hashing.
    pub(crate) trackers: Vec<String>,
    pub(crate) p2p: bool,
    pub(crate) upload: Upload,
    pub(crate) upload_only_unmetered: bool,
    pub(crate) max_peers: usize,
    pub(crate) max_upload_connections: usize,
    pub(crate) max_upload_backlog: Duration,
    pub(crate) buffer_target: Duration,
    pub(crate) store_budget_bytes: u64,
    pub(crate) region: String,
    pub(crate) isp: String,
    pub(crate) peer_bind: SocketAddr,
    pub(crate) public_addresses: Vec<SocketAddr>,
    pub(crate) playback_speed: f64,
    pub(crate) max_announce_interval: Duration,
    pub(crate) renewal_interval: Option<Duration>,
    pub(crate) event_capacity: usize,
    pub(crate) decrypt: bool,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) clock_skew: Duration,
    pub(crate) nat_keepalive: Option<Duration>,
    #[cfg(feature = "test-faults")]
    pub(crate) faults: Faults,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            license: LicenseServerConfig::default(),
            clearkey_url: None,
            manifest_keys: Keyring::default(),
            cdn: CdnConfig::default(),
            trackers: Vec::new(),
            p2p: true,
            upload: Upload::Capped {
                bytes_per_second: 2_000_000,
            },
            upload_only_unmetered: true,
            max_peers: 8,
            max_upload_connections: 16,
            max_upload_backlog: Duration::from_millis(250),
            buffer_target: Duration::from_secs(16),
            store_budget_bytes: 64 << 20,
            region: String::new(),
            isp: String::new(),
            peer_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            public_addresses: Vec::new(),
            playback_speed: 1.0,
            max_announce_interval: Duration::from_secs(30),
            renewal_interval: None,
            event_capacity: 1024,
            decrypt: false,
            allowed_origins: Vec::new(),
            clock_skew: Duration::from_secs(loaves_proto::token::DEFAULT_MAX_CLOCK_SKEW_S),
            nat_keepalive: Some(DEFAULT_NAT_KEEPALIVE),
            #[cfg(feature = "test-faults")]
            faults: Faults::default(),
        }
    }
}

impl Config {
    /// Fault injection: serve uploads with a byte flipped.
    pub(crate) fn tamper_uploads(&self) -> bool {
        #[cfg(feature = "test-faults")]
        return self.faults.tamper_uploads;
        #[cfg(not(feature = "test-faults"))]
        false
    }

    /// Fault injection: claim segments not held.
    pub(crate) fn lie_about_holdings(&self) -> bool {
        #[cfg(feature = "test-faults")]
        return self.faults.lie_about_holdings;
        #[cfg(not(feature = "test-faults"))]
        false
    }

    /// Fault injection: the NAT class to act under (none without
    /// `test-faults`).
    pub(crate) fn assumed_nat(&self) -> Option<crate::stats::NatType> {
        #[cfg(feature = "test-faults")]
        return self.faults.nat;
        #[cfg(not(feature = "test-faults"))]
        None
    }

    /// The emulated access link (none without `test-faults`).
    pub(crate) fn link(&self) -> crate::cdn::LinkLimits {
        #[cfg(feature = "test-faults")]
        return self.faults.link;
        #[cfg(not(feature = "test-faults"))]
        crate::cdn::LinkLimits::default()
    }
}

/// Builds a [`Loaves`] instance. Every setting is checked when it is made;
/// the first refused one is reported by [`LoavesBuilder::build`].
///
/// ```no_run
/// # fn demo(license_key: loaves_proto::keys::Keyring,
/// #         origin_key: loaves_proto::keys::Keyring) -> Result<(), loaves_client_sdk::Error> {
/// use loaves_client_sdk::Loaves;
/// let loaves = Loaves::builder()
///     .license_server("https://license.example:8443", license_key)
///     .clearkey_url("https://license.example:8444/clearkey")
///     .manifest_keys(origin_key)
///     .cdn_urls(["https://cdn.example/vod/"])
///     .trackers(["tracker-0.example:7400", "tracker-1.example:7400"])
///     .location("eu-west", "isp-a")
///     .build()?;
/// # let _ = loaves; Ok(()) }
/// ```
#[derive(Debug, Default, Clone)]
pub struct LoavesBuilder {
    config: Config,
    /// The first setting refused, reported by `build`.
    refused: Option<ConfigError>,
}

fn parse_url(setting: &'static str, url: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(url).map_err(|source| ConfigError::Url {
        setting,
        url: url.to_owned(),
        source,
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::Invalid {
            setting,
            reason: format!("{url:?} is not an http(s) URL with a host"),
        });
    }
    Ok(parsed)
}

impl LoavesBuilder {
    fn refuse(&mut self, error: ConfigError) {
        self.refused.get_or_insert(error);
    }

    /// The license server's gRPC URL (`https://host:port`) and the keys its
    /// licenses and session tokens are signed with.
    pub fn license_server(mut self, url: &str, trusted_keys: Keyring) -> Self {
        match parse_url("license_server", url) {
            Ok(url) => self.config.license.url = Some(url),
            Err(error) => self.refuse(error),
        }
        if trusted_keys.is_empty() {
            self.refuse(ConfigError::Invalid {
                setting: "license_server",
                reason: "no trusted license key".into(),
            });
        }
        self.config.license.trusted_keys = trusted_keys;
        self
    }

    /// The CA certificate (PEM) that signed the license server's TLS
    /// certificate, or the server's own certificate when it is self-signed
    /// without the CA flag. Without one, the system's roots are used.
    pub fn license_server_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.config.license.ca_pem = Some(pem.into());
        self
    }

    /// The name to check the license server's certificate against, when it
    /// is not the URL's host.
    pub fn license_server_tls_name(mut self, name: impl Into<String>) -> Self {
        self.config.license.tls_server_name = Some(name.into());
        self
    }

    /// Bound on each license call (default 10 s).
    pub fn license_timeout(mut self, timeout: Duration) -> Self {
        self.config.license.request_timeout = timeout;
        self
    }

    /// The license server's W3C ClearKey endpoint (`http(s)://host:port/clearkey`),
    /// to which the player endpoint forwards the player's license requests
    /// with the session's token.
    pub fn clearkey_url(mut self, url: &str) -> Self {
        match parse_url("clearkey_url", url) {
            Ok(url) => self.config.clearkey_url = Some(url),
            Err(error) => self.refuse(error),
        }
        self
    }

    /// The origin's manifest signing keys: every manifest, and so every
    /// segment, is verified against them.
    pub fn manifest_keys(mut self, keys: Keyring) -> Self {
        self.config.manifest_keys = keys;
        self
    }

    /// CDN base URLs, in order of preference (failover to the next); title
    /// `T` is expected under `T/`.
    pub fn cdn_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for url in urls {
            match parse_url("cdn_urls", url.as_ref()) {
                Ok(url) => parsed.push(url),
                Err(error) => self.refuse(error),
            }
        }
        self.config.cdn.base_urls = parsed;
        self
    }

    /// Bound on each CDN request (default 10 s).
    pub fn cdn_timeout(mut self, timeout: Duration) -> Self {
        self.config.cdn.request_timeout = timeout;
        self
    }

    /// The tracker shards (`host:port` names, the list every component
    /// shares, in its order); a title's shard is chosen by rendezvous
    /// hashing. Empty (the default): no tracker, no P2P, no stats.
    pub fn trackers<I, S>(mut self, shards: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names = Vec::new();
        for shard in shards {
            let shard = shard.into();
            if valid_shard_name(&shard) {
                names.push(shard);
            } else {
                self.refuse(ConfigError::Invalid {
                    setting: "trackers",
                    reason: format!("{shard:?} is not host:port"),
                });
            }
        }
        self.config.trackers = names;
        self
    }

    /// The P2P switch (default on). Off: every byte from the CDN, no peers;
    /// stats still go to the tracker when one is configured (the CDN-only
    /// cohort, the baseline of offload figures).
    pub fn p2p(mut self, enabled: bool) -> Self {
        self.config.p2p = enabled;
        self
    }

    /// Upload policy (default: capped at 2 MB/s).
    pub fn upload(mut self, upload: Upload) -> Self {
        if let Upload::Capped { bytes_per_second } = upload
            && bytes_per_second == 0
        {
            self.refuse(ConfigError::Invalid {
                setting: "upload",
                reason: "a cap of 0 bytes per second: use Upload::Off".into(),
            });
        }
        self.config.upload = upload;
        self
    }

    /// Upload only while the app says the network is unmetered (default
    /// on: a viewer on cellular data never pays for other viewers' video).
    pub fn upload_only_unmetered(mut self, only: bool) -> Self {
        self.config.upload_only_unmetered = only;
        self
    }

    /// Most peers downloaded from at once, per rendition (default 8).
    pub fn max_peers(mut self, max: usize) -> Self {
        if max == 0 {
            self.refuse(ConfigError::Invalid {
                setting: "max_peers",
                reason: "must be at least 1 (use p2p(false) for none)".into(),
            });
        }
        self.config.max_peers = max;
        self
    }

    /// Most viewers served at once (default 16).
    pub fn max_upload_connections(mut self, max: usize) -> Self {
        self.config.max_upload_connections = max;
        self
    }

    /// With a capped upload: a request that arrives while the uploads in
    /// progress are more than this far behind the cap is answered BUSY at
    /// once, so the requester goes elsewhere rather than queueing
    /// (default 250 ms).
    pub fn max_upload_backlog(mut self, backlog: Duration) -> Self {
        self.config.max_upload_backlog = backlog;
        self
    }

    /// How far ahead of the playhead segments are fetched (default 16 s).
    pub fn buffer_target(mut self, target: Duration) -> Self {
        if target.is_zero() {
            self.refuse(ConfigError::Invalid {
                setting: "buffer_target",
                reason: "must be positive".into(),
            });
        }
        self.config.buffer_target = target;
        self
    }

    /// Memory for verified segments, for playback and upload (default
    /// 64 MiB).
    pub fn store_budget_bytes(mut self, bytes: u64) -> Self {
        self.config.store_budget_bytes = bytes;
        self
    }

    /// Region and ISP hints: sent to the license server (which puts them in
    /// the session token), compared with other peers' to prefer near ones
    /// and to account cross-ISP bytes.
    pub fn location(mut self, region: impl Into<String>, isp: impl Into<String>) -> Self {
        self.config.region = region.into();
        self.config.isp = isp.into();
        self
    }

    /// Local address of the peer endpoint (default `0.0.0.0:0`: every
    /// interface, any port). The addresses other viewers are told come
    /// from the interfaces and from what the tracker observes, never an
    /// unspecified or (towards a tracker that is not on this host)
    /// loopback address.
    pub fn peer_bind(mut self, address: SocketAddr) -> Self {
        self.config.peer_bind = address;
        self
    }

    /// Public addresses of this viewer that the app knows of (a port
    /// forwarded on the router, say), advertised first.
    pub fn public_addresses(mut self, addresses: impl IntoIterator<Item = SocketAddr>) -> Self {
        let addresses: Vec<SocketAddr> = addresses.into_iter().collect();
        if let Some(bad) = addresses
            .iter()
            .find(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            self.refuse(ConfigError::Invalid {
                setting: "public_addresses",
                reason: format!("{bad} is not an address anyone can reach"),
            });
        }
        self.config.public_addresses = addresses;
        self
    }

    /// Media time per wall time (default 1.0). Demos and tests compress
    /// playback: segment deadlines shrink by this factor.
    pub fn playback_speed(mut self, speed: f64) -> Self {
        if !(speed.is_finite() && speed > 0.0) {
            self.refuse(ConfigError::Invalid {
                setting: "playback_speed",
                reason: format!("{speed} is not a positive number"),
            });
        }
        self.config.playback_speed = speed;
        self
    }

    /// Longest time between tracker announces (the tracker's interval
    /// applies when shorter; default 30 s).
    pub fn max_announce_interval(mut self, interval: Duration) -> Self {
        if interval.is_zero() {
            self.refuse(ConfigError::Invalid {
                setting: "max_announce_interval",
                reason: "must be positive".into(),
            });
        }
        self.config.max_announce_interval = interval;
        self
    }

    /// License heartbeat interval, overriding the license policy's when
    /// shorter.
    pub fn renewal_interval(mut self, interval: Duration) -> Self {
        if interval.is_zero() {
            self.refuse(ConfigError::Invalid {
                setting: "renewal_interval",
                reason: "must be positive".into(),
            });
        }
        self.config.renewal_interval = Some(interval);
        self
    }

    /// How many events a slow reader of [`crate::Session::events`] may lag
    /// before it skips some (it is told how many: [`crate::Event::Lagged`]).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        if capacity == 0 {
            self.refuse(ConfigError::Invalid {
                setting: "event_capacity",
                reason: "must be positive".into(),
            });
        }
        self.config.event_capacity = capacity;
        self
    }

    /// Decrypt inside the SDK, for players without a DRM module: the player
    /// endpoint serves clear CMAF and playlists without key tags or
    /// `ContentProtection`.
    ///
    /// **Weaker protection.** The content keys then sit in the app's memory
    /// for the session, and clear media crosses the loopback HTTP endpoint,
    /// where any local process (or a modified app) can read it; a DRM
    /// module keeps both inside its own boundary. Use it only where the
    /// content owner accepts that (previews, low-value or open content,
    /// platforms without EME). Segments are still verified against the
    /// signed manifest before decryption, the store and peers only ever
    /// hold ciphertext, and a segment whose key the license lacks is an
    /// HTTP error (403), never ciphertext offered as clear.
    pub fn decrypt(mut self, decrypt: bool) -> Self {
        self.config.decrypt = decrypt;
        self
    }

    /// Web origins (`https://app.example`, scheme, host and port exactly)
    /// allowed to read the local player endpoint from a browser: the
    /// endpoint sends CORS headers to these only, and serves the ClearKey
    /// license proxy only to them or to requests without an `Origin`.
    /// Default: none, which is right for a native player or the app's own
    /// webview loading the endpoint's own pages; a web app lists its page's
    /// origin here.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut allowed = Vec::new();
        for origin in origins {
            match normalize_origin(origin.as_ref()) {
                Some(origin) => allowed.push(origin),
                None => self.refuse(ConfigError::Invalid {
                    setting: "allowed_origins",
                    reason: format!(
                        "{:?} is not an origin (scheme://host[:port], nothing else)",
                        origin.as_ref()
                    ),
                }),
            }
        }
        self.config.allowed_origins = allowed;
        self
    }

    /// Clock skew tolerated when checking other viewers' and seeds' session
    /// tokens (default 30 s, as the servers): a token is accepted until
    /// this long after its expiry.
    pub fn credential_clock_skew(mut self, skew: Duration) -> Self {
        self.config.clock_skew = skew;
        self
    }

    /// How often the tracker connection is kept alive while nothing else is
    /// sent on it (default 20 s; `None`: never). Home routers forget an idle
    /// UDP mapping after as little as 30 s, and that mapping is the address
    /// other viewers reach this one at; announces alone come every 30 s.
    pub fn nat_keepalive(mut self, interval: Option<Duration>) -> Self {
        if interval.is_some_and(|i| i < Duration::from_secs(1)) {
            self.refuse(ConfigError::Invalid {
                setting: "nat_keepalive",
                reason: "under a second would flood the tracker".into(),
            });
        }
        self.config.nat_keepalive = interval;
        self
    }

    /// Fault injection and emulated links, for the project's load tests.
    #[cfg(feature = "test-faults")]
    pub fn faults(mut self, faults: Faults) -> Self {
        self.config.faults = faults;
        self
    }

    /// Checks the configuration as a whole and builds the instance (makes
    /// its peer key).
    pub fn build(self) -> Result<Loaves, Error> {
        if let Some(error) = self.refused {
            return Err(error.into());
        }
        let c = &self.config;
        let missing = |setting: &'static str| Err(Error::from(ConfigError::Missing { setting }));
        if c.license.url.is_none() {
            return missing("license_server");
        }
        if c.cdn.base_urls.is_empty() {
            return missing("cdn_urls");
        }
        if c.manifest_keys.is_empty() {
            return missing("manifest_keys");
        }
        let key = SigningKeyPair::generate().map_err(|source| Error::Setup {
            what: "the peer key",
            source: Box::new(source),
        })?;
        Ok(Loaves::new(self.config, key))
    }
}

/// `host:port` with a non-empty host and a port.
fn valid_shard_name(name: &str) -> bool {
    match name.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) && !host.contains('/')
        }
        None => false,
    }
}

/// The serialized form of an origin (`scheme://host[:port]`, lower case,
/// default port dropped), as browsers send it in `Origin`; `None` if `text`
/// is not an origin alone.
pub(crate) fn normalize_origin(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host().is_none()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || text.trim_end_matches('/').len() < text.len().saturating_sub(1)
    {
        return None;
    }
    let serialized = url.origin().ascii_serialization();
    (serialized != "null").then_some(serialized)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn keys() -> Keyring {
        let mut ring = Keyring::default();
        ring.insert(SigningKeyPair::generate().unwrap().verifying_key());
        ring
    }

    #[test]
    fn a_bad_setting_is_named_at_build() {
        let error = Loaves::builder()
            .license_server("not a url", keys())
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("license_server"), "{error}");

        let error = Loaves::builder()
            .license_server("https://license.example:8443", keys())
            .manifest_keys(keys())
            .cdn_urls(["ftp://cdn.example/"])
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("cdn_urls"), "{error}");

        let error = Loaves::builder()
            .license_server("https://license.example:8443", keys())
            .manifest_keys(keys())
            .cdn_urls(["https://cdn.example/"])
            .trackers(["no-port"])
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("trackers"), "{error}");
    }

    #[test]
    fn missing_settings_are_named() {
        let error = Loaves::builder().build().unwrap_err();
        assert!(error.to_string().contains("license_server"), "{error}");
        let error = Loaves::builder()
            .license_server("https://license.example:8443", keys())
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("cdn_urls"), "{error}");
    }

    #[test]
    fn origins_are_normalized_and_checked() {
        assert_eq!(
            normalize_origin("https://App.Example").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            normalize_origin("https://app.example:443").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in [
            "app.example",
            "https://app.example/path",
            "https://app.example/?q",
            "file:///x",
            "*",
            "null",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }
}
