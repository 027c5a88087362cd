//! A live encoder stand-in: publishes the committed sample's clear CMAF
//! segments into a live packager's input directory at the pace they play,
//! looping the sample as long as the stream runs.
//!
//! Looping restamps each repeated segment (`tfdt` base media decode time
//! and `mfhd` sequence number) so that the stream's timeline keeps going
//! forward, as a real encoder's would; the media bytes are otherwise the
//! sample's.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edge_seed::boxes::{RawBox, find, parse_boxes};

/// One rendition of the sample, ready to be published in a loop.
#[derive(Debug, Clone)]
pub struct LoopedRendition {
    /// Rendition (directory) name.
    pub name: String,
    init: Vec<u8>,
    segments: Vec<Vec<u8>>,
    /// Base media decode time of each segment, in the track's timescale.
    decode_times: Vec<u64>,
    /// Length of one pass through the sample, in the track's timescale.
    loop_span: u64,
    /// Duration of each segment, milliseconds (from the decode times).
    pub segment_ms: Vec<u64>,
}

/// Where the `tfdt` and `mfhd` fields of a media segment are.
struct Stamps {
    /// Offset of the `mfhd` sequence number (u32).
    sequence_at: usize,
    /// Offset of the `tfdt` decode time and its width (4 or 8 bytes).
    decode_time_at: usize,
    decode_time_width: usize,
}

fn child<'a>(parent: &RawBox<'a>, kind: &[u8; 4]) -> anyhow::Result<RawBox<'a>> {
    let children = parent.children(0)?;
    find(&children, kind)
        .copied()
        .with_context(|| format!("no {} box", String::from_utf8_lossy(kind)))
}

fn stamps(segment: &[u8]) -> anyhow::Result<Stamps> {
    let boxes = parse_boxes(segment, 0)?;
    let moof = find(&boxes, b"moof").context("no moof box")?;
    let mfhd = child(moof, b"mfhd")?;
    let traf = child(moof, b"traf")?;
    let tfdt = child(&traf, b"tfdt")?;
    let mut reader = tfdt.reader();
    let (version, _) = reader.version_flags()?;
    let width = if version == 1 { 8 } else { 4 };
    let decode_time_at = tfdt.body_offset() as usize + 4;
    if tfdt.body().len() < 4 + width || mfhd.body().len() < 8 {
        bail!("tfdt or mfhd too short");
    }
    Ok(Stamps {
        sequence_at: mfhd.body_offset() as usize + 4,
        decode_time_at,
        decode_time_width: width,
    })
}

