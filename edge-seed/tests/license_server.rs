//! `GrpcKeySource` against the real license server (started in-process on
//! 127.0.0.1 with its self-signed development certificate, SQLite store):
//! keys come back stable and distinct, a bad admin token and an untrusted
//! certificate are clear errors, and a whole packaging run uses the keys the
//! server holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use edge_seed::keysource::{GrpcKeySource, KeyRequest, KeySource, KeySourceError};
use edge_seed::package;
use license_server::{Config, ManualClock, RunningServer};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::manifest::Scheme;

const ADMIN: &str = "packager-test-admin";

struct Server {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
}

impl Server {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Secret files must be private to their owner.
        for (name, value) in [("kek", "01".repeat(32)), ("admin-token", ADMIN.to_owned())] {
            loaves_testkit::files::write_private(&d.join(name), value);
        }
        let signin = loaves_proto::keygen::write_key_pair(d, "signin", true).unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            clearkey_listen: None,
            data_dir: d.join("data"),
            ..Config::default()
        };
        config.store.url = Some(format!("sqlite://{}", d.join("store.db").display()));
        config.keys.kek_file = Some(d.join("kek"));
        config.keys.admin_token_file = Some(d.join("admin-token"));
        config.keys.entitlement_public_keys = vec![signin.public_key];
        // The default catalog has the title "demo" with audio, sd and hd.
        tweak(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let clock = Arc::new(ManualClock::new(UnixSeconds::now()));
        let server = runtime
            .block_on(license_server::start(config, clock))
            .unwrap();
        Self {
            _dir: dir,
            runtime,
            server: Some(server),
        }
    }

    fn source(&self, token: &str) -> GrpcKeySource {
        let s = self.server.as_ref().unwrap();
        GrpcKeySource::new(
            format!("https://{}", s.grpc_addr),
            Some(token.to_owned()),
            Some(s.tls_cert_pem.clone().into_bytes()),
        )
        .with_timeout(Duration::from_secs(10))
    }

    /// The admin's key source trusting `ca_pem` (PEM) for the server's
    /// certificate.
    fn source_trusting(&self, ca_pem: Vec<u8>) -> GrpcKeySource {
        let s = self.server.as_ref().unwrap();
        GrpcKeySource::new(
            format!("https://127.0.0.1:{}", s.grpc_addr.port()),
            Some(ADMIN.into()),
            Some(ca_pem),
        )
        .with_timeout(Duration::from_secs(5))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = self.runtime.block_on(s.shutdown());
        }
    }
}

fn requests() -> Vec<KeyRequest> {
    let mut v = Vec::new();
    for t in ["audio", "sd", "hd"] {
        for p in 0..3 {
            v.push(KeyRequest {
                track_type: t.into(),
                key_period: p,
            });
        }
    }
    v
}

#[test]
fn keys_from_the_license_server_are_stable_and_distinct() {
    let server = Server::start();
    let src = server.source(ADMIN);
    let first = src.get_keys("demo", &requests()).unwrap();
    assert_eq!(first.len(), 9);
    let kids: std::collections::HashSet<_> = first.iter().map(|k| k.kid).collect();
    assert_eq!(kids.len(), 9);
    let keys: std::collections::HashSet<_> = first.iter().map(|k| *k.key.as_bytes()).collect();
    assert_eq!(keys.len(), 9);
    let again = src.get_keys("demo", &requests()[..2]).unwrap();
    assert_eq!(again[..], first[..2]);
}

