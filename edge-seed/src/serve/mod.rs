//! The serve side of the edge seed: an always-on peer and origin for every
//! swarm of its titles.
//!
//! ```text
//!            QUIC peer wire (peer.rs)          HTTP origin / CDN role (http.rs)
//!                      \                         /
//!                       +---- Store (store.rs) -+---- metrics.rs, /healthz
//!                             | signed manifests (verified chains)
//!                             | memory LRU ── disk cache (cache.rs)
//!                             | single-flight origin pulls, verified (origin.rs)
//!                             | live following → HAVE notices
//!                       register.rs: seed registration with the tracker
//! ```
//!
//! [`start`] wires everything from a [`SeedConfig`] and [`SeedKeys`];
//! [`RunningSeed::shutdown`] drains (stops accepting, lets transfers in
//! flight finish within the drain deadline, then closes).

pub mod cache;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod origin;
pub mod peer;
pub mod register;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::shard::ShardMap;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire::{self, CredentialVerifier, EgressLimiter, Limits, TransportOptions};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

pub use config::SeedConfig;
use metrics::Metrics;
use store::Store;

/// Whether `name` is a safe single path component: the contracts' one
/// rule for names ([`loaves_proto::names::is_valid_name`]). Titles,
/// renditions and file names from configuration, manifests or requests
/// must pass before they touch a path or a URL.
pub fn safe_name(name: &str) -> bool {
    loaves_proto::names::is_valid_name(name)
}

/// Why the seed could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A key or credential file could not be read.
    #[error("keys: {0}")]
    Keys(String),
    /// A socket could not be bound or the TLS setup failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The disk cache could not be opened.
    #[error("disk cache: {0}")]
    Disk(#[from] std::io::Error),
}

/// Key material of a seed.
#[derive(Debug, Clone)]
pub struct SeedKeys {
    /// The QUIC identity key (the one the credential names).
    pub identity: SigningKeyPair,
    /// The signed seed credential; without it clients refuse the seed.
    pub credential: Option<Vec<u8>>,
    /// License server keys: session tokens.
    pub license: Keyring,
    /// Origin keys: manifests.
    pub origin: Keyring,
}

impl SeedKeys {
    /// Reads the files the configuration names.
    pub fn load(config: &SeedConfig) -> Result<Self, ServeError> {
        let keys = |what: &str, e: &dyn std::fmt::Display| ServeError::Keys(format!("{what}: {e}"));
        let identity = match &config.identity_key {
            Some(path) => loaves_proto::keygen::read_signing_key(path)
                .map_err(|e| keys(&path.display().to_string(), &e))?,
            None => SigningKeyPair::generate().map_err(|e| keys("identity", &e))?,
        };
        let credential = match &config.credential {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| keys(&path.display().to_string(), &e))?)
            }
            None => None,
        };
        let ring = |paths: &[std::path::PathBuf]| -> Result<Keyring, ServeError> {
            let mut ring = Keyring::new();
            for path in paths {
                let key = loaves_proto::keygen::read_public_key(path)
                    .map_err(|e| keys(&path.display().to_string(), &e))?;
                ring.insert(key);
            }
            Ok(ring)
        };
        Ok(Self {
            identity,
            credential,
            license: ring(&config.license_public_keys)?,
            origin: ring(&config.origin_public_keys)?,
        })
    }
}

/// A running seed.
#[derive(Debug)]
pub struct RunningSeed {
    /// Where the peer wire listens.
    pub quic_address: SocketAddr,
    /// Where the HTTP role listens.
    pub http_address: SocketAddr,
    /// The store (for inspection in tests and tools).
    pub store: Arc<Store>,
    /// The series.
    pub metrics: Metrics,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    peer_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    drain: Duration,
}

impl RunningSeed {
    /// Graceful drain: stop accepting, let in-flight transfers finish within
    /// the drain deadline, stop background tasks.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let deadline = self.drain + Duration::from_secs(3);
        let _ = tokio::time::timeout(deadline, self.peer_task).await;
        let _ = tokio::time::timeout(deadline, self.http_task).await;
        for task in self.background {
            task.abort();
        }
    }

    /// Resolves when a shutdown was requested by [`Self::shutdown`]'s sender.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Starts the seed: loads the manifests of its titles (titles that fail are
