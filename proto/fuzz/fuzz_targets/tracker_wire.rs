//! The tracker's hand-written protobuf encoding (`loaves_swarm::wire`, the
//! reply path of every announce) is ordinary protobuf: for arbitrary peer
//! entries, holdings and reply numbers, the bytes it writes are the bytes
//! `prost` writes for the same message, `prost` decodes them to that
//! message, and `Holdings::encoded_len` is the length `encode_body` writes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use loaves_proto::framing::decode_frame;
use loaves_proto::pb;
use loaves_swarm::holdings::Holdings;
use loaves_swarm::wire::{self, PeerEntryFields};
use prost::Message;

#[derive(Debug, Arbitrary)]
enum HoldingsInput {
    Nothing,
    Live { first: u64, last: u64 },
    Bitmap { first: u64, bits: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
struct Entry {
    key: [u8; 32],
    addresses: Vec<String>,
    region: String,
    isp: String,
    holdings: HoldingsInput,
    spare_upload_bps: u64,
    is_seed: bool,
}

#[derive(Debug, Arbitrary)]
struct Reply {
    peers: Vec<Entry>,
    seeds: Vec<Entry>,
    interval_s: u32,
    swarm_size: u32,
}

fn holdings(input: &HoldingsInput) -> (Holdings, Option<pb::Holdings>) {
    use pb::holdings::Kind;
    match input {
        HoldingsInput::Nothing => (Holdings::Nothing, None),
        &HoldingsInput::Live { first, last } => (
            Holdings::Live { first, last },
            Some(pb::Holdings {
                kind: Some(Kind::LiveWindow(pb::LiveWindow {
                    first_sequence: first,
                    last_sequence: last,
                })),
            }),
        ),
        HoldingsInput::Bitmap { first, bits } => (
            Holdings::Bitmap {
                first: *first,
                bits: bits.clone().into_boxed_slice(),
            },
            Some(pb::Holdings {
                kind: Some(Kind::Bitmap(pb::SegmentBitmap {
                    first_sequence: *first,
                    bits: bits.clone(),
                })),
            }),
        ),
    }
}

/// The entry's bytes as the tracker encodes them, and the message prost
/// builds for the same fields.
fn encode(entry: &Entry, prefix: &[u8]) -> (Vec<u8>, pb::PeerEntry) {
    let (ours, theirs) = holdings(&entry.holdings);
    // The holdings alone: the length is computed without encoding, and the
    // body is prost's.
    let mut body = Vec::new();
    ours.encode_body(&mut body);
    assert_eq!(ours.encoded_len(), body.len(), "encoded_len of {ours:?}");
    assert_eq!(
        body,
        theirs
            .clone()
            .map(|h| h.encode_to_vec())
            .unwrap_or_default(),
        "holdings {ours:?}"
    );
    let fields = PeerEntryFields {
        key: &entry.key,
        addresses: &entry.addresses,
        region: &entry.region,
        isp: &entry.isp,
        holdings: &ours,
        spare_upload_bps: entry.spare_upload_bps,
        is_seed: entry.is_seed,
    };
    let encoded = wire::encode_peer_entry(&fields);
    // Appending keeps what the buffer held (the swarm book reuses buffers).
    let mut appended = prefix.to_vec();
    wire::encode_peer_entry_into(&mut appended, &fields);
    assert_eq!(&appended[..prefix.len()], prefix);
    assert_eq!(&appended[prefix.len()..], encoded.as_slice());
    let expected = pb::PeerEntry {
        peer_public_key: entry.key.to_vec(),
        addresses: entry.addresses.clone(),
        region: entry.region.clone(),
        isp: entry.isp.clone(),
        holdings: theirs,
        spare_upload_bps: entry.spare_upload_bps,
        is_seed: entry.is_seed,
    };
    (encoded, expected)
}

fuzz_target!(|input: Reply| {
    // The reply as the swarm book assembles it: each entry encoded once,
    // then copied in as a length-delimited field, the numbers last.
    let mut reply = Vec::new();
    let mut expected = pb::AnnounceReply {
        interval_s: input.interval_s,
        swarm_size: input.swarm_size,
        ..pb::AnnounceReply::default()
    };
    for (field, entries) in [
        (wire::REPLY_PEERS, &input.peers),
        (wire::REPLY_SEEDS, &input.seeds),
    ] {
        for entry in entries {
            let (encoded, message) = encode(entry, &reply);
            assert_eq!(encoded, message.encode_to_vec(), "entry {entry:?}");
            let decoded = pb::PeerEntry::decode(encoded.as_slice()).expect("entry decodes");
            assert_eq!(decoded, message);
            wire::put_always_bytes_field(&mut reply, field, &encoded);
            if field == wire::REPLY_PEERS {
                expected.peers.push(message);
            } else {
                expected.seeds.push(message);
            }
        }
    }
    wire::put_u64_field(
        &mut reply,
        wire::REPLY_INTERVAL,
        u64::from(input.interval_s),
    );
    wire::put_u64_field(
        &mut reply,
        wire::REPLY_SWARM_SIZE,
        u64::from(input.swarm_size),
    );
    assert_eq!(reply, expected.encode_to_vec(), "reply bytes");
    assert_eq!(wire::decode_reply(&reply).expect("reply decodes"), expected);

    // And framed as the tracker sends it.
    let frame = wire::announce_response_frame(&reply);
    let (payload, used) = decode_frame(&frame, usize::MAX)
        .expect("frame decodes")
        .expect("frame complete");
    assert_eq!(used, frame.len());
    let response = pb::TrackerResponse {
        kind: Some(pb::tracker_response::Kind::Announce(expected)),
    };
    assert_eq!(payload, response.encode_to_vec().as_slice());
});
