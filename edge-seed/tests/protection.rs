//! Parses the packager's output boxes and checks the Common Encryption
//! rules against the clear input: unique IVs per key, NAL headers clear,
//! the cbcs 1:9 pattern, init segment signalling, key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::HashSet;

use common::*;
use edge_seed::boxes::{find, parse_boxes};
use edge_seed::init::{CLEARKEY_SYSTEM_ID, COMMON_SYSTEM_ID};
use loaves_proto::manifest::Scheme;

/// Offsets (in the sample) of each NAL unit's length prefix + header byte.
fn nal_header_ranges(sample: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < sample.len() {
        let len = be32(&sample[p..]) as usize;
        out.push(p..p + 5);
        p += 4 + len;
    }
    assert_eq!(p, sample.len());
    out
}

fn clear_ranges(subs: &[(usize, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut p = 0;
    for &(c, e) in subs {
        out.push(p..p + c);
        p += c + e;
    }
    out
}

fn protected_ranges(subs: &[(usize, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut p = 0;
    for &(c, e) in subs {
        out.push(p + c..p + c + e);
        p += c + e;
    }
    out
}

#[test]
fn cenc_ivs_unique_per_key_headers_clear_and_payload_encrypted() {
    let p = package_sample(&options(Scheme::Cenc));
    let mut ivs: HashSet<([u8; 16], Vec<u8>)> = HashSet::new();
    let mut samples_seen = 0;
    let mut protected_bytes = 0usize;
    for (name, tt) in RENDITIONS {
        let kid = key(tt, 0).kid.0;
        for out_path in segment_files(&p.out.join(name)) {
            let out = std::fs::read(&out_path).unwrap();
            let input =
                std::fs::read(sample_dir().join(name).join(out_path.file_name().unwrap())).unwrap();
            let frag = read_fragment(&out, 8);
            let clear_ranges_in = clear_sample_ranges(&input);
            assert_eq!(frag.samples.len(), clear_ranges_in.len());
            for (s, r_in) in frag.samples.iter().zip(clear_ranges_in) {
                samples_seen += 1;
                assert!(
                    ivs.insert((kid, s.iv.clone())),
                    "IV reused under one key: {name} {out_path:?}"
                );
                let enc = &out[s.range.clone()];
                let clear = &input[r_in];
                assert_eq!(enc.len(), clear.len());
                if tt == "audio" {
                    assert!(s.subsamples.is_empty());
                    // Full-sample CTR: every 16-byte block changes.
                    for (a, b) in enc.chunks(16).zip(clear.chunks(16)) {
                        assert_ne!(a, b);
                    }
                    protected_bytes += enc.len();
                    continue;
                }
                let total: usize = s.subsamples.iter().map(|(c, e)| c + e).sum();
                assert_eq!(total, clear.len(), "subsamples cover the sample");
                let clear_parts = clear_ranges(&s.subsamples);
                for r in &clear_parts {
                    assert_eq!(enc[r.clone()], clear[r.clone()], "clear bytes untouched");
                }
                for h in nal_header_ranges(clear) {
                    assert!(
                        clear_parts
                            .iter()
                            .any(|c| c.start <= h.start && h.end <= c.end),
                        "NAL header at {h:?} is not in a clear range"
                    );
                }
                for r in protected_ranges(&s.subsamples) {
                    assert_eq!(r.len() % 16, 0, "cenc protected ranges are whole blocks");
                    for (a, b) in enc[r.clone()].chunks(16).zip(clear[r.clone()].chunks(16)) {
                        assert_ne!(a, b, "protected block left clear");
                    }
                    protected_bytes += r.len();
                }
            }
        }
    }
    assert!(samples_seen > 1000, "{samples_seen}");
    assert!(protected_bytes > 2_000_000, "{protected_bytes}");
}

#[test]
fn cbcs_pattern_one_in_ten_for_video_whole_blocks_for_audio() {
    let p = package_sample(&options(Scheme::Cbcs));
    let (mut encrypted_blocks, mut skipped_blocks) = (0usize, 0usize);
    for (name, tt) in RENDITIONS {
        for out_path in segment_files(&p.out.join(name)) {
            let out = std::fs::read(&out_path).unwrap();
            let input =
                std::fs::read(sample_dir().join(name).join(out_path.file_name().unwrap())).unwrap();
            let frag = read_fragment(&out, 0);
            for (s, r_in) in frag.samples.iter().zip(clear_sample_ranges(&input)) {
                assert!(s.iv.is_empty(), "cbcs uses the constant IV");
                let enc = &out[s.range.clone()];
                let clear = &input[r_in];
                let ranges = if tt == "audio" {
                    assert!(s.subsamples.is_empty());
                    std::iter::once(0..clear.len()).collect()
                } else {
                    for r in clear_ranges(&s.subsamples) {
                        assert_eq!(enc[r.clone()], clear[r.clone()]);
                    }
                    let clear_parts = clear_ranges(&s.subsamples);
                    for h in nal_header_ranges(clear) {
                        assert!(
                            clear_parts
                                .iter()
                                .any(|c| c.start <= h.start && h.end <= c.end)
                        );
                    }
                    protected_ranges(&s.subsamples)
                };
                for r in ranges {
                    for (i, (a, b)) in enc[r.clone()]
                        .chunks(16)
                        .zip(clear[r.clone()].chunks(16))
                        .enumerate()
                    {
                        let should_encrypt = a.len() == 16 && (tt == "audio" || i % 10 == 0);
                        if should_encrypt {
                            assert_ne!(a, b, "{name}: block {i} should be encrypted");
                            encrypted_blocks += 1;
                        } else {
                            assert_eq!(a, b, "{name}: block {i} should be clear");
                            skipped_blocks += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        encrypted_blocks > 10_000 && skipped_blocks > 50_000,
        "{encrypted_blocks} {skipped_blocks}"
    );
}

/// `moov/trak/mdia/minf/stbl/stsd` → the sample entry.
fn sample_entry(init: &[u8]) -> (edge_seed::boxes::FourCc, Vec<u8>) {
    let top = parse_boxes(init, 0).unwrap();
    let mut b = *find(&top, b"moov").unwrap();
    for k in [b"trak", b"mdia", b"minf", b"stbl", b"stsd"] {
        let c = kids(&b);
        b = *find(&c, k).unwrap();
    }
    let entries = b.children(8).unwrap();
    assert_eq!(entries.len(), 1);
    (entries[0].kind, entries[0].bytes.to_vec())
}

#[test]
fn init_segments_signal_scheme_key_and_pssh() {
    for scheme in [Scheme::Cenc, Scheme::Cbcs] {
        let p = package_sample(&options(scheme));
        for (name, tt) in RENDITIONS {
            let init = std::fs::read(p.out.join(name).join("init.mp4")).unwrap();
            let (kind, entry) = sample_entry(&init);
            let video = tt != "audio";
            assert_eq!(&kind.0, if video { b"encv" } else { b"enca" });
            let entry_box = parse_boxes(&entry, 0).unwrap()[0];
            let children = entry_box.children(if video { 78 } else { 28 }).unwrap();
            let sinf = find(&children, b"sinf").unwrap();
            let sc = kids(sinf);
            assert_eq!(
                find(&sc, b"frma").unwrap().body(),
                if video { b"avc1" } else { b"mp4a" }
            );
            let schm = find(&sc, b"schm").unwrap().body();
            assert_eq!(&schm[4..8], scheme.as_str().as_bytes());
            let schi = find(&sc, b"schi").unwrap();
            let tenc_children = kids(schi);
            let tenc = find(&tenc_children, b"tenc").unwrap().body();
            let kid = key(tt, 0).kid.0;
            assert_eq!(&tenc[8..24], &kid);
            assert_eq!(tenc[6], 1, "default_isProtected");
            match scheme {
                Scheme::Cenc => {
                    assert_eq!(tenc[0], 0, "version 0");
                    assert_eq!(tenc[7], 8);
                    assert_eq!(tenc.len(), 24);
                }
                _ => {
                    assert_eq!(tenc[0], 1, "version 1");
                    assert_eq!(tenc[5], if video { 0x19 } else { 0 }, "pattern");
                    assert_eq!(tenc[7], 0, "constant IV");
                    assert_eq!(tenc[24], 16);
                    assert_eq!(tenc.len(), 41);
                }
            }
            // pssh boxes for the common system and ClearKey, listing the KID.
            let top = parse_boxes(&init, 0).unwrap();
            let moov = kids(find(&top, b"moov").unwrap());
            let systems: Vec<&[u8]> = moov
                .iter()
                .filter(|b| b.kind.0 == *b"pssh")
                .map(|b| &b.body()[4..20])
                .collect();
            assert_eq!(
                systems,
                vec![&COMMON_SYSTEM_ID[..], &CLEARKEY_SYSTEM_ID[..]]
            );
            for pssh in moov.iter().filter(|b| b.kind.0 == *b"pssh") {
                assert_eq!(pssh.body()[0], 1, "pssh version 1");
                assert_eq!(be32(&pssh.body()[20..]), 1);
                assert_eq!(&pssh.body()[24..40], &kid);
            }
        }
    }
}

#[test]
fn keys_are_separate_per_track_type_and_rotate() {
    let mut opts = options(Scheme::Cenc);
    opts.key_period_segments = 3;
    let p = package_sample(&opts);
    let mut all_kids = HashSet::new();
    for r in &p.summary.renditions {
        // 10 or 11 segments, 3 per period: 4 periods.
        assert_eq!(r.kids.len(), 4, "{}", r.name);
        for (period, kid) in &r.kids {
            assert_eq!(*kid, key(&r.track_type, *period).kid.0);
            all_kids.insert(*kid);
        }
        for s in &r.segments {
            assert_eq!(s.key_period, (s.sequence / 3) as u32);
            let out = std::fs::read(p.out.join(&r.name).join(&s.file_name)).unwrap();
            let frag = read_fragment(&out, 8);
            let top = parse_boxes(&out, 0).unwrap();
            let moof = kids(find(&top, b"moof").unwrap());
            let pssh: Vec<_> = moof.iter().filter(|b| b.kind.0 == *b"pssh").collect();
            if s.key_period == 0 {
                assert_eq!(frag.seig_kid, None, "period 0 uses the tenc default KID");
                assert!(pssh.is_empty());
            } else {
                let kid = r.kid_of(s.key_period).unwrap();
                assert_eq!(frag.seig_kid, Some(kid));
                // In-band pssh for the common system and ClearKey.
                assert_eq!(pssh.len(), 2);
                for b in pssh {
                    assert_eq!(&b.body()[24..40], &kid);
                }
            }
        }
        let playlist = std::fs::read_to_string(p.out.join(&r.name).join("media.m3u8")).unwrap();
        assert_eq!(playlist.matches("#EXT-X-KEY:").count(), 2 * 4, "{playlist}");
    }
    // 3 track types x 4 periods, all distinct.
    assert_eq!(all_kids.len(), 12);
}

#[test]
fn playlists_and_mpd_reference_the_output() {
    let p = package_sample(&options(Scheme::Cenc));
    let master = std::fs::read_to_string(p.out.join("master.m3u8")).unwrap();
    assert!(master.contains("#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES-CTR"));
    assert!(master.contains("RESOLUTION=1280x720"));
    assert!(master.contains("CODECS=\"avc1.4d401f,mp4a.40.2\""));
    for (name, _) in RENDITIONS {
        assert!(master.contains(&format!("{name}/media.m3u8")));
        let media = std::fs::read_to_string(p.out.join(name).join("media.m3u8")).unwrap();
        assert!(media.contains("#EXT-X-MAP:URI=\"init.mp4\""));
        assert!(media.ends_with("#EXT-X-ENDLIST\n"));
        for line in media.lines().filter(|l| !l.starts_with('#')) {
            assert!(p.out.join(name).join(line).is_file(), "{line}");
        }
    }
    let mpd = std::fs::read_to_string(p.out.join("manifest.mpd")).unwrap();
    for (_, tt) in RENDITIONS {
        let kid = hex::encode(key(tt, 0).kid.0);
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &kid[..8],
            &kid[8..12],
            &kid[12..16],
            &kid[16..20],
            &kid[20..]
        );
        assert!(
            mpd.contains(&format!("cenc:default_KID=\"{uuid}\"")),
            "{mpd}"
        );
    }
    assert!(mpd.contains("urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e"));
    assert!(mpd.contains("urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b"));
    assert_eq!(mpd.matches("<AdaptationSet").count(), 3);
}

#[test]
fn packaging_is_deterministic() {
    let a = package_sample(&options(Scheme::Cenc));
    let b = package_sample(&options(Scheme::Cenc));
    for (name, _) in RENDITIONS {
        for f in segment_files(&a.out.join(name)) {
            let other = b.out.join(name).join(f.file_name().unwrap());
            assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(other).unwrap());
        }
    }
}
