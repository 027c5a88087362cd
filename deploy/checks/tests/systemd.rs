//! The systemd units: every flag their ExecStart passes exists in the
//! binary's `--help`, and `systemd-analyze verify` (where installed) finds
//! nothing to say about them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_success, deploy, files_ending, run, tools_required, which};

/// (unit file, binary name in ExecStart, flags it passes).
fn units() -> Vec<(PathBuf, String, Vec<String>)> {
    let mut out = Vec::new();
    for unit in files_ending(&deploy().join("systemd"), ".service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        // Join continuation lines, then find ExecStart.
        let joined = text.replace("\\\n", " ");
        let exec = joined
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart", unit.display()));
        let mut words = exec.split_whitespace();
        let binary = words.next().unwrap().rsplit('/').next().unwrap().to_owned();
        let flags = words
            .filter(|w| w.starts_with("--"))
            .map(|w| w.split('=').next().unwrap().to_owned())
            .collect();
        out.push((unit, binary, flags));
    }
    assert!(
        out.len() >= 3,
        "the license server, tracker and edge seed units"
    );
    out
}

fn built(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !tools_required(),
        "{} missing: cargo build first",
        path.display()
    );
    eprintln!("notice: {} missing, skipping", path.display());
    None
}

#[test]
fn unit_flags_exist_in_the_binaries() {
    for (unit, binary, flags) in units() {
        let Some(path) = built(&binary) else {
            return;
        };
        let mut command = Command::new(&path);
        // Both run their `serve` subcommand.
        if binary == "license-server" || binary == "edge-seed" {
            command.arg("serve");
        }
        let output = run(command.arg("--help"));
        assert_success(&format!("{binary} --help"), &output);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(!flags.is_empty());
        for flag in flags {
            assert!(
                help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=')
                    .any(|w| w == flag),
                "{}: {binary} has no flag {flag}",
                unit.display()
            );
        }
    }
}

/// systemd-analyze comes with systemd, which container-based CI machines
/// may lack: skipped with a notice then, even in CI.
#[test]
fn systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("notice: systemd-analyze not found, not verifying the units");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (unit, binary, _) in units() {
        let Some(path) = built(&binary) else {
            return;
        };
        // verify checks that ExecStart's program exists: point it at ours.
        let text = std::fs::read_to_string(&unit).unwrap().replace(
            &format!("/usr/local/bin/{binary}"),
            &path.display().to_string(),
        );
        let mut name = unit.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with("@.service") {
            name = name.replace("@.service", "@example.service");
        }
        let copy = tmp.path().join(name);
        std::fs::write(&copy, text).unwrap();
        let output = run(Command::new(&analyze).arg("verify").arg(&copy));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {}:\n{said}",
            unit.display()
        );
    }
}
