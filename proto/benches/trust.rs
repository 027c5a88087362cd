//! Throughput of the trust primitives on the hot path, each beside the raw
//! primitive it is built on, measured in the same run:
//!
//! - session token verification vs. a bare Ed25519 `verify_strict`;
//! - manifest segment verification (2 MB segment) vs. bare SHA-256;
//! - content key unwrap (HPKE open) vs. a bare X25519 Diffie-Hellman.
//!
//! Run: `cargo bench -p loaves-proto --bench trust`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{ContentKey, ContentKeyId, SessionId, SigningKeyPair};
use loaves_proto::keywrap::{SessionKeyPair, unwrap, wrap};
use loaves_proto::manifest::{Manifest, ManifestWriter, Scheme, SegmentInfo, verify_chunk};
use loaves_proto::token::{SessionToken, TokenVerifier};
use sha2::{Digest, Sha256};

const BUDGET: Duration = Duration::from_secs(2);

/// Runs `op` repeatedly for about `BUDGET` (bounded) and returns ops/second.
fn rate(mut op: impl FnMut()) -> f64 {
    for _ in 0..10 {
        op();
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < BUDGET && count < 50_000_000 {
        for _ in 0..16 {
            op();
        }
        count += 16;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn row(name: &str, ours: f64, baseline_name: &str, baseline: f64, unit: &str) {
    println!(
        "{name:<34} {ours:>12.0} {unit:<6} | {baseline_name:<26} {baseline:>12.0} {unit:<6} | ratio {:.2}",
        ours / baseline
    );
}

fn main() {
    let now = UnixSeconds(1_800_000_000);

    // Session tokens.
    let license_key = SigningKeyPair::from_seed(&[1; 32]);
    let claims = SessionToken {
        session_id: SessionId([2; 16]),
        account: "acct-123".into(),
        title: "title-1".into(),
        renditions: vec!["1080p".into(), "720p".into(), "audio".into()],
        peer_key: SigningKeyPair::from_seed(&[3; 32]).verifying_key(),
        region: "eu-west".into(),
        isp: "as3215".into(),
        not_before: now,
        expires_at: now.plus(900),
    };
    let token = claims.sign(&license_key);
    let verifier = TokenVerifier::new([license_key.verifying_key()].into_iter().collect());
    let tokens = rate(|| {
        black_box(verifier.verify(black_box(&token), now, "title-1").unwrap());
    });
    let raw_key = SigningKey::from_bytes(&[1; 32]);
    let message = vec![7u8; token.len()];
    let signature = raw_key.sign(&message);
    let raw_public = raw_key.verifying_key();
    let ed25519 = rate(|| {
        raw_public
            .verify_strict(black_box(&message), black_box(&signature))
            .unwrap();
    });
    println!("({} byte token)", token.len());
    row(
        "token verify",
        tokens,
        "ed25519 verify_strict",
        ed25519,
        "ops/s",
    );

    // Manifest segment verification.
    let segment: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let origin = SigningKeyPair::from_seed(&[4; 32]);
    let mut writer = ManifestWriter::new("title-1", "1080p", b"init", Scheme::Cenc, 0);
    let chunk = writer
        .append(
            &origin,
            &[SegmentInfo::describe(0, 4000, 0, &segment)],
            true,
            now,
        )
        .unwrap();
    let keyring = [origin.verifying_key()].into_iter().collect();
    let manifest = Manifest::from_chunk(verify_chunk(&keyring, &chunk).unwrap());
    let verifications = rate(|| {
        black_box(manifest.verify_segment(0, black_box(&segment)).unwrap());
    });
    let hashes = rate(|| {
        black_box(Sha256::digest(black_box(&segment)));
    });
    let mb = segment.len() as f64 / 1e6;
    row(
        "segment verify (2 MB)",
        verifications * mb,
        "sha256",
        hashes * mb,
        "MB/s",
    );
    let chunks = rate(|| {
        black_box(verify_chunk(&keyring, black_box(&chunk)).unwrap());
    });
    row(
        "manifest chunk verify",
        chunks,
        "ed25519 verify_strict",
        ed25519,
        "ops/s",
    );

    // Key unwrap.
    let client = SessionKeyPair::generate().unwrap();
    let session = SessionId([5; 16]);
    let wrapped = wrap(
        &client.public_key(),
        &session,
        ContentKeyId([6; 16]),
        &ContentKey::new([7; 16]),
    )
    .unwrap();
    let unwraps = rate(|| {
        black_box(unwrap(&client, &session, black_box(&wrapped)).unwrap());
    });
    let secret = x25519_dalek::StaticSecret::from([9u8; 32]);
    let peer = x25519_dalek::PublicKey::from(wrapped.encapsulated_key);
    let dh = rate(|| {
        black_box(secret.diffie_hellman(black_box(&peer)));
    });
    row(
        "content key unwrap (HPKE open)",
        unwraps,
        "x25519 diffie-hellman",
        dh,
        "ops/s",
    );
    let wraps = rate(|| {
        black_box(
            wrap(
                &client.public_key(),
                &session,
                ContentKeyId([6; 16]),
                &ContentKey::new([7; 16]),
            )
            .unwrap(),
        );
    });
    row(
        "content key wrap (HPKE seal)",
        wraps,
        "x25519 diffie-hellman",
        dh,
        "ops/s",
    );
}
