//! The local stack for the SDK's end-to-end tests, all on 127.0.0.1 and all
//! real: the license server (gRPC over TLS, ClearKey over HTTP), the tracker
//! (QUIC), the packaged sample (edge-seed's packager, `cenc`) served by an
//! HTTP origin with byte ranges, and SDK viewers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edge_seed::keysource::{GrpcKeySource, KeyRequest, KeySource, TrackKey};
use edge_seed::{PackageOptions, package};
use license_server::config::{Config, RenditionConfig, TitleConfig};
use license_server::{ManualClock, RunningServer};
use loaves_client_sdk::{Loaves, LoavesBuilder, RenditionName, Upload};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::Scheme;
use loaves_testkit::files::write_private;
use loaves_testkit::metrics::Exposition;
use loaves_wire::identity::PeerIdentity;

pub const TITLE: &str = "sample";

/// A rendition name (test literals are valid).
pub fn r(name: &str) -> RenditionName {
    RenditionName::new(name).unwrap()
}
pub const ADMIN: &str = "sdk-test-admin";

/// How a client reaches `license` (its development certificate, issued
/// for `localhost`), trusting `trusted` for what it signs.
pub fn license_client_config(
    license: &RunningServer,
    trusted: Keyring,
) -> loaves_client_sdk::license::LicenseServerConfig {
    loaves_client_sdk::license::LicenseServerConfig {
        url: Some(format!("https://{}", license.grpc_addr).parse().unwrap()),
        ca_pem: Some(license.tls_cert_pem.clone()),
        tls_server_name: Some("localhost".into()),
        trusted_keys: trusted,
        request_timeout: Duration::from_secs(10),
    }
}

