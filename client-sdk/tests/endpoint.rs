#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The local player endpoint is reachable by every web page the user opens:
//! it answers only to its own address as `Host` (so a DNS-rebinding page,
//! which reaches it under its own name, is refused), serves a page's
//! cross-origin requests only for origins the app allowed (never with a
//! wildcard), refuses cross-site fetches without such an origin, and
//! forwards ClearKey license requests (content keys) to nobody else.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{TITLE, stack};
use loaves_client_sdk::Session;
use tokio::io::AsyncWriteExt;

const APP: &str = "https://app.example";

/// A raw HTTP/1.1 request, so that `Host` and the browser headers are
/// exactly what a hostile page's browser would send; the status and the
/// response head.
async fn raw(
    session: &Session,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = if method == "POST" {
        "{\"kids\":[],\"type\":\"temporary\"}"
    } else {
        ""
    };
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    let response = loaves_testkit::http::exchange(
        session.player_addr(),
        request.as_bytes(),
        Duration::from_secs(30),
    )
    .await;
    (response.status, response.head.to_lowercase())
}

async fn session(stack: &common::Stack, allowed: &[&str]) -> Session {
    let loaves = stack
        .options(false)
        .allowed_origins(allowed.iter().copied())
        .build()
        .unwrap();
    loaves
        .open(TITLE, stack.entitlement("endpoint"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_host_is_answered() {
    let stack = stack(false).await;
    let session = session(&stack, &[]).await;
    let own = session.player_addr().to_string();
    let port = session.player_addr().port();
    let (status, _) = raw(&session, "GET", "/master.m3u8", &[("host", &own)]).await;
    assert_eq!(status, 200);
    // A DNS-rebinding page: the browser connects to 127.0.0.1 but names
    // the attacker's host, on the endpoint's port.
    for host in [
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        "evil.example".to_owned(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        for path in ["/master.m3u8", "/video_360p/seg_00000.m4s", "/manifest.mpd"] {
            let (status, head) = raw(&session, "GET", path, &[("host", &host)]).await;
            assert_eq!(
                status,
                StatusCode::MISDIRECTED_REQUEST.as_u16(),
                "{host}{path}"
            );
            assert!(!head.contains("access-control-allow-origin"), "{head}");
        }
        let (status, _) = raw(&session, "POST", "/clearkey/license", &[("host", &host)]).await;
        assert_eq!(status, 421, "{host}");
    }
    let (status, _) = raw(&session, "GET", "/master.m3u8", &[]).await;
    assert_eq!(status, 421, "no Host at all");
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_cross_site_fetches_are_refused() {
    let stack = stack(false).await;
    let session = session(&stack, &[]).await;
    let own = session.player_addr().to_string();
    for (path, method) in [
        ("/master.m3u8", "GET"),
        ("/video_360p/init.mp4", "GET"),
        ("/clearkey/license", "POST"),
        ("/clearkey/license", "OPTIONS"),
    ] {
        let (status, head) = raw(
            &session,
            method,
            path,
            &[("host", &own), ("origin", "http://evil.example")],
        )
        .await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(!head.contains("access-control-allow-origin"), "{head}");
        // `null` (sandboxed frames, files) is an origin like any other.
        let (status, _) = raw(
            &session,
            method,
            path,
            &[("host", &own), ("origin", "null")],
        )
        .await;
        assert_eq!(status, 403, "{method} {path} from null");
    }
    // A foreign page's <video src> sends no Origin, but the browser says
    // it is cross-site: it cannot make the SDK fetch anything.
    let (status, _) = raw(
        &session,
        "GET",
        "/video_360p/seg_00000.m4s",
        &[("host", &own), ("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(status, 403);
    // A native player sends neither and is served, with no CORS header.
    let (status, head) = raw(&session, "GET", "/video_360p/init.mp4", &[("host", &own)]).await;
    assert_eq!(status, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_is_served_and_named() {
    let stack = stack(false).await;
    let session = session(&stack, &[APP]).await;
    let own = session.player_addr().to_string();
    let (status, head) = raw(
        &session,
        "GET",
        "/master.m3u8",
        &[("host", &own), ("origin", APP)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(!head.contains("access-control-allow-origin: *"), "{head}");
    let (status, head) = raw(
        &session,
        "OPTIONS",
        "/clearkey/license",
        &[
            ("host", &own),
            ("origin", APP),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert!(head.contains("access-control-allow-methods"), "{head}");
    // Another origin is still refused.
    let (status, _) = raw(
        &session,
        "GET",
        "/master.m3u8",
        &[("host", &own), ("origin", "https://app.example.evil")],
    )
    .await;
    assert_eq!(status, 403);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_range_ends_are_clamped_not_refused() {
    let stack = stack(false).await;
    let session = session(&stack, &[]).await;
    let own = session.player_addr().to_string();
    let (status, head) = raw(
        &session,
        "GET",
        "/video_360p/init.mp4",
        &[("host", &own), ("range", "bytes=0-18446744073709551615")],
    )
    .await;
    assert_eq!(status, 206, "{head}");
    assert!(head.contains("content-range: bytes 0-"), "{head}");
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_keep_the_player_out() {
    let stack = stack(false).await;
    let session = session(&stack, &[]).await;
    let own = session.player_addr().to_string();
    // A local process holds connections with requests it never finishes.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(session.player_addr())
            .await
            .unwrap();
        stream
            .write_all(b"GET /master.m3u8 HTTP/1.1\r\nhost: ")
            .await
            .unwrap();
        held.push(stream);
    }
    let (status, _) = raw(&session, "GET", "/master.m3u8", &[("host", &own)]).await;
    assert_eq!(status, 200, "the player is served meanwhile");
    drop(held);
    session.close().await.unwrap();
}
