//! The way back from Common Encryption: a protected init segment to a
//! clear one, protected media segments to clear ones, for a player that
//! has no DRM module (the client SDK's `decrypt` option).
//!
//! Init: the `encv`/`enca` sample entry gets its original type back (from
//! `frma`) and loses its `sinf`; `pssh` boxes leave `moov`. Media: each
//! sample is decrypted in place (`cenc`: AES-128-CTR with the `senc` IV,
//! subsamples from `senc`; `cbcs`: AES-128-CBC with the constant IV of
//! `tenc` or the fragment's `seig` entry, the `tenc` pattern), then `senc`,
//! `saiz`, `saio` and the `seig` sample groups leave each `traf` and `pssh`
//! leaves the `moof`. The `moof` shrinks, so every `trun` `data_offset`
//! moves by that amount and a leading `sidx` is fixed, exactly as the
//! packager does the other way: the output is plain CMAF, byte for byte the
//! packager's input for the packager's output. Sample sizes never change.

use super::Mp4Error;
use super::boxes::{FourCc, RawBox, find, make_box, parse_boxes};
use super::cenc::{self, Pattern, Subsample};
use super::init::{TrackInfo, entry_header_len, inspect_init};
use super::segment::{
    MAX_SAMPLES_PER_SEGMENT, RewrittenFragment, Traf, locate_samples, parse_traf, patch_trun,
    reassemble,
};
use loaves_proto::keys::ContentKey;
use loaves_proto::manifest::Scheme;

/// `senc` flag: per-sample subsample tables follow each IV.
const SENC_USE_SUBSAMPLES: u32 = 0x2;
/// `sbgp` group description indexes above this are fragment-local.
const FRAGMENT_LOCAL_GROUP: u32 = 0x1_0000;

/// Why a segment could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The boxes are malformed or use something unsupported.
    #[error(transparent)]
    Mp4(#[from] Mp4Error),
    /// The caller has no content key for this key id.
    #[error("no content key for key id {}", hex::encode(.0))]
    NoKey([u8; 16]),
}

/// What one track's samples are protected with (a `tenc` box or a `seig`
/// sample group entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encryption {
    /// `default_isProtected`: false leaves the samples clear.
    pub protected: bool,
    /// Per-sample IV size in `senc` (0: the constant IV applies).
    pub iv_size: u8,
    /// The key id.
    pub kid: [u8; 16],
    /// The constant IV (`cbcs`), when `iv_size` is 0.
    pub constant_iv: Option<[u8; 16]>,
    /// The `cbcs` pattern (none: every whole block).
    pub pattern: Option<Pattern>,
}

impl Encryption {
    /// Reads the body of a `tenc` box (after version and flags) or of a
    /// `seig` entry (same layout).
    fn read(body: &[u8], at: &RawBox<'_>) -> Result<Self, Mp4Error> {
        let field = |what: &str| at.bad(format!("encryption entry: {what}"));
        if body.len() < 20 {
            return Err(field("shorter than 20 bytes").into());
        }
        let (crypt, skip) = (body[1] >> 4, body[1] & 0x0f);
        let protected = body[2] != 0;
        let iv_size = body[3];
        if !matches!(iv_size, 0 | 8 | 16) {
            return Err(field(&format!("IV size {iv_size}")).into());
        }
        let mut kid = [0u8; 16];
        kid.copy_from_slice(&body[4..20]);
        let constant_iv = if protected && iv_size == 0 {
            let size = usize::from(*body.get(20).ok_or_else(|| field("no constant IV"))?);
            let iv = body
                .get(21..21 + size)
                .ok_or_else(|| field("constant IV cut short"))?;
            // An 8-byte constant IV is the high half of a 16-byte one.
            let mut full = [0u8; 16];
            match size {
                8 | 16 => full[..size].copy_from_slice(iv),
                n => return Err(field(&format!("constant IV of {n} bytes")).into()),
            }
            Some(full)
        } else {
            None
        };
        Ok(Self {
            protected,
            iv_size,
            kid,
            constant_iv,
            pattern: (crypt > 0).then_some(Pattern { crypt, skip }),
        })
    }
}

/// How a track is protected, as its init segment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackProtection {
    /// `cenc` or `cbcs` (from `schm`).
    pub scheme: Scheme,
    /// The `tenc` defaults.
    pub default: Encryption,
}

