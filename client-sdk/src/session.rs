//! The app-facing API: a [`Loaves`] instance built once per app, and a
//! [`Session`] per title being played.
//!
//! ```no_run
//! # async fn demo(entitlement: Vec<u8>, options: loaves_client_sdk::Options)
//! #     -> Result<(), loaves_client_sdk::Error> {
//! use loaves_client_sdk::Loaves;
//! let loaves = Loaves::builder().options(options).build()?;
//! let session = loaves.open("sample", entitlement).await?;
//! println!("point the player at {}", session.player_url());
//! let mut events = session.events();
//! while let Some(event) = events.next().await {
//!     println!("{event:?}");
//! }
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! `open` acquires a license, fetches and verifies the signed manifest and
//! the init segment of every rendition from the CDN, starts one driver task
//! per rendition ([`crate::track`]), the peer endpoint (QUIC: upload server
//! and outgoing peer connections, [`crate::peers`]), the tracker announcer,
//! the license heartbeat and the local player endpoint
//! ([`crate::endpoint`]). With P2P off there is no peer endpoint; the
//! announcer still reports the session's stats when a tracker is
//! configured (the CDN-only cohort), from a client-only QUIC socket.
//!
//! A rendition whose manifest is not final is live: the session follows it
//! (new signed chunks verified and appended as the origin publishes them)
//! until its final chunk; [`Session::is_live`], [`Session::live_edge`] and
//! [`Session::segment_range`] tell an app where the event is, and
//! [`crate::player::play_live`] plays it near the edge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loaves_proto::UnixSeconds;
use loaves_proto::identity::PeerIdentity;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::{MAX_CHUNK_LEN, Manifest};
use tokio::sync::{broadcast, oneshot, watch};

use loaves_proto::cmaf::decrypt::{ClearInit, decrypt_init};
use loaves_proto::keys::ContentKey;

use crate::cdn::{CdnClient, CdnConfig, CdnError};
use crate::license::{
    LicenseClient, LicenseClientError, LicenseRequest, LicenseServerConfig, LicensedSession,
};
use crate::scheduler::{DropReason, SchedulerStats, Source};
use crate::store::{SegmentKey, SegmentStore};
use crate::track::{TrackHandle, TrackMsg};

/// Upload policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Never serve other viewers (no upload server, nothing announced).
    Off,
    /// Serve other viewers at most this many bytes per second in total.
    Capped {
        /// The cap, bytes per second.
        bytes_per_second: u64,
    },
}

/// The kind of network the device is on, as the app knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkType {
    /// Wi-Fi, Ethernet: no per-byte cost.
    Unmetered,
    /// Cellular or another per-byte-billed network.
    Metered,
}

