//! The Kubernetes manifests: every rendered overlay validated against the
//! Kubernetes schemas (`kubernetes-validate`), the rendered files in step
//! with `kubectl kustomize`, and the fields the binaries read consistent
//! with their configuration (ports, probes, mounted files, shard names).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{assert_success, deploy, rendered_overlays, run, tool, which, yaml, yaml_documents};
use serde_yaml_ng::Value;

#[test]
fn rendered_overlays_validate_against_the_schemas() {
    let Some(validate) = tool(
        "kubernetes-validate",
        "python3 -m pip install kubernetes-validate",
    ) else {
        return;
    };
    for (name, rendered) in rendered_overlays() {
        assert!(
            rendered.is_file(),
            "overlay {name}: {} missing (kubectl kustomize deploy/k8s/overlays/{name} > it)",
            rendered.display()
        );
        let output = run(Command::new(&validate)
            .arg("--strict")
            .arg("--no-warn")
            .arg(&rendered));
        assert_success(
            &format!("kubernetes-validate {}", rendered.display()),
            &output,
        );
        // One INFO line per resource that passed: nothing was skipped.
        let passed = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            yaml_documents(&rendered).len(),
            "{name}: every resource validated"
        );
    }
}

/// kubectl is not packaged by Debian, so this runs where it is installed
/// and skips (with a notice) elsewhere, CI included.
#[test]
fn rendered_overlays_match_kustomize() {
    let Some(kubectl) = which("kubectl") else {
        eprintln!("notice: kubectl not found, not re-rendering the overlays");
        return;
    };
    for (name, rendered) in rendered_overlays() {
        let output = run(Command::new(&kubectl)
            .arg("kustomize")
            .arg(deploy().join("k8s/overlays").join(&name)));
        assert_success(&format!("kubectl kustomize {name}"), &output);
        let committed = std::fs::read_to_string(&rendered).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&output.stdout) == committed,
            "{} is stale: kubectl kustomize deploy/k8s/overlays/{name} > deploy/k8s/rendered/{name}.yaml",
            rendered.display()
        );
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} missing"))
}

fn find_prefix<'a>(docs: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("{kind} {prefix}* missing"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

/// Every absolute path in a TOML configuration.
fn toml_paths(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if s.starts_with('/') => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| toml_paths(v, out)),
        toml::Value::Table(table) => table.values().for_each(|v| toml_paths(v, out)),
        _ => {}
    }
}

