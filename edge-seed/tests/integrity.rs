//! Signed manifests: every output segment verifies, and flipping any one
//! byte of any segment (or of an init segment) is caught.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use edge_seed::package::{MANIFEST_FILE, read_manifest_frames};
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::{Manifest, ManifestError, Scheme};

fn manifest_of(
    p: &Packaged,
    rendition: &str,
    keyring: &Keyring,
) -> Result<Manifest, ManifestError> {
    let bytes = std::fs::read(p.out.join(rendition).join(MANIFEST_FILE)).unwrap();
    let frames = read_manifest_frames(&bytes).unwrap();
    Manifest::from_encoded_chunks(keyring, frames.iter().map(Vec::as_slice))
}

#[test]
fn tampering_with_one_byte_of_any_segment_is_caught() {
    for scheme in [Scheme::Cenc, Scheme::Cbcs] {
        let p = package_sample(&options(scheme));
        let mut keyring = Keyring::new();
        keyring.insert(p.origin.verifying_key());
        let mut checked = 0;
        for r in &p.summary.renditions {
            let m = manifest_of(&p, &r.name, &keyring).unwrap();
            assert!(m.is_final());
            let init = std::fs::read(p.out.join(&r.name).join("init.mp4")).unwrap();
            m.verify_init(&init).unwrap();
            let mut bad_init = init.clone();
            bad_init[init.len() / 2] ^= 1;
            assert_eq!(
                m.verify_init(&bad_init),
                Err(ManifestError::InitHashMismatch)
            );
            assert_eq!(m.segments().len(), r.segments.len());
            for s in &r.segments {
                let bytes = std::fs::read(p.out.join(&r.name).join(&s.file_name)).unwrap();
                let entry = m.verify_segment(s.sequence, &bytes).unwrap();
                assert_eq!(entry.key_period, s.key_period);
                assert_eq!(entry.duration_ms, s.duration_ms);
                // First byte, last byte, one in the middle of the payload, and
                // one in the moof (the senc area).
                let n = bytes.len();
                for at in [
                    0,
                    n - 1,
                    n / 2,
                    200.min(n - 1),
                    (s.sequence as usize * 7919) % n,
                ] {
                    let mut bad = bytes.clone();
                    bad[at] ^= 0x80;
                    assert_eq!(
                        m.verify_segment(s.sequence, &bad),
                        Err(ManifestError::HashMismatch(s.sequence)),
                        "{} seg {} byte {at}",
                        r.name,
                        s.sequence
                    );
                    checked += 1;
                }
                let mut short = bytes.clone();
                short.pop();
                assert!(matches!(
                    m.verify_segment(s.sequence, &short),
                    Err(ManifestError::SizeMismatch { .. })
                ));
                // A segment served under another sequence number fails too.
                if s.sequence > 0 {
                    assert!(m.verify_segment(s.sequence - 1, &bytes).is_err());
                }
            }
        }
        assert!(checked > 150);
    }
}

#[test]
fn manifests_signed_by_another_key_are_refused() {
    let p = package_sample(&options(Scheme::Cenc));
    let mut keyring = Keyring::new();
    keyring.insert(SigningKeyPair::generate().unwrap().verifying_key());
    assert!(manifest_of(&p, "audio", &keyring).is_err());
}

#[test]
fn passthrough_keeps_bytes_and_signs_them() {
    // Already-protected input: the cenc output of the sample.
    let protected = package_sample(&options(Scheme::Cenc));
    let p = package_input(
        &protected.out.join("master.m3u8"),
        &options(Scheme::Passthrough),
    );
    let mut keyring = Keyring::new();
    keyring.insert(p.origin.verifying_key());
    for (name, _) in RENDITIONS {
        for f in segment_files(&protected.out.join(name)) {
            let original = std::fs::read(&f).unwrap();
            let passed = std::fs::read(p.out.join(name).join(f.file_name().unwrap())).unwrap();
            assert_eq!(original, passed, "passthrough changed {f:?}");
        }
        let init = std::fs::read(protected.out.join(name).join("init.mp4")).unwrap();
        assert_eq!(
            init,
            std::fs::read(p.out.join(name).join("init.mp4")).unwrap()
        );
        let m = manifest_of(&p, name, &keyring).unwrap();
        m.verify_init(&init).unwrap();
        assert_eq!(
            m.segments().len(),
            segment_files(&protected.out.join(name)).len()
        );
    }
}
