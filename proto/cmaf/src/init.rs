//! Init segments: reading the one track of a CMAF rendition, and rewriting
//! its sample entry for Common Encryption (`encv`/`enca` + `sinf` with
//! `frma`, `schm`, `schi`/`tenc`) and adding `pssh` boxes to `moov`.

use super::Mp4Error;
use super::boxes::{FourCc, RawBox, find, make_box, make_full_box, parse_boxes};
use super::cenc::{CBCS_VIDEO_PATTERN, Pattern};
use loaves_proto::manifest::Scheme;

/// The W3C "common" PSSH system id (ClearKey key ids, CENC v1 `pssh`).
pub const COMMON_SYSTEM_ID: [u8; 16] = [
    0x10, 0x77, 0xef, 0xec, 0xc0, 0xb2, 0x4d, 0x02, 0xac, 0xe3, 0x3c, 0x1e, 0x52, 0xe2, 0xfb, 0x4b,
];
/// The DASH-IF ClearKey system id.
pub const CLEARKEY_SYSTEM_ID: [u8; 16] = [
    0xe2, 0x71, 0x9d, 0x58, 0xa9, 0x85, 0xb3, 0xc9, 0x78, 0x1a, 0xb0, 0x30, 0xaf, 0x78, 0xd3, 0x0e,
];

/// Bytes of a visual sample entry before its child boxes.
const VISUAL_ENTRY_HEADER: usize = 78;
/// Bytes of an audio sample entry before its child boxes.
const AUDIO_ENTRY_HEADER: usize = 28;

/// The media of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 in AVCC form.
    Avc {
        /// Bytes of each NAL length prefix (1, 2 or 4).
        nal_length_size: usize,
    },
    /// AAC (`mp4a`).
    Aac,
}

/// Defaults from `trex`, used when `tfhd`/`trun` leave fields out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrexDefaults {
    /// `default_sample_duration`.
    pub duration: u32,
    /// `default_sample_size`.
    pub size: u32,
}

/// What the packager knows of a rendition's single track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// `track_ID`.
    pub track_id: u32,
    /// Media timescale (`mdhd`).
    pub timescale: u32,
    /// The codec.
    pub codec: Codec,
    /// Original sample entry type (`avc1`, `avc3`, `mp4a`).
    pub format: FourCc,
    /// Width and height of a video track.
    pub dimensions: Option<(u16, u16)>,
    /// RFC 6381 codec string for playlists (`avc1.4d401f`, `mp4a.40.2`).
    pub codec_string: String,
    /// `trex` defaults.
    pub trex: TrexDefaults,
    /// Whether the sample entry is already `encv`/`enca`.
    pub already_protected: bool,
}

impl TrackInfo {
    /// Whether this is a video track.
    pub fn is_video(&self) -> bool {
        matches!(self.codec, Codec::Avc { .. })
    }
}

/// How an init segment is protected.
#[derive(Debug, Clone)]
pub struct InitProtection {
    /// `cenc` or `cbcs`.
    pub scheme: Scheme,
    /// The default key id written in `tenc`.
    pub default_kid: [u8; 16],
    /// Every key id of the rendition (for the `pssh` boxes).
    pub all_kids: Vec<[u8; 16]>,
}