/// Checks one workload's pod against its TOML configuration: the config
/// file is mounted where `--config` points, every path the TOML names is
/// under a volume mount, probes and scrape annotations hit the metrics
/// port, and the hardening is in place.
fn check_pod(docs: &[Value], workload: &Value, config_name: &str, metrics_field: &str) {
    let name = workload["metadata"]["name"].as_str().unwrap();
    let template = &workload["spec"]["template"];
    let pod = &template["spec"];
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();

    // --config points into the mounted ConfigMap, whose file is ours.
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
    let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
    let configmap_name = volume["configMap"]["name"].as_str().unwrap();
    let configmap = find(docs, "ConfigMap", configmap_name);
    let text = configmap["data"][file].as_str().unwrap();
    let base = std::fs::read_to_string(deploy().join("k8s/base/config").join(config_name)).unwrap();
    assert_eq!(
        text, base,
        "{name}: the ConfigMap holds base/config/{config_name}"
    );
    let config: toml::Value = toml::from_str(text).unwrap();

    // Every path the configuration names is under a volume mount.
    let mut paths = Vec::new();
    toml_paths(&config, &mut paths);
    assert!(!paths.is_empty());
    for path in &paths {
        assert!(
            mounts.iter().any(|m| {
                let dir = m["mountPath"].as_str().unwrap();
                path.strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
            "{name}: {path} (in {config_name}) is on no volume mount"
        );
    }

    // Probes and scraping use the metrics listener, which serves /healthz.
    let metrics_port = port_of(config[metrics_field].as_str().unwrap());
    for probe in ["readinessProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert!(!probe.is_null(), "{name}: probe missing");
        let port = probe
            .get("httpGet")
            .or_else(|| probe.get("tcpSocket"))
            .unwrap()["port"]
            .clone();
        let port = match port {
            Value::String(named) => container_port(container, &named),
            other => other.as_u64().unwrap(),
        };
        assert_eq!(port, metrics_port, "{name}: probe port");
        if let Some(get) = probe.get("httpGet") {
            assert_eq!(get["path"], "/healthz");
        }
    }
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"].as_str().unwrap(),
        metrics_port.to_string()
    );

    // Resources and hardening.
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][kind][resource].is_null(),
                "{name}: resources.{kind}.{resource}"
            );
        }
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    // Each server reads every variable of its prefix (LOAVES_TRACKER_*,
    // LOAVES_LICENSE_*, LOAVES_SEED_*) and refuses unknown ones; Service
    // links would inject some. Off everywhere.
    assert_eq!(
        pod["enableServiceLinks"], false,
        "{name}: enableServiceLinks"
    );

    // Kubernetes expands $(VAR) in an env value only from variables defined
    // earlier in the list (a later one stays literal).
    let mut defined = BTreeSet::new();
    for var in container["env"].as_sequence().into_iter().flatten() {
        if let Some(value) = var.get("value").and_then(|v| v.as_str()) {
            let mut rest = value;
            while let Some(start) = rest.find("$(") {
                let end = rest[start..].find(')').unwrap() + start;
                let reference = &rest[start + 2..end];
                assert!(
                    defined.contains(reference),
                    "{name}: env {:?} uses $({reference}) before it is defined",
                    var["name"]
                );
                rest = &rest[end..];
            }
        }
        defined.insert(var["name"].as_str().unwrap().to_owned());
    }

    // A PodDisruptionBudget selects the pods.
    let labels = &template["metadata"]["labels"];
    assert!(
        docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"
            && d["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .unwrap()
                .iter()
                .all(|(k, v)| &labels[k] == v)),
        "{name}: no PodDisruptionBudget"
    );

    // Services selecting these pods target ports the container has.
    let port_names: BTreeSet<&str> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for service in docs.iter().filter(|d| d["kind"] == "Service") {
        let selector = service["spec"]["selector"].as_mapping().unwrap();
        if !selector.iter().all(|(k, v)| {
            &labels[k] == v || k.as_str() == Some("statefulset.kubernetes.io/pod-name")
        }) {
            continue;
        }
        for port in service["spec"]["ports"].as_sequence().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(
                port_names.contains(target),
                "Service {:?} targets {target}, not a port of {name}",
                service["metadata"]["name"]
            );
        }
    }
}

