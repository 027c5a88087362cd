//! Protocol messages that the tests of several crates send alike.

use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::Entitlement;
use loaves_proto::keys::SigningKeyPair;
use loaves_proto::pb;

/// X25519 public keys no session key may be wrapped to (hex): the
/// low-order points of RFC 7748 and the usual blocklist (0, 1, the two
/// points of order 8, p - 1, p, p + 1), each giving an all-zero shared
/// secret.
pub const X25519_LOW_ORDER_POINTS: &[&str] = &[
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/// An announce for `title`/`rendition` from `address`: a live window of
/// segments 1 to 10, 20 Mbit/s of upload of which 1 is in use, no stats.
pub fn announce(title: &str, rendition: &str, address: &str) -> pb::Announce {
    pb::Announce {
        swarm: Some(pb::SwarmId {
            title: title.into(),
            rendition: rendition.into(),
        }),
        addresses: vec![address.into()],
        holdings: Some(pb::Holdings {
            kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                first_sequence: 1,
                last_sequence: 10,
            })),
        }),
        next_sequence: 11,
        upload_capacity_bps: 20_000_000,
        upload_in_use_bps: 1_000_000,
        stats: None,
        max_peers: 0,
        nat_class: Default::default(),
    }
}

/// An entitlement signed by `signin` for `account` to every title, one
/// stream at a time, renditions up to `max_height` (0: any), issued ten
/// seconds ago and valid a day.
pub fn entitlement(signin: &SigningKeyPair, account: &str, max_height: u32) -> Vec<u8> {
    let now = UnixSeconds::now().0;
    Entitlement {
        account: account.into(),
        titles: vec!["*".into()],
        max_concurrent_streams: 1,
        renditions: vec![],
        max_height,
        issued_at: UnixSeconds(now.saturating_sub(10)),
        expires_at: UnixSeconds(now + 86_400),
    }
    .sign(signin)
}
