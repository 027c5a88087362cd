//! The ISO-BMFF box reader, init inspection and segment reading of
//! `loaves-cmaf` never panic on arbitrary bytes, and what they accept goes
//! through the packager's protection and back:
//!
//! - `parse_boxes` tiles its input exactly, at every level of nesting;
//! - an init segment `inspect_init` reads, once protected by `protect_init`,
//!   decrypts (`decrypt_init`) to the same track, and byte for byte to the
//!   input when the input has no box the round trip rewrites (64-bit or
//!   to-the-end sizes, `pssh`, a stray `sinf`);
//! - a media segment `inspect_segment` reads for the sample's video or audio
//!   track, once protected by `protect_segment` (`cenc` or `cbcs`, with or
//!   without a key rotation), decrypts (`decrypt_segment`) byte for byte to
//!   the input under the same condition, and the summaries agree.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loaves_cmaf::boxes::{RawBox, find, parse_boxes};
use loaves_cmaf::decrypt::{ClearInit, decrypt_init, decrypt_segment};
use loaves_cmaf::init::{InitProtection, TrackInfo, inspect_init, protect_init};
use loaves_cmaf::segment::{SegmentProtection, inspect_segment, protect_segment};
use loaves_proto::keys::ContentKey;
use loaves_proto::manifest::Scheme;

const VIDEO_INIT: &[u8] = include_bytes!("../../../edge-seed/testdata/sample/video_360p/init.mp4");
const AUDIO_INIT: &[u8] = include_bytes!("../../../edge-seed/testdata/sample/audio/init.mp4");

/// The default key id and the key id of a rotated period, and their keys.
const KID0: [u8; 16] = [1; 16];
const KID1: [u8; 16] = [2; 16];
const KEY0: [u8; 16] = [7; 16];
const KEY1: [u8; 16] = [9; 16];

fn key_for(kid: &[u8; 16]) -> Option<ContentKey> {
    match *kid {
        KID0 => Some(ContentKey::new(KEY0)),
        KID1 => Some(ContentKey::new(KEY1)),
        _ => None,
    }
}

/// One of the sample's tracks, with its init segment protected under
/// `scheme` and decrypted again (what a player of the SDK holds).
struct Rendition {
    name: &'static str,
    track: TrackInfo,
    clear: [ClearInit; 2],
}

fn renditions() -> &'static [Rendition; 2] {
    static RENDITIONS: OnceLock<[Rendition; 2]> = OnceLock::new();
    RENDITIONS.get_or_init(|| {
        let make = |name, init: &[u8]| {
            let track = inspect_init(init).expect("sample init");
            let clear = [Scheme::Cenc, Scheme::Cbcs].map(|scheme| {
                let protected =
                    protect_init(init, &track, &protection(scheme)).expect("sample init protects");
                decrypt_init(&protected).expect("sample init decrypts")
            });
            Rendition { name, track, clear }
        };
        [make("video", VIDEO_INIT), make("audio", AUDIO_INIT)]
    })
}

fn protection(scheme: Scheme) -> InitProtection {
    InitProtection {
        scheme,
        default_kid: KID0,
        all_kids: vec![KID0, KID1],
    }
}

