//! Hand-rolled protobuf encoding of the hot reply path.
//!
//! Every announce reply repeats the entries of other peers. Building
//! `pb::PeerEntry` structs for each (strings, vectors) would dominate the
//! cost of an announce, so each peer's entry is encoded once, when it
//! announces, and replies are assembled by copying those bytes. The output is
//! ordinary protobuf: the tests decode it with `prost` and compare.

use loaves_proto::pb;

const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

/// Bytes a varint takes.
pub(crate) fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A varint field; omitted when zero (proto3 default).
pub fn put_u64_field(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(buf, field, WIRE_VARINT);
        put_varint(buf, value);
    }
}

/// A bool field; omitted when false.
pub(crate) fn put_bool_field(buf: &mut Vec<u8>, field: u32, value: bool) {
    put_u64_field(buf, field, u64::from(value));
}

/// A bytes / string field; omitted when empty.
pub(crate) fn put_bytes_field(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        put_always_bytes_field(buf, field, value);
    }
}

/// A bytes field written even when empty (repeated elements, sub-messages).
pub fn put_always_bytes_field(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// The key and length of an embedded message whose body follows.
pub(crate) fn put_message_header(buf: &mut Vec<u8>, field: u32, body_len: usize) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, body_len as u64);
}

/// The body of a `pb::PeerEntry`, field by field.
#[derive(Debug, Clone, Copy)]
pub struct PeerEntryFields<'a, A = String> {
    /// `peer_public_key`.
    pub key: &'a [u8; 32],
    /// `addresses`, in order.
    pub addresses: &'a [A],
    /// `region`.
    pub region: &'a str,
    /// `isp`.
    pub isp: &'a str,
    /// `holdings` (absent for [`Holdings::Nothing`](crate::holdings::Holdings::Nothing)).
    pub holdings: &'a crate::holdings::Holdings,
    /// `spare_upload_bps`.
    pub spare_upload_bps: u64,
    /// `is_seed`.
    pub is_seed: bool,
    /// `pb::NatClass` as its number.
    pub nat_class: i32,
}

/// Encodes a `pb::PeerEntry` body.
pub fn encode_peer_entry<A: AsRef<str>>(fields: &PeerEntryFields<'_, A>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        64 + fields
            .addresses
            .iter()
            .map(|a| a.as_ref().len() + 2)
            .sum::<usize>(),
    );
    encode_peer_entry_into(&mut buf, fields);
    buf
}

/// Appends a `pb::PeerEntry` body to `buf` (no allocation when `buf` has
/// room).
pub fn encode_peer_entry_into<A: AsRef<str>>(buf: &mut Vec<u8>, fields: &PeerEntryFields<'_, A>) {
    put_bytes_field(buf, 1, fields.key);
    for address in fields.addresses {
        put_always_bytes_field(buf, 2, address.as_ref().as_bytes());
    }
    put_bytes_field(buf, 3, fields.region.as_bytes());
    put_bytes_field(buf, 4, fields.isp.as_bytes());
    if !matches!(fields.holdings, crate::holdings::Holdings::Nothing) {
        put_message_header(buf, 5, fields.holdings.encoded_len());
        fields.holdings.encode_body(buf);
    }
    put_u64_field(buf, 6, fields.spare_upload_bps);
    put_bool_field(buf, 7, fields.is_seed);
    // An enum is a non-negative varint (unknown values are dropped when
    // the announce is read).
    put_u64_field(buf, 8, u64::try_from(fields.nat_class).unwrap_or(0));
}

// Field numbers of `pb::AnnounceReply`. The swarm book assembles a reply
// from entries encoded by `encode_peer_entry`, each written with
// `put_always_bytes_field`, then the two numbers with `put_u64_field`.

/// `peers`.
pub const REPLY_PEERS: u32 = 1;
/// `seeds`.
pub const REPLY_SEEDS: u32 = 2;
/// `interval_s`.
pub const REPLY_INTERVAL: u32 = 3;
/// `swarm_size`.
pub const REPLY_SWARM_SIZE: u32 = 4;

/// Wraps an encoded `pb::AnnounceReply` body as an encoded
/// `pb::TrackerResponse { kind: announce }`, in one length-prefixed frame of
/// `loaves_proto::framing`, built in a single buffer (the reply is copied
/// once, here, and handed to the QUIC stream as is).
pub fn announce_response_frame(reply_body: &[u8]) -> Vec<u8> {
    let payload_len = 1 + varint_len(reply_body.len() as u64) + reply_body.len();
    let mut buf = Vec::with_capacity(loaves_proto::framing::LENGTH_PREFIX_LEN + payload_len);
    // Replies are bounded far below 4 GiB by the reply size caps; the
    // caller checks the frame against its limit.
    buf.extend_from_slice(&u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes());
    put_always_bytes_field(&mut buf, 2, reply_body);
    buf
}

/// Decodes an encoded announce reply body (for tests and clients).
pub fn decode_reply(body: &[u8]) -> Result<pb::AnnounceReply, prost::DecodeError> {
    prost::Message::decode(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn varint_lengths() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
            assert_eq!(prost::encoding::encoded_len_varint(value), buf.len());
        }
    }

    #[test]
    fn peer_entry_matches_prost() {
        let holdings = crate::holdings::Holdings::Live { first: 5, last: 9 };
        let addresses = vec!["127.0.0.1:5000".to_owned(), "[::1]:5000".to_owned()];
        let ours = encode_peer_entry(&PeerEntryFields {
            key: &[9; 32],
            addresses: &addresses,
            region: "eu-west",
            isp: "",
            holdings: &holdings,
            spare_upload_bps: 1234,
            is_seed: true,
            nat_class: pb::NatClass::EndpointIndependent as i32,
        });
        let expected = pb::PeerEntry {
            peer_public_key: vec![9; 32],
            addresses,
            region: "eu-west".into(),
            isp: String::new(),
            holdings: Some(pb::Holdings {
                kind: Some(pb::holdings::Kind::LiveWindow(pb::LiveWindow {
                    first_sequence: 5,
                    last_sequence: 9,
                })),
            }),
            spare_upload_bps: 1234,
            is_seed: true,
            nat_class: pb::NatClass::EndpointIndependent as i32,
        };
        assert_eq!(ours, expected.encode_to_vec());
        let reply = pb::AnnounceReply {
            peers: vec![expected.clone(); 3],
            interval_s: 30,
            ..pb::AnnounceReply::default()
        };
        for body in [Vec::new(), reply.encode_to_vec()] {
            let frame = announce_response_frame(&body);
            let (payload, used) = loaves_proto::framing::decode_frame(&frame, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(used, frame.len());
            let expected = pb::TrackerResponse {
                kind: Some(pb::tracker_response::Kind::Announce(
                    decode_reply(&body).unwrap(),
                )),
            };
            assert_eq!(payload, expected.encode_to_vec().as_slice());
        }
    }
}
