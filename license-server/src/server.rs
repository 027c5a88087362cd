//! Wiring: listeners, services, background sweeping and graceful shutdown.
//!
//! [`start`] binds every listener (port 0 works: tests read the bound
//! addresses back), spawns the servers and returns a [`RunningServer`].
//! [`RunningServer::shutdown`] stops accepting, lets in-flight requests
//! finish within `limits.shutdown_grace_s`, then closes the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loaves_grpc::key_service_server::KeyServiceServer;
use loaves_grpc::license_service_server::LicenseServiceServer;
use loaves_http::HttpServer;
use loaves_http::tls::TlsIncoming;
use loaves_proto::entitlement::EntitlementVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, MetricsError};
use crate::precheck::PrecheckLayer;
use crate::service::{AdmissionGate, CoreParts, GrpcKeyService, GrpcLicenseService, LicenseCore};
use crate::setup::{Material, SetupError};
use crate::store::{Store, StoreError};
use crate::tls::{self, TlsError};

/// How long an over session row is kept before the sweeper deletes it.
const SESSION_RETENTION_S: u64 = 24 * 3600;
/// How often the sweeper runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Key material.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// TLS identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Metrics registration.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The TLS front end of the gRPC listener could not start.
    #[error("gRPC listener: {0}")]
    TlsFrontEnd(#[from] loaves_http::tls::TlsError),
    /// The limits of an HTTP listener are inconsistent.
    #[error("HTTP listener limits: {0}")]
    HttpLimits(#[from] loaves_http::LimitsError),
    /// A server task panicked or was cancelled.
    #[error("server task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound gRPC (TLS) address.
    pub grpc_addr: SocketAddr,
    /// Bound `/metrics` + `/healthz` address.
    pub metrics_addr: SocketAddr,
    /// Bound ClearKey address, if enabled.
    pub clearkey_addr: Option<SocketAddr>,
    /// The TLS certificate chain (PEM) clients should trust.
    pub tls_cert_pem: String,
    /// SHA-256 fingerprint of the TLS certificate.
    pub tls_fingerprint: String,
    /// The shared core (store, metrics...).
    pub core: Arc<LicenseCore>,
    shutdown: watch::Sender<bool>,
    gate: AdmissionGate,
    grace: Duration,
    tasks: Vec<JoinHandle<Result<(), ServerError>>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    // Either the flag flips or the sender is gone: both mean stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Loads key material per `config` (and the environment) and starts.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let material = Material::load(&config)?;
    start_with(config, material, clock).await
}

/// Starts a server with the given key material.
pub async fn start_with(
    config: Config,
    material: Material,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, ServerError> {
    config.validate()?;
    for path in &material.generated {
        tracing::warn!(path = %path.display(), "generated development key material");
    }
    if let Some(signer) = &material.dev_entitlement_signer {
        tracing::warn!(
            signer = %signer.display(),
            "trusting the development entitlement signer; set keys.entitlement_public_keys in production"
        );
    }
    let tls = tls::load(&config.tls)?;
    if tls.generated {
        tracing::warn!(
            sha256 = %tls.fingerprint,
            "serving with a generated self-signed development certificate"
        );
    }

    let store_url = config.store_url().map_err(SetupError::from)?;
    let store = Store::open(
        &store_url,
        config.store.max_connections,
        material.kek.clone(),
    )
    .await?;
    tracing::info!(backend = ?store.backend(), "store open");

    let metrics = Metrics::new()?;
    let entitlements =
        EntitlementVerifier::new(material.entitlement_keys.iter().copied().collect())
            .with_max_clock_skew(config.policy.max_clock_skew_s);
    let core = Arc::new(LicenseCore::new(CoreParts {
        store: store.clone(),
        catalog: Catalog::new(&config.titles),
        policy: config.policy.clone(),
        max_keys_per_request: config.limits.max_keys_per_request,
        signing_key: material.signing_key.clone(),
        entitlements,
        admin_token: material.admin_token.clone(),
        clock: clock.clone(),
        metrics,
    }));
    tracing::info!(key_id = %material.signing_key.key_id(), "license signing key loaded");

    let gate = AdmissionGate::new(
        config.limits.max_in_flight,
        Duration::from_millis(config.limits.admission_timeout_ms),
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // gRPC over TLS.
    let grpc_listener = bind(config.listen).await?;
    let grpc_addr = local_addr(&grpc_listener, config.listen)?;
    let max = config.limits.max_request_bytes;
    let license = LicenseServiceServer::new(GrpcLicenseService::new(core.clone(), gate.clone()))
        .max_decoding_message_size(max);
    let keys = KeyServiceServer::new(GrpcKeyService::new(core.clone(), gate.clone()))
        .max_decoding_message_size(max);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LicenseServiceServer<GrpcLicenseService>>()
        .await;
    health_reporter
        .set_serving::<KeyServiceServer<GrpcKeyService>>()
        .await;
    // TLS is terminated by the front end, which caps connections and
    // bounds the handshake; tonic gets the handshaken streams.
    let incoming = TlsIncoming::builder(tls.server_config)
        .limits(config.limits.grpc.tls_limits())
        .metrics(core.metrics.grpc_connections.clone())
        .serve(grpc_listener)?;
    let router = config
        .limits
        .grpc
        .grpc_limits()
        .apply(Server::builder())
        // Before tonic decodes: size and protobuf checks with gRPC's
        // statuses, counted (crate::precheck).
        .layer(PrecheckLayer::new(max, core.metrics.clone()))
        .add_service(health_service)
        .add_service(license)
        .add_service(keys);
    let rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            wait_for(rx).await;
            health_reporter
                .set_not_serving::<LicenseServiceServer<GrpcLicenseService>>()
                .await;
            health_reporter
                .set_not_serving::<KeyServiceServer<GrpcKeyService>>()
                .await;
        };
        router
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(ServerError::from)
    }));

    let grace = Duration::from_secs(config.limits.shutdown_grace_s);
    let http_limits = config.limits.http.limits(grace);

    // Operators' HTTP.
    let metrics_listener = bind(config.metrics_listen).await?;
    let metrics_addr = local_addr(&metrics_listener, config.metrics_listen)?;
    let rx = shutdown_rx.clone();
    let ops = HttpServer::builder(crate::http::ops_router(core.clone()))
        .limits(http_limits.clone())
        .metrics(core.metrics.ops_connections.clone())
        .build()?;
    tasks.push(tokio::spawn(async move {
        ops.run(metrics_listener, wait_for(rx)).await;
        Ok(())
    }));

    // ClearKey HTTP.
    let clearkey_addr = match config.clearkey_listen {
        None => None,
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local_addr(&listener, addr)?;
            let rx = shutdown_rx.clone();
            let clearkey = HttpServer::builder(crate::http::clearkey_router(core.clone()))
                .limits(http_limits)
                .metrics(core.metrics.clearkey_connections.clone())
                .build()?;
            tasks.push(tokio::spawn(async move {
                clearkey.run(listener, wait_for(rx)).await;
                Ok(())
            }));
            Some(bound)
        }
    };

    // Sweeper: forgets expired replay markers and long-over sessions.
    let rx = shutdown_rx.clone();
    let sweep_core = core.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        let stop = wait_for(rx);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tick.tick() => {
                    let now = sweep_core.now();
                    match sweep_core.store.sweep(now, SESSION_RETENTION_S).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(rows = n, "swept"),
                        Err(e) => tracing::warn!(error = %e, "sweep failed"),
                    }
                }
            }
        }
    }));

    tracing::info!(
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        clearkey = ?clearkey_addr,
        "license server listening"
    );
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        clearkey_addr,
        tls_cert_pem: tls.cert_pem,
        tls_fingerprint: tls.fingerprint,
        core,
        shutdown,
        gate,
        grace,
        tasks,
    })
}

impl RunningServer {
    /// Stops accepting, drains in-flight requests (bounded by the grace
    /// period; stragglers are cut), and closes the store.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        tracing::info!("shutting down: draining in-flight requests");
        let _ = self.shutdown.send(true);
        let mut first_error = None;
        let deadline = tokio::time::Instant::now() + self.grace;
        for task in self.tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Ok(Err(e)) if e.is_cancelled() => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(ServerError::Task(e));
                }
                Err(_) => {
                    tracing::warn!("grace period over: cutting remaining connections");
                    abort.abort();
                }
            }
        }
        self.gate.close();
        self.core.store.close().await;
        tracing::info!("stopped");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
