//! The `edge-seed` binary: `package` on the sample, `synth` then `package`,
//! and a bad input reported with its file name and a failure exit status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::process::Command;

use common::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge-seed"));
    c.env("RUST_BACKTRACE", "0");
    c
}

fn origin_key(dir: &std::path::Path) -> std::path::PathBuf {
    loaves_proto::keygen::write_key_pair(dir, "origin", true)
        .unwrap()
        .private_key
}

#[test]
fn package_subcommand_packages_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_key(dir.path());
    let out = dir.path().join("out");
    let o = bin()
        .args([
            "package",
            "--scheme",
            "cbcs",
            "--key-source",
            "local",
            "--dev-key-secret",
            SECRET,
            "-q",
            "-t",
            TITLE,
        ])
        .arg(sample_dir().join("master.m3u8"))
        .arg("-o")
        .arg(&out)
        .arg("--origin-key")
        .arg(&origin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("packaged 3 renditions, 31 segments"),
        "{stdout}"
    );
    // The summary shows key ids, never keys.
    let kid = hex::encode(key("hd", 0).kid.0);
    assert!(stdout.contains(&kid), "{stdout}");
    let secret = hex::encode(key("hd", 0).key.as_bytes());
    assert!(!stdout.contains(&secret));
    assert!(out.join("video_720p/manifest.lvm").is_file());
}

#[test]
fn synth_then_package() {
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_key(dir.path());
    let synth = dir.path().join("synth");
    let o = bin()
        .args([
            "synth",
            "--duration-s",
            "8",
            "--video",
            "1920x1080:4000000",
            "--audio-bitrate",
            "96000",
        ])
        .arg(&synth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bin()
        .args(["package", "--key-source", "local", "-q", "-t", "synthetic"])
        .arg(&synth)
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg("--origin-key")
        .arg(&origin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("packaged 2 renditions, 8 segments"),
        "{stdout}"
    );
    assert!(stdout.contains(" hd "), "{stdout}");
}

#[test]
fn bad_input_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_key(dir.path());
    let input = dir.path().join("in/video");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(
        sample_dir().join("video_360p/init.mp4"),
        input.join("init.mp4"),
    )
    .unwrap();
    std::fs::write(input.join("seg_00000.m4s"), b"\0\0\0\x20moof").unwrap();
    let o = bin()
        .args(["package", "--key-source", "local", "-t", "x"])
        .arg(dir.path().join("in"))
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg("--origin-key")
        .arg(&origin)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("seg_00000.m4s") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists());
}
