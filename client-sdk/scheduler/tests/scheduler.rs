#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The scheduler driven with explicit time: no sockets, no sleeps.

use loaves_scheduler::{
    Action, ByteRange, CdnOnly, DeadlineFirst, DropReason, Locality, Millis, Mode, Outcome, PeerId,
    PeerInfo, PeerKind, Scheduler, SchedulerConfig, Source, TransferId,
};

const SEGMENT: u64 = 1_000_000;
const DURATION: u32 = 2_000;

fn config(mode: Mode) -> SchedulerConfig {
    SchedulerConfig {
        mode,
        lookahead_segments: 4,
        cdn_throughput_bytes_per_s: 5_000_000,
        cdn_rtt_ms: 40,
        seed: 7,
        ..SchedulerConfig::default()
    }
}

fn viewer(locality: Locality, bytes_per_s: u64) -> PeerInfo {
    PeerInfo {
        kind: PeerKind::Viewer,
        locality,
        rtt_ms: 20,
        throughput_bytes_per_s: bytes_per_s,
    }
}

/// A fast edge seed in the viewer's region.
fn seed_info() -> PeerInfo {
    PeerInfo {
        kind: PeerKind::Seed,
        locality: Locality::SameRegion,
        rtt_ms: 10,
        throughput_bytes_per_s: 10_000_000,
    }
}

/// A VOD scheduler playing segment 0, with segments 0..20 listed and 0 held.
fn vod(policy: DeadlineFirst) -> Scheduler<DeadlineFirst> {
    let mut s = Scheduler::new(config(Mode::Vod), policy);
    for seq in 0..20 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s
}

fn fetches(actions: &[Action]) -> Vec<(TransferId, u64, Source, ByteRange)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Fetch {
                transfer,
                sequence,
                source,
                range,
            } => Some((transfer, sequence, source, range)),
            _ => None,
        })
        .collect()
}

#[test]
fn segments_with_slack_go_to_a_peer_that_can_make_it() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(1), viewer(Locality::SameIsp, 2_000_000));
    s.peer_has(PeerId(1), 2);
    let actions = s.poll(Millis(0));
    let f = fetches(&actions);
    // Segment 2 is due at 4 s; the peer delivers 1 MB in ~0.5 s.
    assert!(
        f.iter()
            .any(|&(_, seq, src, _)| seq == 2 && src == Source::Peer(PeerId(1))),
        "{actions:?}"
    );
    // Nobody holds segment 3 (due at 6 s): it has slack, so it waits for a
    // peer to get it rather than going to the CDN now.
    assert!(f.iter().all(|&(_, seq, _, _)| seq != 3), "{actions:?}");
}

#[test]
fn deadline_is_met_from_the_cdn_when_peers_are_slow() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    // The only holder of segment 3 manages 50 kB/s: 20 s for 1 MB.
    s.add_peer(PeerId(1), viewer(Locality::SameIsp, 50_000));
    s.peer_has(PeerId(1), 3);
    let deadline = Millis(3 * u64::from(DURATION));
    let mut fetched = None;
    let mut now = Millis(0);
    while now < deadline && fetched.is_none() {
        for (_, seq, source, _) in fetches(&s.poll(now)) {
            if seq == 3 {
                fetched = Some((now, source));
            }
        }
        now = now.plus(100);
    }
    let (at, source) = fetched.expect("segment 3 was never fetched");
    assert_eq!(source, Source::Cdn);
    // Started early enough: CDN time (~0.24 s) + safety margin before 6 s.
    assert!(at.0 + 240 + 1_500 <= deadline.0, "started at {at:?}");
    // And not needlessly early: it waited while there was slack.
    assert!(at.0 >= 2_000, "started at {at:?}");
}

#[test]
fn a_segment_in_flight_is_never_fetched_twice() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    let first = fetches(&s.poll(Millis(0)));
    assert!(!first.is_empty());
    for t in 1..30 {
        let again = fetches(&s.poll(Millis(t * 10)));
        for (_, seq, _, _) in &again {
            assert!(
                first.iter().all(|(_, s2, _, _)| s2 != seq),
                "segment {seq} fetched twice"
            );
        }
    }
}

