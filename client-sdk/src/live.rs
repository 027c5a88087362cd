//! Following a live rendition: its signed manifest grows as the origin
//! publishes segments; this task reads the new bytes, verifies each new
//! chunk and appends it to the rendition's shared manifest, then nudges
//! the rendition's track.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use loaves_proto::manifest::verify_chunk;

use crate::events::Event;
use crate::lock;
use crate::session::Shared;
use crate::session::presentation::{Rendition, manifest_frames, manifest_path};
use crate::track::TrackHandle;

/// Polling: bounds of the interval (half a segment).
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(5);
/// Polling: longest delay after repeated failures.
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Follows a live rendition's manifest until it is final or the session
/// stops: every half segment (wall time at the playback speed, bounded),
/// asks the CDN for the bytes past those already consumed, verifies each
/// new chunk and appends it to the shared manifest, then nudges the track.
/// A chunk that fails verification is never applied: an event is emitted
/// and following resumes from the last good chunk, with backoff (the
/// origin may correct the file). Fetch failures back off the same way.
pub(crate) async fn follow(shared: Arc<Shared>, rendition: Arc<Rendition>, track: TrackHandle) {
    let path = manifest_path(&shared.title, &rendition.name);
    let playlist_path = format!("{}/{}/media.m3u8", shared.title, rendition.name);
    // Key tags are learned from the origin's playlist only if it has any.
    let keyed = !lock(&rendition.key_lines).is_empty();
    let mut failures: u32 = 0;
    loop {
        let typical = match rendition.typical_ms() {
            0 => 2_000,
            ms => ms,
        };
        let half = Duration::from_millis(u64::from(typical) / 2)
            .div_f64(shared.config.playback_speed)
            .clamp(POLL_MIN, POLL_MAX);
        let delay = (half * 2u32.pow(failures.min(6))).min(POLL_BACKOFF_MAX.max(half));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.cancel.cancelled() => return,
        }
        let offset = rendition.consumed.load(Ordering::Relaxed);
        let tail = match shared.cdn.fetch_from(&path, offset).await {
            Ok(tail) => tail,
            Err(error) => {
                if failures == 0 {
                    shared.emit(Event::ManifestUnavailable {
                        rendition: rendition.name.clone(),
                        message: error.to_string(),
                    });
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
        match append_chunks(&shared, &rendition, &tail) {
            Ok(0) => failures = 0,
            Ok(_) => {
                failures = 0;
                track.nudge();
                if keyed && rendition.missing_key_lines() {
                    // The playlist is written after the manifest: a period
                    // still missing is looked for again at the next poll.
                    if let Ok(playlist) = shared.cdn.fetch(&playlist_path, None).await {
                        rendition.learn_key_lines(&playlist);
                    }
                }
            }
            Err(message) => {
                shared.emit(Event::ManifestRejected {
                    rendition: rendition.name.clone(),
                    message,
                });
                failures = failures.saturating_add(1);
            }
        }
        if rendition.manifest().is_final() {
            track.nudge();
            return;
        }
    }
}

/// Verifies and appends the whole chunks in `tail` (the manifest file's
/// bytes past those consumed); returns how many were appended. Stops at the
/// first chunk that fails: it and everything after it are left unapplied
/// and unconsumed.
fn append_chunks(shared: &Shared, rendition: &Rendition, tail: &[u8]) -> Result<usize, String> {
    let (frames, _) = manifest_frames(tail).map_err(|e| e.to_string())?;
    let mut appended = 0;
    for frame in frames {
        let chunk = verify_chunk(&shared.config.manifest_keys, frame).map_err(|e| e.to_string())?;
        let durations: Vec<u32> = chunk.segments.iter().map(|s| s.duration_ms).collect();
        rendition
            .manifest_mut()
            .append(chunk)
            .map_err(|e| e.to_string())?;
        rendition.saw_durations(durations.into_iter());
        // The frame's prefix and payload are now consumed.
        let frame_len = (frame.len() + loaves_proto::framing::LENGTH_PREFIX_LEN) as u64;
        rendition.consumed.fetch_add(frame_len, Ordering::Relaxed);
        appended += 1;
    }
    Ok(appended)
}
