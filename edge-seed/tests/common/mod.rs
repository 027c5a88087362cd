//! Shared helpers: package the committed sample, and read the boxes of the
//! output back (independently of the packager's own writer).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support code

use std::path::{Path, PathBuf};

use edge_seed::boxes::{RawBox, find, parse_boxes};
use edge_seed::keysource::{KeyRequest, LocalKeySource, TrackKey};
use edge_seed::{PackageOptions, PackageSummary, package};
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::manifest::Scheme;

pub const SECRET: &str = "test-secret";
pub const TITLE: &str = "sample";

pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample")
}

pub fn options(scheme: Scheme) -> PackageOptions {
    PackageOptions {
        title: TITLE.into(),
        scheme,
        ..PackageOptions::default()
    }
}

pub struct Packaged {
    pub dir: tempfile::TempDir,
    pub out: PathBuf,
    pub summary: PackageSummary,
    pub origin: SigningKeyPair,
}

pub fn package_sample(opts: &PackageOptions) -> Packaged {
    package_input(&sample_dir().join("master.m3u8"), opts)
}

pub fn package_input(input: &Path, opts: &PackageOptions) -> Packaged {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let origin = SigningKeyPair::generate().unwrap();
    let summary = package(
        input,
        &out,
        opts,
        &LocalKeySource::new(SECRET),
        &origin,
        &mut |_| {},
    )
    .unwrap();
    Packaged {
        dir,
        out,
        summary,
        origin,
    }
}

pub fn key(track_type: &str, period: u32) -> TrackKey {
    LocalKeySource::new(SECRET).derive(
        TITLE,
        &KeyRequest {
            track_type: track_type.into(),
            key_period: period,
        },
    )
}

/// The children of `b` (plain container).
pub fn kids<'a>(b: &RawBox<'a>) -> Vec<RawBox<'a>> {
    b.children(0).unwrap()
}

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// One sample of a fragment as read back from an output segment.
#[derive(Debug, Clone)]
pub struct SampleAux {
    /// Byte range of the sample in the segment.
    pub range: std::ops::Range<usize>,
    pub iv: Vec<u8>,
    /// (clear, protected) pairs; empty for full-sample encryption.
    pub subsamples: Vec<(usize, usize)>,
}

/// Reads every sample (location from `trun`, aux info from `senc`) of a
/// protected segment, and checks `saio` points at the `senc` entries.
pub struct FragmentInfo {
    pub samples: Vec<SampleAux>,
    pub seig_kid: Option<[u8; 16]>,
}

/// The top-level boxes of a segment, its `moof` and the children of the
/// `moof`'s `traf`.
fn moof_and_traf(seg: &[u8]) -> (Vec<RawBox<'_>>, RawBox<'_>, Vec<RawBox<'_>>) {
    let top = parse_boxes(seg, 0).unwrap();
    let moof = *find(&top, b"moof").unwrap();
    let traf_box = kids(&moof)
        .into_iter()
        .find(|b| b.kind.0 == *b"traf")
        .unwrap();
    let traf = kids(&traf_box);
    (top, moof, traf)
}

pub fn read_fragment(seg: &[u8], iv_size: usize) -> FragmentInfo {
    let (top, moof, traf) = moof_and_traf(seg);
    let ranges = clear_sample_ranges(seg);
    let count = ranges.len();
    let mdat = find(&top, b"mdat").unwrap();
    assert!(ranges.first().unwrap().start as u64 >= mdat.body_offset());
    assert_eq!(
        ranges.last().unwrap().end,
        mdat.offset as usize + mdat.bytes.len()
    );

    let senc = find(&traf, b"senc").unwrap();
    let sb = senc.body();
    let use_sub = be32(sb) & 2 != 0;
    assert_eq!(be32(&sb[4..]) as usize, count);
    let saio = find(&traf, b"saio").unwrap();
    let saio_off = be32(&saio.body()[8..]) as u64;
    assert_eq!(
        moof.offset + saio_off,
        senc.body_offset() + 8,
        "saio points at senc data"
    );
    let saiz = find(&traf, b"saiz").unwrap();
    let zb = saiz.body();
    let default_size = zb[4] as usize;
    assert_eq!(be32(&zb[5..]) as usize, count);
    let mut p = 8;
    let mut samples = Vec::new();
    for (i, range) in ranges.into_iter().enumerate() {
        let entry_start = p;
        let iv = sb[p..p + iv_size].to_vec();
        p += iv_size;
        let mut subsamples = Vec::new();
        if use_sub {
            let n = u16::from_be_bytes([sb[p], sb[p + 1]]) as usize;
            p += 2;
            for _ in 0..n {
                let clear = u16::from_be_bytes([sb[p], sb[p + 1]]) as usize;
                let prot = be32(&sb[p + 2..]) as usize;
                subsamples.push((clear, prot));
                p += 6;
            }
        }
        let size = if default_size > 0 {
            default_size
        } else {
            zb[9 + i] as usize
        };
        assert_eq!(size, p - entry_start, "saiz size of sample {i}");
        samples.push(SampleAux {
            range,
            iv,
            subsamples,
        });
    }
    assert_eq!(p, sb.len(), "senc fully consumed");
    let seig_kid = find(&traf, b"sgpd").map(|sgpd| {
        let b = sgpd.body();
        assert_eq!(&b[4..8], b"seig");
        // version 1: default_length, entry_count, then the entry.
        let entry = &b[16..];
        entry[4..20].try_into().unwrap()
    });
    FragmentInfo { samples, seig_kid }
}

/// Sample byte ranges of a segment (from `trun`, or the `tfhd` default
/// size when `trun` has no sizes).
pub fn clear_sample_ranges(seg: &[u8]) -> Vec<std::ops::Range<usize>> {
    let (_, moof, traf) = moof_and_traf(seg);
    let tfhd = find(&traf, b"tfhd").unwrap().body();
    let tf_flags = be32(tfhd) & 0xff_ffff;
    assert_eq!(tf_flags & 1, 0);
    let mut q = 8 + if tf_flags & 2 != 0 { 4 } else { 0 } + if tf_flags & 8 != 0 { 4 } else { 0 };
    let default_size = if tf_flags & 0x10 != 0 {
        let v = be32(&tfhd[q..]) as usize;
        q += 4;
        Some(v)
    } else {
        None
    };
    let _ = q;
    let trun = find(&traf, b"trun").unwrap();
    let body = trun.body();
    let flags = be32(body) & 0xff_ffff;
    let count = be32(&body[4..]) as usize;
    let data_offset = be32(&body[8..]) as i32;
    let mut pos = 12 + if flags & 4 != 0 { 4 } else { 0 };
    let mut start = (moof.offset as i64 + i64::from(data_offset)) as usize;
    let mut ranges = Vec::new();
    for _ in 0..count {
        if flags & 0x100 != 0 {
            pos += 4;
        }
        let size = if flags & 0x200 != 0 {
            pos += 4;
            be32(&body[pos - 4..]) as usize
        } else {
            default_size.expect("a sample size")
        };
        pos += if flags & 0x400 != 0 { 4 } else { 0 } + if flags & 0x800 != 0 { 4 } else { 0 };
        ranges.push(start..start + size);
        start += size;
    }
    ranges
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "m4s"))
        .collect();
    v.sort();
    v
}

/// (rendition, track type) of the sample.
pub const RENDITIONS: [(&str, &str); 3] = [
    ("video_360p", "sd"),
    ("video_720p", "hd"),
    ("audio", "audio"),
];

pub fn scheme_iv_size(scheme: Scheme) -> usize {
    if scheme == Scheme::Cenc { 8 } else { 0 }
}
