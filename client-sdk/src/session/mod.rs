//! The app-facing API: a [`Loaves`] instance built once per app, and a
//! [`Session`] per title being played.
//!
//! ```no_run
//! # async fn demo(loaves: loaves_client_sdk::Loaves, entitlement: Vec<u8>)
//! #     -> Result<(), loaves_client_sdk::Error> {
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
//! the license heartbeat ([`crate::credential`]) and the local player
//! endpoint ([`crate::endpoint`]). With P2P off there is no peer endpoint;
//! the announcer still reports the session's stats when a tracker is
//! configured (the CDN-only cohort), from a client-only QUIC socket.
//!
//! A rendition whose manifest is not final is live: the session follows it
//! (new signed chunks verified and appended as the origin publishes them)
//! until its final chunk; [`Session::is_live`], [`Session::live_edge`] and
//! [`Session::segment_range`] tell an app where the event is, and
//! [`crate::player::play_live`] plays it near the edge.

pub(crate) mod presentation;
mod shared;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::names::{RenditionName, Title};
use loaves_wire::identity::PeerIdentity;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use self::presentation::Rendition;
pub(crate) use self::shared::Shared;
use crate::cdn::CdnClient;
use crate::config::{Config, LoavesBuilder, NetworkType};
use crate::credential::Credentials;
use crate::error::Error;
use crate::events::{Event, Events};
use crate::license::{LicenseClient, LicenseRequest, LicensedSession};
use crate::stats::{Counters, Stats};
use crate::store::SegmentStore;
use crate::track::{Playhead, TrackHandle, WantError};

/// Bound on `close`: the tasks stop at once on the cancellation but the
/// announcer, which first leaves the swarm (at most about 2.5 s, see
/// [`crate::peers`]), and transfers finishing their current read.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// An SDK instance: one peer identity, one configuration; opens sessions.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Loaves {
    config: Arc<Config>,
    key: Arc<SigningKeyPair>,
}

impl Loaves {
    /// A builder with default settings.
    pub fn builder() -> LoavesBuilder {
        LoavesBuilder::default()
    }

    /// How far ahead of the playhead segments are fetched.
    pub fn buffer_target(&self) -> Duration {
        self.config.buffer_target
    }

    pub(crate) fn new(config: Config, key: SigningKeyPair) -> Self {
        Self {
            config: Arc::new(config),
            key: Arc::new(key),
        }
    }

