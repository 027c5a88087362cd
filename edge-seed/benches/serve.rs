//! Segment serving throughput: the edge seed over QUIC (peer wire, mutual
//! TLS, session tokens) beside nginx over HTTPS serving the same files, in
//! the same run, on 127.0.0.1.
//!
//! 100 concurrent connections each fetch 2 MB segments back to back for a
//! fixed time; we report aggregate throughput, fetches per second and the
//! p50 / p99 fetch time. The seed serves from its memory cache (warmed
//! first) on its own 2-thread runtime; nginx runs with 2 workers; the load
//! generator has its own 2-thread runtime. Everything shares the machine's
//! cores, so the figures are ratios, not absolutes.
//!
//! ```text
//! cargo bench -p edge-seed --bench serve            # defaults
//! BENCH_SECONDS=20 BENCH_ROUNDS=5 BENCH_CONNECTIONS=100 cargo bench -p edge-seed --bench serve
//! ```
//! nginx must be installed (`apt-get install nginx`); without it the nginx
//! row is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edge_seed::serve::{SeedConfig, SeedKeys};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::manifest::{MAX_CHUNK_LEN, ManifestWriter, Scheme, SegmentInfo};
use loaves_proto::pb;
use loaves_proto::token::SessionToken;
use loaves_wire::framing::encode_frame;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire::{self, CredentialVerifier, Limits, TransportOptions};

const TITLE: &str = "bench";
const RENDITION: &str = "720p";
const SEGMENT_SIZE: usize = 2_000_000;
const SEGMENTS: u64 = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_media(root: &Path, origin: &SigningKeyPair) {
    let dir = root.join(TITLE).join(RENDITION);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        root.join(TITLE).join("master.m3u8"),
        format!("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=8000000\n{RENDITION}/media.m3u8\n"),
    )
    .unwrap();
    let init = b"init".to_vec();
    std::fs::write(dir.join("init.mp4"), &init).unwrap();
    let mut infos = Vec::new();
    for sequence in 0..SEGMENTS {
        let bytes: Vec<u8> = (0..SEGMENT_SIZE)
            .map(|i| ((i as u64).wrapping_mul(2_654_435_761) ^ sequence) as u8)
            .collect();
        std::fs::write(dir.join(format!("seg_{sequence:05}.m4s")), &bytes).unwrap();
        infos.push(SegmentInfo::describe(sequence, 4000, 0, &bytes));
    }
    let mut writer = ManifestWriter::new(TITLE, RENDITION, &init, Scheme::Cenc, 0);
    let chunk = writer
        .append(origin, &infos, true, UnixSeconds::now())
        .unwrap();
    std::fs::write(
        dir.join("manifest.lvm"),
        encode_frame(&chunk, MAX_CHUNK_LEN).unwrap(),
    )
    .unwrap();
}