#[test]
fn late_peer_transfer_is_completed_by_a_cdn_byte_range() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(1), viewer(Locality::SameIsp, 1_000_000));
    s.peer_has(PeerId(1), 2);
    let (transfer, _, source, _) = fetches(&s.poll(Millis(0)))
        .into_iter()
        .find(|f| f.1 == 2)
        .expect("segment 2 from the peer");
    assert_eq!(source, Source::Peer(PeerId(1)));
    // The peer slows to a crawl: 300 kB after 1.5 s.
    s.on_progress(Millis(1_500), transfer, 300_000);
    let actions = s.poll(Millis(1_500));
    assert!(
        actions.contains(&Action::Cancel { transfer }),
        "{actions:?}"
    );
    let (tail, seq, source, range) = fetches(&actions)
        .into_iter()
        .find(|f| f.1 == 2)
        .expect("a CDN range for the missing bytes");
    assert_eq!((seq, source), (2, Source::Cdn));
    assert_eq!(
        range,
        ByteRange {
            start: 300_000,
            end: SEGMENT
        }
    );
    s.on_progress(Millis(1_700), tail, 700_000);
    s.on_complete(Millis(1_700), tail, Outcome::Verified);
    let stats = s.stats();
    assert_eq!(stats.range_completions, 1);
    assert_eq!(stats.bytes_from_peers, 300_000);
    assert!(stats.bytes_from_cdn >= 700_000);
    assert!(s.is_held(2));
}

#[test]
fn corrupt_peer_is_banned_and_never_asked_again() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(9), viewer(Locality::SameIsp, 5_000_000));
    for seq in 0..20 {
        s.peer_has(PeerId(9), seq);
    }
    let from_peer: Vec<_> = fetches(&s.poll(Millis(0)))
        .into_iter()
        .filter(|f| f.2 == Source::Peer(PeerId(9)))
        .collect();
    let (transfer, seq, _, _) = from_peer[0];
    let actions = s.on_complete(Millis(300), transfer, Outcome::Corrupt);
    assert!(actions.contains(&Action::DropPeer {
        peer: PeerId(9),
        reason: DropReason::Corrupt
    }));
    assert!(!s.is_held(seq));
    // Re-adding the peer (e.g. a reconnect) does not bring it back.
    s.add_peer(PeerId(9), viewer(Locality::SameIsp, 5_000_000));
    s.peer_has(PeerId(9), seq);
    for t in 0..50 {
        for (_, _, source, _) in fetches(&s.poll(Millis(300 + t * 100))) {
            assert_ne!(source, Source::Peer(PeerId(9)));
        }
    }
}

#[test]
fn stalled_transfer_is_abandoned_and_its_peer_dropped() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(4), viewer(Locality::SameIsp, 5_000_000));
    s.peer_has(PeerId(4), 3);
    let (transfer, ..) = fetches(&s.poll(Millis(0)))
        .into_iter()
        .find(|f| f.1 == 3)
        .expect("segment 3 from the peer");
    let actions = s.poll(Millis(2_000));
    assert!(actions.contains(&Action::Cancel { transfer }));
    assert!(actions.contains(&Action::DropPeer {
        peer: PeerId(4),
        reason: DropReason::Stalled
    }));
    // Stalling is not misbehaviour (the peer may have been busy or on a
    // bad link): when it connects again it is asked again, unlike a peer
    // that sent corrupt bytes (`corrupt_peer_is_banned_and_never_asked_again`).
    assert!(!DropReason::Stalled.is_misbehaviour());
    s.add_peer(PeerId(4), viewer(Locality::SameIsp, 5_000_000));
    s.peer_has(PeerId(4), 5);
    s.set_playhead(Millis(2_100), 2, 0, true);
    let asked = fetches(&s.poll(Millis(2_100)));
    assert!(
        asked.iter().any(|f| f.2 == Source::Peer(PeerId(4))),
        "{asked:?}"
    );
}

#[test]
fn seeds_are_preferred_to_the_cdn_for_infrastructure_fetches() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, false);
    s.add_peer(PeerId(100), seed_info());
    let f = fetches(&s.poll(Millis(0)));
    assert!(!f.is_empty());
    assert!(f.iter().any(|x| x.2 == Source::Seed(PeerId(100))), "{f:?}");
    // A seed is infrastructure: its bytes are counted apart from peers'.
    let (transfer, ..) = f
        .iter()
        .find(|x| x.2 == Source::Seed(PeerId(100)))
        .copied()
        .unwrap_or(f[0]);
    s.on_complete(Millis(200), transfer, Outcome::Verified);
    assert_eq!(s.stats().bytes_from_seeds, SEGMENT);
    assert_eq!(s.stats().bytes_from_peers, 0);
}

