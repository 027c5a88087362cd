//! The real servers, started the way the manifests start them, and the
//! metric names of the rules and dashboards against their real `/metrics`.
//!
//! A pod of the production overlay is emulated on 127.0.0.1: its volumes
//! become directories (ConfigMaps from the rendered manifests, Secrets made
//! here), absolute paths in its arguments, environment and configuration
//! are mapped onto them, its environment is exactly the manifest's (plus
//! listen addresses on free local ports), and the binaries are the ones
//! `cargo build` left in the target directory (scripts/test.d/deploy.sh
//! builds them). The compose services are started the same way.
//!
//! The edge seed's pod needs the world outside it: its titles' packaged
//! origin is a local directory made here with the real packager, its title
//! one the emulated tracker shard owns, and the tracker it registers with
//! is named `localhost:PORT` (a host name the seed resolves, as it resolves
//! the StatefulSet's names in a cluster).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{deploy, tools_required, which, yaml, yaml_documents};
use loaves_proto::UnixSeconds;
use loaves_proto::keygen;
use loaves_proto::keys::{SessionId, SigningKeyPair};
use loaves_proto::pb;
use loaves_proto::shard::ShardMap;
use loaves_proto::token::SessionToken;
use loaves_wire::identity::PeerIdentity;
use serde_yaml_ng::Value;
use tracker::client::ClientEndpoint;

/// The KEK the emulated Secret holds (fixed: a store keeps the first KEK's
/// check value).
const KEK_HEX: &str = "2323232323232323232323232323232323232323232323232323232323232323";
const ADMIN_TOKEN: &str = "deploy-checks-admin-credential";

// ------------------------------------------------------------------ binaries

/// target/<profile>/ of this test binary (target/<profile>/deps/<test>).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// A workspace binary built by `cargo build`, or `None` (after a notice)
/// when it is missing and tools are optional.
fn binary(name: &str, package: &str) -> Option<PathBuf> {
    let path = target_dir().join(name);
    if path.is_file() {
        return Some(path);
    }
    let hint = format!("cargo build -p {package} first");
    assert!(
        !tools_required(),
        "{} missing: {hint} (scripts/test.d/deploy.sh does)",
        path.display()
    );
    eprintln!("notice: {} missing, skipping ({hint})", path.display());
    None
}

// --------------------------------------------------------------- processes

