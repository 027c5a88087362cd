//! Where the seed pulls from: an HTTP(S) origin or CDN, or a local directory
//! (the packager's output). Both read at most a stated number of bytes.
//! Nothing here trusts what it reads: the store verifies every segment
//! against the signed manifest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// Why an origin read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    /// The object does not exist (HTTP 404, missing file).
    #[error("not found at the origin: {0}")]
    NotFound(String),
    /// The origin answered with an unexpected HTTP status.
    #[error("origin answered {0}")]
    Status(u16),
    /// The object is larger than allowed.
    #[error("object larger than {0} bytes")]
    TooLarge(u64),
    /// The request timed out.
    #[error("origin request timed out")]
    Timeout,
    /// Transport or file-system failure.
    #[error("origin I/O: {0}")]
    Io(String),
    /// The path is not a safe relative path.
    #[error("refused path {0:?}")]
    BadPath(String),
}

impl OriginError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Status(_) => "http_status",
            Self::TooLarge(_) => "too_large",
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
            Self::BadPath(_) => "bad_path",
        }
    }
}

/// An origin.
#[derive(Debug, Clone)]
pub enum Origin {
    /// `base` URL; objects are `base/PATH`.
    Http {
        /// Base URL without trailing slash.
        base: String,
        /// Client (connection pool).
        client: reqwest::Client,
        /// Per-request timeout.
        timeout: Duration,
    },
    /// A directory; objects are files below it.
    Dir(PathBuf),
}

/// Installs ring as the process's rustls provider (reqwest is built without
/// one). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Origin {
    /// An origin from the configuration string: `http://` or `https://`
    /// URLs, anything else is a directory.
    pub fn from_config(origin: &str, timeout: Duration) -> Result<Self, OriginError> {
        if origin.starts_with("http://") || origin.starts_with("https://") {
            install_crypto_provider();
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .pool_max_idle_per_host(32)
                .build()
                .map_err(|e| OriginError::Io(e.to_string()))?;
            Ok(Self::Http {
                base: origin.trim_end_matches('/').to_owned(),
                client,
                timeout,
            })
        } else {
            Ok(Self::Dir(PathBuf::from(origin)))
        }
    }

    /// Reads `path` (relative, `/`-separated, safe components only), at most
    /// `max_len` bytes.
    pub async fn fetch(&self, path: &str, max_len: u64) -> Result<Bytes, OriginError> {
        if !path.split('/').all(super::safe_name) {
            return Err(OriginError::BadPath(path.to_owned()));
        }
        match self {
            Self::Http {
                base,
                client,
                timeout,
            } => {
                let url = format!("{base}/{path}");
                tokio::time::timeout(*timeout, fetch_http(client, &url, max_len))
                    .await
                    .map_err(|_| OriginError::Timeout)?
            }
            Self::Dir(root) => fetch_file(&root.join(path), max_len).await,
        }
    }
}

async fn fetch_http(
    client: &reqwest::Client,
    url: &str,
    max_len: u64,
) -> Result<Bytes, OriginError> {
    let mut response = client.get(url).send().await.map_err(map_reqwest)?;
    let status = response.status().as_u16();
    if status == 404 || status == 410 {
        return Err(OriginError::NotFound(url.to_owned()));
    }
    if status != 200 {
        return Err(OriginError::Status(status));
    }
    if response.content_length().is_some_and(|len| len > max_len) {
        return Err(OriginError::TooLarge(max_len));
    }
    let capacity = response.content_length().unwrap_or(0).min(max_len);
    let mut body = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(map_reqwest)? {
        if body.len() as u64 + chunk.len() as u64 > max_len {
            return Err(OriginError::TooLarge(max_len));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn map_reqwest(error: reqwest::Error) -> OriginError {
    if error.is_timeout() {
        OriginError::Timeout
    } else {
        OriginError::Io(error.to_string())
    }
}

async fn fetch_file(path: &Path, max_len: u64) -> Result<Bytes, OriginError> {
    use tokio::io::AsyncReadExt;
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OriginError::NotFound(path.display().to_string()));
        }
        Err(e) => return Err(OriginError::Io(e.to_string())),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| OriginError::Io(e.to_string()))?
        .len();
    if len > max_len {
        return Err(OriginError::TooLarge(max_len));
    }
    let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max_len + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| OriginError::Io(e.to_string()))?;
    if body.len() as u64 > max_len {
        return Err(OriginError::TooLarge(max_len));
    }
    Ok(Bytes::from(body))
}