/// retried in the background), binds QUIC and HTTP, follows live manifests,
/// registers with the tracker.
pub async fn start(config: &SeedConfig, keys: SeedKeys) -> Result<RunningSeed, ServeError> {
    config.validate()?;
    if keys.origin.is_empty() {
        return Err(ServeError::Keys(
            "no origin public key: manifests could not be verified".to_owned(),
        ));
    }
    let metrics = Metrics::new();
    let origin = origin::Origin::from_config(
        &config.origin,
        Duration::from_millis(config.origin_fetch.timeout_ms),
    )
    .map_err(|e| ServeError::Setup(e.to_string()))?;
    let memory = cache::MemoryCache::new(config.cache.memory_bytes, metrics.clone());
    let disk = match &config.cache.disk_dir {
        Some(dir) => Some(cache::DiskCache::open(
            dir,
            config.cache.disk_bytes,
            metrics.clone(),
        )?),
        None => None,
    };
    let store = Arc::new(Store::new(
        origin,
        keys.origin.clone(),
        config.titles.iter().cloned(),
        memory,
        disk,
        config.origin_fetch.clone(),
        config.live.clone(),
        metrics.clone(),
    ));
    for (title, error) in store.load_titles().await {
        tracing::warn!(%title, %error, "title not loaded yet; retrying in the background");
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let uploads = Arc::new(Semaphore::new(config.capacity.max_concurrent_uploads));

    // Peer wire.
    let identity =
        PeerIdentity::new(&keys.identity).map_err(|e| ServeError::Setup(e.to_string()))?;
    let transport = TransportOptions {
        max_concurrent_requests: config.capacity.max_requests_per_connection.max(1),
        ..TransportOptions::default()
    };
    let server_config = peerwire::server_config(&identity, &transport)
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let endpoint = loaves_wire::bind_endpoint(config.quic_listen, Some(server_config))
        .map_err(|e| ServeError::Setup(format!("binding {}: {e}", config.quic_listen)))?;
    let quic_address = endpoint
        .local_addr()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    if keys.credential.is_none() {
        tracing::warn!("no seed credential configured: peers will refuse this seed's hello");
    }
    let own_hello = match &keys.credential {
        Some(credential) => peerwire::seed_hello(credential.clone()),
        None => peerwire::seed_hello(Vec::new()),
    };
    let egress = (config.capacity.egress_bytes_per_second > 0).then(|| {
        Arc::new(EgressLimiter::new(
            config.capacity.egress_bytes_per_second,
            Duration::from_millis(50),
        ))
    });
    let shared = Arc::new(peer::PeerShared {
        store: store.clone(),
        metrics: metrics.clone(),
        verifier: Arc::new(CredentialVerifier::new(
            keys.license.clone(),
            config.max_clock_skew_s,
        )),
        own_hello,
        limits: Arc::new(Limits::default()),
        uploads: uploads.clone(),
        egress,
        max_egress_backlog: Duration::from_millis(config.capacity.max_egress_backlog_ms),
        connections: Arc::new(Semaphore::new(config.capacity.max_connections)),
        max_connections_per_ip: config.capacity.max_connections_per_ip.max(1),
        per_ip: std::sync::Mutex::new(HashMap::new()),
    });
    let drain = Duration::from_secs(config.drain_timeout_s);
    let peer_task = tokio::spawn(peer::serve(
        endpoint.clone(),
        shared,
        shutdown_rx.clone(),
        drain,
    ));

    // HTTP role.
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| ServeError::Setup(format!("binding {}: {e}", config.http_listen)))?;
    let http_address = listener
        .local_addr()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let router = http::router(http::HttpState {
        store: store.clone(),
        metrics: metrics.clone(),
        uploads,
        draining: draining.clone(),
    });
    let http_task = {
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let server = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(error) = server.await {
                tracing::error!(%error, "HTTP server failed");
            }
        })
    };

    // Live following and registration.
    let mut background = vec![tokio::spawn(store.clone().follow_live(shutdown_rx.clone()))];
    if !config.tracker.addresses.is_empty() {
        match &keys.credential {
            None => tracing::warn!("tracker configured but no seed credential: not registering"),
            Some(credential) => {
                let shards = ShardMap::new(config.tracker.addresses.iter().cloned());
                let addresses = if config.advertise.is_empty() {
                    vec![quic_address.to_string()]
                } else {
                    config.advertise.clone()
                };
                for tracker in shards.shards().to_vec() {
                    // `host:port`, resolved at each (re)connect.
                    let registrar = register::QuicRegistrar::new(
                        endpoint.clone(),
                        tracker.clone(),
                        &identity,
                        credential.clone(),
                    )
                    .map_err(|e| ServeError::Setup(e.to_string()))?;
                    background.push(tokio::spawn(register::registration_loop(
                        registrar,
                        store.clone(),
                        shards.clone(),
                        Some(tracker),
                        register::RegistrationInfo {
                            addresses: addresses.clone(),
                            upload_capacity_bps: config.tracker.upload_capacity_bps,
                        },
                        metrics.clone(),
                        config.capacity.max_concurrent_uploads,
                        Duration::from_secs(config.tracker.announce_interval_s.max(1)),
                        shutdown_rx.clone(),
                    )));
                }
            }
        }
    }
    tracing::info!(%quic_address, %http_address, titles = ?config.titles, "edge seed serving");
    Ok(RunningSeed {
        quic_address,
        http_address,
        store,
        metrics,
        shutdown,
        draining,
        peer_task,
        http_task,
        background,
        drain,
    })
}