/// A started server; killed on drop unless it was stopped.
struct Server {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(program);
        command
            .args(args)
            // Only the manifest's environment, as in a container.
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until GET /healthz on `addr` answers 200.
    fn wait_healthy(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before answering /healthz:\n{}",
                    self.name,
                    self.log()
                );
            }
            if let Some((200, body)) = http(addr, "GET", "/healthz", "") {
                assert_eq!(body.trim(), "ok");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /healthz never answered 200:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the process must exit 0 within `grace` (graceful drain).
    fn terminate(&mut self, grace: Duration) {
        let mut child = self.child.take().unwrap();
        match loaves_testkit::process::terminate_blocking(&mut child, grace) {
            Some(status) => assert!(
                status.success(),
                "{} exited with {status} on SIGTERM:\n{}",
                self.name,
                self.log()
            ),
            None => {
                let _ = child.kill();
                panic!(
                    "{} did not stop within {grace:?} of SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP port nothing listens on now (a small race with other processes is
/// accepted).
fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP/1.1 request with a JSON body: (status, body), or `None` if
/// nothing answers. Chunked bodies keep their chunk-size lines; callers
/// only read lines that name metrics, which chunk sizes never do.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    loaves_testkit::http::blocking::request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// The sample names of a Prometheus text exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    loaves_testkit::metrics::Exposition::new(text)
        .names()
        .into_iter()
        .filter(|n| n.starts_with("loaves_"))
        .collect()
}

// ------------------------------------------------------------ pod emulation

/// Files of the Secrets and ConfigMaps the manifests expect to exist
/// outside kustomize: name → (file → content).
type Objects = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Key material made as docs/operations.md tells operators to make it.
struct Material {
    dir: PathBuf,
    tls_cert_pem: String,
    objects: Objects,
    /// (secret, key) → value, for secretKeyRef.
    secret_values: BTreeMap<(String, String), String>,
}

impl Material {
    fn new(dir: &Path, store_url: String) -> Self {
        let dir = dir.join("material");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["license", "entitlement", "tracker", "origin"] {
            keygen::write_key_pair(&dir, name, false).unwrap();
        }
        let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
        let tls = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let tls_cert_pem = tls.cert.pem();
        let mut objects = Objects::new();
        let mut put = |object: &str, file: &str, bytes: Vec<u8>| {
            objects
                .entry(object.to_owned())
                .or_default()
                .insert(file.to_owned(), bytes);
        };
        put("loaves-license-keys", "license.key", read("license.key"));
        put(
            "loaves-license-keys",
            "entitlement.pub",
            read("entitlement.pub"),
        );
        put(
            "loaves-license-tls",
            "tls.crt",
            tls_cert_pem.clone().into_bytes(),
        );
        put(
            "loaves-license-tls",
            "tls.key",
            tls.signing_key.serialize_pem().into_bytes(),
        );
        put(
            "loaves-tracker-identity",
            "tracker.key",
            read("tracker.key"),
        );
        put("loaves-trust", "license.pub", read("license.pub"));
        put("loaves-trust", "origin.pub", read("origin.pub"));
        let mut secret_values = BTreeMap::new();
        for (key, value) in [
            ("kek", KEK_HEX.to_owned()),
            ("admin-token", ADMIN_TOKEN.to_owned()),
            ("store-url", store_url),
        ] {
            secret_values.insert(("loaves-license-secrets".to_owned(), key.to_owned()), value);
        }
        Self {
            dir,
            tls_cert_pem,
            objects,
            secret_values,
        }
    }

    fn license_key(&self) -> SigningKeyPair {
        keygen::read_signing_key(&self.dir.join("license.key")).unwrap()
    }

    /// The seed's key pair and its credential, minted with the real
    /// `edge-seed credential` as docs/operations.md says, in the Secret
    /// loaves-edge-seed-identity.
    fn add_seed(&mut self, edge_seed: &Path) {
        keygen::write_key_pair(&self.dir, "seed", false).unwrap();
        let credential = self.dir.join("seed.credential");
        let output = Command::new(edge_seed)
            .arg("credential")
            .arg("--operator-key")
            .arg(self.dir.join("license.key"))
            .arg("--seed-key")
            .arg(self.dir.join("seed.pub"))
            .args(["--name", "seed-0", "--region", "eu-west", "--isp", "isp-a"])
            .args(["--title", "*", "--valid-days", "30", "--out"])
            .arg(&credential)
            .output()
            .unwrap();
        common::assert_success("edge-seed credential", &output);
        let secret = self
            .objects
            .entry("loaves-edge-seed-identity".to_owned())
            .or_default();
        secret.insert(
            "seed.key".to_owned(),
            std::fs::read(self.dir.join("seed.key")).unwrap(),
        );
        secret.insert(
            "seed.credential".to_owned(),
            std::fs::read(credential).unwrap(),
        );
    }
}

/// Packages a small synthetic `title` into `origin/title` with the real
/// packager (development key source: the seed never sees content keys).
fn package_title(edge_seed: &Path, origin: &Path, title: &str, origin_key: &Path) {
    let clear = origin.with_extension("clear");
    let output = Command::new(edge_seed)
        .arg("synth")
        .arg(&clear)
        .args([
            "--duration-s",
            "6",
            "--video",
            "320x180:200000",
            "--audio-bitrate",
            "0",
        ])
        .output()
        .unwrap();
    common::assert_success("edge-seed synth", &output);
    let output = Command::new(edge_seed)
        .arg("package")
        .arg(&clear)
        .arg("-o")
        .arg(origin.join(title))
        .args(["-t", title, "--key-source", "local", "-q", "--origin-key"])
        .arg(origin_key)
        .output()
        .unwrap();
    common::assert_success("edge-seed package", &output);
}

/// A fresh database for one server: on the PostgreSQL of scripts/test
/// (`LOAVES_TEST_POSTGRES_URL`, created with psql) when there is one, as
/// in production; else SQLite, with a notice.
fn store_url(dir: &Path, name: &str) -> String {
    if let Ok(base) = std::env::var("LOAVES_TEST_POSTGRES_URL") {
        let psql = which("psql").or_else(|| {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| Some(e.ok()?.path().join("bin/psql")))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            found.pop()
        });
        if let Some(psql) = psql {
            let database = format!(
                "loaves_deploy_{name}_{}",
                hex::encode(loaves_proto::keys::random_array::<4>().unwrap())
            );
            let output = Command::new(psql)
                .arg(&base)
                .arg("-q")
                .arg("-c")
                .arg(format!("CREATE DATABASE {database}"))
                .output()
                .unwrap();
            common::assert_success("psql CREATE DATABASE", &output);
            let (head, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
            return format!("{head}/{database}");
        }
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI: LOAVES_TEST_POSTGRES_URL and psql expected (scripts/test.d/postgres.sh)"
    );
    eprintln!("notice: no test PostgreSQL, the license server runs on SQLite here");
    format!("sqlite://{}", dir.join(format!("{name}.db")).display())
}

/// Container paths mapped onto host directories, longest first.
#[derive(Default)]
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn add(&mut self, container: &str, host: PathBuf) {
        self.0
            .push((container.trim_end_matches('/').to_owned(), host));
        self.0.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
    }

    /// `text` with every mounted container path replaced by its host path.
    fn map(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (container, host) in &self.0 {
            let mut mapped = String::new();
            let mut rest = out.as_str();
            while let Some(pos) = rest.find(container.as_str()) {
                let after = &rest[pos + container.len()..];
                let boundary = after
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
                mapped.push_str(&rest[..pos]);
                if boundary {
                    mapped.push_str(&host.display().to_string());
                } else {
                    mapped.push_str(container);
                }
                rest = after;
            }
            mapped.push_str(rest);
            out = mapped;
        }
        out
    }
}

/// The first container of a workload's pod, materialised under `dir`: its
/// volumes as directories, and (mapped) args and environment.
struct Pod {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn emulate_pod(
    docs: &[Value],
    workload: &Value,
    pod_name: &str,
    material: &Material,
    dir: &Path,
) -> Pod {
    let spec = &workload["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let mut mounts = Mounts::default();
    for mount in container["volumeMounts"].as_sequence().unwrap() {
        let volume_name = mount["name"].as_str().unwrap();
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume_name)
            .unwrap();
        let host = dir.join(format!("{pod_name}-{volume_name}"));
        std::fs::create_dir_all(&host).unwrap();
        let files: BTreeMap<String, Vec<u8>> = if let Some(cm) = volume.get("configMap") {
            let name = cm["name"].as_str().unwrap();
            match docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            {
                Some(object) => object["data"]
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().as_bytes().to_vec(),
                        )
                    })
                    .collect(),
                None => material.objects.get(name).cloned().unwrap_or_else(|| {
                    panic!("ConfigMap {name} is neither rendered nor documented")
                }),
            }
        } else if let Some(secret) = volume.get("secret") {
            let name = secret["secretName"].as_str().unwrap();
            material.objects.get(name).cloned().unwrap_or_else(|| {
                panic!("Secret {name}: not made by this test (docs/operations.md?)")
            })
        } else {
            assert!(
                volume.get("emptyDir").is_some(),
                "{volume_name}: unknown volume kind"
            );
            BTreeMap::new()
        };
        for (file, bytes) in files {
            std::fs::write(host.join(file), bytes).unwrap();
        }
        mounts.add(mount["mountPath"].as_str().unwrap(), host);
    }

    // The configuration files are in the mounted ConfigMaps: map the paths
    // inside them too.
    for (_, host) in &mounts.0 {
        for entry in std::fs::read_dir(host).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, mounts.map(&text)).unwrap();
            }
        }
    }

    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var.get("value") {
            let mut value = value.as_str().unwrap().to_owned();
            for (k, v) in &env {
                value = value.replace(&format!("$({k})"), v);
            }
            value
        } else if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
            let key = (
                secret["name"].as_str().unwrap().to_owned(),
                secret["key"].as_str().unwrap().to_owned(),
            );
            material
                .secret_values
                .get(&key)
                .unwrap_or_else(|| panic!("secretKeyRef {key:?} not made by this test"))
                .clone()
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod_name.to_owned()
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP" {
            "127.0.0.1".to_owned()
        } else {
            panic!("env {name}: unsupported source");
        };
        env.push((name, mounts.map(&value)));
    }
    let args = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| mounts.map(a.as_str().unwrap()))
        .collect();
    Pod { args, env }
}

