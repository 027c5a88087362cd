#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A stock player reads the SDK's local endpoint: ffmpeg reads the init and
//! media segments of a rendition from it over HTTP (still CENC-encrypted,
//! decrypted by ffmpeg's mp4 demuxer with the content key) and its decoded
//! frames equal the clear sample's; the endpoint proxies ClearKey license
//! requests with the session's token.
//!
//! ffmpeg 5.1's HLS and DASH demuxers do not decrypt CENC (its HLS demuxer
//! only knows AES-128 and SAMPLE-AES key files), so ffmpeg reads the
//! segment URLs listed in the endpoint's media playlist through its
//! `concat:` protocol instead of the playlist itself.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::stack;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// ffmpeg's per-frame MD5s of the video of `input` (comment lines dropped).
fn frame_md5(input: &str, key: Option<&str>) -> Vec<String> {
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-v", "error"]);
    if let Some(key) = key {
        command.args(["-decryption_key", key]);
    }
    command.args([
        "-protocol_whitelist",
        "concat,file,http,tcp",
        "-i",
        input,
        "-map",
        "0:v",
        "-f",
        "framemd5",
        "-",
    ]);
    common::framemd5(&mut command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_the_endpoint_and_clearkey_requests_are_proxied() {
    if !common::have_ffmpeg() {
        eprintln!("ffmpeg missing: skipped");
        return;
    }
    let stack = stack(false).await;
    let session = stack.viewer("stock", stack.options(false)).await;
    let key = stack.content_key("sd");

    // The player's ClearKey request, through the endpoint, gets the key.
    let kid = b64url(&key.kid.0);
    let (status, body) = common::clearkey_request(&session, &kid).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("\"k\":\"{}\"", b64url(key.key.as_bytes()))),
        "{body}"
    );

    // The DASH manifest is served too.
    let mpd = reqwest::get(session.dash_url()).await.unwrap();
    assert_eq!(mpd.status(), 200);
    assert!(mpd.text().await.unwrap().contains("<MPD"));

    // ffmpeg reads what the endpoint's media playlist lists, over HTTP.
    let base = format!("http://{}/video_360p", session.player_addr());
    let playlist = reqwest::get(format!("{base}/media.m3u8"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        playlist.contains("#EXT-X-MAP:URI=\"init.mp4\""),
        "{playlist}"
    );
    let segments: Vec<String> = playlist
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(segments.len(), 10);
    let key_hex = hex(key.key.as_bytes());
    let clear_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../edge-seed/testdata/sample/video_360p")
        .display()
        .to_string();
    let mut frames = 0;
    for segment in segments {
        // One fragment at a time after the init segment, as a player's
        // source buffer receives them.
        let url = format!("concat:{base}/init.mp4|{base}/{segment}");
        let clear = format!("concat:{clear_dir}/init.mp4|{clear_dir}/{segment}");
        let key_hex = key_hex.clone();
        let (through_sdk, clear) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                (frame_md5(&url, Some(&key_hex)), frame_md5(&clear, None))
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!clear.is_empty());
        assert_eq!(through_sdk, clear, "{segment}: decoded frames differ");
        frames += clear.len();
    }
    assert!(frames > 100, "{frames} frames");
    let stats = session.stats();
    assert_eq!(stats.segments_delivered, 10);
    assert_eq!(stats.segments_rejected, 0);
    session.close().await.unwrap();
}
