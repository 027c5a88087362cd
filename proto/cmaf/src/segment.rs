//! Media segments: reading the samples of each `moof`/`mdat` pair and
//! rewriting them under Common Encryption.
//!
//! For each fragment the packager encrypts the samples in `mdat` (same
//! sizes: CENC never changes a sample's length), then appends to the
//! `traf`, after the existing children: `sbgp` + `sgpd` (`seig`, only when
//! the key differs from the init segment's default key, i.e. after a key
//! rotation), `saiz`, `saio` and `senc`; after a rotation the `moof` also
//! gets `pssh` boxes naming the period's key id. The `moof` grows, so every `trun`
//! `data_offset` moves by that growth, and a leading `sidx` has its
//! `referenced_size` fixed. Every other box is copied byte for byte.

use loaves_proto::keys::ContentKey;
use loaves_proto::manifest::Scheme;

use super::Mp4Error;
use super::boxes::{FourCc, RawBox, make_box, make_full_box, parse_boxes};
use super::cenc::{self, Subsample};
use super::init::{
    CLEARKEY_SYSTEM_ID, COMMON_SYSTEM_ID, Codec, TrackInfo, pattern_for, pssh_box,
    track_encryption_fields,
};

/// `tfhd` flags.
const TFHD_BASE_DATA_OFFSET: u32 = 0x1;
const TFHD_SAMPLE_DESCRIPTION_INDEX: u32 = 0x2;
const TFHD_DEFAULT_DURATION: u32 = 0x8;
const TFHD_DEFAULT_SIZE: u32 = 0x10;
const TFHD_DEFAULT_FLAGS: u32 = 0x20;
/// `trun` flags.
const TRUN_DATA_OFFSET: u32 = 0x1;
const TRUN_FIRST_FLAGS: u32 = 0x4;
const TRUN_DURATION: u32 = 0x100;
const TRUN_SIZE: u32 = 0x200;
const TRUN_FLAGS: u32 = 0x400;
const TRUN_CTO: u32 = 0x800;

/// Samples one media segment may declare, all its `trun`s together. A
/// `trun` without per-sample fields states its sample count in 4 bytes, so
/// without a bound a few bytes would make the reader allocate and loop for
/// billions of samples; a CMAF segment has hundreds (a 10-second fragment
/// at 60 frames per second: 600).
pub const MAX_SAMPLES_PER_SEGMENT: usize = 1 << 20;

/// The key material for one segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentProtection<'a> {
    /// `cenc` or `cbcs`.
    pub scheme: Scheme,
    /// The content key of the segment's key period.
    pub key: &'a ContentKey,
    /// Its key id.
    pub kid: [u8; 16],
    /// The default key id written in the init segment's `tenc`.
    pub default_kid: [u8; 16],
    /// Rendition name (an input of the per-sample IV).
    pub rendition: &'a str,
    /// Segment sequence number (an input of the per-sample IV).
    pub sequence: u64,
}

/// What was read from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Sum of the sample durations, in the track's timescale.
    pub duration: u64,
    /// `baseMediaDecodeTime` of the first fragment.
    pub base_decode_time: u64,
    /// Number of samples.
    pub samples: usize,
}

/// One sample located in the segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    /// Offset of the sample's first byte in the segment.
    pub(super) offset: usize,
    pub(super) size: usize,
}

/// A parsed `trun`.
#[derive(Debug, Clone)]
pub(super) struct Trun<'a> {
    raw: RawBox<'a>,
    data_offset: i32,
    durations: Vec<u32>,
    sizes: Vec<u32>,
}

/// A parsed `traf`.
#[derive(Debug)]
pub(super) struct Traf<'a> {
    raw: RawBox<'a>,
    pub(super) children: Vec<RawBox<'a>>,
    truns: Vec<Trun<'a>>,
    base_decode_time: u64,
}

