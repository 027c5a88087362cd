//! Bad input: a clear error naming the file, and nothing published.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};

use common::*;
use edge_seed::keysource::{GrpcKeySource, LocalKeySource};
use edge_seed::{Mp4Error, PackageError, package};
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::manifest::Scheme;

/// A copy of the sample as a directory of renditions.
fn copy_sample(dir: &Path) -> PathBuf {
    let input = dir.join("in");
    for (name, _) in RENDITIONS {
        std::fs::create_dir_all(input.join(name)).unwrap();
        for e in std::fs::read_dir(sample_dir().join(name)).unwrap() {
            let e = e.unwrap().path();
            std::fs::copy(&e, input.join(name).join(e.file_name().unwrap())).unwrap();
        }
    }
    input
}

fn run(
    input: &Path,
    out: &Path,
    scheme: Scheme,
) -> Result<edge_seed::PackageSummary, PackageError> {
    package(
        input,
        out,
        &options(scheme),
        &LocalKeySource::new(SECRET),
        &SigningKeyPair::generate().unwrap(),
        &mut |_| {},
    )
}

/// Nothing but the input directory is left next to the output.
fn assert_nothing_published(dir: &Path) {
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["in".to_owned()], "left behind: {names:?}");
}

#[test]
fn directory_input_packages_like_the_playlist() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    let s = run(&input, &dir.path().join("out"), Scheme::Cenc).unwrap();
    assert_eq!(s.renditions.len(), 3);
    assert_eq!(s.segments(), 31);
}

#[test]
fn truncated_segment_is_named_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    let victim = input.join("video_720p/seg_00004.m4s");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let err = run(&input, &dir.path().join("out"), Scheme::Cbcs).unwrap_err();
    match &err {
        PackageError::Media {
            path,
            source: Mp4Error::Box(_),
        } => assert_eq!(path, &victim),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("seg_00004.m4s"), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_nothing_published(dir.path());
}

#[test]
fn corrupt_nal_lengths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    let victim = input.join("video_360p/seg_00002.m4s");
    let mut bytes = std::fs::read(&victim).unwrap();
    // The first sample's first NAL length, made huge.
    let first = clear_sample_ranges(&bytes)[0].start;
    bytes[first] = 0x7f;
    std::fs::write(&victim, &bytes).unwrap();
    let err = run(&input, &dir.path().join("out"), Scheme::Cenc).unwrap_err();
    assert!(
        matches!(&err, PackageError::Media { path, source: Mp4Error::Sample { .. } } if *path == victim),
        "{err:?}"
    );
    assert_nothing_published(dir.path());
}

#[test]
fn missing_init_segment_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    std::fs::remove_file(input.join("audio/init.mp4")).unwrap();
    let err = run(&input, &dir.path().join("out"), Scheme::Cenc).unwrap_err();
    assert!(
        matches!(&err, PackageError::Input { path, .. } if path.ends_with("audio")),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing init segment"), "{err}");
    // A playlist without EXT-X-MAP.
    let playlist = dir.path().join("in/video_360p/media.m3u8");
    let text = std::fs::read_to_string(&playlist)
        .unwrap()
        .replace("#EXT-X-MAP:URI=\"init.mp4\"\n", "");
    std::fs::write(&playlist, text).unwrap();
    let err = run(&playlist, &dir.path().join("out"), Scheme::Cenc).unwrap_err();
    assert!(err.to_string().contains("media.m3u8"), "{err}");
    assert_nothing_published(dir.path());
}

#[test]
fn unsupported_codec_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    let init = input.join("video_360p/init.mp4");
    let bytes = std::fs::read(&init).unwrap();
    let at = bytes.windows(4).position(|w| w == b"avc1").unwrap();
    let mut patched = bytes.clone();
    patched[at..at + 4].copy_from_slice(b"vp09");
    std::fs::write(&init, patched).unwrap();
    let err = run(&input, &dir.path().join("out"), Scheme::Cenc).unwrap_err();
    assert!(
        matches!(&err, PackageError::Media { path, source: Mp4Error::Unsupported(_) } if *path == init),
        "{err:?}"
    );
    assert!(err.to_string().contains("vp09"), "{err}");
    assert_nothing_published(dir.path());
}

#[test]
fn key_service_down_is_a_clear_error_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    let keys = GrpcKeySource::new("http://127.0.0.1:9", Some("token".into()), None)
        .with_timeout(std::time::Duration::from_secs(2));
    let err = package(
        &input,
        &dir.path().join("out"),
        &options(Scheme::Cenc),
        &keys,
        &SigningKeyPair::generate().unwrap(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, PackageError::Keys(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
    assert_nothing_published(dir.path());
}

#[test]
fn protected_input_needs_passthrough_and_clear_input_refuses_it() {
    let protected = package_sample(&options(Scheme::Cenc));
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &protected.out.join("master.m3u8"),
        &dir.path().join("o"),
        Scheme::Cbcs,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PackageError::Media {
                source: Mp4Error::AlreadyProtected,
                ..
            }
        ),
        "{err:?}"
    );
    let err = run(
        &sample_dir().join("master.m3u8"),
        &dir.path().join("o"),
        Scheme::Passthrough,
    )
    .unwrap_err();
    assert!(err.to_string().contains("clear"), "{err}");
}

#[test]
fn existing_output_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_sample(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let err = run(&input, &out, Scheme::Cenc).unwrap_err();
    assert!(matches!(err, PackageError::OutputExists(_)));
    assert!(out.join("keep").exists());
    let mut opts = options(Scheme::Cenc);
    opts.force = true;
    package(
        &input,
        &out,
        &opts,
        &LocalKeySource::new(SECRET),
        &SigningKeyPair::generate().unwrap(),
        &mut |_| {},
    )
    .unwrap();
    assert!(!out.join("keep").exists());
    assert!(out.join("master.m3u8").exists());
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["in", "out"]);
}