// -------------------------------------------------------------------- tests

/// Metric names the rules and dashboards read, less recording-rule outputs
/// (which must be defined) and Prometheus' own `up`.
fn referenced_metric_names() -> BTreeSet<String> {
    let recorded = common::recorded_names();
    let mut names = BTreeSet::new();
    let exprs = common::rule_exprs()
        .into_iter()
        .chain(common::dashboard_exprs());
    for (source, expr) in exprs {
        for name in common::metric_names(&expr) {
            if name.contains(':') {
                assert!(
                    recorded.contains(&name),
                    "{source}: {name} looks recorded but no rule records it"
                );
            } else if name != "up" {
                names.insert(name);
            }
        }
    }
    names
}

fn env_of<'a>(pod: &'a Pod, name: &str) -> &'a str {
    &pod.env.iter().find(|(k, _)| k == name).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_pods_start_and_expose_every_metric_the_rules_and_dashboards_use() {
    let (Some(license_bin), Some(tracker_bin), Some(seed_bin)) = (
        binary("license-server", "license-server"),
        binary("loaves-tracker", "tracker"),
        binary("edge-seed", "edge-seed"),
    ) else {
        return;
    };
    let referenced = referenced_metric_names();
    assert!(
        referenced.len() > 20,
        "expected the rules and dashboards to read many series: {referenced:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut material = Material::new(tmp.path(), store_url(tmp.path(), "k8s"));
    material.add_seed(&seed_bin);
    let docs = yaml_documents(&deploy().join("k8s/rendered/production.yaml"));
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap()
    };

    // License server pod.
    let mut pod = emulate_pod(
        &docs,
        find("Deployment", "loaves-license-server"),
        "ls-0",
        &material,
        tmp.path(),
    );
    let (grpc, ops, clearkey) = (free_tcp(), free_tcp(), free_tcp());
    for (k, v) in [
        ("LOAVES_LICENSE_LISTEN", grpc),
        ("LOAVES_LICENSE_METRICS_LISTEN", ops),
        ("LOAVES_LICENSE_CLEARKEY_LISTEN", clearkey),
    ] {
        pod.env.push((k.to_owned(), v.to_string()));
    }
    let mut license = Server::start(
        "license-server",
        &license_bin,
        &pod.args,
        &pod.env,
        tmp.path().join("license.log"),
    );
    license.wait_healthy(ops);

    // Tracker pod 0 of the StatefulSet.
    let mut pod = emulate_pod(
        &docs,
        find("StatefulSet", "loaves-tracker"),
        "loaves-tracker-0",
        &material,
        tmp.path(),
    );
    let shards: Vec<String> = env_of(&pod, "LOAVES_TRACKER_SHARDS")
        .split(',')
        .map(str::to_owned)
        .collect();
    let shard_name = env_of(&pod, "LOAVES_TRACKER_SHARD_NAME").to_owned();
    let (quic, tracker_http) = (free_udp(), free_tcp());
    pod.env
        .push(("LOAVES_TRACKER_QUIC_LISTEN".into(), quic.to_string()));
    pod.env.push((
        "LOAVES_TRACKER_HTTP_LISTEN".into(),
        tracker_http.to_string(),
    ));
    let mut tracker = Server::start(
        "tracker",
        &tracker_bin,
        &pod.args,
        &pod.env,
        tmp.path().join("tracker.log"),
    );
    tracker.wait_healthy(tracker_http);

    // License traffic: a ClearKey request without a token, and a gRPC
    // license request without an entitlement, both refused.
    let (status, _) = http(
        clearkey,
        "POST",
        "/clearkey",
        r#"{"kids":["AAAAAAAAAAAAAAAAAAAAAA"]}"#,
    )
    .unwrap();
    assert_eq!(status, 401);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    &material.tls_cert_pem,
                ))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("gRPC over TLS with the manifest's certificate");
    let refused = loaves_grpc::license_service_client::LicenseServiceClient::new(channel)
        .acquire_license(pb::AcquireLicenseRequest::default())
        .await;
    assert!(refused.is_err(), "an empty license request is refused");

    // Tracker traffic: a viewer with a token signed by the license server's
    // key, on a title this shard owns, reporting stats; a second report
    // claiming more play time than elapsed (clamped); a bad credential.
    let map = ShardMap::new(shards.iter().cloned());
    assert!(
        map.shards().contains(&shard_name),
        "{shard_name} in {shards:?}"
    );
    let title = (0..10_000)
        .map(|i| format!("title-{i}"))
        .find(|t| map.shard_for(t) == Some(shard_name.as_str()))
        .unwrap();
    let client = ClientEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let viewer = SigningKeyPair::generate().unwrap();
    let identity = PeerIdentity::new(&viewer).unwrap();
    let now = UnixSeconds::now().0;
    let token = SessionToken {
        session_id: SessionId::random().unwrap(),
        account: "deploy-checks".into(),
        title: title.clone(),
        renditions: vec!["720p".into()],
        peer_key: viewer.verifying_key(),
        region: "eu-west".into(),
        isp: "isp-a".into(),
        not_before: UnixSeconds(now - 60),
        expires_at: UnixSeconds(now + 600),
    }
    .sign(&material.license_key());
    let hello = |credential: Vec<u8>| pb::TrackerHello {
        credential: Some(pb::tracker_hello::Credential::SessionToken(credential)),
    };
    let connection = client
        .connect(quic, &identity, hello(token))
        .await
        .expect("a viewer with a valid token connects");
    let announce = |stats: pb::StatsDelta| pb::Announce {
        stats: Some(stats),
        ..loaves_testkit::fixtures::announce(&title, "720p", "127.0.0.1:40000")
    };
    connection
        .announce(announce(pb::StatsDelta {
            bytes_from_peers: 3_000_000,
            bytes_from_seeds: 1_000_000,
            bytes_from_cdn: 2_000_000,
            bytes_uploaded: 1_500_000,
            bytes_cross_isp: 500_000,
            bytes_cross_region: 100_000,
            rebuffer_ms: 400,
            rebuffer_count: 1,
            startup_ms: 900,
            played_ms: 30_000,
            cdn_only: false,
            connects: Default::default(),
        }))
        .await
        .expect("announce");
    // Reports are rate limited per connection: the burst allows a second.
    connection
        .announce(announce(pb::StatsDelta {
            bytes_from_cdn: 1_000,
            played_ms: 3_600_000_000,
            ..Default::default()
        }))
        .await
        .expect("second announce");
    let stranger = PeerIdentity::new(&SigningKeyPair::generate().unwrap()).unwrap();
    if let Ok(bad) = client.connect(quic, &stranger, hello(vec![0; 16])).await {
        let _ = bad.announce(announce(pb::StatsDelta::default())).await;
    }

    // Edge seed pod, serving a title of this shard from a local origin and
    // registering with the tracker by host name.
    let seed_workload = find("Deployment", "loaves-edge-seed");
    let mut pod = emulate_pod(&docs, seed_workload, "seed-0", &material, tmp.path());
    let seed_config: toml::Value = toml::from_str(
        &std::fs::read_to_string(
            pod.args
                .iter()
                .find(|a| a.ends_with("edge-seed.toml"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let origin = tmp.path().join("origin");
    package_title(&seed_bin, &origin, &title, &material.dir.join("origin.key"));
    let (seed_quic, seed_http) = (free_udp(), free_tcp());
    for (k, v) in [
        ("LOAVES_SEED_QUIC_LISTEN", seed_quic.to_string()),
        ("LOAVES_SEED_HTTP_LISTEN", seed_http.to_string()),
        ("LOAVES_SEED_ORIGIN", origin.display().to_string()),
        ("LOAVES_SEED_TITLES", title.clone()),
        (
            "LOAVES_SEED_TRACKER__ADDRESSES",
            format!("localhost:{}", quic.port()),
        ),
        ("LOAVES_SEED_LOG", "info,edge_seed=debug".to_owned()),
    ] {
        pod.env.push((k.to_owned(), v));
    }
    let mut seed = Server::start(
        "edge-seed",
        &seed_bin,
        &pod.args,
        &pod.env,
        tmp.path().join("seed.log"),
    );
    seed.wait_healthy(seed_http);
    // HTTP origin role: a segment twice (origin pull, then a cache hit),
    // then a segment corrupted at the origin (refused, counted).
    let rendition = std::fs::read_dir(origin.join(&title))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().join("manifest.lvm").is_file())
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let segment = |n: u32| format!("/{title}/{rendition}/seg_{n:05}.m4s");
    for _ in 0..2 {
        let (status, _) = http(seed_http, "GET", &segment(0), "").unwrap();
        assert_eq!(status, 200, "{}", seed.log());
    }
    let corrupt = origin.join(&title).join(&rendition).join("seg_00001.m4s");
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&corrupt, bytes).unwrap();
    let (status, _) = http(seed_http, "GET", &segment(1), "").unwrap();
    assert_eq!(status, 502, "a corrupt origin segment is never served");
    // Capacity: one QUIC connection more than max_connections_per_ip from
    // this address is refused before the handshake.
    let per_ip = seed_config["capacity"]["max_connections_per_ip"]
        .as_integer()
        .unwrap() as usize;
    let peer = PeerIdentity::new(&SigningKeyPair::generate().unwrap()).unwrap();
    let client_config = loaves_wire::peerwire::client_config(
        &peer,
        &loaves_wire::peerwire::TransportOptions::default(),
    )
    .unwrap();
    let endpoint = loaves_wire::bind_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let attempts: Vec<_> = (0..=per_ip)
        .map(|_| {
            let connecting = endpoint
                .connect_with(
                    client_config.clone(),
                    seed_quic,
                    loaves_wire::identity::SERVER_NAME,
                )
                .unwrap();
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_secs(4), connecting).await },
            )
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(Ok(connection)) => held.push(connection),
            _ => refused += 1,
        }
    }
    assert!(refused >= 1, "{per_ip} + 1 connections from one address");

    // Scrape until every referenced series is there (swarm gauges appear
    // at the next housekeeping round).
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let mut exposed = BTreeSet::new();
        for addr in [ops, tracker_http, seed_http] {
            let (status, body) = http(addr, "GET", "/metrics", "").unwrap();
            assert_eq!(status, 200);
            exposed.extend(exposed_names(&body));
        }
        let missing: Vec<String> = referenced.difference(&exposed).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "series the rules or dashboards read that the servers do not expose: {missing:?}\n{}",
        seed.log()
    );
    drop(connection);
    drop(held);
    // The seed registered with the tracker it found by name.
    let (_, seed_metrics) = http(seed_http, "GET", "/metrics", "").unwrap();
    assert!(
        seed_metrics.contains(r#"loaves_seed_tracker_registrations_total{result="ok"}"#),
        "{seed_metrics}\n{}",
        seed.log()
    );

    // Graceful stop within the pods' terminationGracePeriodSeconds.
    let grace = |name: &str, kind: &str| {
        Duration::from_secs(
            find(kind, name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap(),
        )
    };
    seed.terminate(grace("loaves-edge-seed", "Deployment"));
    tracker.terminate(grace("loaves-tracker", "StatefulSet"));
    license.terminate(grace("loaves-license-server", "Deployment"));
}

/// The compose services' command, environment and volumes.
struct ComposeService {
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Mounts,
}

fn compose_service(compose: &Value, name: &str, dir: &Path) -> ComposeService {
    let service = &compose["services"][name];
    let compose_dir = deploy().join("compose");
    let mut mounts = Mounts::default();
    for volume in service["volumes"].as_sequence().unwrap() {
        let spec = volume.as_str().unwrap();
        let mut parts = spec.split(':');
        let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
        let host = if source.starts_with('.') || source.starts_with('/') {
            compose_dir.join(source)
        } else {
            assert!(
                compose["volumes"].get(source).is_some(),
                "volume {source} declared"
            );
            let host = dir.join(format!("volume-{source}"));
            std::fs::create_dir_all(&host).unwrap();
            host
        };
        mounts.add(target, host);
    }
    let args = service["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| mounts.map(a.as_str().unwrap()))
        .collect();
    let env = service
        .get("environment")
        .and_then(|e| e.as_mapping())
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                mounts.map(v.as_str().unwrap()),
            )
        })
        .collect();
    ComposeService { args, env, mounts }
}