/// Reads one `traf`; `samples_left` is what remains of the segment's
/// [`MAX_SAMPLES_PER_SEGMENT`], and its `trun`s are taken from it.
pub(super) fn parse_traf<'a>(
    traf: RawBox<'a>,
    track: &TrackInfo,
    allow_protected: bool,
    samples_left: &mut usize,
) -> Result<Traf<'a>, Mp4Error> {
    let children = traf.children(0)?;
    let tfhd = children
        .iter()
        .find(|b| b.kind.0 == *b"tfhd")
        .ok_or(Mp4Error::Missing("tfhd"))?;
    let mut r = tfhd.reader();
    let (_, flags) = r.version_flags()?;
    let track_id = r.u32()?;
    if track_id != track.track_id {
        return Err(Mp4Error::WrongTrack {
            expected: track.track_id,
            found: track_id,
        });
    }
    if flags & TFHD_BASE_DATA_OFFSET != 0 {
        return Err(Mp4Error::Unsupported(
            "tfhd with an explicit base-data-offset (CMAF uses default-base-is-moof)".into(),
        ));
    }
    if flags & TFHD_SAMPLE_DESCRIPTION_INDEX != 0 {
        r.u32()?;
    }
    let default_duration = if flags & TFHD_DEFAULT_DURATION != 0 {
        r.u32()?
    } else {
        track.trex.duration
    };
    let default_size = if flags & TFHD_DEFAULT_SIZE != 0 {
        r.u32()?
    } else {
        track.trex.size
    };
    if flags & TFHD_DEFAULT_FLAGS != 0 {
        r.u32()?;
    }
    let mut base_decode_time = 0;
    let mut truns = Vec::new();
    for child in &children {
        match &child.kind.0 {
            b"senc" | b"saiz" | b"saio" if !allow_protected => {
                return Err(Mp4Error::AlreadyProtected);
            }
            b"tfdt" => {
                let mut r = child.reader();
                let (version, _) = r.version_flags()?;
                base_decode_time = if version == 1 {
                    r.u64()?
                } else {
                    u64::from(r.u32()?)
                };
            }
            b"trun" => truns.push(parse_trun(
                *child,
                default_duration,
                default_size,
                samples_left,
            )?),
            _ => {}
        }
    }
    if truns.is_empty() {
        return Err(Mp4Error::Missing("trun"));
    }
    Ok(Traf {
        raw: traf,
        children,
        truns,
        base_decode_time,
    })
}

fn parse_trun<'a>(
    raw: RawBox<'a>,
    default_duration: u32,
    default_size: u32,
    samples_left: &mut usize,
) -> Result<Trun<'a>, Mp4Error> {
    let mut r = raw.reader();
    let (_, flags) = r.version_flags()?;
    let count = r.u32()? as usize;
    if flags & TRUN_DATA_OFFSET == 0 {
        return Err(Mp4Error::Unsupported("trun without data_offset".into()));
    }
    let data_offset = r.u32()? as i32;
    if flags & TRUN_FIRST_FLAGS != 0 {
        r.u32()?;
    }
    let per_sample = [TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_CTO]
        .iter()
        .filter(|&&f| flags & f != 0)
        .count()
        * 4;
    if count.saturating_mul(per_sample) > r.remaining() {
        return Err(raw
            .bad(format!("{count} samples do not fit the box"))
            .into());
    }
    // Without per-sample fields the box does not bound the count.
    *samples_left = samples_left.checked_sub(count).ok_or_else(|| {
        raw.bad(format!(
            "{count} samples: a segment has at most {MAX_SAMPLES_PER_SEGMENT}"
        ))
    })?;
    let mut durations = Vec::with_capacity(count);
    let mut sizes = Vec::with_capacity(count);
    for _ in 0..count {
        durations.push(if flags & TRUN_DURATION != 0 {
            r.u32()?
        } else {
            default_duration
        });
        sizes.push(if flags & TRUN_SIZE != 0 {
            r.u32()?
        } else {
            default_size
        });
        if flags & TRUN_FLAGS != 0 {
            r.u32()?;
        }
        if flags & TRUN_CTO != 0 {
            r.u32()?;
        }
    }
    Ok(Trun {
        raw,
        data_offset,
        durations,
        sizes,
    })
}