/// An init segment made clear, with what decrypting its segments needs.
#[derive(Debug, Clone)]
pub struct ClearInit {
    /// The clear init segment.
    pub bytes: Vec<u8>,
    /// Its track (original sample entry type).
    pub track: TrackInfo,
    /// How the track's segments are protected; `None` when the init
    /// segment was clear already (segments pass through unchanged).
    pub protection: Option<TrackProtection>,
}

/// Makes a protected init segment clear. A clear one is returned as is,
/// with `protection: None`.
pub fn decrypt_init(bytes: &[u8]) -> Result<ClearInit, Mp4Error> {
    let top = parse_boxes(bytes, 0)?;
    let mut protection = None;
    let mut out = Vec::with_capacity(bytes.len());
    for b in &top {
        if b.kind.0 == *b"moov" {
            let mut body = Vec::with_capacity(b.body().len());
            for child in b.children(0)? {
                match &child.kind.0 {
                    b"trak" => body.extend(clear_path(
                        &child,
                        &[b"mdia", b"minf", b"stbl"],
                        &mut protection,
                    )?),
                    b"pssh" => {} // DRM system data: meaningless in the clear
                    _ => body.extend_from_slice(child.bytes),
                }
            }
            out.extend(make_box(b"moov", &body));
        } else {
            out.extend_from_slice(b.bytes);
        }
    }
    let track = inspect_init(&out)?;
    Ok(ClearInit {
        bytes: out,
        track,
        protection,
    })
}

/// Copies `container`, descending along `path` to `stsd`, whose protected
/// sample entries are made clear.
fn clear_path(
    container: &RawBox<'_>,
    path: &[&[u8; 4]],
    protection: &mut Option<TrackProtection>,
) -> Result<Vec<u8>, Mp4Error> {
    let mut body = Vec::with_capacity(container.body().len());
    for child in container.children(0)? {
        match path.first() {
            Some(next) if child.kind.0 == **next => {
                body.extend(clear_path(&child, &path[1..], protection)?);
            }
            None if child.kind.0 == *b"stsd" => body.extend(clear_stsd(&child, protection)?),
            _ => body.extend_from_slice(child.bytes),
        }
    }
    Ok(make_box(&container.kind.0, &body))
}

fn clear_stsd(
    stsd: &RawBox<'_>,
    protection: &mut Option<TrackProtection>,
) -> Result<Vec<u8>, Mp4Error> {
    let mut body = stsd.reader().bytes(8)?.to_vec();
    for entry in stsd.children(8)? {
        if !matches!(&entry.kind.0, b"encv" | b"enca") {
            body.extend_from_slice(entry.bytes);
            continue;
        }
        let header_len = entry_header_len(entry.kind)?;
        let children = entry.children(header_len)?;
        let sinf = find(&children, b"sinf").ok_or(Mp4Error::Missing("sinf"))?;
        let (format, track_protection) = read_sinf(sinf)?;
        if protection
            .as_ref()
            .is_some_and(|known| *known != track_protection)
        {
            return Err(Mp4Error::Unsupported(
                "sample entries protected differently".into(),
            ));
        }
        *protection = Some(track_protection);
        let mut entry_body = entry.body()[..header_len].to_vec();
        for child in &children {
            if child.kind.0 != *b"sinf" {
                entry_body.extend_from_slice(child.bytes);
            }
        }
        body.extend(make_box(&format.0, &entry_body));
    }
    Ok(make_box(b"stsd", &body))
}

fn read_sinf(sinf: &RawBox<'_>) -> Result<(FourCc, TrackProtection), Mp4Error> {
    let children = sinf.children(0)?;
    let frma = find(&children, b"frma").ok_or(Mp4Error::Missing("frma"))?;
    let b = frma.reader().bytes(4)?;
    let format = FourCc([b[0], b[1], b[2], b[3]]);
    let schm = find(&children, b"schm").ok_or(Mp4Error::Missing("schm"))?;
    let mut r = schm.reader();
    r.version_flags()?;
    let scheme = match r.bytes(4)? {
        b"cenc" => Scheme::Cenc,
        b"cbcs" => Scheme::Cbcs,
        other => {
            return Err(Mp4Error::Unsupported(format!(
                "protection scheme {} (cenc and cbcs are)",
                FourCc([other[0], other[1], other[2], other[3]])
            )));
        }
    };
    let schi = find(&children, b"schi").ok_or(Mp4Error::Missing("schi"))?;
    let schi_children = schi.children(0)?;
    let tenc = find(&schi_children, b"tenc").ok_or(Mp4Error::Missing("tenc"))?;
    let mut r = tenc.reader();
    r.version_flags()?;
    let default = Encryption::read(r.bytes(r.remaining())?, tenc)?;
    Ok((format, TrackProtection { scheme, default }))
}

