#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Known-answer test vectors for a second implementation (a JavaScript or
//! Kotlin SDK) to check itself against, byte for byte.
//!
//! The committed files under `testvectors/` are regenerated from fixed
//! inputs here and compared; any change of encoding fails this test. To
//! regenerate deliberately: `LOAVES_BLESS_VECTORS=1 cargo test -p loaves-proto --test vectors`.

use std::convert::Infallible;
use std::path::PathBuf;

use loaves_proto::UnixSeconds;
use loaves_proto::keys::{ContentKey, ContentKeyId, Keyring, SessionId, SigningKeyPair};
use loaves_proto::keywrap::{self, SessionKeyPair, WRAP_INFO_CONTEXT, WrappedContentKey};
use loaves_proto::manifest::{self, Manifest, ManifestWriter, Scheme, SegmentInfo};
use loaves_proto::pb;
use loaves_proto::signed::{Purpose, signing_message};
use loaves_proto::token::{SessionToken, TokenVerifier};
use prost::Message;
use serde_json::{Value, json};

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testvectors")
        .join(name)
}

/// Compares a regenerated vector with the committed file (or rewrites it).
fn check_vector(name: &str, generated: &Value) -> Value {
    let path = vector_path(name);
    let text = serde_json::to_string_pretty(generated).unwrap() + "\n";
    if std::env::var_os("LOAVES_BLESS_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (bless with LOAVES_BLESS_VECTORS=1)",
            path.display()
        )
    });
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(
        &committed, generated,
        "{name} no longer matches the committed vector"
    );
    committed
}

fn hex_field(value: &Value, field: &str) -> Vec<u8> {
    hex::decode(value[field].as_str().unwrap()).unwrap()
}

#[test]
fn session_token_vector() {
    let key = SigningKeyPair::from_seed(&[0x11; 32]);
    let peer = SigningKeyPair::from_seed(&[0x22; 32]);
    let claims = SessionToken {
        session_id: SessionId(*b"session-0000001\0"),
        account: "acct-7f3a".into(),
        title: "sintel".into(),
        renditions: vec!["1080p".into(), "720p".into(), "audio-en".into()],
        peer_key: peer.verifying_key(),
        region: "eu-west".into(),
        isp: "as12322".into(),
        not_before: UnixSeconds(1_767_225_600),
        expires_at: UnixSeconds(1_767_226_500),
    };
    let body = claims.to_body().encode_to_vec();
    let token = claims.sign(&key);
    let envelope = pb::Signed::decode(token.as_slice()).unwrap();
    let generated = json!({
        "description": "Session token: Signed{body=SessionTokenBody, signer_key_id, signature}; Ed25519 over context || body.",
        "signer_seed": hex::encode([0x11; 32]),
        "signer_public_key": hex::encode(key.verifying_key().as_bytes()),
        "signer_key_id": key.key_id().to_string(),
        "context": hex::encode(Purpose::SessionToken.context()),
        "claims": {
            "session_id": claims.session_id.to_string(),
            "account": claims.account,
            "title": claims.title,
            "renditions": claims.renditions,
            "peer_public_key": hex::encode(claims.peer_key.as_bytes()),
            "region": claims.region,
            "isp": claims.isp,
            "not_before": claims.not_before.0,
            "expires_at": claims.expires_at.0,
        },
        "body": hex::encode(&body),
        "signing_message": hex::encode(signing_message(Purpose::SessionToken, &body)),
        "signature": hex::encode(&envelope.signature),
        "token": hex::encode(&token),
        "verify_at": 1_767_226_000u64,
    });
    let committed = check_vector("session_token.json", &generated);

    // The committed bytes verify with nothing but the public key.
    let public =
        loaves_proto::keys::verifying_key_from_slice(&hex_field(&committed, "signer_public_key"))
            .unwrap();
    let verifier = TokenVerifier::new(Keyring::from_iter([public]));
    let verified = verifier
        .verify(
            &hex_field(&committed, "token"),
            UnixSeconds(1_767_226_000),
            "sintel",
        )
        .unwrap();
    assert_eq!(verified, claims);
}

fn vector_segment(sequence: u64) -> Vec<u8> {
    format!("segment {sequence} ciphertext").into_bytes()
}

