//! Shared fixtures of the serve tests: synthetic packaged titles in the
//! packager's layout, an HTTP origin that counts and can corrupt or delay
//! responses, seeds on 127.0.0.1 port 0, and authorized peer-wire clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use edge_seed::serve::{RunningSeed, SeedConfig, SeedKeys};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::manifest::{MAX_CHUNK_LEN, ManifestWriter, Scheme, SegmentInfo};
use loaves_proto::pb;
use loaves_proto::token::SessionToken;
use loaves_wire::framing::encode_frame;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire::{self, CredentialVerifier, Limits, PeerConnection, TransportOptions};

pub const TITLE: &str = "big-buck";

pub fn license_key() -> SigningKeyPair {
    loaves_testkit::keys::fixed(1)
}
pub fn origin_key() -> SigningKeyPair {
    loaves_testkit::keys::fixed(2)
}
pub fn seed_key() -> SigningKeyPair {
    loaves_testkit::keys::fixed(3)
}

/// Deterministic segment bytes.
pub fn segment_bytes(rendition: &str, sequence: u64, size: usize) -> Vec<u8> {
    let salt = rendition
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    (0..size)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ sequence.wrapping_mul(97) ^ salt) as u8)
        .collect()
}

/// A packaged title being written (VOD: final at once; live: appendable).
pub struct TitleWriter {
    pub root: PathBuf,
    pub title: String,
    writers: HashMap<String, (ManifestWriter, u64)>,
    pub size: usize,
}

impl TitleWriter {
    /// Writes `count` segments of `size` bytes for each rendition.
    pub fn create(
        root: &Path,
        title: &str,
        renditions: &[&str],
        count: u64,
        size: usize,
        live: bool,
    ) -> Self {
        let dir = root.join(title);
        std::fs::create_dir_all(&dir).unwrap();
        let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:7\n");
        let mut writers = HashMap::new();
        for rendition in renditions {
            master.push_str(&format!(
                "#EXT-X-STREAM-INF:BANDWIDTH=1000000\n{rendition}/media.m3u8\n"
            ));
            let rdir = dir.join(rendition);
            std::fs::create_dir_all(&rdir).unwrap();
            let init = format!("init-{rendition}").into_bytes();
            std::fs::write(rdir.join("init.mp4"), &init).unwrap();
            std::fs::write(
                rdir.join("media.m3u8"),
                "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n",
            )
            .unwrap();
            std::fs::write(rdir.join("manifest.lvm"), b"").unwrap();
            let writer = ManifestWriter::new(title, *rendition, &init, Scheme::Cenc, 0);
            writers.insert((*rendition).to_owned(), (writer, 0));
        }
        std::fs::write(dir.join("master.m3u8"), master).unwrap();
        let mut this = Self {
            root: root.to_owned(),
            title: title.to_owned(),
            writers,
            size,
        };
        let names: Vec<String> = renditions.iter().map(|r| (*r).to_owned()).collect();
        for rendition in names {
            this.append(&rendition, count, !live);
        }
        this
    }

    /// Publishes `count` more segments of `rendition` and signs a chunk.
    pub fn append(&mut self, rendition: &str, count: u64, is_final: bool) -> Vec<u64> {
        let rdir = self.root.join(&self.title).join(rendition);
        let (writer, next) = self.writers.get_mut(rendition).unwrap();
        let mut infos = Vec::new();
        let mut sequences = Vec::new();
        for sequence in *next..*next + count {
            let bytes = segment_bytes(rendition, sequence, self.size);
            std::fs::write(rdir.join(format!("seg_{sequence:05}.m4s")), &bytes).unwrap();
            infos.push(SegmentInfo::describe(sequence, 2000, 0, &bytes));
            sequences.push(sequence);
        }
        *next += count;
        let chunk = writer
            .append(&origin_key(), &infos, is_final, UnixSeconds::now())
            .unwrap();
        let mut file = std::fs::read(rdir.join("manifest.lvm")).unwrap();
        file.extend(encode_frame(&chunk, MAX_CHUNK_LEN).unwrap());
        // Publish atomically, as an origin would.
        let temporary = rdir.join(".manifest.tmp");
        std::fs::write(&temporary, &file).unwrap();
        std::fs::rename(&temporary, rdir.join("manifest.lvm")).unwrap();
        sequences
    }

    pub fn segment_path(&self, rendition: &str, sequence: u64) -> PathBuf {
        self.root
            .join(&self.title)
            .join(rendition)
            .join(format!("seg_{sequence:05}.m4s"))
    }
}

/// An HTTP origin over a directory that counts requests per path and can
/// corrupt or delay segment responses.
#[derive(Clone, Default)]
pub struct TestOrigin {
    pub root: PathBuf,
    pub counts: Arc<Mutex<HashMap<String, usize>>>,
    /// Segment responses still to corrupt (flip one byte).
    pub corrupt_next: Arc<AtomicUsize>,
    /// Corrupt every segment response.
    pub corrupt_always: Arc<std::sync::atomic::AtomicBool>,
    /// Delay before each segment response, ms.
    pub delay_ms: Arc<AtomicU64>,
}

