#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CDN client against real HTTP servers on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use loaves_client_sdk::cdn::{CdnClient, CdnConfig, CdnError};
use loaves_client_sdk::scheduler::ByteRange;

fn object() -> Vec<u8> {
    (0..10_000u32).map(|i| (i % 253) as u8).collect()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Honours `Range: bytes=a-b`.
async fn ranged(headers: HeaderMap) -> Response {
    common::ranged(object(), &headers)
}

fn client(bases: Vec<String>, max_body_bytes: u64) -> CdnClient {
    CdnClient::new(CdnConfig {
        base_urls: bases.iter().map(|b| b.parse().unwrap()).collect(),
        request_timeout: Duration::from_millis(800),
        max_body_bytes,
    })
    .unwrap()
}

#[tokio::test]
async fn whole_objects_and_byte_ranges() {
    let addr = serve(Router::new().route("/t/720p/7.m4s", get(ranged))).await;
    let cdn = client(vec![format!("http://{addr}/t")], 1 << 20);
    assert_eq!(cdn.fetch("720p/7.m4s", None).await.unwrap(), object());
    let tail = cdn
        .fetch(
            "720p/7.m4s",
            Some(ByteRange {
                start: 9_000,
                end: 10_000,
            }),
        )
        .await
        .unwrap();
    assert_eq!(&tail[..], &object()[9_000..]);
}

#[tokio::test]
async fn fails_over_to_the_next_cdn() {
    let broken = serve(Router::new().route(
        "/{*path}",
        get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
    ))
    .await;
    let good = serve(Router::new().route("/s.m4s", get(ranged))).await;
    // A closed port too: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cdn = client(
        vec![
            format!("http://{closed}"),
            format!("http://{broken}"),
            format!("http://{good}"),
        ],
        1 << 20,
    );
    assert_eq!(cdn.fetch("s.m4s", None).await.unwrap(), object());
    // The one that worked is tried first from now on.
    assert_eq!(cdn.fetch("s.m4s", None).await.unwrap(), object());
}

#[tokio::test]
async fn server_ignoring_range_is_sliced_locally() {
    let addr = serve(Router::new().route("/s", get(|| async { object() }))).await;
    let cdn = client(vec![format!("http://{addr}")], 1 << 20);
    let part = cdn
        .fetch(
            "s",
            Some(ByteRange {
                start: 100,
                end: 200,
            }),
        )
        .await
        .unwrap();
    assert_eq!(&part[..], &object()[100..200]);
}

#[tokio::test]
async fn wrong_range_oversize_missing_and_stalled_are_errors() {
    let lying = serve(Router::new().route(
        "/s",
        get(|| async {
            (
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_RANGE, "bytes 0-9/100")],
                vec![0u8; 10],
            )
        }),
    ))
    .await;
    let cdn = client(vec![format!("http://{lying}")], 1 << 20);
    let err = cdn
        .fetch("s", Some(ByteRange { start: 50, end: 60 }))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CdnError::AllFailed(e) if matches!(**e, CdnError::WrongRange { .. })),
        "{err}"
    );

    let big = serve(Router::new().route("/s", get(ranged))).await;
    let small_cap = client(vec![format!("http://{big}")], 1_000);
    let err = small_cap.fetch("s", None).await.unwrap_err();
    assert!(
        matches!(&err, CdnError::AllFailed(e) if matches!(**e, CdnError::TooLarge { .. })),
        "{err}"
    );

    let err = small_cap.fetch("missing", None).await.unwrap_err();
    assert!(matches!(err, CdnError::Status { status: 404, .. }), "{err}");

    let stalled = serve(Router::new().route(
        "/s",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    ))
    .await;
    let cdn = client(vec![format!("http://{stalled}")], 1 << 20);
    let started = std::time::Instant::now();
    let err = cdn.fetch("s", None).await.unwrap_err();
    assert!(
        matches!(&err, CdnError::AllFailed(e) if matches!(**e, CdnError::Transport { .. })),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