#[test]
fn manifests_give_the_binaries_what_they_read() {
    for (overlay, rendered) in rendered_overlays() {
        let docs = yaml_documents(&rendered);
        let license = find(&docs, "Deployment", "loaves-license-server");
        check_pod(&docs, license, "license-server.toml", "metrics_listen");
        let tracker = find(&docs, "StatefulSet", "loaves-tracker");
        check_pod(&docs, tracker, "tracker.toml", "http_listen");
        let seed = find(&docs, "Deployment", "loaves-edge-seed");
        check_pod(&docs, seed, "edge-seed.toml", "http_listen");
        check_seed(&overlay, &docs, seed, tracker);

        // License server listeners are container ports.
        let config: toml::Value = toml::from_str(
            find_prefix(&docs, "ConfigMap", "loaves-license-server-config")["data"]
                ["license-server.toml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let container = &license["spec"]["template"]["spec"]["containers"][0];
        for (field, port) in [("listen", "grpc"), ("clearkey_listen", "clearkey")] {
            assert_eq!(
                port_of(config[field].as_str().unwrap()),
                container_port(container, port),
                "{overlay}: license server {field}"
            );
        }

        // Shards: one name per replica, and each pod's own name among them.
        let container = &tracker["spec"]["template"]["spec"]["containers"][0];
        let replicas = tracker["spec"]["replicas"].as_u64().unwrap();
        let shards: Vec<&str> = env_value(container, "LOAVES_TRACKER_SHARDS")
            .unwrap()
            .split(',')
            .collect();
        assert_eq!(
            shards.len() as u64,
            replicas,
            "{overlay}: shards vs replicas"
        );
        let shard_name = env_value(container, "LOAVES_TRACKER_SHARD_NAME").unwrap();
        let mut own = BTreeSet::new();
        for ordinal in 0..replicas {
            let pod = format!("loaves-tracker-{ordinal}");
            let name = shard_name.replace("$(POD_NAME)", &pod);
            assert!(
                shards.contains(&name.as_str()),
                "{overlay}: pod {pod} names itself {name}, not in {shards:?}"
            );
            own.insert(name);
        }
        assert_eq!(own.len() as u64, replicas);
        let config: toml::Value = toml::from_str(
            find_prefix(&docs, "ConfigMap", "loaves-tracker-config")["data"]["tracker.toml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            port_of(config["quic_listen"].as_str().unwrap()),
            container_port(container, "quic")
        );
    }
}

/// The edge seed: QUIC on a UDP port reachable from outside (host network
/// with equal host ports, or a UDP Service of type LoadBalancer/NodePort),
/// cluster DNS for the tracker names, the tracker list equal to the shard
/// list (titles map to shards by hashing these very strings), titles the
/// seed accepts, an advertised address viewers can dial, and the key and
/// credential from the seed's Secret.
fn check_seed(overlay: &str, docs: &[Value], seed: &Value, tracker: &Value) {
    let pod = &seed["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let config: toml::Value = toml::from_str(
        find_prefix(docs, "ConfigMap", "loaves-edge-seed-config")["data"]["edge-seed.toml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let quic = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "quic")
        .unwrap();
    assert_eq!(quic["protocol"], "UDP", "{overlay}: QUIC is UDP");
    assert_eq!(
        quic["containerPort"].as_u64().unwrap(),
        port_of(config["quic_listen"].as_str().unwrap())
    );
    assert_eq!(
        container_port(container, "http"),
        port_of(config["http_listen"].as_str().unwrap())
    );
    let labels = &seed["spec"]["template"]["metadata"]["labels"];
    if pod["hostNetwork"] == true {
        for port in container["ports"].as_sequence().unwrap() {
            assert_eq!(
                port["hostPort"], port["containerPort"],
                "{overlay}: host network: hostPort = containerPort"
            );
        }
        assert_eq!(
            pod["dnsPolicy"], "ClusterFirstWithHostNet",
            "{overlay}: cluster DNS from the host network"
        );
        assert_eq!(
            seed["spec"]["strategy"]["type"], "Recreate",
            "{overlay}: host ports are released before the new pod starts"
        );
    } else {
        assert!(
            docs.iter().any(|d| {
                d["kind"] == "Service"
                    && matches!(
                        d["spec"]["type"].as_str(),
                        Some("LoadBalancer" | "NodePort")
                    )
                    && d["spec"]["selector"]
                        .as_mapping()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| &labels[k] == v)
                    && d["spec"]["ports"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|p| p["protocol"] == "UDP" && p["targetPort"] == "quic")
            }),
            "{overlay}: the seed's QUIC port is not exposed over UDP"
        );
    }
    let tracker_container = &tracker["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "LOAVES_SEED_TRACKER__ADDRESSES"),
        env_value(tracker_container, "LOAVES_TRACKER_SHARDS"),
        "{overlay}: the seed's trackers are the shard list"
    );
    for title in env_value(container, "LOAVES_SEED_TITLES")
        .unwrap()
        .split(',')
    {
        assert!(
            !title.is_empty()
                && title
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "{overlay}: title {title:?}"
        );
    }
    let advertise = env_value(container, "LOAVES_SEED_ADVERTISE").unwrap();
    assert!(
        advertise.ends_with(&format!(":{}", quic["containerPort"].as_u64().unwrap())),
        "{overlay}: advertise {advertise} is the QUIC port"
    );
    for field in ["identity_key", "credential"] {
        let path = config[field].as_str().unwrap();
        let (dir, _) = path.rsplit_once('/').unwrap();
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap();
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert!(
            volume.get("secret").is_some(),
            "{overlay}: {field} comes from a Secret"
        );
    }
}

/// The DNS names Prometheus discovers in the cluster are headless Services
/// of the production overlay, on the metrics port.
#[test]
fn prometheus_dns_discovery_matches_the_services() {
    let config = yaml(&deploy().join("prometheus/prometheus-kubernetes.yml"));
    let docs = yaml_documents(&deploy().join("k8s/rendered/production.yaml"));
    let mut checked = 0;
    for job in config["scrape_configs"].as_sequence().unwrap() {
        for sd in job["dns_sd_configs"].as_sequence().into_iter().flatten() {
            for name in sd["names"].as_sequence().unwrap() {
                let name = name.as_str().unwrap();
                let mut parts = name.split('.');
                let (service, namespace) = (parts.next().unwrap(), parts.next().unwrap());
                let found = find(&docs, "Service", service);
                assert_eq!(found["metadata"]["namespace"], namespace, "{name}");
                assert_eq!(found["spec"]["clusterIP"], "None", "{name}: headless");
                let port = sd["port"].as_u64().unwrap();
                assert!(
                    found["spec"]["ports"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|p| p["port"].as_u64() == Some(port)),
                    "{name}: port {port}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3, "the license server, tracker and edge seed jobs");
}
