#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Session tokens: every way a token can be wrong is refused, each with its
//! own error.

use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::signed::SignatureError;
use loaves_proto::token::{MAX_TOKEN_LEN, SessionToken, TokenError, TokenVerifier};
use prost::Message;

const NOW: UnixSeconds = UnixSeconds(1_800_000_000);

fn license_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[7; 32])
}

fn claims() -> SessionToken {
    SessionToken {
        session_id: SessionId([1; 16]),
        account: "acct-42".into(),
        title: "big-buck".into(),
        renditions: vec!["720p".into(), "audio".into()],
        peer_key: SigningKeyPair::from_seed(&[9; 32]).verifying_key(),
        region: "eu-west".into(),
        isp: "as3215".into(),
        not_before: NOW,
        expires_at: NOW.plus(600),
    }
}

fn verifier() -> TokenVerifier {
    TokenVerifier::new([license_key().verifying_key()].into_iter().collect())
        .with_max_clock_skew(30)
}

#[test]
fn valid_token_verifies_with_all_claims() {
    let token = claims().sign(&license_key());
    let verified = verifier().verify(&token, NOW.plus(10), "big-buck").unwrap();
    assert_eq!(verified, claims());
    assert!(verified.allows_rendition("720p"));
    assert!(!verified.allows_rendition("1080p"));
}

#[test]
fn skew_is_tolerated_at_both_ends() {
    let token = claims().sign(&license_key());
    verifier()
        .verify(&token, UnixSeconds(NOW.0 - 30), "big-buck")
        .unwrap();
    verifier()
        .verify(&token, NOW.plus(600 + 30), "big-buck")
        .unwrap();
}

#[test]
fn expired_token_is_refused() {
    let token = claims().sign(&license_key());
    let err = verifier()
        .verify(&token, NOW.plus(631), "big-buck")
        .unwrap_err();
    assert!(matches!(err, TokenError::Expired { .. }), "{err:?}");
    assert_eq!(err.reason(), "expired");
}

#[test]
fn not_yet_valid_token_is_refused() {
    let token = claims().sign(&license_key());
    let err = verifier()
        .verify(&token, UnixSeconds(NOW.0 - 31), "big-buck")
        .unwrap_err();
    assert!(matches!(err, TokenError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn token_for_another_title_is_refused() {
    let token = claims().sign(&license_key());
    let err = verifier().verify(&token, NOW, "other-title").unwrap_err();
    assert_eq!(
        err,
        TokenError::WrongTitle {
            expected: "other-title".into(),
            actual: "big-buck".into()
        }
    );
}

#[test]
fn token_signed_by_unknown_key_is_refused() {
    let stranger = SigningKeyPair::from_seed(&[8; 32]);
    let token = claims().sign(&stranger);
    let err = verifier().verify(&token, NOW, "big-buck").unwrap_err();
    assert_eq!(
        err,
        TokenError::Signature(SignatureError::UnknownSigner(stranger.key_id()))
    );
    assert_eq!(err.reason(), "unknown_signer");
}

#[test]
fn forged_token_claiming_the_license_key_is_refused() {
    // An attacker signs its own claims and names the license server's key id.
    let attacker = SigningKeyPair::from_seed(&[66; 32]);
    let mut envelope =
        loaves_proto::pb::Signed::decode(claims().sign(&attacker).as_slice()).unwrap();
    envelope.signer_key_id = license_key().key_id().0.to_vec();
    let err = verifier()
        .verify(&envelope.encode_to_vec(), NOW, "big-buck")
        .unwrap_err();
    assert_eq!(err, TokenError::Signature(SignatureError::BadSignature));
}

#[test]
fn edited_claims_break_the_signature() {
    let mut envelope =
        loaves_proto::pb::Signed::decode(claims().sign(&license_key()).as_slice()).unwrap();
    let mut body = loaves_proto::pb::SessionTokenBody::decode(envelope.body.as_slice()).unwrap();
    body.expires_at += 86_400;
    envelope.body = body.encode_to_vec();
    let err = verifier()
        .verify(&envelope.encode_to_vec(), NOW, "big-buck")
        .unwrap_err();
    assert_eq!(err, TokenError::Signature(SignatureError::BadSignature));
}

#[test]
fn truncated_token_is_refused_at_every_length() {
    let token = claims().sign(&license_key());
    for len in 0..token.len() {
        let err = verifier()
            .verify(&token[..len], NOW, "big-buck")
            .unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Malformed(_)
                    | TokenError::Signature(
                        SignatureError::MalformedKeyId
                            | SignatureError::MalformedSignature
                            | SignatureError::BadSignature
                    )
            ),
            "length {len}: {err:?}"
        );
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    let token = claims().sign(&license_key());
    for bit in 0..token.len() * 8 {
        let mut flipped = token.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            verifier().verify(&flipped, NOW, "big-buck").is_err(),
            "bit {bit} flipped was accepted"
        );
    }
}

#[test]
fn oversized_token_is_refused_before_decoding() {
    let token = vec![0u8; MAX_TOKEN_LEN + 1];
    let err = verifier().verify(&token, NOW, "big-buck").unwrap_err();
    assert_eq!(
        err,
        TokenError::TooLarge {
            len: MAX_TOKEN_LEN + 1,
            max: MAX_TOKEN_LEN
        }
    );
}

#[test]
fn signature_for_another_purpose_does_not_verify_as_token() {
    // A validly signed manifest-chunk envelope carrying token bytes.
    let body = claims().to_body().encode_to_vec();
    let envelope = loaves_proto::signed::sign(
        &license_key(),
        loaves_proto::signed::Purpose::ManifestChunk,
        body,
    );
    let err = verifier()
        .verify(&envelope.encode_to_vec(), NOW, "big-buck")
        .unwrap_err();
    assert_eq!(err, TokenError::Signature(SignatureError::BadSignature));
}

#[test]
fn invalid_fields_are_refused_even_when_signed() {
    let key = license_key();
    let sign_body = |body: loaves_proto::pb::SessionTokenBody| {
        loaves_proto::signed::sign(
            &key,
            loaves_proto::signed::Purpose::SessionToken,
            body.encode_to_vec(),
        )
        .encode_to_vec()
    };
    type Edit = fn(&mut loaves_proto::pb::SessionTokenBody);
    let cases: [(&str, Edit); 4] = [
        ("session_id", |b| b.session_id.truncate(3)),
        ("peer_public_key", |b| b.peer_public_key = vec![1; 31]),
        ("title", |b| b.title.clear()),
        ("expires_at", |b| b.expires_at = b.not_before),
    ];
    for (field, edit) in cases {
        let mut body = claims().to_body();
        edit(&mut body);
        let err = verifier()
            .verify(&sign_body(body), NOW, "big-buck")
            .unwrap_err();
        assert_eq!(err, TokenError::InvalidField(field));
    }
}

#[test]
fn empty_keyring_trusts_nothing() {
    let token = claims().sign(&license_key());
    let err = TokenVerifier::new(Keyring::new())
        .verify(&token, NOW, "big-buck")
        .unwrap_err();
    assert!(matches!(
        err,
        TokenError::Signature(SignatureError::UnknownSigner(_))
    ));
}
