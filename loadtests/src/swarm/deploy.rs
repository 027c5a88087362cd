//! The platform as separate processes on loopback: the license server, the
//! tracker and the edge seeds run as their own binaries with files this
//! module writes into a scratch directory; the live packager (fed by the
//! sample [`encoder`](crate::encoder)) stays in this process and gets its
//! keys from the license server process over gRPC, as `edge-seed live`
//! would.
//!
//! VOD titles are packaged before the seeds start, each by `edge-seed
//! package` with its own content keys from the license server, from the
//! sample looped to the title's length.
//!
//! Edge seeds play two roles here, in separate processes so that a seed can
//! fail without the CDN: one `cdn` process is the HTTP origin (no tracker
//! registration), and each `seed-N` process is a swarm seed (QUIC,
//! registered with the tracker, with a credential minted by
//! `edge-seed credential`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use license_server::config::{Config as LicenseConfig, PolicyConfig};
use loaves_proto::keygen;
use loaves_proto::keys::SigningKeyPair;

use super::procs::{Proc, binary, free_addr_on, run_to_end};
use crate::encoder::LoopedRendition;
use crate::platform::{
    ADMIN_TOKEN, KeyService, LivePipeline, PlatformConfig, TITLE, ViewerEndpoints,
    named_title_config, sample_dir, start_live,
};

/// What a deployment serves: the live title, VOD titles, or both.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// Renditions of the live title [`TITLE`], packaged as the sample
    /// encoder publishes it (empty: no live title).
    pub live: Vec<String>,
    /// VOD titles.
    pub vod: Option<VodContent>,
}

/// VOD titles of one rendition each: the sample's `rendition` looped to
/// `segments` segments (the same clear media, protected with each title's
/// own keys).
#[derive(Debug, Clone)]
pub struct VodContent {
    /// Title ids.
    pub titles: Vec<String>,
    /// Rendition of the sample.
    pub rendition: String,
    /// Segments per title.
    pub segments: u64,
}

impl Content {
    /// The live title of `renditions` alone.
    pub fn live(renditions: Vec<String>) -> Self {
        Self {
            live: renditions,
            vod: None,
        }
    }

    /// VOD titles alone.
    pub fn vod(titles: Vec<String>, rendition: String, segments: u64) -> Self {
        Self {
            live: Vec::new(),
            vod: Some(VodContent {
                titles,
                rendition,
                segments,
            }),
        }
    }

    /// The titles served (the live one first).
    pub fn titles(&self) -> Vec<String> {
        let mut titles = Vec::new();
        if !self.live.is_empty() {
            titles.push(TITLE.to_owned());
        }
        if let Some(vod) = &self.vod {
            titles.extend(vod.titles.iter().cloned());
        }
        titles
    }

    /// The renditions of `title`.
    fn renditions_of(&self, title: &str) -> Vec<String> {
        match &self.vod {
            Some(vod) if vod.titles.iter().any(|t| t == title) => vec![vod.rendition.clone()],
            _ => self.live.clone(),
        }
    }
}

/// How the deployment's servers are set up beyond their defaults.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// The license server's `[policy]` (renewal interval and grace: the
    /// session tokens' lifetime); `None`: its defaults.
    pub policy: Option<PolicyConfig>,
    /// Live key rotation: a new content key every this many segments (0:
    /// one key for the whole event). The license server's title gets the
    /// matching `key_period_s`, its period 0 starting when the deployment
    /// does.
    pub live_key_period_segments: u32,
    /// Clock skew tolerated on session tokens by the tracker and the seeds
    /// (`None`: their defaults, 30 s). 0 makes an expired token refused at
    /// once, so a missed refresh shows in their refusal counters.
    pub token_clock_skew_s: Option<u64>,
    /// Where the servers listen (`None`: loopback, every one).
    pub listen: Option<ListenIps>,
}

