//! The samples of a Prometheus text exposition (`GET /metrics`), as a
//! monitoring system reads them.

use std::collections::BTreeSet;

/// One exposition's text.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    text: String,
}

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The metric name.
    pub name: &'a str,
    /// What stands between the braces (empty without labels).
    pub labels: &'a str,
    /// The value.
    pub value: f64,
}

impl Exposition {
    /// Wraps exposition text.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every sample line (comments, blank and unreadable lines skipped).
    pub fn samples(&self) -> impl Iterator<Item = Sample<'_>> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.trim_end().rsplit_once(' ')?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                Some(Sample {
                    name,
                    labels,
                    value: value.parse().ok()?,
                })
            })
    }

    /// The sum of every sample of `name` whose labels contain each of
    /// `labels` (`key="value"`, as written in the exposition); 0 when there
    /// is none (a counter never incremented is often absent).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples()
            .filter(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
            .map(|s| s.value)
            .sum()
    }

    /// The value of the first sample of `name` carrying every one of
    /// `labels` (`(key, value)`), if any.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|s| s.value)
    }

    /// The names of the samples.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples().map(|s| s.name.to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Exposition;

    const TEXT: &str = "# HELP x_total X.\n# TYPE x_total counter\n\
                        x_total{kind=\"refresh\",result=\"ok\"} 3\n\
                        x_total{kind=\"announce\",result=\"ok\"} 5\n\
                        x_total{kind=\"announce\",result=\"error\"} 1\n\
                        x_total_other 9\ny 2.5\n\n";

    #[test]
    fn sums_the_matching_samples() {
        let e = Exposition::new(TEXT);
        assert_eq!(e.sum("x_total", &[]), 9.0);
        assert_eq!(e.sum("x_total", &["kind=\"announce\""]), 6.0);
        assert_eq!(
            e.sum("x_total", &["kind=\"announce\"", "result=\"ok\""]),
            5.0
        );
        assert_eq!(e.sum("y", &[]), 2.5);
        assert_eq!(e.sum("absent", &[]), 0.0);
    }

    #[test]
    fn finds_the_first_matching_sample() {
        let e = Exposition::new(TEXT);
        assert_eq!(e.value("x_total", &[("result", "ok")]), Some(3.0));
        assert_eq!(e.value("x_total", &[("result", "error")]), Some(1.0));
        assert_eq!(e.value("x_total", &[("kind", "none")]), None);
        assert_eq!(e.value("x", &[]), None, "a prefix is not the name");
        assert_eq!(e.value("y", &[]), Some(2.5));
    }

    #[test]
    fn names_every_sample() {
        let names: Vec<String> = Exposition::new(TEXT).names().into_iter().collect();
        assert_eq!(names, ["x_total", "x_total_other", "y"]);
    }
}
