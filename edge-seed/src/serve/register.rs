//! Registration with the tracker as a seed, re-announced on an interval.
//!
//! The transport is behind [`Registrar`], so tests (or another tracker
//! client) can replace it; [`QuicRegistrar`] speaks the tracker protocol
//! (ALPN `loaves-tracker/2`): one hello with the seed credential, then each
//! `SeedRegistration` on the same session stream, answered by an `Ack`
//! carrying the interval. Titles map to tracker shards by rendezvous hashing
//! ([`loaves_proto::shard::ShardMap`]), the tracker's own rule.
//!
//! A tracker address is the shard's name, `host:port`: an IP literal or a
//! DNS name (`loaves-tracker-0.loaves-tracker:4433`, as a Kubernetes
//! StatefulSet names its pods). Names are resolved at each (re)connect,
//! within [`RESOLVE_TIMEOUT`], so a shard that moves to another address is
//! found again at the next registration.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loaves_proto::pb;
use loaves_proto::shard::ShardMap;
use loaves_wire::framing;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::tracker_client::{self, ClientEndpoint, ClientError, TrackerConnection};
use tokio::sync::{Mutex, watch};

use super::metrics::Metrics;
use super::store::Store;

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Endpoint or TLS setup failed.
    #[error("setup: {0}")]
    Setup(String),
    /// Connecting or the connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// Frames could not be exchanged.
    #[error("frame: {0}")]
    Frame(#[from] framing::FrameError),
    /// The tracker refused.
    #[error("tracker refused: {0}")]
    Refused(String),
    /// No or an unexpected response.
    #[error("unexpected response")]
    Unexpected,
    /// The tracker's name did not resolve (in time, or to a usable address).
    #[error("resolving {address}: {reason}")]
    Resolve {
        /// The configured `host:port`.
        address: String,
        /// Why.
        reason: String,
    },
}

/// Longest wait for a tracker's name to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Splits `host:port` (`[v6]:port` for IPv6 literals) into a host and a
/// port, or says why it cannot.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address:?}: {port:?} is not a port"))?;
    if port == 0 {
        return Err(format!("{address:?}: port 0"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if !valid {
        return Err(format!(
            "{address:?}: {host:?} is not a host name or address"
        ));
    }
    Ok((host, port))
}

/// Resolves `address` (`host:port`) within `timeout`, preferring addresses
/// of the local socket's family (an IPv4 socket cannot reach IPv6).
pub async fn resolve(
    address: &str,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> Result<SocketAddr, RegisterError> {
    let error = |reason: String| RegisterError::Resolve {
        address: address.to_owned(),
        reason,
    };
    let (host, port) = split_host_port(address).map_err(&error)?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let found: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| error(format!("no answer within {timeout:?}")))?
            .map_err(|e| error(e.to_string()))?
            .collect();
    let same_family = |a: &&SocketAddr| local.is_none_or(|l| l.is_ipv4() == a.is_ipv4());
    found
        .iter()
        .find(same_family)
        .or(if local.is_some_and(|l| l.is_ipv6()) {
            found.first()
        } else {
            None
        })
        .copied()
        .ok_or_else(|| error(format!("no usable address among {found:?}")))
}

/// Sends one registration; returns the interval the tracker asks for.
pub trait Registrar: Send + Sync + 'static {
    /// Registers `registration`.
    fn register(
        &self,
        registration: &pb::SeedRegistration,
    ) -> impl Future<Output = Result<Option<u32>, RegisterError>> + Send;
}

/// Registration over QUIC to one tracker, with the tracker client of
/// `loaves_wire::tracker_client` (one connection, kept while it lives).
#[derive(Debug)]
pub struct QuicRegistrar {
    client: ClientEndpoint,
    /// The endpoint's own address: names resolve to the same IP family.
    local: Option<SocketAddr>,
    tracker: String,
    config: quinn::ClientConfig,
    credential: Vec<u8>,
    connection: Mutex<Option<TrackerConnection>>,
}

impl QuicRegistrar {
    /// A registrar for `tracker` (`host:port`, resolved at each connect),
    /// presenting `identity` and `credential`.
    pub fn new(
        endpoint: quinn::Endpoint,
        tracker: impl Into<String>,
        identity: &PeerIdentity,
        credential: Vec<u8>,
    ) -> Result<Self, RegisterError> {
        let tracker = tracker.into();
        split_host_port(&tracker).map_err(|reason| RegisterError::Resolve {
            address: tracker.clone(),
            reason,
        })?;
        Ok(Self {
            local: endpoint.local_addr().ok(),
            client: ClientEndpoint::from_endpoint(endpoint),
            tracker,
            config: tracker_client::client_config(identity)?,
            credential,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<TrackerConnection, RegisterError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref()
            && connection.quic().close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let address = resolve(
            &self.tracker,
            self.local,
            RESOLVE_TIMEOUT.min(tracker_client::HANDSHAKE_TIMEOUT),
        )
        .await?;
        let hello = pb::TrackerHello {
            credential: Some(pb::tracker_hello::Credential::SeedCredential(
                self.credential.clone(),
            )),
        };
        let connection = self
            .client
            .connect_with(self.config.clone(), address, hello)
            .await?;
        *guard = Some(connection.clone());
        Ok(connection)
    }
}

impl From<ClientError> for RegisterError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Setup(e) => Self::Setup(e),
            ClientError::Connect(e) => Self::Connection(e),
            ClientError::Connection(e) => Self::Connection(e.to_string()),
            ClientError::Frame(e) => Self::Frame(e),
            ClientError::Refused { mut message, .. } => {
                message.truncate(256);
                Self::Refused(message)
            }
            ClientError::NoResponse => Self::Unexpected,
        }
    }
}

