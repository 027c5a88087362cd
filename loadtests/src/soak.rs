//! `loadtests soak`: viewers who watch a whole film, and a live event as
//! long, on the platform's real processes. The point is what happens past
//! the first session token: with the license server's default policy a
//! token lives 90 s (60 s renewal, 30 s grace), so a ten-minute session
//! crosses about ten renewals, each bringing a new token that the tracker
//! connection, the peer connections and the ClearKey proxy must all take
//! up before the old one expires.
//!
//! One deployment ([`Deployment`]: license server, tracker, edge seed and
//! CDN as their own binaries) serves a VOD title as long as the run and
//! the live title (optionally with a content-key rotation every few
//! segments). Viewers are SDK sessions in this process, half on each
//! title, joining over a short window. Every `window_s` (a minute by
//! default) the run records one [`Window`]: bytes by source per title
//! (the sessions' counters), rebuffering, license renewals (the sessions'),
//! token refreshes and announces accepted (the tracker's counters), token
//! refusals counted by the servers themselves (tracker, seeds, license
//! server: the figure that must stay 0), peer and seed connections open,
//! and the answers to ClearKey requests made through each viewer's player
//! endpoint every `clearkey_probe_s` for the key its player needs now (the
//! key is fetched from the key service, so an answer is checked against
//! the real key, and a live rotation is followed).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge_seed::keysource::{GrpcKeySource, KeyRequest, KeySource};
use license_server::config::PolicyConfig;
use loaves_client_sdk::{Event, RenditionName, Session, Stats, player};
use serde::{Deserialize, Serialize};

use crate::demo::{self, lock};
use crate::encoder::LoopedRendition;
use crate::platform::{ADMIN_TOKEN, TITLE, sample_dir};
use crate::scrape::{self, Exposition};
use crate::swarm::deploy::{Content, DeployOptions, Deployment, Location, VodContent};

/// The VOD title of a soak.
pub const VOD_TITLE: &str = "film";

/// A soak scenario (`loadtests/scenarios/soak.toml`); every field has the
/// full soak's default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoakConfig {
    /// Name (the report's `kind`).
    pub name: String,
    /// What it shows.
    pub description: String,
    /// How long each viewer watches, seconds: the VOD title is this long
    /// (rounded up to whole segments), live viewers watch this long.
    pub duration_s: u64,
    /// Length of one row of the report, seconds.
    pub window_s: u64,
    /// Viewers of the VOD title.
    pub vod_viewers: usize,
    /// Viewers of the live title.
    pub live_viewers: usize,
    /// The viewers join spread evenly over this many seconds (alternating
    /// titles).
    pub join_window_s: u64,
    /// The rendition watched.
    pub rendition: String,
    /// How far behind the live edge live players start, in segments.
    pub latency_segments: u64,
    /// Live content-key rotation: a new key every this many segments (0:
    /// one key for the whole event).
    pub live_key_period_segments: u32,
    /// The license server's heartbeat interval, seconds (absent: its
    /// default, 60).
    pub renewal_interval_s: Option<u32>,
    /// The license server's renewal grace, seconds (absent: its default,
    /// 30). A session token lives interval + grace.
    pub renewal_grace_s: Option<u32>,
    /// Clock skew tolerated on session tokens by the tracker, the seeds,
    /// the license server and the viewers, seconds (absent: their
    /// defaults, 30). 0 makes a token refused the second it expires, so a
    /// token not replaced in time shows in the refusal counters.
    pub token_clock_skew_s: Option<u64>,
    /// How often each viewer's player endpoint is asked for the content
    /// key its player needs now, seconds (0: never).
    pub clearkey_probe_s: u64,
    /// Where viewers are, round robin.
    pub locations: Vec<Location>,
    /// Where the one swarm seed is.
    pub seed: Location,
}

impl Default for SoakConfig {
    fn default() -> Self {
        let location = |region: &str, isp: &str| Location {
            region: region.into(),
            isp: isp.into(),
        };
        Self {
            name: "soak".into(),
            description: String::new(),
            duration_s: 600,
            window_s: 60,
            vod_viewers: 5,
            live_viewers: 5,
            join_window_s: 30,
            rendition: "video_720p".into(),
            latency_segments: 3,
            live_key_period_segments: 0,
            renewal_interval_s: None,
            renewal_grace_s: None,
            token_clock_skew_s: None,
            clearkey_probe_s: 10,
            locations: vec![
                location("eu-west", "as64500"),
                location("eu-west", "as64501"),
            ],
            seed: location("eu-west", "as64500"),
        }
    }
}

