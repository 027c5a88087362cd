//! The HTTP role: the seed as origin for a CDN (or for players directly in
//! a demo), plus `/metrics` and `/healthz`.
//!
//! `GET /TITLE/...` serves the packaged presentation in the packager's
//! layout: `master.m3u8`, `manifest.mpd`, `RENDITION/media.m3u8`,
//! `RENDITION/init.mp4`, `RENDITION/seg_NNNNN.m4s` and
//! `RENDITION/manifest.lvm`. Segments and init segments are served only
//! after verification against the signed manifest (the same store as the
//! peer wire); every response carries an `ETag` (the SHA-256 of the bytes)
//! and a `Cache-Control` suited to a CDN in front: segments are immutable,
//! live manifests and playlists expire within a second. Single byte ranges
//! (`bytes=a-b`, `bytes=a-`, `bytes=-n`) get `206`; unsatisfiable ones `416`.
//! At capacity the answer is `503` with `Retry-After`, at once.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use loaves_proto::manifest::sha256;
use tokio::sync::Semaphore;

use super::metrics::Metrics;
use super::peer::UploadSlot;
use super::store::{Store, StoreError};

/// State of the HTTP role.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Segments and manifests.
    pub store: Arc<Store>,
    /// Series.
    pub metrics: Metrics,
    /// Upload slots (shared with the peer wire).
    pub uploads: Arc<Semaphore>,
    /// Set while draining: `/healthz` answers 503 so load balancers move on.
    pub draining: Arc<AtomicBool>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/{title}/{*path}", get(object))
        .with_state(state)
}

