#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The timer contract: the scheduler says when it next needs to be polled
//! ([`Scheduler::poll_timeout`]), and a poll before that instant, with no
//! event in between, does nothing. So a driver that polls only on events
//! and at the instants asked for behaves exactly like one that polls all
//! the time: checked here by explicit cases and by random interaction
//! (proptest), with the invariant checker after every step.

use loaves_scheduler::{
    Action, DeadlineFirst, Locality, Millis, Mode, Outcome, PeerId, PeerInfo, PeerKind, Scheduler,
    SchedulerConfig, Source, TransferId,
};
use proptest::prelude::*;

const SEGMENT: u64 = 500_000;
const DURATION: u32 = 2_000;

fn scheduler(mode: Mode) -> Scheduler<DeadlineFirst> {
    let mut s = Scheduler::new(
        SchedulerConfig {
            mode,
            lookahead_segments: 4,
            cdn_throughput_bytes_per_s: 5_000_000,
            cdn_rtt_ms: 40,
            seed: 3,
            ..SchedulerConfig::default()
        },
        DeadlineFirst::default(),
    );
    for seq in 0..30 {
        s.add_segment(seq, SEGMENT, DURATION);
    }
    s
}

fn viewer(bytes_per_s: u64) -> PeerInfo {
    PeerInfo {
        kind: PeerKind::Viewer,
        locality: Locality::SameIsp,
        rtt_ms: 20,
        throughput_bytes_per_s: bytes_per_s,
    }
}

fn fetched(actions: &[Action]) -> Vec<(TransferId, u64, Source)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Fetch {
                transfer,
                sequence,
                source,
                ..
            } => Some((transfer, sequence, source)),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_to_do_asks_for_no_poll() {
    let s = scheduler(Mode::Vod);
    assert_eq!(
        s.poll_timeout(),
        None,
        "no playhead yet: nothing can change"
    );
}

#[test]
fn a_waiting_segment_is_placed_at_the_instant_asked_for_and_not_before() {
    let mut s = scheduler(Mode::Vod);
    s.set_playhead(Millis(0), 0, 0, true);
    // A peer that holds nothing of the window: far segments wait for it.
    s.add_peer(PeerId(1), viewer(2_000_000));
    let first = s.poll(Millis(0));
    let placed: Vec<u64> = fetched(&first).iter().map(|f| f.1).collect();
    let wake = s.poll_timeout().expect("a waiting segment asks for a poll");
    assert!(wake > Millis(0));
    // Polling just before changes nothing.
    let early = s.poll(Millis(wake.0 - 1));
    assert!(fetched(&early).is_empty(), "{early:?}");
    let wake_again = s.poll_timeout().unwrap();
    assert_eq!(wake_again, wake);
    // At the instant, the segment that had to start then starts.
    let due = s.poll(wake);
    let started: Vec<u64> = fetched(&due).iter().map(|f| f.1).collect();
    assert!(!started.is_empty(), "{due:?}");
    assert!(started.iter().all(|seq| !placed.contains(seq)));
}

#[test]
fn a_transfer_in_flight_asks_for_its_stall_check_and_its_pace_check() {
    let mut s = scheduler(Mode::Vod);
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(1), viewer(2_000_000));
    // Segment 2 is due at 4 s: time enough for the peer.
    s.peer_has(PeerId(1), 2);
    let actions = s.poll(Millis(100));
    assert!(
        fetched(&actions)
            .iter()
            .any(|f| f.1 == 2 && f.2 == Source::Peer(PeerId(1))),
        "{actions:?}"
    );
    let config = SchedulerConfig::default();
    let wake = s.poll_timeout().unwrap();
    assert!(
        wake <= Millis(100 + config.late_check_interval_ms),
        "a peer transfer's pace is checked at least every {} ms: {wake:?}",
        config.late_check_interval_ms
    );
}

#[test]
fn a_busy_peer_is_asked_again_when_its_back_off_ends() {
    let mut s = scheduler(Mode::Vod);
    s.set_playhead(Millis(0), 0, 0, true);
    s.add_peer(PeerId(1), viewer(2_000_000));
    for seq in 0..4 {
        s.peer_has(PeerId(1), seq);
    }
    let actions = s.poll(Millis(0));
    let to_peer: Vec<TransferId> = fetched(&actions)
        .into_iter()
        .filter(|f| f.2 == Source::Peer(PeerId(1)))
        .map(|f| f.0)
        .collect();
    assert!(!to_peer.is_empty());
    for transfer in to_peer {
        s.on_complete(Millis(10), transfer, Outcome::Busy);
    }
    let backoff = SchedulerConfig::default().busy_backoff_ms;
    let _ = s.poll(Millis(10));
    let wake = s.poll_timeout().unwrap();
    assert!(wake <= Millis(10 + backoff), "{wake:?}");
}