/// A player's ClearKey license request for `kid` (base64url) through the
/// session's endpoint: the status and the body.
pub async fn clearkey_request(session: &loaves_client_sdk::Session, kid: &str) -> (u16, String) {
    let answer = reqwest::Client::new()
        .post(format!("http://{}/clearkey/license", session.player_addr()))
        .body(format!("{{\"kids\":[\"{kid}\"],\"type\":\"temporary\"}}"))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// Runs an ffmpeg command ending in `-f framemd5 -`: the frame lines of its
/// output (comment lines dropped).
pub fn framemd5(command: &mut std::process::Command) -> Vec<String> {
    let output = command.output().unwrap();
    loaves_testkit::process::assert_success(&format!("{command:?}"), &output)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Whether ffmpeg is there (under CI it must be).
pub fn have_ffmpeg() -> bool {
    loaves_testkit::process::have_tool(
        "ffmpeg",
        &["-version"],
        "scripts/test.d/ffmpeg.sh installs it",
    )
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub license: RunningServer,
    pub signin: SigningKeyPair,
    pub origin_key: SigningKeyPair,
    pub packaged: PathBuf,
    pub cdn: SocketAddr,
    /// Requests the CDN origin answered so far.
    pub cdn_requests: Arc<std::sync::atomic::AtomicU64>,
    pub tracker: Option<tracker::server::RunningTracker>,
    /// Signs seed credentials; trusted by the tracker and the viewers next
    /// to the license server's key.
    pub operator: SigningKeyPair,
    pub seed: Option<edge_seed::serve::RunningSeed>,
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-seed/testdata/sample")
}

/// The license server's key source, as the packager uses it.
fn key_source(license: &RunningServer) -> GrpcKeySource {
    GrpcKeySource::new(
        format!("https://{}", license.grpc_addr),
        Some(ADMIN.to_owned()),
        Some(license.tls_cert_pem.clone().into_bytes()),
    )
}

pub async fn stack(with_tracker: bool) -> Stack {
    stack_with(with_tracker, Scheme::Cenc).await
}

/// The stack with the sample packaged under `scheme`.
pub async fn stack_with(with_tracker: bool, scheme: Scheme) -> Stack {
    stack_from(with_tracker, scheme, sample_dir().join("master.m3u8")).await
}

/// Short-lived session tokens on real clocks, for sessions that outlive
/// several of them: the license server renews every `renewal_s` with
/// `grace_s` of grace (a token lives `renewal_s + grace_s`), on the system
/// clock, and nobody tolerates clock skew (an expired token is refused at
/// once). Viewers of this stack must also set
/// `credential_clock_skew(Duration::ZERO)`.
#[derive(Debug, Clone, Copy)]
pub struct ShortTokens {
    pub renewal_s: u32,
    pub grace_s: u32,
}

/// The stack serving `input` (an HLS master playlist or a directory of
/// clear CMAF renditions) packaged under `scheme`.
pub async fn stack_from(with_tracker: bool, scheme: Scheme, input: PathBuf) -> Stack {
    stack_built(with_tracker, scheme, input, None).await
}

/// The sample with a tracker and [`ShortTokens`].
pub async fn stack_with_short_tokens(tokens: ShortTokens) -> Stack {
    stack_built(
        true,
        Scheme::Cenc,
        sample_dir().join("master.m3u8"),
        Some(tokens),
    )
    .await
}

async fn stack_built(
    with_tracker: bool,
    scheme: Scheme,
    input: PathBuf,
    short_tokens: Option<ShortTokens>,
) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    // The license server, on the real clock (peers check tokens with it).
    // Secret files must be private to their owner.
    for (name, value) in [("kek", "07".repeat(32)), ("admin-token", ADMIN.to_owned())] {
        write_private(&dir.path().join(name), value);
    }
    let signin = loaves_proto::keygen::write_key_pair(dir.path(), "signin", false).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        clearkey_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.keys.kek_file = Some(dir.path().join("kek"));
    config.keys.admin_token_file = Some(dir.path().join("admin-token"));
    config.keys.entitlement_public_keys = vec![signin.public_key.clone()];
    let rendition = |name: &str, track_type: &str, height| RenditionConfig {
        name: name.to_owned(),
        track_type: track_type.to_owned(),
        height,
    };
    let mut title = TitleConfig::demo();
    title.id = TITLE.into();
    title.renditions = vec![
        rendition("audio", "audio", 0),
        rendition("video_360p", "sd", 360),
        rendition("video_720p", "hd", 720),
    ];
    config.titles = vec![title];
    let license = match short_tokens {
        Some(tokens) => {
            config.policy.renewal_interval_s = tokens.renewal_s;
            config.policy.renewal_grace_s = tokens.grace_s;
            config.policy.max_clock_skew_s = 0;
            license_server::start(config, Arc::new(license_server::SystemClock))
                .await
                .unwrap()
        }
        None => {
            let clock = ManualClock::new(UnixSeconds::now());
            license_server::start(config, Arc::new(clock))
                .await
                .unwrap()
        }
    };
    let signin = loaves_proto::keygen::read_signing_key(&signin.private_key).unwrap();
    // Package the committed sample with cenc, keys from the license
    // server's key service (a blocking client: its own thread).
    let origin_key = SigningKeyPair::generate().unwrap();
    let out = dir.path().join("cdn").join(TITLE);
    std::fs::create_dir_all(dir.path().join("cdn")).unwrap();
    let source = key_source(&license);
    let output = out.clone();
    let origin_seed = *origin_key.seed();
    std::thread::spawn(move || {
        package(
            &input,
            &output,
            &PackageOptions {
                title: TITLE.into(),
                scheme,
                ..PackageOptions::default()
            },
            &source,
            &SigningKeyPair::from_seed(&origin_seed),
            &mut |_| {},
        )
        .unwrap();
    })
    .join()
    .unwrap();
    let (cdn, cdn_requests) = serve_counting_origin(dir.path().join("cdn")).await;
    let operator = SigningKeyPair::generate().unwrap();
    let tracker = if with_tracker {
        Some(start_tracker(
            [license.core.license_public_key(), operator.verifying_key()]
                .into_iter()
                .collect(),
            if short_tokens.is_some() { 0 } else { 30 },
        ))
    } else {
        None
    };
    Stack {
        packaged: out,
        dir,
        license,
        signin,
        origin_key,
        cdn,
        cdn_requests,
        tracker,
        operator,
        seed: None,
    }
}

fn start_tracker(keyring: Keyring, clock_skew_s: u64) -> tracker::server::RunningTracker {
    use tracker::server::{FrontEndOptions, RunningTracker, Shared};
    let options = FrontEndOptions {
        requests_per_second: 50.0,
        request_burst: 100.0,
        ..FrontEndOptions::default()
    };
    let shared = Arc::new(Shared::new(
        tracker::swarm::SwarmConfig::default(),
        tracker::stats::StatsLimits::default(),
        options,
        tracker::credential::CredentialVerifier::new(keyring, clock_skew_s),
        None,
        tracker::metrics::Metrics::new().unwrap(),
        7,
    ));
    let identity = PeerIdentity::new(&SigningKeyPair::generate().unwrap()).unwrap();
    RunningTracker::start("127.0.0.1:0".parse().unwrap(), &identity, shared).unwrap()
}

/// A static HTTP origin over `root` honouring `Range: bytes=a-b`.
pub async fn serve_origin(root: PathBuf) -> SocketAddr {
    serve_counting_origin(root).await.0
}

/// `body`, or the part of it that `Range: bytes=a-b` asks for (the test
/// origins' only form of range).
pub fn ranged(body: Vec<u8>, headers: &HeaderMap) -> Response {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return body.into_response();
    };
    let (a, b) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .unwrap();
    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
    (
        StatusCode::PARTIAL_CONTENT,
        [(
            header::CONTENT_RANGE,
            format!("bytes {a}-{b}/{}", body.len()),
        )],
        body[a..=b].to_vec(),
    )
        .into_response()
}

