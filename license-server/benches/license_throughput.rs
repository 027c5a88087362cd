//! Licenses per second over TLS with 64 concurrent clients, with p50 / p99
//! latency, beside a bare tonic unary service with the same TLS set-up
//! measured in the same run.
//!
//! ```text
//! cargo bench -p license-server --bench license_throughput
//! ```
//!
//! Both servers run in this process on 127.0.0.1 with the same certificate
//! (rcgen, ECDSA P-256), the same tonic/rustls configuration and the same
//! request and response messages; the bare service answers every
//! `AcquireLicense` with a license prepared in advance, doing no work. Each
//! of the 64 clients has its own TLS connection and keeps one request in
//! flight. Every license is a real acquisition: entitlement verified, session
//! admitted in the SQLite store (the embedded default), three content keys
//! wrapped with HPKE, token and license signed.
//!
//! The process CPU time per request (servers and clients together, from
//! `/proc/self/stat`) is printed too: unlike the rates it does not depend on
//! what else the machine is running.
//!
//! Environment: `BENCH_SECONDS` (measured seconds per service, default 5),
//! `BENCH_CLIENTS` (default 64).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use license_server::config::Config;
use license_server::{SystemClock, start};
use loaves_grpc::license_service_client::LicenseServiceClient;
use loaves_grpc::license_service_server::{LicenseService, LicenseServiceServer};
use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::Entitlement;
use loaves_proto::keys::random_array;
use loaves_proto::pb;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

/// Most requests one client sends in one measurement (a bound in count as
/// well as in time).
const MAX_REQUESTS_PER_CLIENT: usize = 100_000;
const WARM_UP: Duration = Duration::from_secs(1);

/// The bare service: a fixed answer, no work.
#[derive(Clone)]
struct Bare(pb::LicenseResponse);