#[test]
fn nearest_peer_is_preferred_when_several_can_make_it() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    // The remote peer is a little faster, but the same-ISP one is in time.
    s.add_peer(PeerId(1), viewer(Locality::Remote, 3_000_000));
    s.add_peer(PeerId(2), viewer(Locality::SameIsp, 2_500_000));
    s.peer_has(PeerId(1), 3);
    s.peer_has(PeerId(2), 3);
    let f = fetches(&s.poll(Millis(0)));
    let chosen = f.iter().find(|x| x.1 == 3).expect("segment 3");
    assert_eq!(chosen.2, Source::Peer(PeerId(2)));
}

#[test]
fn vod_fetches_rarest_first_beyond_the_urgent_window() {
    let policy = DeadlineFirst::default();
    let mut s = Scheduler::new(
        SchedulerConfig {
            lookahead_segments: 12,
            max_inflight_total: 1,
            max_inflight_per_peer: 1,
            ..config(Mode::Vod)
        },
        policy,
    );
    for seq in 0..20 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s.set_playhead(Millis(0), 0, 0, true);
    // Segments 0..3 are urgent (due within 4 s) and held already.
    for seq in 0..3 {
        s.add_peer(PeerId(50 + seq), viewer(Locality::SameIsp, 5_000_000));
        s.peer_has(PeerId(50 + seq), seq);
        let (t, ..) = fetches(&s.poll(Millis(0)))[0];
        s.on_complete(Millis(0), t, Outcome::Verified);
    }
    // Beyond: 5 and 6 are held by three peers, 9 by one.
    for peer in 1..=3 {
        s.add_peer(PeerId(peer), viewer(Locality::SameIsp, 5_000_000));
        s.peer_has(PeerId(peer), 5);
        s.peer_has(PeerId(peer), 6);
    }
    s.peer_has(PeerId(1), 9);
    let f = fetches(&s.poll(Millis(0)));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].1, 9, "rarest segment first: {f:?}");
}

#[test]
fn live_injection_share_adapts_to_swarm_size() {
    let policy = DeadlineFirst::default();
    assert_eq!(policy.injection_share(0), 1.0);
    assert_eq!(policy.injection_share(1), 1.0);
    assert!((policy.injection_share(19) - 0.1).abs() < 1e-9);
    assert_eq!(policy.injection_share(10_000), 0.02);

    // In a live swarm of 19 other viewers that hold nothing yet, about one
    // fresh segment in ten is injected from the infrastructure at once.
    let segments = 2_000u64;
    let mut s = Scheduler::new(
        SchedulerConfig {
            lookahead_segments: 6,
            ..config(Mode::Live)
        },
        DeadlineFirst::default(),
    );
    for peer in 0..19 {
        s.add_peer(PeerId(peer), viewer(Locality::SameIsp, 5_000_000));
    }
    let (mut fetched_early, mut injected) = (0, 0);
    for seq in 0..segments {
        // The live edge publishes `seq` while the player is five segments
        // (10 s) behind: plenty of slack, so only injection fetches it now.
        s.add_segment(seq, SEGMENT, DURATION);
        let now = Millis(seq * u64::from(DURATION));
        s.set_playhead(now, seq.saturating_sub(5), 0, true);
        let before = s.stats().injections;
        for (transfer, sequence, source, _) in fetches(&s.poll(now)) {
            // (The first five segments are due at once and fetched anyway.)
            if sequence == seq && seq >= 5 {
                assert_ne!(source, Source::Peer(PeerId(0)));
                fetched_early += 1;
            }
            s.on_complete(now, transfer, Outcome::Verified);
        }
        if seq >= 5 {
            injected += s.stats().injections - before;
        }
    }
    assert_eq!(injected, fetched_early);
    let share = injected as f64 / (segments - 5) as f64;
    assert!((0.07..0.13).contains(&share), "injected share {share}");
}