impl TestOrigin {
    pub fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub fn segment_count(&self) -> usize {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.ends_with(".m4s"))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn origin_handler(State(origin): State<TestOrigin>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/').to_owned();
    *origin
        .counts
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_insert(0) += 1;
    let is_segment = path.ends_with(".m4s");
    if is_segment {
        let delay = origin.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let Ok(mut bytes) = tokio::fs::read(origin.root.join(&path)).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if is_segment
        && !bytes.is_empty()
        && (origin.corrupt_always.load(Ordering::Relaxed)
            || origin
                .corrupt_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok())
    {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
    }
    bytes.into_response()
}

/// Serves `root` over HTTP on 127.0.0.1 port 0.
pub async fn start_origin(root: &Path) -> (TestOrigin, String) {
    let origin = TestOrigin {
        root: root.to_owned(),
        ..TestOrigin::default()
    };
    let app = axum::Router::new()
        .fallback(origin_handler)
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (origin, format!("http://{address}"))
}

pub fn seed_credential(titles: &[&str]) -> Vec<u8> {
    peerwire::sign_seed_credential(
        &pb::SeedCredentialBody {
            seed_name: "seed-test".into(),
            peer_public_key: seed_key().verifying_key().as_bytes().to_vec(),
            region: "eu".into(),
            isp: "isp".into(),
            titles: titles.iter().map(|t| (*t).to_owned()).collect(),
            not_before: 0,
            expires_at: UnixSeconds::now().0 + 3600,
        },
        &license_key(),
    )
}

pub fn keys() -> SeedKeys {
    let mut license = Keyring::new();
    license.insert(license_key().verifying_key());
    let mut origin = Keyring::new();
    origin.insert(origin_key().verifying_key());
    SeedKeys {
        identity: seed_key(),
        credential: Some(seed_credential(&["*"])),
        license,
        origin,
    }
}

/// A configuration for tests: loopback, port 0, fast retries and polls.
pub fn config(origin: &str, titles: &[&str]) -> SeedConfig {
    let mut config = SeedConfig {
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        origin: origin.to_owned(),
        titles: titles.iter().map(|t| (*t).to_owned()).collect(),
        ..SeedConfig::default()
    };
    config.origin_fetch.retry_backoff_ms = 20;
    config.origin_fetch.timeout_ms = 5000;
    config.live.poll_interval_ms = 100;
    config.drain_timeout_s = 2;
    config
}

pub async fn start_seed(config: &SeedConfig) -> RunningSeed {
    edge_seed::serve::start(config, keys()).await.unwrap()
}

pub fn token_for(
    key: &SigningKeyPair,
    title: &str,
    renditions: &[&str],
    expires_in: i64,
) -> Vec<u8> {
    let now = UnixSeconds::now().0 as i64;
    SessionToken {
        session_id: SessionId([7; 16]),
        account: "acct".into(),
        title: title.into(),
        renditions: renditions.iter().map(|r| (*r).to_owned()).collect(),
        peer_key: key.verifying_key(),
        region: "eu".into(),
        isp: "isp".into(),
        not_before: UnixSeconds((now - 3600) as u64),
        expires_at: UnixSeconds((now + expires_in) as u64),
    }
    .sign(&license_key())
}

pub fn verifier() -> CredentialVerifier {
    let mut ring = Keyring::new();
    ring.insert(license_key().verifying_key());
    CredentialVerifier::new(ring, 30)
}

pub fn limits() -> Limits {
    Limits::default()
}

/// A client endpoint on 127.0.0.1.
pub fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Connects as the holder of `key` with `hello`.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    seed: SocketAddr,
    key: &SigningKeyPair,
    hello: &pb::PeerHello,
) -> Result<PeerConnection, peerwire::PeerWireError> {
    let identity = PeerIdentity::new(key).unwrap();
    let config = peerwire::client_config(&identity, &TransportOptions::default()).unwrap();
    peerwire::connect(
        endpoint,
        seed,
        config,
        hello,
        &verifier(),
        UnixSeconds::now(),
        &limits(),
    )
    .await
}

/// An authorized viewer of `title` (renditions "720p" and "360p").
pub async fn viewer(seed: SocketAddr, title: &str, n: u8) -> PeerConnection {
    let key = loaves_testkit::keys::fixed(100u8.wrapping_add(n));
    let hello = peerwire::viewer_hello(
        token_for(&key, title, &["720p", "360p"], 600),
        title,
        "720p",
    );
    connect_with(&client_endpoint(), seed, &key, &hello)
        .await
        .unwrap()
}

/// Verified manifest of a rendition as the test wrote it.
pub fn manifest(root: &Path, title: &str, rendition: &str) -> loaves_proto::manifest::Manifest {
    let file = std::fs::read(root.join(title).join(rendition).join("manifest.lvm")).unwrap();
    let frames = edge_seed::package::read_manifest_frames(&file).unwrap();
    let mut ring = Keyring::new();
    ring.insert(origin_key().verifying_key());
    loaves_proto::manifest::Manifest::from_encoded_chunks(&ring, frames.iter().map(Vec::as_slice))
        .unwrap()
}
