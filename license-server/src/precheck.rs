//! The checks tonic would make before a handler runs, made here instead, so
//! that each refusal gets the status gRPC's table gives it and is counted
//! in `denials_total{reason}` like every other refusal.
//!
//! Left to tonic, a request message that is not valid protobuf becomes
//! `INTERNAL` (its codec maps every decode error so) and one above the size
//! limit `OUT_OF_RANGE`; neither reaches a handler, so neither was counted.
//! Per gRPC's status table the first is the client's fault,
//! `INVALID_ARGUMENT`, and the second a limit, `RESOURCE_EXHAUSTED`.
//!
//! The generated service code fixes tonic's codec, so rather than a codec
//! this is a layer in front of the routes: for the license and key service
//! methods it reads the request body (bounded by the size limit; the time
//! it may take is bounded by the call timeout, `limits.grpc.request_timeout_ms`,
//! which tonic applies around the whole call), refuses an oversized message from its length prefix alone
//! (nothing beyond the 5-byte gRPC header is read then), decodes the
//! message once as its method's request type, and hands the buffered body
//! on to tonic unchanged. Unary messages are small (64 KiB by default), so
//! the second decode costs nothing next to a license's signatures.
//! Compressed messages, other paths (health) and other methods are left to
//! tonic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{Request, Response};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use loaves_proto::pb;
use prost::Message;
use tonic::body::Body;

use crate::error::Denial;
use crate::metrics::Metrics;

/// Length of the gRPC message header: compressed flag and 4-byte length.
const HEADER_LEN: usize = 5;

/// Checks the request message of a known method: `Ok` or why not.
type Check = fn(&[u8]) -> Result<(), prost::DecodeError>;

fn check<M: Message + Default>(bytes: &[u8]) -> Result<(), prost::DecodeError> {
    M::decode(bytes).map(drop)
}

/// The methods whose requests are checked, by HTTP/2 path.
fn check_for(path: &str) -> Option<(&'static str, Check)> {
    Some(match path {
        "/loaves.v1.LicenseService/AcquireLicense" => {
            ("acquire", check::<pb::AcquireLicenseRequest>)
        }
        "/loaves.v1.LicenseService/RenewLicense" => ("renew", check::<pb::RenewLicenseRequest>),
        "/loaves.v1.LicenseService/ReleaseSession" => {
            ("release", check::<pb::ReleaseSessionRequest>)
        }
        "/loaves.v1.KeyService/GetContentKeys" => {
            ("get_content_keys", check::<pb::GetContentKeysRequest>)
        }
        _ => return None,
    })
}

/// The layer, added to the gRPC server.
#[derive(Debug, Clone)]
pub struct PrecheckLayer {
    max_message: usize,
    metrics: Metrics,
}

impl PrecheckLayer {
    /// Refuses messages over `max_message` bytes; counts refusals in
    /// `metrics`.
    pub fn new(max_message: usize, metrics: Metrics) -> Self {
        Self {
            max_message,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for PrecheckLayer {
    type Service = Precheck<S>;

    fn layer(&self, inner: S) -> Precheck<S> {
        Precheck {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`PrecheckLayer`] makes.
#[derive(Debug, Clone)]
pub struct Precheck<S> {
    inner: S,
    layer: PrecheckLayer,
}

/// What reading a request body gave.
enum Read {
    /// The whole body.
    Body(Bytes),
    /// The refusal to send instead.
    Refused(Denial),
}

/// Reads a unary request body: at most one header and `max` bytes of
/// message (plus whatever arrived in the same frame), refusing from the
/// length prefix as soon as it is known.
async fn read_body(mut body: Body, max: usize) -> Read {
    let mut buffer = BytesMut::new();
    loop {
        if buffer.len() >= HEADER_LEN {
            let declared = (&buffer[1..HEADER_LEN]).get_u32() as usize;
            if declared > max {
                return Read::Refused(Denial::TooLarge {
                    size: declared,
                    limit: max,
                });
            }
        }
        if buffer.len() > HEADER_LEN + max {
            // More than one message's worth: not a unary request.
            return Read::Refused(Denial::TooLarge {
                size: buffer.len() - HEADER_LEN,
                limit: max,
            });
        }
        match body.frame().await {
            None => return Read::Body(buffer.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Read::Refused(Denial::RequestAborted(e.to_string())),
        }
    }
}

/// Checks a whole unary body: one uncompressed message that decodes.
/// Compressed bodies are left to tonic (it knows the encoding).
fn check_body(bytes: &[u8], check: Check) -> Result<(), Denial> {
    let Some((header, message)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(Denial::Malformed("no request message".to_owned()));
    };
    if header[0] != 0 {
        return Ok(());
    }
    let declared = (&header[1..]).get_u32() as usize;
    if message.len() != declared {
        return Err(Denial::Malformed(format!(
            "the message is {} bytes, its header says {declared}",
            message.len()
        )));
    }
    check(message).map_err(|e| Denial::Malformed(e.to_string()))
}

impl<S> tower::Service<Request<Body>> for Precheck<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some((method, check)) = check_for(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        // The clone is the one made ready; the ready one goes into the
        // future (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let read = read_body(body, layer.max_message).await;
            let refusal = match read {
                Read::Body(bytes) => match check_body(&bytes, check) {
                    Ok(()) => {
                        let request =
                            Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
                        return inner.call(request).await;
                    }
                    Err(denial) => denial,
                },
                Read::Refused(denial) => denial,
            };
            layer.metrics.deny(&refusal);
            tracing::info!(
                method,
                reason = refusal.reason(),
                "request refused before decoding"
            );
            Ok(refusal.to_status().into_http())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn bodies_are_checked_as_their_method_asks() {
        let (_, acquire) = check_for("/loaves.v1.LicenseService/AcquireLicense").unwrap();
        let good = pb::AcquireLicenseRequest {
            title: "demo".into(),
            ..Default::default()
        }
        .encode_to_vec();
        check_body(&framed(&good), acquire).unwrap();
        check_body(&framed(&[]), acquire).unwrap();
        for bad in [framed(&[0xff, 0xff, 0xff]), vec![0, 0], {
            let mut short = framed(&good);
            short.pop();
            short
        }] {
            let denial = check_body(&bad, acquire).unwrap_err();
            assert_eq!(denial.code(), tonic::Code::InvalidArgument, "{denial}");
            assert_eq!(denial.reason(), "malformed_request");
        }
        let mut compressed = framed(&[0xff]);
        compressed[0] = 1;
        check_body(&compressed, acquire).unwrap();
        assert!(check_for("/grpc.health.v1.Health/Check").is_none());
    }
}