/// Decrypts one media segment protected as `init` says, with the content
/// key `key_for` returns for a key id. A segment of a clear track is
/// returned unchanged.
pub fn decrypt_segment(
    bytes: &[u8],
    init: &ClearInit,
    key_for: impl Fn(&[u8; 16]) -> Option<ContentKey>,
) -> Result<Vec<u8>, DecryptError> {
    let Some(protection) = &init.protection else {
        return Ok(bytes.to_vec());
    };
    let top = parse_boxes(bytes, 0).map_err(Mp4Error::from)?;
    // Rewritten (moof, mdat) pairs by the index of the moof in `top`, with
    // the moof's growth (negative: boxes only leave it).
    let mut rewritten: Vec<RewrittenFragment> = Vec::new();
    let mut samples_left = MAX_SAMPLES_PER_SEGMENT;
    for (i, b) in top.iter().enumerate() {
        if b.kind.0 != *b"moof" {
            continue;
        }
        let mdat = top
            .get(i + 1)
            .filter(|m| m.kind.0 == *b"mdat")
            .ok_or(Mp4Error::Missing("mdat right after moof"))?;
        let mut data = mdat.bytes.to_vec();
        let children = b.children(0).map_err(Mp4Error::from)?;
        for child in children.iter().filter(|c| c.kind.0 == *b"traf") {
            let traf = parse_traf(*child, &init.track, true, &mut samples_left)?;
            decrypt_traf(b, mdat, &traf, &mut data, protection, &key_for)?;
        }
        let draft = clear_moof(b, &children, 0)?;
        let growth = draft.len() as i64 - b.bytes.len() as i64;
        let moof = clear_moof(b, &children, growth)?;
        rewritten.push((i, moof, data, growth));
    }
    if rewritten.is_empty() {
        return Err(Mp4Error::Missing("moof (not a media segment)").into());
    }
    // A clear segment carries no DRM system data.
    Ok(reassemble(&top, &rewritten, &[b"pssh"], bytes.len())?)
}

/// Decrypts the samples of one `traf` inside `mdat_bytes` (the whole
/// `mdat` box, header included, at the offset `mdat` has in the segment).
fn decrypt_traf(
    moof: &RawBox<'_>,
    mdat: &RawBox<'_>,
    traf: &Traf<'_>,
    mdat_bytes: &mut [u8],
    protection: &TrackProtection,
    key_for: &impl Fn(&[u8; 16]) -> Option<ContentKey>,
) -> Result<(), DecryptError> {
    let samples = locate_samples(moof, mdat, traf)?;
    let per_sample = sample_encryption(&traf.children, &protection.default, samples.len())?;
    let Some(senc) = find(&traf.children, b"senc") else {
        if per_sample.iter().any(|e| e.protected) {
            return Err(Mp4Error::Missing("senc").into());
        }
        return Ok(());
    };
    let entries = read_senc(senc, &per_sample)?;
    let mut key: Option<([u8; 16], cenc::ExpandedKey)> = None;
    for (index, ((sample, encryption), (iv, subsamples))) in
        samples.iter().zip(&per_sample).zip(entries).enumerate()
    {
        if !encryption.protected {
            continue;
        }
        if key.as_ref().is_none_or(|(kid, _)| *kid != encryption.kid) {
            let found = key_for(&encryption.kid).ok_or(DecryptError::NoKey(encryption.kid))?;
            key = Some((encryption.kid, cenc::ExpandedKey::new(&found)));
        }
        let Some((_, content_key)) = &key else {
            continue;
        };
        let start = sample.offset - mdat.offset as usize;
        let bytes = &mut mdat_bytes[start..start + sample.size];
        let subsamples = subsamples.as_deref();
        match protection.scheme {
            Scheme::Cenc => cenc::decrypt_cenc(content_key, &iv, bytes, subsamples)
                .map_err(|source| Mp4Error::Sample { index, source })?,
            Scheme::Cbcs => {
                let iv: [u8; 16] = match (iv.len(), encryption.constant_iv) {
                    (16, _) => iv
                        .as_slice()
                        .try_into()
                        .map_err(|_| Mp4Error::Unsupported("cbcs IV".into()))?,
                    (0, Some(constant)) => constant,
                    (n, _) => {
                        return Err(Mp4Error::Unsupported(format!("cbcs IV of {n} bytes")).into());
                    }
                };
                cenc::decrypt_cbcs(content_key, &iv, bytes, subsamples, encryption.pattern);
            }
            Scheme::Passthrough => {
                return Err(
                    Mp4Error::Unsupported("passthrough is not a CENC scheme".into()).into(),
                );
            }
        }
    }
    Ok(())
}

