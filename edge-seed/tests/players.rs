//! Stock web players play the packager's output with ClearKey in Debian's
//! headless Chromium.
//!
//! Each test packages the committed sample with `cenc` (local development
//! keys), serves the output, `tests/browser/player.html` and the players
//! (dash.js, hls.js, shaka-player, installed from npm by `npm ci` into
//! `tests/browser/node_modules`) over HTTP on 127.0.0.1, and answers the
//! W3C ClearKey license requests the players send to `/clearkey/license`,
//! the URL the packager wrote in the MPD and the HLS keys. The page POSTs
//! its verdict to `/verdict`: playback reached a few seconds with decoded
//! frames, media keys attached and no fatal error.
//!
//! Players and what they are given: dash.js and shaka-player play the
//! MPD, hls.js plays the HLS multivariant playlist; each fetches keys from
//! the license endpoint (no clear keys in the page). dash.js ignores the
//! `encrypted` event and takes DRM from the MPD, hls.js builds W3C `keyids`
//! requests from each EXT-X-KEY's KEYID: see tests/browser/player.html for
//! why. shaka-player cannot do ClearKey over HLS (see below).
//!
//! Skips with a notice when Chromium or npm is missing, unless
//! `LOAVES_REQUIRE_BROWSER=1` or `CI=true` (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use edge_seed::PackageSummary;
use edge_seed::playlist::base64;
use loaves_proto::manifest::Scheme;
use serde_json::{Value, json};

/// Seconds of playback a page must reach.
const TARGET_SECONDS: u32 = 5;
/// The page's own give-up time, and the test's (longer) hard deadline.
const PAGE_GIVE_UP: Duration = Duration::from_secs(60);
const TEST_DEADLINE: Duration = Duration::from_secs(90);
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

/// One Chromium at a time: the machine has two cores and each test plays
/// video in real time.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// `npm ci` once per test process.
static NPM: std::sync::Mutex<Option<Result<(), String>>> = std::sync::Mutex::new(None);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Player scripts the page loads; their presence means `npm ci` ran.
const PLAYER_FILES: [&str; 3] = [
    "dashjs/dist/modern/umd/dash.all.min.js",
    "hls.js/dist/hls.min.js",
    "shaka-player/dist/shaka-player.compiled.js",
];

fn required() -> bool {
    std::env::var("LOAVES_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn chromium() -> Option<PathBuf> {
    let candidate = std::env::var_os("LOAVES_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    candidate.exists().then_some(candidate)
}

/// Runs `npm ci` in tests/browser unless the players are already there
/// (scripts/test.d/players.sh normally did it).
fn ensure_players(npm: &Path) -> Result<(), String> {
    let mut done = NPM.lock().unwrap();
    if let Some(result) = done.as_ref() {
        return result.clone();
    }
    let modules = browser_dir().join("node_modules");
    let result = if PLAYER_FILES.iter().all(|f| modules.join(f).is_file()) {
        Ok(())
    } else {
        eprintln!("players: npm ci in {}", browser_dir().display());
        run_bounded(
            Command::new(npm)
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(browser_dir()),
            NPM_CI_TIMEOUT,
        )
        .and_then(
            |()| match PLAYER_FILES.iter().find(|f| !modules.join(f).is_file()) {
                Some(f) => Err(format!("npm ci did not install {f}")),
                None => Ok(()),
            },
        )
    };
    *done = Some(result.clone());
    result
}

fn run_bounded(command: &mut Command, timeout: Duration) -> Result<(), String> {
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {command:?}: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("{command:?} exited with {status}"))
            };
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} did not finish in {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Chromium and the players, or `None` after a notice when the test may
/// skip.
fn setup() -> Option<PathBuf> {
    let missing = |what: &str| {
        if required() {
            panic!("{what} (LOAVES_REQUIRE_BROWSER=1 or CI=true)");
        }
        eprintln!("NOTICE: skipping the stock player test: {what}");
        None
    };
    let Some(browser) = chromium() else {
        return missing("chromium not found at /usr/bin/chromium (apt-get install chromium)");
    };
    let modules_ready = PLAYER_FILES
        .iter()
        .all(|f| browser_dir().join("node_modules").join(f).is_file());
    if !modules_ready {
        let Some(npm) = on_path("npm") else {
            return missing("npm not found to install the players (scripts/test.d/players.sh)");
        };
        if let Err(e) = ensure_players(&npm) {
            return missing(&format!("could not install the players: {e}"));
        }
    }
    Some(browser)
}

/// Unpadded base64url (RFC 4648 §5), as W3C ClearKey wants.
fn base64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

struct Server {
    out: PathBuf,
    /// (kid, key), base64url.
    keys: Vec<(String, String)>,
    license_requests: AtomicUsize,
    license_kids: std::sync::Mutex<Vec<String>>,
    verdict: tokio::sync::mpsc::Sender<Value>,
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript",
        Some("mpd") => "application/dash+xml",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mp4" | "m4s") => "video/mp4",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    }
}

/// `rest` under `root`, refusing anything but plain relative components.
fn under(root: &Path, rest: &str) -> Option<PathBuf> {
    let rel = Path::new(rest);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(rel))
}

async fn file(State(s): State<Arc<Server>>, request: Request) -> Response {
    let path = request.uri().path();
    let file = if path == "/player.html" {
        Some(browser_dir().join("player.html"))
    } else if let Some(rest) = path.strip_prefix("/players/") {
        under(&browser_dir().join("node_modules"), rest)
    } else if let Some(rest) = path.strip_prefix("/out/") {
        under(&s.out, rest)
    } else {
        None
    };
    let Some(file) = file else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&file))], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// W3C ClearKey license: `{"kids": [...]}` in, the JSON Web Key set of the