/// Everything an SDK instance needs. `Default` leaves the license server,
/// the manifest keys and the CDN URLs empty: set them.
#[derive(Debug, Clone)]
pub struct Options {
    /// How to reach and trust the license server.
    pub license: LicenseServerConfig,
    /// The W3C ClearKey endpoint of the license server (`http://host:port/clearkey`),
    /// to which the player endpoint proxies the player's license requests.
    pub clearkey_url: Option<String>,
    /// The origin's manifest signing keys (manifests are verified with them).
    pub manifest_keys: Keyring,
    /// CDN base URLs with failover; title `T` is expected under `T/`.
    pub cdn: CdnConfig,
    /// The tracker's QUIC address; `None` runs without a tracker. With P2P
    /// off the tracker only receives the session's stats (the CDN-only
    /// cohort's baseline): nothing is advertised and no peer is contacted.
    pub tracker: Option<SocketAddr>,
    /// The P2P switch. Off: every byte from the CDN, no peers; stats still
    /// go to the tracker when one is configured.
    pub p2p: bool,
    /// Upload policy.
    pub upload: Upload,
    /// Upload only when the app says the network is unmetered.
    pub upload_only_unmetered: bool,
    /// Most peers downloaded from at once, per rendition.
    pub max_peers: usize,
    /// Most viewers served at once.
    pub max_upload_connections: usize,
    /// With a capped upload: a request that arrives while the uploads in
    /// progress are more than this far behind the cap is answered BUSY at
    /// once (the requester backs off and goes elsewhere) instead of joining
    /// a queue it would wait in, pieces arriving late or stalling.
    pub max_upload_backlog: Duration,
    /// How far ahead of the playhead segments are fetched.
    pub buffer_target: Duration,
    /// Memory for verified segments (own playback and upload).
    pub store_budget_bytes: u64,
    /// Region and ISP hints (sent to the license server, compared with
    /// other peers' to account cross-ISP bytes).
    pub region: String,
    /// See `region`.
    pub isp: String,
    /// Local address for the peer endpoint (port 0: any).
    pub peer_bind: SocketAddr,
    /// The address announced to other peers (default: the bound one).
    pub peer_advertise: Option<SocketAddr>,
    /// Media time per wall time. 1.0 is real time; tests and demos compress
    /// playback (segment deadlines shrink by this factor).
    pub playback_speed: f64,
    /// Longest time between tracker announces (the tracker's interval
    /// applies when shorter).
    pub max_announce_interval: Duration,
    /// License heartbeat interval, overriding the license policy's when set
    /// (and shorter).
    pub renewal_interval: Option<Duration>,
    /// How many events a slow `events()` reader may lag before losing some.
    pub event_capacity: usize,
    /// Decrypt inside the SDK, for players without a DRM module: the player
    /// endpoint serves clear CMAF (original `avc1`/`mp4a` sample entries, no
    /// `sinf`/`pssh`, samples decrypted, no `senc`/`saiz`/`saio`) and
    /// playlists without key tags or `ContentProtection`.
    ///
    /// **Weaker protection.** The content keys then sit in the app's memory
    /// for the session, and clear media crosses the loopback HTTP endpoint,
    /// where any local process (or a modified app) can read it; a DRM
    /// module keeps both inside its own boundary. Use it only where the
    /// content owner accepts that (previews, low-value or open content,
    /// platforms without EME). Segments are still verified against the
    /// signed manifest before decryption, the store and peers only ever
    /// hold ciphertext, and a segment whose key the license lacks is an
    /// HTTP error (403), never ciphertext offered as clear.
    pub decrypt: bool,
    /// Fault injection for tests: serve every uploaded segment with one byte
    /// flipped (a lying peer). Never set this in an app.
    #[doc(hidden)]
    pub tamper_uploads: bool,
    /// Fault injection for tests: announce and HAVE segments this session
    /// does not hold (the next few after each one it does hold), so peers
    /// ask it for them and are refused (a lying peer). Never set this in an
    /// app.
    #[doc(hidden)]
    pub lie_about_holdings: bool,
    /// Experimental, for load tests: an emulated access link for this
    /// session (download rate, added latency), applied to CDN fetches and
    /// peer transfers alike; the upload rate is `upload`. Never set this in
    /// an app.
    #[doc(hidden)]
    pub link: crate::cdn::LinkLimits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            license: LicenseServerConfig {
                url: String::new(),
                ca_pem: None,
                tls_server_name: None,
                trusted_keys: Keyring::default(),
                request_timeout: Duration::from_secs(10),
            },
            clearkey_url: None,
            manifest_keys: Keyring::default(),
            cdn: CdnConfig::default(),
            tracker: None,
            p2p: true,
            upload: Upload::Capped {
                bytes_per_second: 2_000_000,
            },
            upload_only_unmetered: false,
            max_peers: 8,
            max_upload_connections: 16,
            max_upload_backlog: Duration::from_millis(250),
            buffer_target: Duration::from_secs(16),
            store_budget_bytes: 64 << 20,
            region: String::new(),
            isp: String::new(),
            peer_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            peer_advertise: None,
            playback_speed: 1.0,
            max_announce_interval: Duration::from_secs(30),
            renewal_interval: None,
            event_capacity: 1024,
            decrypt: false,
            tamper_uploads: false,
            lie_about_holdings: false,
            link: crate::cdn::LinkLimits::default(),
        }
    }
}

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options are unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The license could not be acquired, renewed or released.
    #[error("license: {0}")]
    License(#[from] LicenseClientError),
    /// The CDN failed.
    #[error("CDN: {0}")]
    Cdn(#[from] CdnError),
    /// A manifest, playlist or init segment is invalid or fails verification.
    #[error("presentation: {0}")]
    Presentation(String),
    /// A local socket or QUIC endpoint could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A segment was verified and is ready for the player.
    SegmentDelivered {
        /// Rendition.
        rendition: String,
        /// Sequence number.
        sequence: u64,
        /// Where its bytes came from (the last transfer's source).
        source: Source,
        /// Its size.
        bytes: u64,
        /// From the fetch decision to verification.
        elapsed: Duration,
    },
    /// Bytes failed manifest verification and were thrown away.
    SegmentRejected {
        /// Rendition.
        rendition: String,
        /// Sequence number.
        sequence: u64,
        /// The source that sent them.
        source: Source,
    },
    /// A peer was dropped for the rest of the session.
    PeerBanned {
        /// Rendition (swarm) it was dropped from.
        rendition: String,
        /// Its public key (hex).
        peer: String,
        /// Why.
        reason: DropReason,
    },
    /// The player ran out of media.
    RebufferStart,
    /// The player has media again; the stall lasted `duration`.
    RebufferEnd {
        /// Length of the stall.
        duration: Duration,
    },
    /// Playback started `startup` after `open` returned.
    Started {
        /// Startup time.
        startup: Duration,
    },
    /// The license heartbeat succeeded.
    LicenseRenewed,
    /// The license heartbeat failed (the player will lose access when the
    /// license expires).
    LicenseRenewalFailed {
        /// The error.
        message: String,
    },
    /// The tracker could not be reached or refused (playback goes on from
    /// known peers and the CDN).
    TrackerUnavailable {
        /// The error.
        message: String,
    },
    /// New bytes of a live manifest failed verification (bad signature,
    /// broken chain, malformed): nothing of them was applied, and the
    /// segments they list are not played. Following goes on (with backoff)
    /// from the last verified chunk.
    ManifestRejected {
        /// Rendition.
        rendition: String,
        /// Why.
        message: String,
    },
    /// A live manifest could not be re-read from the CDN (emitted once per
    /// run of failures; following goes on with backoff).
    ManifestUnavailable {
        /// Rendition.
        rendition: String,
        /// The error.
        message: String,
    },
}

/// A snapshot of a session's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    /// Verified bytes from other viewers.
    pub bytes_from_peers: u64,
    /// Verified bytes from edge seeds.
    pub bytes_from_seeds: u64,
    /// Verified bytes from the CDN.
    pub bytes_from_cdn: u64,
    /// Verified bytes whose peer was in another ISP.
    pub bytes_cross_isp: u64,
    /// Verified bytes whose peer was in another region.
    pub bytes_cross_region: u64,
    /// Bytes uploaded to other viewers.
    pub bytes_uploaded: u64,
    /// Requests from other viewers answered BUSY because the uploads in
    /// progress were already more than `max_upload_backlog` behind the
    /// upload cap.
    pub uploads_refused_busy: u64,
    /// Share of downloaded bytes that did not come from the CDN.
    pub offload_ratio: f64,
    /// Segments verified.
    pub segments_delivered: u64,
    /// Transfers whose bytes failed verification.
    pub segments_rejected: u64,
    /// Peers dropped (corrupt, slow, stalled).
    pub peers_banned: u64,
    /// Total stall time reported by the player.
    pub rebuffer_time: Duration,
    /// Stalls reported by the player.
    pub rebuffer_count: u32,
    /// Wall time the player reported playing: from `player_started` or a
    /// playing playhead, minus stalls and paused playhead reports. Wall
    /// time, like `rebuffer_time`, so that rebuffer / (played + rebuffer)
    /// is a share of the viewer's time (media time played is this times
    /// [`Options::playback_speed`]).
    pub played_time: Duration,
    /// Time from `open` returning to the first segment played.
    pub startup_time: Option<Duration>,
    /// Bytes of verified segments held now (at most the store budget).
    pub store_bytes: u64,
}