/// Locates the samples of `traf` (of `moof`) inside `mdat`.
pub(super) fn locate_samples(
    moof: &RawBox<'_>,
    mdat: &RawBox<'_>,
    traf: &Traf<'_>,
) -> Result<Vec<Sample>, Mp4Error> {
    let mdat_start = mdat.body_offset();
    let mdat_end = mdat.offset + mdat.bytes.len() as u64;
    let mut samples = Vec::new();
    for trun in &traf.truns {
        let mut pos = i128::from(moof.offset) + i128::from(trun.data_offset);
        for &size in &trun.sizes {
            let end = pos + i128::from(size);
            if pos < i128::from(mdat_start) || end > i128::from(mdat_end) {
                return Err(trun
                    .raw
                    .bad(format!(
                        "sample at byte {pos}..{end} lies outside mdat ({mdat_start}..{mdat_end})"
                    ))
                    .into());
            }
            samples.push(Sample {
                offset: pos as usize,
                size: size as usize,
            });
            pos = end;
        }
    }
    Ok(samples)
}

/// Reads a segment without changing it: durations and sample count (used
/// for every scheme, including passthrough).
pub fn inspect_segment(bytes: &[u8], track: &TrackInfo) -> Result<SegmentSummary, Mp4Error> {
    let top = parse_boxes(bytes, 0)?;
    let mut summary: Option<SegmentSummary> = None;
    let mut samples_left = MAX_SAMPLES_PER_SEGMENT;
    for b in &top {
        if b.kind.0 != *b"moof" {
            continue;
        }
        for child in b.children(0)? {
            if child.kind.0 != *b"traf" {
                continue;
            }
            let traf = parse_traf(child, track, true, &mut samples_left)?;
            let s = summary.get_or_insert(SegmentSummary {
                duration: 0,
                base_decode_time: traf.base_decode_time,
                samples: 0,
            });
            for trun in &traf.truns {
                s.duration += trun.durations.iter().map(|&d| u64::from(d)).sum::<u64>();
                s.samples += trun.sizes.len();
            }
        }
    }
    summary.ok_or(Mp4Error::Missing("moof (not a media segment)"))
}

/// Per-sample auxiliary information of one fragment.
struct AuxInfo {
    /// `senc` entries, each the IV (if any) then the subsamples (if any).
    entries: Vec<Vec<u8>>,
    use_subsamples: bool,
}

fn encrypt_samples(
    data: &mut [u8],
    data_base: usize,
    samples: &[Sample],
    first_index: u32,
    track: &TrackInfo,
    p: &SegmentProtection<'_>,
) -> Result<AuxInfo, Mp4Error> {
    let pattern = pattern_for(p.scheme, track);
    let constant_iv = cenc::cbcs_constant_iv(&p.default_kid);
    let key = cenc::ExpandedKey::new(p.key);
    let iv_base = cenc::cenc_iv_base(&p.kid, p.rendition, p.sequence);
    let mut entries = Vec::with_capacity(samples.len());
    let use_subsamples = track.is_video();
    for (i, s) in samples.iter().enumerate() {
        let start = s.offset - data_base;
        let sample = &mut data[start..start + s.size];
        let subsamples: Option<Vec<Subsample>> = match track.codec {
            Codec::Avc { nal_length_size } => Some(
                cenc::avc_subsamples(sample, nal_length_size, p.scheme == Scheme::Cenc)
                    .map_err(|source| Mp4Error::Sample { index: i, source })?,
            ),
            Codec::Aac => None,
        };
        let mut entry = Vec::new();
        let index = first_index + i as u32;
        match p.scheme {
            Scheme::Cenc => {
                let iv = cenc::cenc_iv(iv_base, index);
                cenc::encrypt_cenc(&key, &iv, sample, subsamples.as_deref());
                entry.extend_from_slice(&iv);
            }
            Scheme::Cbcs => {
                cenc::encrypt_cbcs(&key, &constant_iv, sample, subsamples.as_deref(), pattern);
            }
            Scheme::Passthrough => {}
        }
        if let Some(subs) = &subsamples {
            let count = u16::try_from(subs.len())
                .map_err(|_| Mp4Error::Unsupported(format!("sample {i} has too many NAL units")))?;
            entry.extend_from_slice(&count.to_be_bytes());
            for s in subs {
                entry.extend_from_slice(&s.clear.to_be_bytes());
                entry.extend_from_slice(&s.protected.to_be_bytes());
            }
        }
        entries.push(entry);
    }
    Ok(AuxInfo {
        entries,
        use_subsamples,
    })
}

