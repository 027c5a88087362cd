//! Test-only crate: the checks of `deploy/` live in `tests/`.
//!
//! - `tests/prometheus.rs`: `promtool check config`, `check rules` and
//!   `test rules` over `deploy/prometheus`.
//! - `tests/kubernetes.rs`: every rendered overlay under `deploy/k8s/rendered`
//!   validated against the Kubernetes schemas (`kubernetes-validate`), and
//!   re-rendered with `kubectl kustomize` where kubectl is installed.
//! - `tests/metrics.rs`: the license server and the tracker started from the
//!   configuration the manifests give them; every metric name in the rules
//!   and dashboards must appear in their real `/metrics`.
