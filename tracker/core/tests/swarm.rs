//! Deterministic tests of the swarm book, with explicit time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use loaves_proto::{UnixSeconds, pb};
use loaves_swarm::swarm::{AnnounceOutcome, CoreError, PeerKey, Requester, SwarmBook, SwarmConfig};
use loaves_swarm::wire::decode_reply;

fn key(n: u16) -> PeerKey {
    let mut k = [0u8; 32];
    k[..2].copy_from_slice(&n.to_be_bytes());
    k
}

fn number(entry: &pb::PeerEntry) -> u16 {
    u16::from_be_bytes([entry.peer_public_key[0], entry.peer_public_key[1]])
}

struct Viewer {
    n: u16,
    region: &'static str,
    isp: &'static str,
}

impl Viewer {
    fn new(n: u16, region: &'static str, isp: &'static str) -> Self {
        Self { n, region, isp }
    }
}

fn announce_with(
    book: &mut SwarmBook,
    now: u64,
    viewer: &Viewer,
    edit: impl FnOnce(&mut pb::Announce),
) -> Result<AnnounceOutcome, CoreError> {
    let mut announce = pb::Announce {
        swarm: Some(pb::SwarmId {
            title: "film".into(),
            rendition: "720p".into(),
        }),
        addresses: vec![format!(
            "10.0.{}.{}:4000",
            viewer.n / 250,
            viewer.n % 250 + 1
        )],
        holdings: None,
        next_sequence: 0,
        upload_capacity_bps: 10_000_000,
        upload_in_use_bps: 0,
        stats: None,
        max_peers: 0,
        nat_class: 0,
    };
    edit(&mut announce);
    let k = key(viewer.n);
    book.announce(
        UnixSeconds(now),
        &Requester {
            key: &k,
            region: viewer.region,
            isp: viewer.isp,
            observed: None,
        },
        &announce,
    )
}

fn announce(book: &mut SwarmBook, now: u64, viewer: &Viewer) -> pb::AnnounceReply {
    let outcome = announce_with(book, now, viewer, |_| {}).unwrap();
    let reply = decode_reply(&outcome.reply).unwrap();
    assert_eq!(reply.peers.len() as u32, outcome.peers);
    reply
}

fn numbers(reply: &pb::AnnounceReply) -> Vec<u16> {
    reply.peers.iter().map(number).collect()
}

fn book() -> SwarmBook {
    SwarmBook::new(SwarmConfig::default(), 42)
}

#[test]
fn viewers_see_each_other_but_never_themselves() {
    let mut book = book();
    let viewers: Vec<Viewer> = (1..=5).map(|n| Viewer::new(n, "eu", "isp-a")).collect();
    for v in &viewers {
        announce(&mut book, 1000, v);
    }
    for v in &viewers {
        let reply = announce(&mut book, 1001, v);
        let mut seen = numbers(&reply);
        seen.sort_unstable();
        let expected: Vec<u16> = (1..=5).filter(|n| *n != v.n).collect();
        assert_eq!(seen, expected);
        assert_eq!(reply.swarm_size, 5);
        assert_eq!(reply.interval_s, 30);
        let entry = &reply.peers[0];
        assert_eq!(entry.region, "eu");
        assert_eq!(entry.isp, "isp-a");
        assert_eq!(entry.addresses.len(), 1);
    }
    book.check_invariants().unwrap();
}