/// The boxes appended to a `traf`, with the offset of the first `senc`
/// entry relative to the start of the appended bytes' `senc`.
fn encryption_boxes(
    aux: &AuxInfo,
    track: &TrackInfo,
    p: &SegmentProtection<'_>,
    saio_offset: u32,
) -> Result<Vec<u8>, Mp4Error> {
    let count = aux.entries.len() as u32;
    let mut out = Vec::new();
    if p.kid != p.default_kid {
        // Key rotation: map every sample of the fragment to a fragment-local
        // `seig` group naming the period's key id.
        let mut sbgp = Vec::new();
        sbgp.extend_from_slice(b"seig");
        sbgp.extend_from_slice(&1u32.to_be_bytes());
        sbgp.extend_from_slice(&count.to_be_bytes());
        sbgp.extend_from_slice(&0x0001_0001u32.to_be_bytes());
        out.extend(make_full_box(b"sbgp", 0, 0, &sbgp));
        let (_, entry) = track_encryption_fields(
            p.scheme,
            pattern_for(p.scheme, track),
            &p.kid,
            &p.default_kid,
        );
        let mut sgpd = Vec::new();
        sgpd.extend_from_slice(b"seig");
        sgpd.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        sgpd.extend_from_slice(&1u32.to_be_bytes());
        sgpd.extend_from_slice(&entry);
        out.extend(make_full_box(b"sgpd", 1, 0, &sgpd));
    }
    let sizes: Vec<u8> = aux
        .entries
        .iter()
        .map(|e| u8::try_from(e.len()))
        .collect::<Result<_, _>>()
        .map_err(|_| Mp4Error::Unsupported("sample auxiliary information over 255 bytes".into()))?;
    let mut saiz = Vec::new();
    // A default size of 0 means "a table follows", so all-zero sizes
    // (cbcs full-sample audio: no IV, no subsamples) still need the table.
    let uniform = sizes.windows(2).all(|w| w[0] == w[1]) && sizes.first().is_some_and(|&s| s > 0);
    if uniform {
        saiz.push(sizes[0]);
        saiz.extend_from_slice(&count.to_be_bytes());
    } else {
        saiz.push(0);
        saiz.extend_from_slice(&count.to_be_bytes());
        saiz.extend_from_slice(&sizes);
    }
    out.extend(make_full_box(b"saiz", 0, 0, &saiz));
    let mut saio = Vec::new();
    saio.extend_from_slice(&1u32.to_be_bytes());
    saio.extend_from_slice(&saio_offset.to_be_bytes());
    out.extend(make_full_box(b"saio", 0, 0, &saio));
    let mut senc = Vec::new();
    senc.extend_from_slice(&count.to_be_bytes());
    for e in &aux.entries {
        senc.extend_from_slice(e);
    }
    out.extend(make_full_box(
        b"senc",
        0,
        if aux.use_subsamples { 2 } else { 0 },
        &senc,
    ));
    Ok(out)
}

