#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The network lab in CI (loadtests/lab/ci-*.toml): the platform's real
//! binaries in a namespace "internet", `loaves-viewer` processes behind
//! NATs in nftables, each in its own network namespace.
//!
//! Root and nftables are needed (scripts/test.d/nftables.sh installs
//! nftables and sets LOAVES_REQUIRE_LAB=1 as root). Without them the tests
//! say why and pass, unless CI=true or LOAVES_REQUIRE_LAB=1: then a
//! missing capability is a failure.
//!
//! The binaries (`license-server`, `loaves-tracker`, `edge-seed`,
//! `loaves-viewer`) must be built (`cargo test --workspace` builds them;
//! else `cargo build -p license-server -p tracker -p edge-seed -p
//! loaves-viewer`). The two runs are serialised here, and the test group
//! `network-lab` of .config/nextest.toml keeps nextest from overlapping
//! them with another lab.

use std::path::Path;
use std::sync::Mutex;

use loaves_loadtests::lab::{self, LabRun, NatKind, Scenario};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether the lab can run here; panics when it cannot but must.
fn lab_available() -> bool {
    let Some(why) = lab::net::unavailable() else {
        return true;
    };
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !flag("CI") && !flag("LOAVES_REQUIRE_LAB"),
        "the network lab must run here (CI or LOAVES_REQUIRE_LAB is set) but cannot: {why}"
    );
    eprintln!("NOT RUN: {why}");
    false
}

fn run(name: &str) -> LabRun {
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lab")
        .join(format!("{name}.toml"));
    let scenario = Scenario::load(&path).unwrap();
    let run = lab::run(&scenario, true).unwrap();
    eprintln!("{}", run.table());
    for v in &run.viewers {
        eprintln!("{}: {:?}", v.name, v.connections);
    }
    eprintln!("tracker: {:?}", run.tracker);
    let left = lab::net::lab_namespaces().unwrap();
    assert!(
        !left.iter().any(|n| n.starts_with(&format!(
            "{}{}-",
            lab::net::PREFIX,
            std::process::id()
        ))),
        "namespaces left: {left:?}"
    );
    run
}

fn played_without_stall(run: &LabRun) {
    for v in &run.viewers {
        assert!(v.ok, "{} did not play to the end: {:?}", v.name, v.error);
        assert_eq!(v.stalls, 0, "{} stalled: {v:?}", v.name);
        assert!(v.played_s >= 10.0, "{} played {} s", v.name, v.played_s);
    }
}

/// Full cone × full cone, port-restricted × full cone, a carrier-grade NAT
/// behind a home NAT with everyone, and two viewers behind one router:
/// every pair connects directly, every viewer detects an
/// endpoint-independent mapping, nobody stalls.
#[test]
fn endpoint_independent_nats_all_connect_directly() {
    if !lab_available() {
        return;
    }
    let run = run("ci-cones");
    played_without_stall(&run);
    for pair in &run.pairs {
        assert!(pair.expected, "{pair:?}");
        assert!(
            pair.direct > 0,
            "{} ({}) and {} ({}) did not connect directly: {pair:?}",
            pair.a,
            pair.nat_a.name(),
            pair.b,
            pair.nat_b.name()
        );
    }
    let lan = run.pair("lan.1", "lan.2").unwrap();
    assert!(lan.same_home && lan.direct > 0, "{lan:?}");
    for v in &run.viewers {
        assert_eq!(v.nat_class, "ei", "{}: {v:?}", v.name);
    }
    assert!(run.offload > 0.0, "no byte from peers: {}", run.table());
}

/// Two port-restricted homes punch to each other and exchange peer bytes;
/// two symmetric NATs do not connect, and their viewers play from the seed
/// and the CDN without a stall; the viewer whose network blocks UDP plays
/// from the CDN alone without a stall.
#[test]
fn symmetric_and_udp_blocked_fall_back_without_stalls() {
    if !lab_available() {
        return;
    }
    let run = run("ci-fallback");
    played_without_stall(&run);

    let pr = run.pair("pr-1", "pr-2").unwrap();
    assert!(
        pr.direct > 0,
        "the port-restricted homes did not connect: {pr:?}"
    );
    // Nobody else can reach them (a symmetric NAT's packets come from a
    // port they never sent to; UDP is blocked): their peer bytes are each
    // other's.
    for other in ["sym-1", "sym-2", "udp"] {
        for p in ["pr-1", "pr-2"] {
            let pair = run.pair(p, other).unwrap();
            assert_eq!(pair.direct, 0, "{pair:?}");
        }
    }
    let (a, b) = (run.viewer("pr-1").unwrap(), run.viewer("pr-2").unwrap());
    assert!(
        a.bytes_from_peers + b.bytes_from_peers > 0,
        "no peer byte between the port-restricted homes: {a:?} {b:?}"
    );
    assert!(
        a.bytes_uploaded + b.bytes_uploaded > 0,
        "neither port-restricted viewer uploaded: {a:?} {b:?}"
    );

    let sym = run.pair("sym-1", "sym-2").unwrap();
    assert_eq!(sym.direct, 0, "{sym:?}");
    for name in ["sym-1", "sym-2"] {
        let v = run.viewer(name).unwrap();
        assert_eq!(v.nat, NatKind::Symmetric);
        assert_eq!(v.nat_class, "ed", "{name}: {v:?}");
        assert_eq!(v.bytes_from_peers, 0, "{name}: {v:?}");
        assert!(v.bytes_from_seeds + v.bytes_from_cdn > 0, "{v:?}");
    }

    let udp = run.viewer("udp").unwrap();
    assert_eq!(udp.bytes_from_peers, 0, "{udp:?}");
    assert_eq!(udp.bytes_from_seeds, 0, "{udp:?}");
    assert!(udp.bytes_from_cdn > 0, "{udp:?}");
}
