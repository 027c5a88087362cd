#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Key files: modes, no clobbering, read back, and the CLI.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

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
fn cli_writes_a_key_pair() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loaves-keygen"))
        .args(["--out-dir"])
        .arg(dir.path())
        .args(["--name", "license"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = read_signing_key(&dir.path().join("license.key")).unwrap();
    assert!(stdout.contains(&key.key_id().to_string()), "{stdout}");

    let again = Command::new(env!("CARGO_BIN_EXE_loaves-keygen"))
        .arg("--out-dir")
        .arg(dir.path())
        .args(["--name", "license"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