#[test]
fn silent_peers_expire() {
    let mut book = book();
    let (a, b, c) = (
        Viewer::new(1, "eu", "x"),
        Viewer::new(2, "eu", "x"),
        Viewer::new(3, "eu", "x"),
    );
    announce(&mut book, 1000, &a);
    announce(&mut book, 1050, &b);
    // ttl = 90: at 1090, a (last seen 1000) is still listed.
    let mut seen = numbers(&announce(&mut book, 1090, &c));
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2]);
    // At 1091 a is silent for 91 s: never returned, even before the sweep.
    assert_eq!(numbers(&announce(&mut book, 1091, &c)), vec![2]);
    assert_eq!(book.total_peers(), 3);
    let report = book.expire(UnixSeconds(1091));
    assert_eq!(report.peers, 1);
    assert_eq!(book.total_peers(), 2);
    // Everyone silent: the swarm goes away entirely.
    let report = book.expire(UnixSeconds(5000));
    assert_eq!((report.peers, report.swarms), (2, 1));
    assert_eq!(book.swarm_count(), 0);
    book.check_invariants().unwrap();
}

#[test]
fn locality_order_isp_then_region_then_a_few_others() {
    let mut book = book();
    // 1..=20 same ISP "a" in "eu"; 21..=40 region "eu" other ISPs;
    // 41..=60 elsewhere.
    let mut all = Vec::new();
    for n in 1..=20 {
        all.push(Viewer::new(n, "eu", "a"));
    }
    for n in 21..=40 {
        all.push(Viewer::new(n, "eu", if n % 2 == 0 { "b" } else { "c" }));
    }
    for n in 41..=60 {
        all.push(Viewer::new(n, "us", "d"));
    }
    for v in &all {
        announce(&mut book, 100, v);
    }
    let me = Viewer::new(1000, "eu", "a");
    let class = |n: u16| match n {
        1..=20 => 0,
        21..=40 => 1,
        _ => 2,
    };
    let reply = announce_with(&mut book, 101, &me, |a| a.max_peers = 12).unwrap();
    let got = numbers(&decode_reply(&reply.reply).unwrap());
    assert_eq!(got.len(), 12);
    let classes: Vec<u8> = got.iter().map(|n| class(*n)).collect();
    // Ordered: ISP first, then region, then others.
    assert!(classes.windows(2).all(|w| w[0] <= w[1]), "{classes:?}");
    // Mostly the same ISP, and a few others kept for diversity (12 / 3 = 4
    // slots at most, `diversity_peers` = 3).
    assert_eq!(classes.iter().filter(|c| **c == 0).count(), 9);
    assert_eq!(classes.iter().filter(|c| **c == 2).count(), 3);

    // Asking for more than the same ISP has: the region fills in next.
    let reply = announce_with(&mut book, 101, &me, |a| a.max_peers = 30).unwrap();
    let classes: Vec<u8> = numbers(&decode_reply(&reply.reply).unwrap())
        .iter()
        .map(|n| class(*n))
        .collect();
    assert_eq!(classes.len(), 30);
    assert!(classes.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(classes.iter().filter(|c| **c == 0).count(), 20);
    assert_eq!(classes.iter().filter(|c| **c == 1).count(), 7);
    assert_eq!(classes.iter().filter(|c| **c == 2).count(), 3);
}

#[test]
fn without_others_the_slots_go_to_nearer_peers() {
    let mut book = book();
    for n in 1..=10 {
        announce(&mut book, 100, &Viewer::new(n, "eu", "a"));
    }
    let reply = announce_with(&mut book, 100, &Viewer::new(99, "eu", "a"), |a| {
        a.max_peers = 9
    })
    .unwrap();
    assert_eq!(reply.peers, 9);
}

#[test]
fn unknown_locality_never_matches() {
    let mut book = book();
    for n in 1..=5 {
        announce(&mut book, 100, &Viewer::new(n, "", ""));
    }
    let reply = announce(&mut book, 100, &Viewer::new(9, "", ""));
    assert_eq!(reply.peers.len(), 5);
    assert!(
        reply
            .peers
            .iter()
            .all(|p| p.region.is_empty() && p.isp.is_empty())
    );
}

#[test]
fn peers_holding_the_next_segments_and_with_spare_upload_come_first() {
    let mut book = book();
    // Same ISP for all; 1..=6 hold nothing useful, 7 and 8 hold 100..=110.
    for n in 1..=8u16 {
        announce_with(&mut book, 100, &Viewer::new(n, "eu", "a"), |a| {
            let (first, last) = if n >= 7 { (100, 110) } else { (0, 50) };
            a.holdings = Some(pb::Holdings {
                kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                    first_sequence: first,
                    last_sequence: last,
                })),
            });
            // 8 has more spare upload than 7.
            a.upload_capacity_bps = if n == 8 { 50_000_000 } else { 5_000_000 };
        })
        .unwrap();
    }
    let reply = announce_with(&mut book, 101, &Viewer::new(50, "eu", "a"), |a| {
        a.next_sequence = 101;
        a.max_peers = 3;
    })
    .unwrap();
    let got = numbers(&decode_reply(&reply.reply).unwrap());
    assert_eq!(&got[..2], &[8, 7]);
    let reply = decode_reply(&reply.reply).unwrap();
    assert_eq!(reply.peers[0].spare_upload_bps, 50_000_000);

    // A peer whose upload is fully used ranks below one with spare.
    announce_with(&mut book, 102, &Viewer::new(8, "eu", "a"), |a| {
        a.holdings = Some(pb::Holdings {
            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                first_sequence: 100,
                last_sequence: 110,
            })),
        });
        a.upload_capacity_bps = 50_000_000;
        a.upload_in_use_bps = 50_000_000;
    })
    .unwrap();
    let reply = announce_with(&mut book, 103, &Viewer::new(50, "eu", "a"), |a| {
        a.next_sequence = 101;
        a.max_peers = 3;
    })
    .unwrap();
    assert_eq!(&numbers(&decode_reply(&reply.reply).unwrap())[..2], &[7, 8]);
}

