//! The addresses a viewer tells other viewers (its candidates), best first.
//!
//! A viewer's socket is usually bound to `0.0.0.0:PORT`, which reaches
//! nobody; behind a home router its interface address reaches only the
//! LAN, and the address the world reaches it at is the router's mapping,
//! which only an outside observer can see: the tracker, which reports the
//! address each connection's packets come from. So the candidates are:
//!
//! 1. public addresses the app configured (a forwarded port);
//! 2. the address the tracker observed (the public mapping behind a NAT,
//!    or the interface address on an open network);
//! 3. the interface addresses (two viewers behind one router reach each
//!    other there), global IPv6 ones included.
//!
//! Never an unspecified, multicast or broadcast address; never a loopback
//! one unless the tracker itself was reached over loopback (everyone in the
//! swarm is on this host then, as in tests and the demo). Bounded in
//! number, deduplicated. Pure: the interfaces are an argument.

use std::net::{IpAddr, SocketAddr};

use loaves_proto::addresses::{MAX_CANDIDATES, is_lan, is_usable};

/// The candidates, best first: see the module documentation.
///
/// `bound` is the socket's local address; `interfaces` the host's addresses
/// (used when `bound` is unspecified); `observed` what the tracker saw;
/// `tracker` the tracker's address (loopback candidates only towards a
/// loopback tracker).
pub(crate) fn candidates(
    bound: SocketAddr,
    interfaces: &[IpAddr],
    observed: Option<SocketAddr>,
    configured: &[SocketAddr],
    tracker: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    let loopback_ok = tracker.is_some_and(|t| t.ip().is_loopback());
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut push = |address: SocketAddr| {
        if is_usable(address)
            && (loopback_ok || !address.ip().is_loopback())
            && !out.contains(&address)
            && out.len() < MAX_CANDIDATES
        {
            out.push(address);
        }
    };
    for &address in configured {
        push(address);
    }
    if let Some(observed) = observed {
        push(observed);
    }
    let host: Vec<IpAddr> = if bound.ip().is_unspecified() {
        interfaces
            .iter()
            .copied()
            // A v4-only socket cannot be reached on v6, and the reverse,
            // except that a `[::]` socket accepts v4 too (dual stack).
            .filter(|ip| ip.is_ipv4() == bound.is_ipv4() || bound.is_ipv6())
            .collect()
    } else {
        vec![bound.ip()]
    };
    // LAN (private) addresses before others of the same family, v4 first:
    // a viewer next door is the cheapest peer there is.
    let mut host = host;
    host.sort_by_key(|ip| (ip.is_ipv6(), !is_lan(*ip)));
    for ip in host {
        push(SocketAddr::new(ip, bound.port()));
    }
    out
}

/// The host's interface addresses (none when they cannot be listed: the
/// observed address still works).
pub(crate) fn interface_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|interfaces| {
            interfaces
                .into_iter()
                .map(|interface| interface.ip())
                // Link-local v6 needs a scope id to be reached: useless to
                // others.
                .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_unspecified_bind_is_never_advertised() {
        let interfaces = [ip("127.0.0.1"), ip("192.168.1.20"), ip("2001:db8::20")];
        let tracker = Some(a("203.0.113.1:7400"));
        let got = candidates(a("0.0.0.0:5000"), &interfaces, None, &[], tracker);
        assert_eq!(got, vec![a("192.168.1.20:5000")]);
        let got = candidates(a("[::]:5000"), &interfaces, None, &[], tracker);
        assert_eq!(got, vec![a("192.168.1.20:5000"), a("[2001:db8::20]:5000")]);
    }

    #[test]
    fn the_observed_mapping_comes_before_the_lan() {
        let interfaces = [ip("10.0.0.7")];
        let got = candidates(
            a("0.0.0.0:5000"),
            &interfaces,
            Some(a("198.51.100.9:61000")),
            &[a("198.51.100.9:5000")],
            Some(a("203.0.113.1:7400")),
        );
        assert_eq!(
            got,
            vec![
                a("198.51.100.9:5000"),
                a("198.51.100.9:61000"),
                a("10.0.0.7:5000")
            ]
        );
    }

    #[test]
    fn loopback_only_towards_a_loopback_tracker() {
        let interfaces = [ip("127.0.0.1")];
        let remote = candidates(
            a("127.0.0.1:5000"),
            &interfaces,
            None,
            &[],
            Some(a("203.0.113.1:7400")),
        );
        assert!(remote.is_empty(), "{remote:?}");
        let local = candidates(
            a("0.0.0.0:5000"),
            &interfaces,
            Some(a("127.0.0.1:5000")),
            &[],
            Some(a("127.0.0.1:7400")),
        );
        assert_eq!(local, vec![a("127.0.0.1:5000")]);
    }

    #[test]
    fn bounded_and_deduplicated() {
        let interfaces: Vec<IpAddr> = (1..=20).map(|n| ip(&format!("10.0.0.{n}"))).collect();
        let got = candidates(
            a("0.0.0.0:5000"),
            &interfaces,
            Some(a("10.0.0.1:5000")),
            &[a("10.0.0.1:5000")],
            None,
        );
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[0], a("10.0.0.1:5000"));
        let unique: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len());
    }
}
