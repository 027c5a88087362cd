//! The whole platform in one process, on loopback and embedded defaults:
//! the license server (gRPC over TLS, SQLite in a temporary directory),
//! the live packager fed by the sample [`encoder`](crate::encoder), the
//! tracker (QUIC, with its dashboard over HTTP), and an edge seed that is
//! both the swarm's seed (QUIC) and the origin / CDN (HTTP).
//!
//! Every part is the real component's library, started the way its binary
//! starts it; only the processes are shared.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edge_seed::keysource::GrpcKeySource;
use edge_seed::live::{LiveEvent, LivePackager};
use edge_seed::serve::SeedKeys;
use edge_seed::serve::config::SeedConfig;
use edge_seed::{PackageOptions, serve::RunningSeed};
use license_server::config::{Config as LicenseConfig, RenditionConfig, TitleConfig};
use license_server::{RunningServer, SystemClock};
use loaves_client_sdk::{Loaves, LoavesBuilder, Upload};
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::Scheme;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire;
use tracker::server::{FrontEndOptions, RunningTracker, Shared};

use crate::encoder::LoopedRendition;

/// The title the platform streams.
pub const TITLE: &str = "demo";
/// The packager's credential on the license server's key service (a
/// development secret of this throwaway platform).
pub const ADMIN_TOKEN: &str = "loaves-demo-packager";

/// The committed sample presentation.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-seed/testdata/sample")
}

/// What to start.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Renditions of the sample to stream live.
    pub renditions: Vec<String>,
    /// Segments kept in the live playlists' sliding window.
    pub live_window: usize,
    /// How often the live packager scans its input.
    pub packager_poll: Duration,
    /// Region and ISP of the edge seed.
    pub seed_location: (String, String),
    /// Live key rotation: a new key period every this many segments (0:
    /// one key for the whole event).
    pub key_period_segments: u32,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            renditions: vec!["video_720p".into()],
            live_window: 6,
            packager_poll: Duration::from_millis(100),
            seed_location: ("eu-west".into(), "as64500".into()),
            key_period_segments: 0,
        }
    }
}

/// Live packaging on its own thread (the key service client blocks).
#[derive(Debug)]
pub struct LivePipeline {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A running platform.
#[derive(Debug)]
pub struct Platform {
    /// Scratch space (database, keys, packaged output); removed on drop.
    pub dir: tempfile::TempDir,
    /// The license server.
    pub license: RunningServer,
    /// The tracker.
    pub tracker: RunningTracker,
    /// The tracker's HTTP address (`/dashboard`, `/metrics`).
    pub tracker_http: SocketAddr,
    /// The edge seed (seed over QUIC, origin / CDN over HTTP).
    pub seed: RunningSeed,
    /// Signs the viewers' entitlements (the streamer's sign-in system).
    signin: SigningKeyPair,
    /// Signs the presentation's manifests.
    origin_key: SigningKeyPair,
    /// Trusted by the tracker and the viewers besides the license key.
    operator: SigningKeyPair,
    /// Where the packager writes (`OUT/TITLE/RENDITION/...`).
    pub packaged: PathBuf,
    /// Live segments published so far by the encoder (all renditions).
    published: Arc<AtomicU64>,
    live: LivePipeline,
    tracker_http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Platform {
    /// Starts every component and the live stream; returns once the first
    /// segment of every rendition is packaged.
    pub async fn start(config: &PlatformConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a scratch directory")?;
        let signin_files = loaves_proto::keygen::write_key_pair(dir.path(), "signin", false)?;
        let signin = loaves_proto::keygen::read_signing_key(&signin_files.private_key)?;
        let license = start_license_server(dir.path(), &signin_files.public_key, config).await?;

        let operator = SigningKeyPair::generate()?;
        let trusted: Keyring = [license.core.license_public_key(), operator.verifying_key()]
            .into_iter()
            .collect();
        let (tracker, tracker_http, tracker_http_task) = start_tracker(trusted).await?;

        let origin_key = SigningKeyPair::generate()?;
        let packaged = dir.path().join("origin");
        let published = Arc::new(AtomicU64::new(0));
        let live = start_live(
            dir.path(),
            &packaged,
            config,
            &KeyService {
                url: format!("https://{}", license.grpc_addr),
                ca_pem: license.tls_cert_pem.clone(),
            },
            &origin_key,
            published.clone(),
        )?;
        // The seed follows the live manifests, which exist once the first
        // segments are packaged.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = config
                .renditions
                .iter()
                .all(|r| packaged.join(TITLE).join(r).join("seg_00000.m4s").is_file());
            if ready {
                break;
            }
            if live.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                let error = live
                    .stop_and_join()
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("live packager stopped"));
                return Err(error.context("live packaging"));
            }
            if Instant::now() > deadline {
                bail!("the live packager produced no segment within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seed = start_seed(
            &packaged,
            &tracker,
            &license,
            &origin_key,
            &operator,
            config,
        )
        .await?;
        Ok(Self {
            dir,
            license,
            tracker,
            tracker_http,
            seed,
            signin,
            origin_key,
            operator,
            packaged,
            published,
            live,
            tracker_http_task,
        })
    }