/// Reads the single track of an init segment.
pub fn inspect_init(bytes: &[u8]) -> Result<TrackInfo, Mp4Error> {
    let top = parse_boxes(bytes, 0)?;
    let moov = find(&top, b"moov").ok_or(Mp4Error::Missing("moov"))?;
    let moov_children = moov.children(0)?;
    let traks: Vec<_> = moov_children
        .iter()
        .filter(|b| b.kind.0 == *b"trak")
        .collect();
    let trak = match traks.as_slice() {
        [one] => *one,
        [] => return Err(Mp4Error::Missing("trak")),
        many => {
            return Err(Mp4Error::Unsupported(format!(
                "{} tracks in one init segment (CMAF has one)",
                many.len()
            )));
        }
    };
    let trak_children = trak.children(0)?;
    let tkhd = find(&trak_children, b"tkhd").ok_or(Mp4Error::Missing("tkhd"))?;
    let mut r = tkhd.reader();
    let (version, _) = r.version_flags()?;
    r.bytes(if version == 1 { 16 } else { 8 })?;
    let track_id = r.u32()?;

    let mdia = find(&trak_children, b"mdia").ok_or(Mp4Error::Missing("mdia"))?;
    let mdia_children = mdia.children(0)?;
    let mdhd = find(&mdia_children, b"mdhd").ok_or(Mp4Error::Missing("mdhd"))?;
    let mut r = mdhd.reader();
    let (version, _) = r.version_flags()?;
    r.bytes(if version == 1 { 16 } else { 8 })?;
    let timescale = r.u32()?;
    if timescale == 0 {
        return Err(mdhd.bad("timescale is 0").into());
    }
    let stsd = stsd_of(&mdia_children)?;
    let entries = stsd.children(8)?;
    let entry = match entries.as_slice() {
        [one] => *one,
        [] => return Err(Mp4Error::Missing("sample entry")),
        _ => {
            return Err(Mp4Error::Unsupported(
                "several sample entries in stsd".into(),
            ));
        }
    };
    let already_protected = matches!(&entry.kind.0, b"encv" | b"enca");
    let header = entry_header_len(entry.kind)?;
    let children = entry.children(header)?;
    let format = if already_protected {
        let sinf = find(&children, b"sinf").ok_or(Mp4Error::Missing("sinf"))?;
        let sinf_children = sinf.children(0)?;
        let frma = find(&sinf_children, b"frma").ok_or(Mp4Error::Missing("frma"))?;
        let b = frma.reader().bytes(4)?;
        FourCc([b[0], b[1], b[2], b[3]])
    } else {
        entry.kind
    };
    let (codec, codec_string, dimensions) = match &format.0 {
        b"avc1" | b"avc3" => {
            let avcc = find(&children, b"avcC").ok_or(Mp4Error::Missing("avcC"))?;
            let b = avcc.reader().bytes(5)?;
            let nal_length_size = usize::from(b[4] & 3) + 1;
            if nal_length_size == 3 {
                return Err(avcc.bad("NAL length size 3 is not allowed").into());
            }
            let mut r = entry.reader();
            r.bytes(24)?;
            let width = r.u16()?;
            let height = r.u16()?;
            (
                Codec::Avc { nal_length_size },
                format!("{}.{:02x}{:02x}{:02x}", format, b[1], b[2], b[3]),
                Some((width, height)),
            )
        }
        b"mp4a" => (Codec::Aac, aac_codec_string(&children), None),
        _ => {
            return Err(Mp4Error::Unsupported(format!(
                "codec {format} (supported: avc1, avc3, mp4a)"
            )));
        }
    };
    let trex = find(&moov_children, b"mvex")
        .map(|mvex| mvex.children(0))
        .transpose()?
        .and_then(|c| {
            c.iter()
                .find(|b| b.kind.0 == *b"trex")
                .map(|trex| -> Result<TrexDefaults, Mp4Error> {
                    let mut r = trex.reader();
                    r.version_flags()?;
                    r.u32()?; // track id
                    r.u32()?; // sample description index
                    let duration = r.u32()?;
                    let size = r.u32()?;
                    Ok(TrexDefaults { duration, size })
                })
        })
        .transpose()?
        .ok_or(Mp4Error::Missing(
            "mvex/trex (not a fragmented MP4 init segment)",
        ))?;
    Ok(TrackInfo {
        track_id,
        timescale,
        codec,
        format,
        dimensions,
        codec_string,
        trex,
        already_protected,
    })
}