/// Something that happens to a scheduler.
#[derive(Debug, Clone)]
enum Step {
    /// Time passes (ms).
    Wait(u64),
    Playhead {
        sequence: u64,
        playing: bool,
    },
    PeerUp {
        peer: u64,
        bytes_per_s: u64,
    },
    PeerDown {
        peer: u64,
    },
    Have {
        peer: u64,
        sequence: u64,
    },
    /// The `index`-th transfer in flight makes progress or ends.
    Progress {
        index: usize,
        fraction: u8,
    },
    End {
        index: usize,
        outcome: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..3_000).prop_map(Step::Wait),
        1 => (0u64..30, any::<bool>()).prop_map(|(sequence, playing)| Step::Playhead { sequence, playing }),
        1 => (0u64..5, 10_000u64..5_000_000).prop_map(|(peer, bytes_per_s)| Step::PeerUp { peer, bytes_per_s }),
        1 => (0u64..5).prop_map(|peer| Step::PeerDown { peer }),
        3 => (0u64..5, 0u64..40).prop_map(|(peer, sequence)| Step::Have { peer, sequence }),
        3 => (0usize..8, 1u8..=100).prop_map(|(index, fraction)| Step::Progress { index, fraction }),
        3 => (0usize..8, 0u8..5).prop_map(|(index, outcome)| Step::End { index, outcome }),
    ]
}

fn outcome(code: u8) -> Outcome {
    match code {
        0 => Outcome::Verified,
        1 => Outcome::Failed,
        2 => Outcome::Busy,
        3 => Outcome::NotHeld,
        _ => Outcome::Corrupt,
    }
}

/// The transfers the driver knows are in flight: (id, sequence, size).
fn track(actions: &[Action], inflight: &mut Vec<(TransferId, u64)>) {
    for action in actions {
        match *action {
            Action::Fetch {
                transfer, range, ..
            } => inflight.push((transfer, range.len())),
            Action::Cancel { transfer } => inflight.retain(|(t, _)| *t != transfer),
            Action::DropPeer { .. } => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Random interactions: invariants hold after every step, and between
    /// two events the scheduler never has anything to do before the
    /// instant it asked for.
    #[test]
    fn polls_before_the_timeout_do_nothing(
        live in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut s = scheduler(if live { Mode::Live } else { Mode::Vod });
        let mut now = Millis(0);
        let mut inflight: Vec<(TransferId, u64)> = Vec::new();
        s.set_playhead(now, 0, 0, false);
        // An event is followed by a poll: the contract starts there.
        let actions = s.poll(now);
        track(&actions, &mut inflight);
        for step in steps {
            match step {
                Step::Wait(ms) => {
                    let until = now.plus(ms);
                    // Poll at every instant asked for up to `until`; in
                    // between, a poll must be a no-op.
                    loop {
                        let next = s.poll_timeout();
                        let probe = Millis(now.0 + 1).min(until);
                        if next.is_none_or(|at| at > probe) && probe < until {
                            let quiet = s.poll(probe);
                            prop_assert!(quiet.is_empty(), "poll at {probe:?} before {next:?} did {quiet:?}");
                            track(&quiet, &mut inflight);
                        }
                        match next {
                            Some(at) if at <= until => {
                                now = at.max(now);
                                let actions = s.poll(now);
                                track(&actions, &mut inflight);
                                if s.poll_timeout() == Some(at) && actions.is_empty() {
                                    // Asked for a poll, got it, and asks for
                                    // the same instant again: a busy loop.
                                    prop_assert!(false, "poll_timeout did not move past {at:?}");
                                }
                            }
                            _ => break,
                        }
                    }
                    now = until;
                }
                Step::Playhead { sequence, playing } => s.set_playhead(now, sequence, 0, playing),
                Step::PeerUp { peer, bytes_per_s } => s.add_peer(PeerId(peer), viewer(bytes_per_s)),
                Step::PeerDown { peer } => {
                    s.remove_peer(PeerId(peer));
                }
                Step::Have { peer, sequence } => s.peer_has(PeerId(peer), sequence),
                Step::Progress { index, fraction } => {
                    if let Some(&(transfer, len)) = inflight.get(index) {
                        s.on_progress(now, transfer, len * u64::from(fraction) / 100);
                    }
                }
                Step::End { index, outcome: code } => {
                    if index < inflight.len() {
                        let (transfer, _) = inflight.remove(index);
                        let actions = s.on_complete(now, transfer, outcome(code));
                        track(&actions, &mut inflight);
                    }
                }
            }
            let actions = s.poll(now);
            track(&actions, &mut inflight);
            s.check_invariants();
        }
    }
}
