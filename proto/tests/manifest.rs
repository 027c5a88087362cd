#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signed manifests: segments verify in one call; any edit, swap, reorder or
//! gap in the chain is refused.

use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::{
    Manifest, ManifestError, ManifestWriter, Scheme, SegmentInfo, verify_chunk,
};
use loaves_proto::pb;
use loaves_proto::signed::{Purpose, SignatureError};
use prost::Message;

const INIT: &[u8] = b"init segment bytes";

fn origin_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[3; 32])
}

fn keyring() -> Keyring {
    [origin_key().verifying_key()].into_iter().collect()
}

fn segment_bytes(sequence: u64) -> Vec<u8> {
    (0..1000 + sequence as usize)
        .map(|i| (i as u64 * 31 + sequence) as u8)
        .collect()
}

fn entries(range: std::ops::Range<u64>) -> Vec<SegmentInfo> {
    range
        .map(|seq| SegmentInfo::describe(seq, 2000, (seq / 4) as u32, &segment_bytes(seq)))
        .collect()
}

fn writer() -> ManifestWriter {
    ManifestWriter::new("title-a", "720p", INIT, Scheme::Cenc, 100)
}

fn vod_chunk() -> Vec<u8> {
    writer()
        .append(&origin_key(), &entries(100..110), true, UnixSeconds(1))
        .unwrap()
}

#[test]
fn vod_manifest_verifies_each_segment_in_one_call() {
    let manifest = Manifest::from_chunk(verify_chunk(&keyring(), &vod_chunk()).unwrap());
    assert!(manifest.is_final());
    assert_eq!(manifest.scheme(), Scheme::Cenc);
    manifest.verify_init(INIT).unwrap();
    for seq in 100..110 {
        let entry = manifest.verify_segment(seq, &segment_bytes(seq)).unwrap();
        assert_eq!(entry.key_period, (seq / 4) as u32);
    }
    assert_eq!(
        manifest.verify_segment(110, b"x"),
        Err(ManifestError::UnknownSegment(110))
    );
    assert_eq!(
        manifest.verify_segment(99, b"x"),
        Err(ManifestError::UnknownSegment(99))
    );
}

#[test]
fn tampered_segment_bytes_are_caught() {
    let manifest = Manifest::from_chunk(verify_chunk(&keyring(), &vod_chunk()).unwrap());
    let good = segment_bytes(105);
    for position in [0, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[position] ^= 0x01;
        assert_eq!(
            manifest.verify_segment(105, &bad),
            Err(ManifestError::HashMismatch(105))
        );
    }
    assert!(matches!(
        manifest.verify_segment(105, &good[..good.len() - 1]),
        Err(ManifestError::SizeMismatch { sequence: 105, .. })
    ));
    assert_eq!(
        manifest.verify_init(b"other init"),
        Err(ManifestError::InitHashMismatch)
    );
}

fn resign_body(edit: impl FnOnce(&mut pb::ManifestChunkBody), key: &SigningKeyPair) -> Vec<u8> {
    let envelope = pb::Signed::decode(vod_chunk().as_slice()).unwrap();
    let mut body = pb::ManifestChunkBody::decode(envelope.body.as_slice()).unwrap();
    edit(&mut body);
    loaves_proto::signed::sign(key, Purpose::ManifestChunk, body.encode_to_vec()).encode_to_vec()
}

fn edit_without_resigning(edit: impl FnOnce(&mut pb::ManifestChunkBody)) -> Vec<u8> {
    let mut envelope = pb::Signed::decode(vod_chunk().as_slice()).unwrap();
    let mut body = pb::ManifestChunkBody::decode(envelope.body.as_slice()).unwrap();
    edit(&mut body);
    envelope.body = body.encode_to_vec();
    envelope.encode_to_vec()
}

#[test]
fn swapped_entries_are_refused() {
    let swapped = edit_without_resigning(|body| body.segments.swap(2, 3));
    assert_eq!(
        verify_chunk(&keyring(), &swapped),
        Err(ManifestError::Signature(SignatureError::BadSignature))
    );
}

