//! The presentation as the SDK holds it: the playlists fetched at `open`,
//! and per rendition its verified manifest and init segment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use loaves_cmaf::decrypt::{ClearInit, decrypt_init};
use loaves_proto::keys::Keyring;
use loaves_proto::manifest::{MAX_CHUNK_LEN, Manifest};
use loaves_proto::names::{RenditionName, Title};

use crate::cdn::CdnClient;
use crate::error::{Error, PresentationError};
use crate::lock;

/// One rendition of the presentation, verified.
///
/// A live rendition's manifest grows while the session runs: its follower
/// task ([`crate::live::follow`]) appends verified chunks, the track reads
/// new segments from it and forgets old ones, the player endpoint rebuilds
/// the live playlist from it. Hence the lock; it is a std lock because no
/// holder ever awaits (every access is a short, synchronous read or
/// append).
#[derive(Debug)]
pub(crate) struct Rendition {
    pub(crate) name: RenditionName,
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
    /// With the decrypt option: the clear init segment and how the
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
        let (any, learned) = {
            let manifest = self.manifest();
            key_tags_by_period(playlist, |sequence| {
                manifest.segment(sequence).map(|info| info.key_period)
            })
        };
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

    /// Whether a listed segment's key period has no known key tags.
    pub(crate) fn missing_key_lines(&self) -> bool {
        let known = lock(&self.key_lines);
        let manifest = self.manifest();
        manifest
            .segments()
            .any(|s| !known.contains_key(&s.key_period))
    }
}

/// The `EXT-X-KEY` tags of a media playlist by key period: the group of key
/// tags in force at each segment (`seg_N.m4s`) belongs to the key period
/// `period_of(N)` gives (none: the segment is not in the manifest), joined
/// by newlines; a period once seen keeps its first group. Also whether the
/// playlist carried any key tag. The text is the origin's, so not trusted:
/// a group is joined only for a period not seen yet, so the result holds at
/// most one group per key period the manifest names (not one copy per
/// segment line).
pub(crate) fn key_tags_by_period(
    playlist: &[u8],
    mut period_of: impl FnMut(u64) -> Option<u32>,
) -> (bool, Vec<(u32, String)>) {
    let Ok(text) = std::str::from_utf8(playlist) else {
        return (false, Vec::new());
    };
    let mut group: Vec<&str> = Vec::new();
    let mut new_group = true;
    let mut any = false;
    let mut learned: BTreeMap<u32, String> = BTreeMap::new();
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
            if let Some(period) = parse_segment_file(line).and_then(&mut period_of)
                && !group.is_empty()
            {
                learned.entry(period).or_insert_with(|| group.join("\n"));
            }
        }
    }
    (any, learned.into_iter().collect())
}

/// The renditions a multivariant playlist names (`NAME/media.m3u8`, as
/// `EXT-X-MEDIA` URIs or variant lines), each a valid name.
pub(crate) fn rendition_names(master: &[u8]) -> Result<Vec<RenditionName>, Error> {
    let text = std::str::from_utf8(master)
        .map_err(|_| Error::presentation(None, PresentationError::MasterPlaylist("not UTF-8")))?;
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
        if let Some(name) = uri
            .and_then(|u| u.strip_suffix("/media.m3u8"))
            .and_then(|name| RenditionName::new(name).ok())
        {
            names.insert(name);
        }
    }
    if names.is_empty() {
        return Err(Error::presentation(
            None,
            PresentationError::MasterPlaylist("no rendition"),
        ));
    }
    Ok(names.into_iter().collect())
}

/// Fetches and verifies one rendition: its signed manifest (against the
/// origin's keys, and naming this title and rendition), its init segment
/// (against the manifest) and its media playlist.
pub(crate) async fn fetch_rendition(
    cdn: &CdnClient,
    keys: &Keyring,
    title: &Title,
    name: &RenditionName,
    decrypt: bool,
) -> Result<Rendition, Error> {
    let failed = |source| Error::presentation(Some(name.as_str()), source);
    let raw = cdn.fetch(&manifest_path(title, name), None).await?;
    let (chunks, used) =
        manifest_frames(&raw).map_err(|e| failed(PresentationError::ManifestFraming(e)))?;
    if used != raw.len() {
        return Err(failed(PresentationError::TruncatedManifest));
    }
    let mut manifest = Manifest::from_encoded_chunks(keys, chunks.iter().copied())
        .map_err(|e| failed(PresentationError::Manifest(e)))?;
    if manifest.title() != title.as_str() || manifest.rendition() != name.as_str() {
        return Err(failed(PresentationError::MisplacedManifest {
            title: manifest.title().to_owned(),
            rendition: manifest.rendition().to_owned(),
        }));
    }
    let init = cdn.fetch(&format!("{title}/{name}/init.mp4"), None).await?;
    manifest
        .verify_init(&init)
        .map_err(|e| failed(PresentationError::Init(e)))?;
    // Checked at `open`, so that a presentation the SDK cannot decrypt
    // fails there with a clear error rather than at the player's first
    // request.
    let clear_init = if decrypt {
        Some(Arc::new(
            decrypt_init(&init).map_err(|e| failed(PresentationError::NotDecryptable(e)))?,
        ))
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
        name: name.clone(),
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
pub(crate) fn manifest_path(title: &Title, rendition: &RenditionName) -> String {
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

/// The file name of segment `sequence` in the packager's layout.
pub(crate) fn segment_file(sequence: u64) -> String {
    format!("seg_{sequence:05}.m4s")
}

/// The sequence number of a segment file name.
pub(crate) fn parse_segment_file(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg_")?.strip_suffix(".m4s")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tags_group_by_period_once() {
        let playlist = "#EXTM3U\n#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI=\"a\"\n\
            #EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"b\"\n#EXTINF:2.0,\nseg_00000.m4s\n\
            #EXTINF:2.0,\nseg_00001.m4s\n#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI=\"c\"\n\
            #EXTINF:2.0,\nseg_00002.m4s\n#EXTINF:2.0,\nseg_00099.m4s\n";
        let period = |sequence: u64| (sequence < 3).then_some((sequence / 2) as u32);
        let (any, learned) = key_tags_by_period(playlist.as_bytes(), period);
        assert!(any);
        assert_eq!(
            learned,
            [
                (
                    0,
                    "#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI=\"a\"\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"b\""
                        .to_owned()
                ),
                (1, "#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI=\"c\"".to_owned()),
            ]
        );
        assert_eq!(
            key_tags_by_period(b"#EXTM3U\nseg_00000.m4s\n", period),
            (false, vec![])
        );
        assert_eq!(key_tags_by_period(&[0xff, 0xfe], period), (false, vec![]));
    }

    #[test]
    fn repeated_segment_lines_do_not_copy_the_key_tags() {
        // Found by review while writing the hls_playlist fuzz target: every
        // segment line joined the key tags in force into a new string, kept
        // even when its period already had one, so a playlist (up to the
        // CDN body cap, 64 MiB) of one large group of key tags followed by
        // the same segment line repeated allocated the group once per line.
        let mut playlist = String::from("#EXTM3U\n");
        for _ in 0..1000 {
            playlist.push_str("#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI=\"skd://x\"\n");
        }
        for _ in 0..10_000 {
            playlist.push_str("seg_00007.m4s\n");
        }
        let (any, learned) = key_tags_by_period(playlist.as_bytes(), |_| Some(0));
        assert!(any);
        assert_eq!(learned.len(), 1);
        assert_eq!(learned[0].1.lines().count(), 1000);
    }
}
