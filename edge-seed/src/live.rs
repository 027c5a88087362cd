//! Live packaging: an encoder writes CMAF into `INPUT/NAME/` (an `init*`
//! file, then numbered segments); each [`LivePackager::poll`] packages the
//! segments that appeared since the last poll, appends one signed chunk per
//! segment to `OUT/NAME/manifest.lvm`, and rewrites the sliding-window
//! media playlists and the dynamic MPD (`OUT/manifest.mpd`). Every file is
//! written under a temporary name and renamed.
//!
//! DASH timing (DASH-IF IOP 4.3 §4.3): one period from presentation time 0;
//! the earliest decode time packaged in the first poll that packaged
//! anything is presentation time 0 (each representation's
//! `presentationTimeOffset`), and `availabilityStartTime` is fixed then so
//! that the newest segment of that poll became available at that poll: the
//! encoder is taken to produce in real time from then on. [`LivePackager::finish`]
//! turns the MPD static, listing every segment of the event (all stay on
//! disk), so the whole event plays as VOD afterwards.
//!
//! Rules: segments of a rendition are taken in file-number order; a file
//! whose number is not above the last one packaged (a duplicate, or a late
//! arrival) is refused and reported, never packaged. A segment (or init
//! segment) that does not parse is retried at the next poll while the
//! encoder may still be writing it, and refused once its length stopped
//! changing between two polls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::manifest::{ManifestWriter, Scheme, SegmentInfo};

use crate::error::{Mp4Error, PackageError};
use crate::init::{InitProtection, TrackInfo, inspect_init, protect_init};
use crate::input::segment_number;
use crate::keysource::{KeyRequest, KeySource, TrackKey};
use crate::package::{
    MANIFEST_FILE, PackageOptions, PackagedRendition, PackagedSegment, append_manifest_chunk,
    key_period, track_type,
};
use crate::playlist;
use crate::segment::{SegmentProtection, inspect_segment, protect_segment};