/// Counters shared by the session's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cross_isp: AtomicU64,
    pub(crate) cross_region: AtomicU64,
    pub(crate) uploaded: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) banned: AtomicU64,
    pub(crate) rebuffer_ms: AtomicU64,
    pub(crate) rebuffer_count: AtomicU64,
    /// Startup in ms + 1 (0: not started).
    pub(crate) startup_ms_plus_one: AtomicU64,
    pub(crate) play_clock: Mutex<PlayClock>,
}

/// Wall time the player spent playing. The player's hooks switch it on
/// (started, playing playhead, stall over) and off (stall, paused
/// playhead); a std lock because every use is a short update.
#[derive(Debug, Default)]
pub(crate) struct PlayClock {
    /// Played before the current run.
    played: Duration,
    /// Start of the current run, while playing.
    since: Option<Instant>,
}

impl PlayClock {
    /// The player is playing from `now` (no-op if it already was).
    fn play(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// The player stopped at `now` (stalled, paused or gone).
    fn pause(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.played += now.saturating_duration_since(since);
        }
    }

    /// Played up to `now`.
    fn total(&self, now: Instant) -> Duration {
        self.played
            + self
                .since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// One rendition of the presentation, verified.
///
/// A live rendition's manifest grows while the session runs: its follower
/// task ([`crate::track::follow_live`]) appends verified chunks, the track
/// reads new segments from it and forgets old ones, the player endpoint
/// rebuilds the live playlist from it. Hence the lock; it is a std lock
/// because no holder ever awaits (every access is a short, synchronous
/// read or append).
#[derive(Debug)]
pub(crate) struct Rendition {
    pub(crate) name: String,
    pub(crate) manifest: RwLock<Manifest>,
    pub(crate) init: Bytes,
    /// The origin's media playlist as fetched at `open` (served as is for
    /// VOD; a live playlist is rebuilt from the manifest).
    pub(crate) media_playlist: Bytes,
    /// The manifest was not final at `open`: the rendition is followed.
    pub(crate) live: bool,
    /// Bytes of `manifest.lvm` consumed so far (verified and appended, or
    /// at `open`): where the next range request starts.
    pub(crate) consumed: AtomicU64,
    /// Longest segment seen, for `EXT-X-TARGETDURATION` (which must not
    /// shrink while a live playlist is followed).
    pub(crate) longest_ms: AtomicU32,
    /// `EXT-X-KEY` lines per key period, learned from the origin's media
    /// playlist (the signed manifest names key periods, not key ids).
    pub(crate) key_lines: Mutex<BTreeMap<u32, String>>,
    /// With [`Options::decrypt`]: the clear init segment and how the
    /// rendition's segments are protected (read once at `open`).
    pub(crate) clear_init: Option<Arc<ClearInit>>,
}

impl Rendition {
    /// The verified manifest, for reading.
    pub(crate) fn manifest(&self) -> RwLockReadGuard<'_, Manifest> {
        self.manifest.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The verified manifest, for appending or forgetting.
    pub(crate) fn manifest_mut(&self) -> RwLockWriteGuard<'_, Manifest> {
        self.manifest.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Typical (longest) segment duration in media milliseconds.
    pub(crate) fn typical_ms(&self) -> u32 {
        self.longest_ms.load(Ordering::Relaxed)
    }

    /// Records segment durations seen (for the target duration).
    pub(crate) fn saw_durations(&self, durations: impl Iterator<Item = u32>) {
        for ms in durations {
            self.longest_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// Learns the `EXT-X-KEY` lines of each key period from an origin media
    /// playlist: the group of key tags in force at a segment belongs to
    /// that segment's key period (as the verified manifest lists it).
    /// Returns whether the playlist carried any key tag.
    pub(crate) fn learn_key_lines(&self, playlist: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(playlist) else {
            return false;
        };
        let mut group: Vec<&str> = Vec::new();
        let mut new_group = true;
        let mut any = false;
        let mut learned = Vec::new();
        {
            let manifest = self.manifest();
            for line in text.lines().map(str::trim) {
                if line.starts_with("#EXT-X-KEY:") {
                    any = true;
                    if new_group {
                        group.clear();
                        new_group = false;
                    }
                    group.push(line);
                } else if !line.starts_with('#') && !line.is_empty() {
                    new_group = true;
                    if let Some(info) = crate::track::parse_segment_file(line)
                        .and_then(|sequence| manifest.segment(sequence))
                        && !group.is_empty()
                    {
                        learned.push((info.key_period, group.join("\n")));
                    }
                }
            }
        }
        let mut lines = lock(&self.key_lines);
        for (period, tags) in learned {
            lines.entry(period).or_insert(tags);
        }
        // Bound: a long event rotates keys many times; periods older than
        // the manifest's oldest segment are of no use any more.
        if let Some(oldest) = self.manifest().segments().next().map(|s| s.key_period) {
            lines.retain(|period, _| *period >= oldest);
        }
        any
    }
}

/// State shared by a session's tasks (tracks, peers, endpoint).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) title: String,
    pub(crate) options: Options,
    pub(crate) cdn: CdnClient,
    pub(crate) identity: PeerIdentity,
    pub(crate) token: Vec<u8>,
    pub(crate) store: Mutex<SegmentStore>,
    /// Sequences held per rendition (mirrors the store, for HAVE and announces).
    pub(crate) held: Mutex<HashMap<String, BTreeSet<u64>>>,
    /// New verified segments, for HAVE notices to connected peers.
    pub(crate) have_tx: broadcast::Sender<(String, u64)>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) counters: Counters,
    pub(crate) metered: AtomicBool,
    pub(crate) opened_at: Instant,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) master_playlist: Bytes,
    pub(crate) dash_manifest: Option<Bytes>,
    pub(crate) renditions: HashMap<String, Arc<Rendition>>,
    pub(crate) scheduler_stats: Mutex<HashMap<String, SchedulerStats>>,
    /// Content keys by key id, from the license and its renewals; filled
    /// only with [`Options::decrypt`] (otherwise the keys stay inside the
    /// license task and are never used by the SDK).
    pub(crate) content_keys: Mutex<HashMap<[u8; 16], ContentKey>>,
}

impl Shared {
    /// Makes the license's keys available to the endpoint's decryption
    /// (with [`Options::decrypt`] only).
    pub(crate) fn learn_keys(&self, licensed: &LicensedSession) {
        if !self.options.decrypt {
            return;
        }
        let mut keys = lock(&self.content_keys);
        for opened in &licensed.keys {
            keys.entry(opened.key_id.0)
                .or_insert_with(|| opened.key.clone());
        }
    }