#[test]
fn bad_token_and_untrusted_certificate_are_clear_errors() {
    let server = Server::start();
    let err = server
        .source("wrong")
        .get_keys("demo", &requests())
        .unwrap_err();
    assert!(matches!(err, KeySourceError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
    let other_cert = another_servers_certificate();
    let s = server.server.as_ref().unwrap();
    let untrusted = server.source_trusting(other_cert);
    let err = untrusted.get_keys("demo", &requests()).unwrap_err();
    assert!(matches!(err, KeySourceError::Unavailable { .. }), "{err:?}");
    // Without any CA for https: a configuration error, before connecting.
    let none = GrpcKeySource::new(format!("https://{}", s.grpc_addr), Some(ADMIN.into()), None);
    assert!(matches!(
        none.get_keys("demo", &requests()),
        Err(KeySourceError::Config(_))
    ));
}

/// Another server's certificate: a second license server's self-signed one.
fn another_servers_certificate() -> Vec<u8> {
    let other = Server::start();
    other
        .server
        .as_ref()
        .unwrap()
        .tls_cert_pem
        .clone()
        .into_bytes()
}

#[test]
fn packaging_uses_the_license_server_keys() {
    let server = Server::start();
    let src = server.source(ADMIN);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut opts = options(Scheme::Cbcs);
    opts.title = "demo".into();
    opts.key_period_segments = 5;
    let summary = package(
        &sample_dir().join("master.m3u8"),
        &out,
        &opts,
        &src,
        &SigningKeyPair::generate().unwrap(),
        &mut |_| {},
    )
    .unwrap();
    let served = src.get_keys("demo", &requests()).unwrap();
    for r in &summary.renditions {
        for (period, kid) in &r.kids {
            let k = served
                .iter()
                .find(|k| k.track_type == r.track_type && k.key_period == *period)
                .unwrap();
            assert_eq!(k.kid.0, *kid, "{} period {period}", r.name);
        }
        let init = std::fs::read(out.join(&r.name).join("init.mp4")).unwrap();
        let kid0 = r.kid_of(0).unwrap();
        assert!(
            init.windows(16).any(|w| w == kid0),
            "tenc names the server's KID"
        );
    }
}

/// The license server with its TLS certificate and key from files.
fn server_with_certificate(cert_pem: &str, key_pem: &str) -> (tempfile::TempDir, Server) {
    let files = tempfile::tempdir().unwrap();
    let cert = files.path().join("tls.crt");
    let key = files.path().join("tls.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let server = Server::start_with(|config| {
        config.tls.cert_file = Some(cert.clone());
        config.tls.key_file = Some(key.clone());
    });
    (files, server)
}

fn names() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

#[test]
fn a_self_signed_ca_certificate_is_refused_with_what_works_instead() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    // A self-signed certificate with the CA flag, served as the server's own.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(names()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let (_files, server) = server_with_certificate(&ca_cert.pem(), &ca_key.serialize_pem());
    let source = server.source_trusting(ca_cert.pem().into_bytes());
    let error = source
        .get_keys("demo", &requests())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("CaUsedAsEndEntity")
            && error.contains("presents a CA certificate")
            && error.contains("leaf certificate signed by a CA")
            && error.contains("without the CA flag"),
        "{error}"
    );
    drop(server);

    // What works: that CA signs the server's leaf, the client trusts the CA.
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names())
        .unwrap()
        .signed_by(&leaf_key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    let (_files, server) = server_with_certificate(&leaf.pem(), &leaf_key.serialize_pem());
    let source = server.source_trusting(ca_cert.pem().into_bytes());
    assert_eq!(
        source.get_keys("demo", &requests()).unwrap().len(),
        requests().len()
    );

    // And a self-signed certificate without the CA flag, trusted as itself.
    let own_key = KeyPair::generate().unwrap();
    let own = CertificateParams::new(names())
        .unwrap()
        .self_signed(&own_key)
        .unwrap();
    drop(server);
    let (_files, server) = server_with_certificate(&own.pem(), &own_key.serialize_pem());
    let source = server.source_trusting(own.pem().into_bytes());
    assert_eq!(
        source.get_keys("demo", &requests()).unwrap().len(),
        requests().len()
    );
}

#[test]
fn package_help_says_which_certificate_works() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-seed"))
        .args(["package", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    loaves_testkit::text::assert_mentions(
        "--help",
        &help,
        &[
            "CA that signed it",
            "without the CA flag",
            "CaUsedAsEndEntity",
            "--admin-token-file",
        ],
    );
}