/// `mp4a.40.N` from the AudioSpecificConfig in `esds`, `mp4a.40.2` if it
/// cannot be found.
fn aac_codec_string(children: &[RawBox<'_>]) -> String {
    let object_type = find(children, b"esds").and_then(|esds| {
        let body = esds.body().get(4..)?;
        // Find the DecoderSpecificInfo tag (0x05) and read its first 5 bits.
        let mut i = 0;
        while i < body.len() {
            if body[i] == 0x05 {
                let mut j = i + 1;
                while j < body.len() && body[j] & 0x80 != 0 {
                    j += 1;
                }
                return body.get(j + 1).map(|b| b >> 3);
            }
            i += 1;
        }
        None
    });
    format!("mp4a.40.{}", object_type.filter(|&t| t > 0).unwrap_or(2))
}

fn stsd_of<'a>(mdia_children: &[RawBox<'a>]) -> Result<RawBox<'a>, Mp4Error> {
    let minf = find(mdia_children, b"minf").ok_or(Mp4Error::Missing("minf"))?;
    let minf_children = minf.children(0)?;
    let stbl = find(&minf_children, b"stbl").ok_or(Mp4Error::Missing("stbl"))?;
    let stbl_children = stbl.children(0)?;
    find(&stbl_children, b"stsd")
        .copied()
        .ok_or(Mp4Error::Missing("stsd"))
}

pub(super) fn entry_header_len(kind: FourCc) -> Result<usize, Mp4Error> {
    match &kind.0 {
        b"avc1" | b"avc3" | b"encv" | b"hvc1" | b"hev1" => Ok(VISUAL_ENTRY_HEADER),
        b"mp4a" | b"enca" => Ok(AUDIO_ENTRY_HEADER),
        _ => Err(Mp4Error::Unsupported(format!("sample entry {kind}"))),
    }
}

/// The `tenc` pattern of a track under `scheme`: 1:9 for `cbcs` video, none
/// (whole-block full-sample encryption) for `cbcs` audio and for `cenc`.
pub fn pattern_for(scheme: Scheme, track: &TrackInfo) -> Option<Pattern> {
    (scheme == Scheme::Cbcs && track.is_video()).then_some(CBCS_VIDEO_PATTERN)
}

/// Per-sample IV size written in `tenc`/`seig`: 8 for `cenc`, 0 for `cbcs`
/// (constant IV).
pub fn per_sample_iv_size(scheme: Scheme) -> u8 {
    if scheme == Scheme::Cbcs { 0 } else { 8 }
}

/// The body of a `tenc` box (after version and flags) or, identically laid
/// out, of a `seig` sample group entry. Returns (version, bytes). For
/// `cbcs` the constant IV is derived from `iv_kid`, the track's default
/// (first period's) key id: one constant IV per track for every key period,
/// which players that ignore `seig` (ffmpeg) also get right. Reusing an IV
/// under different keys is harmless; `cbcs` reuses it under one key by
/// design.
pub fn track_encryption_fields(
    scheme: Scheme,
    pattern: Option<Pattern>,
    kid: &[u8; 16],
    iv_kid: &[u8; 16],
) -> (u8, Vec<u8>) {
    let mut b = Vec::with_capacity(37);
    b.push(0); // reserved
    match pattern {
        Some(p) => b.push((p.crypt << 4) | (p.skip & 0x0f)),
        None => b.push(0),
    }
    b.push(1); // default_isProtected
    b.push(per_sample_iv_size(scheme));
    b.extend_from_slice(kid);
    if scheme == Scheme::Cbcs {
        b.push(16);
        b.extend_from_slice(&super::cenc::cbcs_constant_iv(iv_kid));
    }
    // Version 1 carries the pattern byte; cbcs requires it.
    let version = u8::from(scheme == Scheme::Cbcs);
    (version, b)
}

/// A version 1 `pssh` box listing `kids` with no data.
pub fn pssh_box(system_id: &[u8; 16], kids: &[[u8; 16]]) -> Vec<u8> {
    let mut body = Vec::with_capacity(24 + 16 * kids.len());
    body.extend_from_slice(system_id);
    body.extend_from_slice(&(kids.len() as u32).to_be_bytes());
    for kid in kids {
        body.extend_from_slice(kid);
    }
    body.extend_from_slice(&0u32.to_be_bytes());
    make_full_box(b"pssh", 1, 0, &body)
}