fn read_decode_time(segment: &[u8], at: &Stamps) -> u64 {
    let field = &segment[at.decode_time_at..at.decode_time_at + at.decode_time_width];
    field.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn timescale(init: &[u8]) -> anyhow::Result<u64> {
    let boxes = parse_boxes(init, 0)?;
    let moov = find(&boxes, b"moov").context("init: no moov")?;
    let trak = child(moov, b"trak")?;
    let mdia = child(&trak, b"mdia")?;
    let mdhd = child(&mdia, b"mdhd")?;
    let mut reader = mdhd.reader();
    let (version, _) = reader.version_flags()?;
    if version == 1 {
        reader.bytes(16)?;
    } else {
        reader.bytes(8)?;
    }
    let scale = reader.u32()?;
    if scale == 0 {
        bail!("init: timescale 0");
    }
    Ok(u64::from(scale))
}

impl LoopedRendition {
    /// Reads `dir` (an `init.mp4` and `seg_NNNNN.m4s` files).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("rendition directory name")?
            .to_owned();
        let init = std::fs::read(dir.join("init.mp4"))
            .with_context(|| format!("reading {}/init.mp4", dir.display()))?;
        let scale = timescale(&init)?;
        let mut segments = Vec::new();
        for i in 0.. {
            match std::fs::read(dir.join(format!("seg_{i:05}.m4s"))) {
                Ok(bytes) => segments.push(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            }
        }
        if segments.len() < 2 {
            bail!("{}: need at least two segments to loop", dir.display());
        }
        let mut decode_times = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            let at = stamps(segment).with_context(|| format!("{name} segment {i}"))?;
            decode_times.push(read_decode_time(segment, &at));
        }
        if decode_times.windows(2).any(|w| w[1] <= w[0]) {
            bail!("{name}: decode times do not increase");
        }
        // The last segment lasts as long as the one before it: the sample
        // has constant segment durations except possibly a short tail, and
        // a loop whose span is slightly off only shifts the timeline.
        let last_gap = decode_times[decode_times.len() - 1] - decode_times[decode_times.len() - 2];
        let first = decode_times[0];
        let loop_span = decode_times[decode_times.len() - 1] + last_gap - first;
        let mut segment_ms: Vec<u64> = decode_times
            .windows(2)
            .map(|w| (w[1] - w[0]) * 1000 / scale)
            .collect();
        segment_ms.push(last_gap * 1000 / scale);
        Ok(Self {
            name,
            init,
            segments,
            decode_times,
            loop_span,
            segment_ms,
        })
    }

    /// The bytes of live segment `n` (0, 1, 2, ... forever).
    pub fn segment(&self, n: u64) -> anyhow::Result<Vec<u8>> {
        let count = self.segments.len() as u64;
        let index = (n % count) as usize;
        let pass = n / count;
        let mut bytes = self.segments[index].clone();
        let at = stamps(&bytes)?;
        let decode_time = self.decode_times[index] + pass * self.loop_span;
        let field = &mut bytes[at.decode_time_at..at.decode_time_at + at.decode_time_width];
        if at.decode_time_width == 4 {
            let narrow = u32::try_from(decode_time).context("decode time overflows tfdt v0")?;
            field.copy_from_slice(&narrow.to_be_bytes());
        } else {
            field.copy_from_slice(&decode_time.to_be_bytes());
        }
        let sequence = u32::try_from(n + 1).context("sequence number overflow")?;
        bytes[at.sequence_at..at.sequence_at + 4].copy_from_slice(&sequence.to_be_bytes());
        Ok(bytes)
    }

    /// Duration of live segment `n`, milliseconds.
    pub fn duration_ms(&self, n: u64) -> u64 {
        self.segment_ms[(n % self.segment_ms.len() as u64) as usize]
    }

    /// Writes the init segment into `input/NAME/`.
    pub fn publish_init(&self, input: &Path) -> anyhow::Result<()> {
        let dir = input.join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(&dir.join("init.mp4"), &self.init)
    }

    /// Writes live segment `n` into `input/NAME/`.
    pub fn publish(&self, input: &Path, n: u64) -> anyhow::Result<PathBuf> {
        let path = input.join(&self.name).join(format!("seg_{n:05}.m4s"));
        write_atomic(&path, &self.segment(n)?)?;
        Ok(path)
    }
}

/// Writes under a hidden name and renames, so the packager never sees half
/// a segment.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let tmp = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(rendition: &str) -> LoopedRendition {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../edge-seed/testdata/sample")
            .join(rendition);
        LoopedRendition::load(&dir).unwrap()
    }

    #[test]
    fn looping_keeps_the_timeline_increasing() {
        let video = sample("video_720p");
        let count = video.segments.len() as u64;
        let mut last = None;
        for n in 0..count * 3 {
            let bytes = video.segment(n).unwrap();
            let at = stamps(&bytes).unwrap();
            let time = read_decode_time(&bytes, &at);
            if let Some(previous) = last {
                assert!(time > previous, "segment {n}: {time} after {previous}");
            }
            last = Some(time);
            // Only the stamps change; the length and the media stay.
            assert_eq!(bytes.len(), video.segments[(n % count) as usize].len());
        }
        // The first pass is the sample itself (apart from mfhd numbering,
        // which already counts from 1 in the sample).
        assert_eq!(video.segment(0).unwrap(), video.segments[0]);
    }

    #[test]
    fn segment_durations_come_from_the_timeline() {
        let video = sample("video_720p");
        assert!(
            video
                .segment_ms
                .iter()
                .all(|ms| *ms >= 500 && *ms <= 10_000)
        );
    }

    #[test]
    fn a_directory_without_segments_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init.mp4"), b"not mp4").unwrap();
        assert!(LoopedRendition::load(dir.path()).is_err());
    }
}