    /// The tracker's live dashboard.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/dashboard", self.tracker_http)
    }

    /// Live segments published by the encoder so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// An entitlement for `account` to watch everything, one stream at a
    /// time, for a day.
    pub fn entitlement(&self, account: &str) -> Vec<u8> {
        entitlement(&self.signin, account)
    }

    /// How viewers reach this platform.
    pub fn endpoints(&self) -> ViewerEndpoints {
        ViewerEndpoints {
            license_url: format!("https://{}", self.license.grpc_addr),
            license_ca_pem: self.license.tls_cert_pem.clone(),
            clearkey_url: self
                .license
                .clearkey_addr
                .map(|a| format!("http://{a}/clearkey")),
            trusted_keys: [
                self.license.core.license_public_key(),
                self.operator.verifying_key(),
            ]
            .into_iter()
            .collect(),
            manifest_keys: [self.origin_key.verifying_key()].into_iter().collect(),
            cdn_urls: vec![format!("http://{}/", self.seed.http_address)],
            tracker: self.tracker.quic_addr,
        }
    }

    /// The SDK settings of a viewer of this platform.
    pub fn viewer_builder(&self, p2p: bool, region: &str, isp: &str) -> LoavesBuilder {
        self.endpoints().viewer_builder(p2p, region, isp)
    }

    /// The packaged bytes of `rendition`'s segment `sequence` (what every
    /// player must receive), if the packager wrote it.
    pub fn packaged_segment(&self, rendition: &str, sequence: u64) -> Option<Vec<u8>> {
        packaged_segment(&self.packaged, rendition, sequence)
    }

    /// The packaged init segment of `rendition`.
    pub fn packaged_init(&self, rendition: &str) -> Option<Vec<u8>> {
        packaged_init(&self.packaged, rendition)
    }

    /// Stops the stream and every component.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let live = self.live.stop_and_join();
        self.seed.shutdown().await;
        self.tracker.shutdown().await;
        self.tracker_http_task.abort();
        self.license
            .shutdown()
            .await
            .context("stopping the license server")?;
        live
    }
}

/// An entitlement signed by `signin` for `account` to watch everything, one
/// stream at a time, for a day.
pub fn entitlement(signin: &SigningKeyPair, account: &str) -> Vec<u8> {
    loaves_testkit::fixtures::entitlement(signin, account, 0)
}

/// Where viewers find a platform's services and which keys they trust.
#[derive(Debug, Clone)]
pub struct ViewerEndpoints {
    /// The license server's gRPC URL.
    pub license_url: String,
    /// Its TLS certificate (PEM).
    pub license_ca_pem: String,
    /// Its ClearKey endpoint, if any.
    pub clearkey_url: Option<String>,
    /// Keys trusted for session tokens and seed credentials.
    pub trusted_keys: Keyring,
    /// The origin's manifest keys.
    pub manifest_keys: Keyring,
    /// CDN base URLs.
    pub cdn_urls: Vec<String>,
    /// The tracker's QUIC address.
    pub tracker: SocketAddr,
}

impl ViewerEndpoints {
    /// The SDK settings of a viewer (P2P on or off, at a location). The
    /// peer endpoint keeps the SDK's default bind (every interface, any
    /// port): what the tracker observes and the interfaces are what other
    /// viewers are told, as for an app with default settings.
    pub fn viewer_builder(&self, p2p: bool, region: &str, isp: &str) -> LoavesBuilder {
        let mut builder = Loaves::builder()
            .license_server(&self.license_url, self.trusted_keys.clone())
            .license_server_ca_pem(self.license_ca_pem.clone())
            .license_server_tls_name("localhost")
            .manifest_keys(self.manifest_keys.clone())
            .cdn_urls(&self.cdn_urls)
            .p2p(p2p)
            .upload(Upload::Capped {
                bytes_per_second: VIEWER_UPLOAD_BYTES_PER_SECOND,
            })
            .location(region, isp)
            .max_announce_interval(Duration::from_secs(1));
        if p2p {
            builder = builder.trackers([self.tracker.to_string()]);
        }
        if let Some(clearkey) = &self.clearkey_url {
            builder = builder.clearkey_url(clearkey);
        }
        builder
    }
}

