//! The Grafana dashboards and their provisioning: valid JSON, unique ids,
//! every panel on the provisioned data source, every panel with a query,
//! and the compose mounts where the provisioning looks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{deploy, files_ending, yaml};

fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel);
        if let Some(inner) = panel.get("panels").and_then(|p| p.as_array()) {
            out.extend(inner);
        }
    }
    out
}

#[test]
fn dashboards_use_the_provisioned_data_source() {
    let datasources = yaml(&deploy().join("grafana/provisioning/datasources/loaves.yml"));
    let uids: BTreeSet<&str> = datasources["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap())
        .collect();
    let mut dashboard_uids = BTreeSet::new();
    let files = files_ending(&deploy().join("grafana/dashboards"), ".json");
    assert!(
        files.len() >= 3,
        "offload, license server and tracker dashboards"
    );
    for file in files {
        let name = file.display().to_string();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert!(
            dashboard_uids.insert(dashboard["uid"].as_str().unwrap().to_owned()),
            "{name}: uid reused"
        );
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: panel id reused"
            );
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap();
            assert!(
                uids.contains(panel["datasource"]["uid"].as_str().unwrap()),
                "{name}: {title}: unknown data source"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for target in targets {
                assert!(!target["expr"].as_str().unwrap().trim().is_empty());
                assert!(uids.contains(target["datasource"]["uid"].as_str().unwrap()));
            }
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{name}: {title}: wider than the grid");
        }
    }
}

#[test]
fn compose_mounts_what_the_provisioning_reads() {
    let provider = yaml(&deploy().join("grafana/provisioning/dashboards/loaves.yml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let compose = yaml(&deploy().join("compose/docker-compose.yml"));
    let volumes: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        volumes.contains(&format!("../grafana/dashboards:{path}:ro").as_str()),
        "dashboards mounted at {path}: {volumes:?}"
    );
    assert!(volumes.contains(&"../grafana/provisioning:/etc/grafana/provisioning:ro"));
    let datasources = yaml(&deploy().join("grafana/provisioning/datasources/loaves.yml"));
    let url = datasources["datasources"][0]["url"].as_str().unwrap();
    assert_eq!(url, "http://prometheus:9090");
    assert!(compose["services"].get("prometheus").is_some());
}