    /// Opens a playback session of `title` with the viewer's `entitlement`
    /// (the sign-in system's signed statement that this account may watch
    /// it): license, verified manifests and init segments, drivers, player
    /// endpoint. Must be called within a tokio runtime.
    pub async fn open(&self, title: &str, entitlement: Vec<u8>) -> Result<Session, Error> {
        let title = Title::new(title)?;
        crate::install_crypto_provider();
        let config = (*self.config).clone();
        let mut license_client = LicenseClient::connect(&config.license).await?;
        let licensed = license_client
            .acquire(
                &LicenseRequest {
                    entitlement,
                    title: title.to_string(),
                    region: config.region.clone(),
                    isp: config.isp.clone(),
                    ..LicenseRequest::default()
                },
                &self.key,
                UnixSeconds::now(),
            )
            .await?;
        match self.start(title, config, &licensed).await {
            Ok(started) => Ok(Session::new(
                started,
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

    async fn start(
        &self,
        title: Title,
        config: Config,
        licensed: &LicensedSession,
    ) -> Result<Started, Error> {
        let cdn = CdnClient::with_link(config.cdn.clone(), config.link())?;
        let mut master = cdn.fetch(&format!("{title}/master.m3u8"), None).await?;
        let names = presentation::rendition_names(&master)?;
        let mut dash = cdn.fetch(&format!("{title}/manifest.mpd"), None).await.ok();
        if config.decrypt {
            // The player gets clear media: no key tags, no DRM signalling.
            master = crate::endpoint::without_hls_keys(&master);
            dash = dash.map(|mpd| crate::endpoint::without_content_protection(&mpd));
        }
        let mut renditions = HashMap::new();
        for name in names {
            let rendition = presentation::fetch_rendition(
                &cdn,
                &config.manifest_keys,
                &title,
                &name,
                config.decrypt,
            )
            .await?;
            renditions.insert(name, Arc::new(rendition));
        }
        let identity =
            PeerIdentity::new(&self.key).map_err(|e| Error::setup("the peer identity", e))?;
        let (have_tx, _) = broadcast::channel(256);
        let (events, _) = broadcast::channel(config.event_capacity);
        let shared = Arc::new(Shared {
            title,
            store: std::sync::Mutex::new(SegmentStore::new(config.store_budget_bytes)),
            config,
            cdn,
            identity,
            credentials: Credentials::new(licensed),
            held: std::sync::Mutex::new(HashMap::new()),
            have_tx,
            events,
            counters: Counters::default(),
            metered: AtomicBool::new(false),
            opened_at: Instant::now(),
            candidates: std::sync::Mutex::new(Vec::new()),
            nat_class: std::sync::atomic::AtomicI32::new(0),
            connect_reports: std::sync::Mutex::new(std::collections::VecDeque::new()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            master_playlist: master,
            dash_manifest: dash,
            renditions,
            scheduler_stats: std::sync::Mutex::new(HashMap::new()),
            content_keys: std::sync::Mutex::new(HashMap::new()),
        });
        shared.learn_keys(licensed);
        let result = self.start_tasks(&shared).await;
        if result.is_err() {
            shared.cancel.cancel();
            shared.tasks.close();
            let _ = tokio::time::timeout(CLOSE_BOUND, shared.tasks.wait()).await;
        }
        let (tracks, player_addr, peer_addr) = result?;
        Ok(Started {
            shared,
            tracks,
            player_addr,
            peer_addr,
        })
    }

    async fn start_tasks(
        &self,
        shared: &Arc<Shared>,
    ) -> Result<
        (
            Arc<HashMap<RenditionName, TrackHandle>>,
            SocketAddr,
            Option<SocketAddr>,
        ),
        Error,
    > {
        let mut tracks = HashMap::new();
        for rendition in shared.renditions.values() {
            let track = crate::track::spawn(shared.clone(), rendition.clone());
            if rendition.live {
                shared.spawn(crate::live::follow(
                    shared.clone(),
                    rendition.clone(),
                    track.clone(),
                ));
            }
            tracks.insert(rendition.name.clone(), track);
        }
        let tracks = Arc::new(tracks);
        let peer_addr = if shared.config.p2p {
            Some(crate::peers::start(shared.clone(), tracks.clone())?)
        } else {
            // No upload server, no peer connections: only the stats, so the
            // tracker sees the CDN-only cohort.
            crate::peers::start_stats_only(shared.clone());
            None
        };
        let player_addr = crate::endpoint::start(shared.clone(), tracks.clone()).await?;
        Ok((tracks, player_addr, peer_addr))
    }
}

/// What `start` made.
struct Started {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<RenditionName, TrackHandle>>,
    player_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
}

/// The license task's result: the client and session to release with, or
/// `None` when the license ran out (nothing to release).
type LicenseTask = JoinHandle<Option<(LicenseClient, LicensedSession)>>;

/// A playback session of one title.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<RenditionName, TrackHandle>>,
    player_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    /// `None` once `close` took it.
    license: Option<LicenseTask>,
    key: Arc<SigningKeyPair>,
}

impl Session {
    fn new(
        started: Started,
        client: LicenseClient,
        licensed: LicensedSession,
        key: Arc<SigningKeyPair>,
    ) -> Self {
        // Not on the task tracker: `close` waits for the other tasks (the
        // announcer's final stops need a valid token) before it releases
        // the license this task hands back.
        let license = tokio::spawn(crate::credential::heartbeat(
            started.shared.clone(),
            client,
            licensed,
            key.clone(),
        ));
        Self {
            shared: started.shared,
            tracks: started.tracks,
            player_addr: started.player_addr,
            peer_addr: started.peer_addr,
            license: Some(license),
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

    /// The local player endpoint's address (always loopback).
    pub fn player_addr(&self) -> SocketAddr {
        self.player_addr
    }

    /// The local address of this viewer's peer endpoint (P2P on). What
    /// other viewers are told is in [`Event::Addresses`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The addresses other viewers are told to reach this one at, best
    /// first: the public mapping the tracker observed, the configured
    /// public addresses, the interfaces' (see [`Event::Addresses`]). Empty
    /// with P2P or upload off, or when none is usable.
    pub fn peer_candidates(&self) -> Vec<SocketAddr> {
        crate::lock(&self.shared.candidates).clone()
    }

    /// The title.
    pub fn title(&self) -> &Title {
        &self.shared.title
    }

    /// The renditions of the presentation, sorted by name.
    pub fn renditions(&self) -> Vec<RenditionName> {
        let mut names: Vec<RenditionName> = self.shared.renditions.keys().cloned().collect();
        names.sort();
        names
    }

    fn rendition(&self, rendition: &RenditionName) -> Result<&Arc<Rendition>, Error> {
        self.shared
            .renditions
            .get(rendition)
            .ok_or_else(|| Error::UnknownRendition(rendition.to_string()))
    }

    /// Number of segments of `rendition`. For a live rendition: the
    /// segments its verified manifest lists now (the recent past up to the
    /// live edge, see [`Session::segment_range`]).
    pub fn segment_count(&self, rendition: &RenditionName) -> Result<usize, Error> {
        Ok(self.rendition(rendition)?.manifest().segments().len())
    }

    /// Media durations of the segments of `rendition`, in order (for a
    /// live rendition, of those listed now).
    pub fn segment_durations(&self, rendition: &RenditionName) -> Result<Vec<Duration>, Error> {
        Ok(self
            .rendition(rendition)?
            .manifest()
            .segments()
            .map(|s| Duration::from_millis(u64::from(s.duration_ms)))
            .collect())
    }

    /// Whether `rendition` is live now: its signed manifest is still
    /// growing (the SDK follows it). False for VOD, for an unknown
    /// rendition, and once a live event's final chunk arrived.
    pub fn is_live(&self, rendition: &RenditionName) -> bool {
        self.rendition(rendition)
            .is_ok_and(|r| !r.manifest().is_final())
    }

    /// The live edge of `rendition`: the newest segment its verified
    /// manifest lists (for VOD, the last segment).
    pub fn live_edge(&self, rendition: &RenditionName) -> Option<u64> {
        self.segment_range(rendition).map(|r| *r.end())
    }

    /// The oldest and newest segments the verified manifest of `rendition`
    /// lists now. A live rendition keeps a bounded recent past, so the
    /// start moves forward as the event goes on.
    pub fn segment_range(
        &self,
        rendition: &RenditionName,
    ) -> Option<std::ops::RangeInclusive<u64>> {
        let r = self.rendition(rendition).ok()?;
        let manifest = r.manifest();
        let first = manifest.segments().next()?.sequence;
        let last = manifest.segments().last()?.sequence;
        Some(first..=last)
    }

    /// The media duration of one segment, if the verified manifest lists it.
    pub fn segment_duration(&self, rendition: &RenditionName, sequence: u64) -> Option<Duration> {
        let r = self.rendition(rendition).ok()?;
        let manifest = r.manifest();
        manifest
            .segment(sequence)
            .map(|s| Duration::from_millis(u64::from(s.duration_ms)))
    }

    /// Media time per wall time (the configured playback speed).
    pub fn playback_speed(&self) -> f64 {
        self.shared.config.playback_speed
    }

    /// The session's events (each call is a new reader, from now on).
    pub fn events(&self) -> Events {
        Events::new(self.shared.events.subscribe())
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Whether the session has ended on its own
    /// ([`Event::SessionEnded`]) or is closing.
    pub fn is_ended(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Tells the SDK where the player is in `rendition`: segment `sequence`,
    /// `offset` into it (media time), playing or not (stalled, paused).
    /// Players reading the endpoint move the playhead by their requests; a
    /// player that knows better (ExoPlayer's analytics, AVPlayer's time
    /// observer, a web player's `timeupdate`) reports it here. Played time
    /// ([`Stats::played_time`]) counts while the last report said playing.
    /// The newest report always reaches the rendition's scheduler (it is
    /// state, not a message that a full queue could drop).
    pub fn set_playhead(
        &self,
        rendition: &RenditionName,
        sequence: u64,
        offset: Duration,
        playing: bool,
    ) -> Result<(), Error> {
        let track = self
            .tracks
            .get(rendition)
            .ok_or_else(|| Error::UnknownRendition(rendition.to_string()))?;
        self.shared.set_playing(playing);
        let offset_ms = (offset.as_secs_f64() * 1000.0 / self.shared.config.playback_speed) as u64;
        track.set_playhead(Playhead {
            sequence,
            offset_ms,
            playing,
        });
        Ok(())
    }

    /// Fetches segment `sequence` of `rendition` through the scheduler, as
    /// the player endpoint does; the bytes are verified.
    pub async fn segment(&self, rendition: &RenditionName, sequence: u64) -> Result<Bytes, Error> {
        let track = self
            .tracks
            .get(rendition)
            .ok_or_else(|| Error::UnknownRendition(rendition.to_string()))?;
        track.want(sequence).await.map_err(|e| match e {
            WantError::NotFound => Error::UnknownSegment {
                rendition: rendition.to_string(),
                sequence,
            },
            WantError::Timeout => Error::Timeout { what: "a segment" },
            WantError::Busy => Error::Busy,
            WantError::Closed => Error::Closed,
        })
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
        Counters::add(&self.shared.counters.rebuffer_count, 1);
        self.shared.emit(Event::RebufferStart);
    }

    /// The player resumed after a stall of `duration`.
    pub fn player_rebuffer_end(&self, duration: Duration) {
        self.shared.set_playing(true);
        Counters::add(
            &self.shared.counters.rebuffer_ms,
            duration.as_millis() as u64,
        );
        self.shared.emit(Event::RebufferEnd { duration });
    }

    /// Stops every task, leaves the swarm, closes peer connections and
    /// releases the license (freeing the account's concurrency slot).
    /// Returns only once every task the session started has ended.
    ///
    /// With a tracker configured (P2P on or off), leaving sends the tracker
    /// one `Stop` per rendition announced, carrying the counters gathered
    /// since the last announce: the tracker stops naming this viewer to
    /// others at once, and counts the session's last bytes, played time and
    /// rebuffers. That takes at most about two seconds (a tracker that does
    /// not answer in time is reported as [`Event::TrackerUnavailable`] and
    /// otherwise ignored), and happens before the license is released,
    /// while the session token is still good. Dropping a session without
    /// `close` starts the same in the background, without waiting for it.
    pub async fn close(mut self) -> Result<(), Error> {
        let license = self.license.take();
        let shared = self.shared.clone();
        shutdown(&shared).await?;
        let license = match license {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        if let Some((mut client, mut licensed)) = license {
            client.release(&mut licensed, &self.key).await?;
        }
        Ok(())
    }
}

/// Cancels every task of the session and waits (bounded) for them to end.
async fn shutdown(shared: &Shared) -> Result<(), Error> {
    shared.cancel.cancel();
    shared.tasks.close();
    tokio::time::timeout(CLOSE_BOUND, shared.tasks.wait())
        .await
        .map_err(|_| Error::Timeout {
            what: "the session's tasks to end",
        })
}

impl Drop for Session {
    /// A bounded best effort: everything stops at once; where a tokio
    /// runtime is still running, a background task waits for the tasks
    /// (bounded) and releases the license (bounded by its timeout).
    fn drop(&mut self) {
        let Some(license) = self.license.take() else {
            return; // closed
        };
        self.shared.cancel.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            license.abort();
            return;
        };
        let shared = self.shared.clone();
        let key = self.key.clone();
        runtime.spawn(async move {
            let _ = shutdown(&shared).await;
            if let Ok(Some((mut client, mut licensed))) = license.await {
                let _ = client.release(&mut licensed, &key).await;
            }
        });
    }
}