fn register_seed(
    book: &mut SwarmBook,
    now: u64,
    n: u16,
    region: &str,
    isp: &str,
    swarms: &[(&str, &str)],
) {
    let k = key(n);
    book.register_seed(
        UnixSeconds(now),
        &Requester {
            key: &k,
            region,
            isp,
            observed: None,
        },
        &pb::SeedRegistration {
            swarms: swarms
                .iter()
                .map(|(t, r)| pb::SwarmId {
                    title: (*t).into(),
                    rendition: (*r).into(),
                })
                .collect(),
            addresses: vec!["192.0.2.1:4433".into()],
            upload_capacity_bps: 1_000_000_000,
            upload_in_use_bps: 0,
        },
    )
    .unwrap();
}

#[test]
fn seeds_are_always_present_and_expire() {
    let mut book = book();
    register_seed(&mut book, 100, 900, "us", "far", &[("film", "720p")]);
    register_seed(
        &mut book,
        100,
        901,
        "eu",
        "a",
        &[("film", "720p"), ("film", "1080p")],
    );
    register_seed(&mut book, 100, 902, "eu", "a", &[("other", "720p")]);
    for n in 1..=50 {
        announce(&mut book, 100, &Viewer::new(n, "eu", "a"));
    }
    // Even with room for a single peer, both seeds of the swarm are listed,
    // the one in the requester's ISP first.
    let reply = announce_with(&mut book, 101, &Viewer::new(60, "eu", "a"), |a| {
        a.max_peers = 1
    })
    .unwrap();
    let reply = decode_reply(&reply.reply).unwrap();
    assert_eq!(reply.peers.len(), 1);
    let seeds: Vec<u16> = reply.seeds.iter().map(number).collect();
    assert_eq!(seeds, vec![901, 900]);
    assert!(reply.seeds.iter().all(|s| s.is_seed));
    assert!(reply.peers.iter().all(|p| !p.is_seed));
    // A new swarm with only a seed: the first viewer gets the seed.
    let reply = announce_with(&mut book, 101, &Viewer::new(70, "eu", "a"), |a| {
        a.swarm.as_mut().unwrap().rendition = "1080p".into();
    })
    .unwrap();
    let reply = decode_reply(&reply.reply).unwrap();
    assert!(reply.peers.is_empty());
    assert_eq!(
        reply.seeds.iter().map(number).collect::<Vec<_>>(),
        vec![901]
    );
    // Re-registering without a swarm leaves it.
    register_seed(&mut book, 150, 901, "eu", "a", &[("film", "1080p")]);
    let reply = announce(&mut book, 150, &Viewer::new(61, "eu", "a"));
    assert_eq!(
        reply.seeds.iter().map(number).collect::<Vec<_>>(),
        vec![900]
    );
    // Seeds expire too (seed_ttl = 120): 900 registered at 100.
    let reply = announce(&mut book, 221, &Viewer::new(61, "eu", "a"));
    assert!(reply.seeds.is_empty());
    let report = book.expire(UnixSeconds(221));
    assert_eq!(report.seeds, 2);
    book.check_invariants().unwrap();
}

