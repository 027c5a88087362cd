#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The simulator on small events: deterministic, P2P offloads, the baseline
//! does not, and the report's figures are consistent.

use loaves_sim::{SimConfig, Simulation};

fn small(policy: &str) -> SimConfig {
    SimConfig {
        viewers: 60,
        duration_s: 120,
        join_window_s: 20,
        seeds: 1,
        policy: policy.into(),
        seed: 42,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_same_report() {
    let (a, _) = Simulation::new(small("deadline-first")).unwrap().run();
    let (b, _) = Simulation::new(small("deadline-first")).unwrap().run();
    assert_eq!(a, b);
}

#[test]
fn peers_carry_most_bytes_and_quality_holds() {
    let (p2p, engine) = Simulation::new(small("deadline-first")).unwrap().run();
    let (cdn, _) = Simulation::new(small("cdn-only")).unwrap().run();
    assert_eq!(p2p.viewers, 60);
    assert!(engine.polls > 0 && engine.transfers > 0);
    // Everyone watched roughly the same amount either way.
    let ratio = p2p.bytes_total() as f64 / cdn.bytes_total() as f64;
    assert!((0.9..1.1).contains(&ratio), "bytes p2p/cdn-only = {ratio}");
    // The baseline never uses peers.
    assert_eq!(cdn.bytes_peer, 0);
    assert_eq!(cdn.offload_peer, 0.0);
    // Peers carry a substantial share. (The goal is 0.8 of the limit; the
    // current policy reaches about half of it on this event — see
    // BENCHMARKS.md — so this checks that P2P works, not that it is tuned.)
    assert!(p2p.offload_limit > 0.9, "{p2p:?}");
    assert!(
        p2p.offload_peer >= 0.4,
        "offload {} vs limit {}",
        p2p.offload_peer,
        p2p.offload_limit
    );
    assert!(p2p.bytes_cdn + p2p.bytes_seed < cdn.bytes_cdn / 2);
    // And costs no extra stalls beyond a small tolerance of the baseline.
    assert!(
        p2p.rebuffer_ratio <= cdn.rebuffer_ratio + 0.01,
        "p2p {} vs cdn-only {}",
        p2p.rebuffer_ratio,
        cdn.rebuffer_ratio
    );
    assert!(p2p.startup_ms_p50 > 0 && p2p.startup_ms_p95 >= p2p.startup_ms_p50);
    assert!(p2p.cross_isp_bytes <= p2p.bytes_peer);
}

#[test]
fn upload_starved_swarm_is_bounded_by_its_upload() {
    // Viewers can upload only a fifth of the bitrate: the limit is ~0.2.
    let config = SimConfig {
        viewer_upload_bps: 1_000_000,
        ..small("deadline-first")
    };
    let (report, _) = Simulation::new(config).unwrap().run();
    assert!(report.offload_limit < 0.25, "{report:?}");
    assert!(
        report.offload_peer <= report.offload_limit + 0.02,
        "{report:?}"
    );
}

#[test]
fn bad_configs_are_refused() {
    for config in [
        SimConfig {
            viewers: 0,
            ..SimConfig::default()
        },
        SimConfig {
            segment_ms: 0,
            ..SimConfig::default()
        },
        SimConfig {
            policy: "random".into(),
            ..SimConfig::default()
        },
        SimConfig {
            isps: 0,
            ..SimConfig::default()
        },
    ] {
        assert!(Simulation::new(config).is_err());
    }
}

#[test]
fn a_link_slower_than_the_bitrate_stalls_by_the_expected_share() {
    // 4 Mbit/s of download for a 5 Mbit/s stream, CDN only: each 2 s
    // segment takes 2.5 s, so about a fifth of the watch time is stalled.
    let config = SimConfig {
        viewers: 5,
        duration_s: 300,
        join_window_s: 1,
        viewer_download_bps: 4_000_000,
        ..small("cdn-only")
    };
    let (report, _) = Simulation::new(config).unwrap().run();
    assert!(report.rebuffer_events > 0, "{report:?}");
    assert!(
        (0.12..0.25).contains(&report.rebuffer_ratio),
        "rebuffer ratio {}",
        report.rebuffer_ratio
    );
}

#[test]
fn a_seed_refuses_uploads_beyond_its_slots() {
    let (unlimited, _) = Simulation::new(small("deadline-first")).unwrap().run();
    let (one_slot, _) = Simulation::new(SimConfig {
        seed_upload_slots: 1,
        ..small("deadline-first")
    })
    .unwrap()
    .run();
    // One upload at a time: the seed sends less, and what it refuses
    // (BUSY) comes from elsewhere: the scheduler backs off a busy seed
    // instead of asking it again, so the viewers get (nearly) as many bytes
    // and rebuffer for under 0.1 % of their watch time.
    assert!(
        one_slot.bytes_seed < unlimited.bytes_seed,
        "one slot {} vs unlimited {}",
        one_slot.bytes_seed,
        unlimited.bytes_seed
    );
    assert!(
        one_slot.bytes_total() as f64 >= 0.98 * unlimited.bytes_total() as f64,
        "one slot delivered {} bytes against {}",
        one_slot.bytes_total(),
        unlimited.bytes_total()
    );
    assert!(one_slot.rebuffer_ratio < 1e-3, "{one_slot:?}");
    assert!(one_slot.bytes_seed > 0, "{one_slot:?}");
}

/// Churn: half the viewers leave after about 40 s. Those who stay keep
/// playing from their remaining neighbours, seeds and the CDN: departures
/// are counted, fewer bytes are fetched than when everybody stays, peers
/// still carry bytes, and rebuffering stays under 0.1 %.
#[test]
fn viewers_leaving_mid_event_do_not_stall_those_who_stay() {
    let churned = SimConfig {
        churn_leave_fraction: 0.5,
        churn_watch_s: 40,
        ..small("deadline-first")
    };
    let (steady, _) = Simulation::new(small("deadline-first")).unwrap().run();
    let (report, engine) = Simulation::new(churned.clone()).unwrap().run();
    assert_eq!(report.viewers, 60);
    assert!(
        (20..=40).contains(&engine.departures),
        "{} departures",
        engine.departures
    );
    // Fewer viewer-seconds watched, so fewer bytes fetched.
    assert!(report.bytes_total() < steady.bytes_total());
    assert!(report.bytes_peer > 0, "{report:?}");
    assert!(report.rebuffer_ratio < 1e-3, "{report:?}");
    assert_eq!(report.corrupt_bytes_to_player, 0);
    // Deterministic with churn too.
    let (again, _) = Simulation::new(churned).unwrap().run();
    assert_eq!(report, again);
}

#[test]
fn churn_settings_out_of_range_are_refused() {
    for (fraction, watch) in [(-0.1, 60), (1.5, 60), (0.5, 0)] {
        let config = SimConfig {
            churn_leave_fraction: fraction,
            churn_watch_s: watch,
            ..small("deadline-first")
        };
        let error = Simulation::new(config).unwrap_err().to_string();
        assert!(error.contains("churn"), "{error}");
    }
}