/// Boxes with an ordinary 8-byte header and an explicit size: the form the
/// writer produces, so a round trip keeps them byte for byte.
fn plain(boxes: &[RawBox<'_>]) -> bool {
    boxes
        .iter()
        .all(|b| b.header_len == 8 && b.bytes[..4] != [0; 4])
}

fn is_seig_group(b: &RawBox<'_>) -> bool {
    matches!(&b.kind.0, b"sbgp" | b"sgpd") && b.body().get(4..8) == Some(b"seig")
}

/// Checks the tiling of `buf` and descends into every box that parses as
/// a container, iteratively (the nesting can be as deep as the input is
/// long).
fn walk(buf: &[u8]) {
    let mut pending: Vec<(&[u8], u64)> = vec![(buf, 0)];
    let mut budget = 10_000usize;
    while let Some((bytes, base)) = pending.pop() {
        let Ok(boxes) = parse_boxes(bytes, base) else {
            continue;
        };
        let mut next = base;
        for b in &boxes {
            assert_eq!(b.offset, next, "boxes do not tile their parent");
            assert!(b.header_len <= b.bytes.len());
            assert_eq!(b.body_offset(), b.offset + b.header_len as u64);
            next += b.bytes.len() as u64;
            // 8: the stsd entry count; 28 and 78: audio and visual
            // sample entries.
            for skip in [0usize, 8, 28, 78] {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                if let Some(body) = b.body().get(skip..) {
                    if !body.is_empty() {
                        pending.push((body, b.body_offset() + skip as u64));
                    }
                }
            }
        }
        assert_eq!(
            next,
            base + bytes.len() as u64,
            "boxes do not cover their parent"
        );
    }
}

/// Whether the rewritten path of an init segment (moov, trak, mdia, minf,
/// stbl, stsd, the sample entries) is plain, without `pssh` in `moov` or a
/// `sinf` in a clear sample entry.
fn canonical_init(bytes: &[u8]) -> bool {
    let Ok(top) = parse_boxes(bytes, 0) else {
        return false;
    };
    if !plain(&top) {
        return false;
    }
    top.iter().filter(|b| b.kind.0 == *b"moov").all(|moov| {
        let Ok(children) = moov.children(0) else {
            return false;
        };
        plain(&children)
            && children.iter().all(|c| match &c.kind.0 {
                b"pssh" => false,
                b"trak" => canonical_path(c, &[b"mdia", b"minf", b"stbl"]),
                _ => true,
            })
    })
}

fn canonical_path(container: &RawBox<'_>, path: &[&[u8; 4]]) -> bool {
    let Ok(children) = container.children(0) else {
        return false;
    };
    plain(&children)
        && children.iter().all(|c| match path.first() {
            Some(next) if c.kind.0 == **next => canonical_path(c, &path[1..]),
            None if c.kind.0 == *b"stsd" => {
                let Ok(entries) = c.children(8) else {
                    return false;
                };
                plain(&entries)
                    && entries.iter().all(|e| {
                        let header = match &e.kind.0 {
                            b"avc1" | b"avc3" => 78,
                            b"mp4a" => 28,
                            _ => return false,
                        };
                        e.children(header)
                            .is_ok_and(|c| plain(&c) && find(&c, b"sinf").is_none())
                    })
            }
            _ => true,
        })
}

/// Whether the boxes a segment round trip rewrites (top level, `moof`,
/// `traf`) are plain, without `pssh` or `seig` sample groups.
fn canonical_segment(bytes: &[u8]) -> bool {
    let Ok(top) = parse_boxes(bytes, 0) else {
        return false;
    };
    plain(&top)
        && top.iter().all(|b| match &b.kind.0 {
            b"pssh" => false,
            b"moof" => b.children(0).is_ok_and(|children| {
                plain(&children)
                    && children.iter().all(|c| match &c.kind.0 {
                        b"pssh" => false,
                        b"traf" => c
                            .children(0)
                            .is_ok_and(|t| plain(&t) && !t.iter().any(is_seig_group)),
                        _ => true,
                    })
            }),
            _ => true,
        })
}

fn init_round_trip(data: &[u8], scheme: Scheme) {
    let Ok(track) = inspect_init(data) else {
        return;
    };
    assert_ne!(track.timescale, 0);
    if track.already_protected {
        // A protected init segment decrypts, or is refused, without a panic.
        let _ = decrypt_init(data);
        return;
    }
    let Ok(protected) = protect_init(data, &track, &protection(scheme)) else {
        return;
    };
    let clear = decrypt_init(&protected).expect("a protected init segment decrypts");
    assert_eq!(clear.track, track, "the round trip changed the track");
    let p = clear.protection.expect("the protection is found again");
    assert_eq!(p.scheme, scheme);
    assert_eq!(p.default.kid, KID0);
    if canonical_init(data) {
        assert!(clear.bytes == data, "init round trip is not byte-exact");
    }
}

fn segment_round_trip(data: &[u8], rendition: &Rendition, scheme: Scheme, rotate: bool) {
    let Ok(summary) = inspect_segment(data, &rendition.track) else {
        return;
    };
    let (kid, key) = if rotate { (KID1, KEY1) } else { (KID0, KEY0) };
    let key = ContentKey::new(key);
    let p = SegmentProtection {
        scheme,
        key: &key,
        kid,
        default_kid: KID0,
        rendition: rendition.name,
        sequence: 3,
    };
    let Ok((protected, protected_summary)) = protect_segment(data, &rendition.track, &p) else {
        return;
    };
    assert_eq!(protected_summary, summary, "protect and inspect disagree");
    let clear = &rendition.clear[usize::from(scheme == Scheme::Cbcs)];
    let out = decrypt_segment(&protected, clear, key_for)
        .unwrap_or_else(|e| panic!("a protected segment does not decrypt: {e}"));
    if canonical_segment(data) {
        assert!(out == data, "segment round trip is not byte-exact");
    }
}

fuzz_target!(|data: &[u8]| {
    walk(data);
    // The length picks the scheme and whether the key rotated, so mutations
    // reach each of them.
    let scheme = if data.len() % 2 == 0 {
        Scheme::Cenc
    } else {
        Scheme::Cbcs
    };
    let rotate = data.len() % 4 >= 2;
    init_round_trip(data, scheme);
    for rendition in renditions() {
        segment_round_trip(data, rendition, scheme, rotate);
    }
});