    /// The content key of `kid`, if the license carried it.
    pub(crate) fn content_key(&self, kid: &[u8; 16]) -> Option<ContentKey> {
        lock(&self.content_keys).get(kid).cloned()
    }

    pub(crate) fn emit(&self, event: Event) {
        // No receiver is fine; a lagging receiver loses the oldest events.
        let _ = self.events.send(event);
    }

    /// The player is playing (or not) from now on, for the played time.
    pub(crate) fn set_playing(&self, playing: bool) {
        let mut clock = lock(&self.counters.play_clock);
        if playing {
            clock.play(Instant::now());
        } else {
            clock.pause(Instant::now());
        }
    }

    /// Whether uploading is allowed right now.
    pub(crate) fn upload_allowed(&self) -> bool {
        self.options.p2p
            && self.options.upload != Upload::Off
            && !(self.options.upload_only_unmetered && self.metered.load(Ordering::Relaxed))
    }

    /// Stores a verified segment and tells connected peers.
    pub(crate) fn store_verified(&self, rendition: &str, sequence: u64, bytes: Bytes) {
        let key = SegmentKey {
            rendition: rendition.to_owned(),
            sequence,
        };
        let evicted = lock(&self.store).insert(key.clone(), bytes);
        let kept = lock(&self.store).contains(&key);
        {
            let mut held = lock(&self.held);
            for gone in evicted {
                if let Some(set) = held.get_mut(&gone.rendition) {
                    set.remove(&gone.sequence);
                }
            }
            if kept {
                held.entry(rendition.to_owned())
                    .or_default()
                    .insert(sequence);
            }
        }
        if kept {
            let _ = self.have_tx.send((rendition.to_owned(), sequence));
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let sched = lock(&self.scheduler_stats);
        let mut stats = Stats::default();
        for s in sched.values() {
            stats.bytes_from_peers += s.bytes_from_peers;
            stats.bytes_from_seeds += s.bytes_from_seeds;
            stats.bytes_from_cdn += s.bytes_from_cdn;
            stats.segments_delivered += s.segments_completed;
        }
        let c = &self.counters;
        stats.bytes_cross_isp = c.cross_isp.load(Ordering::Relaxed);
        stats.bytes_cross_region = c.cross_region.load(Ordering::Relaxed);
        stats.bytes_uploaded = c.uploaded.load(Ordering::Relaxed);
        stats.uploads_refused_busy = c.refused_busy.load(Ordering::Relaxed);
        stats.segments_rejected = c.rejected.load(Ordering::Relaxed);
        stats.peers_banned = c.banned.load(Ordering::Relaxed);
        stats.rebuffer_time = Duration::from_millis(c.rebuffer_ms.load(Ordering::Relaxed));
        stats.rebuffer_count =
            u32::try_from(c.rebuffer_count.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        stats.played_time = lock(&c.play_clock).total(Instant::now());
        stats.startup_time = match c.startup_ms_plus_one.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms - 1)),
        };
        stats.store_bytes = lock(&self.store).used_bytes();
        let total = stats.bytes_from_peers + stats.bytes_from_seeds + stats.bytes_from_cdn;
        if total > 0 {
            stats.offload_ratio = 1.0 - stats.bytes_from_cdn as f64 / total as f64;
        }
        stats
    }
}

