//! The tracker's request path (`loaves-swarm`): arbitrary bytes as a
//! session of `TrackerRequest` messages from eight requesters, decoded as
//! the tracker decodes them and applied to one swarm book (announce, stop,
//! seed registration, punch membership, expiry) under small limits, with each report's stats
//! clamped as the tracker clamps them. Never a panic; after every request
//! the book's invariants hold and its counts stay within their limits; an
//! announce's reply decodes, lists at most the limits' peers and seeds,
//! never the requester itself, and says the swarm size the outcome says;
//! clamped stats stay inside the report window's budget.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use loaves_proto::{UnixSeconds, pb};
use loaves_swarm::holdings::HoldingsLimits;
use loaves_swarm::stats::{StatsLimits, clamp, report_window};
use loaves_swarm::{Requester, SwarmBook, SwarmConfig, wire};
use prost::Message;

fn config() -> SwarmConfig {
    SwarmConfig {
        max_swarms: 4,
        max_peers_per_swarm: 6,
        max_total_peers: 10,
        max_seeds: 3,
        max_swarms_per_seed: 3,
        default_peers_per_reply: 3,
        max_peers_per_reply: 5,
        max_seeds_per_reply: 2,
        max_name_len: 16,
        max_locality_names: 6,
        holdings: HoldingsLimits {
            max_live_window: 64,
            max_bitmap_bytes: 32,
        },
        ..SwarmConfig::default()
    }
}

/// Requester `i` of eight: its key, locality and where its packets come
/// from (loopback for some, a documentation address for others).
fn requester(keys: &[[u8; 32]; 8], i: usize) -> Requester<'_> {
    let observed: SocketAddr = if i.is_multiple_of(2) {
        "127.0.0.1:40000".parse().expect("an address")
    } else {
        "192.0.2.7:40000".parse().expect("an address")
    };
    Requester {
        key: &keys[i],
        region: ["eu", "us", "ap"][i % 3],
        isp: ["isp-a", "isp-b"][i % 2],
        observed: Some(observed),
    }
}

fn check_stats(stats: Option<&pb::StatsDelta>, previous: Option<UnixSeconds>, now: UnixSeconds) {
    let Some(delta) = stats else { return };
    let limits = StatsLimits::default();
    let window = report_window(previous, now, &limits);
    assert!(window >= 1 && window <= limits.max_window_s.max(1));
    let (counters, _) = clamp(delta, window, &limits);
    let downloaded = counters.bytes_downloaded();
    assert!(downloaded <= limits.max_download_bytes_per_s.saturating_mul(window));
    assert!(counters.bytes_uploaded <= limits.max_upload_bytes_per_s.saturating_mul(window));
    assert!(counters.bytes_cross_isp <= downloaded && counters.bytes_cross_region <= downloaded);
    assert!(counters.played_ms <= window.saturating_mul(1000));
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let mut book = SwarmBook::new(config.clone(), 7);
    let keys: [[u8; 32]; 8] = std::array::from_fn(|i| [i as u8 + 1; 32]);
    let mut now = UnixSeconds(1_800_000_000);
    let mut last_report: [Option<UnixSeconds>; 8] = [None; 8];
    let mut rest = data;
    // Each request: a byte (requester, time step), a length byte, the
    // message.
    while let [who, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        let i = usize::from(who & 7);
        now = UnixSeconds(now.0 + u64::from(who >> 3) * 8);
        let Ok(request) = pb::TrackerRequest::decode(message) else {
            continue;
        };
        let who = requester(&keys, i);
        use pb::tracker_request::Kind;
        match request.kind {
            Some(Kind::Announce(announce)) => {
                check_stats(announce.stats.as_ref(), last_report[i], now);
                last_report[i] = Some(now);
                if let Ok(outcome) = book.announce(now, &who, &announce) {
                    let reply = wire::decode_reply(&outcome.reply).expect("the reply decodes");
                    assert_eq!(reply.peers.len(), outcome.peers as usize);
                    assert_eq!(reply.seeds.len(), outcome.seeds as usize);
                    assert!(reply.peers.len() <= config.max_peers_per_reply);
                    assert!(reply.seeds.len() <= config.max_seeds_per_reply);
                    assert_eq!(reply.swarm_size, outcome.swarm_size);
                    for entry in reply.peers.iter().chain(&reply.seeds) {
                        assert_ne!(entry.peer_public_key, keys[i], "the requester itself");
                        assert!(entry.addresses.len() <= config.max_addresses);
                    }
                }
            }
            Some(Kind::Stop(stop)) => {
                check_stats(stop.stats.as_ref(), last_report[i], now);
                if let Some(swarm) = &stop.swarm {
                    book.stop(&keys[i], swarm);
                }
            }
            Some(Kind::RegisterSeed(registration)) => {
                if let Ok(swarms) = book.register_seed(now, &who, &registration) {
                    assert!(swarms <= config.max_swarms_per_seed);
                }
            }
            // Forwarding is the server's; the book says who is a member.
            Some(Kind::Punch(punch)) => {
                if let (Some(swarm), Ok(target)) = (
                    &punch.swarm,
                    <[u8; 32]>::try_from(punch.target_key.as_slice()),
                ) {
                    let _ = book.is_member(now, swarm, &target);
                }
            }
            // Credentials are signed_envelopes' (and the server's) part.
            Some(Kind::Hello(_)) | None => {
                book.expire(now);
            }
        }
        if let Err(violation) = book.check_invariants() {
            panic!("{violation}");
        }
        assert!(book.total_peers() <= config.max_total_peers);
        assert!(book.swarm_count() <= config.max_swarms);
        assert!(book.seed_count() <= config.max_seeds);
    }
});
