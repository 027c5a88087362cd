//! Round trip through an independent decryptor: ffmpeg's mov demuxer
//! (`-decryption_key`) decrypts the packager's `cenc` and `cbcs` output,
//! and the decoded frames hash the same as the clear input's
//! (`-f framemd5`). Needs `ffmpeg` on PATH (scripts/test.d/ffmpeg.sh
//! installs it); without it the tests are skipped, or fail when CI=true.
//!
//! Each segment is checked as `init + segment`: Debian's ffmpeg 5.1 does
//! not decrypt a file of three or more concatenated fragments correctly,
//! even its own `-encryption_scheme cenc-aes-ctr` output (checked by hand),
//! so the whole-file form cannot serve as an oracle. Every segment starts
//! with an IDR frame, so each decodes alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use loaves_proto::manifest::Scheme;

fn ffmpeg_available() -> bool {
    loaves_testkit::process::have_tool(
        "ffmpeg",
        &["-version"],
        "scripts/test.d/ffmpeg.sh installs it",
    )
}

/// Decoded frame hashes of `init + segment`, decrypting with `key` if given.
fn frame_hashes(dir: &Path, init: &Path, segment: &Path, key: Option<&[u8; 16]>) -> Vec<String> {
    let mut file = std::fs::read(init).unwrap();
    file.extend(std::fs::read(segment).unwrap());
    let path = dir.join("input.mp4");
    std::fs::write(&path, file).unwrap();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error"]);
    if let Some(key) = key {
        cmd.args(["-decryption_key", &hex::encode(key)]);
    }
    cmd.arg("-i")
        .arg(&path)
        .args(["-map", "0", "-f", "framemd5", "-"]);
    let out = cmd.output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn round_trip(scheme: Scheme, key_period_segments: u32) {
    if !ffmpeg_available() {
        return;
    }
    let mut opts = options(scheme);
    opts.key_period_segments = key_period_segments;
    let p = package_sample(&opts);
    let work = tempfile::tempdir().unwrap();
    let mut frames = 0;
    for (name, tt) in RENDITIONS {
        let clear_init = sample_dir().join(name).join("init.mp4");
        let out_init = p.out.join(name).join("init.mp4");
        for (i, seg) in segment_files(&p.out.join(name)).into_iter().enumerate() {
            let period = edge_seed::package::key_period(i as u64, key_period_segments);
            let key = key(tt, period);
            let clear_seg = sample_dir().join(name).join(seg.file_name().unwrap());
            let expected = frame_hashes(work.path(), &clear_init, &clear_seg, None);
            let got = frame_hashes(work.path(), &out_init, &seg, Some(key.key.as_bytes()));
            assert!(
                !expected.is_empty(),
                "ffmpeg decoded nothing from {clear_seg:?}"
            );
            assert_eq!(
                got,
                expected,
                "{} {name} {:?}",
                scheme.as_str(),
                seg.file_name()
            );
            frames += expected.len();
        }
        // Negative control: the wrong key does not give the clear frames, so
        // the comparison above really depends on decryption.
        let first = segment_files(&p.out.join(name)).remove(0);
        let clear_seg = sample_dir().join(name).join(first.file_name().unwrap());
        let expected = frame_hashes(work.path(), &clear_init, &clear_seg, None);
        let wrong = frame_hashes(work.path(), &out_init, &first, Some(&[0x42; 16]));
        assert_ne!(
            wrong, expected,
            "{name}: wrong key decoded the clear frames"
        );
    }
    // 20 s of 25 fps video twice, plus ~940 AAC frames.
    assert!(frames > 1900, "{frames}");
}

#[test]
fn cenc_output_decrypts_with_ffmpeg_to_the_clear_frames() {
    round_trip(Scheme::Cenc, 0);
}

#[test]
fn rotated_keys_decrypt_with_ffmpeg_segment_by_segment() {
    // A new key every 3 segments: later fragments carry `seig` sample groups
    // and `pssh` in `moof`; each decrypts with its period's key.
    round_trip(Scheme::Cbcs, 3);
}

#[test]
fn cbcs_output_decrypts_with_ffmpeg_to_the_clear_frames() {
    round_trip(Scheme::Cbcs, 0);
}