#[test]
fn reply_size_is_bounded() {
    let mut book = book();
    for n in 1..=200 {
        announce(&mut book, 100, &Viewer::new(n, "eu", "a"));
    }
    let asked_many = announce_with(&mut book, 100, &Viewer::new(1, "eu", "a"), |a| {
        a.max_peers = 1_000_000;
    })
    .unwrap();
    assert_eq!(asked_many.peers, 80); // max_peers_per_reply
    let default = announce(&mut book, 100, &Viewer::new(1, "eu", "a"));
    assert_eq!(default.peers.len(), 30); // default_peers_per_reply
    assert!(!numbers(&default).contains(&1));
}

#[test]
fn memory_is_bounded_by_configured_maxima() {
    let config = SwarmConfig {
        max_swarms: 2,
        max_peers_per_swarm: 3,
        max_total_peers: 5,
        ..SwarmConfig::default()
    };
    let mut book = SwarmBook::new(config, 1);
    for n in 1..=3 {
        announce(&mut book, 100, &Viewer::new(n, "eu", "a"));
    }
    let err = announce_with(&mut book, 100, &Viewer::new(4, "eu", "a"), |_| {}).unwrap_err();
    assert_eq!(err, CoreError::SwarmFull);
    // Known peers keep announcing.
    announce(&mut book, 101, &Viewer::new(2, "eu", "a"));
    let other =
        |t: &'static str| move |a: &mut pb::Announce| a.swarm.as_mut().unwrap().title = t.into();
    announce_with(&mut book, 100, &Viewer::new(5, "eu", "a"), other("b")).unwrap();
    announce_with(&mut book, 100, &Viewer::new(6, "eu", "a"), other("b")).unwrap();
    // Total of 5 reached.
    let err = announce_with(&mut book, 100, &Viewer::new(7, "eu", "a"), other("b")).unwrap_err();
    assert_eq!(err, CoreError::SwarmFull);
    let err = announce_with(&mut book, 100, &Viewer::new(8, "eu", "a"), other("c")).unwrap_err();
    assert_eq!(err, CoreError::TooManySwarms);
    assert_eq!(book.swarm_count(), 2);
    assert_eq!(book.total_peers(), 5);
    book.check_invariants().unwrap();
}