/// Rewrites a clear init segment for `protection`. Every box not on the
/// path to the sample entry is copied byte for byte.
pub fn protect_init(
    bytes: &[u8],
    track: &TrackInfo,
    protection: &InitProtection,
) -> Result<Vec<u8>, Mp4Error> {
    if track.already_protected {
        return Err(Mp4Error::AlreadyProtected);
    }
    let top = parse_boxes(bytes, 0)?;
    let mut out = Vec::with_capacity(bytes.len() + 512);
    for b in &top {
        if b.kind.0 == *b"moov" {
            let mut body = Vec::with_capacity(b.body().len() + 512);
            for child in b.children(0)? {
                match &child.kind.0 {
                    b"trak" => body.extend(rewrite_path(
                        &child,
                        &[b"mdia", b"minf", b"stbl"],
                        track,
                        protection,
                    )?),
                    b"pssh" => {} // replaced below
                    // The pssh boxes follow.
                    _ => body.extend_from_slice(&child.sized()),
                }
            }
            body.extend(pssh_box(&COMMON_SYSTEM_ID, &protection.all_kids));
            body.extend(pssh_box(&CLEARKEY_SYSTEM_ID, &protection.all_kids));
            out.extend(make_box(b"moov", &body));
        } else {
            out.extend_from_slice(b.bytes);
        }
    }
    Ok(out)
}

/// Copies `container`, descending along `path` to `stsd`.
fn rewrite_path(
    container: &RawBox<'_>,
    path: &[&[u8; 4]],
    track: &TrackInfo,
    protection: &InitProtection,
) -> Result<Vec<u8>, Mp4Error> {
    let mut body = Vec::with_capacity(container.body().len() + 512);
    for child in container.children(0)? {
        match path.first() {
            Some(next) if child.kind.0 == **next => {
                body.extend(rewrite_path(&child, &path[1..], track, protection)?);
            }
            None if child.kind.0 == *b"stsd" => {
                body.extend(rewrite_stsd(&child, track, protection)?)
            }
            _ => body.extend_from_slice(child.bytes),
        }
    }
    Ok(make_box(&container.kind.0, &body))
}

fn rewrite_stsd(
    stsd: &RawBox<'_>,
    track: &TrackInfo,
    protection: &InitProtection,
) -> Result<Vec<u8>, Mp4Error> {
    let head = stsd.reader().bytes(8)?;
    let mut body = head.to_vec();
    for entry in stsd.children(8)? {
        let header_len = entry_header_len(entry.kind)?;
        let (new_kind, children_skip) = match &entry.kind.0 {
            b"avc1" | b"avc3" => (*b"encv", header_len),
            b"mp4a" => (*b"enca", header_len),
            _ => return Err(Mp4Error::Unsupported(format!("codec {}", entry.kind))),
        };
        let mut entry_body = entry.body()[..children_skip].to_vec();
        for child in entry.children(children_skip)? {
            // The sinf box follows.
            entry_body.extend_from_slice(&child.sized());
        }
        entry_body.extend(sinf_box(entry.kind, track, protection));
        body.extend(make_box(&new_kind, &entry_body));
    }
    Ok(make_box(b"stsd", &body))
}

fn sinf_box(original: FourCc, track: &TrackInfo, protection: &InitProtection) -> Vec<u8> {
    let mut sinf = make_box(b"frma", &original.0);
    let mut schm = Vec::with_capacity(8);
    schm.extend_from_slice(protection.scheme.as_str().as_bytes());
    schm.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    sinf.extend(make_full_box(b"schm", 0, 0, &schm));
    let (version, tenc) = track_encryption_fields(
        protection.scheme,
        pattern_for(protection.scheme, track),
        &protection.default_kid,
        &protection.default_kid,
    );
    sinf.extend(make_box(
        b"schi",
        &make_full_box(b"tenc", version, 0, &tenc),
    ));
    make_box(b"sinf", &sinf)
}
