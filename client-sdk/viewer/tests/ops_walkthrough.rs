#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operations walkthrough of docs/operations.md ("From zero on one
//! machine"), run as written by `scripts/ops-walkthrough`: keys and a
//! certificate, the three servers from their configuration files, a title
//! packaged through the key service, an entitlement from
//! `loaves-entitlement`, and this crate's `loaves-viewer` playing it to the
//! end without a stall.
//!
//! It uses the binaries `cargo test --workspace` built next to this test
//! (every package involved has integration tests, so its binaries are
//! built); `cargo test -p loaves-viewer` alone may not build the servers,
//! and then the script names the command that does. It needs `openssl`,
//! `curl` and `python3`: skipped without them unless required
//! (`LOAVES_REQUIRE_OPS_WALKTHROUGH=1`, set by
//! scripts/test.d/ops-walkthrough.sh, or `CI=true`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script bounds its own steps (300 s); this bounds the whole run.
const TIMEOUT: Duration = Duration::from_secs(420);

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap().to_owned()
    } else {
        dir.to_owned()
    }
}

fn missing_tools() -> Vec<&'static str> {
    ["openssl", "curl", "python3", "bash"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect()
}

#[test]
fn the_operations_walkthrough_plays_a_title_from_zero() {
    let missing = missing_tools();
    if !missing.is_empty() {
        let required = std::env::var("LOAVES_REQUIRE_OPS_WALKTHROUGH").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!required, "the walkthrough needs {missing:?}");
        eprintln!("skipped: {missing:?} not installed");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new("bash")
        .arg(repo.join("scripts/ops-walkthrough"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes on threads, so a chatty child never blocks on them.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the walkthrough did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(
        out.contains("ops-walkthrough: played") && out.contains("no stall"),
        "{out}\n{err}"
    );
    // Step 10's checks printed what they found.
    assert!(
        out.contains("loaves_license_licenses_issued_total"),
        "{out}"
    );
    assert!(out.contains("loaves_seed_bytes_served_total"), "{out}");
}