/// [`serve_origin`], counting the requests it answers.
pub async fn serve_counting_origin(
    root: PathBuf,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    async fn file(
        State(root): State<Arc<PathBuf>>,
        UrlPath((title, rendition, name)): UrlPath<(String, String, String)>,
        headers: HeaderMap,
    ) -> Response {
        read(&root, &[&title, &rendition, &name], &headers)
    }
    async fn top(
        State(root): State<Arc<PathBuf>>,
        UrlPath((title, name)): UrlPath<(String, String)>,
        headers: HeaderMap,
    ) -> Response {
        read(&root, &[&title, &name], &headers)
    }
    fn read(root: &Path, parts: &[&str], headers: &HeaderMap) -> Response {
        if parts.iter().any(|p| p.contains("..")) {
            return StatusCode::NOT_FOUND.into_response();
        }
        let path = parts.iter().fold(root.to_path_buf(), |p, s| p.join(s));
        let Ok(body) = std::fs::read(path) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        ranged(body, headers)
    }
    let counter = requests.clone();
    let router = Router::new()
        .route("/{title}/{name}", get(top))
        .route("/{title}/{rendition}/{name}", get(file))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                next.run(request)
            },
        ))
        .with_state(Arc::new(root));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, requests)
}

impl Stack {
    /// Starts an edge seed serving the packaged directory over the peer
    /// wire, registered with the tracker.
    pub async fn start_seed(&mut self) {
        use edge_seed::serve::SeedKeys;
        use edge_seed::serve::config::SeedConfig;
        use loaves_proto::pb;
        use loaves_wire::peerwire;
        let identity = SigningKeyPair::generate().unwrap();
        let credential = peerwire::sign_seed_credential(
            &pb::SeedCredentialBody {
                seed_name: "sdk-test-seed".into(),
                peer_public_key: identity.verifying_key().as_bytes().to_vec(),
                region: "eu-west".into(),
                isp: "as1".into(),
                titles: vec![TITLE.into()],
                not_before: 0,
                expires_at: UnixSeconds::now().0 + 3600,
            },
            &self.operator,
        );
        let mut config = SeedConfig {
            quic_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            origin: self.dir.path().join("cdn").display().to_string(),
            titles: vec![TITLE.into()],
            ..SeedConfig::default()
        };
        config.tracker.addresses = vec![self.tracker.as_ref().unwrap().quic_addr.to_string()];
        config.tracker.announce_interval_s = 1;
        let keys = SeedKeys {
            identity,
            credential: Some(credential),
            license: [self.license.core.license_public_key()]
                .into_iter()
                .collect(),
            origin: [self.origin_key.verifying_key()].into_iter().collect(),
        };
        self.seed = Some(edge_seed::serve::start(&config, keys).await.unwrap());
    }

    /// The content key of `track_type` (key period 0) the sample is
    /// packaged with, as the license server holds it.
    pub fn content_key(&self, track_type: &str) -> TrackKey {
        let source = key_source(&self.license);
        let request = KeyRequest {
            track_type: track_type.into(),
            key_period: 0,
        };
        std::thread::spawn(move || source.get_keys(TITLE, &[request]).unwrap().remove(0))
            .join()
            .unwrap()
    }

    /// An SDK viewer of the sample, signed in as `account`.
    pub async fn viewer(
        &self,
        account: &str,
        options: LoavesBuilder,
    ) -> loaves_client_sdk::Session {
        let loaves = options.build().unwrap();
        loaves.open(TITLE, self.entitlement(account)).await.unwrap()
    }

