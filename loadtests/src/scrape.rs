//! Reading the servers' Prometheus counters over HTTP, as a monitoring
//! system would: `GET /metrics`, then sums of the samples of one metric
//! whose labels match.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest exposition read (the servers' are tens of kilobytes).
const MAX_EXPOSITION: usize = 8 * 1024 * 1024;

/// One scrape of a server's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Wraps exposition text.
    pub fn new(text: String) -> Self {
        Self { text }
    }

    /// The sum of every sample of `name` whose labels contain each of
    /// `labels` (`key="value"`, as written in the exposition); 0 when
    /// there is none (a counter never incremented is often absent).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_set) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                (metric == name && labels.iter().all(|l| label_set.contains(l)))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }
}

impl Exposition {
    /// Every sample of `name`: its label set as written (without the
    /// braces; empty when it has none) and its value.
    pub fn samples(&self, name: &str) -> Vec<(String, f64)> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_set) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                (metric == name)
                    .then(|| Some((label_set.to_owned(), value.parse::<f64>().ok()?)))
                    .flatten()
            })
            .collect()
    }
}

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

#[cfg(test)]
mod tests {
    use super::Exposition;

    #[test]
    fn sums_the_matching_samples() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{kind=\"refresh\",result=\"ok\"} 3\n\
                    x_total{kind=\"announce\",result=\"ok\"} 5\n\
                    x_total{kind=\"announce\",result=\"error\"} 1\n\
                    x_total_other 9\ny 2.5\n";
        let e = Exposition::new(text.into());
        assert_eq!(e.sum("x_total", &[]), 9.0);
        assert_eq!(e.sum("x_total", &["kind=\"announce\""]), 6.0);
        assert_eq!(
            e.sum("x_total", &["kind=\"announce\"", "result=\"ok\""]),
            5.0
        );
        assert_eq!(e.sum("y", &[]), 2.5);
        assert_eq!(e.sum("absent", &[]), 0.0);
        assert_eq!(
            e.samples("x_total")[1],
            ("kind=\"announce\",result=\"ok\"".to_owned(), 5.0)
        );
        assert_eq!(e.samples("y"), [(String::new(), 2.5)]);
        assert!(e.samples("absent").is_empty());
    }
}