#[test]
fn a_viewer_that_does_not_know_its_swarm_yet_injects_nothing() {
    // Joining a live stream: the manifest lists a backlog, no neighbour is
    // connected and the tracker has not answered. Only deadlines decide:
    // what is due soon comes from the CDN, what has slack waits for peers.
    let mut s = Scheduler::new(
        SchedulerConfig {
            lookahead_segments: 4,
            ..config(Mode::Live)
        },
        DeadlineFirst::default(),
    );
    for seq in 0..4 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s.set_playhead(Millis(0), 0, 0, true);
    let first = fetches(&s.poll(Millis(0)));
    assert_eq!(s.stats().injections, 0);
    let fetched: Vec<u64> = first.iter().map(|f| f.1).collect();
    assert!(fetched.contains(&0), "the segment due now: {fetched:?}");
    assert!(
        !fetched.contains(&3),
        "three segments of slack: {fetched:?}"
    );

    // The tracker says this viewer is alone: every fresh segment must come
    // in from the infrastructure, and now does at first sight.
    s.set_swarm_size(1);
    s.add_segment(4, SEGMENT, DURATION);
    let now = Millis(10);
    let later: Vec<u64> = fetches(&s.poll(now)).iter().map(|f| f.1).collect();
    assert!(later.contains(&4) || later.contains(&3), "{later:?}");
    assert!(s.stats().injections > 0);
}

#[test]
fn a_peer_that_keeps_denying_what_it_announced_is_dropped() {
    let mut s = Scheduler::new(config(Mode::Vod), DeadlineFirst::default());
    for seq in 0..20 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s.set_playhead(Millis(0), 0, 0, true);
    let liar = PeerId(7);
    s.add_peer(liar, viewer(Locality::SameIsp, 50_000_000));
    for seq in 0..20 {
        s.peer_has(liar, seq);
    }
    let limit = DeadlineFirst::default().thresholds.max_false_claims;
    let mut denials = 0;
    let mut dropped = None;
    for round in 0..20u64 {
        // The player moves on, so new segments keep entering the window.
        let now = Millis(round * u64::from(DURATION));
        s.set_playhead(now, round, 0, true);
        for (transfer, sequence, source, _) in fetches(&s.poll(now)) {
            if source != Source::Peer(liar) {
                s.on_complete(now, transfer, Outcome::Verified);
                continue;
            }
            denials += 1;
            for action in s.on_complete(now, transfer, Outcome::NotHeld) {
                if let Action::DropPeer { peer, reason } = action {
                    dropped = Some((peer, reason, sequence));
                }
            }
            if dropped.is_some() {
                break;
            }
        }
        if dropped.is_some() {
            break;
        }
    }
    let (peer, reason, _) = dropped.expect("the liar was never dropped");
    assert_eq!((peer, reason), (liar, DropReason::FalseClaims));
    assert_eq!(denials, limit, "dropped at the limit, not before");
    // A denial is forgotten as a claim: an honest peer that evicted one
    // segment is simply not asked for it again.
    let mut honest = Scheduler::new(config(Mode::Vod), DeadlineFirst::default());
    for seq in 0..4 {
        honest.add_segment(seq, SEGMENT, DURATION);
    }
    honest.set_playhead(Millis(0), 0, 0, true);
    honest.add_peer(PeerId(1), viewer(Locality::SameIsp, 50_000_000));
    honest.peer_has(PeerId(1), 3);
    let asked = fetches(&honest.poll(Millis(0)));
    let (transfer, _, _, _) = *asked
        .iter()
        .find(|f| f.1 == 3 && f.2 == Source::Peer(PeerId(1)))
        .expect("segment 3 has slack: asked of the peer");
    let actions = honest.on_complete(Millis(1), transfer, Outcome::NotHeld);
    assert!(
        actions
            .iter()
            .all(|a| !matches!(a, Action::DropPeer { .. }))
    );
    let again = fetches(&honest.poll(Millis(2)));
    assert!(
        again.iter().all(|f| f.2 != Source::Peer(PeerId(1))),
        "{again:?}"
    );
}

#[test]
fn cdn_only_policy_never_uses_peers() {
    let mut s = Scheduler::new(config(Mode::Vod), CdnOnly);
    for seq in 0..10 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(1), viewer(Locality::SameIsp, 50_000_000));
    for seq in 0..10 {
        s.peer_has(PeerId(1), seq);
    }
    let f = fetches(&s.poll(Millis(0)));
    assert_eq!(f.len(), 4, "the look-ahead window");
    assert!(f.iter().all(|x| x.2 == Source::Cdn));
}