#[test]
fn altered_entry_is_refused() {
    for edit in [
        (|b: &mut pb::ManifestChunkBody| b.segments[4].sha256[0] ^= 1) as fn(&mut _),
        |b| b.segments[4].size += 1,
        |b| b.segments[4].key_period += 1,
        |b| b.segments[4].duration_ms += 1,
        |b| b.title.push('x'),
    ] {
        assert_eq!(
            verify_chunk(&keyring(), &edit_without_resigning(edit)),
            Err(ManifestError::Signature(SignatureError::BadSignature))
        );
    }
}

#[test]
fn chunk_signed_by_another_key_is_refused() {
    let stranger = SigningKeyPair::from_seed(&[4; 32]);
    let chunk = resign_body(|_| {}, &stranger);
    assert_eq!(
        verify_chunk(&keyring(), &chunk),
        Err(ManifestError::Signature(SignatureError::UnknownSigner(
            stranger.key_id()
        )))
    );
}

#[test]
fn signed_but_inconsistent_chunks_are_refused() {
    // Even the origin's key cannot make a chunk with a gap or bad fields.
    let key = origin_key();
    let gap = resign_body(|b| b.segments[3].sequence += 10, &key);
    assert_eq!(
        verify_chunk(&keyring(), &gap),
        Err(ManifestError::NonContiguous {
            expected: 103,
            found: 113
        })
    );
    let short_hash = resign_body(|b| b.segments[0].sha256.pop().map(drop).unwrap_or(()), &key);
    assert_eq!(
        verify_chunk(&keyring(), &short_hash),
        Err(ManifestError::InvalidField("sha256"))
    );
    let scheme = resign_body(|b| b.scheme = "rot13".into(), &key);
    assert_eq!(
        verify_chunk(&keyring(), &scheme),
        Err(ManifestError::InvalidField("scheme"))
    );
}

#[test]
fn truncated_chunks_are_refused() {
    let chunk = vod_chunk();
    for len in 0..chunk.len() {
        assert!(
            verify_chunk(&keyring(), &chunk[..len]).is_err(),
            "length {len}"
        );
    }
}

fn live_chunks() -> Vec<Vec<u8>> {
    let mut writer = ManifestWriter::new("live-1", "480p", INIT, Scheme::Cbcs, 0);
    let key = origin_key();
    vec![
        writer
            .append(&key, &entries(0..3), false, UnixSeconds(10))
            .unwrap(),
        writer
            .append(&key, &entries(3..4), false, UnixSeconds(12))
            .unwrap(),
        writer
            .append(&key, &entries(4..6), false, UnixSeconds(16))
            .unwrap(),
        writer
            .append(&key, &entries(6..7), true, UnixSeconds(18))
            .unwrap(),
    ]
}

#[test]
fn live_manifest_grows_by_signed_appends() {
    let chunks = live_chunks();
    let manifest =
        Manifest::from_encoded_chunks(&keyring(), chunks.iter().map(Vec::as_slice)).unwrap();
    assert!(manifest.is_final());
    for seq in 0..7 {
        manifest.verify_segment(seq, &segment_bytes(seq)).unwrap();
    }
}

#[test]
fn late_joiner_starts_from_any_chunk() {
    let chunks = live_chunks();
    let mut manifest = Manifest::from_chunk(verify_chunk(&keyring(), &chunks[2]).unwrap());
    manifest.verify_segment(5, &segment_bytes(5)).unwrap();
    assert_eq!(
        manifest.verify_segment(2, &segment_bytes(2)),
        Err(ManifestError::UnknownSegment(2))
    );
    manifest
        .append(verify_chunk(&keyring(), &chunks[3]).unwrap())
        .unwrap();
    manifest.verify_segment(6, &segment_bytes(6)).unwrap();
}