/// Completes once the session's shutdown signal is raised (or its sender
/// is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Locks a mutex, carrying on after a panic elsewhere (the data are counters
/// and caches, consistent after every single operation).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// An SDK instance: one peer identity, one set of options; opens sessions.
#[derive(Debug, Clone)]
pub struct Loaves {
    options: Options,
    key: Arc<SigningKeyPair>,
}

/// Builds a [`Loaves`] instance.
#[derive(Debug, Default)]
pub struct LoavesBuilder {
    options: Options,
}

impl LoavesBuilder {
    /// Replaces every option at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The license server.
    pub fn license_server(mut self, config: LicenseServerConfig) -> Self {
        self.options.license = config;
        self
    }

    /// The license server's ClearKey endpoint, for the player's license requests.
    pub fn clearkey_url(mut self, url: impl Into<String>) -> Self {
        self.options.clearkey_url = Some(url.into());
        self
    }

    /// The origin's manifest keys.
    pub fn manifest_keys(mut self, keys: Keyring) -> Self {
        self.options.manifest_keys = keys;
        self
    }

    /// CDN base URLs, in order of preference (failover to the next).
    pub fn cdn_urls(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.options.cdn.base_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The tracker.
    pub fn tracker(mut self, address: SocketAddr) -> Self {
        self.options.tracker = Some(address);
        self
    }

    /// The P2P switch.
    pub fn p2p(mut self, enabled: bool) -> Self {
        self.options.p2p = enabled;
        self
    }

    /// Upload policy.
    pub fn upload(mut self, upload: Upload) -> Self {
        self.options.upload = upload;
        self
    }

    /// Upload only on unmetered networks.
    pub fn upload_only_unmetered(mut self, only: bool) -> Self {
        self.options.upload_only_unmetered = only;
        self
    }

    /// Most peers per rendition.
    pub fn max_peers(mut self, max: usize) -> Self {
        self.options.max_peers = max;
        self
    }

    /// How far ahead to fetch.
    pub fn buffer_target(mut self, target: Duration) -> Self {
        self.options.buffer_target = target;
        self
    }

    /// Region and ISP hints.
    pub fn location(mut self, region: impl Into<String>, isp: impl Into<String>) -> Self {
        self.options.region = region.into();
        self.options.isp = isp.into();
        self
    }

    /// Builds the instance (makes its peer key).
    pub fn build(self) -> Result<Loaves, Error> {
        let o = &self.options;
        if o.cdn.base_urls.is_empty() {
            return Err(Error::Config("no CDN base URL".into()));
        }
        if o.manifest_keys.is_empty() {
            return Err(Error::Config("no manifest key".into()));
        }
        if !(o.playback_speed.is_finite() && o.playback_speed > 0.0) {
            return Err(Error::Config("playback_speed must be positive".into()));
        }
        if o.event_capacity == 0 {
            return Err(Error::Config("event_capacity must be positive".into()));
        }
        let key = SigningKeyPair::generate().map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Loaves {
            options: self.options,
            key: Arc::new(key),
        })
    }
}

