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
//! Live: dash.js and shaka-player play the live packager's dynamic MPD
//! while a thread feeds it the sample in real time (looped, decode times
//! restamped), and must play 10 s, past the segments that existed when the
//! page loaded.
//!
//! Skips with a notice when Chromium or npm is missing, unless
//! `LOAVES_REQUIRE_BROWSER=1` or `CI=true` (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        .args(loaves_testkit::process::HEADLESS_CHROMIUM)
        .arg("--autoplay-policy=no-user-gesture-required")
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
    let page = Page {
        player,
        manifest,
        target: TARGET_SECONDS,
        query: "",
        give_up: PAGE_GIVE_UP,
        deadline: TEST_DEADLINE,
    };
    Some(
        run_page(
            &browser,
            &page,
            &packaged.out,
            clear_keys(&packaged.summary),
        )
        .await,
    )
}

/// What the page is asked to play, and for how long.
struct Page<'a> {
    player: &'a str,
    manifest: &'a str,
    /// Seconds the page must play.
    target: u32,
    /// Extra query parameters for player.html (`&name=value...`).
    query: &'a str,
    give_up: Duration,
    deadline: Duration,
}

/// Serves `out` (and the license endpoint with `keys`), runs Chromium on
/// the page, and returns its verdict and the license requests.
async fn run_page(
    browser: &Path,
    page: &Page<'_>,
    out: &Path,
    keys: Vec<(String, String)>,
) -> (Value, usize, Vec<String>) {
    let Page {
        player,
        manifest,
        target,
        query,
        give_up,
        deadline,
    } = *page;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let server = Arc::new(Server {
        out: out.to_owned(),
        keys,
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
        "http://{addr}/player.html?player={player}&src=/out/{manifest}&target={target}&give_up_ms={}{query}",
        give_up.as_millis()
    );
    let run_dir = tempfile::tempdir().unwrap();
    let chromium = start_chromium(browser, &url, run_dir.path());
    let verdict = tokio::time::timeout(deadline, rx.recv()).await;
    drop(chromium);
    serving.abort();
    let log = std::fs::read_to_string(run_dir.path().join("chromium.log")).unwrap_or_default();
    let verdict = match verdict {
        Ok(Some(v)) => v,
        _ => {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{player}: no verdict from the page in {deadline:?}; chromium log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    };
    let kids = server.license_kids.lock().unwrap().clone();
    (
        verdict,
        server.license_requests.load(Ordering::SeqCst),
        kids,
    )
}

/// Asserts the verdict and prints what the browser showed.
fn assert_played(player: &str, manifest: &str, result: (Value, usize, Vec<String>)) {
    let (v, license_requests, kids) = result;
    eprintln!(
        "{player} {} {manifest}: ok={} currentTime={} (playing from {}, {} s played) frames={} dropped={} size={}x{} mediaKeys={} license requests={license_requests} ({} kids)",
        v["version"],
        v["ok"],
        v["currentTime"],
        v["playingAt"],
        v["playedSeconds"],
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
    // Live: seconds actually played, as the page judged (a live player
    // starts near the live edge, anywhere on the timeline).
    let progress = if v["live"] == json!(true) {
        &v["playedSeconds"]
    } else {
        &v["currentTime"]
    };
    assert!(
        progress.as_f64().unwrap() >= f64::from(TARGET_SECONDS),
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

// ---- Live DASH ------------------------------------------------------------

/// The live test's page gives up after this, the test a little later: the
/// whole test stays under a minute.
const LIVE_PAGE_GIVE_UP: Duration = Duration::from_secs(45);
const LIVE_DEADLINE: Duration = Duration::from_secs(50);
/// Seconds the live page must play: more than the burst holds past the
/// presentation delay, so the player must refresh the MPD and play
/// segments packaged after it started.
const LIVE_TARGET_SECONDS: u32 = 10;
/// Segments in the live window (the MPD's timeShiftBufferDepth): 20 s.
const LIVE_WINDOW: usize = 10;
/// Segments written at once before the stream goes real time, as if the
/// encoder had been running: a player joining at once finds a window that
/// covers its presentation delay.
const LIVE_BURST: u64 = 4;
/// The first sample segment fed: mid-sample, so that the event's
/// presentation time 0 is a decode time of 12 s (a
/// `presentationTimeOffset`) and playback crosses the loop (restamped
/// decode times) at segment 10.
const LIVE_FIRST: u64 = 6;
/// The sample's segment duration; segments are fed at this pace.
const LIVE_SEGMENT: Duration = Duration::from_secs(2);

/// One rendition of the sample, looped with restamped `tfdt` (and `mfhd`)
/// so the live timeline keeps going forward as a real encoder's would.
struct Looped {
    name: &'static str,
    init: Vec<u8>,
    segments: Vec<Vec<u8>>,
    decode_times: Vec<u64>,
    /// One pass through `segments`, track timescale.
    span: u64,
}

/// Offsets of the `mfhd` sequence number and of the `tfdt` decode time
/// (with its width) in a media segment.
fn stamps(segment: &[u8]) -> (usize, usize, usize) {
    use edge_seed::boxes::{find, parse_boxes};
    let boxes = parse_boxes(segment, 0).unwrap();
    let moof = find(&boxes, b"moof").unwrap();
    let children = kids(moof);
    let mfhd = find(&children, b"mfhd").unwrap();
    let traf = find(&children, b"traf").unwrap();
    let traf_children = kids(traf);
    let tfdt = find(&traf_children, b"tfdt").unwrap();
    let width = if tfdt.body()[0] == 1 { 8 } else { 4 };
    (
        mfhd.body_offset() as usize + 4,
        tfdt.body_offset() as usize + 4,
        width,
    )
}

impl Looped {
    /// The first `count` segments of the sample's `name`; one pass lasts
    /// until the decode time of segment `count` (or, past the last
    /// segment, one more duration of the last gap).
    fn load(name: &'static str, count: usize) -> Self {
        let dir = sample_dir().join(name);
        let init = std::fs::read(dir.join("init.mp4")).unwrap();
        let read = |i: usize| std::fs::read(dir.join(format!("seg_{i:05}.m4s"))).ok();
        let segments: Vec<Vec<u8>> = (0..count).map(|i| read(i).unwrap()).collect();
        let decode_time = |bytes: &[u8]| {
            let (_, at, width) = stamps(bytes);
            bytes[at..at + width]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        };
        let decode_times: Vec<u64> = segments.iter().map(|s| decode_time(s)).collect();
        let span = match read(count) {
            Some(next) => decode_time(&next) - decode_times[0],
            None => {
                let gap = decode_times[count - 1] - decode_times[count - 2];
                decode_times[count - 1] + gap - decode_times[0]
            }
        };
        Self {
            name,
            init,
            segments,
            decode_times,
            span,
        }
    }

    /// Live segment `n` (0, 1, 2, ...).
    fn segment(&self, n: u64) -> Vec<u8> {
        let count = self.segments.len() as u64;
        let index = (n % count) as usize;
        let mut bytes = self.segments[index].clone();
        let (sequence_at, at, width) = stamps(&bytes);
        let t = self.decode_times[index] + (n / count) * self.span;
        if width == 8 {
            bytes[at..at + 8].copy_from_slice(&t.to_be_bytes());
        } else {
            bytes[at..at + 4].copy_from_slice(&u32::try_from(t).unwrap().to_be_bytes());
        }
        bytes[sequence_at..sequence_at + 4]
            .copy_from_slice(&u32::try_from(n + 1).unwrap().to_be_bytes());
        bytes
    }
}

/// Writes under a name the packager ignores, then renames: it never sees
/// half a segment.
fn publish(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The encoder and the live packager: writes the looped sample into
/// `input` from segment `LIVE_FIRST` on — `LIVE_BURST` segments at once,
/// then one per segment duration of wall time — and polls a `LivePackager` into `out` after each, until
/// `stop` or `limit`. Sends `()` once the first MPD is written. Returns how
/// many segments per rendition were packaged.
fn feed_live(
    input: &Path,
    out: &Path,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<()>,
    limit: Duration,
) -> u64 {
    use edge_seed::keysource::LocalKeySource;
    use edge_seed::live::{LiveEvent, LivePackager};
    use loaves_proto::UnixSeconds;
    use loaves_proto::keys::SigningKeyPair;

    // The audio rendition's 11th segment is a 21 ms tail: loop ten of each.
    let renditions = [Looped::load("video_360p", 10), Looped::load("audio", 10)];
    for r in &renditions {
        let dir = input.join(r.name);
        std::fs::create_dir_all(&dir).unwrap();
        publish(&dir, "init.mp4", &r.init);
    }
    let keys = LocalKeySource::new(SECRET);
    let origin = SigningKeyPair::generate().unwrap();
    let mut live = LivePackager::new(
        input,
        out,
        options(Scheme::Cenc),
        LIVE_WINDOW,
        &keys,
        &origin,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut next = LIVE_FIRST;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
        // Past the burst, a segment is due once its end has passed on the
        // wall clock, counting from the burst.
        let fed = next - LIVE_FIRST;
        let due =
            started + LIVE_SEGMENT * u32::try_from((fed + 1).saturating_sub(LIVE_BURST)).unwrap();
        if std::time::Instant::now() < due {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        for r in &renditions {
            publish(
                &input.join(r.name),
                &format!("seg_{next:05}.m4s"),
                &r.segment(next),
            );
        }
        next += 1;
        if next - LIVE_FIRST < LIVE_BURST {
            continue;
        }
        let events = live.poll(UnixSeconds::now()).unwrap();
        for e in &events {
            if let LiveEvent::Refused { path, reason } = e {
                panic!("live packager refused {}: {reason}", path.display());
            }
        }
        if next - LIVE_FIRST == LIVE_BURST {
            assert!(
                out.join("manifest.mpd").is_file(),
                "no MPD after {events:?}"
            );
            let _ = ready.send(());
        }
    }
    next - LIVE_FIRST
}

/// Plays the live MPD with `player` while a thread feeds the looped sample
/// to the live packager in real time.
async fn play_live(player: &str) -> Option<(Value, usize, Vec<String>)> {
    let browser = tokio::task::spawn_blocking(setup).await.unwrap()?;
    let _one = BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let feeder = {
        let (input, out, stop) = (input.clone(), out.clone(), stop.clone());
        // Bounded on its own too, should the test die before stopping it.
        std::thread::spawn(move || feed_live(&input, &out, &stop, ready_tx, LIVE_DEADLINE))
    };
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    if ready.is_err() {
        // The feeder failed (its panic says why) or never wrote an MPD.
        stop.store(true, Ordering::SeqCst);
        match feeder.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(n) => panic!("no live MPD after {n} segments"),
        }
    }
    // Only period 0: the default options do not rotate keys.
    let keys = ["sd", "audio"]
        .iter()
        .map(|t| {
            let k = key(t, 0);
            (base64url(&k.kid.0), base64url(k.key.as_bytes()))
        })
        .collect();
    let page = Page {
        player,
        manifest: "manifest.mpd",
        target: LIVE_TARGET_SECONDS,
        query: "&live=1",
        give_up: LIVE_PAGE_GIVE_UP,
        deadline: LIVE_DEADLINE,
    };
    let result = run_page(&browser, &page, &out, keys).await;
    stop.store(true, Ordering::SeqCst);
    let fed = tokio::task::spawn_blocking(move || feeder.join())
        .await
        .unwrap()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    eprintln!("{player} live: {fed} segments per rendition fed");
    let mpd = std::fs::read_to_string(out.join("manifest.mpd")).unwrap();
    assert!(mpd.contains("type=\"dynamic\""), "{mpd}");
    assert!(mpd.contains("presentationTimeOffset=\"153600\""), "{mpd}");
    Some(result)
}

/// The stock-player checks, plus: playback went past the burst, into
/// segments the packager wrote while the page played.
fn assert_played_live(player: &str, result: (Value, usize, Vec<String>)) {
    let v = result.0.clone();
    assert_played(player, "live manifest.mpd", result);
    let burst_end = (LIVE_BURST * LIVE_SEGMENT.as_secs()) as f64;
    assert!(
        v["playedSeconds"].as_f64().unwrap() >= f64::from(LIVE_TARGET_SECONDS)
            && v["currentTime"].as_f64().unwrap() > burst_end,
        "{player} did not play past the first {burst_end} s: {}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    eprintln!("{player} live warnings: {}", v["warnings"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashjs_plays_live_dash_while_it_is_packaged() {
    if let Some(result) = play_live("dashjs").await {
        assert_played_live("dashjs", result);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaka_plays_live_dash_while_it_is_packaged() {
    if let Some(result) = play_live("shaka").await {
        assert_played_live("shaka", result);
    }
}