#[test]
fn reordered_or_skipped_chunks_are_refused() {
    let chunks = live_chunks();
    let verified: Vec<_> = chunks
        .iter()
        .map(|c| verify_chunk(&keyring(), c).unwrap())
        .collect();
    let mut manifest = Manifest::from_chunk(verified[0].clone());
    assert_eq!(
        manifest.append(verified[2].clone()),
        Err(ManifestError::ChunkOutOfOrder {
            expected: 1,
            found: 2
        })
    );
    manifest.append(verified[1].clone()).unwrap();
    assert_eq!(
        manifest.append(verified[1].clone()),
        Err(ManifestError::ChunkOutOfOrder {
            expected: 2,
            found: 1
        })
    );
}

#[test]
fn chunk_from_a_forked_chain_is_refused() {
    // Two validly signed chunk #1s: a client on one branch refuses the other.
    let key = origin_key();
    let mut writer_a = ManifestWriter::new("live-1", "480p", INIT, Scheme::Cbcs, 0);
    let first = writer_a
        .append(&key, &entries(0..2), false, UnixSeconds(1))
        .unwrap();
    let mut writer_b = ManifestWriter::new("live-1", "480p", INIT, Scheme::Cbcs, 0);
    writer_b
        .append(&key, &entries(0..3), false, UnixSeconds(1))
        .unwrap();
    let fork = writer_b
        .append(&key, &entries(3..4), false, UnixSeconds(2))
        .unwrap();

    let mut manifest = Manifest::from_chunk(verify_chunk(&keyring(), &first).unwrap());
    assert_eq!(
        manifest.append(verify_chunk(&keyring(), &fork).unwrap()),
        Err(ManifestError::ChainBroken(1))
    );
}

#[test]
fn chunk_of_another_rendition_is_refused() {
    let key = origin_key();
    let mut writer_a = ManifestWriter::new("live-1", "480p", INIT, Scheme::Cbcs, 0);
    let mut writer_b = ManifestWriter::new("live-1", "1080p", INIT, Scheme::Cbcs, 0);
    let first = writer_a
        .append(&key, &entries(0..2), false, UnixSeconds(1))
        .unwrap();
    writer_b
        .append(&key, &entries(0..2), false, UnixSeconds(1))
        .unwrap();
    let other = writer_b
        .append(&key, &entries(2..3), false, UnixSeconds(1))
        .unwrap();
    let mut manifest = Manifest::from_chunk(verify_chunk(&keyring(), &first).unwrap());
    assert_eq!(
        manifest.append(verify_chunk(&keyring(), &other).unwrap()),
        Err(ManifestError::OtherPresentation("rendition"))
    );
}

#[test]
fn nothing_follows_a_final_chunk() {
    let chunks = live_chunks();
    let mut manifest =
        Manifest::from_encoded_chunks(&keyring(), chunks.iter().map(Vec::as_slice)).unwrap();
    let again = verify_chunk(&keyring(), &chunks[3]).unwrap();
    assert_eq!(manifest.append(again), Err(ManifestError::AfterFinal));

    let mut writer = writer();
    writer
        .append(&origin_key(), &entries(100..101), true, UnixSeconds(1))
        .unwrap();
    assert_eq!(
        writer.append(&origin_key(), &entries(101..102), false, UnixSeconds(1)),
        Err(ManifestError::AfterFinal)
    );
}

#[test]
fn writer_refuses_non_contiguous_segments() {
    let mut writer = writer();
    assert_eq!(
        writer.append(&origin_key(), &entries(101..103), false, UnixSeconds(1)),
        Err(ManifestError::NonContiguous {
            expected: 100,
            found: 101
        })
    );
}

#[test]
fn forgetting_old_segments_bounds_memory() {
    let chunks = live_chunks();
    let mut manifest =
        Manifest::from_encoded_chunks(&keyring(), chunks.iter().map(Vec::as_slice)).unwrap();
    manifest.forget_before(5);
    assert_eq!(manifest.segments().len(), 2);
    assert_eq!(
        manifest.verify_segment(4, &segment_bytes(4)),
        Err(ManifestError::UnknownSegment(4))
    );
    manifest.verify_segment(5, &segment_bytes(5)).unwrap();
}