impl SoakConfig {
    /// Reads a scenario file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Refuses settings the run cannot honour.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=24 * 3600).contains(&self.duration_s),
            "duration_s is 1 s to 24 h"
        );
        anyhow::ensure!(self.window_s >= 1, "window_s is at least 1");
        anyhow::ensure!(
            self.vod_viewers + self.live_viewers > 0,
            "at least one viewer"
        );
        anyhow::ensure!(
            self.vod_viewers + self.live_viewers <= 200,
            "at most 200 viewers"
        );
        anyhow::ensure!(self.join_window_s <= 3600, "join_window_s is at most 1 h");
        anyhow::ensure!(!self.locations.is_empty(), "at least one location");
        anyhow::ensure!(
            self.renewal_interval_s != Some(0),
            "renewal_interval_s is at least 1"
        );
        Ok(())
    }

    /// The license server's policy: its defaults, with the renewal and the
    /// skew of this scenario.
    fn policy(&self) -> Option<PolicyConfig> {
        if self.renewal_interval_s.is_none()
            && self.renewal_grace_s.is_none()
            && self.token_clock_skew_s.is_none()
        {
            return None;
        }
        let mut policy = PolicyConfig::default();
        if let Some(interval) = self.renewal_interval_s {
            policy.renewal_interval_s = interval;
        }
        if let Some(grace) = self.renewal_grace_s {
            policy.renewal_grace_s = grace;
        }
        if let Some(skew) = self.token_clock_skew_s {
            policy.max_clock_skew_s = skew;
        }
        Some(policy)
    }

    /// A session token's lifetime under this scenario's policy.
    pub fn token_lifetime(&self) -> Duration {
        let defaults = PolicyConfig::default();
        Duration::from_secs(u64::from(
            self.renewal_interval_s
                .unwrap_or(defaults.renewal_interval_s)
                + self.renewal_grace_s.unwrap_or(defaults.renewal_grace_s),
        ))
    }

    fn segment_ms(&self) -> anyhow::Result<u64> {
        let sample = LoopedRendition::load(&sample_dir().join(&self.rendition))?;
        Ok(sample.duration_ms(0).max(1))
    }

    /// Segments of the VOD title: the duration, rounded up.
    fn vod_segments(&self) -> anyhow::Result<u64> {
        Ok((self.duration_s * 1000).div_ceil(self.segment_ms()?))
    }
}

/// Which title a viewer watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The VOD title, from the first segment to the last.
    Vod,
    /// The live title, from near the edge.
    Live,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Self::Vod => VOD_TITLE,
            Self::Live => TITLE,
        }
    }
}

/// Bytes by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Bytes {
    /// From other viewers.
    pub peer: u64,
    /// From edge seeds.
    pub seed: u64,
    /// From the CDN.
    pub cdn: u64,
}

impl Bytes {
    fn of(stats: &Stats) -> Self {
        Self {
            peer: stats.bytes_from_peers,
            seed: stats.bytes_from_seeds,
            cdn: stats.bytes_from_cdn,
        }
    }

    fn add(&mut self, other: Self) {
        self.peer += other.peer;
        self.seed += other.seed;
        self.cdn += other.cdn;
    }

    fn since(self, before: Self) -> Self {
        Self {
            peer: self.peer.saturating_sub(before.peer),
            seed: self.seed.saturating_sub(before.seed),
            cdn: self.cdn.saturating_sub(before.cdn),
        }
    }

    /// Every source.
    pub fn total(&self) -> u64 {
        self.peer + self.seed + self.cdn
    }

    /// Share from other viewers (0 with no bytes).
    pub fn peer_share(&self) -> f64 {
        self.peer as f64 / self.total().max(1) as f64
    }

    /// Share not from the CDN: other viewers and seeds.
    pub fn offload(&self) -> f64 {
        (self.peer + self.seed) as f64 / self.total().max(1) as f64
    }
}

/// The crowd's cumulative counters at one instant.
#[derive(Debug, Clone, Default)]
struct Totals {
    bytes: HashMap<Kind, Bytes>,
    rebuffer_ms: u64,
    rebuffers: u64,
    renewals: u64,
    /// Open connections (sessions still watching), at this instant.
    peers_connected: u64,
    seeds_connected: u64,
    /// Fewest open peer connections of one watching session.
    min_peers_connected: Option<u64>,
    watching: usize,
}

/// What the servers counted, cumulative.
#[derive(Debug, Clone, Copy, Default)]
struct ServerCounters {
    refreshes: f64,
    announces: f64,
    tracker_refusals: f64,
    tracker_expired: f64,
    seed_refusals: f64,
    seed_expired: f64,
    license_refusals: f64,
}