#[test]
fn bad_input_is_refused_or_clamped() {
    let mut book = book();
    let v = Viewer::new(1, "eu", "a");
    for bad in ["", "a\0b", &"x".repeat(300)] {
        let err = announce_with(&mut book, 100, &v, |a| {
            a.swarm.as_mut().unwrap().title = bad.to_owned();
        })
        .unwrap_err();
        assert_eq!(err, CoreError::InvalidSwarm);
    }
    assert_eq!(
        announce_with(&mut book, 100, &v, |a| a.swarm = None).unwrap_err(),
        CoreError::InvalidSwarm
    );
    let err = announce_with(&mut book, 100, &v, |a| {
        a.holdings = Some(pb::Holdings {
            kind: Some(pb::holdings::Kind::Bitmap(pb::SegmentBitmap {
                first_sequence: 0,
                bits: vec![0xff; 100_000],
            })),
        });
    })
    .unwrap_err();
    assert!(matches!(err, CoreError::Holdings(_)));
    let outcome = announce_with(&mut book, 100, &v, |a| {
        a.upload_capacity_bps = u64::MAX;
        a.upload_in_use_bps = 5;
        a.addresses = vec![
            "not an address".into(),
            "0.0.0.0:80".into(),
            "10.0.0.1:0".into(),
            "10.0.0.1:4000".into(),
            "10.0.0.1:4000".into(),
            "[2001:db8::1]:4000".into(),
        ];
    })
    .unwrap();
    assert!(outcome.anomalies.upload_clamped);
    assert_eq!(outcome.anomalies.addresses_dropped, 4);
    let reply = announce(&mut book, 100, &Viewer::new(2, "eu", "a"));
    assert_eq!(reply.peers[0].spare_upload_bps, 10_000_000_000 - 5);
    assert_eq!(
        reply.peers[0].addresses,
        vec!["10.0.0.1:4000", "[2001:db8::1]:4000"]
    );
    // A peer with no usable address is tracked (metrics, expiry) but never
    // handed out, nor counted among the viewers who share.
    announce_with(&mut book, 100, &Viewer::new(3, "eu", "a"), |a| {
        a.addresses.clear()
    })
    .unwrap();
    let reply = announce(&mut book, 100, &Viewer::new(2, "eu", "a"));
    assert_eq!(numbers(&reply), vec![1]);
    assert_eq!(reply.swarm_size, 2);
    assert_eq!(book.total_peers(), 3);
}

/// The reply's swarm size counts the viewers who share, which is what a
/// client divides live injection by; the audience metrics count everybody.
#[test]
fn swarm_size_counts_the_viewers_who_share() {
    let mut book = book();
    let stats_only = |a: &mut pb::Announce| a.addresses.clear();
    let sharer = Viewer::new(1, "eu", "a");
    let cdn_only = Viewer::new(2, "eu", "a");
    assert_eq!(announce(&mut book, 100, &sharer).swarm_size, 1);
    let outcome = announce_with(&mut book, 100, &cdn_only, stats_only).unwrap();
    assert_eq!(outcome.swarm_size, 1);
    assert_eq!(decode_reply(&outcome.reply).unwrap().swarm_size, 1);
    assert_eq!(announce(&mut book, 101, &sharer).swarm_size, 1);
    // Both are in the book (metrics, expiry).
    assert_eq!(book.total_peers(), 2);
    assert_eq!(book.swarm_sizes()[0].peers, 2);
    // Turning P2P on counts; going quiet again (or stopping, or expiring)
    // does not count any more.
    assert_eq!(announce(&mut book, 102, &cdn_only).swarm_size, 2);
    book.check_invariants().unwrap();
    let outcome = announce_with(&mut book, 103, &cdn_only, stats_only).unwrap();
    assert_eq!(outcome.swarm_size, 1);
    announce(&mut book, 104, &cdn_only);
    let id = pb::SwarmId {
        title: "film".into(),
        rendition: "720p".into(),
    };
    assert!(book.stop(&key(1), &id));
    assert_eq!(announce(&mut book, 105, &cdn_only).swarm_size, 1);
    book.expire(UnixSeconds(105 + SwarmConfig::default().peer_ttl_s + 1));
    assert_eq!(book.total_peers(), 0);
    book.check_invariants().unwrap();
}

#[test]
fn stop_leaves_the_swarm() {
    let mut book = book();
    announce(&mut book, 100, &Viewer::new(1, "eu", "a"));
    announce(&mut book, 100, &Viewer::new(2, "eu", "a"));
    let id = pb::SwarmId {
        title: "film".into(),
        rendition: "720p".into(),
    };
    assert!(book.stop(&key(1), &id));
    assert!(!book.stop(&key(1), &id));
    assert!(numbers(&announce(&mut book, 101, &Viewer::new(2, "eu", "a"))).is_empty());
    assert!(book.stop(&key(2), &id));
    assert_eq!(book.swarm_count(), 0);
    book.check_invariants().unwrap();
}

