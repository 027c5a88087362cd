//! The dashboard in a real browser: headless Chromium (Debian's package)
//! screenshots /dashboard of a tracker fed with real announces over QUIC,
//! and every chart area of the PNG must show drawn data.
//!
//! Skips with a notice when Chromium is absent, unless
//! `LOAVES_REQUIRE_CHROMIUM=1` or `CI=true` (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loaves_proto::{UnixSeconds, pb};
use tracker::server::FrontEndOptions;

/// Chart rectangles (x, y, width, height), as laid out in dashboard.html.
const CHARTS: [(&str, u32, u32, u32, u32); 7] = [
    ("sources", 16, 140, 620, 240),
    ("rebuffer", 644, 140, 620, 240),
    ("titles", 16, 396, 620, 240),
    ("isps", 644, 396, 620, 240),
    ("swarms", 16, 652, 620, 240),
    ("transit", 644, 652, 620, 240),
    ("connects", 16, 908, 620, 240),
];

fn chromium() -> Option<PathBuf> {
    let candidate = std::env::var_os("LOAVES_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    candidate.exists().then_some(candidate)
}

fn required() -> bool {
    std::env::var("LOAVES_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn screenshot(browser: &Path, url: &str, out: &Path, profile: &Path) {
    let mut child = Command::new(browser)
        .args(loaves_testkit::process::HEADLESS_CHROMIUM)
        .args(["--hide-scrollbars", "--force-device-scale-factor=1"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", out.display()))
        .args(["--window-size=1280,1160", "--virtual-time-budget=5000", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

fn decode(path: &Path) -> Image {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let rgb = buffer[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Image {
        width: info.width,
        height: info.height,
        rgb,
    }
}

impl Image {
    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        self.rgb[(y * self.width + x) as usize]
    }
}

/// Pixels of a rectangle that are not the canvas's white, and those that are
/// strongly coloured (series colours; text and grid lines are grey).
fn ink(image: &Image, (x0, y0, w, h): (u32, u32, u32, u32)) -> (u32, u32) {
    let (mut non_white, mut coloured) = (0, 0);
    // Stay 8 px inside the rounded corners and shadow.
    for y in y0 + 8..y0 + h - 8 {
        for x in x0 + 8..x0 + w - 8 {
            let [r, g, b] = image.at(x, y);
            if r < 245 || g < 245 || b < 245 {
                non_white += 1;
            }
            let (max, min) = (r.max(g).max(b), r.min(g).min(b));
            if max - min > 60 {
                coloured += 1;
            }
        }
    }
    (non_white, coloured)
}

/// Connection reports of a mix of NAT pairs (a third of the `ed-ed` ones
/// failing, and every `ed-ed` one).
fn connect_reports(i: usize, j: usize) -> Vec<pb::ConnectReport> {
    use pb::{ConnectResult, NatClass};
    let classes = [
        NatClass::EndpointIndependent,
        NatClass::Open,
        NatClass::EndpointDependent,
    ];
    (0..3)
        .map(|k| {
            let (local, remote) = (classes[(i + k) % 3], classes[(j + k) % 3]);
            let result = if local == NatClass::EndpointDependent && remote == local {
                ConnectResult::Failed
            } else if k == 2 {
                ConnectResult::Punched
            } else {
                ConnectResult::Direct
            };
            pb::ConnectReport {
                local: local as i32,
                remote: remote as i32,
                result: result as i32,
                millis: 200 + 150 * k as u32,
            }
        })
        .collect()
}

async fn feed(tracker: &TestTracker) -> Vec<tracker::client::TrackerConnection> {
    let titles = ["big-buck-bunny", "sintel", "tears-of-steel"];
    let localities = [
        ("eu", "isp-a"),
        ("eu", "isp-b"),
        ("us", "isp-c"),
        ("us", "isp-d"),
    ];
    let mut connections = Vec::new();
    for (i, title) in titles.iter().enumerate() {
        for (j, (region, isp)) in localities.iter().enumerate().take(2 + i) {
            let viewer = Viewer::new(region, isp);
            let connection = viewer.connect(tracker, title).await.unwrap();
            connections.push((i, j, *title, connection));
        }
    }
    let start = UnixSeconds::now().0;
    for round in 1..=6u64 {
        for (i, j, title, connection) in &connections {
            let weight = (*i as u64 + 1) * (*j as u64 + 1);
            let mut message = announce(title, "720p", 5000 + (*i * 10 + *j) as u16);
            message.stats = Some(pb::StatsDelta {
                bytes_from_peers: 400_000 * weight * round * (3 - *i as u64) / (1 + *j as u64 % 2),
                bytes_from_seeds: 150_000 * weight,
                bytes_from_cdn: 300_000 * weight * (7 - round),
                bytes_uploaded: 300_000 * weight,
                bytes_cross_isp: 60_000 * weight * round,
                bytes_cross_region: 20_000 * weight,
                rebuffer_ms: 40 * (round % 3) * weight,
                rebuffer_count: u32::from(round % 3 != 0),
                startup_ms: if round == 1 { 600 + 100 * *j as u32 } else { 0 },
                played_ms: 5_000,
                cdn_only: false,
                connects: connect_reports(*i, *j),
            });
            connection.announce(message).await.unwrap();
        }
        let peers = tracker.running.shared.with_book(|b| b.total_peers()) as u64;
        tracker
            .running
            .shared
            .with_stats(|s| s.sample(UnixSeconds(start + round * 5), peers));
    }
    // Kept open by the caller while the browser looks.
    connections.into_iter().map(|(_, _, _, c)| c).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_charts_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if required() {
            panic!(
                "chromium not found at /usr/bin/chromium (LOAVES_REQUIRE_CHROMIUM=1 or CI=true)"
            );
        }
        eprintln!("NOTICE: skipping the dashboard browser test: /usr/bin/chromium not installed");
        return;
    };
    let options = FrontEndOptions {
        // No background samples: the history is the one fed below.
        housekeeping_interval_s: 3600,
        ..FrontEndOptions::default()
    };
    let tracker = TestTracker::start(options).await;
    let _connections = feed(&tracker).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dashboard.png");
    let profile = dir.path().join("profile");
    let url = format!("http://{}/dashboard", tracker.http);
    let (browser_path, out_path) = (browser.clone(), out.clone());
    tokio::task::spawn_blocking(move || screenshot(&browser_path, &url, &out_path, &profile))
        .await
        .unwrap();
    if let Ok(keep) = std::env::var("LOAVES_KEEP_SCREENSHOT") {
        std::fs::copy(&out, keep).unwrap();
    }

    let image = decode(&out);
    assert_eq!((image.width, image.height), (1280, 1160));
    // The layout is where the test expects it: page background between charts.
    let gap = image.at(640, 300);
    assert!(
        gap.iter().all(|c| (230..=250).contains(c)),
        "gap pixel {gap:?}"
    );
    for (name, x, y, w, h) in CHARTS {
        let area = (w - 16) * (h - 16);
        let (non_white, coloured) = ink(&image, (x, y, w, h));
        eprintln!("{name}: {non_white} drawn pixels, {coloured} coloured of {area}");
        assert!(
            non_white > area / 50,
            "chart {name} looks blank ({non_white} of {area})"
        );
        assert!(
            coloured > 400,
            "chart {name} shows no data ({coloured} coloured pixels)"
        );
    }
    // The header status says the page fetched the JSON (not "error: …"):
    // the status text is light grey on the dark header, so check the header
    // is there and dark.
    let header = image.at(600, 10);
    assert!(header.iter().all(|c| *c < 60), "header pixel {header:?}");
}
