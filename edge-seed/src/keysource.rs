//! Where content keys come from.
//!
//! The packager asks for the key of every (title, track type, key period)
//! it needs, once, before it encrypts anything. [`GrpcKeySource`] asks the
//! license server's `KeyService` (production); [`LocalKeySource`] derives
//! keys from a secret (development and tests only: anyone who knows the
//! secret can derive every key).

use std::time::Duration;

use loaves_proto::keys::{ContentKey, ContentKeyId};
use loaves_proto::pb;
use sha2::{Digest, Sha256};

/// One key to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRequest {
    /// `audio`, `sd`, `hd`.
    pub track_type: String,
    /// Key period.
    pub key_period: u32,
}

/// One key obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackKey {
    /// `audio`, `sd`, `hd`.
    pub track_type: String,
    /// Key period.
    pub key_period: u32,
    /// Public key id (KID).
    pub kid: ContentKeyId,
    /// The AES-128 key (redacted in `Debug`).
    pub key: ContentKey,
}

/// Why keys could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySourceError {
    /// The key service could not be reached.
    #[error("key service {endpoint} unavailable: {message}")]
    Unavailable {
        /// Where it was asked.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// The key service answered with an error (e.g. a bad admin token).
    #[error("key service {endpoint} refused: {status}")]
    Refused {
        /// Where it was asked.
        endpoint: String,
        /// The gRPC status.
        status: String,
    },
    /// The answer lacks a key or has a malformed one.
    #[error("key service answered badly: {0}")]
    BadResponse(String),
    /// The key source is misconfigured.
    #[error("key source configuration: {0}")]
    Config(String),
}

/// A source of content keys.
pub trait KeySource {
    /// The keys of `title` for every request, in any order.
    fn get_keys(
        &self,
        title: &str,
        requests: &[KeyRequest],
    ) -> Result<Vec<TrackKey>, KeySourceError>;

    /// A short description for logs (never a secret).
    fn describe(&self) -> String;
}

/// Development keys derived from a secret: key = SHA-256("loaves/v1/dev-key"
/// ‖ secret ‖ title ‖ track type ‖ period)[..16], KID likewise without the
/// secret. Same inputs, same keys: tests can re-derive them.
#[derive(Clone)]
pub struct LocalKeySource {
    secret: Vec<u8>,
}

impl std::fmt::Debug for LocalKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKeySource(<secret>)")
    }
}

impl LocalKeySource {
    /// A source deriving keys from `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    /// The key for one request.
    pub fn derive(&self, title: &str, request: &KeyRequest) -> TrackKey {
        let digest = |label: &[u8], secret: &[u8]| {
            let mut h = Sha256::new();
            for part in [
                label,
                secret,
                title.as_bytes(),
                request.track_type.as_bytes(),
            ] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            h.update(request.key_period.to_be_bytes());
            let d = h.finalize();
            let mut out = [0u8; 16];
            out.copy_from_slice(&d[..16]);
            out
        };
        TrackKey {
            track_type: request.track_type.clone(),
            key_period: request.key_period,
            kid: ContentKeyId(digest(b"loaves/v1/dev-kid", b"")),
            key: ContentKey::new(digest(b"loaves/v1/dev-key", &self.secret)),
        }
    }
}

impl KeySource for LocalKeySource {
    fn get_keys(
        &self,
        title: &str,
        requests: &[KeyRequest],
    ) -> Result<Vec<TrackKey>, KeySourceError> {
        Ok(requests.iter().map(|r| self.derive(title, r)).collect())
    }

    fn describe(&self) -> String {
        "local development keys (derived from a secret; not for production)".into()
    }
}

/// A client of the license server's `KeyService` over gRPC (TLS when the
/// endpoint is `https://`), authenticated with an admin bearer token.
#[derive(Clone)]
pub struct GrpcKeySource {
    endpoint: String,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    timeout: Duration,
}

