//! Random interactions with the swarm book (proptest): viewers and seeds
//! of a few swarms announce, stop, register and fall silent in any order,
//! time jumps forward by any amount, and after every step the book's own
//! invariants hold and every reply keeps the promises callers rely on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use loaves_proto::{UnixSeconds, pb};
use loaves_swarm::swarm::{PeerKey, Requester, SwarmBook, SwarmConfig};
use loaves_swarm::wire::decode_reply;
use proptest::prelude::*;

const SWARMS: [(&str, &str); 3] = [("film", "720p"), ("film", "360p"), ("live", "1080p")];
const ISPS: [(&str, &str); 3] = [("eu", "isp-a"), ("eu", "isp-b"), ("us", "isp-c")];

#[derive(Debug, Clone)]
enum Step {
    Announce {
        viewer: u8,
        swarm: usize,
        max_peers: u32,
        nat_class: i32,
        head: u64,
    },
    Stop {
        viewer: u8,
        swarm: usize,
    },
    Seed {
        seed: u8,
        swarms: Vec<usize>,
    },
    Wait {
        seconds: u64,
    },
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..24, 0..SWARMS.len(), 0u32..60, 0i32..5, 0u64..400).prop_map(
            |(viewer, swarm, max_peers, nat_class, head)| Step::Announce {
                viewer,
                swarm,
                max_peers,
                nat_class,
                head,
            }
        ),
        1 => (0u8..24, 0..SWARMS.len()).prop_map(|(viewer, swarm)| Step::Stop { viewer, swarm }),
        1 => (0u8..3, proptest::collection::vec(0..SWARMS.len(), 0..4))
            .prop_map(|(seed, swarms)| Step::Seed { seed, swarms }),
        2 => (0u64..200).prop_map(|seconds| Step::Wait { seconds }),
        1 => Just(Step::Expire),
    ]
}

fn key(kind: u8, n: u8) -> PeerKey {
    let mut k = [0u8; 32];
    k[0] = kind;
    k[1] = n;
    k
}

fn swarm_id(index: usize) -> pb::SwarmId {
    let (title, rendition) = SWARMS[index];
    pb::SwarmId {
        title: title.into(),
        rendition: rendition.into(),
    }
}

fn requester(key: &PeerKey, n: u8) -> Requester<'_> {
    let (region, isp) = ISPS[usize::from(n) % ISPS.len()];
    Requester {
        key,
        region,
        isp,
        observed: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_keeps_the_book_consistent(steps in proptest::collection::vec(step(), 1..120)) {
        let config = SwarmConfig::default();
        let mut book = SwarmBook::new(config.clone(), 7);
        let mut now = 1_000_000u64;
        // Who last announced where, and when (what the book may list).
        let mut announced: HashMap<(u8, usize), u64> = HashMap::new();
        for step in steps {
            match step {
                Step::Announce { viewer, swarm, max_peers, nat_class, head } => {
                    let k = key(1, viewer);
                    let announce = pb::Announce {
                        swarm: Some(swarm_id(swarm)),
                        addresses: vec![format!("10.0.{}.{}:4000", swarm, viewer)],
                        holdings: Some(pb::Holdings {
                            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                                first_sequence: head.saturating_sub(20),
                                last_sequence: head,
                            })),
                        }),
                        next_sequence: head + 1,
                        upload_capacity_bps: 10_000_000,
                        upload_in_use_bps: 0,
                        stats: None,
                        max_peers,
                        nat_class,
                    };
                    let outcome = book
                        .announce(UnixSeconds(now), &requester(&k, viewer), &announce)
                        .expect("a well-formed announce is accepted");
                    announced.insert((viewer, swarm), now);
                    let reply = decode_reply(&outcome.reply).expect("the reply decodes");
                    // Never the requester itself, never twice the same key.
                    let keys: Vec<&[u8]> =
                        reply.peers.iter().map(|p| p.peer_public_key.as_slice()).collect();
                    prop_assert!(!keys.contains(&k.as_slice()));
                    let distinct: HashSet<&[u8]> = keys.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), keys.len());
                    // Bounded by what was asked and what is allowed.
                    let viewers = reply.peers.iter().filter(|p| !p.is_seed).count();
                    let seeds = reply.peers.len() - viewers;
                    prop_assert!(viewers <= config.max_peers_per_reply);
                    if max_peers > 0 {
                        prop_assert!(viewers <= max_peers as usize);
                    }
                    prop_assert!(seeds <= config.max_seeds_per_reply);
                    prop_assert_eq!(outcome.peers as usize, viewers);
                    // Every viewer listed announced in this swarm within the TTL.
                    for peer in reply.peers.iter().filter(|p| !p.is_seed) {
                        prop_assert_eq!(peer.peer_public_key[0], 1);
                        let when = announced.get(&(peer.peer_public_key[1], swarm));
                        prop_assert!(
                            when.is_some_and(|t| now.saturating_sub(*t) <= config.peer_ttl_s),
                            "listed a viewer that is not a live member: {:?}", peer
                        );
                        prop_assert!(peer.addresses.len() <= loaves_proto::addresses::MAX_CANDIDATES);
                    }
                }
                Step::Stop { viewer, swarm } => {
                    book.stop(&key(1, viewer), &swarm_id(swarm));
                    announced.remove(&(viewer, swarm));
                }
                Step::Seed { seed, swarms } => {
                    let k = key(2, seed);
                    let mut ids: Vec<pb::SwarmId> = swarms.iter().map(|s| swarm_id(*s)).collect();
                    ids.dedup();
                    let registration = pb::SeedRegistration {
                        swarms: ids,
                        addresses: vec![format!("192.0.2.{}:4433", seed + 1)],
                        upload_capacity_bps: 1_000_000_000,
                        upload_in_use_bps: 0,
                    };
                    // Refusals (duplicates, limits) are fine; panics are not.
                    let _ = book.register_seed(UnixSeconds(now), &requester(&k, seed), &registration);
                }
                Step::Wait { seconds } => now += seconds,
                Step::Expire => {
                    book.expire(UnixSeconds(now));
                    announced.retain(|_, t| now.saturating_sub(*t) <= config.peer_ttl_s);
                }
            }
            if let Err(broken) = book.check_invariants() {
                prop_assert!(false, "invariant broken: {}", broken);
            }
            prop_assert!(book.total_peers() <= config.max_total_peers);
        }
    }
}