impl ServerCounters {
    fn since(self, before: Self) -> Self {
        let d = |a: f64, b: f64| (a - b).max(0.0);
        Self {
            refreshes: d(self.refreshes, before.refreshes),
            announces: d(self.announces, before.announces),
            tracker_refusals: d(self.tracker_refusals, before.tracker_refusals),
            tracker_expired: d(self.tracker_expired, before.tracker_expired),
            seed_refusals: d(self.seed_refusals, before.seed_refusals),
            seed_expired: d(self.seed_expired, before.seed_expired),
            license_refusals: d(self.license_refusals, before.license_refusals),
        }
    }
}

/// The license server's refusals that mean a token or a session was no
/// longer good: what a viewer whose token was not replaced in time meets.
pub const LICENSE_TOKEN_REFUSALS: [&str; 5] = [
    "clearkey_no_token",
    "clearkey_bad_token",
    "clearkey_session_over",
    "session_over",
    "unknown_session",
];

/// One row of the report: what happened in one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// Start, seconds after the first viewer joined.
    pub from_s: f64,
    /// End.
    pub to_s: f64,
    /// Sessions open at the end.
    pub watching: usize,
    /// Bytes the VOD viewers got, by source.
    pub vod: Bytes,
    /// Bytes the live viewers got, by source.
    pub live: Bytes,
    /// Stall time reported by the players.
    pub rebuffer_s: f64,
    /// Stalls begun.
    pub rebuffers: u64,
    /// License renewals the sessions made.
    pub license_renewals: u64,
    /// Refreshed tokens the tracker accepted on open connections.
    pub token_refreshes: u64,
    /// Announces the tracker answered.
    pub announces: u64,
    /// Tokens the tracker refused (every reason).
    pub tracker_token_refusals: u64,
    /// ... of which expired.
    pub tracker_expired: u64,
    /// Hellos and requests the seeds refused for their credential (every
    /// reason; requests refused `forbidden`).
    pub seed_token_refusals: u64,
    /// ... of which hellos with an expired token.
    pub seed_expired: u64,
    /// License server refusals of a token or session no longer good
    /// ([`LICENSE_TOKEN_REFUSALS`]).
    pub license_token_refusals: u64,
    /// Connections to other viewers open at the end (all sessions).
    pub peers_connected: u64,
    /// Connections to seeds open at the end.
    pub seeds_connected: u64,
    /// Fewest connections to other viewers of one session at the end.
    pub min_peers_connected: u64,
    /// ClearKey requests through the player endpoints answered with the
    /// right key.
    pub clearkey_ok: u64,
    /// ... answered otherwise (status and reason in `clearkey_failures`).
    pub clearkey_failed: u64,
    /// Live key periods whose key a ClearKey request got in this window.
    pub live_key_periods: Vec<u32>,
}

impl Window {
    /// Every refusal of a token, by every server.
    pub fn token_refusals(&self) -> u64 {
        self.tracker_token_refusals + self.seed_token_refusals + self.license_token_refusals
    }

    /// Bytes of both titles.
    pub fn bytes(&self) -> Bytes {
        let mut all = self.vod;
        all.add(self.live);
        all
    }
}

/// One viewer's result.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerResult {
    /// Account.
    pub account: String,
    /// Title watched.
    pub kind: Kind,
    /// Joined, seconds after the first viewer.
    pub joined_s: f64,
    /// Segments played.
    pub segments: u64,
    /// First and last sequence played.
    pub sequences: Option<(u64, u64)>,
    /// Bytes that differ from the packaged files.
    pub corrupt_bytes: u64,
    /// Stalls and their total, as the player saw them.
    pub rebuffers: u32,
    /// See `rebuffers`.
    pub rebuffer_s: f64,
    /// License renewals.
    pub license_renewals: u64,
    /// Bytes by source.
    pub bytes: Bytes,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl ViewerResult {
    /// A viewer that joined and has played nothing yet.
    fn nothing_yet(account: String, kind: Kind, joined_s: f64) -> Self {
        Self {
            account,
            kind,
            joined_s,
            segments: 0,
            sequences: None,
            corrupt_bytes: 0,
            rebuffers: 0,
            rebuffer_s: 0.0,
            license_renewals: 0,
            bytes: Bytes::default(),
            error: None,
        }
    }
}

/// Session events that mean trouble, counted over the crowd.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trouble {
    /// `TrackerUnavailable`.
    pub tracker_unavailable: u64,
    /// `LicenseRenewalFailed`.
    pub renewal_failed: u64,
    /// `SessionEnded` (a license that could not be renewed in time).
    pub sessions_ended: u64,
    /// The first few messages.
    pub messages: Vec<String>,
}