/// The addresses the servers listen on (the network lab puts them on
/// public addresses of its "internet"; the tracker and the swarm seeds on
/// different ones, so that viewers get two observers of their NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenIps {
    /// The license server (gRPC, ClearKey, metrics). Unspecified
    /// (`0.0.0.0`): every address, this process reaching it over loopback
    /// (the name its development certificate is issued to).
    pub license: IpAddr,
    /// The tracker (QUIC and HTTP).
    pub tracker: IpAddr,
    /// The CDN origin (an edge seed serving HTTP).
    pub cdn: IpAddr,
    /// The swarm seeds.
    pub seeds: IpAddr,
}

impl ListenIps {
    /// Every server on loopback.
    pub const LOOPBACK: Self = Self {
        license: IpAddr::V4(Ipv4Addr::LOCALHOST),
        tracker: IpAddr::V4(Ipv4Addr::LOCALHOST),
        cdn: IpAddr::V4(Ipv4Addr::LOCALHOST),
        seeds: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
}

/// Longest an `edge-seed package` run of one VOD title may take.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a seed sits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Location {
    /// Region name.
    pub region: String,
    /// ISP name.
    pub isp: String,
}

/// A running deployment.
#[derive(Debug)]
pub struct Deployment {
    /// Scratch space: config files, keys, logs, packaged output.
    pub dir: tempfile::TempDir,
    license: Proc,
    /// The tracker process (killed and restarted by the tracker scenario).
    pub tracker: Proc,
    /// The tracker's HTTP address (`/healthz`, `/dashboard`, `/metrics`).
    pub tracker_http: SocketAddr,
    /// The license server's operators' address (`/healthz`, `/metrics`).
    pub license_http: SocketAddr,
    /// The license server's key service, as the packager reaches it.
    pub key_service: KeyService,
    /// The CDN (an edge seed serving HTTP only).
    cdn: Proc,
    /// The CDN's HTTP address.
    pub cdn_http: SocketAddr,
    /// The swarm seeds and their HTTP addresses.
    pub seeds: Vec<(Proc, SocketAddr)>,
    live: Option<LivePipeline>,
    published: Arc<AtomicU64>,
    /// The packager's output root.
    pub packaged: PathBuf,
    signin: SigningKeyPair,
    /// How viewers reach it.
    pub endpoints: ViewerEndpoints,
    /// The license server's public key (SPKI PEM): session tokens and seed
    /// credentials.
    pub license_public_key: PathBuf,
    /// The origin's public key (SPKI PEM): manifests.
    pub origin_public_key: PathBuf,
    /// The license server's TLS certificate (PEM, issued to `localhost`).
    pub license_cert: PathBuf,
}

/// Live playlists and seeds follow the packager this often.
const SEED_CONFIG: &str = "\
[live]
poll_interval_ms = 250

[tracker]
announce_interval_s = 1
";

impl Deployment {
    /// Starts every process and the live stream or VOD titles of
    /// `content`, with one swarm seed per entry of `seeds` (each seeding
    /// every title); returns once all answer `/healthz` and the first live
    /// segments (or every VOD title) are packaged.
    pub async fn start(content: &Content, seeds: &[Location]) -> anyhow::Result<Self> {
        Self::start_with(content, seeds, &DeployOptions::default()).await
    }

    /// [`Deployment::start`] with `options`.
    pub async fn start_with(
        content: &Content,
        seeds: &[Location],
        options: &DeployOptions,
    ) -> anyhow::Result<Self> {
        let titles = content.titles();
        let ips = options.listen.unwrap_or(ListenIps::LOOPBACK);
        let license_bin = binary("license-server", "license-server")?;
        let tracker_bin = binary("loaves-tracker", "tracker")?;
        let seed_bin = binary("edge-seed", "edge-seed")?;
        let dir = tempfile::tempdir().context("creating a scratch directory")?;
        let root = dir.path().to_owned();
        let logs = root.join("logs");
        std::fs::create_dir_all(&logs)?;

        // Keys: the sign-in system's, the license server's (it also signs
        // seed credentials, the operator key trackers and viewers trust),
        // the origin's (manifests), the tracker's identity.
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys)?;
        let signin_files = keygen::write_key_pair(&keys, "signin", false)?;
        let signin = keygen::read_signing_key(&signin_files.private_key)?;
        let license_files = keygen::write_key_pair(&keys, "license", false)?;
        let origin_files = keygen::write_key_pair(&keys, "origin", false)?;
        let origin_key = keygen::read_signing_key(&origin_files.private_key)?;
        let tracker_files = keygen::write_key_pair(&keys, "tracker", false)?;

