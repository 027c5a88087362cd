//! What kind of NAT this viewer is behind, from what others saw.
//!
//! Every observer this viewer talks to from its one socket (the tracker in
//! its hello answer, seeds and peers in theirs) says which `ip:port` the
//! packets came from. If one of them saw one of the host's own addresses
//! there is no NAT ([`NatClass::Open`]); if two observers at different
//! addresses saw the same public port, the NAT maps the socket to one port
//! whatever the destination ([`NatClass::EndpointIndependent`]: hole
//! punching works); if they saw different ports, it maps per destination
//! ([`NatClass::EndpointDependent`]: "symmetric", punching works only
//! towards an open or endpoint-independent peer). Pure: observations in,
//! a class out.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use loaves_proto::addresses::{is_lan, is_usable};
use loaves_proto::pb::NatClass;

/// Observations kept (the newest).
const KEPT: usize = 16;

/// What observers saw this viewer's socket come from.
#[derive(Debug, Default)]
pub(crate) struct NatObservations {
    /// (observer, what it saw), newest last.
    seen: VecDeque<(SocketAddr, SocketAddr)>,
}

impl NatObservations {
    /// `observer` saw this viewer's packets come from `observed`. An
    /// observer at a LAN address (a peer behind the same router) sees the
    /// packets before any NAT: it is no witness of the NAT, and is not
    /// counted (it would make a viewer behind a NAT look open).
    pub(crate) fn observed(&mut self, observer: SocketAddr, observed: SocketAddr) {
        if is_lan(observer.ip()) {
            return;
        }
        self.seen.retain(|(o, _)| *o != observer);
        if self.seen.len() >= KEPT {
            self.seen.pop_front();
        }
        self.seen.push_back((observer, observed));
    }

    /// The class the observations show, given the socket's own addresses
    /// (its port and the host's interface addresses).
    pub(crate) fn class(&self, local_port: u16, interfaces: &[IpAddr]) -> NatClass {
        if self
            .seen
            .iter()
            .any(|(_, seen)| seen.port() == local_port && interfaces.contains(&seen.ip()))
        {
            return NatClass::Open;
        }
        // Two observers at different IPs (a NAT may treat two ports of one
        // host alike) that saw the same public IP.
        let mut class = NatClass::Unknown;
        for (i, (observer_a, seen_a)) in self.seen.iter().enumerate() {
            for (observer_b, seen_b) in self.seen.iter().skip(i + 1) {
                if observer_a.ip() == observer_b.ip() || seen_a.ip() != seen_b.ip() {
                    continue;
                }
                if seen_a.port() != seen_b.port() {
                    return NatClass::EndpointDependent;
                }
                class = NatClass::EndpointIndependent;
            }
        }
        class
    }
}

/// Whether a direct connection attempt from `local` to `remote` is worth
/// making without help, and whether a punch can help: (try punching, give
/// the attempt a long time).
pub(crate) fn punch_plan(local: NatClass, remote: NatClass) -> PunchPlan {
    use NatClass::{EndpointDependent, Open};
    match (local, remote) {
        // Nobody to let in: the direct attempt reaches it.
        (_, Open) => PunchPlan::Direct,
        // Both map per destination: the address each side learns of the
        // other is not the one it will send from. Only a LAN candidate (the
        // same router) can work: one short direct attempt.
        (EndpointDependent, EndpointDependent) => PunchPlan::Hopeless,
        // The remote side must open towards us at the same time.
        _ => PunchPlan::Punch,
    }
}

/// How to reach a peer (see [`punch_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PunchPlan {
    /// A direct attempt.
    Direct,
    /// A direct attempt while the tracker asks the peer to open towards
    /// this viewer.
    Punch,
    /// A short direct attempt (LAN candidates), then give up.
    Hopeless,
}

/// The addresses of a peer worth dialing, from what the tracker (or its
/// punch notice) listed, given this viewer's own public address as the
/// tracker saw it (`mine`): LAN addresses only when both sit behind the
/// same public IP (the same router: a LAN address elsewhere is somebody
/// else's network) or when nothing tells them apart; at most `max`.
pub(crate) fn candidates(
    listed: &[String],
    mine: Option<SocketAddr>,
    max: usize,
) -> Vec<SocketAddr> {
    let all: Vec<SocketAddr> = listed
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| is_usable(*a))
        .collect();
    let same_router = match mine {
        Some(mine) => all.iter().any(|a| !is_lan(a.ip()) && a.ip() == mine.ip()),
        // Unknown: nothing to tell LAN candidates apart by.
        None => true,
    };
    let public_known = all.iter().any(|a| !is_lan(a.ip()));
    all.into_iter()
        .filter(|a| same_router || !public_known || !is_lan(a.ip()))
        .take(max)
        .collect()
}

