#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The seed's HTTP origin role (from a local-directory origin): segments
//! with ranges, ETag and Cache-Control, conditional requests, manifests,
//! playlists and init segments checked against the manifest; /healthz and
//! /metrics.

mod serve_common;

use serve_common::*;

const SIZE: usize = 30_000;

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_presentation_with_ranges_etags_and_cache_control() {
    edge_seed::serve::origin::install_crypto_provider();
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 3, SIZE, false);
    let origin_dir = media.path().to_str().unwrap().to_owned();
    let seed = start_seed(&config(&origin_dir, &[TITLE])).await;
    let base = format!("http://{}/{TITLE}", seed.http_address);

    // Whole segment.
    let response = get(&format!("{base}/720p/seg_00001.m4s"), &[]).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "video/mp4");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let body = response.bytes().await.unwrap();
    manifest(media.path(), TITLE, "720p")
        .verify_segment(1, &body)
        .unwrap();

    // Ranges.
    let response = get(
        &format!("{base}/720p/seg_00001.m4s"),
        &[("range", "bytes=100-199")],
    )
    .await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 100-199/{SIZE}").as_str()
    );
    assert_eq!(response.bytes().await.unwrap(), body.slice(100..200));
    let response = get(
        &format!("{base}/720p/seg_00001.m4s"),
        &[("range", "bytes=-10")],
    )
    .await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().await.unwrap(), body.slice(SIZE - 10..));
    let response = get(
        &format!("{base}/720p/seg_00001.m4s"),
        &[("range", "bytes=999999-")],
    )
    .await;
    assert_eq!(response.status(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{SIZE}").as_str()
    );

    // Conditional.
    let response = get(
        &format!("{base}/720p/seg_00001.m4s"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(response.status(), 304);

    // Manifest, playlists, init.
    let response = get(&format!("{base}/720p/manifest.lvm"), &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, max-age=60");
    let lvm = response.bytes().await.unwrap();
    assert_eq!(
        lvm,
        std::fs::read(media.path().join(TITLE).join("720p").join("manifest.lvm")).unwrap()
    );
    let response = get(&format!("{base}/master.m3u8"), &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let response = get(&format!("{base}/720p/init.mp4"), &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), "init-720p");

    // Unknown things.
    for path in [
        format!("{base}/720p/seg_00009.m4s"),
        format!("{base}/480p/seg_00000.m4s"),
        format!("http://{}/other/master.m3u8", seed.http_address),
        format!("{base}/720p/secret.txt"),
        format!("{base}/720p/..%2F..%2Fetc%2Fpasswd"),
    ] {
        assert_eq!(get(&path, &[]).await.status(), 404, "{path}");
    }

    // Health and metrics.
    let response = get(&format!("http://{}/healthz", seed.http_address), &[]).await;
    assert_eq!(response.status(), 200);
    let metrics = get(&format!("http://{}/metrics", seed.http_address), &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("loaves_seed_bytes_served_total{protocol=\"http\",title=\"big-buck\"}")
    );
    assert!(metrics.contains("loaves_seed_cache_hits_total{tier=\"memory\"}"));
    assert!(metrics.contains("loaves_seed_origin_fetch_seconds_bucket"));
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_init_segment_is_refused() {
    edge_seed::serve::origin::install_crypto_provider();
    let media = tempfile::tempdir().unwrap();
    TitleWriter::create(media.path(), TITLE, &["720p"], 1, SIZE, false);
    std::fs::write(
        media.path().join(TITLE).join("720p").join("init.mp4"),
        b"evil",
    )
    .unwrap();
    let origin_dir = media.path().to_str().unwrap().to_owned();
    let seed = start_seed(&config(&origin_dir, &[TITLE])).await;
    let response = get(
        &format!("http://{}/{TITLE}/720p/init.mp4", seed.http_address),
        &[],
    )
    .await;
    assert_eq!(response.status(), 502);
    seed.shutdown().await;
}
