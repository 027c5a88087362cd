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
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("kek"), "01".repeat(32)).unwrap();
        std::fs::write(d.join("admin-token"), ADMIN).unwrap();
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
    let untrusted = GrpcKeySource::new(
        format!("https://{}", s.grpc_addr),
        Some(ADMIN.into()),
        Some(other_cert),
    )
    .with_timeout(Duration::from_secs(5));
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