/// Everything a soak produced.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    /// The scenario.
    pub config: SoakConfig,
    /// A session token's lifetime.
    pub token_lifetime_s: u64,
    /// One row per window.
    pub windows: Vec<Window>,
    /// Per viewer.
    pub viewers: Vec<ViewerResult>,
    /// Session events that mean trouble.
    pub trouble: Trouble,
    /// ClearKey answers other than the right key (first few).
    pub clearkey_failures: Vec<String>,
    /// Wall time of the crowd.
    pub duration_s: f64,
}

impl SoakRun {
    /// Everything that went wrong, as sentences (empty: the run passed).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for viewer in &self.viewers {
            if let Some(error) = &viewer.error {
                problems.push(format!("{} failed: {error}", viewer.account));
            }
            if viewer.corrupt_bytes > 0 {
                problems.push(format!(
                    "{} got {} bytes that differ from the packaged ones",
                    viewer.account, viewer.corrupt_bytes
                ));
            }
        }
        let refusals: u64 = self.windows.iter().map(Window::token_refusals).sum();
        if refusals > 0 {
            problems.push(format!(
                "{refusals} token refusals counted by the servers (tracker {}, seeds {}, license server {})",
                self.windows
                    .iter()
                    .map(|w| w.tracker_token_refusals)
                    .sum::<u64>(),
                self.windows
                    .iter()
                    .map(|w| w.seed_token_refusals)
                    .sum::<u64>(),
                self.windows
                    .iter()
                    .map(|w| w.license_token_refusals)
                    .sum::<u64>()
            ));
        }
        let clearkey_failed: u64 = self.windows.iter().map(|w| w.clearkey_failed).sum();
        if clearkey_failed > 0 {
            problems.push(format!(
                "{clearkey_failed} ClearKey requests not answered with the key: {:?}",
                self.clearkey_failures
            ));
        }
        if self.trouble.sessions_ended > 0 {
            problems.push(format!(
                "{} sessions ended on their own",
                self.trouble.sessions_ended
            ));
        }
        problems
    }

    /// Renewals over the whole run.
    pub fn license_renewals(&self) -> u64 {
        self.windows.iter().map(|w| w.license_renewals).sum()
    }

    /// The readable table: one row per window.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:>9} {:>5} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} {:>9}\n",
            "window",
            "view.",
            "VOD MB",
            "VOD p2p",
            "live MB",
            "livep2p",
            "stall s",
            "renew",
            "refresh",
            "announc",
            "refused",
            "peers",
            "seeds",
            "clearkey"
        );
        for w in &self.windows {
            out.push_str(&format!(
                "{:>4.0}-{:<4.0} {:>5} {:>7.1} {:>6.0}% {:>7.1} {:>6.0}% {:>8.1} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} {:>9}\n",
                w.from_s,
                w.to_s,
                w.watching,
                w.vod.total() as f64 / 1e6,
                100.0 * w.vod.peer_share(),
                w.live.total() as f64 / 1e6,
                100.0 * w.live.peer_share(),
                w.rebuffer_s,
                w.license_renewals,
                w.token_refreshes,
                w.announces,
                w.token_refusals(),
                w.peers_connected,
                w.seeds_connected,
                format!("{}/{}", w.clearkey_ok, w.clearkey_ok + w.clearkey_failed),
            ));
        }
        let mut all = Bytes::default();
        for w in &self.windows {
            all.add(w.bytes());
        }
        out.push_str(&format!(
            "total: {:.1} MB, {:.0}% from peers, {:.0}% from the seed, {:.0}% from the CDN; \
             {} renewals, {} refreshes, {} token refusals; stalls {:.1} s in {}\n",
            all.total() as f64 / 1e6,
            100.0 * all.peer_share(),
            100.0 * all.seed as f64 / all.total().max(1) as f64,
            100.0 * all.cdn as f64 / all.total().max(1) as f64,
            self.license_renewals(),
            self.windows.iter().map(|w| w.token_refreshes).sum::<u64>(),
            self.windows.iter().map(Window::token_refusals).sum::<u64>(),
            self.windows.iter().map(|w| w.rebuffer_s).sum::<f64>(),
            self.windows.iter().map(|w| w.rebuffers).sum::<u64>(),
        ));
        out
    }
}

/// The sessions of the crowd, watching or done.
#[derive(Default)]
struct Crowd {
    watching: Vec<(Kind, Arc<Session>)>,
    /// Final counters of the sessions that are done.
    done: Vec<(Kind, Stats)>,
}

