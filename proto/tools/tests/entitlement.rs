#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `loaves-entitlement`: what `mint` writes verifies with the sign-in
//! key's public half and says what was asked; another key's check fails;
//! the file is private to its owner.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::EntitlementVerifier;
use loaves_proto::keygen::{read_public_key, write_key_pair};

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loaves-entitlement"))
}

#[test]
fn mint_then_show_round_trips_and_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let signin = write_key_pair(dir.path(), "entitlement", false).unwrap();
    let other = write_key_pair(dir.path(), "other", false).unwrap();
    let out = dir.path().join("viewer.entitlement");
    let minted = tool()
        .args(["mint", "--key"])
        .arg(&signin.private_key)
        .args([
            "--account",
            "viewer-1",
            "--title",
            "film,news",
            "--max-streams",
            "2",
            "--max-height",
            "720",
            "--valid-for-s",
            "3600",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The raw file is what the license server verifies.
    let bytes = std::fs::read(&out).unwrap();
    let ring = [read_public_key(&signin.public_key).unwrap()]
        .into_iter()
        .collect();
    let claims = EntitlementVerifier::new(ring)
        .verify(&bytes, UnixSeconds::now())
        .unwrap();
    assert_eq!(claims.account, "viewer-1");
    assert_eq!(claims.titles, ["film", "news"]);
    assert_eq!(claims.max_concurrent_streams, 2);
    assert_eq!(claims.max_height, 720);
    assert_eq!(claims.expires_at.0 - claims.issued_at.0, 3600);

    // `show` reads the raw file and the printed base64url alike.
    let printed = dir.path().join("printed.txt");
    std::fs::write(&printed, &minted.stdout).unwrap();
    for file in [&out, &printed] {
        let shown = tool()
            .arg("show")
            .arg(file)
            .arg("--key")
            .arg(&signin.public_key)
            .output()
            .unwrap();
        assert!(shown.status.success(), "{shown:?}");
        let json: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(json["account"], "viewer-1");
        assert_eq!(json["max_concurrent_streams"], 2);
    }
    let refused = tool()
        .arg("show")
        .arg(&out)
        .arg("--key")
        .arg(&other.public_key)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown_signer"));
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let signin = write_key_pair(dir.path(), "entitlement", false).unwrap();
    let zero = tool()
        .args(["mint", "--key"])
        .arg(&signin.private_key)
        .args(["--account", "a", "--max-streams", "0"])
        .output()
        .unwrap();
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--max-streams"));
    let missing = tool()
        .args(["mint", "--key"])
        .arg(dir.path().join("absent.key"))
        .args(["--account", "a"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("sign-in key"));
    let help = tool().arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("entitlement_public_keys"));
}
