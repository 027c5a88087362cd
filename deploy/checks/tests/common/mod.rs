//! Shared helpers of the deploy checks: where things are, whether missing
//! tools fail or skip, YAML loading, and metric names in PromQL.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `deploy/` in the repository.
pub fn deploy() -> PathBuf {
    root().join("deploy")
}

/// Whether a missing tool or binary fails the test (CI, or scripts/test
/// which exports LOAVES_REQUIRE_DEPLOY_TOOLS=1) rather than skipping it.
pub fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("LOAVES_REQUIRE_DEPLOY_TOOLS").is_ok_and(|v| v == "1")
}

/// The path of `name` on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `name` from PATH; `None` (after a notice) when it is missing and tools
/// are optional; a panic when they are required.
pub fn tool(name: &str, install_hint: &str) -> Option<PathBuf> {
    match which(name) {
        Some(path) => Some(path),
        None if tools_required() => panic!(
            "{name} is required (CI=true or LOAVES_REQUIRE_DEPLOY_TOOLS=1) but not on PATH; \
             {install_hint} (scripts/test.d/deploy.sh does)"
        ),
        None => {
            eprintln!("notice: {name} not found, skipping this check ({install_hint})");
            None
        }
    }
}

/// Runs a command, returning its output; panics if it cannot be started.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"))
}

/// Panics with both streams unless the command succeeded.
#[allow(unused_imports)] // not every check runs a command
pub use loaves_testkit::process::assert_success;

/// Files in `dir` whose name ends with `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    files.sort();
    files
}

/// Every document of a (multi-document) YAML file.
pub fn yaml_documents(path: &Path) -> Vec<serde_yaml_ng::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
        .filter(|v: &serde_yaml_ng::Value| !v.is_null())
        .collect()
}

/// One YAML file.
pub fn yaml(path: &Path) -> serde_yaml_ng::Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

/// Rendered overlays: (overlay name, rendered file).
pub fn rendered_overlays() -> Vec<(String, PathBuf)> {
    let overlays = deploy().join("k8s/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&overlays)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no overlays in {}", overlays.display());
    names
        .into_iter()
        .map(|name| {
            let rendered = deploy().join(format!("k8s/rendered/{name}.yaml"));
            (name, rendered)
        })
        .collect()
}

/// Every rule of the rule files, in file and group order.
fn rules() -> Vec<serde_yaml_ng::Value> {
    let mut out = Vec::new();
    for file in files_ending(&deploy().join("prometheus/rules"), ".yml") {
        let doc = yaml(&file);
        for group in doc["groups"].as_sequence().unwrap() {
            out.extend(group["rules"].as_sequence().unwrap().iter().cloned());
        }
    }
    out
}

/// The values of `key` (`record` or `alert`) of the rules that have one.
fn rule_names(key: &str) -> BTreeSet<String> {
    rules()
        .iter()
        .filter_map(|rule| rule.get(key).and_then(|v| v.as_str()))
        .map(str::to_owned)
        .collect()
}

