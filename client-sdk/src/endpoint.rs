//! The local player endpoint: HTTP on 127.0.0.1 (random port) serving the
//! presentation to any stock HLS or DASH player.
//!
//! - `GET /master.m3u8`, `GET /manifest.mpd`: as the CDN published them
//!   (a live MPD is fetched again at each request: it changes with every
//!   segment)
//!   (fetched once at `open`).
//! - `GET /NAME/media.m3u8`: VOD, as the CDN published it; live, rebuilt at
//!   each request from the verified manifest (a sliding window of the
//!   newest segments, `EXT-X-ENDLIST` once the final chunk arrived), so a
//!   player is never offered a segment the SDK could not verify.
//! - `GET /NAME/init.mp4`: the init segment, verified against the manifest.
//! - `GET /NAME/seg_NNNNN.m4s`: the segment, pulled through the rendition's
//!   scheduler (the request moves its playhead) and verified before a single
//!   byte is sent. Segments stay CENC-encrypted: the player's DRM module
//!   decrypts. With [`crate::LoavesBuilder::decrypt`] (weaker: see there) the
//!   endpoint decrypts verified segments itself and serves clear CMAF
//!   (init segment, segments, playlists without key tags, MPD without
//!   `ContentProtection`); a segment whose key the license lacks is a
//!   `403`, one that cannot be decrypted a `502`, never ciphertext.
//! - Init and media segments honour single `Range: bytes=` requests.
//! - `POST /clearkey/license`: the player's W3C ClearKey license request,
//!   forwarded to the license server's ClearKey endpoint with the session's
//!   newest token as bearer credential (base64url of the encoded token).
//!
//! **Who may ask.** The endpoint is reachable by every web page the user
//! opens, and it hands out the title's content keys (through the ClearKey
//! proxy) and, with the decrypt option, clear media. So:
//! - the `Host` header must be exactly the address the endpoint bound
//!   (`127.0.0.1:PORT`): a DNS-rebinding page reaches it under its own name
//!   and is refused (421);
//! - a request with an `Origin` (every cross-origin read and every POST
//!   from a page) is served only if that origin is one the app configured
//!   ([`crate::LoavesBuilder::allowed_origins`], default none), and CORS
//!   headers name that origin only, never `*`;
//! - a request a browser marks as coming from another site
//!   (`Sec-Fetch-Site: cross-site` / `same-site`) without such an origin is
//!   refused too, so a foreign page cannot even make the SDK fetch
//!   segments. Native players send neither header and are served.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use loaves_cmaf::decrypt::{DecryptError, decrypt_segment};
use loaves_http::range::unsatisfied_content_range;
use loaves_http::{HttpServer, Limits, RangeRequest, parse_range};
use loaves_proto::names::RenditionName;

use crate::error::Error;
use crate::lock;
use crate::session::presentation::{parse_segment_file, segment_file};
use crate::session::{Rendition, Shared};
use crate::track::{TrackHandle, WantError};

/// Largest ClearKey request body forwarded.
const MAX_LICENSE_REQUEST: usize = 16 * 1024;
/// Bound on a forwarded license request.
const LICENSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Segments in a live playlist's window (HLS asks for at least three
/// target durations; a few more let a player start further back).
const LIVE_WINDOW: usize = 6;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    tracks: Arc<HashMap<RenditionName, TrackHandle>>,
    http: reqwest::Client,
    /// The one `Host` value accepted: the bound address.
    host: Arc<str>,
}

/// The endpoint serves one app's player: a few connections, from this host.
/// A request may wait for its segment up to the track's own bound, so the
/// request timeout sits above it; half-sent and idle connections are shed
/// as on every server (a local page or process could hold them).
fn endpoint_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_connections = 64;
    limits.max_connections_per_ip = 64;
    limits.request_timeout = Some(crate::track::WANT_TIMEOUT + Duration::from_secs(5));
    limits.shutdown_grace = Duration::from_secs(2);
    limits
}