#[test]
fn same_seed_same_choices() {
    let run = || {
        let mut book = SwarmBook::new(SwarmConfig::default(), 7);
        for n in 1..=100 {
            announce(
                &mut book,
                100,
                &Viewer::new(n, "eu", if n % 3 == 0 { "a" } else { "b" }),
            );
        }
        numbers(&announce(&mut book, 100, &Viewer::new(1, "eu", "a")))
    };
    assert_eq!(run(), run());
}

#[test]
fn load_is_spread_among_equally_good_peers() {
    let mut book = book();
    for n in 1..=100 {
        announce(&mut book, 100, &Viewer::new(n, "eu", "a"));
    }
    let mut hits = [0u32; 101];
    for round in 0..200 {
        let me = 1 + (round % 100) as u16;
        for n in numbers(&announce(&mut book, 100, &Viewer::new(me, "eu", "a"))) {
            hits[n as usize] += 1;
        }
    }
    // 200 replies × 30 peers over 100 peers = 60 each on average.
    let (min, max) = hits[1..]
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), h| (lo.min(*h), hi.max(*h)));
    assert!(min >= 20 && max <= 120, "min {min} max {max}");
}

#[test]
fn churn_keeps_invariants() {
    let config = SwarmConfig {
        max_peers_per_swarm: 40,
        max_total_peers: 100,
        max_swarms: 4,
        ..SwarmConfig::default()
    };
    let mut book = SwarmBook::new(config, 3);
    let mut rng = loaves_swarm::rng::SplitMix64::new(99);
    let regions = ["eu", "us", ""];
    let isps = ["a", "b", "c", ""];
    let titles = ["t1", "t2", "t3", "t4", "t5"];
    let mut now = 1000;
    for step in 0..20_000 {
        let n = rng.below(150) as u16;
        let v = Viewer::new(
            n,
            regions[rng.below(regions.len())],
            isps[rng.below(isps.len())],
        );
        let title = titles[rng.below(titles.len())];
        match rng.below(10) {
            0 => {
                book.stop(
                    &key(n),
                    &pb::SwarmId {
                        title: title.into(),
                        rendition: "r".into(),
                    },
                );
            }
            1 if step % 50 == 0 => {
                now += 40;
                book.expire(UnixSeconds(now));
            }
            _ => {
                if let Ok(outcome) = announce_with(&mut book, now, &v, |a| {
                    a.swarm = Some(pb::SwarmId {
                        title: title.into(),
                        rendition: "r".into(),
                    });
                }) {
                    let reply = decode_reply(&outcome.reply).unwrap();
                    assert!(!numbers(&reply).contains(&n));
                }
            }
        }
        if step % 97 == 0 {
            book.check_invariants().unwrap();
        }
    }
    book.check_invariants().unwrap();
}