async fn healthz(State(state): State<HttpState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A single byte range from a `Range` header, resolved against `total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) Range header: the whole object.
    Whole,
    /// A satisfiable range.
    Partial(Range<u64>),
    /// A syntactically valid range outside the object.
    Unsatisfiable,
}

/// Parses a `Range` header value (RFC 9110, one range; several ranges or
/// other units are treated as no range, which the RFC allows).
pub fn parse_range(value: Option<&str>, total: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.is_empty(), last.is_empty()) {
        (true, true) => return RangeRequest::Whole,
        (true, false) => {
            // Suffix: the last N bytes.
            let Ok(n) = last.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            if n == 0 || total == 0 {
                return RangeRequest::Unsatisfiable;
            }
            total.saturating_sub(n)..total
        }
        (false, _) => {
            let Ok(start) = first.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            let end = if last.is_empty() {
                total
            } else {
                let Ok(last) = last.parse::<u64>() else {
                    return RangeRequest::Whole;
                };
                if last < start {
                    return RangeRequest::Whole;
                }
                last.saturating_add(1).min(total)
            };
            if start >= total {
                return RangeRequest::Unsatisfiable;
            }
            start..end
        }
    };
    RangeRequest::Partial(range)
}

fn etag_of(digest: &[u8]) -> String {
    let mut etag = String::with_capacity(2 + 2 * 16);
    etag.push('"');
    etag.push_str(&hex::encode(&digest[..16.min(digest.len())]));
    etag.push('"');
    etag
}

fn content_type(path: &str) -> &'static str {
    if path.ends_with(".m3u8") {
        "application/vnd.apple.mpegurl"
    } else if path.ends_with(".mpd") {
        "application/dash+xml"
    } else if path.ends_with(".m4s") || path.ends_with(".mp4") {
        "video/mp4"
    } else {
        "application/octet-stream"
    }
}

fn status_for(error: &StoreError) -> StatusCode {
    match error {
        StoreError::UnknownTitle | StoreError::UnknownRendition | StoreError::UnknownSegment(_) => {
            StatusCode::NOT_FOUND
        }
        StoreError::Origin(super::origin::OriginError::NotFound(_)) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn plain(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

async fn object(
    State(state): State<HttpState>,
    Path((title, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !state.store.serves_title(&title) || !path.split('/').all(super::safe_name) {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(slot) = UploadSlot::try_take(&state.uploads, &state.metrics) else {
        state.metrics.refused.with_label_values(&["uploads"]).inc();
        state
            .metrics
            .requests
            .with_label_values(&["http", "busy"])
            .inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy\n",
        )
            .into_response();
    };
    let result = lookup(&state, &title, &path).await;
    let (bytes, etag, cache_control) = match result {
        Ok(found) => found,
        Err(error) => {
            let status = status_for(&error);
            state
                .metrics
                .requests
                .with_label_values(&[
                    "http",
                    if status == StatusCode::NOT_FOUND {
                        "not_found"
                    } else {
                        "error"
                    },
                ])
                .inc();
            return plain(status, "unavailable\n");
        }
    };
    let mut response_headers = HeaderMap::new();
    let text = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    response_headers.insert(header::ETAG, text(&etag));
    response_headers.insert(header::CACHE_CONTROL, text(cache_control));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        state
            .metrics
            .requests
            .with_label_values(&["http", "not_modified"])
            .inc();
        return (StatusCode::NOT_MODIFIED, response_headers).into_response();
    }
    let total = bytes.len() as u64;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        total,
    );
    let (status, body) = match range {
        RangeRequest::Whole => (StatusCode::OK, bytes),
        RangeRequest::Partial(range) => {
            response_headers.insert(
                header::CONTENT_RANGE,
                text(&format!("bytes {}-{}/{total}", range.start, range.end - 1)),
            );
            // Within `bytes` by construction.
            (
                StatusCode::PARTIAL_CONTENT,
                bytes.slice(range.start as usize..range.end as usize),
            )
        }
        RangeRequest::Unsatisfiable => {
            response_headers.insert(header::CONTENT_RANGE, text(&format!("bytes */{total}")));
            state
                .metrics
                .requests
                .with_label_values(&["http", "bad_range"])
                .inc();
            return (StatusCode::RANGE_NOT_SATISFIABLE, response_headers).into_response();
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&["http", "ok"])
        .inc();
    let body = MeteredBody {
        bytes: body,
        sent: 0,
        counter: state
            .metrics
            .bytes_served
            .with_label_values(&[title.as_str(), "http"]),
        _slot: slot,
    };
    (status, response_headers, Body::new(body)).into_response()
}

async fn lookup(
    state: &HttpState,
    title: &str,
    path: &str,
) -> Result<(Bytes, String, &'static str), StoreError> {
    const IMMUTABLE: &str = "public, max-age=31536000, immutable";
    const LIVE: &str = "public, max-age=1";
    const VOD: &str = "public, max-age=60";
    let store = &state.store;
    match path.split_once('/') {
        Some((rendition, file)) => {
            if let Some(sequence) = file
                .strip_prefix("seg_")
                .and_then(|f| f.strip_suffix(".m4s"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                let (info, _) = store.segment_info(title, rendition, sequence)?;
                let bytes = store.segment(title, rendition, sequence).await?;
                return Ok((bytes, etag_of(&info.sha256), IMMUTABLE));
            }
            let live = store.is_live(title, rendition)?;
            let ttl = Duration::from_secs(if live { 1 } else { 60 });
            match file {
                crate::package::MANIFEST_FILE => {
                    let (bytes, _) = store.manifest_file(title, rendition)?;
                    let etag = etag_of(&sha256(&bytes));
                    Ok((bytes, etag, if live { LIVE } else { VOD }))
                }
                "init.mp4" => {
                    let bytes = store.aux(&format!("{title}/{path}"), ttl).await?;
                    store.verify_init(title, rendition, &bytes)?;
                    Ok((bytes.clone(), etag_of(&sha256(&bytes)), IMMUTABLE))
                }
                "media.m3u8" => {
                    let bytes = store.aux(&format!("{title}/{path}"), ttl).await?;
                    Ok((
                        bytes.clone(),
                        etag_of(&sha256(&bytes)),
                        if live { LIVE } else { VOD },
                    ))
                }
                _ => Err(StoreError::UnknownSegment(0)),
            }
        }
        None => match path {
            "master.m3u8" | "manifest.mpd" => {
                let bytes = store
                    .aux(&format!("{title}/{path}"), Duration::from_secs(1))
                    .await?;
                Ok((bytes.clone(), etag_of(&sha256(&bytes)), LIVE))
            }
            _ => Err(StoreError::UnknownSegment(0)),
        },
    }
}

/// A response body over shared bytes, sent in 64 KiB frames; counts the
/// bytes actually handed to the connection and holds an upload slot until
/// the response is done (or dropped by a client that went away).
struct MeteredBody {
    bytes: Bytes,
    sent: u64,
    counter: prometheus::IntCounter,
    _slot: UploadSlot,
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.counter.inc_by(self.sent);
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.bytes.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.bytes.len().min(64 * 1024);
        let frame = self.bytes.split_to(take);
        self.sent += take as u64;
        Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Partial(0..10));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Partial(90..100));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Partial(90..100));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), Partial(0..100));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), Partial(50..100));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Whole);
    }
}