/// What one poll did.
#[derive(Debug)]
pub enum LiveEvent {
    /// A new rendition started (its init segment was packaged).
    Started {
        /// Rendition name.
        rendition: String,
    },
    /// A segment was packaged and appended to the manifest.
    Packaged {
        /// Rendition name.
        rendition: String,
        /// Its sequence number.
        sequence: u64,
    },
    /// An input file was refused (and will not be retried).
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct LiveRendition {
    track: TrackInfo,
    track_type: &'static str,
    init_out: Vec<u8>,
    writer: ManifestWriter,
    manifest: Vec<u8>,
    next_sequence: u64,
    last_number: Option<u64>,
    refused: Vec<PathBuf>,
    /// Segments that did not parse at the last poll, with their length.
    pending: std::collections::HashMap<PathBuf, u64>,
    /// Input files already packaged (a new file under an old number is a
    /// duplicate, not one of these).
    done: std::collections::HashSet<PathBuf>,
    keys: BTreeMap<u32, TrackKey>,
    /// Every segment packaged so far, in order: the playlists list the last
    /// `window` of them, the MPD after the event all of them.
    segments: Vec<LiveSegment>,
    /// Longest segment of the event, ms (`MPD@maxSegmentDuration`).
    max_duration_ms: u64,
    kids: Vec<(u32, [u8; 16])>,
}

#[derive(Debug, Clone)]
struct LiveSegment {
    segment: PackagedSegment,
    /// `tfdt` of the segment's first fragment, track timescale: the MPD's
    /// `SegmentTimeline` states real decode times, so a gap in the
    /// encoder's timeline is not papered over.
    decode_time: u64,
}

/// The fixed wall-clock anchor of the live MPD, set by the first poll that
/// packaged a segment.
#[derive(Debug, Clone, Copy)]
struct LiveClock {
    availability_start_ms: i64,
    /// Presentation time 0 as a decode time: (ticks, timescale).
    origin: (u64, u32),
}

impl LiveClock {
    /// `presentationTimeOffset` of a track with `timescale`.
    fn offset(&self, timescale: u32) -> u64 {
        let (ticks, scale) = self.origin;
        let scaled = u128::from(ticks) * u128::from(timescale) / u128::from(scale.max(1));
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// The live packager of one title.
pub struct LivePackager<'a> {
    input: PathBuf,
    output: PathBuf,
    options: PackageOptions,
    window: usize,
    keys: &'a dyn KeySource,
    origin_key: &'a SigningKeyPair,
    renditions: BTreeMap<String, LiveRendition>,
    /// Init segments that did not parse at the last poll, with their length.
    init_pending: std::collections::HashMap<PathBuf, usize>,
    /// Set once the first segment is packaged; fixed for the event.
    clock: Option<LiveClock>,
}

impl std::fmt::Debug for LivePackager<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePackager")
            .field("input", &self.input)
            .field("output", &self.output)
            .field("renditions", &self.renditions.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(PackageError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(PackageError::io(path))
}

impl<'a> LivePackager<'a> {
    /// A packager of `input` into `output`, keeping `window` segments in
    /// the media playlists. `options.scheme` may not be passthrough.
    pub fn new(
        input: &Path,
        output: &Path,
        options: PackageOptions,
        window: usize,
        keys: &'a dyn KeySource,
        origin_key: &'a SigningKeyPair,
    ) -> Result<Self, PackageError> {
        if options.scheme == Scheme::Passthrough {
            return Err(PackageError::Input {
                path: input.to_owned(),
                message: "live mode protects clear input: use cenc or cbcs".into(),
            });
        }
        if output.exists() && !options.force {
            return Err(PackageError::OutputExists(output.to_owned()));
        }
        std::fs::create_dir_all(output).map_err(PackageError::io(output))?;
        Ok(Self {
            input: input.to_owned(),
            output: output.to_owned(),
            options,
            window: window.max(1),
            keys,
            origin_key,
            renditions: BTreeMap::new(),
            init_pending: std::collections::HashMap::new(),
            clock: None,
        })
    }

    /// Scans the input once and packages what is new.
    pub fn poll(&mut self, now: UnixSeconds) -> Result<Vec<LiveEvent>, PackageError> {
        let mut events = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.input)
            .map_err(PackageError::io(&self.input))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut started = false;
        for dir in dirs {
            let Some(name) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(crate::input::sanitize)
            else {
                continue;
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(PackageError::io(&dir))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("m4s" | "mp4" | "cmfv" | "cmfa")
                        )
                })
                .collect();
            let Some(init_pos) = files.iter().position(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.starts_with("init"))
            }) else {
                continue; // the encoder has not written the init segment yet
            };
            let init_path = files.remove(init_pos);
            if !self.renditions.contains_key(&name) {
                match self.start_rendition(&name, &init_path)? {
                    Some(r) => {
                        self.renditions.insert(name.clone(), r);
                        events.push(LiveEvent::Started {
                            rendition: name.clone(),
                        });
                        started = true;
                    }
                    None => continue,
                }
            }
            files.sort_by_key(|p| segment_number(p));
            for path in files {
                let number = segment_number(&path).0;
                let Some(r) = self.renditions.get_mut(&name) else {
                    break;
                };
                if r.refused.contains(&path) || r.done.contains(&path) {
                    continue;
                }
                if let Some(last) = r.last_number
                    && number <= last
                {
                    r.refused.push(path.clone());
                    events.push(LiveEvent::Refused {
                        path,
                        reason: format!(
                            "segment number {number} arrived after {last} was packaged (out of order or duplicate)"
                        ),
                    });
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(PackageError::io(&path))?;
                match self.package_segment(&name, &path, number, &bytes, now) {
                    Ok(Some(sequence)) => events.push(LiveEvent::Packaged {
                        rendition: name.clone(),
                        sequence,
                    }),
                    Ok(None) => break, // still being written: retry next poll
                    Err(PackageError::Media { path, source }) => events.push(LiveEvent::Refused {
                        path,
                        reason: source.to_string(),
                    }),
                    Err(other) => return Err(other),
                }
            }
        }
        if events
            .iter()
            .any(|e| matches!(e, LiveEvent::Packaged { .. }))
        {
            self.write_mpd(now, false)?;
        }
        if started {
            let renditions = self.snapshot();
            write_atomic(
                &self.output.join("master.m3u8"),
                playlist::hls_multivariant(
                    &renditions,
                    self.options.scheme,
                    &self.options.clearkey_license_url,
                )
                .as_bytes(),
            )?;
        }
        Ok(events)
    }

    fn key(&mut self, name: &str, period: u32) -> Result<TrackKey, PackageError> {
        let title = self.options.title.clone();
        let Some(r) = self.renditions.get_mut(name) else {
            return Err(PackageError::Input {
                path: self.input.join(name),
                message: "unknown rendition".into(),
            });
        };
        if let Some(k) = r.keys.get(&period) {
            return Ok(k.clone());
        }
        let got = self.keys.get_keys(
            &title,
            &[KeyRequest {
                track_type: r.track_type.to_owned(),
                key_period: period,
            }],
        )?;
        let k = got.into_iter().next().ok_or_else(|| {
            PackageError::Keys(crate::keysource::KeySourceError::BadResponse(
                "no key".into(),
            ))
        })?;
        r.keys.insert(period, k.clone());
        r.kids.push((period, k.kid.0));
        Ok(k)
    }

    fn start_rendition(
        &mut self,
        name: &str,
        init_path: &Path,
    ) -> Result<Option<LiveRendition>, PackageError> {
        let init = std::fs::read(init_path).map_err(PackageError::io(init_path))?;
        let track = match inspect_init(&init) {
            Ok(t) => t,
            // Still being written: retry while it grows.
            Err(_)
                if self.init_pending.insert(init_path.to_owned(), init.len())
                    != Some(init.len()) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(PackageError::Media {
                    path: init_path.to_owned(),
                    source: e,
                });
            }
        };
        if track.already_protected {
            return Err(PackageError::Media {
                path: init_path.to_owned(),
                source: Mp4Error::AlreadyProtected,
            });
        }
        let tt = track_type(&track, self.options.hd_min_height);
        let got = self.keys.get_keys(
            &self.options.title,
            &[KeyRequest {
                track_type: tt.to_owned(),
                key_period: 0,
            }],
        )?;
        let k0 = got.into_iter().next().ok_or_else(|| {
            PackageError::Keys(crate::keysource::KeySourceError::BadResponse(
                "no key".into(),
            ))
        })?;
        let init_out = protect_init(
            &init,
            &track,
            &InitProtection {
                scheme: self.options.scheme,
                default_kid: k0.kid.0,
                all_kids: vec![k0.kid.0],
            },
        )
        .map_err(PackageError::media(init_path))?;
        let dir = self.output.join(name);
        std::fs::create_dir_all(&dir).map_err(PackageError::io(&dir))?;
        write_atomic(&dir.join("init.mp4"), &init_out)?;
        let writer =
            ManifestWriter::new(&self.options.title, name, &init_out, self.options.scheme, 0);
        let kid0 = k0.kid.0;
        Ok(Some(LiveRendition {
            track,
            track_type: tt,
            init_out,
            writer,
            manifest: Vec::new(),
            next_sequence: 0,
            last_number: None,
            refused: Vec::new(),
            pending: std::collections::HashMap::new(),
            done: std::collections::HashSet::new(),
            keys: BTreeMap::from([(0, k0)]),
            segments: Vec::new(),
            max_duration_ms: 0,
            kids: vec![(0, kid0)],
        }))
    }

    /// Packages one segment; `None` when it is still being written.
    fn package_segment(
        &mut self,
        name: &str,
        path: &Path,
        number: u64,
        bytes: &[u8],
        now: UnixSeconds,
    ) -> Result<Option<u64>, PackageError> {
        let (sequence, track) = match self.renditions.get(name) {
            Some(r) => (r.next_sequence, r.track.clone()),
            None => return Ok(None),
        };
        // A file the encoder is still writing does not parse yet: retry it
        // while it grows; refuse it once it stopped growing and still fails.
        if let Err(e) = inspect_segment(bytes, &track) {
            let Some(r) = self.renditions.get_mut(name) else {
                return Ok(None);
            };
            let len = bytes.len() as u64;
            if r.pending.get(path) == Some(&len) {
                r.pending.remove(path);
                r.refused.push(path.to_owned());
                return Err(PackageError::Media {
                    path: path.to_owned(),
                    source: e,
                });
            }
            r.pending.insert(path.to_owned(), len);
            return Ok(None);
        }
        let period = key_period(sequence, self.options.key_period_segments);
        let key = self.key(name, period)?;
        let scheme = self.options.scheme;
        let window = self.window;
        let url = self.options.clearkey_license_url.clone();
        let origin_key = self.origin_key;
        let Some(r) = self.renditions.get_mut(name) else {
            return Ok(None);
        };
        let (out, summary) = protect_segment(
            bytes,
            &r.track,
            &SegmentProtection {
                scheme,
                key: &key.key,
                kid: key.kid.0,
                default_kid: r.kids[0].1,
                rendition: name,
                sequence,
            },
        )
        .map_err(PackageError::media(path))?;
        let duration_ms = u32::try_from(
            (u128::from(summary.duration) * 1000 + u128::from(r.track.timescale) / 2)
                / u128::from(r.track.timescale),
        )
        .unwrap_or(u32::MAX);
        let dir = self.output.join(name);
        let file_name = format!("seg_{sequence:05}.m4s");
        write_atomic(&dir.join(&file_name), &out)?;
        let info = SegmentInfo::describe(sequence, duration_ms, period, &out);
        let manifest_path = dir.join(MANIFEST_FILE);
        append_manifest_chunk(
            &mut r.writer,
            origin_key,
            &[info],
            false,
            now,
            &manifest_path,
            &mut r.manifest,
        )?;
        write_atomic(&manifest_path, &r.manifest)?;
        r.segments.push(LiveSegment {
            segment: PackagedSegment {
                sequence,
                file_name,
                duration_ticks: summary.duration,
                duration_ms,
                key_period: period,
                size: out.len() as u64,
            },
            decode_time: summary.base_decode_time,
        });
        r.max_duration_ms = r.max_duration_ms.max(u64::from(duration_ms));
        r.next_sequence += 1;
        r.last_number = Some(number);
        r.done.insert(path.to_owned());
        let rendition = snapshot_one(name, r, window_of(&r.segments, window));
        write_atomic(
            &dir.join("media.m3u8"),
            playlist::hls_media_playlist(&rendition, scheme, &url, false).as_bytes(),
        )?;
        Ok(Some(sequence))
    }

    /// Ends the event: appends a final (empty) chunk to every manifest,
    /// closes the playlists with `EXT-X-ENDLIST` and makes the MPD static,
    /// with every segment of the event.
    pub fn finish(&mut self, now: UnixSeconds) -> Result<(), PackageError> {
        let scheme = self.options.scheme;
        let url = self.options.clearkey_license_url.clone();
        let window = self.window;
        for (name, r) in &mut self.renditions {
            let dir = self.output.join(name);
            let manifest_path = dir.join(MANIFEST_FILE);
            append_manifest_chunk(
                &mut r.writer,
                self.origin_key,
                &[],
                true,
                now,
                &manifest_path,
                &mut r.manifest,
            )?;
            write_atomic(&manifest_path, &r.manifest)?;
            let rendition = snapshot_one(name, r, window_of(&r.segments, window));
            write_atomic(
                &dir.join("media.m3u8"),
                playlist::hls_media_playlist(&rendition, scheme, &url, true).as_bytes(),
            )?;
        }
        if self.clock.is_some() {
            self.write_mpd(now, true)?;
        }
        Ok(())
    }

    /// Rewrites `OUT/manifest.mpd`: dynamic with the window's segments
    /// while the event runs, static with all of them once it `ended`.
    /// Renditions without a segment yet are left out (an empty
    /// `SegmentTimeline` is not a representation a player can use).
    fn write_mpd(&mut self, now: UnixSeconds, ended: bool) -> Result<(), PackageError> {
        let now_ms = i64::try_from(now.0)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        let clock = match self.clock {
            Some(clock) => clock,
            None => {
                let Some(clock) = self.start_clock(now_ms) else {
                    return Ok(()); // nothing packaged yet
                };
                self.clock = Some(clock);
                clock
            }
        };
        let window = if ended { usize::MAX } else { self.window };
        let listed: Vec<(PackagedRendition, Vec<u64>, u64)> = self
            .renditions
            .iter()
            .filter(|(_, r)| !r.segments.is_empty())
            .map(|(name, r)| {
                let segments = window_of(&r.segments, window);
                (
                    snapshot_one(name, r, segments),
                    segments.iter().map(|s| s.decode_time).collect(),
                    clock.offset(r.track.timescale),
                )
            })
            .collect();
        let tracks: Vec<playlist::MpdTrack<'_>> = listed
            .iter()
            .map(|(rendition, decode_times, offset)| playlist::MpdTrack {
                rendition,
                decode_times,
                presentation_time_offset: *offset,
            })
            .collect();
        let mpd_type = if ended {
            // The presentation ends where the longest track's last segment
            // ends, in period time.
            let duration_ms = tracks
                .iter()
                .filter_map(|t| {
                    let last = t.rendition.segments.last()?;
                    let end = t.decode_times.last()? + last.duration_ticks;
                    Some(ticks_to_ms(
                        end.saturating_sub(t.presentation_time_offset),
                        t.rendition.timescale,
                    ))
                })
                .max()
                .unwrap_or(0);
            playlist::MpdType::Static { duration_ms }
        } else {
            let longest_ms = |segments: &[PackagedSegment]| {
                segments
                    .iter()
                    .map(|s| u64::from(s.duration_ms))
                    .max()
                    .unwrap_or(0)
            };
            let target_ms = listed
                .iter()
                .map(|(r, _, _)| longest_ms(&r.segments))
                .max()
                .unwrap_or(0)
                .max(1);
            let max_segment_duration_ms = self
                .renditions
                .values()
                .map(|r| r.max_duration_ms)
                .max()
                .unwrap_or(0)
                .max(target_ms);
            // The window the HLS playlists hold, as a duration.
            let depth_ms = listed
                .iter()
                .map(|(r, _, _)| r.segments.iter().map(|s| u64::from(s.duration_ms)).sum())
                .max()
                .unwrap_or(0);
            playlist::MpdType::Dynamic(playlist::LiveMpd {
                availability_start_ms: clock.availability_start_ms,
                publish_ms: now_ms,
                // A new segment every target duration: checking more often
                // finds nothing new.
                minimum_update_period_ms: target_ms,
                time_shift_buffer_depth_ms: depth_ms,
                // Three segments behind the live edge, as HLS players hold
                // back three target durations; never more than the window.
                suggested_presentation_delay_ms: (3 * target_ms).min(depth_ms),
                max_segment_duration_ms,
            })
        };
        let text = playlist::mpd(
            &tracks,
            &mpd_type,
            self.options.scheme,
            &self.options.clearkey_license_url,
        );
        write_atomic(&self.output.join("manifest.mpd"), text.as_bytes())
    }

    /// The event's clock: presentation time 0 at the earliest packaged
    /// decode time, and the newest packaged segment available at `now_ms`.
    fn start_clock(&self, now_ms: i64) -> Option<LiveClock> {
        let firsts = self.renditions.values().filter_map(|r| {
            let first = r.segments.first()?;
            Some((first.decode_time, r.track.timescale.max(1)))
        });
        // Earliest as a rational: a/b < c/d ⇔ a·d < c·b.
        let origin = firsts.min_by(|(a, b), (c, d)| {
            (u128::from(*a) * u128::from(*d)).cmp(&(u128::from(*c) * u128::from(*b)))
        })?;
        let provisional = LiveClock {
            availability_start_ms: 0,
            origin,
        };
        let newest_end_ms = self
            .renditions
            .values()
            .filter_map(|r| {
                let last = r.segments.last()?;
                let end = last.decode_time + last.segment.duration_ticks;
                Some(ticks_to_ms(
                    end.saturating_sub(provisional.offset(r.track.timescale)),
                    r.track.timescale,
                ))
            })
            .max()?;
        Some(LiveClock {
            availability_start_ms: now_ms
                .saturating_sub(i64::try_from(newest_end_ms).unwrap_or(i64::MAX)),
            origin,
        })
    }

    fn snapshot(&self) -> Vec<PackagedRendition> {
        self.renditions
            .iter()
            .map(|(n, r)| snapshot_one(n, r, window_of(&r.segments, self.window)))
            .collect()
    }

    /// Sequence numbers currently in `rendition`'s playlist window.
    pub fn window(&self, rendition: &str) -> Vec<u64> {
        self.renditions
            .get(rendition)
            .map(|r| {
                window_of(&r.segments, self.window)
                    .iter()
                    .map(|s| s.segment.sequence)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The last `window` segments.
fn window_of(segments: &[LiveSegment], window: usize) -> &[LiveSegment] {
    &segments[segments.len().saturating_sub(window)..]
}

fn ticks_to_ms(ticks: u64, timescale: u32) -> u64 {
    let ms = u128::from(ticks) * 1000 / u128::from(timescale.max(1));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The rendition as the playlists and the MPD see it, listing `segments`.
fn snapshot_one(name: &str, r: &LiveRendition, segments: &[LiveSegment]) -> PackagedRendition {
    let peak = segments
        .iter()
        .map(|s| &s.segment)
        .filter(|s| s.duration_ms > 0)
        .map(|s| s.size * 8 * 1000 / u64::from(s.duration_ms))
        .max()
        .unwrap_or(0);
    PackagedRendition {
        name: name.to_owned(),
        track_type: r.track_type.to_owned(),
        is_video: r.track.is_video(),
        codec_string: r.track.codec_string.clone(),
        dimensions: r.track.dimensions,
        timescale: r.track.timescale,
        base_decode_time: 0,
        peak_bandwidth: peak,
        average_bandwidth: peak,
        kids: r.kids.clone(),
        segments: segments.iter().map(|s| s.segment.clone()).collect(),
        bytes_in: 0,
        bytes_out: r.init_out.len() as u64,
    }
}
