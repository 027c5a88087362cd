//! `promtool check config`, `check rules` and `test rules` over
//! deploy/prometheus, and coverage of the rules by the unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{assert_success, deploy, files_ending, run, tool, yaml};

const PROMTOOL_HINT: &str = "apt-get install prometheus";

#[test]
fn promtool_check_config() {
    let Some(promtool) = tool("promtool", PROMTOOL_HINT) else {
        return;
    };
    let dir = deploy().join("prometheus");
    let configs = files_ending(&dir, ".yml");
    assert!(configs.len() >= 2, "the compose and Kubernetes configs");
    for config in configs {
        let output = run(Command::new(&promtool)
            .current_dir(&dir)
            .arg("check")
            .arg("config")
            .arg(&config));
        assert_success(
            &format!("promtool check config {}", config.display()),
            &output,
        );
    }
}

#[test]
fn promtool_check_rules() {
    let Some(promtool) = tool("promtool", PROMTOOL_HINT) else {
        return;
    };
    let rules = files_ending(&deploy().join("prometheus/rules"), ".yml");
    assert!(!rules.is_empty());
    let output = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .args(&rules));
    assert_success("promtool check rules", &output);
}

#[test]
fn promtool_test_rules() {
    let Some(promtool) = tool("promtool", PROMTOOL_HINT) else {
        return;
    };
    let tests = files_ending(&deploy().join("prometheus/tests"), ".yml");
    assert!(!tests.is_empty());
    let output = run(Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .args(&tests));
    assert_success("promtool test rules", &output);
}

/// Every alert is shown firing by some unit test, and every recording rule
/// is evaluated by some unit test: the rules' tests leave nothing out.
#[test]
fn unit_tests_cover_every_rule() {
    let mut fired = BTreeSet::new();
    let mut evaluated = String::new();
    for file in files_ending(&deploy().join("prometheus/tests"), ".yml") {
        let doc = yaml(&file);
        for test in doc["tests"].as_sequence().unwrap() {
            for alert in test
                .get("alert_rule_test")
                .and_then(|v| v.as_sequence())
                .into_iter()
                .flatten()
            {
                let firing = alert
                    .get("exp_alerts")
                    .and_then(|v| v.as_sequence())
                    .is_some_and(|v| !v.is_empty());
                if firing {
                    fired.insert(alert["alertname"].as_str().unwrap().to_owned());
                }
            }
            for expr in test
                .get("promql_expr_test")
                .and_then(|v| v.as_sequence())
                .into_iter()
                .flatten()
            {
                evaluated.push_str(expr["expr"].as_str().unwrap());
                evaluated.push('\n');
            }
        }
    }
    let alerts = common::alert_names();
    assert!(!alerts.is_empty());
    let never_fired: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        never_fired.is_empty(),
        "alerts no unit test shows firing: {never_fired:?}"
    );
    let evaluated_names: BTreeSet<String> = common::metric_names(&evaluated);
    let recorded = common::recorded_names();
    assert!(!recorded.is_empty());
    let never_evaluated: Vec<_> = recorded.difference(&evaluated_names).collect();
    assert!(
        never_evaluated.is_empty(),
        "recording rules no unit test evaluates: {never_evaluated:?}"
    );
}
