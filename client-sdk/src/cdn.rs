//! The CDN: plain HTTP(S) GETs with byte ranges against one or more base
//! URLs, with failover. The CDN is the safety net of the platform, so this
//! client is strict about what it accepts: a size cap on every body, a
//! timeout on every request, and a check that a ranged answer is the range
//! that was asked for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use loaves_http::parse_content_range;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::scheduler::ByteRange;

/// How to reach the CDN.
#[derive(Debug, Clone)]
pub struct CdnConfig {
    /// Base URLs, in order of preference (e.g. `https://cdn-a.example/vod/`);
    /// a failing one is skipped in favour of the next.
    pub base_urls: Vec<url::Url>,
    /// Bound on each request, connection included.
    pub request_timeout: Duration,
    /// Largest body accepted.
    pub max_body_bytes: u64,
}

impl Default for CdnConfig {
    fn default() -> Self {
        Self {
            base_urls: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 << 20,
        }
    }
}

/// An emulated access link (load tests, feature `test-faults`): what a
/// viewer's last mile would impose, reproduced in user space so that
/// scenarios need no kernel traffic shaping. The default imposes nothing.
#[cfg_attr(not(feature = "test-faults"), doc(hidden))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkLimits {
    /// Download rate shared by every transfer of the session, bytes per
    /// second; 0: unlimited.
    pub download_bytes_per_second: u64,
    /// Added to every request (CDN request, peer piece request) before it
    /// is sent: the round trip a real link would add.
    pub added_latency: Duration,
}

/// The pacing state of one session's emulated link: a token bucket whose
/// tokens are time. Each received chunk reserves `len / rate` of link time
/// after the previous reservation; the receiver waits until its
/// reservation ends, so concurrent transfers share the rate.
#[derive(Debug)]
pub(crate) struct Link {
    limits: LinkLimits,
    /// When the link is free again (end of the last reservation).
    free_at: Mutex<tokio::time::Instant>,
}

/// Link time a bucket may bank while idle: a short burst, as a real
/// link's queue would let through.
const LINK_BURST: Duration = Duration::from_millis(20);

impl Link {
    pub(crate) fn new(limits: LinkLimits) -> Self {
        Self {
            limits,
            free_at: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits the added latency of one request.
    pub(crate) async fn request_delay(&self) {
        if !self.limits.added_latency.is_zero() {
            tokio::time::sleep(self.limits.added_latency).await;
        }
    }

    /// Waits until `bytes` more fit through the link.
    pub(crate) async fn pace(&self, bytes: usize) {
        let rate = self.limits.download_bytes_per_second;
        if rate == 0 || bytes == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let until = {
            let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let start = (*free_at).max(now.checked_sub(LINK_BURST).unwrap_or(now));
            *free_at = start + cost;
            *free_at
        };
        tokio::time::sleep_until(until).await;
    }
}

/// Why a CDN fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum CdnError {
    /// No base URL is configured.
    #[error("no CDN base URL configured")]
    NoBaseUrl,
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// Every base URL failed; the last error is given.
    #[error("every CDN failed; last: {0}")]
    AllFailed(Box<CdnError>),
    /// A request failed (connection, TLS, timeout).
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// An unexpected HTTP status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body is larger than allowed.
    #[error("{url}: body larger than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        max: u64,
    },
    /// The answer is not the byte range asked for.
    #[error("{url}: answered another range than {start}-{end}")]
    WrongRange {
        /// The URL.
        url: String,
        /// Asked start.
        start: u64,
        /// Asked end (exclusive).
        end: u64,
    },
}

/// A CDN client with failover across base URLs.
#[derive(Debug)]
pub struct CdnClient {
    http: reqwest::Client,
    config: CdnConfig,
    /// Index of the base URL that last worked: tried first next time.
    preferred: AtomicUsize,
    /// The session's emulated link (shared with its peer transfers).
    link: Arc<Link>,
}

impl CdnClient {
    /// A client for `config`.
    pub fn new(config: CdnConfig) -> Result<Self, CdnError> {
        Self::with_link(config, LinkLimits::default())
    }

