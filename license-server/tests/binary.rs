//! The real binary with its development defaults: mint an entitlement with
//! its CLI, get a license, keys and ClearKey keys, then SIGTERM: it drains
//! and exits 0, and its log (at debug level) holds no key, token,
//! entitlement or credential.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{ADMIN, KEK_HEX, Viewer, connect, get_keys, http, open_license};
use loaves_grpc::key_service_client::KeyServiceClient;
use loaves_grpc::license_service_client::LicenseServiceClient;
use loaves_proto::UnixSeconds;
use loaves_testkit::process::{assert_success, terminate};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_license-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_the_settings() {
    let out = Command::new(BIN).arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    loaves_testkit::text::assert_mentions(
        "--help",
        &help,
        &[
            "LOAVES_LICENSE_STORE_URL",
            "LOAVES_LICENSE_KEK",
            "--config",
            "mint-entitlement",
            "print-config",
        ],
    );
    let out = Command::new(BIN)
        .arg("print-config")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    let parsed = license_server::Config::from_toml(&printed).unwrap();
    assert_eq!(parsed, license_server::Config::default());
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The binary without any LOAVES_* variable of the test's environment.
fn bare() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOAVES_LICENSE_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command`, which must fail: what it wrote to standard error.
async fn refused(command: &mut Command) -> String {
    let out = command.output().await.unwrap();
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_config_commented_is_the_defaults_in_full() {
    let out = bare()
        .args(["print-config", "--commented"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    loaves_testkit::text::assert_mentions(
        "--commented",
        &text,
        &[
            "# Precedence: built-in defaults, then this file, then the environment,",
            "LOAVES_LICENSE_<SECTION>__<FIELD>",
            "[store]",
            "#url_file =",
            "keys.admin_token_file",
        ],
    );
    let defaults = license_server::Config::default();
    assert_eq!(license_server::Config::from_toml(&text).unwrap(), defaults);
    // Every default it states is the real one.
    let uncommented = loaves_service::config::uncomment_defaults(&text);
    assert_eq!(
        license_server::Config::from_toml(&uncommented).unwrap(),
        defaults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_config_shows_the_layers_and_no_password() {
    let out = bare()
        .args(["--log", "warn", "print-config"])
        .env(
            "LOAVES_LICENSE_STORE_URL",
            "postgres://loaves:hunter2@db/loaves",
        )
        .env("LOAVES_LICENSE_LIMITS__MAX_IN_FLIGHT", "7")
        .env("LOAVES_LICENSE_LOG", "debug")
        .env("LOAVES_LICENSE_ADMIN_TOKEN", "not-printed")
        .output()
        .await
        .unwrap();
    let text = assert_success("print-config", &out);
    assert!(
        !text.contains("hunter2") && !text.contains("not-printed"),
        "{text}"
    );
    assert!(
        text.contains("postgres://loaves:REDACTED@db/loaves"),
        "{text}"
    );
    let printed = license_server::Config::from_toml(&text).unwrap();
    assert_eq!(printed.limits.max_in_flight, 7, "environment");
    assert_eq!(printed.log, "warn", "the flag over the environment");

    let error = refused(
        bare()
            .arg("print-config")
            .env("LOAVES_LICENSE_LIMITS__MAX_INFLIGHT", "7"),
    )
    .await;
    assert!(
        error.contains("LOAVES_LICENSE_LIMITS__MAX_INFLIGHT") && error.contains("names no setting"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "file-secret-value\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = refused(
        bare()
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--clearkey-listen", "off"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--admin-token-file")
            .arg(&token)
            .env("LOAVES_LICENSE_KEK", KEK_HEX)
            .stdin(Stdio::null()),
    )
    .await;
    assert!(
        error.contains("readable by group or others")
            && error.contains(&token.display().to_string())
            && error.contains("chmod 600"),
        "{error}"
    );
    assert!(!error.contains("file-secret-value"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_then_sigterm_drains_and_logs_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = common::command(
        dir.path(),
        "debug,h2=info,hyper=info,rustls=info,tower=info",
    );
    command.stdout(Stdio::piped());
    let common::Spawned {
        mut child,
        grpc: grpc_addr,
        clearkey,
        cert_pem: pem,
        log: stderr,
        ..
    } = common::spawn(command, dir.path(), false).await;
    let mut stdout = child.stdout.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out).await;
        out
    });
    // The default store and development material were created in data_dir,
    // the folder private to the server, the database files (SQLite's WAL
    // and shared-memory files included) readable by it alone.
    assert!(data.join("license-server.db").exists());
    assert!(data.join("license.pub").exists());
    assert_eq!(mode(&data), 0o700, "data folder");
    for name in [
        "license-server.db",
        "license-server.db-wal",
        "license-server.db-shm",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }

    // An entitlement minted by the CLI with the development signer.
    let minted = Command::new(BIN)
        .arg("mint-entitlement")
        .arg("--key")
        .arg(data.join("entitlement-dev.key"))
        .args([
            "--account",
            "acct-bin",
            "--titles",
            "demo",
            "--max-streams",
            "1",
        ])
        .output()
        .await
        .unwrap();
    let entitlement_b64 = assert_success("mint-entitlement", &minted)
        .trim()
        .to_owned();
    let entitlement = URL_SAFE_NO_PAD.decode(&entitlement_b64).unwrap();

    let channel = connect(grpc_addr, &pem).await;
    let mut viewer = Viewer::new();
    let response = LicenseServiceClient::new(channel.clone())
        .acquire_license(viewer.acquire_request(entitlement.clone(), "demo"))
        .await
        .unwrap()
        .into_inner();
    let keyring = [loaves_proto::keygen::read_public_key(&data.join("license.pub")).unwrap()]
        .into_iter()
        .collect();
    let (license, keys) = open_license(&keyring, &mut viewer, &response, UnixSeconds::now());
    let mut packager = KeyServiceClient::new(channel);
    let refused = get_keys(&mut packager, "demo", &[("hd", 0), ("uhd-none", 0)]).await;
    assert!(refused.is_err(), "unknown track type refused");
    let hd = get_keys(&mut packager, "demo", &[("hd", 0)]).await.unwrap();
    let token = URL_SAFE_NO_PAD.encode(&license.session_token);
    let kids: Vec<String> = keys
        .iter()
        .map(|k| URL_SAFE_NO_PAD.encode(k.key_id.0))
        .collect();
    let body = serde_json::json!({ "kids": kids, "type": "temporary" }).to_string();
    let auth = format!("Bearer {token}");
    let (status, jwks) = http(
        clearkey.expect("a ClearKey listener"),
        "POST",
        "/clearkey",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{jwks}");

    // SIGTERM: drains and exits cleanly.
    let status = terminate(&mut child, Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}");
    let log = stdout.await.unwrap() + &stderr.ended(Duration::from_secs(30)).await;
    eprintln!("server log: {} lines checked", log.lines().count());
    if let Ok(path) = std::env::var("LOAVES_DUMP_LOG") {
        std::fs::write(path, &log).unwrap();
    }
    assert!(log.contains("license server listening"), "{log}");
    assert!(log.contains("session admitted"), "{log}");
    assert!(log.contains("shutting down"), "{log}");

    // Nothing secret in the log, in any usual encoding.
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("admin credential".into(), ADMIN.as_bytes().to_vec()),
        ("entitlement".into(), entitlement.clone()),
        ("session token".into(), license.session_token.clone()),
    ];
    for key in &keys {
        secrets.push((
            format!("content key {}", key.key_id),
            key.key.as_bytes().to_vec(),
        ));
    }
    secrets.push(("packager key".into(), hd[0].key.clone()));
    assert!(!log.contains(KEK_HEX), "KEK in the log");
    assert!(!log.contains(&entitlement_b64), "entitlement in the log");
    for (what, bytes) in &secrets {
        for encoded in [
            hex::encode(bytes),
            STANDARD.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            String::from_utf8_lossy(bytes).into_owned(),
        ] {
            // Short fragments could match by chance; whole values cannot.
            if encoded.len() >= 12 {
                assert!(!log.contains(&encoded), "{what} appears in the log");
            }
        }
    }
}