impl Loaves {
    /// A builder with default options.
    pub fn builder() -> LoavesBuilder {
        LoavesBuilder::default()
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Opens a playback session of `title` with the viewer's `entitlement`:
    /// license, verified manifests and init segments, drivers, player
    /// endpoint. Must be called within a tokio runtime.
    pub async fn open(&self, title: &str, entitlement: Vec<u8>) -> Result<Session, Error> {
        crate::install_crypto_provider();
        let options = self.options.clone();
        let mut license_client = LicenseClient::connect(&options.license).await?;
        let licensed = license_client
            .acquire(
                &LicenseRequest {
                    entitlement,
                    title: title.to_owned(),
                    region: options.region.clone(),
                    isp: options.isp.clone(),
                    ..LicenseRequest::default()
                },
                &self.key,
                UnixSeconds::now(),
            )
            .await?;
        let result = self
            .start(title, options, licensed.session_token().to_vec())
            .await;
        match result {
            Ok(parts) => Ok(Session::new(
                parts,
                license_client,
                licensed,
                self.key.clone(),
            )),
            Err(error) => {
                let mut licensed = licensed;
                let _ = license_client.release(&mut licensed, &self.key).await;
                Err(error)
            }
        }
    }

    async fn start(&self, title: &str, options: Options, token: Vec<u8>) -> Result<Parts, Error> {
        let cdn = CdnClient::with_link(options.cdn.clone(), options.link)?;
        let mut master = cdn.fetch(&format!("{title}/master.m3u8"), None).await?;
        let names = rendition_names(&master)?;
        let mut dash = cdn.fetch(&format!("{title}/manifest.mpd"), None).await.ok();
        if options.decrypt {
            // The player gets clear media: no key tags, no DRM signalling.
            master = crate::endpoint::without_hls_keys(&master);
            dash = dash.map(|mpd| crate::endpoint::without_content_protection(&mpd));
        }
        let mut renditions = HashMap::new();
        for name in names {
            let rendition =
                fetch_rendition(&cdn, &options.manifest_keys, title, &name, options.decrypt)
                    .await?;
            renditions.insert(name, Arc::new(rendition));
        }
        let identity = PeerIdentity::new(&self.key).map_err(|e| Error::Setup(e.to_string()))?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (have_tx, _) = broadcast::channel(256);
        let (events, _) = broadcast::channel(options.event_capacity);
        let shared = Arc::new(Shared {
            title: title.to_owned(),
            store: Mutex::new(SegmentStore::new(options.store_budget_bytes)),
            options,
            cdn,
            identity,
            token,
            held: Mutex::new(HashMap::new()),
            have_tx,
            events,
            counters: Counters::default(),
            metered: AtomicBool::new(false),
            opened_at: Instant::now(),
            shutdown,
            master_playlist: master,
            dash_manifest: dash,
            renditions,
            scheduler_stats: Mutex::new(HashMap::new()),
            content_keys: Mutex::new(HashMap::new()),
        });
        let mut tracks = HashMap::new();
        for rendition in shared.renditions.values() {
            let track = crate::track::spawn(shared.clone(), rendition.clone());
            if rendition.live {
                tokio::spawn(crate::track::follow_live(
                    shared.clone(),
                    rendition.clone(),
                    track.clone(),
                ));
            }
            tracks.insert(rendition.name.clone(), track);
        }
        let tracks = Arc::new(tracks);
        let (peers, announcer_done) = if shared.options.p2p {
            let (addr, done) = crate::peers::start(shared.clone(), tracks.clone())?;
            (Some(addr), done)
        } else {
            // No upload server, no peer connections: only the stats, so the
            // tracker sees the CDN-only cohort.
            (None, crate::peers::start_stats_only(shared.clone()))
        };
        let endpoint = crate::endpoint::start(shared.clone(), tracks.clone()).await?;
        Ok(Parts {
            shared,
            tracks,
            shutdown_tx,
            player_addr: endpoint,
            peer_addr: peers,
            announcer_done,
        })
    }
}

struct Parts {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<String, TrackHandle>>,
    shutdown_tx: watch::Sender<bool>,
    player_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    announcer_done: Option<watch::Receiver<()>>,
}

fn rendition_names(master: &[u8]) -> Result<Vec<String>, Error> {
    let text = std::str::from_utf8(master)
        .map_err(|_| Error::Presentation("master playlist is not UTF-8".into()))?;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let uri = if line.starts_with("#EXT-X-MEDIA:") {
            line.split("URI=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            Some(line.trim())
        } else {
            None
        };
        if let Some(name) = uri.and_then(|u| u.strip_suffix("/media.m3u8"))
            && valid_name(name)
        {
            names.insert(name.to_owned());
        }
    }
    if names.is_empty() {
        return Err(Error::Presentation(
            "no rendition in the master playlist".into(),
        ));
    }
    Ok(names.into_iter().collect())
}

/// Rendition names are single path components of a safe alphabet.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && name != "."
        && name != ".."
}