/// Peers that could not be reached, not dialed again (on the tracker's
/// word; a punch notice from them still is) before their back-off ends:
/// the first failure waits [`Backoff::FIRST`], each further one twice as
/// long, up to [`Backoff::MAX`]. Bounded to about [`Backoff::KEPT`] peers.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Key → (not before, failures so far).
    peers: HashMap<[u8; 32], (Instant, u32)>,
}

impl Backoff {
    /// First back-off.
    pub(crate) const FIRST: Duration = Duration::from_secs(30);
    /// Longest back-off.
    pub(crate) const MAX: Duration = Duration::from_secs(600);
    /// Verdicts kept before expired ones are forgotten.
    const KEPT: usize = 4096;

    /// Whether `key` is still in its back-off at `now`.
    pub(crate) fn backing_off(&self, key: &[u8; 32], now: Instant) -> bool {
        self.peers.get(key).is_some_and(|(until, _)| now < *until)
    }

    /// An attempt to reach `key` ended at `now`: a success forgets the
    /// back-off, a failure doubles it.
    pub(crate) fn settle(&mut self, key: [u8; 32], reached: bool, now: Instant) {
        if reached {
            self.peers.remove(&key);
            return;
        }
        let failures = self
            .peers
            .get(&key)
            .map_or(0, |(_, n)| *n)
            .saturating_add(1);
        let backoff = Self::FIRST
            .saturating_mul(2u32.saturating_pow(failures - 1).min(64))
            .min(Self::MAX);
        self.peers.insert(key, (now + backoff, failures));
        if self.peers.len() > Self::KEPT {
            self.peers.retain(|_, (until, _)| *until > now);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_observation_is_unknown() {
        let nat = NatObservations::default();
        assert_eq!(nat.class(5000, &[]), NatClass::Unknown);
    }

    #[test]
    fn its_own_address_seen_means_no_nat() {
        let mut nat = NatObservations::default();
        nat.observed(a("203.0.113.1:7400"), a("198.51.100.7:5000"));
        let own = ["198.51.100.7".parse().unwrap()];
        assert_eq!(nat.class(5000, &own), NatClass::Open);
        assert_eq!(nat.class(5001, &own), NatClass::Unknown);
    }

    #[test]
    fn the_same_public_port_from_two_observers_is_endpoint_independent() {
        let mut nat = NatObservations::default();
        nat.observed(a("203.0.113.1:7400"), a("198.51.100.7:61000"));
        // The same observer's word twice proves nothing.
        nat.observed(a("203.0.113.1:7401"), a("198.51.100.7:61000"));
        assert_eq!(nat.class(5000, &[]), NatClass::Unknown);
        nat.observed(a("192.0.2.30:443"), a("198.51.100.7:61000"));
        assert_eq!(nat.class(5000, &[]), NatClass::EndpointIndependent);
    }

    #[test]
    fn a_peer_on_the_lan_is_no_witness() {
        let own = ["192.168.1.20".parse().unwrap()];
        let mut nat = NatObservations::default();
        // The neighbour behind the same router sees the socket's own LAN
        // address: that says nothing about the router's NAT.
        nat.observed(a("192.168.1.21:5000"), a("192.168.1.20:5000"));
        assert_eq!(nat.class(5000, &own), NatClass::Unknown);
        nat.observed(a("203.0.113.1:7400"), a("198.51.100.7:5000"));
        nat.observed(a("10.0.0.9:5000"), a("198.51.100.7:5001"));
        assert_eq!(nat.class(5000, &own), NatClass::Unknown);
        nat.observed(a("192.0.2.30:443"), a("198.51.100.7:5000"));
        assert_eq!(nat.class(5000, &own), NatClass::EndpointIndependent);
    }

    #[test]
    fn different_ports_for_different_observers_are_endpoint_dependent() {
        let mut nat = NatObservations::default();
        nat.observed(a("203.0.113.1:7400"), a("198.51.100.7:61000"));
        nat.observed(a("192.0.2.30:443"), a("198.51.100.7:61001"));
        assert_eq!(nat.class(5000, &[]), NatClass::EndpointDependent);
    }

    #[test]
    fn observations_are_bounded() {
        let mut nat = NatObservations::default();
        for n in 0..1000u16 {
            nat.observed(
                SocketAddr::new(IpAddr::from([192, 0, 2, (n % 250) as u8]), n),
                a("198.51.100.7:61000"),
            );
        }
        assert!(nat.seen.len() <= KEPT);
    }

    #[test]
    fn plans() {
        use NatClass::*;
        assert_eq!(punch_plan(EndpointDependent, Open), PunchPlan::Direct);
        assert_eq!(
            punch_plan(EndpointIndependent, EndpointIndependent),
            PunchPlan::Punch
        );
        assert_eq!(
            punch_plan(EndpointDependent, EndpointIndependent),
            PunchPlan::Punch
        );
        assert_eq!(punch_plan(Unknown, Unknown), PunchPlan::Punch);
        assert_eq!(
            punch_plan(EndpointDependent, EndpointDependent),
            PunchPlan::Hopeless
        );
    }

    fn listed(addresses: &[&str]) -> Vec<String> {
        addresses.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn lan_candidates_only_behind_the_same_router() {
        let peer = listed(&["192.168.1.20:5000", "198.51.100.9:61000"]);
        // Behind another public IP: its LAN address is someone else's.
        assert_eq!(
            candidates(&peer, Some(a("203.0.113.5:40000")), 4),
            vec![a("198.51.100.9:61000")]
        );
        // Behind the same one (a hairpin pair): both, the LAN one first.
        assert_eq!(
            candidates(&peer, Some(a("198.51.100.9:40000")), 4),
            vec![a("192.168.1.20:5000"), a("198.51.100.9:61000")]
        );
        // Not known yet: everything.
        assert_eq!(candidates(&peer, None, 4).len(), 2);
        // Only LAN addresses listed: nothing tells them apart, try them.
        assert_eq!(
            candidates(&listed(&["10.0.0.7:5000"]), Some(a("203.0.113.5:1")), 4),
            vec![a("10.0.0.7:5000")]
        );
    }

    #[test]
    fn unusable_and_malformed_candidates_are_dropped_and_bounded() {
        let peer = listed(&[
            "0.0.0.0:5000",
            "not an address",
            "198.51.100.9:0",
            "224.0.0.1:5000",
            "198.51.100.9:1",
            "198.51.100.9:2",
            "198.51.100.9:3",
            "198.51.100.9:4",
            "198.51.100.9:5",
        ]);
        assert_eq!(
            candidates(&peer, None, 4),
            vec![
                a("198.51.100.9:1"),
                a("198.51.100.9:2"),
                a("198.51.100.9:3"),
                a("198.51.100.9:4")
            ]
        );
    }

    #[test]
    fn back_off_doubles_per_failure_up_to_the_cap_and_a_success_clears_it() {
        let start = Instant::now();
        let key = [1u8; 32];
        let mut backoff = Backoff::default();
        assert!(!backoff.backing_off(&key, start));
        backoff.settle(key, false, start);
        assert!(backoff.backing_off(&key, start + Backoff::FIRST - Duration::from_millis(1)));
        assert!(!backoff.backing_off(&key, start + Backoff::FIRST));
        // Second failure: twice as long from then.
        let then = start + Backoff::FIRST;
        backoff.settle(key, false, then);
        assert!(backoff.backing_off(&key, then + Backoff::FIRST * 2 - Duration::from_millis(1)));
        assert!(!backoff.backing_off(&key, then + Backoff::FIRST * 2));
        // Many failures: never longer than the cap.
        let mut now = then;
        for _ in 0..40 {
            backoff.settle(key, false, now);
            now += Duration::from_secs(1);
        }
        let last = now - Duration::from_secs(1);
        assert!(!backoff.backing_off(&key, last + Backoff::MAX));
        // Another key is unaffected; a success forgets.
        assert!(!backoff.backing_off(&[2u8; 32], now));
        backoff.settle(key, true, now);
        assert!(!backoff.backing_off(&key, now));
    }

    #[test]
    fn back_off_verdicts_are_bounded() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        for n in 0..10_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            // Each verdict ends long before the next is recorded.
            backoff.settle(key, false, start + Backoff::MAX * n);
        }
        assert!(backoff.peers.len() <= Backoff::KEPT + 1);
    }
}