        // The license server.
        let admin_token = root.join("admin-token");
        std::fs::write(&admin_token, ADMIN_TOKEN)?;
        // A secret file must be private to its owner.
        std::fs::set_permissions(
            &admin_token,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let cert = root.join("license-cert.pem");
        let live_key_period_s = match options.live_key_period_segments {
            0 => 0,
            n => {
                // The sample's segments all last the same (2 s).
                let sample = LoopedRendition::load(
                    &sample_dir().join(content.live.first().map_or("video_720p", String::as_str)),
                )?;
                (u64::from(n) * sample.duration_ms(0)).div_ceil(1000).max(1)
            }
        };
        let mut config = LicenseConfig {
            listen: free_addr_on(ips.license)?,
            metrics_listen: free_addr_on(ips.license)?,
            clearkey_listen: Some(free_addr_on(ips.license)?),
            data_dir: root.join("license-server"),
            titles: titles
                .iter()
                .map(|t| {
                    let mut title = named_title_config(t, &content.renditions_of(t));
                    if t == TITLE && live_key_period_s > 0 {
                        // Period 0 from now: the license server's period is
                        // then never behind the packager's (which counts
                        // segments from the encoder's start, a little
                        // later), so the keys the packager uses are within
                        // the ClearKey lookahead.
                        title.key_period_s = live_key_period_s;
                        title.period_epoch = loaves_proto::UnixSeconds::now().0;
                    }
                    title
                })
                .collect(),
            ..LicenseConfig::default()
        };
        if let Some(policy) = &options.policy {
            config.policy = policy.clone();
        }
        config.tls.dev_cert_out = Some(cert.clone());
        config.keys.signing_key_file = Some(license_files.private_key.clone());
        config.keys.admin_token_file = Some(admin_token);
        config.keys.entitlement_public_keys = vec![signin_files.public_key.clone()];
        let license_toml = root.join("license-server.toml");
        std::fs::write(&license_toml, toml::to_string(&config)?)?;
        let mut license = Proc::spawn(
            "license-server",
            &license_bin,
            &["--config".into(), license_toml.display().to_string()],
            &logs,
        )?;
        license.wait_ready(reach(config.metrics_listen)).await?;
        let ca_pem = std::fs::read_to_string(&cert)
            .with_context(|| format!("reading {}", cert.display()))?;

        // The tracker.
        let tracker_quic = free_addr_on(ips.tracker)?;
        let tracker_http = free_addr_on(ips.tracker)?;
        let tracker_args: Vec<String> = vec![
            "--quic-listen".into(),
            tracker_quic.to_string(),
            "--http-listen".into(),
            tracker_http.to_string(),
            "--trusted-key".into(),
            license_files.public_key.display().to_string(),
            "--identity-key".into(),
            tracker_files.private_key.display().to_string(),
            "--log".into(),
            "warn".into(),
        ];
        let mut tracker_env = Vec::new();
        if let Some(skew) = options.token_clock_skew_s {
            tracker_env.push((
                "LOAVES_TRACKER_FRONT_END__MAX_CLOCK_SKEW_S".to_owned(),
                skew.to_string(),
            ));
        }
        let mut tracker =
            Proc::spawn_with_env("tracker", &tracker_bin, &tracker_args, &tracker_env, &logs)?;
        tracker.wait_ready(tracker_http).await?;

        // The live stream, or the VOD titles.
        let packaged = root.join("origin");
        let published = Arc::new(AtomicU64::new(0));
        let key_service = KeyService {
            url: format!("https://{}", reach(config.listen)),
            ca_pem: ca_pem.clone(),
        };
        if let Some(vod) = &content.vod {
            package_vod(
                &seed_bin,
                &root,
                &packaged,
                &vod.titles,
                &vod.rendition,
                vod.segments,
                &key_service.url,
                &cert,
                &origin_files.private_key,
            )
            .await?;
        }
        let live = if content.live.is_empty() {
            None
        } else {
            let platform_config = PlatformConfig {
                renditions: content.live.clone(),
                key_period_segments: options.live_key_period_segments,
                ..PlatformConfig::default()
            };
            let live = start_live(
                &root,
                &packaged,
                &platform_config,
                &key_service,
                &origin_key,
                published.clone(),
            )?;
            wait_first_segments(&packaged, &content.live).await?;
            Some(live)
        };

        // The CDN and the seeds.
        let seed_toml = root.join("edge-seed.toml");
        let seed_config = match options.token_clock_skew_s {
            Some(skew) => format!("max_clock_skew_s = {skew}\n{SEED_CONFIG}"),
            None => SEED_CONFIG.to_owned(),
        };
        std::fs::write(&seed_toml, seed_config)?;
        let common = |quic: SocketAddr, http: SocketAddr| -> Vec<String> {
            vec![
                "serve".into(),
                "--config".into(),
                seed_toml.display().to_string(),
                "--quic-listen".into(),
                quic.to_string(),
                "--http-listen".into(),
                http.to_string(),
                "--origin".into(),
                packaged.display().to_string(),
                "--title".into(),
                titles.join(","),
                "--license-key".into(),
                license_files.public_key.display().to_string(),
                "--origin-key".into(),
                origin_files.public_key.display().to_string(),
                "--log".into(),
                "warn".into(),
            ]
        };
        let cdn_http = free_addr_on(ips.cdn)?;
        let mut cdn = Proc::spawn(
            "cdn",
            &seed_bin,
            &common(free_addr_on(ips.cdn)?, cdn_http),
            &logs,
        )?;
        cdn.wait_ready(cdn_http).await?;
        let mut running_seeds = Vec::new();
        for (index, location) in seeds.iter().enumerate() {
            let name = format!("seed-{index}");
            let files = keygen::write_key_pair(&keys, &name, false)?;
            let credential = root.join(format!("{name}.credential"));
            mint_credential(
                &seed_bin,
                &license_files.private_key,
                &files.public_key,
                &name,
                location,
                &titles,
                &credential,
            )?;
            let http = free_addr_on(ips.seeds)?;
            let mut args = common(free_addr_on(ips.seeds)?, http);
            args.extend([
                "--identity-key".into(),
                files.private_key.display().to_string(),
                "--credential".into(),
                credential.display().to_string(),
                "--tracker".into(),
                tracker_quic.to_string(),
            ]);
            let mut seed = Proc::spawn(&name, &seed_bin, &args, &logs)?;
            seed.wait_ready(http).await?;
            running_seeds.push((seed, http));
        }

        let endpoints = ViewerEndpoints {
            license_url: format!("https://{}", reach(config.listen)),
            license_ca_pem: ca_pem,
            clearkey_url: config
                .clearkey_listen
                .map(|a| format!("http://{}/clearkey", reach(a))),
            trusted_keys: [keygen::read_public_key(&license_files.public_key)?]
                .into_iter()
                .collect(),
            manifest_keys: [origin_key.verifying_key()].into_iter().collect(),
            cdn_urls: vec![format!("http://{cdn_http}/")],
            tracker: tracker_quic,
        };
        Ok(Self {
            dir,
            license,
            tracker,
            tracker_http,
            license_http: reach(config.metrics_listen),
            key_service,
            cdn,
            cdn_http,
            seeds: running_seeds,
            live,
            published,
            packaged,
            signin,
            endpoints,
            license_public_key: license_files.public_key,
            origin_public_key: origin_files.public_key,
            license_cert: cert,
        })
    }