#[tonic::async_trait]
impl LicenseService for Bare {
    async fn acquire_license(
        &self,
        _request: Request<pb::AcquireLicenseRequest>,
    ) -> Result<Response<pb::LicenseResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    async fn renew_license(
        &self,
        _request: Request<pb::RenewLicenseRequest>,
    ) -> Result<Response<pb::LicenseResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn release_session(
        &self,
        _request: Request<pb::ReleaseSessionRequest>,
    ) -> Result<Response<pb::ReleaseSessionResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

struct Run {
    name: &'static str,
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU time of this whole process (servers and clients) in the window.
    cpu: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_request(&self) -> Duration {
        self.cpu / u32::try_from(self.requests.max(1)).unwrap_or(u32::MAX)
    }
}

/// User + system CPU time of this process, from /proc (Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

async fn channel(addr: std::net::SocketAddr, cert_pem: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(cert_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// 64 clients, one connection each, one request in flight each; returns the
/// measured window only.
async fn measure(
    name: &'static str,
    addr: std::net::SocketAddr,
    cert_pem: &str,
    entitlements: &[Vec<u8>],
    seconds: u64,
) -> Run {
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now() + Duration::from_millis(500);
    let measure_from = start + WARM_UP;
    let measure_until = measure_from + Duration::from_secs(seconds);
    let cpu_probe = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = process_cpu();
        tokio::time::sleep_until(measure_until.into()).await;
        process_cpu().saturating_sub(before)
    });
    for entitlement in entitlements {
        let mut client = LicenseServiceClient::new(channel(addr, cert_pem).await);
        let entitlement = entitlement.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut latencies = Vec::new();
            for _ in 0..MAX_REQUESTS_PER_CLIENT {
                let request = pb::AcquireLicenseRequest {
                    entitlement: entitlement.clone(),
                    title: "demo".into(),
                    // A fresh session key per acquisition (any random 32
                    // bytes are a valid X25519 public key).
                    client_hpke_public_key: random_array::<32>().unwrap().to_vec(),
                    peer_public_key: PEER_KEY.to_vec(),
                    key_periods: None,
                    renditions: vec![],
                    region: "eu-west".into(),
                    isp: "isp-a".into(),
                };
                let sent = Instant::now();
                if sent >= measure_until {
                    break;
                }
                client.acquire_license(request).await.expect("license");
                if sent >= measure_from {
                    latencies.push(sent.elapsed());
                }
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Run {
        name,
        requests: latencies.len(),
        elapsed: Duration::from_secs(seconds),
        p50: at(0.50),
        p99: at(0.99),
        cpu: cpu_probe.await.unwrap(),
    }
}

/// A valid Ed25519 public key for the token (the bench never signs renewals).
static PEER_KEY: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(|| {
    *loaves_proto::keys::SigningKeyPair::from_seed(&[42; 32])
        .verifying_key()
        .as_bytes()
});

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        // One certificate for both servers.
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
        std::fs::write(path.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(path.join("key.pem"), &key_pem).unwrap();
        let signin = loaves_proto::keygen::write_key_pair(path, "signin", false).unwrap();
        let signer = loaves_proto::keygen::read_signing_key(&signin.private_key).unwrap();
        std::fs::write(path.join("admin"), "bench-admin").unwrap();
        // A secret file must be private to its owner.
        std::fs::set_permissions(
            path.join("admin"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();

        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            clearkey_listen: None,
            data_dir: path.join("data"),
            ..Config::default()
        };
        config.tls.cert_file = Some(path.join("cert.pem"));
        config.tls.key_file = Some(path.join("key.pem"));
        config.keys.entitlement_public_keys = vec![signin.public_key.clone()];
        config.keys.admin_token_file = Some(path.join("admin"));
        config.policy.max_concurrent_streams_cap = 100_000;
        // Every client connects from 127.0.0.1: the per-address cap would
        // refuse the 65th.
        config.limits.grpc.max_connections_per_ip = config.limits.grpc.max_connections;
        let server = start(config, Arc::new(SystemClock)).await.unwrap();

        // One account per client, each allowed far more streams than the
        // run opens, so every acquisition is admitted.
        let now = UnixSeconds::now();
        let entitlements: Vec<Vec<u8>> = (0..clients)
            .map(|i| {
                Entitlement {
                    account: format!("bench-{i}"),
                    titles: vec!["*".into()],
                    max_concurrent_streams: 100_000,
                    renditions: vec![],
                    max_height: 0,
                    issued_at: now,
                    expires_at: now.plus(3600),
                }
                .sign(&signer)
            })
            .collect();

        // A real license, for the bare service to send back.
        let mut client = LicenseServiceClient::new(channel(server.grpc_addr, &cert_pem).await);
        let sample = client
            .acquire_license(pb::AcquireLicenseRequest {
                entitlement: entitlements[0].clone(),
                title: "demo".into(),
                client_hpke_public_key: random_array::<32>().unwrap().to_vec(),
                peer_public_key: PEER_KEY.to_vec(),
                key_periods: None,
                renditions: vec![],
                region: "eu-west".into(),
                isp: "isp-a".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let response_len = prost::Message::encoded_len(&sample);

        let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = bare_listener.local_addr().unwrap();
        let bare = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem)))
            .unwrap()
            .add_service(
                LicenseServiceServer::new(Bare(sample)).max_decoding_message_size(64 * 1024),
            );
        let incoming =
            tonic::transport::server::TcpIncoming::from(bare_listener).with_nodelay(Some(true));
        let bare_task = tokio::spawn(bare.serve_with_incoming(incoming));

        let bare_run = measure("bare tonic unary (same TLS, fixed answer)", bare_addr, &cert_pem, &entitlements, seconds).await;
        let license_run = measure("license server AcquireLicense", server.grpc_addr, &cert_pem, &entitlements, seconds).await;

        println!();
        println!(
            "{clients} clients, {seconds} s measured per service after {} s warm-up, {} cores, response {response_len} bytes",
            WARM_UP.as_secs(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!();
        println!("| service | requests/s | p50 | p99 | process CPU per request |");
        println!("|---|---:|---:|---:|---:|");
        for run in [&bare_run, &license_run] {
            println!(
                "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.0} µs |",
                run.name,
                run.rate(),
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.cpu_per_request().as_secs_f64() * 1e6
            );
        }
        println!();
        println!(
            "license / bare rate: {:.2}",
            license_run.rate() / bare_run.rate()
        );
        bare_task.abort();
        server.shutdown().await.unwrap();
    });
}