async fn fetch_rendition(
    cdn: &CdnClient,
    keys: &Keyring,
    title: &str,
    name: &str,
    decrypt: bool,
) -> Result<Rendition, Error> {
    let raw = cdn.fetch(&manifest_path(title, name), None).await?;
    let (chunks, used) =
        manifest_frames(&raw).map_err(|e| Error::Presentation(format!("{name}: manifest: {e}")))?;
    if used != raw.len() {
        return Err(Error::Presentation(format!("{name}: truncated manifest")));
    }
    let mut manifest = Manifest::from_encoded_chunks(keys, chunks.iter().copied())
        .map_err(|e| Error::Presentation(format!("{name}: manifest: {e}")))?;
    if manifest.title() != title || manifest.rendition() != name {
        return Err(Error::Presentation(format!(
            "{name}: manifest is for {}/{}",
            manifest.title(),
            manifest.rendition()
        )));
    }
    let init = cdn.fetch(&format!("{title}/{name}/init.mp4"), None).await?;
    manifest
        .verify_init(&init)
        .map_err(|e| Error::Presentation(format!("{name}: init segment: {e}")))?;
    // Checked at `open`, so that a presentation the SDK cannot decrypt
    // fails there with a clear error rather than at the player's first
    // request.
    let clear_init = if decrypt {
        Some(Arc::new(decrypt_init(&init).map_err(|e| {
            Error::Presentation(format!("{name}: init segment cannot be decrypted: {e}"))
        })?))
    } else {
        None
    };
    let media_playlist = cdn
        .fetch(&format!("{title}/{name}/media.m3u8"), None)
        .await?;
    let live = !manifest.is_final();
    if live {
        // A live event may have run for hours: keep only the recent past.
        let newest = manifest.segments().last().map_or(0, |s| s.sequence);
        manifest.forget_before(newest.saturating_sub(crate::track::LIVE_HISTORY));
    }
    let longest = manifest
        .segments()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0);
    let rendition = Rendition {
        name: name.to_owned(),
        manifest: RwLock::new(manifest),
        init,
        media_playlist,
        live,
        consumed: AtomicU64::new(used as u64),
        longest_ms: AtomicU32::new(longest),
        key_lines: Mutex::new(BTreeMap::new()),
        clear_init,
    };
    rendition.learn_key_lines(&rendition.media_playlist);
    Ok(rendition)
}

/// Where a rendition's signed manifest is, relative to the CDN base.
pub(crate) fn manifest_path(title: &str, rendition: &str) -> String {
    format!("{title}/{rendition}/manifest.lvm")
}

/// Splits `bytes` into length-delimited manifest chunks; returns them and
/// the bytes they span (a trailing partial frame is left for later).
pub(crate) fn manifest_frames(
    bytes: &[u8],
) -> Result<(Vec<&[u8]>, usize), loaves_proto::framing::FrameError> {
    let mut chunks = Vec::new();
    let mut used = 0;
    while used < bytes.len() {
        match loaves_proto::framing::decode_frame(&bytes[used..], MAX_CHUNK_LEN)? {
            Some((payload, n)) => {
                chunks.push(payload);
                used += n;
            }
            None => break,
        }
    }
    Ok((chunks, used))
}

/// A stream of session events (bounded: a reader that falls behind by more
/// than [`Options::event_capacity`] events skips the oldest).
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the session is closed.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// A playback session of one title.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<String, TrackHandle>>,
    shutdown_tx: watch::Sender<bool>,
    player_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    /// Ends when the tracker announcer has left the swarm (see
    /// `peers::finished`); `None` without a tracker.
    announcer_done: Option<watch::Receiver<()>>,
    license: tokio::task::JoinHandle<Option<(LicenseClient, LicensedSession)>>,
    license_stop: Option<oneshot::Sender<()>>,
    key: Arc<SigningKeyPair>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parts")
    }
}

