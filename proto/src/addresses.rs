//! Which addresses a viewer may tell others, and which are on a LAN: the
//! rule the SDK applies to its own candidates and the tracker to the
//! candidates it hands out, written once so that both agree.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Most address candidates one viewer announces (the tracker keeps at most
/// its own, configured bound).
pub const MAX_CANDIDATES: usize = 4;

/// Whether `address` can reach anybody at all: a port, and an IP that is
/// not unspecified, multicast or broadcast.
pub fn is_usable(address: SocketAddr) -> bool {
    let ip = address.ip();
    address.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}

/// LAN addresses: RFC 1918, the shared address space of carrier NATs
/// (100.64.0.0/10), IPv4 and IPv6 link-local, IPv6 unique local.
pub fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Whether a viewer seen at `observed` (where its packets come from, as
/// the tracker saw them) may announce `address`: a usable address that is
/// its observed public IP (any port: one it forwarded), on a LAN (it stays
/// inside the LAN of whoever tries it), or loopback from loopback. So no
/// viewer can make the swarm send connection attempts to a third party's
/// public address. Without an observation (no network: the simulator),
/// every usable address.
pub fn may_announce(address: SocketAddr, observed: Option<SocketAddr>) -> bool {
    if !is_usable(address) {
        return false;
    }
    let Some(observed) = observed else {
        return true;
    };
    let ip = address.ip();
    if ip.is_loopback() {
        return observed.ip().is_loopback();
    }
    ip == observed.ip() || is_lan(ip)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lan_ranges() {
        for lan in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_lan(lan.parse().unwrap()), "{lan}");
        }
        for public in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "172.32.0.1"] {
            assert!(!is_lan(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_viewer_may_announce_only_what_it_stands_for() {
        let observed = Some(a("198.51.100.7:61000"));
        assert!(may_announce(a("198.51.100.7:61000"), observed));
        assert!(
            may_announce(a("198.51.100.7:5000"), observed),
            "a forwarded port"
        );
        assert!(
            may_announce(a("192.168.1.10:5000"), observed),
            "its LAN address"
        );
        assert!(
            !may_announce(a("203.0.113.9:5000"), observed),
            "a third party"
        );
        assert!(!may_announce(a("127.0.0.1:5000"), observed));
        assert!(!may_announce(a("0.0.0.0:5000"), observed));
        assert!(!may_announce(a("198.51.100.7:0"), observed));
        assert!(!may_announce(a("224.0.0.1:5000"), observed));
        assert!(!may_announce(a("255.255.255.255:5000"), observed));
        let local = Some(a("127.0.0.1:61000"));
        assert!(may_announce(a("127.0.0.1:5000"), local));
        assert!(
            may_announce(a("203.0.113.9:5000"), None),
            "no network to check against"
        );
    }
}
