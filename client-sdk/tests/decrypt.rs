#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `decrypt` option: with it on, the player endpoint serves clear CMAF
//! that a player without any key decodes to the clear sample's frames
//! (ffmpeg, no `-decryption_key`), for `cenc` and `cbcs`; the store (what
//! peers are served) still holds the packaged ciphertext; a segment whose
//! key the license lacks is an HTTP error, never ciphertext.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Stack, TITLE, stack_with};
use loaves_client_sdk::Session;
use loaves_proto::manifest::Scheme;

fn sample_dir(rendition: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../edge-seed/testdata/sample")
        .join(rendition)
}

/// ffmpeg's per-frame MD5s of every stream of the file `input`, decoded
/// without any key (comment lines dropped).
fn frame_md5(input: &Path) -> Vec<String> {
    common::framemd5(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(input)
            .args(["-map", "0", "-f", "framemd5", "-"]),
    )
}

async fn get(url: &str) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(30), reqwest::get(url))
        .await
        .expect("endpoint answers in time")
        .unwrap()
}

async fn decrypting_session(stack: &Stack, account: &str, max_height: u32) -> Session {
    let loaves = stack.options(false).decrypt(true).build().unwrap();
    loaves
        .open(TITLE, stack.entitlement_up_to(account, max_height))
        .await
        .unwrap()
}

/// Reads `rendition` through the endpoint (playlist, init, every segment)
/// into one clear file and checks it decodes like the clear sample.
async fn plays_clear(stack: &Stack, session: &Session, rendition: &str, work: &Path) -> usize {
    let name = common::r(rendition);
    let base = format!("http://{}/{rendition}", session.player_addr());
    let playlist = get(&format!("{base}/media.m3u8"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!playlist.contains("#EXT-X-KEY"), "{playlist}");
    let segments: Vec<String> = playlist
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!segments.is_empty());
    let init = get(&format!("{base}/init.mp4"))
        .await
        .bytes()
        .await
        .unwrap();
    for protected in [&b"encv"[..], b"enca", b"sinf", b"pssh"] {
        assert!(
            !init.windows(4).any(|w| w == protected),
            "{rendition}: clear init still has {}",
            String::from_utf8_lossy(protected)
        );
    }
    let mut through_sdk = init.to_vec();
    let mut clear = std::fs::read(sample_dir(rendition).join("init.mp4")).unwrap();
    let packaged = stack.packaged_sha256(rendition);
    for (i, segment) in segments.iter().enumerate() {
        let response = get(&format!("{base}/{segment}")).await;
        assert_eq!(response.status(), 200, "{rendition}/{segment}");
        let bytes = response.bytes().await.unwrap();
        assert!(
            !bytes.windows(4).any(|w| w == b"senc"),
            "{rendition}/{segment}: senc left in a clear segment"
        );
        through_sdk.extend_from_slice(&bytes);
        clear.extend(std::fs::read(sample_dir(rendition).join(segment)).unwrap());
        // What the store holds, and so what peers are served, is still the
        // packaged ciphertext.
        let stored = session.segment(&name, i as u64).await.unwrap();
        assert_eq!(loaves_proto::manifest::sha256(&stored), packaged[i + 1]);
        assert_ne!(stored, bytes);
    }
    // Clear CMAF decodes as one file (no decryption involved, so ffmpeg's
    // multi-fragment CENC trouble does not apply).
    let (a, b) = (work.join("sdk.mp4"), work.join("clear.mp4"));
    std::fs::write(&a, &through_sdk).unwrap();
    std::fs::write(&b, &clear).unwrap();
    let (got, expected) = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || (frame_md5(&a), frame_md5(&b))),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "{rendition}: decoded frames differ");
    expected.len()
}

async fn decrypted_endpoint_decodes_like_the_clear_sample(scheme: Scheme) {
    if !common::have_ffmpeg() {
        eprintln!("ffmpeg missing: skipped");
        return;
    }
    let stack = stack_with(false, scheme).await;
    let session = decrypting_session(&stack, "clear-player", 0).await;
    let work = tempfile::tempdir().unwrap();
    let video = plays_clear(&stack, &session, "video_360p", work.path()).await;
    let audio = plays_clear(&stack, &session, "audio", work.path()).await;
    assert!(
        video > 100 && audio > 100,
        "{video} video, {audio} audio frames"
    );
    // Playlists carry no DRM signalling.
    let master = get(&session.player_url()).await.text().await.unwrap();
    assert!(!master.contains("KEY"), "{master}");
    let mpd = get(&session.dash_url()).await.text().await.unwrap();
    assert!(
        mpd.contains("<MPD") && !mpd.contains("ContentProtection"),
        "{mpd}"
    );
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cenc_is_decrypted_for_a_player_without_drm() {
    decrypted_endpoint_decodes_like_the_clear_sample(Scheme::Cenc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbcs_is_decrypted_for_a_player_without_drm() {
    decrypted_endpoint_decodes_like_the_clear_sample(Scheme::Cbcs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_without_its_key_is_an_error_not_ciphertext() {
    let stack = stack_with(false, Scheme::Cenc).await;
    // Entitled up to 360p: the license has no key for the 720p rendition.
    let session = decrypting_session(&stack, "sd-only", 360).await;
    let base = format!("http://{}", session.player_addr());
    let allowed = get(&format!("{base}/video_360p/seg_00000.m4s")).await;
    assert_eq!(allowed.status(), 200);
    let refused = get(&format!("{base}/video_720p/seg_00000.m4s")).await;
    assert_eq!(refused.status(), 403);
    let message = refused.text().await.unwrap();
    let kid = stack.content_key("hd").kid.0;
    let kid_hex: String = kid.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        message.contains("no key") && message.contains(&kid_hex),
        "{message}"
    );
    // Ranged requests are refused alike.
    let ranged = tokio::time::timeout(
        Duration::from_secs(30),
        reqwest::Client::new()
            .get(format!("{base}/video_720p/seg_00001.m4s"))
            .header("range", "bytes=0-99")
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ranged.status(), 403);
    session.close().await.unwrap();
}