    /// Live segments published so far (0 for VOD).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The counter behind [`Deployment::published`], for a task to read.
    pub fn published_counter(&self) -> Arc<AtomicU64> {
        self.published.clone()
    }

    /// An entitlement for `account`.
    pub fn entitlement(&self, account: &str) -> Vec<u8> {
        crate::platform::entitlement(&self.signin, account)
    }

    /// The tracker's dashboard.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/dashboard", self.tracker_http)
    }

    /// Kills the tracker (SIGKILL), waits `down`, starts it again on the
    /// same addresses and waits for it to be ready.
    pub async fn restart_tracker(&mut self, down: Duration) -> anyhow::Result<()> {
        self.tracker.kill();
        tokio::time::sleep(down).await;
        self.tracker.restart()?;
        self.tracker.wait_ready(self.tracker_http).await
    }

    /// Stops the stream and every process (SIGTERM, then SIGKILL).
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        let live = self.live.take().map(LivePipeline::stop_and_join);
        for (seed, _) in &mut self.seeds {
            seed.stop();
        }
        self.cdn.stop();
        self.tracker.stop();
        self.license.stop();
        live.unwrap_or(Ok(()))
    }
}

/// How this process reaches a server listening on `listen`: over loopback
/// when it listens on every address.
fn reach(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}

