//! Packaging a whole presentation: read the renditions, fetch keys, protect
//! every init and media segment, sign the manifests, write HLS and DASH,
//! and publish the output directory atomically.
//!
//! Output layout (`OUT/`):
//!
//! ```text
//! master.m3u8            HLS multivariant playlist
//! manifest.mpd           DASH MPD
//! NAME/init.mp4          protected init segment of rendition NAME
//! NAME/seg_00000.m4s     protected media segments, numbered from 0
//! NAME/media.m3u8        HLS media playlist
//! NAME/manifest.lvm      signed manifest: the chunks of the rendition's
//!                        chain, each an encoded `Signed` envelope as one
//!                        length-delimited frame (4-byte big-endian length,
//!                        then the bytes; `loaves_wire::framing`)
//! ```
//!
//! Everything is written under `.OUT.partial-PID` next to `OUT`, then
//! renamed into place: a failed run never leaves a half-written `OUT`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loaves_proto::UnixSeconds;
use loaves_proto::keys::{ContentKey, SigningKeyPair};
use loaves_proto::manifest::{
    MAX_CHUNK_LEN, MAX_SEGMENTS_PER_CHUNK, ManifestWriter, Scheme, SegmentInfo,
};
use loaves_wire::framing::encode_frame;

use crate::error::{Mp4Error, PackageError};
use crate::init::{InitProtection, TrackInfo, inspect_init, protect_init};
use crate::input::{RenditionInput, discover};
use crate::keysource::{KeyRequest, KeySource, TrackKey};
use crate::playlist;
use crate::segment::{SegmentProtection, inspect_segment, protect_segment};

/// File name of a rendition's signed manifest.
pub const MANIFEST_FILE: &str = "manifest.lvm";

/// Packaging options. `Default` packages with `cenc`, one key period, and
/// the 720-line SD/HD boundary.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// Title id (in manifests and key requests).
    pub title: String,
    /// Protection scheme.
    pub scheme: Scheme,
    /// A new key period every this many segments; 0 = one period.
    pub key_period_segments: u32,
    /// Video of at least this height is `hd`, below is `sd`.
    pub hd_min_height: u16,
    /// ClearKey license URL written in playlists.
    pub clearkey_license_url: String,
    /// Replace an existing output directory.
    pub force: bool,
}

impl Default for PackageOptions {
    fn default() -> Self {
        Self {
            title: "title".into(),
            scheme: Scheme::Cenc,
            key_period_segments: 0,
            hd_min_height: 720,
            clearkey_license_url: "/clearkey/license".into(),
            force: false,
        }
    }
}

/// One output segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedSegment {
    /// Sequence number.
    pub sequence: u64,
    /// File name inside the rendition directory.
    pub file_name: String,
    /// Duration in the track timescale.
    pub duration_ticks: u64,
    /// Duration in milliseconds (rounded).
    pub duration_ms: u32,
    /// Key period.
    pub key_period: u32,
    /// Size in bytes.
    pub size: u64,
}

/// One output rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedRendition {
    /// Name (directory).
    pub name: String,
    /// `audio`, `sd` or `hd`.
    pub track_type: String,
    /// Video or audio.
    pub is_video: bool,
    /// RFC 6381 codec string.
    pub codec_string: String,
    /// Width and height of video.
    pub dimensions: Option<(u16, u16)>,
    /// Media timescale.
    pub timescale: u32,
    /// Decode time of the first segment.
    pub base_decode_time: u64,
    /// Highest segment bitrate, bits per second.
    pub peak_bandwidth: u64,
    /// Average bitrate, bits per second.
    pub average_bandwidth: u64,
    /// Key id of every key period used, in period order.
    pub kids: Vec<(u32, [u8; 16])>,
    /// Segments in order.
    pub segments: Vec<PackagedSegment>,
    /// Input bytes (init + segments).
    pub bytes_in: u64,
    /// Output bytes (init + segments).
    pub bytes_out: u64,
}

impl PackagedRendition {
    /// The key id of `period`.
    pub fn kid_of(&self, period: u32) -> Option<[u8; 16]> {
        self.kids.iter().find(|k| k.0 == period).map(|k| k.1)
    }
}

/// What a packaging run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSummary {
    /// The published directory.
    pub output: PathBuf,
    /// Scheme used.
    pub scheme: Scheme,
    /// Per rendition.
    pub renditions: Vec<PackagedRendition>,
}