/// Writes the service's bind-mounted TOML files, paths mapped, into `dir`
/// and points the arguments at the copies.
fn map_config_files(service: &mut ComposeService, dir: &Path) {
    for arg in &mut service.args {
        if arg.ends_with(".toml") {
            let text = std::fs::read_to_string(&*arg).unwrap();
            let copy = dir.join(Path::new(arg.as_str()).file_name().unwrap());
            std::fs::write(&copy, service.mounts.map(&text)).unwrap();
            *arg = copy.display().to_string();
        }
    }
}

#[test]
fn compose_services_start_with_their_configuration() {
    let (Some(license_bin), Some(tracker_bin), Some(seed_bin), Some(_)) = (
        binary("license-server", "license-server"),
        binary("loaves-tracker", "tracker"),
        binary("edge-seed", "edge-seed"),
        binary("loaves-keygen", "loaves-tools"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let compose = yaml(&deploy().join("compose/docker-compose.yml"));

    let mut license = compose_service(&compose, "license-server", tmp.path());
    map_config_files(&mut license, tmp.path());
    // The compose file's database host is the `postgres` service.
    for (k, v) in &mut license.env {
        if k == "LOAVES_LICENSE_STORE__URL" {
            assert!(
                v.starts_with("postgres://"),
                "compose runs the store on PostgreSQL"
            );
            *v = store_url(tmp.path(), "compose");
        }
    }
    let (grpc, ops, clearkey) = (free_tcp(), free_tcp(), free_tcp());
    license
        .env
        .push(("LOAVES_LICENSE_LISTEN".into(), grpc.to_string()));
    license
        .env
        .push(("LOAVES_LICENSE_METRICS_LISTEN".into(), ops.to_string()));
    license.env.push((
        "LOAVES_LICENSE_CLEARKEY_LISTEN".into(),
        clearkey.to_string(),
    ));
    let mut license_server = Server::start(
        "license-server",
        &license_bin,
        &license.args,
        &license.env,
        tmp.path().join("license.log"),
    );
    license_server.wait_healthy(ops);
    let data = tmp.path().join("volume-license-data");
    assert!(
        data.join("dev-cert.pem").is_file(),
        "the development certificate for clients"
    );

    // The tracker trusts the key the license server generated in the
    // shared volume.
    let mut tracker = compose_service(&compose, "tracker", tmp.path());
    map_config_files(&mut tracker, tmp.path());
    let (quic, http_addr) = (free_udp(), free_tcp());
    tracker
        .env
        .push(("LOAVES_TRACKER_QUIC_LISTEN".into(), quic.to_string()));
    tracker
        .env
        .push(("LOAVES_TRACKER_HTTP_LISTEN".into(), http_addr.to_string()));
    let mut tracker_server = Server::start(
        "tracker",
        &tracker_bin,
        &tracker.args,
        &tracker.env,
        tmp.path().join("tracker.log"),
    );
    tracker_server.wait_healthy(http_addr);
    assert!(
        tracker_server.log().contains("trusting license-server key"),
        "{}",
        tracker_server.log()
    );

    // seed-setup: its script, with the image's binaries on PATH, signs
    // the seed's credential with the license key the license server made.
    let setup = compose_service(&compose, "seed-setup", tmp.path());
    let entrypoint: Vec<&str> = compose["services"]["seed-setup"]["entrypoint"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(entrypoint, ["/bin/bash", "-euc"]);
    assert_eq!(setup.args.len(), 1, "one script");
    let path = format!("{}:/usr/bin:/bin", target_dir().display());
    let output = Command::new("bash")
        .arg("-euc")
        .arg(&setup.args[0])
        .env_clear()
        .env("PATH", path)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    common::assert_success("seed-setup", &output);

    // The edge seed, registering with the tracker (the compose name
    // `tracker` is localhost here).
    let mut seed = compose_service(&compose, "edge-seed", tmp.path());
    map_config_files(&mut seed, tmp.path());
    let (seed_quic, seed_http) = (free_udp(), free_tcp());
    seed.env
        .push(("LOAVES_SEED_QUIC_LISTEN".into(), seed_quic.to_string()));
    seed.env
        .push(("LOAVES_SEED_HTTP_LISTEN".into(), seed_http.to_string()));
    seed.env.push((
        "LOAVES_SEED_TRACKER__ADDRESSES".into(),
        format!("localhost:{}", quic.port()),
    ));
    let mut seed_server = Server::start(
        "edge-seed",
        &seed_bin,
        &seed.args,
        &seed.env,
        tmp.path().join("seed.log"),
    );
    seed_server.wait_healthy(seed_http);
    let (status, _) = http(seed_http, "GET", "/demo/master.m3u8", "").unwrap();
    assert_eq!(status, 200, "{}", seed_server.log());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(seed_http, "GET", "/metrics", "").unwrap();
        if body.contains(r#"loaves_seed_tracker_registrations_total{result="ok"}"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the seed never registered:\n{}",
            seed_server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    seed_server.terminate(Duration::from_secs(30));
    tracker_server.terminate(Duration::from_secs(15));
    license_server.terminate(Duration::from_secs(30));
}