#[test]
fn reply_cache_is_shared_within_a_second_and_never_lists_the_requester() {
    let mut book = book();
    for n in 1..=300 {
        announce(&mut book, 100, &Viewer::new(n, "eu", "a"));
    }
    let first = numbers(&announce(&mut book, 101, &Viewer::new(1, "eu", "a")));
    assert_eq!(first.len(), 30);
    assert!(!first.contains(&1));
    let second = numbers(&announce(&mut book, 101, &Viewer::new(2, "eu", "a")));
    assert_eq!(second.len(), 30);
    assert!(!second.contains(&2));
    let common = first.iter().filter(|n| second.contains(n)).count();
    assert!(common >= 29, "cached reply not reused: {common} in common");
    // A requester that is itself in the cached reply is skipped in it.
    let listed = first[0];
    let own = numbers(&announce(&mut book, 101, &Viewer::new(listed, "eu", "a")));
    assert_eq!(own.len(), 30);
    assert!(!own.contains(&listed));
    // Another playhead bucket or another second: chosen afresh.
    let next_second = numbers(&announce(&mut book, 102, &Viewer::new(2, "eu", "a")));
    assert_ne!(next_second, second);
    // Bounded reuse: after `reply_cache_uses` (64) requesters, a new choice.
    let mut previous: Vec<u16> = Vec::new();
    let mut rebuilds = 0;
    for n in 10..(10 + 2 * 64 + 10) {
        let list = numbers(&announce(&mut book, 103, &Viewer::new(n, "eu", "a")));
        let common = list.iter().filter(|m| previous.contains(m)).count();
        if common < 20 {
            rebuilds += 1;
        }
        previous = list;
    }
    // The first requester at 103 builds, then two more builds.
    assert_eq!(rebuilds, 3);
    book.check_invariants().unwrap();
}

#[test]
fn small_swarms_list_everybody_whatever_the_random_seed() {
    for seed in 0..100 {
        let mut book = SwarmBook::new(SwarmConfig::default(), seed);
        announce(&mut book, 100, &Viewer::new(1, "eu", "a"));
        announce(&mut book, 100, &Viewer::new(2, "eu", "b"));
        announce(&mut book, 100, &Viewer::new(3, "us", "c"));
        let reply = announce(&mut book, 100, &Viewer::new(4, "eu", "a"));
        assert_eq!(numbers(&reply), vec![1, 2, 3], "seed {seed}");
    }
}

/// Announces `addresses` for viewer `n` as seen from `observed`; the
/// addresses the others are then told.
fn told(book: &mut SwarmBook, n: u16, addresses: &[&str], observed: Option<&str>) -> Vec<String> {
    let k = key(n);
    let announce = pb::Announce {
        swarm: Some(pb::SwarmId {
            title: "film".into(),
            rendition: "720p".into(),
        }),
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        upload_capacity_bps: 10_000_000,
        ..Default::default()
    };
    book.announce(
        UnixSeconds(100),
        &Requester {
            key: &k,
            region: "eu",
            isp: "a",
            observed: observed.map(|o| o.parse().unwrap()),
        },
        &announce,
    )
    .unwrap();
    let other = key(n + 1000);
    let outcome = book
        .announce(
            UnixSeconds(100),
            &Requester {
                key: &other,
                region: "eu",
                isp: "a",
                observed: None,
            },
            &pb::Announce {
                addresses: vec![],
                ..announce.clone()
            },
        )
        .unwrap();
    let reply = decode_reply(&outcome.reply).unwrap();
    reply
        .peers
        .iter()
        .find(|p| p.peer_public_key == k)
        .map(|p| p.addresses.clone())
        .unwrap_or_default()
}

#[test]
fn addresses_nobody_can_reach_are_never_handed_out() {
    let mut book = book();
    // From a viewer seen on the Internet, loopback reaches nobody else;
    // unspecified, multicast, broadcast and port 0 reach nobody at all.
    let from_afar = told(
        &mut book,
        1,
        &[
            "0.0.0.0:4000",
            "127.0.0.1:4000",
            "[::1]:4000",
            "224.0.0.1:4000",
            "255.255.255.255:4000",
            "198.51.100.7:0",
            // A third party's address: the swarm must not be pointed at it.
            "203.0.113.9:4000",
            "198.51.100.7:4000",
            "192.168.1.10:4000",
        ],
        Some("198.51.100.7:4000"),
    );
    assert_eq!(from_afar, vec!["198.51.100.7:4000", "192.168.1.10:4000"]);
    // A viewer on the tracker's own host (tests, the demo) may name
    // loopback: everyone it meets is on that host too.
    let local = told(&mut book, 2, &["127.0.0.1:4001"], Some("127.0.0.1:4001"));
    assert_eq!(local, vec!["127.0.0.1:4001"]);
}