/// Binds 127.0.0.1:0 and serves until the session is cancelled.
pub(crate) async fn start(
    shared: Arc<Shared>,
    tracks: Arc<HashMap<RenditionName, TrackHandle>>,
) -> Result<SocketAddr, Error> {
    let http = reqwest::Client::builder()
        .timeout(LICENSE_TIMEOUT)
        // Below the license server's idle timeout (10 s by default): a
        // pooled connection is dropped here before the server closes it,
        // not reused in the instant it does.
        .pool_idle_timeout(PROXY_POOL_IDLE)
        .build()
        .map_err(|e| Error::setup("the ClearKey proxy's HTTP client", e))?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| Error::setup("the player endpoint", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::setup("the player endpoint", e))?;
    let cancel = shared.cancel.clone();
    let state = AppState {
        shared: shared.clone(),
        tracks,
        http,
        host: Arc::from(addr.to_string()),
    };
    let router = Router::new()
        .route("/master.m3u8", get(master))
        .route("/manifest.mpd", get(dash))
        .route("/clearkey/license", post(clearkey))
        .route("/{rendition}/{file}", get(rendition_file))
        .layer(DefaultBodyLimit::max(MAX_LICENSE_REQUEST))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    let server = HttpServer::builder(router)
        .limits(endpoint_limits())
        .build()
        .map_err(|e| Error::setup("the player endpoint's limits", e))?;
    shared.spawn(async move {
        server.run(listener, cancel.cancelled_owned()).await;
    });
    Ok(addr)
}

/// Who may ask (see the module documentation): the exact `Host`, an
/// allowed `Origin` or none, and no cross-site fetch without one. Answers
/// CORS preflights for allowed origins and names the origin (never `*`) on
/// their responses.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == &*state.host);
    if !host_ok {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this endpoint answers only to its own address\n",
        )
            .into_response();
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let allowed = match &origin {
        Some(origin) => {
            let allowed = state
                .shared
                .config
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin));
            if !allowed {
                return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
            }
            Some(origin.clone())
        }
        None => {
            let cross_site = headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == "cross-site" || v == "same-site");
            if cross_site {
                return (
                    StatusCode::FORBIDDEN,
                    "cross-site request without an allowed origin\n",
                )
                    .into_response();
            }
            None
        }
    };
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = allowed
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.append(header::VARY, HeaderValue::from_static("origin"));
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, range"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        } else {
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("content-range, content-length"),
            );
        }
    }
    response
}

