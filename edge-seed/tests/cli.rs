//! The `edge-seed` binary: `package` on the sample, `synth` then `package`,
//! and a bad input reported with its file name and a failure exit status;
//! `credential` minting what `serve` loads (good and bad inputs), `serve`
//! refusing a credential that does not fit its key, and `serve` registering
//! with a tracker named `localhost:PORT`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;
mod serve_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::framing;
use loaves_wire::identity::PeerIdentity;
use loaves_wire::peerwire;

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
    let stdout = loaves_testkit::process::assert_success("package", &o);
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

// ------------------------------------------------------------- credential

/// Key files of a seed deployment: the operator (license) key pair, the
/// seed's identity key pair, the origin's public key.
struct Material {
    dir: tempfile::TempDir,
}

impl Material {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, key: &SigningKeyPair| {
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                key.to_pkcs8_pem().unwrap().as_bytes(),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.pub")),
                loaves_proto::keys::public_key_to_pem(&key.verifying_key()).unwrap(),
            )
            .unwrap();
        };
        write("license", &serve_common::license_key());
        write("seed", &serve_common::seed_key());
        write("origin", &serve_common::origin_key());
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

fn credential_args(material: &Material, seed_key: &str, out: &Path) -> Vec<String> {
    [
        "credential",
        "--operator-key",
        material.path("license.key").to_str().unwrap(),
        "--seed-key",
        material.path(seed_key).to_str().unwrap(),
        "--name",
        "seed-par-1",
        "--region",
        "eu-west",
        "--isp",
        "isp-a",
        "--title",
        serve_common::TITLE,
        "--title",
        "other-title",
        "--valid-days",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn run_bin(args: &[String]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn credential_is_minted_for_the_seed_key_and_verifies() {
    let material = Material::new();
    let now = UnixSeconds::now().0;
    for (seed_key, out) in [("seed.pub", "a.credential"), ("seed.key", "b.credential")] {
        let out = material.path(out);
        let o = run_bin(&credential_args(&material, seed_key, &out));
        assert!(o.status.success(), "{}", stderr(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("seed-par-1"), "{stdout}");
        let bytes = std::fs::read(&out).unwrap();
        let credential = serve_common::verifier()
            .verify_seed(&bytes, UnixSeconds::now())
            .unwrap();
        assert_eq!(credential.seed_name, "seed-par-1");
        assert_eq!(
            credential.peer_key,
            serve_common::seed_key().verifying_key()
        );
        assert_eq!(
            (credential.region.as_str(), credential.isp.as_str()),
            ("eu-west", "isp-a")
        );
        assert_eq!(credential.titles, vec![serve_common::TITLE, "other-title"]);
        assert!(credential.allows_title(serve_common::TITLE));
        assert!(!credential.allows_title("unlisted"));
        let days = (credential.expires_at.0 - now) as f64 / 86_400.0;
        assert!((9.99..10.01).contains(&days), "{days}");
        assert!(credential.not_before.0 <= now);
    }
    // An existing output is kept unless --force.
    let out = material.path("a.credential");
    let o = run_bin(&credential_args(&material, "seed.pub", &out));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let mut args = credential_args(&material, "seed.pub", &out);
    args.push("--force".into());
    assert!(run_bin(&args).status.success());
}

#[test]
fn credential_refuses_bad_inputs() {
    let material = Material::new();
    let out = material.path("seed.credential");
    let replace = |args: &mut Vec<String>, flag: &str, value: &str| {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_owned();
    };
    let refused = |args: &[String], expect: &[&str]| {
        let o = run_bin(args);
        assert!(!o.status.success(), "accepted {args:?}");
        let err = stderr(&o);
        for e in expect {
            assert!(err.contains(e), "{args:?}: expected {e:?} in:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "nothing written for {args:?}");
    };

    // Missing operator key file.
    let mut args = credential_args(&material, "seed.pub", &out);
    replace(&mut args, "--operator-key", "/nonexistent/license.key");
    refused(&args, &["operator key", "/nonexistent/license.key"]);
    // Missing seed key file.
    let mut args = credential_args(&material, "seed.pub", &out);
    replace(&mut args, "--seed-key", "/nonexistent/seed.pub");
    refused(&args, &["seed key", "/nonexistent/seed.pub"]);
    // Wrong formats: a seed key that is no PEM key; a public key given as
    // the operator's signing key.
    std::fs::write(material.path("garbage.pub"), "not a key\n").unwrap();
    refused(
        &credential_args(&material, "garbage.pub", &out),
        &["seed key", "garbage.pub", "not a PEM Ed25519 key"],
    );
    let mut args = credential_args(&material, "seed.pub", &out);
    replace(
        &mut args,
        "--operator-key",
        material.path("license.pub").to_str().unwrap(),
    );
    refused(&args, &["operator key", "license.pub"]);
    // Empty titles, '*' with others, an unsafe title.
    for (titles, expect) in [
        (vec![""], "at least one title"),
        (vec!["*", "x"], "must be the only title"),
        (vec!["../etc"], "not a safe title"),
    ] {
        let mut args = credential_args(&material, "seed.pub", &out);
        while let Some(at) = args.iter().position(|a| a == "--title") {
            args.drain(at..at + 2);
        }
        for t in titles {
            args.push("--title".into());
            args.push(t.into());
        }
        refused(&args, &[expect]);
    }
    // No title at all: clap says it is required.
    let mut args = credential_args(&material, "seed.pub", &out);
    while let Some(at) = args.iter().position(|a| a == "--title") {
        args.drain(at..at + 2);
    }
    refused(&args, &["--title"]);
    // Validity and names.
    let mut args = credential_args(&material, "seed.pub", &out);
    replace(&mut args, "--valid-days", "0");
    refused(&args, &["--valid-days"]);
    let mut args = credential_args(&material, "seed.pub", &out);
    replace(&mut args, "--name", "a b");
    refused(&args, &["--name"]);
    let mut args = credential_args(&material, "seed.pub", &out);
    replace(&mut args, "--isp", "");
    refused(&args, &["--isp"]);
}

#[test]
fn credential_help_names_every_input() {
    let o = bin().args(["credential", "--help"]).output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--operator-key",
        "--seed-key",
        "--name",
        "--region",
        "--isp",
        "--title",
        "--valid-days",
        "--out",
        "--force",
        "license server",
        "identity_key",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let o = bin().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("credential"));
}

/// A seed configuration on loopback for the binary, over `media`.
fn seed_toml(material: &Material, media: &Path, credential: &Path, trackers: &[String]) -> PathBuf {
    let quote = |p: PathBuf| format!("{:?}", p.to_str().unwrap());
    let text = format!(
        "name = \"seed-cli\"\n\
         quic_listen = \"127.0.0.1:0\"\n\
         http_listen = \"127.0.0.1:0\"\n\
         identity_key = {}\n\
         credential = {}\n\
         license_public_keys = [{}]\n\
         origin_public_keys = [{}]\n\
         origin = {}\n\
         titles = [\"{}\"]\n\
         drain_timeout_s = 1\n\
         [tracker]\n\
         addresses = [{}]\n\
         announce_interval_s = 1\n",
        quote(material.path("seed.key")),
        quote(credential.to_owned()),
        quote(material.path("license.pub")),
        quote(material.path("origin.pub")),
        quote(media.to_owned()),
        serve_common::TITLE,
        trackers
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let path = material.path("seed.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn serve_refuses_a_credential_minted_for_another_key() {
    let material = Material::new();
    let media = tempfile::tempdir().unwrap();
    // Minted for another seed's key.
    let other = SigningKeyPair::from_seed(&[9; 32]);
    std::fs::write(
        material.path("other.pub"),
        loaves_proto::keys::public_key_to_pem(&other.verifying_key()).unwrap(),
    )
    .unwrap();
    let credential = material.path("other.credential");
    assert!(
        run_bin(&credential_args(&material, "other.pub", &credential))
            .status
            .success()
    );
    let config = seed_toml(&material, media.path(), &credential, &[]);
    let o = bin()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("other.credential") && err.contains("identity_key"),
        "{err}"
    );
}

/// A tracker stand-in on 127.0.0.1 that checks the seed's hello (the
/// credential verifies and names the connection's key) and records the
/// registrations.
async fn recording_tracker() -> (u16, Arc<Mutex<Vec<pb::SeedRegistration>>>) {
    let identity = PeerIdentity::new(&SigningKeyPair::from_seed(&[42; 32])).unwrap();
    let tls = identity.server_config(loaves_proto::ALPN_TRACKER).unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let sink = recorded.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let key = peerwire::connection_peer_key(&connection).unwrap();
                let timeout = Duration::from_secs(5);
                let mut hello = false;
                // The session stream: the hello, then each registration.
                let Ok((mut send, mut recv)) = connection.accept_bi().await else {
                    return;
                };
                loop {
                    let Ok(Some(request)) = framing::read_message::<pb::TrackerRequest, _>(
                        &mut recv,
                        65536,
                        Duration::from_secs(120),
                    )
                    .await
                    else {
                        return;
                    };
                    match request.kind {
                        Some(pb::tracker_request::Kind::Hello(pb::TrackerHello {
                            credential: Some(pb::tracker_hello::Credential::SeedCredential(bytes)),
                        })) => {
                            let credential = serve_common::verifier()
                                .verify_seed(&bytes, UnixSeconds::now())
                                .unwrap();
                            assert_eq!(credential.peer_key, key);
                            hello = true;
                        }
                        Some(pb::tracker_request::Kind::RegisterSeed(registration)) if hello => {
                            sink.lock().unwrap().push(registration);
                        }
                        _ => return,
                    }
                    let ack = pb::TrackerResponse {
                        kind: Some(pb::tracker_response::Kind::Ack(pb::Ack {
                            interval_s: 1,
                            ..Default::default()
                        })),
                    };
                    if framing::write_message(&mut send, &ack, 65536, timeout)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_registers_with_a_tracker_named_by_host_name() {
    let material = Material::new();
    let media = tempfile::tempdir().unwrap();
    serve_common::TitleWriter::create(media.path(), serve_common::TITLE, &["720p"], 2, 1000, false);
    let credential = material.path("seed.credential");
    let o = run_bin(&credential_args(&material, "seed.pub", &credential));
    assert!(o.status.success(), "{}", stderr(&o));
    let (port, registrations) = recording_tracker().await;
    let config = seed_toml(
        &material,
        media.path(),
        &credential,
        &[format!("localhost:{port}")],
    );
    let log = material.path("seed.log");
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while registrations.lock().unwrap().len() < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "seed exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "no registration (and re-announce) at localhost:{port}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = registrations.lock().unwrap()[0].clone();
    assert_eq!(first.swarms.len(), 1);
    assert_eq!(first.swarms[0].title, serve_common::TITLE);
    // Graceful stop on SIGTERM.
    let status = tokio::task::block_in_place(|| {
        loaves_testkit::process::terminate_blocking(&mut child, Duration::from_secs(15))
    })
    .expect("no exit after SIGTERM");
    assert!(status.success(), "exit {status}");
}

/// `serve` without any LOAVES_SEED_* variable of the test's environment.
fn bare_serve() -> Command {
    let mut command = bin();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOAVES_SEED_") {
            command.env_remove(name);
        }
    }
    command.arg("serve");
    command
}

#[test]
fn serve_print_config_commented_is_the_defaults_in_full() {
    let o = bare_serve()
        .args(["print-config", "--commented"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    loaves_testkit::text::assert_mentions(
        "--commented",
        &text,
        &[
            "# Precedence: built-in defaults, then this file, then the environment,",
            "LOAVES_SEED_<SECTION>__<FIELD>",
            "[origin_fetch]",
            "#drain_timeout_s = 10",
        ],
    );
    let defaults = edge_seed::serve::SeedConfig::default();
    assert_eq!(
        edge_seed::serve::SeedConfig::from_toml(&text).unwrap(),
        defaults
    );
    let uncommented = loaves_service::config::uncomment_defaults(&text);
    assert_eq!(
        edge_seed::serve::SeedConfig::from_toml(&uncommented).unwrap(),
        defaults
    );
}

#[test]
fn serve_print_config_shows_file_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.toml");
    std::fs::write(
        &file,
        "name = \"from-file\"\ndrain_timeout_s = 3\n[capacity]\nmax_connections = 10\n",
    )
    .unwrap();
    let o = bare_serve()
        .arg("--config")
        .arg(&file)
        .args(["--max-connections", "30", "print-config"])
        .env("LOAVES_SEED_CAPACITY__MAX_CONNECTIONS", "20")
        .env("LOAVES_SEED_TRACKERS", "tracker-0:4433,tracker-1:4433")
        .env("LOAVES_SEED_DRAIN_TIMEOUT_S", "4")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let printed =
        edge_seed::serve::SeedConfig::from_toml(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(printed.name, "from-file");
    assert_eq!(printed.drain_timeout_s, 4, "environment over file");
    assert_eq!(
        printed.capacity.max_connections, 30,
        "flag over environment"
    );
    assert_eq!(
        printed.tracker.addresses,
        ["tracker-0:4433", "tracker-1:4433"],
        "the older variable name"
    );

    let o = bare_serve()
        .arg("print-config")
        .env("LOAVES_SEED_TRACKERS", "a:1")
        .env("LOAVES_SEED_TRACKER__ADDRESSES", "b:1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("both set tracker.addresses"),
        "{}",
        stderr(&o)
    );
}
