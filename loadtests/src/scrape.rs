//! Reading the servers' Prometheus counters over HTTP, as a monitoring
//! system would: `GET /metrics`, then sums of the samples of one metric
//! whose labels match (the test kit's [`Exposition`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest exposition read (the servers' are tens of kilobytes).
const MAX_EXPOSITION: usize = 8 * 1024 * 1024;

pub use loaves_testkit::metrics::Exposition;

/// Scrapes `http://ADDR/metrics`.
pub async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<Exposition> {
    let url = format!("http://{addr}/metrics");
    let response = client
        .get(&url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("scraping {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    anyhow::ensure!(
        response
            .content_length()
            .is_none_or(|n| n <= MAX_EXPOSITION as u64),
        "{url} is over {MAX_EXPOSITION} bytes"
    );
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading {url}"))?;
    anyhow::ensure!(
        body.len() <= MAX_EXPOSITION,
        "{url} is over {MAX_EXPOSITION} bytes"
    );
    Ok(Exposition::new(String::from_utf8_lossy(&body).into_owned()))
}
