#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The soak in small (`loadtests soak` runs the full one): the platform's
//! real binaries, two VOD and four live viewers for 40 s, with session
//! tokens that live 7 s (renewal every 5 s, 2 s of grace) and no clock
//! skew tolerated anywhere, and the live content key rotating every 5
//! segments (10 s). Every session crosses several renewals and the live
//! viewers several key periods; what is checked is what a token not
//! replaced in time would break: announcing, peers and their bytes,
//! ClearKey answers, and the servers' own refusal counters.
//!
//! The binaries (`license-server`, `loaves-tracker`, `edge-seed`) must be
//! built, as for `tests/swarm.rs`: `cargo test --workspace` builds them.

use std::path::Path;

use loaves_loadtests::soak::{self, Kind, SoakConfig};

#[test]
fn sessions_past_several_renewals_and_a_key_rotation_keep_announcing_peers_and_keys() {
    let config = SoakConfig {
        name: "soak-ci".into(),
        duration_s: 40,
        window_s: 5,
        vod_viewers: 2,
        // Live injection wants two infrastructure copies of each fresh
        // segment per swarm (`injection_copies`): with two live viewers both
        // are injectors and neither has anything to take from the other
        // once both sit at the live edge. With four, each injects half the
        // segments and the rest come from peers, which is what this test
        // needs to see in every window.
        live_viewers: 4,
        join_window_s: 3,
        latency_segments: 2,
        live_key_period_segments: 5,
        renewal_interval_s: Some(5),
        renewal_grace_s: Some(2),
        token_clock_skew_s: Some(0),
        clearkey_probe_s: 2,
        ..SoakConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = runtime.block_on(soak::run(&config)).unwrap();
    eprint!("{}", run.table());
    eprintln!("{:?}", run.trouble);

    assert!(run.problems().is_empty(), "{:#?}", run.problems());
    for viewer in &run.viewers {
        assert!(viewer.error.is_none(), "{viewer:?}");
        assert!(viewer.segments >= 15, "{viewer:?}");
        // Well past the first token: at least five renewals each.
        assert!(viewer.license_renewals >= 5, "{viewer:?}");
    }
    // The servers refused no token, and the tracker took the refreshed
    // ones on the open connections.
    let refreshes: u64 = run.windows.iter().map(|w| w.token_refreshes).sum();
    assert!(refreshes >= 4 * 5, "{refreshes} refreshes");
    for w in &run.windows {
        assert_eq!(w.token_refusals(), 0, "{w:?}");
    }
    assert_eq!(run.trouble.sessions_ended, 0, "{:?}", run.trouble);
    assert_eq!(run.trouble.renewal_failed, 0, "{:?}", run.trouble);

    // After the first tokens expired (7 s) and until the crowd thins out:
    // every window still has announces, peer connections, bytes from
    // peers on both titles, and right ClearKey answers. The crowd thins
    // out from one window before the end: a VOD player has read its last
    // segment a buffer's length before its playback ends, and live
    // viewers leave 40 s after their own join.
    let token_life = run.token_lifetime_s as f64;
    let crowd_end = (config.duration_s - config.window_s) as f64;
    let late: Vec<_> = run
        .windows
        .iter()
        .filter(|w| w.from_s >= token_life + 3.0 && w.to_s <= crowd_end + 0.5)
        .collect();
    assert!(late.len() >= 4, "{:?}", run.windows);
    for w in &late {
        assert_eq!(
            w.watching,
            config.vod_viewers + config.live_viewers,
            "{w:?}"
        );
        assert!(w.announces > 0, "no announce: {w:?}");
        assert!(w.peers_connected >= 4, "peers lost: {w:?}");
        assert!(w.clearkey_ok > 0 && w.clearkey_failed == 0, "{w:?}");
    }
    let peer_bytes = |kind: Kind| -> Vec<u64> {
        late.iter()
            .map(|w| match kind {
                Kind::Vod => w.vod.peer,
                Kind::Live => w.live.peer,
            })
            .collect()
    };
    // Peers serve each title throughout (a window may fall between two
    // segments of one title, so not every single one).
    for kind in [Kind::Vod, Kind::Live] {
        let bytes = peer_bytes(kind);
        let with_peers = bytes.iter().filter(|b| **b > 0).count();
        assert!(with_peers * 4 >= bytes.len() * 3, "{kind:?}: {bytes:?}");
    }
    // The live key rotated, and the player endpoint gave every new key.
    let periods: std::collections::BTreeSet<u32> = run
        .windows
        .iter()
        .flat_map(|w| w.live_key_periods.iter().copied())
        .collect();
    assert!(periods.len() >= 3, "{periods:?}");
    for viewer in run.viewers.iter().filter(|v| v.kind == Kind::Live) {
        let (first, last) = viewer.sequences.unwrap();
        assert!(last / 5 > first / 5 + 1, "{viewer:?}: under one key period");
    }

    // The report's forms.
    let json = serde_json::to_value(&run).unwrap();
    for field in ["windows", "viewers", "trouble", "token_lifetime_s"] {
        assert!(json.get(field).is_some(), "{field} missing");
    }
    assert!(run.table().lines().count() >= run.windows.len() + 2);
}

/// The scenario file of the full soak parses and keeps the default policy
/// (what BENCHMARKS.md reports it as).
#[test]
fn the_full_soak_scenario_uses_the_default_policy() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/soak.toml");
    let config = SoakConfig::load(&path).unwrap();
    assert_eq!(config.duration_s, 600);
    assert_eq!(config.window_s, 60);
    assert_eq!(config.renewal_interval_s, None);
    assert_eq!(config.renewal_grace_s, None);
    assert_eq!(config.token_clock_skew_s, None);
    assert_eq!(config.token_lifetime().as_secs(), 90);
}