impl Registrar for QuicRegistrar {
    async fn register(
        &self,
        registration: &pb::SeedRegistration,
    ) -> Result<Option<u32>, RegisterError> {
        let connection = self.connection().await?;
        let request = pb::TrackerRequest {
            kind: Some(pb::tracker_request::Kind::RegisterSeed(
                registration.clone(),
            )),
        };
        match connection
            .request(&request)
            .await
            .map_err(RegisterError::from)
        {
            Ok(pb::TrackerResponse {
                kind: Some(pb::tracker_response::Kind::Ack(ack)),
            }) => Ok(Some(ack.interval_s).filter(|&s| s > 0)),
            Ok(_) => Err(RegisterError::Unexpected),
            Err(error) => {
                // Reconnect next time.
                *self.connection.lock().await = None;
                Err(error)
            }
        }
    }
}

/// What the seed registers.
#[derive(Debug, Clone)]
pub struct RegistrationInfo {
    /// Addresses peers reach the seed at.
    pub addresses: Vec<String>,
    /// Upload capacity offered, bits per second.
    pub upload_capacity_bps: u64,
}

/// The registration for the titles of `shard` (all titles when `shards` is
/// empty): every loaded rendition of each, with spare capacity estimated
/// from the upload slots in use.
pub fn registration_for(
    store: &Store,
    shards: &ShardMap,
    shard: Option<&str>,
    info: &RegistrationInfo,
    metrics: &Metrics,
    max_uploads: usize,
) -> pb::SeedRegistration {
    let swarms = store
        .swarms()
        .into_iter()
        .filter(|(title, _)| shard.is_none_or(|s| shards.is_served_by(title, s)))
        .map(|(title, rendition)| pb::SwarmId { title, rendition })
        .collect();
    let in_use = u64::try_from(metrics.uploads_in_flight.get().max(0)).unwrap_or(0);
    let max = u64::try_from(max_uploads.max(1)).unwrap_or(1);
    pb::SeedRegistration {
        swarms,
        addresses: info.addresses.clone(),
        upload_capacity_bps: info.upload_capacity_bps,
        upload_in_use_bps: info.upload_capacity_bps.saturating_mul(in_use.min(max)) / max,
    }
}

/// Registers with `registrar` now and again every interval (the tracker's,
/// or `default_interval`; retries after failures with a short backoff)
/// until `stop` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn registration_loop<R: Registrar>(
    registrar: R,
    store: Arc<Store>,
    shards: ShardMap,
    shard: Option<String>,
    info: RegistrationInfo,
    metrics: Metrics,
    max_uploads: usize,
    default_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let registration = registration_for(
            &store,
            &shards,
            shard.as_deref(),
            &info,
            &metrics,
            max_uploads,
        );
        let wait = if registration.swarms.is_empty() {
            Duration::from_secs(1)
        } else {
            match registrar.register(&registration).await {
                Ok(interval) => {
                    metrics.registrations.with_label_values(&["ok"]).inc();
                    interval
                        .map(|s| Duration::from_secs(u64::from(s)))
                        .unwrap_or(default_interval)
                        .min(default_interval.max(Duration::from_secs(1)))
                }
                Err(error) => {
                    metrics.registrations.with_label_values(&["error"]).inc();
                    tracing::warn!(%error, "tracker registration failed");
                    Duration::from_secs(2)
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("tracker-0.tracker:4433").unwrap(),
            ("tracker-0.tracker", 4433)
        );
        assert_eq!(split_host_port("127.0.0.1:9").unwrap(), ("127.0.0.1", 9));
        assert_eq!(split_host_port("[::1]:4433").unwrap(), ("::1", 4433));
        for bad in [
            "tracker",
            "tracker:",
            ":4433",
            "tracker:0",
            "tracker:99999",
            "a b:1",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn resolves_names_and_literals() {
        let v4 = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
        let timeout = Duration::from_secs(5);
        assert_eq!(
            resolve("localhost:4433", v4, timeout).await.unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 4433))
        );
        assert_eq!(
            resolve("192.0.2.1:1", v4, timeout).await.unwrap(),
            SocketAddr::from(([192, 0, 2, 1], 1))
        );
        let error = resolve("no-such-host.invalid:4433", v4, timeout)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("no-such-host.invalid"),
            "{error}"
        );
    }
}