/// The encryption of each of `count` samples: the `tenc` defaults, or the
/// fragment-local `seig` group an `sbgp` maps a sample to.
fn sample_encryption(
    children: &[RawBox<'_>],
    default: &Encryption,
    count: usize,
) -> Result<Vec<Encryption>, Mp4Error> {
    let sgpd = children.iter().find(|c| is_seig_group(c, b"sgpd"));
    let sbgp = children.iter().find(|c| is_seig_group(c, b"sbgp"));
    let (Some(sgpd), Some(sbgp)) = (sgpd, sbgp) else {
        return Ok(vec![*default; count]);
    };
    // sgpd: version, grouping type, default length (v1), [default sample
    // description index (v2+)], entry count, entries.
    let mut r = sgpd.reader();
    let (version, _) = r.version_flags()?;
    r.u32()?;
    let default_length = if version >= 1 { r.u32()? } else { 0 };
    if version >= 2 {
        r.u32()?;
    }
    let entry_count = r.u32()?;
    let mut groups = Vec::new();
    for _ in 0..entry_count {
        let length = if version >= 1 && default_length == 0 {
            r.u32()?
        } else {
            default_length
        };
        if length == 0 {
            return Err(sgpd.bad("seig entry without a length").into());
        }
        groups.push(Encryption::read(r.bytes(length as usize)?, sgpd)?);
    }
    // sbgp: version, grouping type, [parameter (v1)], entry count, then
    // (sample count, group description index) runs.
    let mut r = sbgp.reader();
    let (version, _) = r.version_flags()?;
    r.u32()?;
    if version == 1 {
        r.u32()?;
    }
    let runs = r.u32()?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..runs {
        let samples = r.u32()? as usize;
        let index = r.u32()?;
        let encryption =
            match index {
                0 => *default,
                i if i > FRAGMENT_LOCAL_GROUP => *groups
                    .get((i - FRAGMENT_LOCAL_GROUP - 1) as usize)
                    .ok_or_else(|| sbgp.bad(format!("group {i} is not described")))?,
                i => {
                    return Err(Mp4Error::Unsupported(format!(
                        "seig group {i} described in the init segment"
                    )));
                }
            };
        if out.len() + samples > count {
            return Err(sbgp.bad("maps more samples than the fragment has").into());
        }
        out.extend(std::iter::repeat_n(encryption, samples));
    }
    // Samples past the runs belong to no group: the defaults apply.
    out.resize(count, *default);
    Ok(out)
}

fn is_seig_group(b: &RawBox<'_>, kind: &[u8; 4]) -> bool {
    b.kind.0 == *kind && b.body().get(4..8) == Some(b"seig")
}

/// The `senc` entries: each sample's IV (possibly empty) and subsamples.
#[allow(clippy::type_complexity)]
fn read_senc(
    senc: &RawBox<'_>,
    per_sample: &[Encryption],
) -> Result<Vec<(Vec<u8>, Option<Vec<Subsample>>)>, Mp4Error> {
    let mut r = senc.reader();
    let (_, flags) = r.version_flags()?;
    let count = r.u32()? as usize;
    if count != per_sample.len() {
        return Err(senc
            .bad(format!("{count} entries for {} samples", per_sample.len()))
            .into());
    }
    let mut out = Vec::with_capacity(count);
    for encryption in per_sample {
        let iv_size = if encryption.protected {
            usize::from(encryption.iv_size)
        } else {
            0
        };
        let iv = r.bytes(iv_size)?.to_vec();
        let subsamples = if flags & SENC_USE_SUBSAMPLES != 0 {
            let n = r.u16()?;
            let mut subs = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let clear = r.u16()?;
                let protected = r.u32()?;
                subs.push(Subsample { clear, protected });
            }
            Some(subs)
        } else {
            None
        };
        out.push((iv, subsamples));
    }
    Ok(out)
}