async fn wait_first_segments(packaged: &Path, renditions: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = renditions
            .iter()
            .all(|r| packaged.join(TITLE).join(r).join("seg_00000.m4s").is_file());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the live packager produced no segment within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `edge-seed credential`, as the operator would run it.
fn mint_credential(
    seed_bin: &Path,
    operator_key: &Path,
    seed_public: &Path,
    name: &str,
    location: &Location,
    titles: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let output = std::process::Command::new(seed_bin)
        .args(["credential", "--operator-key"])
        .arg(operator_key)
        .arg("--seed-key")
        .arg(seed_public)
        .args([
            "--name",
            name,
            "--region",
            &location.region,
            "--isp",
            &location.isp,
            "--title",
            &titles.join(","),
            "--valid-days",
            "2",
            "--out",
        ])
        .arg(out)
        .output()
        .context("running edge-seed credential")?;
    if !output.status.success() {
        bail!(
            "edge-seed credential failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Packages each VOD title with `edge-seed package`, as the operator would:
/// the sample's `rendition` looped to `segments` segments (written once as
/// clear CMAF), protected with keys the license server derives for the
/// title, signed with the origin key, into `packaged/TITLE`.
#[allow(clippy::too_many_arguments)] // one call site; the values are unrelated
async fn package_vod(
    seed_bin: &Path,
    root: &Path,
    packaged: &Path,
    titles: &[String],
    rendition: &str,
    segments: u64,
    key_service: &str,
    ca_cert: &Path,
    origin_key: &Path,
) -> anyhow::Result<()> {
    let input = root.join("vod-input");
    let sample = LoopedRendition::load(&sample_dir().join(rendition))?;
    sample.publish_init(&input)?;
    for n in 0..segments {
        sample.publish(&input, n)?;
    }
    std::fs::create_dir_all(packaged)?;
    let logs = root.join("logs");
    for title in titles {
        let args: Vec<String> = vec![
            "package".into(),
            input.display().to_string(),
            "--output".into(),
            packaged.join(title).display().to_string(),
            "--title".into(),
            title.clone(),
            "--origin-key".into(),
            origin_key.display().to_string(),
            "--key-source".into(),
            "grpc".into(),
            "--key-service".into(),
            key_service.into(),
            "--ca-cert".into(),
            ca_cert.display().to_string(),
            "--quiet".into(),
        ];
        run_to_end(
            &format!("package-{title}"),
            seed_bin,
            &args,
            // The token through the environment, not the command line.
            &[("LOAVES_ADMIN_TOKEN", ADMIN_TOKEN)],
            &logs,
            PACKAGE_TIMEOUT,
        )
        .await?;
    }
    Ok(())
}
