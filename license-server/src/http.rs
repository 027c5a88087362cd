//! Plain HTTP faces: `/metrics` and `/healthz` for operators, and the W3C
//! ClearKey license endpoint for browsers.
//!
//! ClearKey (`POST /clearkey`): the body is the CDM's license request,
//! `{"kids":["<base64url KID>",...],"type":"temporary"}`; the session token
//! from the license goes in `Authorization: Bearer <base64url token>`. The
//! answer is a JWK set, `{"keys":[{"kty":"oct","kid":"..","k":".."}],
//! "type":"temporary"}`, with base64url without padding, holding only the
//! keys of the token's title, of the track types of its renditions, and of
//! key periods up to the lookahead, for a session that is still live.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use loaves_proto::keys::{ContentKeyId, Keyring};
use loaves_proto::token::TokenVerifier;
use serde::{Deserialize, Serialize};

use crate::service::LicenseCore;

/// Most key ids in one ClearKey request.
pub const MAX_CLEARKEY_KIDS: usize = 64;
/// Largest ClearKey request body.
pub const MAX_CLEARKEY_BODY: usize = 16 * 1024;

/// The operator router: `/metrics`, `/healthz`.
pub fn ops_router(core: Arc<LicenseCore>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(core)
}

async fn metrics(State(core): State<Arc<LicenseCore>>) -> Response {
    match core.store.active_sessions(core.now()).await {
        Ok(n) => core.metrics.active_sessions.set(n),
        Err(e) => tracing::warn!(error = %e, "counting active sessions for /metrics"),
    }
    match core.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(core): State<Arc<LicenseCore>>) -> Response {
    // Healthy means the store answers.
    match core.store.active_sessions(core.now()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

#[derive(Debug, Clone)]
struct ClearKeyState {
    core: Arc<LicenseCore>,
    tokens: TokenVerifier,
}

/// The ClearKey router: `POST /clearkey` (and CORS preflight).
pub fn clearkey_router(core: Arc<LicenseCore>) -> Router {
    let keyring: Keyring = [core.license_public_key()].into_iter().collect();
    // The policy's skew, as every other check of this server's tokens: the
    // verifier's default would keep an expired token good for 30 s more.
    let skew = core.policy().max_clock_skew_s;
    let state = ClearKeyState {
        core,
        tokens: TokenVerifier::new(keyring).with_max_clock_skew(skew),
    };
    Router::new()
        .route("/clearkey", post(clearkey).options(preflight))
        .layer(DefaultBodyLimit::max(MAX_CLEARKEY_BODY))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct ClearKeyRequest {
    kids: Vec<String>,
    #[serde(rename = "type", default = "temporary")]
    kind: String,
}

fn temporary() -> String {
    "temporary".to_owned()
}

#[derive(Serialize)]
struct Jwk {
    kty: &'static str,
    kid: String,
    k: String,
}

#[derive(Serialize)]
struct JwkSet {
    keys: Vec<Jwk>,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    response
}

async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

fn refuse(core: &LicenseCore, status: StatusCode, reason: &'static str, message: &str) -> Response {
    core.metrics.denials.with_label_values(&[reason]).inc();
    tracing::info!(reason, "clearkey request refused");
    let body = serde_json::json!({ "error": message }).to_string();
    cors((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The answer when the store fails under a ClearKey request.
fn store_unavailable(core: &LicenseCore, error: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %error, "clearkey: store unavailable");
    refuse(
        core,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_error",
        "store unavailable",
    )
}

fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()
}

async fn clearkey(
    State(state): State<ClearKeyState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let core = &state.core;
    // Taken as a Result so that a body over the limit is refused (and
    // counted) here rather than by the extractor.
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                core,
                StatusCode::PAYLOAD_TOO_LARGE,
                "clearkey_too_large",
                "request body over 16 KiB",
            );
        }
        Err(_) => {
            return refuse(
                core,
                StatusCode::BAD_REQUEST,
                "clearkey_malformed",
                "unreadable request body",
            );
        }
    };
    let now = core.now();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(decode_b64url);
    let Some(token) = token else {
        return refuse(
            core,
            StatusCode::UNAUTHORIZED,
            "clearkey_no_token",
            "missing bearer session token",
        );
    };
    let claims = match state.tokens.verify_any_title(&token, now) {
        Ok(claims) => claims,
        Err(_) => {
            return refuse(
                core,
                StatusCode::UNAUTHORIZED,
                "clearkey_bad_token",
                "session token refused",
            );
        }
    };
    match core.store.session_is_live(&claims.session_id, now).await {
        Ok(true) => {}
        Ok(false) => {
            return refuse(
                core,
                StatusCode::FORBIDDEN,
                "clearkey_session_over",
                "session is over",
            );
        }
        Err(e) => return store_unavailable(core, &e),
    }
    let Ok(request) = serde_json::from_slice::<ClearKeyRequest>(&body) else {
        return refuse(
            core,
            StatusCode::BAD_REQUEST,
            "clearkey_malformed",
            "malformed ClearKey request",
        );
    };
    if request.kind != "temporary" {
        return refuse(
            core,
            StatusCode::BAD_REQUEST,
            "clearkey_malformed",
            "only temporary sessions",
        );
    }
    if request.kids.is_empty() || request.kids.len() > MAX_CLEARKEY_KIDS {
        return refuse(
            core,
            StatusCode::BAD_REQUEST,
            "clearkey_malformed",
            "between 1 and 64 kids",
        );
    }
    let Some(title) = core.catalog().get(&claims.title) else {
        return refuse(
            core,
            StatusCode::FORBIDDEN,
            "unknown_title",
            "unknown title",
        );
    };
    let track_types = title.track_types_of(&claims.renditions);
    let horizon = title
        .current_period(now)
        .saturating_add(core.policy().key_period_lookahead);
    let mut keys = Vec::new();
    for kid in &request.kids {
        let Some(key_id) = decode_b64url(kid)
            .as_deref()
            .and_then(ContentKeyId::from_slice)
        else {
            return refuse(
                core,
                StatusCode::BAD_REQUEST,
                "clearkey_malformed",
                "kid must be 16 bytes, base64url",
            );
        };
        match core.store.key_by_id(&key_id).await {
            Ok(Some((key_title, key)))
                if key_title == claims.title
                    && track_types.contains(key.track_type.as_str())
                    && key.key_period <= horizon =>
            {
                keys.push(Jwk {
                    kty: "oct",
                    kid: URL_SAFE_NO_PAD.encode(key.key_id.0),
                    k: URL_SAFE_NO_PAD.encode(key.key.as_bytes()),
                });
            }
            Ok(_) => {}
            Err(e) => return store_unavailable(core, &e),
        }
    }
    if keys.is_empty() {
        return refuse(
            core,
            StatusCode::FORBIDDEN,
            "clearkey_no_key",
            "no requested key is licensed to this session",
        );
    }
    let body = match serde_json::to_string(&JwkSet {
        keys,
        kind: "temporary",
    }) {
        Ok(body) => body,
        Err(_) => {
            return refuse(
                core,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "encoding",
            );
        }
    };
    tracing::debug!(session = %claims.session_id, "clearkey keys delivered");
    cors(
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
    )
}