#[derive(Debug, Default)]
struct Result {
    bytes: u64,
    fetches: u64,
    errors: u64,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

impl Result {
    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        self.latencies_ms.sort_by(f64::total_cmp);
        let index = ((self.latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ms[index]
    }

    fn merge(&mut self, other: Result) {
        self.bytes += other.bytes;
        self.fetches += other.fetches;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies_ms.extend(other.latencies_ms);
    }

    fn mbytes_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Runs `connections` workers, each calling `fetch(worker, n)` until the
/// deadline; `fetch` returns the body length.
async fn load<F, Fut>(connections: usize, duration: Duration, fetch: F) -> Result
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::result::Result<usize, String>> + Send,
{
    let fetch = Arc::new(fetch);
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..connections {
        let fetch = fetch.clone();
        let stop = stop.clone();
        let bytes = bytes.clone();
        let errors = errors.clone();
        let first_errors = first_errors.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = worker as u64;
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                match fetch(worker, n % SEGMENTS).await {
                    Ok(len) if len == SEGMENT_SIZE => {
                        latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                        bytes.fetch_add(len as u64, Ordering::Relaxed);
                    }
                    other => {
                        {
                            let mut first = first_errors.lock().unwrap();
                            if first.len() < 5 {
                                first.push(format!("{other:?} after {:?}", at.elapsed()));
                            }
                        }
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                n += 1;
            }
            latencies
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut result = Result::default();
    for worker in workers {
        result.latencies_ms.extend(worker.await.unwrap());
    }
    result.elapsed = started.elapsed();
    result.bytes = bytes.load(Ordering::Relaxed);
    result.fetches = result.latencies_ms.len() as u64;
    result.errors = errors.load(Ordering::Relaxed);
    for error in first_errors.lock().unwrap().iter() {
        eprintln!("fetch error: {error}");
    }
    result
}

async fn bench_quic(
    seed: SocketAddr,
    license: &SigningKeyPair,
    connections: usize,
    duration: Duration,
) -> Result {
    let mut ring = Keyring::new();
    ring.insert(license.verifying_key());
    let verifier = CredentialVerifier::new(ring, 30);
    let options = TransportOptions::default();
    // Client sockets (real viewers would each have their own).
    let sockets = env_or("BENCH_CLIENT_SOCKETS", 20).max(1);
    let endpoints: Vec<quinn::Endpoint> = (0..sockets)
        .map(|_| loaves_wire::bind_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap())
        .collect();
    let mut peers = Vec::new();
    for n in 0..connections {
        let mut key_seed = [7u8; 32];
        key_seed[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
        let key = SigningKeyPair::from_seed(&key_seed);
        let token = SessionToken {
            session_id: SessionId([n as u8; 16]),
            account: format!("viewer-{n}"),
            title: TITLE.into(),
            renditions: vec![RENDITION.into()],
            peer_key: key.verifying_key(),
            region: String::new(),
            isp: String::new(),
            not_before: UnixSeconds::now().plus(0),
            expires_at: UnixSeconds::now().plus(3600),
        }
        .sign(license);
        let identity = PeerIdentity::new(&key).unwrap();
        let config = peerwire::client_config(&identity, &options).unwrap();
        let hello = peerwire::viewer_hello(token, TITLE, RENDITION);
        let peer = peerwire::connect(
            &endpoints[n % endpoints.len()],
            seed,
            config,
            &hello,
            &verifier,
            UnixSeconds::now(),
            &Limits::default(),
        )
        .await
        .unwrap();
        peers.push(peer.connection);
    }
    let peers = Arc::new(peers);
    let limits = Arc::new(Limits::default());
    let result = load(connections, duration, move |worker, sequence| {
        let connection = peers[worker].clone();
        let limits = limits.clone();
        async move {
            peerwire::request_segment(&connection, RENDITION, sequence, None, &limits)
                .await
                .map(|b| b.len())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    result
}

fn https_client(cert_der: &[u8]) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

async fn bench_https(
    base: String,
    cert_der: Vec<u8>,
    connections: usize,
    duration: Duration,
) -> Result {
    // One client (one pool, one TLS connection kept alive) per worker.
    let clients: Arc<Vec<reqwest::Client>> =
        Arc::new((0..connections).map(|_| https_client(&cert_der)).collect());
    // Open every connection before the clock starts.
    for client in clients.iter() {
        let _ = client
            .get(format!("{base}/{TITLE}/{RENDITION}/init.mp4"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let base = Arc::new(base);
    load(connections, duration, move |worker, sequence| {
        let client = clients[worker].clone();
        let url = format!("{base}/{TITLE}/{RENDITION}/seg_{sequence:05}.m4s");
        async move {
            let response = client.get(url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(response.status().to_string());
            }
            response
                .bytes()
                .await
                .map(|b| b.len())
                .map_err(|e| e.to_string())
        }
    })
    .await
}

struct Nginx {
    child: std::process::Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(
    prefix: &Path,
    root: &Path,
    cert_pem: &str,
    key_pem: &str,
    port: u16,
) -> Option<Nginx> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    std::fs::write(prefix.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(prefix.join("key.pem"), key_pem).unwrap();
    let conf = format!(
        r#"worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    open_file_cache max=1000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        ssl_protocols TLSv1.3;
        root {root};
    }}
}}
"#,
        prefix = prefix.display(),
        root = root.display(),
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new(binary)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .ok()?;
    // Wait for the port.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("nginx did not start");
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nginx { child })
}

fn report(name: &str, result: &mut Result) {
    let p50 = result.percentile(0.50);
    let p99 = result.percentile(0.99);
    println!(
        "| {name} | {:.0} MB/s ({:.2} Gbit/s) | {:.0} | {:.1} ms | {:.1} ms | {} |",
        result.mbytes_per_s(),
        result.mbytes_per_s() * 8.0 / 1000.0,
        result.fetches as f64 / result.elapsed.as_secs_f64(),
        p50,
        p99,
        result.errors
    );
}

fn main() {
    edge_seed::serve::origin::install_crypto_provider();
    let seconds = env_or("BENCH_SECONDS", 20);
    let connections = env_or("BENCH_CONNECTIONS", 100) as usize;
    let duration = Duration::from_secs(seconds);
    let media = tempfile::tempdir().unwrap();
    let license = SigningKeyPair::from_seed(&[1; 32]);
    let origin = SigningKeyPair::from_seed(&[2; 32]);
    let seed_key = SigningKeyPair::from_seed(&[3; 32]);
    write_media(media.path(), &origin);

    // The seed, on its own runtime.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = SeedConfig {
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        origin: media.path().display().to_string(),
        titles: vec![TITLE.into()],
        ..SeedConfig::default()
    };
    // Every benchmark client comes from 127.0.0.1.
    config.capacity.max_connections_per_ip = config.capacity.max_connections;
    let credential = peerwire::sign_seed_credential(
        &pb::SeedCredentialBody {
            seed_name: "bench-seed".into(),
            peer_public_key: seed_key.verifying_key().as_bytes().to_vec(),
            region: String::new(),
            isp: String::new(),
            titles: vec!["*".into()],
            not_before: 0,
            expires_at: UnixSeconds::now().plus(3600).0,
        },
        &license,
    );
    let mut license_ring = Keyring::new();
    license_ring.insert(license.verifying_key());
    let mut origin_ring = Keyring::new();
    origin_ring.insert(origin.verifying_key());
    let keys = SeedKeys {
        identity: seed_key,
        credential: Some(credential),
        license: license_ring,
        origin: origin_ring,
    };
    let seed = server_runtime
        .block_on(edge_seed::serve::start(&config, keys))
        .unwrap();
    let quic_address = seed.quic_address;

    // Load generator.
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "edge-seed serve benchmark: {connections} connections, {} MB segments, {seconds} s per server in interleaved rounds, {} cores",
        SEGMENT_SIZE / 1_000_000,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Warm the seed's cache (the benchmark measures serving, not pulling).
    client_runtime.block_on(async {
        let mut warm = bench_quic(quic_address, &license, 1, Duration::from_millis(1500)).await;
        assert!(warm.errors == 0, "warm-up failed");
        let _ = warm.percentile(0.5);
    });
    // nginx, same files, HTTPS.
    let cert = self_signed_localhost();
    let prefix = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let nginx = start_nginx(prefix.path(), media.path(), &cert.0, &cert.1, port);
    // Interleaved rounds, so that load from elsewhere on the machine falls
    // on both servers alike.
    let rounds = env_or("BENCH_ROUNDS", 5).max(1);
    let round = duration / u32::try_from(rounds).unwrap_or(1);
    let mut quic = Result::default();
    let mut https = nginx.as_ref().map(|_| Result::default());
    for _ in 0..rounds {
        quic.merge(client_runtime.block_on(bench_quic(quic_address, &license, connections, round)));
        if let Some(https) = https.as_mut() {
            https.merge(client_runtime.block_on(bench_https(
                format!("https://localhost:{port}"),
                cert.2.clone(),
                connections,
                round,
            )));
        }
    }
    drop(nginx);

    println!();
    println!("| server | throughput | fetches/s | p50 fetch | p99 fetch | errors |");
    println!("|---|---|---|---|---|---|");
    report("edge seed, QUIC peer wire", &mut quic);
    if let Some(https) = https.as_mut() {
        report("nginx 1.22, HTTPS (HTTP/1.1, TLS 1.3)", https);
        println!();
        println!(
            "seed / nginx throughput: {:.2}",
            quic.mbytes_per_s() / https.mbytes_per_s()
        );
    } else {
        println!("(nginx not installed: row skipped)");
    }
    server_runtime.block_on(seed.shutdown());
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM, cert DER).
fn self_signed_localhost() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}