    /// Sum of the tracker's `name` series whose labels contain every one of
    /// `labels`, from its text exposition.
    pub fn tracker_metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.tracker.as_ref().unwrap().shared.metrics.render();
        Exposition::new(text).sum(name, labels)
    }

    pub fn entitlement(&self, account: &str) -> Vec<u8> {
        self.entitlement_up_to(account, 0)
    }

    /// An entitlement to renditions up to `max_height` (0: any); the
    /// license then carries no key for taller renditions.
    pub fn entitlement_up_to(&self, account: &str, max_height: u32) -> Vec<u8> {
        loaves_testkit::fixtures::entitlement(&self.signin, account, max_height)
    }

    /// How a client reaches and trusts this stack's license server.
    pub fn license_config(&self) -> loaves_client_sdk::license::LicenseServerConfig {
        license_client_config(
            &self.license,
            [
                self.license.core.license_public_key(),
                self.operator.verifying_key(),
            ]
            .into_iter()
            .collect(),
        )
    }

    /// The settings of a viewer of this stack. The peer endpoint keeps the
    /// SDK's default bind (every interface, any port), as an app's does.
    /// What an app must set and nothing more: the license server, the
    /// manifest keys, the CDN, ClearKey and the tracker; every other
    /// setting as the SDK defaults it.
    pub fn minimal_options(&self) -> LoavesBuilder {
        let mut builder = Loaves::builder()
            .license_server(
                &format!("https://{}", self.license.grpc_addr),
                [
                    self.license.core.license_public_key(),
                    self.operator.verifying_key(),
                ]
                .into_iter()
                .collect(),
            )
            .license_server_ca_pem(self.license.tls_cert_pem.clone())
            .license_server_tls_name("localhost")
            .manifest_keys([self.origin_key.verifying_key()].into_iter().collect())
            .cdn_urls([format!("http://{}/", self.cdn)]);
        if let Some(clearkey) = self.license.clearkey_addr {
            builder = builder.clearkey_url(&format!("http://{clearkey}/clearkey"));
        }
        if let Some(tracker) = &self.tracker {
            builder = builder.trackers([tracker.quic_addr.to_string()]);
        }
        builder
    }

    /// The tests' usual settings: faster than real time, a short announce
    /// interval, a generous upload cap.
    pub fn options(&self, p2p: bool) -> LoavesBuilder {
        self.minimal_options()
            .p2p(p2p)
            .upload(Upload::Capped {
                bytes_per_second: 20_000_000,
            })
            .location("eu-west", "as1")
            .playback_speed(2.0)
            .buffer_target(Duration::from_secs(8))
            .max_announce_interval(Duration::from_millis(500))
    }

    /// The packaged bytes of `rendition`'s init (index 0) and segments.
    pub fn packaged_sha256(&self, rendition: &str) -> Vec<[u8; 32]> {
        let dir = self.packaged.join(rendition);
        let mut out = vec![loaves_proto::manifest::sha256(
            &std::fs::read(dir.join("init.mp4")).unwrap(),
        )];
        for i in 0.. {
            match std::fs::read(dir.join(format!("seg_{i:05}.m4s"))) {
                Ok(bytes) => out.push(loaves_proto::manifest::sha256(&bytes)),
                Err(_) => break,
            }
        }
        out
    }
}

impl Stack {
    /// The license server's key service, as a packager uses it (blocking:
    /// call it from a thread of its own, not from the async runtime).
    pub fn packager_keys(&self) -> GrpcKeySource {
        key_source(&self.license)
    }
}

/// An HTTP origin over `root` like [`serve_origin`], with full single-range
/// semantics for following growing files: `bytes=a-` and `bytes=a-b`
/// (clamped to the file), `416` with `Content-Range: bytes */LEN` when
/// `a` is past the end. While `ignore_range` is set it answers every
/// request with the whole file (`200`), like a server without range support.
pub async fn serve_live_origin(
    root: PathBuf,
    ignore_range: Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    #[derive(Clone)]
    struct Origin {
        root: Arc<PathBuf>,
        ignore_range: Arc<std::sync::atomic::AtomicBool>,
    }
    async fn file(
        State(origin): State<Origin>,
        UrlPath((title, rendition, name)): UrlPath<(String, String, String)>,
        headers: HeaderMap,
    ) -> Response {
        answer(&origin, &[&title, &rendition, &name], &headers)
    }
    async fn top(
        State(origin): State<Origin>,
        UrlPath((title, name)): UrlPath<(String, String)>,
        headers: HeaderMap,
    ) -> Response {
        answer(&origin, &[&title, &name], &headers)
    }
    fn answer(origin: &Origin, parts: &[&str], headers: &HeaderMap) -> Response {
        if parts.iter().any(|p| p.contains("..")) {
            return StatusCode::NOT_FOUND.into_response();
        }
        let path = parts
            .iter()
            .fold(origin.root.to_path_buf(), |p, s| p.join(s));
        let Ok(body) = std::fs::read(path) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'));
        let ignore = origin
            .ignore_range
            .load(std::sync::atomic::Ordering::Relaxed);
        let (Some((a, b)), false) = (range, ignore) else {
            return body.into_response();
        };
        let len = body.len();
        let Ok(start) = a.parse::<usize>() else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if start >= len {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
        let end = match b {
            "" => len,
            b => match b.parse::<usize>() {
                Ok(b) if b >= start => (b + 1).min(len),
                _ => return StatusCode::BAD_REQUEST.into_response(),
            },
        };
        (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", end - 1),
            )],
            body[start..end].to_vec(),
        )
            .into_response()
    }
    let router = Router::new()
        .route("/{title}/{name}", get(top))
        .route("/{title}/{rendition}/{name}", get(file))
        .with_state(Origin {
            root: Arc::new(root),
            ignore_range,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}