fn body(content_type: &'static str, bytes: Bytes) -> Response {
    let mut response = bytes.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn master(State(state): State<AppState>) -> Response {
    body(
        "application/vnd.apple.mpegurl",
        state.shared.master_playlist.clone(),
    )
}

async fn dash(State(state): State<AppState>) -> Response {
    let shared = &state.shared;
    // A live MPD changes with every segment, so the copy fetched at open is
    // stale at once: pass the current one through (the segments it lists
    // are still verified one by one against the signed manifest).
    // After the event the copy from the start is stale too (a dynamic MPD
    // of the first segments), so a title that was live keeps passing through.
    let live = shared.renditions.values().any(|r| !r.manifest().is_final())
        || shared
            .dash_manifest
            .as_ref()
            .is_some_and(|mpd| is_dynamic_mpd(mpd));
    if live
        && let Ok(mpd) = shared
            .cdn
            .fetch(&format!("{}/manifest.mpd", shared.title), None)
            .await
    {
        let mpd = if shared.config.decrypt {
            without_content_protection(&mpd)
        } else {
            mpd
        };
        return body("application/dash+xml", mpd);
    }
    match &shared.dash_manifest {
        Some(mpd) => body("application/dash+xml", mpd.clone()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The body, or the part of it a `Range` header asks for (the tree's one
/// Range parser, `loaves_http::parse_range`).
fn ranged(content_type: &'static str, bytes: Bytes, headers: &HeaderMap) -> Response {
    let len = bytes.len() as u64;
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match parse_range(asked, len) {
        RangeRequest::Partial(range) => match range.to_usize_range() {
            Some(part) => {
                let mut response = body(content_type, bytes.slice(part));
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(value) = HeaderValue::from_str(&range.content_range(len)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                response
            }
            None => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        },
        RangeRequest::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&unsatisfied_content_range(len)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
        _ => {
            let mut response = body(content_type, bytes);
            response
                .headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            response
        }
    }
}

async fn rendition_file(
    State(state): State<AppState>,
    Path((rendition, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(rendition) = RenditionName::new(rendition) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(info) = state.shared.renditions.get(&rendition) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match file.as_str() {
        "media.m3u8" if info.live => {
            let mut response = body(
                "application/vnd.apple.mpegurl",
                Bytes::from(live_playlist(info)),
            );
            // Players poll it: never let anything cache it.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        "media.m3u8" if info.clear_init.is_some() => body(
            "application/vnd.apple.mpegurl",
            without_hls_keys(&info.media_playlist),
        ),
        "media.m3u8" => body("application/vnd.apple.mpegurl", info.media_playlist.clone()),
        "init.mp4" => match &info.clear_init {
            Some(clear) => ranged("video/mp4", Bytes::from(clear.bytes.clone()), &headers),
            None => ranged("video/mp4", info.init.clone(), &headers),
        },
        name => {
            let (Some(sequence), Some(track)) =
                (parse_segment_file(name), state.tracks.get(&rendition))
            else {
                return StatusCode::NOT_FOUND.into_response();
            };
            match track.want(sequence).await {
                // `want` returns verified bytes only: decryption never
                // sees bytes the manifest did not vouch for.
                Ok(bytes) if info.clear_init.is_some() => {
                    match decrypted(&state.shared, info, bytes).await {
                        Ok(clear) => ranged("video/iso.segment", clear, &headers),
                        Err(response) => response,
                    }
                }
                Ok(bytes) => ranged("video/iso.segment", bytes, &headers),
                Err(WantError::NotFound) => StatusCode::NOT_FOUND.into_response(),
                Err(WantError::Busy) => StatusCode::TOO_MANY_REQUESTS.into_response(),
                Err(WantError::Timeout) => StatusCode::GATEWAY_TIMEOUT.into_response(),
                Err(WantError::Closed) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
    }
}

/// Decrypts a verified segment for the player (the bytes in the store,
/// which peers are served from, stay encrypted). Off the async workers:
/// a segment is up to a few megabytes of AES.
async fn decrypted(
    shared: &Arc<Shared>,
    info: &Rendition,
    bytes: Bytes,
) -> Result<Bytes, Response> {
    let Some(clear_init) = info.clear_init.clone() else {
        return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    };
    let shared = shared.clone();
    let work = tokio::task::spawn_blocking(move || {
        decrypt_segment(&bytes, &clear_init, |kid| shared.content_key(kid))
    });
    match work.await {
        Ok(Ok(clear)) => Ok(Bytes::from(clear)),
        Ok(Err(DecryptError::NoKey(kid))) => Err((
            StatusCode::FORBIDDEN,
            format!(
                "the session's license carries no key for key id {}: the segment cannot be decrypted\n",
                hex_id(&kid)
            ),
        )
            .into_response()),
        Ok(Err(DecryptError::Mp4(e))) => Err((
            StatusCode::BAD_GATEWAY,
            format!("the segment cannot be decrypted: {e}\n"),
        )
            .into_response()),
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HLS playlist without `EXT-X-KEY` / `EXT-X-SESSION-KEY` tags (for
/// clear media: a player would otherwise try to set up DRM).
pub(crate) fn without_hls_keys(playlist: &[u8]) -> Bytes {
    let Ok(text) = std::str::from_utf8(playlist) else {
        return Bytes::copy_from_slice(playlist);
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let tag = line.trim_start();
        if tag.starts_with("#EXT-X-KEY:") || tag.starts_with("#EXT-X-SESSION-KEY:") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Bytes::from(out)
}

/// Whether `mpd` is a dynamic (live) presentation.
fn is_dynamic_mpd(mpd: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(mpd) else {
        return false;
    };
    // The attribute of the root element, before its first child.
    text.find("<MPD")
        .map(|start| &text[start..])
        .and_then(|root| root.find('>').map(|end| &root[..end]))
        .is_some_and(|root| root.contains("type=\"dynamic\""))
}

/// A DASH MPD without `ContentProtection` elements (self-closing or with
/// content), and without the lines that held only them.
pub(crate) fn without_content_protection(mpd: &[u8]) -> Bytes {
    const OPEN: &str = "<ContentProtection";
    const CLOSE: &str = "</ContentProtection>";
    let Ok(text) = std::str::from_utf8(mpd) else {
        return Bytes::copy_from_slice(mpd);
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let element = &rest[start..];
        let Some(tag_end) = element.find('>') else {
            // Malformed: keep the rest as it is.
            out.push_str(element);
            rest = "";
            break;
        };
        let end = if element[..tag_end].ends_with('/') {
            tag_end + 1
        } else {
            match element.find(CLOSE) {
                Some(close) => close + CLOSE.len(),
                None => element.len(),
            }
        };
        rest = &element[end..];
    }
    out.push_str(rest);
    let cleaned: Vec<&str> = out.lines().filter(|line| !line.trim().is_empty()).collect();
    let mut joined = cleaned.join("\n");
    joined.push('\n');
    Bytes::from(joined)
}

/// A live media playlist from the verified manifest: the newest
/// [`LIVE_WINDOW`] segments, the key tags of their key periods as the
/// origin published them, `EXT-X-ENDLIST` once the manifest is final.
fn live_playlist(rendition: &Rendition) -> String {
    use std::fmt::Write;
    // Lock order: key tags, then the manifest (as the follower takes them).
    let keys = lock(&rendition.key_lines).clone();
    let manifest = rendition.manifest();
    let skip = manifest.segments().len().saturating_sub(LIVE_WINDOW);
    let window: Vec<_> = manifest.segments().skip(skip).copied().collect();
    let ended = manifest.is_final();
    drop(manifest);
    let longest = window
        .iter()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(rendition.typical_ms());
    let target = longest.div_ceil(1000).max(1);
    let first = window.first().map_or(0, |s| s.sequence);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:7\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"init.mp4\"\n");
    let mut period = None;
    // Clear media for the player: no key tags.
    let with_keys = rendition.clear_init.is_none();
    for segment in &window {
        if with_keys && period != Some(segment.key_period) {
            if let Some(tags) = keys.get(&segment.key_period) {
                out.push_str(tags);
                out.push('\n');
            }
            period = Some(segment.key_period);
        }
        let _ = writeln!(
            out,
            "#EXTINF:{:.3},",
            f64::from(segment.duration_ms) / 1000.0
        );
        let _ = writeln!(out, "{}", segment_file(segment.sequence));
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// How long the ClearKey proxy keeps an idle connection to the license
/// server for reuse.
const PROXY_POOL_IDLE: Duration = Duration::from_secs(5);

async fn clearkey(State(state): State<AppState>, request: Bytes) -> Response {
    let Some(url) = state.shared.config.clearkey_url.clone() else {
        return (StatusCode::NOT_FOUND, "no ClearKey endpoint configured").into_response();
    };
    let send = || {
        state
            .http
            .post(url.clone())
            .header(
                header::AUTHORIZATION,
                format!(
                    "Bearer {}",
                    URL_SAFE_NO_PAD.encode(&state.shared.credentials.current().token)
                ),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(request.clone())
            .send()
    };
    // Once more when no answer came at all (a kept-alive connection the
    // server closed as it was reused, a reset): the request only reads
    // keys, so a repeat is harmless, and the player's module would
    // otherwise see a failed license request.
    let forwarded = match send().await {
        Err(e) if e.is_request() || e.is_connect() => send().await,
        other => other,
    };
    let Ok(answer) = forwarded else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if answer
        .content_length()
        .is_some_and(|n| n > MAX_LICENSE_REQUEST as u64)
    {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    match answer.bytes().await {
        Ok(bytes) if bytes.len() <= MAX_LICENSE_REQUEST => {
            let mut response = body("application/json", bytes);
            *response.status_mut() = status;
            response
        }
        _ => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{without_content_protection, without_hls_keys};

    #[test]
    fn key_tags_and_content_protection_are_removed() {
        let hls = b"#EXTM3U\n#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI=\"x\"\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg_00000.m4s\n";
        assert_eq!(
            &without_hls_keys(hls)[..],
            b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg_00000.m4s\n"
        );
        let mpd = "<MPD>\n  <AdaptationSet>\n    <ContentProtection a=\"1\"/>\n    <ContentProtection b=\"2\"><cenc:pssh>AA</cenc:pssh>\n    </ContentProtection>\n    <Representation id=\"v\"/>\n  </AdaptationSet>\n</MPD>\n";
        assert_eq!(
            std::str::from_utf8(&without_content_protection(mpd.as_bytes())).unwrap(),
            "<MPD>\n  <AdaptationSet>\n    <Representation id=\"v\"/>\n  </AdaptationSet>\n</MPD>\n"
        );
    }
}