#[test]
fn manifest_vector() {
    let key = SigningKeyPair::from_seed(&[0x33; 32]);
    let init = b"init segment of sintel/720p".to_vec();
    let mut writer = ManifestWriter::new("sintel", "720p", &init, Scheme::Cbcs, 0);
    let describe =
        |seq: u64| SegmentInfo::describe(seq, 4000, (seq / 2) as u32, &vector_segment(seq));
    let chunks = [
        writer
            .append(
                &key,
                &[describe(0), describe(1)],
                false,
                UnixSeconds(1_767_225_600),
            )
            .unwrap(),
        writer
            .append(&key, &[describe(2)], true, UnixSeconds(1_767_225_604))
            .unwrap(),
    ];
    let body_hashes: Vec<String> = chunks
        .iter()
        .map(|c| {
            hex::encode(manifest::sha256(
                &pb::Signed::decode(c.as_slice()).unwrap().body,
            ))
        })
        .collect();
    let generated = json!({
        "description": "Live manifest of two signed chunks (Signed{body=ManifestChunkBody}); chunk 1 names SHA-256 of chunk 0's body.",
        "signer_seed": hex::encode([0x33; 32]),
        "signer_public_key": hex::encode(key.verifying_key().as_bytes()),
        "context": hex::encode(Purpose::ManifestChunk.context()),
        "init_segment": hex::encode(&init),
        "segments": (0..3).map(|seq| json!({
            "sequence": seq,
            "bytes": hex::encode(vector_segment(seq)),
            "sha256": hex::encode(manifest::sha256(&vector_segment(seq))),
        })).collect::<Vec<_>>(),
        "chunks": chunks.iter().map(hex::encode).collect::<Vec<_>>(),
        "chunk_body_sha256": body_hashes,
    });
    let committed = check_vector("manifest.json", &generated);

    let public =
        loaves_proto::keys::verifying_key_from_slice(&hex_field(&committed, "signer_public_key"))
            .unwrap();
    let encoded: Vec<Vec<u8>> = committed["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| hex::decode(c.as_str().unwrap()).unwrap())
        .collect();
    let manifest = Manifest::from_encoded_chunks(
        &Keyring::from_iter([public]),
        encoded.iter().map(Vec::as_slice),
    )
    .unwrap();
    manifest
        .verify_init(&hex_field(&committed, "init_segment"))
        .unwrap();
    for segment in committed["segments"].as_array().unwrap() {
        manifest
            .verify_segment(
                segment["sequence"].as_u64().unwrap(),
                &hex_field(segment, "bytes"),
            )
            .unwrap();
    }
}

/// An "RNG" that hands out fixed bytes: HPKE's ephemeral key then comes from
/// a published `ikmE`, so the sealing side is reproducible too.
struct FixedBytes(Vec<u8>);

impl hpke::rand_core::TryRng for FixedBytes {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unreachable!("HPKE only asks for bytes")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unreachable!("HPKE only asks for bytes")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.0.len(), "vector RNG exhausted");
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

impl hpke::rand_core::TryCryptoRng for FixedBytes {}

#[test]
fn key_wrap_vector() {
    let recipient_ikm = [0x44; 32];
    let ephemeral_ikm = [0x55; 32];
    let recipient = SessionKeyPair::derive(&recipient_ikm);
    let session_id = SessionId(*b"session-0000001\0");
    let key_id = ContentKeyId(*b"kid-sintel-hd-01");
    let content_key = ContentKey::new(*b"0123456789ABCDEF");
    let wrapped = keywrap::wrap_with_rng(
        &recipient.public_key(),
        &session_id,
        key_id,
        &content_key,
        &mut FixedBytes(ephemeral_ikm.to_vec()),
    )
    .unwrap();
    let mut info = WRAP_INFO_CONTEXT.to_vec();
    info.extend_from_slice(&session_id.0);
    let generated = json!({
        "description": "HPKE base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM (kem 0x0020, kdf 0x0001, aead 0x0002). Recipient and ephemeral keys from DeriveKeyPair(ikm).",
        "recipient_ikm": hex::encode(recipient_ikm),
        "recipient_public_key": hex::encode(recipient.public_key()),
        "ephemeral_ikm": hex::encode(ephemeral_ikm),
        "session_id": session_id.to_string(),
        "key_id": key_id.to_string(),
        "content_key": hex::encode(content_key.as_bytes()),
        "info": hex::encode(&info),
        "aad": hex::encode(key_id.0),
        "encapsulated_key": hex::encode(wrapped.encapsulated_key),
        "ciphertext": hex::encode(&wrapped.ciphertext),
    });
    let committed = check_vector("key_wrap.json", &generated);

    let opened = keywrap::unwrap(
        &SessionKeyPair::derive(&hex_field(&committed, "recipient_ikm")),
        &session_id,
        &WrappedContentKey {
            key_id,
            encapsulated_key: hex_field(&committed, "encapsulated_key")
                .try_into()
                .unwrap(),
            ciphertext: hex_field(&committed, "ciphertext"),
        },
    )
    .unwrap();
    assert_eq!(opened.as_bytes(), &hex_field(&committed, "content_key")[..]);
}