/// The `moof` without encryption boxes, its `trun` offsets moved by
/// `growth`.
fn clear_moof(
    moof: &RawBox<'_>,
    children: &[RawBox<'_>],
    growth: i64,
) -> Result<Vec<u8>, Mp4Error> {
    let mut body = Vec::with_capacity(moof.body().len());
    for child in children {
        match &child.kind.0 {
            b"pssh" => {}
            b"traf" => {
                let mut traf = Vec::with_capacity(child.body().len());
                for c in child.children(0)? {
                    match &c.kind.0 {
                        b"senc" | b"saiz" | b"saio" => {}
                        b"sbgp" | b"sgpd" if is_seig_group(&c, &c.kind.0) => {}
                        b"trun" => traf.extend(patch_trun(&c, growth)?),
                        _ => traf.extend_from_slice(c.bytes),
                    }
                }
                body.extend(make_box(b"traf", &traf));
            }
            _ => body.extend_from_slice(child.bytes),
        }
    }
    Ok(make_box(b"moof", &body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::boxes::make_full_box;
    use super::super::init::{InitProtection, inspect_init, protect_init};
    use super::super::segment::{SegmentProtection, protect_segment};
    use super::*;
    use std::path::PathBuf;

    fn sample(rendition: &str, file: &str) -> Vec<u8> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../edge-seed/testdata/sample");
        std::fs::read(dir.join(rendition).join(file)).unwrap()
    }

    /// The packager's output for `segments` of a rendition, decrypted,
    /// equals its clear input byte for byte; `rotate` protects the second
    /// segment under another key (a `seig` group in its fragment).
    fn round_trip(scheme: Scheme, rendition: &str, rotate: bool) {
        let clear_init = sample(rendition, "init.mp4");
        let track = inspect_init(&clear_init).unwrap();
        let (kid0, kid1) = ([1u8; 16], [2u8; 16]);
        let keys = [
            (kid0, ContentKey::new([7; 16])),
            (kid1, ContentKey::new([9; 16])),
        ];
        let protected_init = protect_init(
            &clear_init,
            &track,
            &InitProtection {
                scheme,
                default_kid: kid0,
                all_kids: vec![kid0, kid1],
            },
        )
        .unwrap();
        let clear = decrypt_init(&protected_init).unwrap();
        assert_eq!(clear.bytes, clear_init, "init");
        assert_eq!(clear.protection.as_ref().unwrap().scheme, scheme);
        let key_for = |kid: &[u8; 16]| keys.iter().find(|(k, _)| k == kid).map(|(_, v)| v.clone());
        for sequence in 0..3u64 {
            let file = format!("seg_{sequence:05}.m4s");
            let input = sample(rendition, &file);
            let (kid, key) = if rotate && sequence == 1 {
                (kid1, &keys[1].1)
            } else {
                (kid0, &keys[0].1)
            };
            let (protected, _) = protect_segment(
                &input,
                &track,
                &SegmentProtection {
                    scheme,
                    key,
                    kid,
                    default_kid: kid0,
                    rendition,
                    sequence,
                },
            )
            .unwrap();
            assert_ne!(protected, input);
            let out = decrypt_segment(&protected, &clear, key_for).unwrap();
            assert_eq!(out, input, "{rendition} {file}");
            // Without the key: an error naming it, never the ciphertext.
            let missing = decrypt_segment(&protected, &clear, |_| None);
            assert_eq!(missing, Err(DecryptError::NoKey(kid)));
        }
    }

    #[test]
    fn cenc_round_trips_video_and_audio() {
        round_trip(Scheme::Cenc, "video_360p", false);
        round_trip(Scheme::Cenc, "audio", false);
    }

    #[test]
    fn cbcs_round_trips_video_and_audio() {
        round_trip(Scheme::Cbcs, "video_360p", false);
        round_trip(Scheme::Cbcs, "audio", false);
    }

    #[test]
    fn rotated_keys_come_from_the_fragment_seig_group() {
        round_trip(Scheme::Cenc, "video_360p", true);
        round_trip(Scheme::Cbcs, "video_360p", true);
    }

    /// `bytes` with the size field of the first `kind` box set to 0 ("to
    /// the end of the parent"), which is where that box already ends.
    fn to_the_end(mut bytes: Vec<u8>, kind: &[u8; 4]) -> Vec<u8> {
        let at = bytes.windows(4).position(|w| w == kind).unwrap() - 4;
        bytes[at..at + 4].copy_from_slice(&[0; 4]);
        bytes
    }

    #[test]
    fn boxes_sized_to_the_end_of_their_parent_keep_what_follows() {
        // Found by the cmaf_read fuzz target: the last box of a sample
        // entry (there an avcC) whose size field is 0 swallowed the sinf
        // protect_init appends after it, so the protected init segment no
        // longer read back (Missing("sinf")). The last child of moov (pssh
        // boxes follow) and of traf (the encryption boxes follow) had the
        // same problem. Here: btrt ends avc1, udta ends moov, trun ends
        // traf.
        let clear_init = sample("video_360p", "init.mp4");
        let zeroed_init = to_the_end(to_the_end(clear_init.clone(), b"btrt"), b"udta");
        let track = inspect_init(&zeroed_init).unwrap();
        assert_eq!(track, inspect_init(&clear_init).unwrap());
        let clear_segment = sample("video_360p", "seg_00000.m4s");
        let zeroed_segment = to_the_end(clear_segment.clone(), b"trun");
        let key = ContentKey::new([7; 16]);
        for scheme in [Scheme::Cenc, Scheme::Cbcs] {
            let protected_init = protect_init(
                &zeroed_init,
                &track,
                &InitProtection {
                    scheme,
                    default_kid: [1; 16],
                    all_kids: vec![[1; 16], [2; 16]],
                },
            )
            .unwrap();
            let moov = parse_boxes(&protected_init, 0).unwrap()[1]
                .children(0)
                .unwrap();
            assert_eq!(moov.iter().filter(|b| b.kind.0 == *b"pssh").count(), 2);
            let clear = decrypt_init(&protected_init).unwrap();
            // The sizes are written out: the original bytes.
            assert_eq!(clear.bytes, clear_init);
            for kid in [[1; 16], [2; 16]] {
                let (protected, _) = protect_segment(
                    &zeroed_segment,
                    &track,
                    &SegmentProtection {
                        scheme,
                        key: &key,
                        kid,
                        default_kid: [1; 16],
                        rendition: "video_360p",
                        sequence: 0,
                    },
                )
                .unwrap();
                let out = decrypt_segment(&protected, &clear, |_| Some(key.clone())).unwrap();
                assert!(out == clear_segment, "{scheme:?} {kid:?}");
            }
        }
    }

    #[test]
    fn clear_input_passes_through_and_garbage_is_an_error() {
        let clear_init = sample("audio", "init.mp4");
        let clear = decrypt_init(&clear_init).unwrap();
        assert!(clear.protection.is_none());
        assert_eq!(clear.bytes, clear_init);
        let segment = sample("audio", "seg_00000.m4s");
        assert_eq!(
            decrypt_segment(&segment, &clear, |_| None).unwrap(),
            segment
        );
        assert!(decrypt_init(&[0, 0, 0, 9, b'm', b'o', b'o', b'v']).is_err());
        let protected_init = protect_init(
            &clear_init,
            &clear.track,
            &InitProtection {
                scheme: Scheme::Cenc,
                default_kid: [1; 16],
                all_kids: vec![[1; 16]],
            },
        )
        .unwrap();
        let protected = decrypt_init(&protected_init).unwrap();
        // A trun claiming 2^32 - 1 samples of the default size (no
        // per-sample fields) is refused before anything is allocated.
        let mut trun = u32::MAX.to_be_bytes().to_vec();
        trun.extend_from_slice(&0u32.to_be_bytes());
        let mut traf = make_full_box(b"tfhd", 0, 0x02_0000, &1u32.to_be_bytes());
        traf.extend(make_full_box(b"trun", 0, 1, &trun));
        let mut huge = make_box(b"moof", &make_box(b"traf", &traf));
        huge.extend(make_box(b"mdat", b""));
        let err = decrypt_segment(&huge, &protected, |_| None).unwrap_err();
        assert!(err.to_string().contains("a segment has at most"), "{err}");
        // Every truncation of a segment is an error, never a panic.
        for cut in [1, 8, 100, segment.len() / 2, segment.len() - 1] {
            assert!(
                decrypt_segment(&segment[..cut], &protected, |_| Some(ContentKey::new(
                    [0; 16]
                )))
                .is_err()
            );
        }
    }
}