/// requested key ids out.
async fn license(State(s): State<Arc<Server>>, body: String) -> Response {
    s.license_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let kids: Vec<String> = request["kids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    s.license_kids.lock().unwrap().extend(kids.iter().cloned());
    let keys: Vec<Value> = s
        .keys
        .iter()
        .filter(|(kid, _)| kids.contains(kid))
        .map(|(kid, k)| json!({"kty": "oct", "kid": kid, "k": k}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"keys": keys, "type": "temporary"}).to_string(),
    )
        .into_response()
}

async fn verdict(State(s): State<Arc<Server>>, body: String) -> StatusCode {
    match serde_json::from_str::<Value>(&body) {
        Ok(v) => {
            let _ = s.verdict.try_send(v);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// The ClearKey table of a packaging run: every (kid, key) it used.
fn clear_keys(summary: &PackageSummary) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for r in &summary.renditions {
        for (period, kid) in &r.kids {
            let k = key(&r.track_type, *period);
            assert_eq!(&k.kid.0, kid, "the test's key derivation drifted");
            keys.push((base64url(kid), base64url(k.key.as_bytes())));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Kills Chromium and every process it started (its own process group).
struct Chromium(std::process::Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromium(browser: &Path, url: &str, dir: &Path) -> Chromium {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
    let child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        // Its own group, so the renderer and zygote die with it.
        .process_group(0)
        .spawn()
        .expect("start chromium");
    Chromium(child)
}

/// Packages the sample with cenc, plays `manifest` (relative to the output)
/// with `player`, and returns the page's verdict and the license requests.
async fn play(player: &str, manifest: &str) -> Option<(Value, usize, Vec<String>)> {
    let browser = tokio::task::spawn_blocking(setup).await.unwrap()?;
    let _one = BROWSER.lock().await;
    let packaged = tokio::task::spawn_blocking(|| package_sample(&options(Scheme::Cenc)))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let server = Arc::new(Server {
        out: packaged.out.clone(),
        keys: clear_keys(&packaged.summary),
        license_requests: AtomicUsize::new(0),
        license_kids: std::sync::Mutex::new(Vec::new()),
        verdict: tx,
    });
    let app = Router::new()
        .route("/clearkey/license", post(license))
        .route("/verdict", post(verdict))
        .fallback(file)
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let url = format!(
        "http://{addr}/player.html?player={player}&src=/out/{manifest}&target={TARGET_SECONDS}&give_up_ms={}",
        PAGE_GIVE_UP.as_millis()
    );
    let run_dir = tempfile::tempdir().unwrap();
    let chromium = start_chromium(&browser, &url, run_dir.path());
    let verdict = tokio::time::timeout(TEST_DEADLINE, rx.recv()).await;
    drop(chromium);
    serving.abort();
    let log = std::fs::read_to_string(run_dir.path().join("chromium.log")).unwrap_or_default();
    let verdict = match verdict {
        Ok(Some(v)) => v,
        _ => {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{player}: no verdict from the page in {TEST_DEADLINE:?}; chromium log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    };
    let kids = server.license_kids.lock().unwrap().clone();
    Some((
        verdict,
        server.license_requests.load(Ordering::SeqCst),
        kids,
    ))
}

/// Asserts the verdict and prints what the browser showed.
fn assert_played(player: &str, manifest: &str, result: (Value, usize, Vec<String>)) {
    let (v, license_requests, kids) = result;
    eprintln!(
        "{player} {} {manifest}: ok={} currentTime={} frames={} dropped={} size={}x{} mediaKeys={} license requests={license_requests} ({} kids)",
        v["version"],
        v["ok"],
        v["currentTime"],
        v["totalVideoFrames"],
        v["droppedVideoFrames"],
        v["videoWidth"],
        v["videoHeight"],
        v["mediaKeys"],
        kids.len(),
    );
    let pretty = serde_json::to_string_pretty(&v).unwrap();
    assert_eq!(
        v["ok"],
        json!(true),
        "{player} did not play {manifest}: {pretty}"
    );
    assert!(
        v["currentTime"].as_f64().unwrap() >= f64::from(TARGET_SECONDS),
        "{pretty}"
    );
    assert!(v["totalVideoFrames"].as_u64().unwrap() > 0, "{pretty}");
    assert_eq!(v["mediaKeys"], json!(true), "{pretty}");
    assert!(v["fatal"].as_array().unwrap().is_empty(), "{pretty}");
    // The keys came from the license endpoint, so the content was really
    // decrypted by the browser's ClearKey CDM.
    assert!(
        license_requests > 0,
        "no ClearKey license request: {pretty}"
    );
    assert!(
        !kids.is_empty(),
        "license requests named no key id: {pretty}"
    );
}

async fn check(player: &str, manifest: &str) {
    if let Some(result) = play(player, manifest).await {
        assert_played(player, manifest, result);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashjs_plays_dash_cenc_with_clearkey() {
    check("dashjs", "manifest.mpd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaka_plays_dash_cenc_with_clearkey() {
    check("shaka", "manifest.mpd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hlsjs_plays_hls_cenc_with_clearkey() {
    check("hlsjs", "master.m3u8").await;
}

// No shaka test over HLS: shaka-player (5.2) maps HLS KEYFORMATs to FairPlay,
// Widevine, PlayReady and WisePlay only, so it refuses the ClearKey
// (`org.w3.clearkey`) and common-system keys with HLS_KEYFORMATS_NOT_SUPPORTED
// (4026) before loading a segment. It plays the same content from the MPD.
