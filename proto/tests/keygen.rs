#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Key files: modes, no clobbering, read back (the CLI is tested in
//! `proto/tools`).

use std::os::unix::fs::PermissionsExt;

use loaves_proto::keygen::{KeygenError, read_public_key, read_signing_key, write_key_pair};

#[test]
fn key_pair_files_have_safe_modes_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_key_pair(dir.path(), "origin", false).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&files.private_key), 0o600);
    assert_eq!(mode(&files.public_key), 0o644);

    let private = read_signing_key(&files.private_key).unwrap();
    let public = read_public_key(&files.public_key).unwrap();
    assert_eq!(private.verifying_key(), public);
    assert_eq!(private.key_id(), files.key_id);
    let pem = std::fs::read_to_string(&files.private_key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn existing_keys_are_never_overwritten_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_key_pair(dir.path(), "k", false).unwrap();
    let err = write_key_pair(dir.path(), "k", false).unwrap_err();
    assert!(matches!(err, KeygenError::Exists(_)), "{err}");
    assert_eq!(
        read_signing_key(&first.private_key).unwrap().key_id(),
        first.key_id
    );

    let second = write_key_pair(dir.path(), "k", true).unwrap();
    assert_ne!(second.key_id, first.key_id);
    assert_eq!(
        read_signing_key(&second.private_key).unwrap().key_id(),
        second.key_id
    );
}

#[test]
fn names_that_escape_the_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", "../x", "a/b", ".hidden", "sp ace"] {
        assert!(
            matches!(
                write_key_pair(dir.path(), name, false),
                Err(KeygenError::InvalidName(_))
            ),
            "{name:?}"
        );
    }
}

#[test]
fn unreadable_or_garbage_key_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    assert!(matches!(
        read_signing_key(&missing),
        Err(KeygenError::Io { .. })
    ));
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let err = read_signing_key(&garbage).unwrap_err();
    assert!(matches!(err, KeygenError::Key { .. }), "{err}");
    assert!(err.to_string().contains("garbage.key"));
}

#[test]
fn a_pkcs8_v2_key_with_its_public_half_still_reads() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    // The signing key's own encoder writes v2 (RFC 5958, public key included).
    let v2 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let path = dir.path().join("v2.key");
    std::fs::write(&path, v2.as_bytes()).unwrap();
    let read = read_signing_key(&path).unwrap();
    assert_eq!(read.verifying_key(), key.verifying_key());
    // What we write is v1: the private key alone, 48 bytes of DER.
    let ours = read.to_pkcs8_pem().unwrap();
    let body: String = ours.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(body.len(), 64, "base64 of 48 DER bytes: {ours:?}");
}
