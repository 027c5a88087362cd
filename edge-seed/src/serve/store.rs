//! The segment store: signed manifests of the seed's titles, and segments
//! from memory, disk or the origin.
//!
//! Invariants:
//! - a manifest is used only once its chunk chain verified against the
//!   origin keys, and it names the title and rendition it is stored under;
//! - a segment is cached or returned only after its size and SHA-256 matched
//!   the manifest entry; an origin response that does not match is counted,
//!   retried and dropped;
//! - concurrent misses on one segment share one origin fetch (single-flight),
//!   and a caller that gives up does not cancel the fetch for the others
//!   (another waiter takes it over);
//! - an origin response is read to at most the size the manifest announces.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loaves_proto::keys::Keyring;
use loaves_proto::manifest::{MAX_CHUNK_LEN, Manifest, SegmentInfo, sha256, verify_chunk};
use loaves_wire::framing::decode_frame;
use tokio::sync::{OnceCell, broadcast};

use super::cache::{DiskCache, MemoryCache, SegmentKey};
use super::config::{LiveConfig, OriginFetchConfig};
use super::metrics::Metrics;
use super::origin::{Origin, OriginError};

/// Largest manifest file accepted (a long live event's chain).
pub const MAX_MANIFEST_FILE_LEN: u64 = 64 << 20;
/// Largest playlist or init segment accepted.
pub const MAX_AUX_LEN: u64 = 4 << 20;

/// Why a segment or manifest could not be provided.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The seed does not serve this title (or has not loaded it yet).
    #[error("unknown title")]
    UnknownTitle,
    /// The title has no such rendition.
    #[error("unknown rendition")]
    UnknownRendition,
    /// The manifest does not list this sequence.
    #[error("segment {0} is not in the manifest")]
    UnknownSegment(u64),
    /// The origin could not provide verified bytes after every attempt.
    #[error("origin failed: {0}")]
    Origin(OriginError),
    /// Every origin response failed verification.
    #[error("origin responses failed verification")]
    Corrupt,
    /// The manifest could not be read or verified.
    #[error("manifest: {0}")]
    Manifest(String),
}

/// A live segment became available (for HAVE notices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveEvent {
    /// Title.
    pub title: String,
    /// Rendition.
    pub rendition: String,
    /// Sequence.
    pub sequence: u64,
}

#[derive(Debug)]
struct Rendition {
    manifest: Manifest,
    /// The manifest file as far as verified (frames of signed chunks).
    file: Bytes,
}

type Catalog = HashMap<String, HashMap<String, Rendition>>;
type Flight = Arc<OnceCell<Result<Bytes, StoreError>>>;

/// Segments and manifests of the seed's titles.
#[derive(Debug)]
pub struct Store {
    origin: Origin,
    keyring: Keyring,
    titles: HashSet<String>,
    catalog: RwLock<Catalog>,
    memory: MemoryCache,
    disk: Option<DiskCache>,
    inflight: Mutex<HashMap<SegmentKey, Flight>>,
    fetch: OriginFetchConfig,
    live: LiveConfig,
    metrics: Metrics,
    have: broadcast::Sender<HaveEvent>,
    aux: Mutex<HashMap<String, (Instant, Bytes)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Path of a segment below the origin (the packager's layout).
pub fn segment_path(title: &str, rendition: &str, sequence: u64) -> String {
    format!("{title}/{rendition}/seg_{sequence:05}.m4s")
}

/// Path of a rendition's signed manifest below the origin.
pub fn manifest_path(title: &str, rendition: &str) -> String {
    format!("{title}/{rendition}/{}", crate::package::MANIFEST_FILE)
}

/// Rendition names a multivariant playlist refers to (first path component
/// of each URI).
pub fn renditions_of_master(playlist: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut push = |uri: &str| {
        if let Some((first, _)) = uri.split_once('/')
            && super::safe_name(first)
            && !names.iter().any(|n| n == first)
        {
            names.push(first.to_owned());
        }
    };
    for line in playlist.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if let Some(tag) = line.strip_prefix('#') {
            if let Some(at) = tag.find("URI=\"") {
                let rest = &tag[at + 5..];
                if let Some(end) = rest.find('"') {
                    push(&rest[..end]);
                }
            }
        } else {
            push(line);
        }
    }
    names
}

/// Splits a manifest file into frames from `offset`; a trailing partial
/// frame (a live append in progress) is left for the next read.
fn frames_from(file: &[u8], mut offset: usize) -> Result<(Vec<&[u8]>, usize), StoreError> {
    let mut frames = Vec::new();
    while let Some(rest) = file.get(offset..).filter(|r| !r.is_empty()) {
        match decode_frame(rest, MAX_CHUNK_LEN).map_err(|e| StoreError::Manifest(e.to_string()))? {
            Some((payload, used)) => {
                frames.push(payload);
                offset += used;
            }
            None => break,
        }
    }
    Ok((frames, offset))
}

fn verify_bytes(info: &SegmentInfo, bytes: &[u8]) -> Result<(), &'static str> {
    if info.size != bytes.len() as u64 {
        return Err("size");
    }
    if sha256(bytes) != info.sha256 {
        return Err("hash");
    }
    Ok(())
}