/// The packaged bytes of `rendition`'s segment `sequence` under the
/// packager's output `root` (what every player must receive), if written.
pub fn packaged_segment(root: &Path, rendition: &str, sequence: u64) -> Option<Vec<u8>> {
    packaged_title_segment(root, TITLE, rendition, sequence)
}

/// The packaged init segment of `rendition` under `root`.
pub fn packaged_init(root: &Path, rendition: &str) -> Option<Vec<u8>> {
    packaged_title_init(root, TITLE, rendition)
}

/// [`packaged_segment`] of another title than [`TITLE`] (the swarm
/// scenarios' VOD titles share the origin root).
pub fn packaged_title_segment(
    root: &Path,
    title: &str,
    rendition: &str,
    sequence: u64,
) -> Option<Vec<u8>> {
    std::fs::read(
        root.join(title)
            .join(rendition)
            .join(format!("seg_{sequence:05}.m4s")),
    )
    .ok()
}

/// [`packaged_init`] of another title than [`TITLE`].
pub fn packaged_title_init(root: &Path, title: &str, rendition: &str) -> Option<Vec<u8>> {
    std::fs::read(root.join(title).join(rendition).join("init.mp4")).ok()
}

/// Each viewer's upload cap (the SDK's default is lower; loopback has room).
pub const VIEWER_UPLOAD_BYTES_PER_SECOND: u64 = 4_000_000;