impl Session {
    fn new(
        parts: Parts,
        client: LicenseClient,
        licensed: LicensedSession,
        key: Arc<SigningKeyPair>,
    ) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        parts.shared.learn_keys(&licensed);
        let license = tokio::spawn(crate::track::heartbeat(
            parts.shared.clone(),
            client,
            licensed,
            key.clone(),
            stop_rx,
        ));
        Self {
            shared: parts.shared,
            tracks: parts.tracks,
            shutdown_tx: parts.shutdown_tx,
            player_addr: parts.player_addr,
            peer_addr: parts.peer_addr,
            announcer_done: parts.announcer_done,
            license,
            license_stop: Some(stop_tx),
            key,
        }
    }

    /// The HLS master playlist's URL on the local player endpoint.
    pub fn player_url(&self) -> String {
        format!("http://{}/master.m3u8", self.player_addr)
    }

    /// The DASH manifest's URL on the local player endpoint.
    pub fn dash_url(&self) -> String {
        format!("http://{}/manifest.mpd", self.player_addr)
    }

    /// The local player endpoint's address.
    pub fn player_addr(&self) -> SocketAddr {
        self.player_addr
    }

    /// The QUIC address other peers reach this viewer at (P2P on).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.shared.title
    }

    /// The renditions of the presentation.
    pub fn renditions(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.renditions.keys().cloned().collect();
        names.sort();
        names
    }

    /// Number of segments of `rendition` (`None`: unknown rendition). For a
    /// live rendition: the segments its verified manifest lists now (the
    /// recent past up to the live edge, see [`Session::segment_range`]).
    pub fn segment_count(&self, rendition: &str) -> Option<usize> {
        self.shared
            .renditions
            .get(rendition)
            .map(|r| r.manifest().segments().len())
    }

    /// Media durations of the segments of `rendition`, in order (for a
    /// live rendition, of those listed now).
    pub fn segment_durations(&self, rendition: &str) -> Vec<Duration> {
        self.shared
            .renditions
            .get(rendition)
            .map(|r| {
                r.manifest()
                    .segments()
                    .map(|s| Duration::from_millis(u64::from(s.duration_ms)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `rendition` is live now: its signed manifest is still
    /// growing (the SDK follows it). False for VOD, for an unknown
    /// rendition, and once a live event's final chunk arrived.
    pub fn is_live(&self, rendition: &str) -> bool {
        self.shared
            .renditions
            .get(rendition)
            .is_some_and(|r| !r.manifest().is_final())
    }

    /// The live edge of `rendition`: the newest segment its verified
    /// manifest lists (for VOD, the last segment).
    pub fn live_edge(&self, rendition: &str) -> Option<u64> {
        self.segment_range(rendition).map(|r| *r.end())
    }

    /// The oldest and newest segments the verified manifest of `rendition`
    /// lists now. A live rendition keeps a bounded recent past, so the
    /// start moves forward as the event goes on.
    pub fn segment_range(&self, rendition: &str) -> Option<std::ops::RangeInclusive<u64>> {
        let r = self.shared.renditions.get(rendition)?;
        let manifest = r.manifest();
        let first = manifest.segments().next()?.sequence;
        let last = manifest.segments().last()?.sequence;
        Some(first..=last)
    }

    /// The media duration of one segment, if the verified manifest lists it.
    pub fn segment_duration(&self, rendition: &str, sequence: u64) -> Option<Duration> {
        let r = self.shared.renditions.get(rendition)?;
        let manifest = r.manifest();
        manifest
            .segment(sequence)
            .map(|s| Duration::from_millis(u64::from(s.duration_ms)))
    }

    /// Media time per wall time ([`Options::playback_speed`]).
    pub fn playback_speed(&self) -> f64 {
        self.shared.options.playback_speed
    }

    /// The session's events.
    pub fn events(&self) -> Events {
        Events {
            rx: self.shared.events.subscribe(),
        }
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Tells the SDK where the player is in `rendition`: segment `sequence`,
    /// `offset` into it (media time), playing or not (stalled, paused).
    /// Players reading the endpoint move the playhead by their requests; a
    /// player that knows better reports it here. Played time
    /// ([`Stats::played_time`]) counts while the last report said playing.
    pub fn set_playhead(&self, rendition: &str, sequence: u64, offset: Duration, playing: bool) {
        if let Some(track) = self.tracks.get(rendition) {
            self.shared.set_playing(playing);
            let offset_ms =
                (offset.as_secs_f64() * 1000.0 / self.shared.options.playback_speed) as u64;
            track.send(TrackMsg::Playhead {
                sequence,
                offset_ms,
                playing,
            });
        }
    }

    /// Fetches segment `sequence` of `rendition` through the scheduler, as
    /// the player endpoint does; the bytes are verified.
    pub async fn segment(&self, rendition: &str, sequence: u64) -> Result<Bytes, Error> {
        let track = self
            .tracks
            .get(rendition)
            .ok_or_else(|| Error::Presentation(format!("no rendition {rendition}")))?;
        track
            .want(sequence)
            .await
            .map_err(|e| Error::Presentation(e.to_string()))
    }

    /// The network type changed (for "upload only on unmetered networks").
    pub fn set_network(&self, network: NetworkType) {
        self.shared
            .metered
            .store(network == NetworkType::Metered, Ordering::Relaxed);
    }

    /// The player started playing (first frame shown).
    pub fn player_started(&self) {
        self.shared.set_playing(true);
        let ms = self.shared.opened_at.elapsed().as_millis() as u64;
        if self
            .shared
            .counters
            .startup_ms_plus_one
            .compare_exchange(0, ms + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.shared.emit(Event::Started {
                startup: Duration::from_millis(ms),
            });
        }
    }

    /// The player stalled.
    pub fn player_rebuffer_start(&self) {
        self.shared.set_playing(false);
        self.shared
            .counters
            .rebuffer_count
            .fetch_add(1, Ordering::Relaxed);
        self.shared.emit(Event::RebufferStart);
    }

    /// The player resumed after a stall of `duration`.
    pub fn player_rebuffer_end(&self, duration: Duration) {
        self.shared.set_playing(true);
        self.shared
            .counters
            .rebuffer_ms
            .fetch_add(duration.as_millis() as u64, Ordering::Relaxed);
        self.shared.emit(Event::RebufferEnd { duration });
    }

    /// Stops every task, leaves the swarm, closes peer connections and
    /// releases the license (freeing the account's concurrency slot).
    ///
    /// With a tracker configured (P2P on or off), leaving sends the tracker
    /// one `Stop` per rendition announced, carrying the counters gathered
    /// since the last announce: the tracker stops naming this viewer to
    /// others at once, and counts the session's last bytes, played time and
    /// rebuffers. That takes at most about two seconds (a tracker that does
    /// not answer in time is reported as [`Event::TrackerUnavailable`] and
    /// otherwise ignored), and happens before the license is released,
    /// while the session token is still good. Dropping a session without
    /// `close` starts the same in the background without waiting for it.
    pub async fn close(mut self) -> Result<(), Error> {
        let _ = self.shutdown_tx.send(true);
        for track in self.tracks.values() {
            track.send(TrackMsg::Stop);
        }
        if let Some(stop) = self.license_stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.announcer_done.take() {
            crate::peers::finished(done).await;
        }
        let license = (&mut self.license).await.ok().flatten();
        if let Some((mut client, mut licensed)) = license {
            client.release(&mut licensed, &self.key).await?;
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        for track in self.tracks.values() {
            track.send(TrackMsg::Stop);
        }
        self.license.abort();
    }
}
