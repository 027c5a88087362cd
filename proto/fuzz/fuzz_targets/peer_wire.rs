//! What a peer sends on the peer wire (`loaves-wire`): the certificate of
//! its QUIC connection and the frames of its streams.
//!
//! Certificates (first byte even): arbitrary DER is refused or accepted by
//! `identity::certificate_public_key`, never a panic, and nothing but a
//! self-signed Ed25519 certificate is accepted; a genuine certificate with
//! any one bit changed is refused.
//!
//! Streams (first byte odd): the rest is a byte stream delivered in pieces
//! of fuzzer-chosen sizes and read as the peer wire reads it
//! (`framing::read_next_frame`, a small frame limit picked by the input):
//! never a panic, a frame never exceeds the limit, and the frames read are
//! exactly what the sans-I/O `decode_frame` finds in the same bytes. Each
//! frame is decoded as every message a peer sends (hello, segment request,
//! response header, HAVE notice): a hello is checked as `accept_hello`
//! checks it and is always refused (its credential is unsigned), a request's
//! range resolves inside the segment or not at all.
#![no_main]

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loaves_proto::framing::{LENGTH_PREFIX_LEN, decode_frame};
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::framing::read_next_frame;
use loaves_wire::identity::{PeerIdentity, certificate_public_key};
use loaves_wire::peerwire::{CredentialVerifier, resolve_range};
use prost::Message;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, ReadBuf};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    identity: PeerIdentity,
    verifier: CredentialVerifier,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let trusted = SigningKeyPair::from_seed(&[8; 32]);
    let keyring: Keyring = [trusted.verifying_key()].into_iter().collect();
    Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime"),
        identity: PeerIdentity::new(&SigningKeyPair::from_seed(&[4; 32])).expect("an identity"),
        verifier: CredentialVerifier::new(keyring, 60),
    }
});

/// Delivers `data` in pieces whose sizes come from `sizes` (cycled; 0
/// reads as 1), as a QUIC stream delivers what arrived.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = match self.sizes {
            [] => usize::MAX,
            sizes => usize::from(sizes[self.next % sizes.len()]).max(1),
        };
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn certificate(fixture: &Fixture, data: &[u8]) {
    if let Ok(key) = certificate_public_key(&CertificateDer::from(data)) {
        // Only a genuine certificate gets here (the fuzzer cannot sign):
        // the one it may have copied is the fixture's.
        assert_eq!(key, fixture.identity.public_key());
    }
    let genuine = fixture.identity.certificate().as_ref();
    assert_eq!(
        certificate_public_key(fixture.identity.certificate()).ok(),
        Some(fixture.identity.public_key())
    );
    let (&bit, at) = match data {
        [bit, at @ ..] if !at.is_empty() => (bit, at),
        _ => return,
    };
    let at = at
        .iter()
        .fold(0usize, |n, &b| n.wrapping_mul(31) ^ usize::from(b));
    let mut altered = genuine.to_vec();
    let at = at % altered.len();
    altered[at] ^= 1 << (bit % 8);
    assert!(
        certificate_public_key(&CertificateDer::from(altered)).is_err(),
        "bit {} of byte {at} changed, still accepted",
        bit % 8
    );
}

fn frame(fixture: &Fixture, payload: &[u8]) {
    if let Ok(hello) = pb::PeerHello::decode(payload) {
        let key = fixture.identity.public_key();
        let refused = fixture
            .verifier
            .verify_hello(&hello, &key, UnixSeconds(1_800_000_000));
        assert!(refused.is_err(), "an unsigned hello was accepted");
    }
    if let Ok(request) = pb::SegmentRequest::decode(payload) {
        for total in [0, 1, request.sequence, u64::MAX] {
            if let Some(range) = resolve_range(request.range.as_ref(), total) {
                assert!(range.end <= total);
                assert!(range.start < range.end || (request.range.is_none() && total == 0));
            }
        }
    }
    let _ = pb::SegmentResponseHeader::decode(payload);
    if let Ok(notice) = pb::HaveNotice::decode(payload) {
        // A sequence takes at least a byte: what a frame limit lets
        // through is bounded before `HaveReceiver`'s own count limit.
        assert!(notice.sequences.len() <= payload.len());
    }
}

fn stream(fixture: &Fixture, data: &[u8]) {
    // A limit of 0 to 4080 bytes, a count of piece sizes, then the sizes.
    let [limit, count, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 16;
    let count = usize::from(*count % 16).min(rest.len());
    let (sizes, bytes) = rest.split_at(count);

    let mut expected = Vec::new();
    let mut offset = 0;
    let expected_error = loop {
        match decode_frame(&bytes[offset..], max) {
            Ok(Some((payload, used))) => {
                assert!(payload.len() <= max && used == LENGTH_PREFIX_LEN + payload.len());
                expected.push(payload.to_vec());
                offset += used;
            }
            // Incomplete: the stream ends inside a frame, unless it ends
            // exactly between frames.
            Ok(None) => break offset != bytes.len(),
            Err(_) => break true,
        }
    };

    let mut reader = Pieces {
        data: bytes,
        sizes,
        next: 0,
    };
    let mut read = Vec::new();
    let error = fixture.runtime.block_on(async {
        loop {
            let second = Duration::from_secs(1);
            match read_next_frame(&mut reader, max, second, second).await {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= max);
                    read.push(payload);
                }
                Ok(None) => break false,
                Err(_) => break true,
            }
        }
    });
    assert_eq!(read, expected, "async and sans-I/O framing disagree");
    assert_eq!(error, expected_error);
    for payload in &read {
        frame(fixture, payload);
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    match data.split_first() {
        Some((selector, rest)) if selector & 1 == 0 => certificate(fixture, rest),
        Some((_, rest)) => stream(fixture, rest),
        None => {}
    }
});