impl std::fmt::Debug for GrpcKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcKeySource")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl GrpcKeySource {
    /// A client of `endpoint` (`https://host:port` or `http://host:port`).
    /// `ca_pem` is what the server's certificate must chain to: the PEM of
    /// the CA that signed it, or the server's own certificate if that is
    /// self-signed without the CA flag (as the license server's generated
    /// development certificate is). A self-signed certificate marked as a
    /// CA does not work as the server's own: TLS refuses a CA certificate
    /// as the end entity (`CaUsedAsEndEntity`), see [`certificate_hint`].
    pub fn new(
        endpoint: impl Into<String>,
        token: Option<String>,
        ca_pem: Option<Vec<u8>>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            token,
            ca_pem,
            timeout: Duration::from_secs(10),
        }
    }

    /// Changes the connect and request timeout (10 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn fetch(
        &self,
        request: pb::GetContentKeysRequest,
    ) -> Result<pb::GetContentKeysResponse, KeySourceError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let unavailable = |message: String| KeySourceError::Unavailable {
            endpoint: self.endpoint.clone(),
            message,
        };
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| KeySourceError::Config(format!("endpoint {}: {e}", self.endpoint)))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        if self.endpoint.starts_with("https://") {
            let ca = self.ca_pem.as_ref().ok_or_else(|| {
                KeySourceError::Config(
                    "an https endpoint needs a CA or server certificate file".into(),
                )
            })?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| KeySourceError::Config(format!("TLS: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let chain = error_chain(&e);
            match certificate_hint(&chain) {
                Some(hint) => unavailable(format!("{chain}: {hint}")),
                None => unavailable(chain),
            }
        })?;
        let mut client = loaves_grpc::key_service_client::KeyServiceClient::new(channel);
        let mut req = tonic::Request::new(request);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                KeySourceError::Config("admin token is not a valid header value".into())
            })?;
            req.metadata_mut().insert("authorization", value);
        }
        match client.get_content_keys(req).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(unavailable(status.message().to_owned()))
            }
            Err(status) => Err(KeySourceError::Refused {
                endpoint: self.endpoint.clone(),
                status: format!("{:?}: {}", status.code(), status.message()),
            }),
        }
    }
}

/// What to do about a TLS certificate error, recognised in `error` (the
/// rustls error's name, which it carries through tonic's error chain).
pub fn certificate_hint(error: &str) -> Option<&'static str> {
    if error.contains("CaUsedAsEndEntity") {
        Some(
            "the key service presents a CA certificate (basicConstraints CA:TRUE) as its own, \
             which TLS refuses; give the server a leaf certificate signed by a CA and pass that \
             CA's certificate as --ca-cert, or use a self-signed certificate without the CA flag \
             (such as the license server's generated development certificate, tls.dev_cert_out)",
        )
    } else if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        Some(
            "the key service's certificate is not signed by --ca-cert: pass the CA that signed \
             it, or the server's own self-signed certificate",
        )
    } else if error.contains("NotValidForName") {
        Some("the key service's certificate does not name the host in --key-service")
    } else {
        None
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl KeySource for GrpcKeySource {
    fn get_keys(
        &self,
        title: &str,
        requests: &[KeyRequest],
    ) -> Result<Vec<TrackKey>, KeySourceError> {
        let request = pb::GetContentKeysRequest {
            title: title.to_owned(),
            keys: requests
                .iter()
                .map(|r| pb::ContentKeyRequest {
                    track_type: r.track_type.clone(),
                    key_period: r.key_period,
                })
                .collect(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KeySourceError::Config(format!("runtime: {e}")))?;
        let response = runtime.block_on(self.fetch(request))?;
        let mut keys = Vec::with_capacity(requests.len());
        for wanted in requests {
            let found = response
                .keys
                .iter()
                .find(|k| k.track_type == wanted.track_type && k.key_period == wanted.key_period)
                .ok_or_else(|| {
                    KeySourceError::BadResponse(format!(
                        "no key for track type {} period {}",
                        wanted.track_type, wanted.key_period
                    ))
                })?;
            let kid = ContentKeyId::from_slice(&found.key_id)
                .ok_or_else(|| KeySourceError::BadResponse("key id is not 16 bytes".into()))?;
            let key = ContentKey::from_slice(&found.key)
                .ok_or_else(|| KeySourceError::BadResponse("key is not 16 bytes".into()))?;
            keys.push(TrackKey {
                track_type: wanted.track_type.clone(),
                key_period: wanted.key_period,
                kid,
                key,
            });
        }
        Ok(keys)
    }

    fn describe(&self) -> String {
        format!("key service at {}", self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_keys_are_deterministic_and_distinct() {
        let src = LocalKeySource::new("s");
        let req = |t: &str, p| KeyRequest {
            track_type: t.into(),
            key_period: p,
        };
        let a = src
            .get_keys("t", &[req("sd", 0), req("sd", 1), req("hd", 0)])
            .unwrap();
        let b = src.get_keys("t", &[req("sd", 0)]).unwrap();
        assert_eq!(a[0], b[0]);
        assert_ne!(a[0].key, a[1].key);
        assert_ne!(a[0].kid, a[2].kid);
        let other = LocalKeySource::new("x")
            .get_keys("t", &[req("sd", 0)])
            .unwrap();
        assert_ne!(other[0].key, a[0].key);
        assert_eq!(other[0].kid, a[0].kid);
    }

    #[test]
    fn unreachable_key_service_is_a_clear_error() {
        let src = GrpcKeySource::new("http://127.0.0.1:9", Some("t".into()), None)
            .with_timeout(Duration::from_secs(2));
        let err = src
            .get_keys(
                "t",
                &[KeyRequest {
                    track_type: "sd".into(),
                    key_period: 0,
                }],
            )
            .unwrap_err();
        assert!(matches!(err, KeySourceError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:9"));
    }
}