#[test]
fn transfers_in_flight_are_bounded() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            lookahead_segments: 50,
            max_inflight_total: 5,
            ..config(Mode::Vod)
        },
        CdnOnly,
    );
    for seq in 0..100 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s.set_playhead(Millis(0), 0, 0, true);
    assert_eq!(fetches(&s.poll(Millis(0))).len(), 5);
    assert!(fetches(&s.poll(Millis(10))).is_empty());
}

#[test]
fn same_seed_same_decisions() {
    let run = || {
        let mut s = Scheduler::new(config(Mode::Live), DeadlineFirst::default());
        for peer in 0..7 {
            s.add_peer(PeerId(peer), viewer(Locality::SameRegion, 1_000_000));
        }
        let mut log = Vec::new();
        for seq in 0..200 {
            s.add_segment(seq, SEGMENT, DURATION);
            s.set_playhead(Millis(seq * 2_000), seq, 0, true);
            log.extend(s.poll(Millis(seq * 2_000)));
        }
        log
    };
    assert_eq!(run(), run());
}

#[test]
fn a_peer_that_no_longer_has_a_segment_is_not_asked_again_for_it() {
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(1), viewer(Locality::SameIsp, 5_000_000));
    s.add_peer(PeerId(2), viewer(Locality::SameRegion, 5_000_000));
    s.peer_has(PeerId(1), 3);
    s.peer_has(PeerId(2), 3);
    let (transfer, _, source, _) = fetches(&s.poll(Millis(0)))
        .into_iter()
        .find(|f| f.1 == 3)
        .expect("segment 3 from a peer");
    assert_eq!(source, Source::Peer(PeerId(1)), "the same-ISP peer first");
    // It answers NOT_FOUND (evicted): the driver reports a failure.
    assert!(
        s.on_complete(Millis(50), transfer, Outcome::Failed)
            .is_empty()
    );
    let retry = fetches(&s.poll(Millis(60)))
        .into_iter()
        .find(|f| f.1 == 3)
        .expect("segment 3 again");
    assert_eq!(retry.2, Source::Peer(PeerId(2)));
}

/// A seed at capacity answers BUSY: the segment goes to the CDN at once
/// instead of back to the same seed, and the seed is asked again only after
/// the back-off.
#[test]
fn a_busy_seed_is_not_asked_again_before_its_back_off() {
    let backoff = SchedulerConfig::default().busy_backoff_ms;
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, false);
    let seed = PeerId(100);
    s.add_peer(seed, seed_info());
    let first = fetches(&s.poll(Millis(0)));
    let from_seed: Vec<_> = first
        .iter()
        .filter(|f| f.2 == Source::Seed(seed))
        .copied()
        .collect();
    assert!(!from_seed.is_empty(), "{first:?}");
    for (transfer, ..) in &from_seed {
        s.on_complete(Millis(20), *transfer, Outcome::Busy);
    }
    let retry = fetches(&s.poll(Millis(30)));
    for (_, sequence, ..) in &from_seed {
        let again = retry
            .iter()
            .find(|f| f.1 == *sequence)
            .unwrap_or_else(|| panic!("segment {sequence} not fetched again: {retry:?}"));
        assert_eq!(again.2, Source::Cdn, "{retry:?}");
    }
    assert!(retry.iter().all(|f| f.2 != Source::Seed(seed)), "{retry:?}");
    // After the back-off the seed is a candidate again.
    for (transfer, ..) in &retry {
        s.on_complete(Millis(40), *transfer, Outcome::Failed);
    }
    let later = fetches(&s.poll(Millis(20 + backoff)));
    assert!(later.iter().any(|f| f.2 == Source::Seed(seed)), "{later:?}");
}