impl Crowd {
    fn totals(&self) -> Totals {
        let mut totals = Totals {
            watching: self.watching.len(),
            ..Totals::default()
        };
        let mut add = |kind: Kind, stats: &Stats| {
            totals.bytes.entry(kind).or_default().add(Bytes::of(stats));
            totals.rebuffer_ms += stats.rebuffer_time.as_millis() as u64;
            totals.rebuffers += u64::from(stats.rebuffer_count);
            totals.renewals += stats.license_renewals;
        };
        for (kind, stats) in &self.done {
            add(*kind, stats);
        }
        for (kind, session) in &self.watching {
            let stats = session.stats();
            add(*kind, &stats);
            totals.peers_connected += stats.peers_connected;
            totals.seeds_connected += stats.seeds_connected;
            totals.min_peers_connected = Some(
                totals
                    .min_peers_connected
                    .map_or(stats.peers_connected, |m| m.min(stats.peers_connected)),
            );
        }
        totals
    }
}

/// ClearKey answers within the current window.
#[derive(Default)]
struct Probes {
    ok: u64,
    failed: u64,
    periods: std::collections::BTreeSet<u32>,
}

/// How many ClearKey failures and trouble messages the report keeps.
const KEEP_MESSAGES: usize = 20;
/// A viewer's run may overrun its plan by this much before it is aborted.
const VIEWER_SLACK: Duration = Duration::from_secs(90);

/// Runs the soak.
pub async fn run(config: &SoakConfig) -> anyhow::Result<SoakRun> {
    config.check()?;
    let started = Instant::now();
    let content = Content {
        live: if config.live_viewers > 0 {
            vec![config.rendition.clone()]
        } else {
            Vec::new()
        },
        vod: (config.vod_viewers > 0)
            .then(|| -> anyhow::Result<VodContent> {
                Ok(VodContent {
                    titles: vec![VOD_TITLE.to_owned()],
                    rendition: config.rendition.clone(),
                    segments: config.vod_segments()?,
                })
            })
            .transpose()?,
    };
    let options = DeployOptions {
        policy: config.policy(),
        live_key_period_segments: config.live_key_period_segments,
        token_clock_skew_s: config.token_clock_skew_s,
        listen: None,
    };
    let deployment =
        Deployment::start_with(&content, std::slice::from_ref(&config.seed), &options).await?;
    eprintln!(
        "{}: processes up in {:.1} s (logs in {}); dashboard {}",
        config.name,
        started.elapsed().as_secs_f64(),
        deployment.dir.path().join("logs").display(),
        deployment.dashboard_url()
    );
    let result = crowd(config, &deployment).await;
    let stopped = deployment.shutdown();
    let run = result?;
    stopped?;
    Ok(run)
}

/// Who joins when: alternating titles, spread over the join window.
fn plan(config: &SoakConfig) -> Vec<(Kind, Duration)> {
    let total = config.vod_viewers + config.live_viewers;
    let mut kinds = Vec::with_capacity(total);
    let (mut vod, mut live) = (config.vod_viewers, config.live_viewers);
    while vod + live > 0 {
        if vod > 0 && (vod >= live || live == 0) {
            kinds.push(Kind::Vod);
            vod -= 1;
        }
        if live > 0 {
            kinds.push(Kind::Live);
            live -= 1;
        }
    }
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let at = if total <= 1 {
                0.0
            } else {
                config.join_window_s as f64 * i as f64 / (total - 1) as f64
            };
            (kind, Duration::from_secs_f64(at))
        })
        .collect()
}