impl LivePipeline {
    /// Stops packaging and waits for the thread's outcome.
    pub fn stop_and_join(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("live packager thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for LivePipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn start_license_server(
    dir: &Path,
    signin_public: &Path,
    config: &PlatformConfig,
) -> anyhow::Result<RunningServer> {
    std::fs::write(dir.join("admin-token"), ADMIN_TOKEN).context("writing the admin token")?;
    // A secret file must be private to its owner.
    std::fs::set_permissions(
        dir.join("admin-token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut license = LicenseConfig {
        listen: any_port,
        metrics_listen: any_port,
        clearkey_listen: Some(any_port),
        data_dir: dir.join("license-server"),
        ..LicenseConfig::default()
    };
    license.keys.admin_token_file = Some(dir.join("admin-token"));
    license.keys.entitlement_public_keys = vec![signin_public.to_owned()];
    license.titles = vec![title_config(&config.renditions)];
    license_server::start(license, Arc::new(SystemClock))
        .await
        .context("starting the license server")
}

/// The license server's title entry for the streamed renditions.
pub fn title_config(renditions: &[String]) -> TitleConfig {
    named_title_config(TITLE, renditions)
}

/// The license server's entry for title `id` of `renditions` (its own
/// content keys).
pub fn named_title_config(id: &str, renditions: &[String]) -> TitleConfig {
    let track_type = |name: &str| {
        if name.contains("audio") {
            ("audio", 0)
        } else if name.contains("360") {
            ("sd", 360)
        } else {
            ("hd", 720)
        }
    };
    TitleConfig {
        id: id.into(),
        key_period_s: 0,
        period_epoch: 0,
        renditions: renditions
            .iter()
            .map(|name| {
                let (track_type, height) = track_type(name);
                RenditionConfig {
                    name: name.clone(),
                    track_type: track_type.into(),
                    height,
                }
            })
            .collect(),
    }
}

async fn start_tracker(
    trusted: Keyring,
) -> anyhow::Result<(
    RunningTracker,
    SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let options = FrontEndOptions::default();
    let shared = Arc::new(Shared::new(
        tracker::swarm::SwarmConfig::default(),
        tracker::stats::StatsLimits::default(),
        options.clone(),
        tracker::credential::CredentialVerifier::new(trusted, options.max_clock_skew_s),
        None,
        tracker::metrics::Metrics::new()?,
        u64::from_le_bytes(loaves_proto::keys::random_array::<8>()?),
    ));
    let identity = PeerIdentity::new(&SigningKeyPair::generate()?)?;
    let tracker = RunningTracker::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &identity,
        shared.clone(),
    )?;
    let listener = tracker::http::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let http = listener.local_addr()?;
    let task = tokio::spawn(tracker::http::serve(
        listener,
        shared,
        tracker.shutdown_signal(),
    ));
    Ok((tracker, http, task))
}

/// The license server's key service, as the packager reaches it (with
/// [`ADMIN_TOKEN`]).
#[derive(Debug, Clone)]
pub struct KeyService {
    /// gRPC URL.
    pub url: String,
    /// The server's TLS certificate (PEM).
    pub ca_pem: String,
}

/// Starts the encoder stand-in and the live packager on one thread: every
/// segment duration a new segment of each rendition is published, and the
/// packager polls its input in between.
pub fn start_live(
    dir: &Path,
    packaged: &Path,
    config: &PlatformConfig,
    key_service: &KeyService,
    origin_key: &SigningKeyPair,
    published: Arc<AtomicU64>,
) -> anyhow::Result<LivePipeline> {
    let input = dir.join("encoder");
    let renditions = config
        .renditions
        .iter()
        .map(|r| LoopedRendition::load(&sample_dir().join(r)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for rendition in &renditions {
        rendition.publish_init(&input)?;
    }
    let keys = GrpcKeySource::new(
        key_service.url.clone(),
        Some(ADMIN_TOKEN.to_owned()),
        Some(key_service.ca_pem.clone().into_bytes()),
    );
    let origin_seed = *origin_key.seed();
    let output = packaged.join(TITLE);
    let window = config.live_window;
    let poll = config.packager_poll;
    let key_period_segments = config.key_period_segments;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("live-packager".into())
        .spawn(move || -> anyhow::Result<()> {
            let origin_key = SigningKeyPair::from_seed(&origin_seed);
            let options = PackageOptions {
                title: TITLE.into(),
                scheme: Scheme::Cenc,
                key_period_segments,
                ..PackageOptions::default()
            };
            let mut packager =
                LivePackager::new(&input, &output, options, window, &keys, &origin_key)?;
            let started = Instant::now();
            // Media time published so far, per rendition (they share a
            // clock: the first rendition paces the others).
            let mut next = 0u64;
            let mut due = Duration::ZERO;
            while !stopping.load(Ordering::Relaxed) {
                if started.elapsed() >= due {
                    for rendition in &renditions {
                        rendition.publish(&input, next)?;
                    }
                    due += Duration::from_millis(renditions[0].duration_ms(next));
                    next += 1;
                    published.store(next, Ordering::Relaxed);
                }
                for event in packager.poll(UnixSeconds::now())? {
                    if let LiveEvent::Refused { path, reason } = event {
                        bail!("the packager refused {}: {reason}", path.display());
                    }
                }
                std::thread::sleep(poll);
            }
            packager.finish(UnixSeconds::now())?;
            Ok(())
        })
        .context("starting the live packager thread")?;
    Ok(LivePipeline {
        stop,
        thread: Some(thread),
    })
}

async fn start_seed(
    packaged: &Path,
    tracker: &RunningTracker,
    license: &RunningServer,
    origin_key: &SigningKeyPair,
    operator: &SigningKeyPair,
    config: &PlatformConfig,
) -> anyhow::Result<RunningSeed> {
    let identity = SigningKeyPair::generate()?;
    let (region, isp) = config.seed_location.clone();
    let credential = peerwire::sign_seed_credential(
        &pb::SeedCredentialBody {
            seed_name: "demo-seed".into(),
            peer_public_key: identity.verifying_key().as_bytes().to_vec(),
            region,
            isp,
            titles: vec![TITLE.into()],
            not_before: 0,
            expires_at: UnixSeconds::now().0 + 86_400,
        },
        operator,
    );
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut seed = SeedConfig {
        name: "demo-seed".into(),
        quic_listen: any_port,
        http_listen: any_port,
        origin: packaged.display().to_string(),
        titles: vec![TITLE.into()],
        ..SeedConfig::default()
    };
    seed.tracker.addresses = vec![tracker.quic_addr.to_string()];
    seed.tracker.announce_interval_s = 1;
    seed.live.poll_interval_ms = 250;
    let keys = SeedKeys {
        identity,
        credential: Some(credential),
        license: [license.core.license_public_key()].into_iter().collect(),
        origin: [origin_key.verifying_key()].into_iter().collect(),
    };
    edge_seed::serve::start(&seed, keys)
        .await
        .context("starting the edge seed")
}