/// Length of the boxes [`encryption_boxes`] appends, and the position of
/// the `senc` box within them.
fn encryption_boxes_layout(
    aux: &AuxInfo,
    track: &TrackInfo,
    p: &SegmentProtection<'_>,
) -> Result<(usize, usize), Mp4Error> {
    let probe = encryption_boxes(aux, track, p, 0)?;
    let senc_len = 16 + aux.entries.iter().map(Vec::len).sum::<usize>();
    Ok((probe.len(), probe.len() - senc_len))
}

/// Protects one media segment. Returns the new bytes and what was read.
pub fn protect_segment(
    bytes: &[u8],
    track: &TrackInfo,
    p: &SegmentProtection<'_>,
) -> Result<(Vec<u8>, SegmentSummary), Mp4Error> {
    if track.already_protected {
        return Err(Mp4Error::AlreadyProtected);
    }
    let top = parse_boxes(bytes, 0)?;
    let mut summary: Option<SegmentSummary> = None;
    // Rewritten (moof, mdat) pairs keyed by the index of the moof in `top`,
    // with the moof's growth.
    let mut rewritten: Vec<RewrittenFragment> = Vec::new();
    let mut sample_index: u32 = 0;
    let mut samples_left = MAX_SAMPLES_PER_SEGMENT;
    for (i, b) in top.iter().enumerate() {
        if b.kind.0 != *b"moof" {
            continue;
        }
        let mdat = top
            .get(i + 1)
            .filter(|m| m.kind.0 == *b"mdat")
            .ok_or(Mp4Error::Missing("mdat right after moof"))?;
        let children = b.children(0)?;
        // The output's mdat, header and media data: the one copy of the
        // media data, encrypted where it lies.
        let mut mdat_box = make_box(b"mdat", mdat.body());
        let mdat_header = mdat_box.len() - mdat.body().len();
        let data_base = mdat.body_offset() as usize;
        // Per traf: parsed traf and its encryption info.
        let mut trafs = Vec::new();
        for child in &children {
            if child.kind.0 != *b"traf" {
                continue;
            }
            let traf = parse_traf(*child, track, false, &mut samples_left)?;
            let samples = locate_samples(b, mdat, &traf)?;
            let aux = encrypt_samples(
                &mut mdat_box[mdat_header..],
                data_base,
                &samples,
                sample_index,
                track,
                p,
            )?;
            sample_index = sample_index.saturating_add(samples.len() as u32);
            let s = summary.get_or_insert(SegmentSummary {
                duration: 0,
                base_decode_time: traf.base_decode_time,
                samples: 0,
            });
            for trun in &traf.truns {
                s.duration += trun.durations.iter().map(|&d| u64::from(d)).sum::<u64>();
            }
            s.samples += samples.len();
            trafs.push((child.offset, traf, aux));
        }
        // First pass with no offset change, to learn the growth; the second
        // writes the final offsets (box lengths do not depend on them).
        let draft = build_moof(b, &children, &trafs, track, p, 0)?;
        let growth = draft.len() as i64 - b.bytes.len() as i64;
        let moof = build_moof(b, &children, &trafs, track, p, growth)?;
        rewritten.push((i, moof, mdat_box, growth));
    }
    let summary = summary.ok_or(Mp4Error::Missing("moof (not a media segment)"))?;

    let out = reassemble(&top, &rewritten, &[], bytes.len() + 4096)?;
    Ok((out, summary))
}

/// A `moof` rewritten, by its index among the segment's top-level boxes,
/// with the `mdat` that follows it and how many bytes the `moof` grew.
pub(super) type RewrittenFragment = (usize, Vec<u8>, Vec<u8>, i64);