impl PackageSummary {
    /// Total input bytes.
    pub fn bytes_in(&self) -> u64 {
        self.renditions.iter().map(|r| r.bytes_in).sum()
    }

    /// Total segments.
    pub fn segments(&self) -> usize {
        self.renditions.iter().map(|r| r.segments.len()).sum()
    }
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The run will process this many segments.
    Total(u64),
    /// One more segment of `bytes` input bytes is done.
    Segment {
        /// Its input size.
        bytes: u64,
    },
}

/// The track type of a rendition (selects its keys).
pub fn track_type(track: &TrackInfo, hd_min_height: u16) -> &'static str {
    match track.dimensions {
        None => "audio",
        Some((_, h)) if h >= hd_min_height => "hd",
        Some(_) => "sd",
    }
}

/// Key period of the `index`-th segment (0-based).
pub fn key_period(index: u64, key_period_segments: u32) -> u32 {
    if key_period_segments == 0 {
        0
    } else {
        u32::try_from(index / u64::from(key_period_segments)).unwrap_or(u32::MAX)
    }
}

/// Packages the presentation at `input` into `output`.
pub fn package(
    input: &Path,
    output: &Path,
    options: &PackageOptions,
    keys: &dyn KeySource,
    origin_key: &SigningKeyPair,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackageSummary, PackageError> {
    if output.exists() && !options.force {
        return Err(PackageError::OutputExists(output.to_owned()));
    }
    let inputs = discover(input)?;
    // Read and check every init segment before asking for keys or writing.
    let mut tracks = Vec::with_capacity(inputs.len());
    for r in &inputs {
        let bytes = std::fs::read(&r.init).map_err(PackageError::io(&r.init))?;
        let track = inspect_init(&bytes).map_err(PackageError::media(&r.init))?;
        match (options.scheme, track.already_protected) {
            (Scheme::Passthrough, false) => {
                return Err(PackageError::Input {
                    path: r.init.clone(),
                    message:
                        "passthrough is for content already protected; this init segment is clear"
                            .into(),
                });
            }
            (Scheme::Cenc | Scheme::Cbcs, true) => {
                return Err(PackageError::Media {
                    path: r.init.clone(),
                    source: Mp4Error::AlreadyProtected,
                });
            }
            _ => {}
        }
        tracks.push((bytes, track));
    }
    let keymap = fetch_keys(&inputs, &tracks, options, keys)?;
    progress(Progress::Total(
        inputs.iter().map(|r| r.segments.len() as u64).sum(),
    ));

    let file_name =
        output
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| PackageError::Input {
                path: output.to_owned(),
                message: "output must name a directory".into(),
            })?;
    let staging = output.with_file_name(format!(".{file_name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(PackageError::io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(PackageError::io(&staging))?;
    let result = (|| {
        let mut renditions = Vec::with_capacity(inputs.len());
        for (r, (init, track)) in inputs.iter().zip(&tracks) {
            renditions.push(package_rendition(
                r, init, track, &staging, options, &keymap, origin_key, progress,
            )?);
        }
        let url = &options.clearkey_license_url;
        write(
            &staging.join("master.m3u8"),
            playlist::hls_multivariant(&renditions, options.scheme, url).as_bytes(),
        )?;
        write(
            &staging.join("manifest.mpd"),
            playlist::dash_mpd(&renditions, options.scheme, url).as_bytes(),
        )?;
        Ok(renditions)
    })();
    let renditions = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    publish(&staging, output)?;
    Ok(PackageSummary {
        output: output.to_owned(),
        scheme: options.scheme,
        renditions,
    })
}

type KeyMap = BTreeMap<(String, u32), TrackKey>;

fn fetch_keys(
    inputs: &[RenditionInput],
    tracks: &[(Vec<u8>, TrackInfo)],
    options: &PackageOptions,
    keys: &dyn KeySource,
) -> Result<KeyMap, PackageError> {
    if options.scheme == Scheme::Passthrough {
        return Ok(KeyMap::new());
    }
    let mut requests = std::collections::BTreeSet::new();
    for (r, (_, track)) in inputs.iter().zip(tracks) {
        let tt = track_type(track, options.hd_min_height);
        let last = r.segments.len().saturating_sub(1) as u64;
        for period in 0..=key_period(last, options.key_period_segments) {
            requests.insert(KeyRequest {
                track_type: tt.to_owned(),
                key_period: period,
            });
        }
    }
    let requests: Vec<_> = requests.into_iter().collect();
    let got = keys.get_keys(&options.title, &requests)?;
    let map: KeyMap = got
        .into_iter()
        .map(|k| ((k.track_type.clone(), k.key_period), k))
        .collect();
    for r in &requests {
        if !map.contains_key(&(r.track_type.clone(), r.key_period)) {
            return Err(crate::keysource::KeySourceError::BadResponse(format!(
                "no key for track type {} period {}",
                r.track_type, r.key_period
            ))
            .into());
        }
    }
    Ok(map)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    std::fs::write(path, bytes).map_err(PackageError::io(path))
}

/// Renames `staging` to `output`, replacing an existing `output` (the old
/// one is moved aside first and removed after).
fn publish(staging: &Path, output: &Path) -> Result<(), PackageError> {
    if output.exists() {
        let old = staging.with_extension("old");
        std::fs::rename(output, &old).map_err(PackageError::io(output))?;
        std::fs::rename(staging, output).map_err(PackageError::io(output))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(staging, output).map_err(PackageError::io(output))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn package_rendition(
    r: &RenditionInput,
    init: &[u8],
    track: &TrackInfo,
    staging: &Path,
    options: &PackageOptions,
    keymap: &KeyMap,
    origin_key: &SigningKeyPair,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackagedRendition, PackageError> {
    let dir = staging.join(&r.name);
    std::fs::create_dir_all(&dir).map_err(PackageError::io(&dir))?;
    let tt = track_type(track, options.hd_min_height);
    let periods: Vec<u32> = {
        let last = r.segments.len().saturating_sub(1) as u64;
        (0..=key_period(last, options.key_period_segments)).collect()
    };
    let key_of = |period: u32| -> Option<&TrackKey> { keymap.get(&(tt.to_owned(), period)) };
    let kids: Vec<(u32, [u8; 16])> = if options.scheme == Scheme::Passthrough {
        Vec::new()
    } else {
        periods
            .iter()
            .filter_map(|&p| key_of(p).map(|k| (p, k.kid.0)))
            .collect()
    };
    let init_out = match options.scheme {
        Scheme::Passthrough => init.to_vec(),
        scheme => {
            let default_kid = kids.first().map(|k| k.1).ok_or_else(|| {
                PackageError::Keys(crate::keysource::KeySourceError::BadResponse(
                    "no key for period 0".into(),
                ))
            })?;
            protect_init(
                init,
                track,
                &InitProtection {
                    scheme,
                    default_kid,
                    all_kids: kids.iter().map(|k| k.1).collect(),
                },
            )
            .map_err(PackageError::media(&r.init))?
        }
    };
    write(&dir.join("init.mp4"), &init_out)?;

    let mut bytes_in = init.len() as u64;
    let mut bytes_out = init_out.len() as u64;
    let mut segments = Vec::with_capacity(r.segments.len());
    let mut infos = Vec::with_capacity(r.segments.len());
    let mut base_decode_time = None;
    for (index, path) in r.segments.iter().enumerate() {
        let sequence = index as u64;
        let period = key_period(sequence, options.key_period_segments);
        let input = std::fs::read(path).map_err(PackageError::io(path))?;
        let (out, summary) = match options.scheme {
            Scheme::Passthrough => {
                let s = inspect_segment(&input, track).map_err(PackageError::media(path))?;
                (input.clone(), s)
            }
            scheme => {
                let key: &TrackKey = key_of(period).ok_or_else(|| {
                    PackageError::Keys(crate::keysource::KeySourceError::BadResponse(format!(
                        "no key for period {period}"
                    )))
                })?;
                let content_key: &ContentKey = &key.key;
                protect_segment(
                    &input,
                    track,
                    &SegmentProtection {
                        scheme,
                        key: content_key,
                        kid: key.kid.0,
                        default_kid: kids[0].1,
                        rendition: &r.name,
                        sequence,
                    },
                )
                .map_err(PackageError::media(path))?
            }
        };
        base_decode_time.get_or_insert(summary.base_decode_time);
        let duration_ms = u32::try_from(
            (u128::from(summary.duration) * 1000 + u128::from(track.timescale) / 2)
                / u128::from(track.timescale),
        )
        .unwrap_or(u32::MAX);
        let file_name = format!("seg_{sequence:05}.m4s");
        write(&dir.join(&file_name), &out)?;
        infos.push(SegmentInfo::describe(sequence, duration_ms, period, &out));
        segments.push(PackagedSegment {
            sequence,
            file_name,
            duration_ticks: summary.duration,
            duration_ms,
            key_period: period,
            size: out.len() as u64,
        });
        bytes_in += input.len() as u64;
        bytes_out += out.len() as u64;
        progress(Progress::Segment {
            bytes: input.len() as u64,
        });
    }

    // Signed manifest: one final chunk (several if very long).
    let manifest_path = dir.join(MANIFEST_FILE);
    let mut writer = ManifestWriter::new(&options.title, &r.name, &init_out, options.scheme, 0);
    let mut frames = Vec::new();
    let chunks: Vec<&[SegmentInfo]> = if infos.is_empty() {
        vec![&[]]
    } else {
        infos.chunks(MAX_SEGMENTS_PER_CHUNK).collect()
    };
    let count = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        append_manifest_chunk(
            &mut writer,
            origin_key,
            chunk,
            i + 1 == count,
            UnixSeconds::now(),
            &manifest_path,
            &mut frames,
        )?;
    }
    write(&manifest_path, &frames)?;

    let total_ms: u64 = segments.iter().map(|s| u64::from(s.duration_ms)).sum();
    let total_bytes: u64 = segments.iter().map(|s| s.size).sum();
    let peak_bandwidth = segments
        .iter()
        .filter(|s| s.duration_ms > 0)
        .map(|s| s.size * 8 * 1000 / u64::from(s.duration_ms))
        .max()
        .unwrap_or(0);
    let mut rendition = PackagedRendition {
        name: r.name.clone(),
        track_type: tt.to_owned(),
        is_video: track.is_video(),
        codec_string: track.codec_string.clone(),
        dimensions: track.dimensions,
        timescale: track.timescale,
        base_decode_time: base_decode_time.unwrap_or(0),
        peak_bandwidth,
        average_bandwidth: (total_bytes * 8 * 1000).checked_div(total_ms).unwrap_or(0),
        kids,
        segments,
        bytes_in,
        bytes_out,
    };
    rendition.segments.shrink_to_fit();
    write(
        &dir.join("media.m3u8"),
        playlist::hls_media_playlist(
            &rendition,
            options.scheme,
            &options.clearkey_license_url,
            true,
        )
        .as_bytes(),
    )?;
    Ok(rendition)
}

/// Reads a `manifest.lvm` file into its encoded chunks.
pub fn read_manifest_frames(
    bytes: &[u8],
) -> Result<Vec<Vec<u8>>, loaves_wire::framing::FrameError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match loaves_wire::framing::decode_frame(rest, MAX_CHUNK_LEN)? {
            Some((payload, used)) => {
                out.push(payload.to_vec());
                rest = &rest[used..];
            }
            None => {
                let expected = match rest {
                    [a, b, c, d, ..] => 4 + u64::from(u32::from_be_bytes([*a, *b, *c, *d])),
                    _ => 4,
                };
                return Err(loaves_wire::framing::FrameError::Truncated {
                    expected,
                    received: rest.len() as u64,
                });
            }
        }
    }
    Ok(out)
}

/// Signs the next chunk of a rendition's manifest (`segments`, `last` for
/// the final one) and appends it, framed as `manifest.lvm` stores it, to
/// `frames`; errors name the manifest file.
pub(crate) fn append_manifest_chunk(
    writer: &mut ManifestWriter,
    origin_key: &SigningKeyPair,
    segments: &[SegmentInfo],
    last: bool,
    now: UnixSeconds,
    manifest_path: &Path,
    frames: &mut Vec<u8>,
) -> Result<(), PackageError> {
    let signed = writer
        .append(origin_key, segments, last, now)
        .map_err(|source| PackageError::Manifest {
            path: manifest_path.to_owned(),
            source,
        })?;
    let frame = encode_frame(&signed, MAX_CHUNK_LEN).map_err(|e| PackageError::Input {
        path: manifest_path.to_owned(),
        message: e.to_string(),
    })?;
    frames.extend(frame);
    Ok(())
}