/// The PromQL expressions of the rule files: (record or alert name, expr).
pub fn rule_exprs() -> Vec<(String, String)> {
    rules()
        .iter()
        .map(|rule| {
            let name = rule
                .get("record")
                .or_else(|| rule.get("alert"))
                .and_then(|v| v.as_str())
                .unwrap()
                .to_owned();
            (name, rule["expr"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The names of the recording rules.
pub fn recorded_names() -> BTreeSet<String> {
    rule_names("record")
}

/// The alert names.
pub fn alert_names() -> BTreeSet<String> {
    rule_names("alert")
}

/// Every PromQL expression of the Grafana dashboards: (dashboard file,
/// expression), including the template variables' queries.
pub fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, file: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(expr)) => {
                            out.push((file.to_owned(), expr.clone()));
                        }
                        ("query", serde_json::Value::String(query)) => {
                            out.push((file.to_owned(), query.clone()));
                        }
                        _ => walk(v, file, out),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    walk(v, file, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for file in files_ending(&deploy().join("grafana/dashboards"), ".json") {
        let text = std::fs::read_to_string(&file).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        walk(&json, &name, &mut out);
    }
    out
}

/// PromQL words that are not metric names (besides [`GROUPING_WORDS`]).
const PROMQL_WORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "inf", "nan", "atan2",
];

/// PromQL words followed by a list of label names.
const GROUPING_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects (best effort, for our own
/// expressions): identifiers that are not functions, keywords, label names,
/// strings, durations, numbers or Grafana variables. `label_values(m, l)`
/// (Grafana) contributes `m`.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Depth of `{...}` (label matchers) and whether the previous word was
    // by/without/on/ignoring/group_* (a label list follows).
    let mut in_braces = 0usize;
    let mut label_list = false;
    let mut label_list_depth: Option<usize> = None;
    let mut paren_depth = 0usize;
    let mut label_values_arg = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // Skip a string literal.
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '[' {
            // Range or subquery duration.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '{' {
            in_braces += 1;
        } else if c == '}' {
            in_braces = in_braces.saturating_sub(1);
        } else if c == '(' {
            paren_depth += 1;
            if label_list {
                label_list_depth = Some(paren_depth);
                label_list = false;
            }
        } else if c == ')' {
            if label_list_depth == Some(paren_depth) {
                label_list_depth = None;
            }
            paren_depth = paren_depth.saturating_sub(1);
        } else if c == ',' && label_values_arg {
            label_values_arg = false;
        }
        let starts_word = c.is_ascii_alphabetic() || c == '_' || c == ':';
        let after_dollar = i > 0 && chars[i - 1] == '$';
        let after_digit = i > 0 && (chars[i - 1].is_ascii_digit() || chars[i - 1] == '.');
        if starts_word {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            // `sum by (...) (...)`: an aggregation with its grouping first.
            let next: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let is_call = (j < chars.len() && chars[j] == '(') || next == "by" || next == "without";
            let lower = word.to_ascii_lowercase();
            if after_dollar || after_digit || in_braces > 0 || label_list_depth.is_some() {
                continue;
            }
            if GROUPING_WORDS.contains(&lower.as_str()) {
                label_list = true;
                continue;
            }
            if word == "label_values" {
                label_values_arg = true;
                continue;
            }
            if is_call || PROMQL_WORDS.contains(&lower.as_str()) {
                continue;
            }
            if label_values_arg || paren_depth == 0 || !label_values_context(&chars, start) {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Whether the word at `start` is a later argument of `label_values(...)`
/// (a label name, not a metric).
fn label_values_context(chars: &[char], start: usize) -> bool {
    let before: String = chars[..start].iter().collect();
    match before.rfind("label_values(") {
        Some(pos) => before[pos..].contains(','),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_labels_and_keywords() {
        assert_eq!(
            names(
                r#"sum by (source, title) (rate(loaves_tracker_bytes_total{title=~"$title", source!="x"}[$__rate_interval]))"#
            ),
            ["loaves_tracker_bytes_total"]
        );
        assert_eq!(
            names(
                "a:b:rate5m < 0.5 * (a:b:rate5m offset 1h) and on() sum(c_total) > 1e6 or vector(0)"
            ),
            ["a:b:rate5m", "c_total"]
        );
        assert_eq!(
            names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))"),
            ["x_bucket"]
        );
        assert_eq!(
            names("(m1 >= 50) and on(title, rendition) (m2 == 0)"),
            ["m1", "m2"]
        );
        assert_eq!(
            names("label_values(loaves_tracker_bytes_total, title)"),
            ["loaves_tracker_bytes_total"]
        );
        assert_eq!(names(r#"up{job="loaves-tracker"} == 0"#), ["up"]);
        assert_eq!(names("topk(10, m3) * 8"), ["m3"]);
    }
}