impl Store {
    /// A store for `titles` pulling from `origin`, trusting `keyring` for
    /// manifests. Call [`Self::load_titles`] next.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origin: Origin,
        keyring: Keyring,
        titles: impl IntoIterator<Item = String>,
        memory: MemoryCache,
        disk: Option<DiskCache>,
        fetch: OriginFetchConfig,
        live: LiveConfig,
        metrics: Metrics,
    ) -> Self {
        let (have, _) = broadcast::channel(256);
        Self {
            origin,
            keyring,
            titles: titles.into_iter().collect(),
            catalog: RwLock::new(HashMap::new()),
            memory,
            disk,
            inflight: Mutex::new(HashMap::new()),
            fetch,
            live,
            metrics,
            have,
            aux: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `title` is one of the seed's titles.
    pub fn serves_title(&self, title: &str) -> bool {
        self.titles.contains(title)
    }

    /// The configured titles.
    pub fn titles(&self) -> impl Iterator<Item = &String> {
        self.titles.iter()
    }

    /// Every loaded (title, rendition), sorted.
    pub fn swarms(&self) -> Vec<(String, String)> {
        let mut swarms: Vec<(String, String)> = self
            .catalog()
            .iter()
            .flat_map(|(title, renditions)| {
                renditions.keys().map(move |r| (title.clone(), r.clone()))
            })
            .collect();
        swarms.sort();
        swarms
    }

    /// Subscribes to live segment arrivals.
    pub fn subscribe_have(&self) -> broadcast::Receiver<HaveEvent> {
        self.have.subscribe()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every title not loaded yet; returns the titles that failed.
    pub async fn load_titles(&self) -> Vec<(String, StoreError)> {
        let mut failed = Vec::new();
        let pending: Vec<String> = {
            let catalog = self.catalog();
            self.titles
                .iter()
                .filter(|t| !catalog.contains_key(*t))
                .cloned()
                .collect()
        };
        for title in pending {
            match self.load_title(&title).await {
                Ok(renditions) => {
                    self.catalog_mut().insert(title, renditions);
                }
                Err(error) => failed.push((title, error)),
            }
        }
        failed
    }

    async fn load_title(&self, title: &str) -> Result<HashMap<String, Rendition>, StoreError> {
        let master = self
            .origin_fetch("manifest", &format!("{title}/master.m3u8"), MAX_AUX_LEN)
            .await
            .map_err(StoreError::Origin)?;
        let names = renditions_of_master(&String::from_utf8_lossy(&master));
        if names.is_empty() {
            return Err(StoreError::Manifest("no renditions in master.m3u8".into()));
        }
        let mut renditions = HashMap::new();
        for name in names {
            let file = self
                .origin_fetch(
                    "manifest",
                    &manifest_path(title, &name),
                    MAX_MANIFEST_FILE_LEN,
                )
                .await
                .map_err(StoreError::Origin)?;
            let (frames, used) = frames_from(&file, 0)?;
            let manifest = Manifest::from_encoded_chunks(&self.keyring, frames)
                .map_err(|e| self.manifest_error(e.to_string()))?;
            if manifest.title() != title || manifest.rendition() != name {
                return Err(self.manifest_error("manifest names another presentation".into()));
            }
            if !manifest.is_final() {
                tracing::info!(title, rendition = %name, "following live manifest");
            }
            renditions.insert(
                name.clone(),
                Rendition {
                    manifest,
                    file: file.slice(..used),
                },
            );
        }
        Ok(renditions)
    }

    fn manifest_error(&self, message: String) -> StoreError {
        self.metrics
            .origin_errors
            .with_label_values(&["manifest"])
            .inc();
        StoreError::Manifest(message)
    }

    /// Re-reads every live manifest once; returns the new segments.
    pub async fn refresh_live(&self) -> Vec<SegmentKey> {
        let live: Vec<(String, String, Bytes)> = {
            let catalog = self.catalog();
            catalog
                .iter()
                .flat_map(|(title, renditions)| {
                    renditions
                        .iter()
                        .filter(|(_, r)| !r.manifest.is_final())
                        .map(|(name, r)| (title.clone(), name.clone(), r.file.clone()))
                })
                .collect()
        };
        let mut fresh = Vec::new();
        for (title, rendition, known) in live {
            let file = match self
                .origin_fetch(
                    "manifest",
                    &manifest_path(&title, &rendition),
                    MAX_MANIFEST_FILE_LEN,
                )
                .await
            {
                Ok(file) => file,
                Err(error) => {
                    tracing::debug!(%title, %rendition, %error, "live manifest refresh failed");
                    continue;
                }
            };
            if file.len() <= known.len() {
                continue;
            }
            if file[..known.len()] != known[..] {
                self.manifest_error("live manifest rewritten instead of appended".into());
                continue;
            }
            let Ok((frames, used)) = frames_from(&file, known.len()) else {
                self.manifest_error("malformed live manifest".into());
                continue;
            };
            let mut catalog = self.catalog_mut();
            let Some(entry) = catalog.get_mut(&title).and_then(|r| r.get_mut(&rendition)) else {
                continue;
            };
            if entry.file.len() != known.len() {
                continue; // another refresh won the race
            }
            let mut appended = Vec::new();
            let mut ok = true;
            for frame in frames {
                match verify_chunk(&self.keyring, frame)
                    .map_err(|e| e.to_string())
                    .and_then(|chunk| {
                        let sequences: Vec<u64> =
                            chunk.segments.iter().map(|s| s.sequence).collect();
                        entry
                            .manifest
                            .append(chunk)
                            .map(|()| sequences)
                            .map_err(|e| e.to_string())
                    }) {
                    Ok(sequences) => appended.extend(sequences),
                    Err(message) => {
                        tracing::warn!(%title, %rendition, %message, "live manifest chunk refused");
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                entry.file = file.slice(..used);
            }
            drop(catalog);
            if !ok {
                self.manifest_error("live chunk refused".into());
            }
            fresh.extend(appended.into_iter().map(|sequence| SegmentKey {
                title: title.clone(),
                rendition: rendition.clone(),
                sequence,
            }));
        }
        fresh
    }

    /// Follows live manifests until `stop` turns true: re-reads them every
    /// poll interval, pulls new segments at once (so peers get them from the
    /// seed before the CDN is asked) and retries titles that failed to load.
    pub async fn follow_live(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(self.live.poll_interval_ms.max(50));
        // Titles whose live window was pulled when they were first loaded.
        let mut started: HashSet<String> = HashSet::new();
        self.prefetch(self.new_live_windows(&mut started));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            for (title, error) in self.load_titles().await {
                tracing::debug!(%title, %error, "title still not loaded");
            }
            self.prefetch(self.new_live_windows(&mut started));
            let fresh = self.refresh_live().await;
            self.prefetch(fresh);
        }
    }

    /// The newest `prefetch_window` segments of the live renditions of
    /// titles loaded since the last call (recorded in `started`).
    fn new_live_windows(&self, started: &mut HashSet<String>) -> Vec<SegmentKey> {
        let window = usize::try_from(self.live.prefetch_window).unwrap_or(0);
        let catalog = self.catalog();
        let mut keys = Vec::new();
        for (title, renditions) in catalog.iter() {
            if !started.insert(title.clone()) {
                continue;
            }
            for (name, rendition) in renditions.iter().filter(|(_, r)| !r.manifest.is_final()) {
                let all: Vec<u64> = rendition.manifest.segments().map(|s| s.sequence).collect();
                let skip = all.len().saturating_sub(window);
                keys.extend(all[skip..].iter().map(|&sequence| SegmentKey {
                    title: title.clone(),
                    rendition: name.clone(),
                    sequence,
                }));
            }
        }
        keys
    }

    fn prefetch(self: &Arc<Self>, keys: Vec<SegmentKey>) {
        for key in keys {
            let store = self.clone();
            tokio::spawn(async move {
                if let Err(error) = store
                    .segment(&key.title, &key.rendition, key.sequence)
                    .await
                {
                    tracing::debug!(?key, %error, "live prefetch failed");
                }
            });
        }
    }

    /// The manifest entry of a segment, and whether its rendition is live.
    pub fn segment_info(
        &self,
        title: &str,
        rendition: &str,
        sequence: u64,
    ) -> Result<(SegmentInfo, bool), StoreError> {
        self.with_rendition(title, rendition, |entry| {
            let info = entry
                .manifest
                .segment(sequence)
                .ok_or(StoreError::UnknownSegment(sequence))?;
            Ok((*info, !entry.manifest.is_final()))
        })
    }

    /// `f` of the loaded rendition `title`/`rendition`.
    fn with_rendition<T>(
        &self,
        title: &str,
        rendition: &str,
        f: impl FnOnce(&Rendition) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let catalog = self.catalog();
        let entry = catalog
            .get(title)
            .ok_or(StoreError::UnknownTitle)?
            .get(rendition)
            .ok_or(StoreError::UnknownRendition)?;
        f(entry)
    }

    /// A rendition's verified manifest file, and whether it is final.
    pub fn manifest_file(&self, title: &str, rendition: &str) -> Result<(Bytes, bool), StoreError> {
        self.with_rendition(title, rendition, |entry| {
            Ok((entry.file.clone(), entry.manifest.is_final()))
        })
    }

    /// Whether the rendition is live (its manifest not final).
    pub fn is_live(&self, title: &str, rendition: &str) -> Result<bool, StoreError> {
        self.manifest_file(title, rendition)
            .map(|(_, is_final)| !is_final)
    }

    /// Checks an init segment against the rendition's manifest.
    pub fn verify_init(
        &self,
        title: &str,
        rendition: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.with_rendition(title, rendition, |entry| {
            entry
                .manifest
                .verify_init(bytes)
                .map_err(|e| StoreError::Manifest(e.to_string()))
        })
    }

    /// An auxiliary file (playlist, MPD, init segment) from the origin,
    /// cached for `ttl`. Not verified here: the HTTP role checks init
    /// segments; playlists carry no media.
    pub async fn aux(&self, path: &str, ttl: Duration) -> Result<Bytes, StoreError> {
        if let Some((at, bytes)) = lock(&self.aux).get(path)
            && at.elapsed() < ttl
        {
            return Ok(bytes.clone());
        }
        let bytes = self
            .origin_fetch("aux", path, MAX_AUX_LEN)
            .await
            .map_err(StoreError::Origin)?;
        let mut aux = lock(&self.aux);
        if aux.len() >= 1024 {
            aux.retain(|_, (at, _)| at.elapsed() < ttl);
            if aux.len() >= 1024 {
                aux.clear();
            }
        }
        aux.insert(path.to_owned(), (Instant::now(), bytes.clone()));
        Ok(bytes)
    }

    async fn origin_fetch(&self, kind: &str, path: &str, max: u64) -> Result<Bytes, OriginError> {
        self.metrics.origin_fetches.with_label_values(&[kind]).inc();
        let started = Instant::now();
        let result = self.origin.fetch(path, max).await;
        match &result {
            Ok(_) => self
                .metrics
                .origin_latency
                .observe(started.elapsed().as_secs_f64()),
            Err(error) => self
                .metrics
                .origin_errors
                .with_label_values(&[error.reason()])
                .inc(),
        }
        result
    }

    /// The verified bytes of a segment: memory, then disk, then one shared
    /// origin fetch.
    pub async fn segment(
        &self,
        title: &str,
        rendition: &str,
        sequence: u64,
    ) -> Result<Bytes, StoreError> {
        let (info, live) = self.segment_info(title, rendition, sequence)?;
        let key = SegmentKey {
            title: title.to_owned(),
            rendition: rendition.to_owned(),
            sequence,
        };
        if let Some(bytes) = self.memory.get(&key) {
            self.metrics.cache_hits.with_label_values(&["memory"]).inc();
            return Ok(bytes);
        }
        let flight = lock(&self.inflight).entry(key.clone()).or_default().clone();
        let result = flight
            .get_or_init(|| self.load(key.clone(), info, live))
            .await
            .clone();
        let mut inflight = lock(&self.inflight);
        if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(&key);
        }
        result
    }

    async fn load(
        &self,
        key: SegmentKey,
        info: SegmentInfo,
        live: bool,
    ) -> Result<Bytes, StoreError> {
        // A concurrent flight may have finished between our memory lookup
        // and joining this one.
        if let Some(bytes) = self.memory.get(&key) {
            self.metrics.cache_hits.with_label_values(&["memory"]).inc();
            return Ok(bytes);
        }
        if let Some(disk) = &self.disk
            && let Some(bytes) = disk.get(&key).await
        {
            if verify_bytes(&info, &bytes).is_ok() {
                self.metrics.cache_hits.with_label_values(&["disk"]).inc();
                self.memory.insert(key, bytes.clone());
                return Ok(bytes);
            }
            tracing::warn!(?key, "disk cache entry failed verification; dropped");
            disk.remove(&key).await;
        }
        self.metrics.cache_misses.inc();
        let path = segment_path(&key.title, &key.rendition, key.sequence);
        let mut backoff = Duration::from_millis(self.fetch.retry_backoff_ms);
        let mut last = StoreError::Corrupt;
        for attempt in 0..self.fetch.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            let max = info.size.min(self.fetch.max_segment_bytes);
            match self.origin_fetch("segment", &path, max).await {
                Ok(bytes) => match verify_bytes(&info, &bytes) {
                    Ok(()) => {
                        self.memory.insert(key.clone(), bytes.clone());
                        if let Some(disk) = &self.disk
                            && let Err(error) = disk.insert(key.clone(), bytes.clone()).await
                        {
                            tracing::warn!(%error, "disk cache write failed");
                        }
                        if live {
                            self.metrics.have_notices.inc();
                            let _ = self.have.send(HaveEvent {
                                title: key.title.clone(),
                                rendition: key.rendition.clone(),
                                sequence: key.sequence,
                            });
                        }
                        return Ok(bytes);
                    }
                    Err(reason) => {
                        tracing::warn!(
                            ?key,
                            reason,
                            attempt,
                            "origin response failed verification"
                        );
                        self.metrics
                            .origin_errors
                            .with_label_values(&[reason])
                            .inc();
                        last = StoreError::Corrupt;
                    }
                },
                Err(OriginError::TooLarge(_)) => {
                    // Larger than the manifest says: as bad as a wrong hash.
                    last = StoreError::Corrupt;
                }
                Err(error) => last = StoreError::Origin(error),
            }
        }
        Err(last)
    }
}
