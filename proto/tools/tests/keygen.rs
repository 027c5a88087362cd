#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `loaves-keygen`: writes a pair, refuses to clobber, and its files are
//! standard: OpenSSL reads the private key and derives the same public key,
//! and a key OpenSSL generated is read by the servers' loader.

use std::path::Path;
use std::process::{Command, Output};

use loaves_proto::keygen::{read_public_key, read_signing_key};

fn keygen(dir: &Path, name: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loaves-keygen"))
        .arg("--out-dir")
        .arg(dir)
        .args(["--name", name])
        .output()
        .unwrap()
}

/// `openssl` with `args`, or `None` when it is not installed and not
/// required (CI requires it: `LOAVES_REQUIRE_OPENSSL=1` or `CI=true`).
fn openssl(args: &[&str]) -> Option<Output> {
    match Command::new("openssl").args(args).output() {
        Ok(output) => Some(output),
        Err(e) => {
            let required = std::env::var("LOAVES_REQUIRE_OPENSSL").is_ok_and(|v| v == "1")
                || std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!required, "openssl is required here: {e}");
            eprintln!("skipped: no openssl ({e})");
            None
        }
    }
}

#[test]
fn cli_writes_a_key_pair_and_never_clobbers_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = keygen(dir.path(), "license");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = read_signing_key(&dir.path().join("license.key")).unwrap();
    assert!(stdout.contains(&key.key_id().to_string()), "{stdout}");

    let again = keygen(dir.path(), "license");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn help_describes_the_tool() {
    let output = Command::new(env!("CARGO_BIN_EXE_loaves-keygen"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Ed25519 key pair"), "{help}");
    assert!(help.contains("--force"), "{help}");
    assert!(!help.contains("protobuf"), "{help}");
}

#[test]
fn openssl_reads_the_private_key_and_derives_the_same_public_key() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keygen(dir.path(), "origin").status.success());
    let private = dir.path().join("origin.key");
    let Some(parsed) = openssl(&["pkey", "-in", private.to_str().unwrap(), "-noout", "-text"])
    else {
        return;
    };
    assert!(
        parsed.status.success(),
        "openssl pkey refused the key: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    assert!(String::from_utf8_lossy(&parsed.stdout).contains("ED25519 Private-Key"));

    let derived = openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout"]).unwrap();
    assert!(derived.status.success());
    let ours = std::fs::read_to_string(dir.path().join("origin.pub")).unwrap();
    assert_eq!(String::from_utf8(derived.stdout).unwrap(), ours);
}

#[test]
fn a_key_generated_by_openssl_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("openssl.key");
    let Some(made) = openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]) else {
        return;
    };
    assert!(made.status.success(), "{made:?}");
    let public = dir.path().join("openssl.pub");
    let exported = openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ])
    .unwrap();
    assert!(exported.status.success());
    let key = read_signing_key(&private).unwrap();
    assert_eq!(read_public_key(&public).unwrap(), key.verifying_key());
}

#[test]
fn pyca_cryptography_reads_the_private_key() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keygen(dir.path(), "signer").status.success());
    let script = "import sys\n\
        from cryptography.hazmat.primitives.serialization import load_pem_private_key\n\
        load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\n\
        print('ok')";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("signer.key"))
        .output();
    let required = std::env::var("CI").is_ok_and(|v| v == "true");
    match output {
        Ok(output) if output.status.success() => {
            assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
        }
        Ok(output)
            if !required
                && String::from_utf8_lossy(&output.stderr).contains("ModuleNotFoundError") =>
        {
            eprintln!("skipped: python3 has no cryptography package");
        }
        Ok(output) => panic!(
            "pyca/cryptography refused the key: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => assert!(!required, "python3 is required here: {e}"),
    }
}