/// Lays a segment out again: each rewritten `moof` and its `mdat` in place
/// of the originals, `sidx` patched for the growth of the fragments, and
/// top-level boxes of the `drop` kinds left out.
pub(super) fn reassemble(
    top: &[RawBox<'_>],
    rewritten: &[RewrittenFragment],
    drop: &[&[u8; 4]],
    capacity: usize,
) -> Result<Vec<u8>, Mp4Error> {
    let mut out = Vec::with_capacity(capacity);
    let growths: Vec<i64> = rewritten.iter().map(|r| r.3).collect();
    let mut skip_next = false;
    for (i, b) in top.iter().enumerate() {
        if skip_next {
            skip_next = false;
            continue;
        }
        if let Some((_, moof, mdat, _)) = rewritten.iter().find(|r| r.0 == i) {
            out.extend_from_slice(moof);
            out.extend_from_slice(mdat);
            skip_next = true;
        } else if b.kind.0 == *b"sidx" {
            out.extend(patch_sidx(b, &growths)?);
        } else if !drop.contains(&&b.kind.0) {
            out.extend_from_slice(b.bytes);
        }
    }
    Ok(out)
}

fn build_moof(
    moof: &RawBox<'_>,
    children: &[RawBox<'_>],
    trafs: &[(u64, Traf<'_>, AuxInfo)],
    track: &TrackInfo,
    p: &SegmentProtection<'_>,
    growth: i64,
) -> Result<Vec<u8>, Mp4Error> {
    let mut body = Vec::with_capacity(moof.bytes.len() + 4096);
    for child in children {
        let Some((_, traf, aux)) = trafs.iter().find(|t| t.0 == child.offset) else {
            // pssh boxes may follow.
            body.extend_from_slice(&child.sized());
            continue;
        };
        let mut traf_body = Vec::with_capacity(traf.raw.bytes.len() + 2048);
        for c in &traf.children {
            if c.kind.0 == *b"trun" {
                traf_body.extend(patch_trun(c, growth)?);
            } else {
                // The encryption boxes follow.
                traf_body.extend_from_slice(&c.sized());
            }
        }
        let (_, senc_pos) = encryption_boxes_layout(aux, track, p)?;
        // moof header + earlier moof children + traf header + traf children
        // so far + boxes before senc + senc header, version/flags and count.
        let saio_offset = 8 + body.len() + 8 + traf_body.len() + senc_pos + 16;
        let saio_offset = u32::try_from(saio_offset)
            .map_err(|_| Mp4Error::Unsupported("moof over 4 GiB".into()))?;
        traf_body.extend(encryption_boxes(aux, track, p, saio_offset)?);
        body.extend(make_box(b"traf", &traf_body));
    }
    if p.kid != p.default_kid {
        // After a key rotation, announce the period's key id in band too,
        // so a CDM learns it from the fragment (after the trafs: the saio
        // offsets above stay valid).
        body.extend(pssh_box(&COMMON_SYSTEM_ID, &[p.kid]));
        body.extend(pssh_box(&CLEARKEY_SYSTEM_ID, &[p.kid]));
    }
    Ok(make_box(b"moof", &body))
}

pub(super) fn patch_trun(trun: &RawBox<'_>, growth: i64) -> Result<Vec<u8>, Mp4Error> {
    // Sized: boxes may follow it in the rewritten traf.
    let mut bytes = trun.sized().into_owned();
    let header_len = if bytes[..4] == 1u32.to_be_bytes() {
        16
    } else {
        8
    };
    let at = header_len + 8;
    let old = i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let new = i32::try_from(i64::from(old) + growth)
        .map_err(|_| trun.bad("data_offset overflows after rewriting"))?;
    bytes[at..at + 4].copy_from_slice(&new.to_be_bytes());
    Ok(bytes)
}

/// Fixes `referenced_size` of a `sidx` whose references each cover one
/// fragment (or one reference covering them all).
pub(super) fn patch_sidx(sidx: &RawBox<'_>, growths: &[i64]) -> Result<Vec<u8>, Mp4Error> {
    let mut r = sidx.reader();
    let (version, _) = r.version_flags()?;
    r.bytes(if version == 0 { 16 } else { 24 })?;
    r.u16()?;
    let count = usize::from(r.u16()?);
    let refs_at = sidx.header_len + r.position();
    if refs_at + count * 12 > sidx.bytes.len() {
        return Err(sidx.bad("references do not fit").into());
    }
    let per_ref: Vec<i64> = if count == growths.len() {
        growths.to_vec()
    } else if count == 1 {
        vec![growths.iter().sum()]
    } else {
        return Err(Mp4Error::Unsupported(format!(
            "sidx with {count} references for {} fragments",
            growths.len()
        )));
    };
    let mut bytes = sidx.bytes.to_vec();
    for (k, growth) in per_ref.iter().enumerate() {
        let at = refs_at + k * 12;
        let word = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if word & 0x8000_0000 != 0 {
            return Err(Mp4Error::Unsupported("hierarchical sidx".into()));
        }
        let size = i64::from(word & 0x7fff_ffff) + growth;
        let size = u32::try_from(size)
            .ok()
            .filter(|s| *s <= 0x7fff_ffff)
            .ok_or_else(|| sidx.bad("referenced_size overflows after rewriting"))?;
        bytes[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }
    Ok(bytes)
}

/// The type of every top-level box, for messages and tests.
pub fn top_level_kinds(bytes: &[u8]) -> Result<Vec<FourCc>, Mp4Error> {
    Ok(parse_boxes(bytes, 0)?.iter().map(|b| b.kind).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::TrexDefaults;

    fn audio_track() -> TrackInfo {
        TrackInfo {
            track_id: 1,
            timescale: 48_000,
            codec: Codec::Aac,
            format: FourCc(*b"mp4a"),
            dimensions: None,
            codec_string: "mp4a.40.2".into(),
            trex: TrexDefaults {
                duration: 1024,
                size: 0,
            },
            already_protected: false,
        }
    }

    /// A fragment whose `trun`s have no per-sample fields (every sample
    /// takes the defaults, 0 bytes here) and claim `counts` samples.
    fn fragment(counts: &[u32]) -> Vec<u8> {
        let mut traf = make_full_box(b"tfhd", 0, 0x02_0000, &1u32.to_be_bytes());
        for &count in counts {
            let mut trun = count.to_be_bytes().to_vec();
            trun.extend_from_slice(&0u32.to_be_bytes()); // data_offset
            traf.extend(make_full_box(b"trun", 0, TRUN_DATA_OFFSET, &trun));
        }
        let mut moof = make_full_box(b"mfhd", 0, 0, &1u32.to_be_bytes());
        moof.extend(make_box(b"traf", &traf));
        let mut segment = make_box(b"moof", &moof);
        segment.extend(make_box(b"mdat", b""));
        segment
    }

    #[test]
    fn a_sample_count_without_sample_fields_is_bounded() {
        // Found by the cmaf_read fuzz target: 20 bytes of `trun` claimed
        // 2^27 samples, and reading it took seconds and a gigabyte.
        let track = audio_track();
        let ok = fragment(&[3, 4]);
        assert_eq!(inspect_segment(&ok, &track).unwrap().samples, 7);
        let max = MAX_SAMPLES_PER_SEGMENT as u32;
        for counts in [&[u32::MAX][..], &[max + 1], &[max / 2, max / 2 + 1]] {
            let segment = fragment(counts);
            let err = inspect_segment(&segment, &track).unwrap_err();
            assert!(err.to_string().contains("a segment has at most"), "{err}");
            let key = ContentKey::new([1; 16]);
            let p = SegmentProtection {
                scheme: Scheme::Cenc,
                key: &key,
                kid: [2; 16],
                default_kid: [2; 16],
                rendition: "audio",
                sequence: 0,
            };
            assert!(protect_segment(&segment, &track, &p).is_err());
        }
        assert!(inspect_segment(&fragment(&[max]), &track).is_ok());
    }
}