/// A seed that fails every request at once (it refuses this viewer's
/// session token, say) is left out for a doubling back-off instead of being
/// asked again at every poll, and is asked again once it has passed; the
/// segments go to the CDN meanwhile, and a delivery from the seed ends the
/// back-off.
#[test]
fn a_seed_that_keeps_failing_is_left_out_for_a_doubling_back_off() {
    let config = SchedulerConfig::default();
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, false);
    let seed = PeerId(100);
    s.add_peer(seed, seed_info());
    // One poll at `now`: every CDN transfer fails at once (so the segments
    // stay wanted and the seed stays a candidate for them); the seed's
    // transfers are returned.
    let poll = |s: &mut Scheduler<DeadlineFirst>, now: u64| {
        let mut from_seed = Vec::new();
        for fetch in fetches(&s.poll(Millis(now))) {
            if fetch.2 == Source::Seed(seed) {
                from_seed.push(fetch);
            } else {
                s.on_complete(Millis(now + 1), fetch.0, Outcome::Failed);
            }
        }
        from_seed
    };
    // Ten seconds of polls every 50 ms; the seed fails every request.
    let mut asked_at = Vec::new();
    for step in 0..200u64 {
        let now = step * 50;
        for (transfer, ..) in poll(&mut s, now) {
            asked_at.push(now);
            s.on_complete(Millis(now + 1), transfer, Outcome::Failed);
        }
    }
    // Without the back-off: about two requests per poll, 400 in all.
    assert!(
        asked_at.len() <= 16,
        "{} requests to a failing seed: {asked_at:?}",
        asked_at.len()
    );
    // The gaps between rounds of requests double: at least 1, 2 and 4 s.
    let mut rounds = asked_at.clone();
    rounds.dedup();
    let gaps: Vec<u64> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
    let long: Vec<u64> = gaps.iter().copied().filter(|g| *g >= 900).collect();
    assert!(long.len() >= 3, "{gaps:?}");
    assert!(long.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert!(
        gaps.iter()
            .all(|g| *g <= config.failure_backoff_max_ms + 100),
        "{gaps:?}"
    );
    // Once the back-off has passed the seed is asked again, and a delivery
    // from it ends the back-off: one failure after it costs nothing, so
    // the seed is asked again within the base back-off.
    let next_ask = |s: &mut Scheduler<DeadlineFirst>, from: u64| {
        (from..from + 30_000)
            .step_by(50)
            .find_map(|at| {
                let asked = poll(s, at);
                (!asked.is_empty()).then_some((at, asked))
            })
            .expect("the seed was never asked again")
    };
    let (at, delivered) = next_ask(&mut s, 10_000);
    for (transfer, _, _, range) in &delivered {
        s.on_progress(Millis(at + 10), *transfer, range.len());
        s.on_complete(Millis(at + 20), *transfer, Outcome::Verified);
    }
    // The (paused) player moves on to what follows, so more is wanted.
    let next = delivered.iter().map(|f| f.1).max().unwrap_or(0) + 1;
    s.set_playhead(Millis(at + 25), next, 0, false);
    let (failed_at, asked) = next_ask(&mut s, at + 30);
    s.on_complete(Millis(failed_at + 1), asked[0].0, Outcome::Failed);
    for (transfer, _, _, range) in &asked[1..] {
        s.on_progress(Millis(failed_at + 1), *transfer, range.len());
        s.on_complete(Millis(failed_at + 1), *transfer, Outcome::Verified);
    }
    let (again_at, _) = next_ask(&mut s, failed_at + 50);
    assert!(
        again_at - failed_at < config.busy_backoff_ms,
        "one failure after a delivery left the seed out from {failed_at} to {again_at} ms"
    );
}

#[test]
fn a_busy_peer_still_holds_the_segment_after_its_back_off() {
    let backoff = SchedulerConfig::default().busy_backoff_ms;
    let mut s = vod(DeadlineFirst::default());
    s.set_playhead(Millis(0), 0, 0, false);
    let peer = PeerId(1);
    s.add_peer(peer, viewer(Locality::SameIsp, 5_000_000));
    s.peer_has(peer, 3);
    let first = fetches(&s.poll(Millis(0)));
    let (transfer, ..) = *first
        .iter()
        .find(|f| f.1 == 3 && f.2 == Source::Peer(peer))
        .unwrap_or_else(|| panic!("segment 3 not asked of its holder: {first:?}"));
    s.on_complete(Millis(20), transfer, Outcome::Busy);
    // During the back-off the peer is not asked; whatever fetches segment 3
    // meanwhile fails, so the segment is still wanted afterwards.
    let during = fetches(&s.poll(Millis(30)));
    assert!(
        during.iter().all(|f| f.2 != Source::Peer(peer)),
        "{during:?}"
    );
    for (transfer, ..) in &during {
        s.on_complete(Millis(40), *transfer, Outcome::Failed);
    }
    // Afterwards it is asked for segment 3 again: BUSY did not erase its
    // HAVE.
    let later = fetches(&s.poll(Millis(20 + backoff)));
    assert!(
        later.iter().any(|f| f.1 == 3 && f.2 == Source::Peer(peer)),
        "{later:?}"
    );
}