    /// A client for `config` behind an emulated link (load tests).
    #[doc(hidden)]
    pub fn with_link(config: CdnConfig, link: LinkLimits) -> Result<Self, CdnError> {
        if config.base_urls.is_empty() {
            return Err(CdnError::NoBaseUrl);
        }
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| CdnError::Client(e.to_string()))?;
        Ok(Self {
            http,
            link: Arc::new(Link::new(link)),
            config,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The session's emulated link, for its peer transfers.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Fetches `path` (relative to the base URLs), or `range` of it.
    pub async fn fetch(&self, path: &str, range: Option<ByteRange>) -> Result<Bytes, CdnError> {
        self.with_failover(path, |url| async move { self.fetch_one(&url, range).await })
            .await
    }

    /// Tries `attempt` on each base URL's version of `path`, the one that
    /// last worked first.
    async fn with_failover<F, Fut>(&self, path: &str, attempt: F) -> Result<Bytes, CdnError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, CdnError>>,
    {
        let bases = &self.config.base_urls;
        let first = self.preferred.load(Ordering::Relaxed) % bases.len();
        let mut last_error = None;
        for offset in 0..bases.len() {
            let index = (first + offset) % bases.len();
            match attempt(join(&bases[index], path)).await {
                Ok(bytes) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(bytes);
                }
                // A 404 is an answer about the content, not about the CDN:
                // another CDN of the same origin would say the same.
                Err(error @ CdnError::Status { status: 404, .. }) => return Err(error),
                Err(error) => last_error = Some(error),
            }
        }
        Err(CdnError::AllFailed(Box::new(
            last_error.unwrap_or(CdnError::NoBaseUrl),
        )))
    }

    /// The bytes of `path` from `offset` to its current end: how a growing
    /// file (a live manifest) is followed. Empty when nothing was added
    /// (`416`, or a body no longer than `offset`). A server that ignores
    /// `Range` answers the whole file; its first `offset` bytes are dropped
    /// here (the size cap still bounds what is read).
    pub async fn fetch_from(&self, path: &str, offset: u64) -> Result<Bytes, CdnError> {
        self.with_failover(
            path,
            |url| async move { self.fetch_tail(&url, offset).await },
        )
        .await
    }

    async fn fetch_tail(&self, url: &str, offset: u64) -> Result<Bytes, CdnError> {
        let transport = |e: reqwest::Error| CdnError::Transport {
            url: url.to_owned(),
            message: e.to_string(),
        };
        self.link.request_delay().await;
        let mut request = self.http.get(url);
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let mut response = request.send().await.map_err(transport)?;
        let skip = match response.status() {
            StatusCode::RANGE_NOT_SATISFIABLE => return Ok(Bytes::new()),
            StatusCode::OK => offset,
            StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                    .map(|answered| answered.start);
                if start != Some(offset) {
                    return Err(CdnError::WrongRange {
                        url: url.to_owned(),
                        start: offset,
                        end: u64::MAX,
                    });
                }
                0
            }
            status => {
                return Err(CdnError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
        };
        let body = self.read_body(url, &mut response).await?;
        match usize::try_from(skip) {
            Ok(skip) if skip < body.len() => Ok(body.slice(skip..)),
            _ => Ok(Bytes::new()),
        }
    }

    /// Reads a body within the size cap.
    async fn read_body(
        &self,
        url: &str,
        response: &mut reqwest::Response,
    ) -> Result<Bytes, CdnError> {
        let max = self.config.max_body_bytes;
        if response.content_length().is_some_and(|len| len > max) {
            return Err(CdnError::TooLarge {
                url: url.to_owned(),
                max,
            });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| CdnError::Transport {
            url: url.to_owned(),
            message: e.to_string(),
        })? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(CdnError::TooLarge {
                    url: url.to_owned(),
                    max,
                });
            }
            self.link.pace(chunk.len()).await;
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    async fn fetch_one(&self, url: &str, range: Option<ByteRange>) -> Result<Bytes, CdnError> {
        let transport = |e: reqwest::Error| CdnError::Transport {
            url: url.to_owned(),
            message: e.to_string(),
        };
        if range.is_some_and(|r| r.is_empty()) {
            return Ok(Bytes::new());
        }
        self.link.request_delay().await;
        let mut request = self.http.get(url);
        if let Some(range) = range {
            request = request.header(RANGE, format!("bytes={}-{}", range.start, range.end - 1));
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let wrong_range = |range: ByteRange| CdnError::WrongRange {
            url: url.to_owned(),
            start: range.start,
            end: range.end,
        };
        // What part of the body to keep.
        let keep = match (status, range) {
            (StatusCode::OK, None) => None,
            (StatusCode::PARTIAL_CONTENT, Some(range)) => {
                let answered = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                if answered != Some(range.start..range.end) {
                    return Err(wrong_range(range));
                }
                None
            }
            // A server that ignores Range sends the whole object: keep the
            // asked part (bounded by the size cap like any body).
            (StatusCode::OK, Some(range)) => Some(range),
            (status, _) => {
                return Err(CdnError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
        };
        let body = self.read_body(url, &mut response).await?;
        match keep {
            None => Ok(body),
            Some(range) => {
                let (Ok(start), Ok(end)) =
                    (usize::try_from(range.start), usize::try_from(range.end))
                else {
                    return Err(wrong_range(range));
                };
                if end > body.len() {
                    return Err(wrong_range(range));
                }
                Ok(body.slice(start..end))
            }
        }
    }
}

fn join(base: &url::Url, path: &str) -> String {
    format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_emulated_link_paces_transfers_and_adds_latency() {
        // No limits: nothing waits.
        let free = Link::new(LinkLimits::default());
        let started = std::time::Instant::now();
        free.request_delay().await;
        free.pace(10 << 20).await;
        assert!(started.elapsed() < Duration::from_millis(50));

        // 1 MB/s shared by two concurrent transfers of 200 kB each: 0.4 s
        // for both (less the burst), not 0.2 s each in parallel.
        let link = Arc::new(Link::new(LinkLimits {
            download_bytes_per_second: 1_000_000,
            added_latency: Duration::from_millis(100),
        }));
        let started = std::time::Instant::now();
        let transfer = |link: Arc<Link>| async move {
            for _ in 0..10 {
                link.pace(20_000).await;
            }
        };
        tokio::join!(transfer(link.clone()), transfer(link.clone()));
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(370), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");

        let started = std::time::Instant::now();
        link.request_delay().await;
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn urls_join_with_one_slash() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(join(&url("http://a/b/"), "/c/d"), "http://a/b/c/d");
        assert_eq!(join(&url("http://a/b"), "c"), "http://a/b/c");
    }
}