async fn crowd(config: &SoakConfig, deployment: &Deployment) -> anyhow::Result<SoakRun> {
    // Live: join an event under way.
    if config.live_viewers > 0 {
        let needed = config.latency_segments + 1;
        let wait_until = Instant::now() + Duration::from_secs(60);
        while deployment.published() < needed {
            anyhow::ensure!(
                Instant::now() < wait_until,
                "the live stream did not reach {needed} segments within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let segment_ms = config.segment_ms()?;
    // The process's TLS crypto provider, as the SDK installs it (reqwest
    // needs one even for plain HTTP).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let crowd = Arc::new(Mutex::new(Crowd::default()));
    let trouble = Arc::new(Mutex::new(Trouble::default()));
    let probes = Arc::new(Mutex::new(Probes::default()));
    let keys = Arc::new(KeyCache::new(deployment));
    let live_period = {
        let published = deployment.published_counter();
        let every = u64::from(config.live_key_period_segments);
        move || -> u32 {
            if every == 0 {
                return 0;
            }
            let newest = published.load(Ordering::Relaxed).saturating_sub(1);
            u32::try_from(newest / every).unwrap_or(u32::MAX)
        }
    };
    let watch = Duration::from_secs(config.duration_s);
    let t0 = Instant::now();
    let mut viewers = Vec::new();
    for (index, (kind, join_at)) in plan(config).into_iter().enumerate() {
        let account = format!("viewer-{index:03}");
        let location = config.locations[index % config.locations.len()].clone();
        let mut builder =
            deployment
                .endpoints
                .viewer_builder(true, &location.region, &location.isp);
        if let Some(skew) = config.token_clock_skew_s {
            builder = builder.credential_clock_skew(Duration::from_secs(skew));
        }
        let entitlement = deployment.entitlement(&account);
        let crowd = crowd.clone();
        let trouble = trouble.clone();
        let probes = probes.clone();
        let keys = keys.clone();
        let http = http.clone();
        let live_period = live_period.clone();
        let packaged = deployment.packaged.clone();
        let config = config.clone();
        viewers.push(tokio::spawn(async move {
            tokio::time::sleep(join_at).await;
            let joined_s = t0.elapsed().as_secs_f64();
            let mut result = ViewerResult::nothing_yet(account.clone(), kind, joined_s);
            let loaves = match builder.build() {
                Ok(loaves) => loaves,
                Err(e) => {
                    result.error = Some(e.to_string());
                    return result;
                }
            };
            // A VOD player keeps as much requested ahead as the SDK buffers.
            let buffer_ahead = loaves.buffer_target();
            let session = match loaves.open(kind.title(), entitlement).await {
                Ok(session) => Arc::new(session),
                Err(e) => {
                    result.error = Some(e.to_string());
                    return result;
                }
            };
            let recorder = tokio::spawn(record_trouble(session.events(), trouble));
            lock(&crowd).watching.push((kind, session.clone()));
            let prober = (config.clearkey_probe_s > 0).then(|| {
                tokio::spawn(probe_clearkey(
                    session.clone(),
                    kind,
                    Duration::from_secs(config.clearkey_probe_s),
                    http,
                    keys,
                    live_period,
                    probes,
                ))
            });
            let played = match RenditionName::new(config.rendition.as_str()) {
                Ok(rendition) => match kind {
                    Kind::Vod => player::play(&session, &rendition, buffer_ahead).await,
                    Kind::Live => {
                        player::play_live(&session, &rendition, config.latency_segments, watch)
                            .await
                    }
                },
                Err(e) => Err(loaves_client_sdk::Error::from(e).into()),
            };
            if let Some(prober) = prober {
                prober.abort();
                // Its end drops its hold on the session (closed below).
                let _ = prober.await;
            }
            let stats = session.stats();
            {
                let mut crowd = lock(&crowd);
                crowd.watching.retain(|(_, s)| !Arc::ptr_eq(s, &session));
                crowd.done.push((kind, stats));
            }
            result.rebuffers = stats.rebuffer_count;
            result.rebuffer_s = stats.rebuffer_time.as_secs_f64();
            result.license_renewals = stats.license_renewals;
            result.bytes = Bytes::of(&stats);
            match &played {
                Ok(report) => {
                    result.segments = report.sha256.len().saturating_sub(1) as u64;
                    result.sequences = (result.segments > 0).then(|| {
                        (
                            report.first_sequence,
                            report.first_sequence + result.segments - 1,
                        )
                    });
                    result.corrupt_bytes = demo::corrupt_bytes_of_title(
                        &packaged,
                        kind.title(),
                        &config.rendition,
                        report,
                    );
                }
                Err(e) => result.error = Some(e.to_string()),
            }
            match Arc::try_unwrap(session) {
                Ok(session) => {
                    if let Err(e) = session.close().await {
                        result.error.get_or_insert(format!("close: {e}"));
                    }
                }
                Err(_) => {
                    result
                        .error
                        .get_or_insert("session still shared at close".into());
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), recorder).await;
            result
        }));
    }

    let plans_end = Duration::from_secs(config.join_window_s)
        + watch
        + Duration::from_millis(segment_ms * config.latency_segments)
        + VIEWER_SLACK;
    let window = Duration::from_secs(config.window_s);
    let mut windows = Vec::new();
    let totals = lock(&crowd).totals();
    let mut before = (totals, server_counters(&http, deployment).await?);
    let mut window_start = Duration::ZERO;
    // Bounded by `plans_end` (the last viewer's plan plus slack).
    loop {
        let finished = viewers.iter().all(tokio::task::JoinHandle::is_finished);
        let now = t0.elapsed();
        if now >= window_start + window || finished || now >= plans_end {
            let totals = lock(&crowd).totals();
            let after = (totals, server_counters(&http, deployment).await?);
            let probed = std::mem::take(&mut *lock(&probes));
            let row = window_row(window_start, t0.elapsed(), &before, &after, probed);
            eprintln!(
                "{:>4.0} s · watching {} · VOD {:.0}% peers · live {:.0}% peers · renewals {} · refreshes {} · token refusals {} · peers {}",
                row.to_s,
                row.watching,
                100.0 * row.vod.peer_share(),
                100.0 * row.live.peer_share(),
                row.license_renewals,
                row.token_refreshes,
                row.token_refusals(),
                row.peers_connected
            );
            windows.push(row);
            before = after;
            window_start = t0.elapsed();
        }
        if finished || now >= plans_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for viewer in &viewers {
        viewer.abort();
    }
    let mut results = Vec::new();
    for viewer in viewers {
        match viewer.await {
            Ok(result) => results.push(result),
            Err(e) => results.push(ViewerResult {
                error: Some(format!("did not finish in time: {e}")),
                ..ViewerResult::nothing_yet("?".into(), Kind::Vod, 0.0)
            }),
        }
    }
    let clearkey_failures = lock(&keys.failures).clone();
    let trouble = lock(&trouble).clone();
    Ok(SoakRun {
        config: config.clone(),
        token_lifetime_s: config.token_lifetime().as_secs(),
        windows,
        viewers: results,
        trouble,
        clearkey_failures,
        duration_s: t0.elapsed().as_secs_f64(),
    })
}

fn window_row(
    from: Duration,
    to: Duration,
    before: &(Totals, ServerCounters),
    after: &(Totals, ServerCounters),
    probed: Probes,
) -> Window {
    let (b, a) = (&before.0, &after.0);
    let bytes = |kind: Kind| {
        a.bytes
            .get(&kind)
            .copied()
            .unwrap_or_default()
            .since(b.bytes.get(&kind).copied().unwrap_or_default())
    };
    let servers = after.1.since(before.1);
    let n = |x: f64| x.round() as u64;
    Window {
        from_s: from.as_secs_f64(),
        to_s: to.as_secs_f64(),
        watching: a.watching,
        vod: bytes(Kind::Vod),
        live: bytes(Kind::Live),
        rebuffer_s: a.rebuffer_ms.saturating_sub(b.rebuffer_ms) as f64 / 1000.0,
        rebuffers: a.rebuffers.saturating_sub(b.rebuffers),
        license_renewals: a.renewals.saturating_sub(b.renewals),
        token_refreshes: n(servers.refreshes),
        announces: n(servers.announces),
        tracker_token_refusals: n(servers.tracker_refusals),
        tracker_expired: n(servers.tracker_expired),
        seed_token_refusals: n(servers.seed_refusals),
        seed_expired: n(servers.seed_expired),
        license_token_refusals: n(servers.license_refusals),
        peers_connected: a.peers_connected,
        seeds_connected: a.seeds_connected,
        min_peers_connected: a.min_peers_connected.unwrap_or(0),
        clearkey_ok: probed.ok,
        clearkey_failed: probed.failed,
        live_key_periods: probed.periods.into_iter().collect(),
    }
}

/// The servers' own counters: the tracker's refreshes, announces and token
/// refusals, every seed's credential refusals, the license server's.
async fn server_counters(
    http: &reqwest::Client,
    deployment: &Deployment,
) -> anyhow::Result<ServerCounters> {
    let tracker = scrape::scrape(http, deployment.tracker_http).await?;
    let license = scrape::scrape(http, deployment.license_http).await?;
    let mut seeds = Vec::new();
    for (_, addr) in &deployment.seeds {
        seeds.push(scrape::scrape(http, *addr).await?);
    }
    let seed_sum = |f: &dyn Fn(&Exposition) -> f64| seeds.iter().map(f).sum::<f64>();
    Ok(ServerCounters {
        refreshes: tracker.sum(
            "loaves_tracker_requests_total",
            &["kind=\"refresh\"", "result=\"ok\""],
        ),
        announces: tracker.sum(
            "loaves_tracker_requests_total",
            &["kind=\"announce\"", "result=\"ok\""],
        ),
        tracker_refusals: tracker.sum("loaves_tracker_rejected_tokens_total", &[]),
        tracker_expired: tracker.sum(
            "loaves_tracker_rejected_tokens_total",
            &["reason=\"expired\""],
        ),
        seed_refusals: seed_sum(&|e| {
            // A hello that never finished its handshake is no token matter.
            e.sum("loaves_seed_hello_refused_total", &[])
                - e.sum("loaves_seed_hello_refused_total", &["reason=\"handshake\""])
                + e.sum(
                    "loaves_seed_requests_total",
                    &["protocol=\"quic\"", "status=\"forbidden\""],
                )
        }),
        seed_expired: seed_sum(&|e| {
            e.sum("loaves_seed_hello_refused_total", &["reason=\"expired\""])
        }),
        license_refusals: LICENSE_TOKEN_REFUSALS
            .iter()
            .map(|reason| {
                license.sum(
                    "loaves_license_denials_total",
                    &[&format!("reason=\"{reason}\"")],
                )
            })
            .sum(),
    })
}

async fn record_trouble(mut events: loaves_client_sdk::Events, trouble: Arc<Mutex<Trouble>>) {
    while let Some(event) = events.next().await {
        let mut trouble = lock(&trouble);
        let message = match event {
            Event::TrackerUnavailable { message } => {
                trouble.tracker_unavailable += 1;
                format!("tracker unavailable: {message}")
            }
            Event::LicenseRenewalFailed { message } => {
                trouble.renewal_failed += 1;
                format!("license renewal failed: {message}")
            }
            Event::SessionEnded { reason } => {
                trouble.sessions_ended += 1;
                format!("session ended: {reason}")
            }
            _ => continue,
        };
        if trouble.messages.len() < KEEP_MESSAGES {
            trouble.messages.push(message);
        }
    }
}

/// A content key: (key id, key).
type KeyPair = ([u8; 16], [u8; 16]);

/// Content keys as the key service gives them (what a ClearKey answer
/// must hold), fetched once per (title, period).
struct KeyCache {
    source: Arc<GrpcKeySource>,
    keys: Mutex<HashMap<(&'static str, u32), KeyPair>>,
    /// ClearKey answers other than the right key.
    failures: Mutex<Vec<String>>,
}

impl KeyCache {
    fn new(deployment: &Deployment) -> Self {
        Self {
            source: Arc::new(GrpcKeySource::new(
                deployment.key_service.url.clone(),
                Some(ADMIN_TOKEN.to_owned()),
                Some(deployment.key_service.ca_pem.clone().into_bytes()),
            )),
            keys: Mutex::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
        }
    }

    /// (KID, key) of the video key of `title` for `period`.
    async fn get(&self, title: &'static str, period: u32) -> anyhow::Result<([u8; 16], [u8; 16])> {
        if let Some(known) = lock(&self.keys).get(&(title, period)) {
            return Ok(*known);
        }
        let source = self.source.clone();
        // The key service client blocks.
        let keys = tokio::task::spawn_blocking(move || {
            source.get_keys(
                title,
                &[KeyRequest {
                    track_type: "hd".into(),
                    key_period: period,
                }],
            )
        })
        .await
        .context("the key service call panicked")??;
        let key = keys.first().context("the key service answered no key")?;
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(key.key.as_bytes());
        let entry = (key.kid.0, bytes);
        lock(&self.keys).insert((title, period), entry);
        Ok(entry)
    }

    fn failed(&self, message: String) {
        let mut failures = lock(&self.failures);
        if failures.len() < KEEP_MESSAGES {
            failures.push(message);
        }
    }
}

/// Asks `session`'s player endpoint for the key its player needs now,
/// every `every`, as a player's ClearKey module would; counts the answers.
async fn probe_clearkey(
    session: Arc<Session>,
    kind: Kind,
    every: Duration,
    http: reqwest::Client,
    keys: Arc<KeyCache>,
    live_period: impl Fn() -> u32,
    probes: Arc<Mutex<Probes>>,
) {
    let url = format!("http://{}/clearkey/license", session.player_addr());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let period = match kind {
            Kind::Vod => 0,
            Kind::Live => live_period(),
        };
        let (kid, key) = match keys.get(kind.title(), period).await {
            Ok(known) => known,
            // The runner's own trouble, not the session's: noted, not
            // counted, and asked again next time.
            Err(e) => {
                keys.failed(format!("(not counted) key service: {e:#}"));
                continue;
            }
        };
        let body = format!(
            "{{\"kids\":[\"{}\"],\"type\":\"temporary\"}}",
            URL_SAFE_NO_PAD.encode(kid)
        );
        // A browser sends a request again, once, when a kept-alive
        // connection fails before any answer (the server closed it as it
        // was reused); so does this player.
        let answer = match http.post(&url).body(body.clone()).send().await {
            Err(e) if e.is_request() || e.is_connect() => http.post(&url).body(body).send().await,
            other => other,
        };
        let outcome = match answer {
            Ok(answer) => {
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                let expected = format!("\"k\":\"{}\"", URL_SAFE_NO_PAD.encode(key));
                if status.is_success() && text.contains(&expected) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} period {period}: {status} {}",
                        kind.title(),
                        text.chars().take(120).collect::<String>()
                    ))
                }
            }
            Err(e) => Err(format!("{} period {period}: {e}", kind.title())),
        };
        let mut probes = lock(&probes);
        match outcome {
            Ok(()) => {
                probes.ok += 1;
                if kind == Kind::Live {
                    probes.periods.insert(period);
                }
            }
            Err(message) => {
                probes.failed += 1;
                drop(probes);
                keys.failed(message);
            }
        }
    }
}
