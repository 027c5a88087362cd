#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HPKE key wrapping: a wrapped key opens only for its session, as its key id.

use loaves_proto::keys::{ContentKey, ContentKeyId, SessionId};
use loaves_proto::keywrap::{SessionKeyPair, WrapError, unwrap, wrap};

const SESSION: SessionId = SessionId([5; 16]);
const KID: ContentKeyId = ContentKeyId([0xab; 16]);

fn content_key() -> ContentKey {
    ContentKey::new(*b"0123456789abcdef")
}

#[test]
fn wrapped_key_opens_with_the_matching_private_key() {
    let client = SessionKeyPair::generate().unwrap();
    let wrapped = wrap(&client.public_key(), &SESSION, KID, &content_key()).unwrap();
    assert_eq!(unwrap(&client, &SESSION, &wrapped).unwrap(), content_key());
}

#[test]
fn wrapped_key_does_not_open_with_another_private_key() {
    let client = SessionKeyPair::generate().unwrap();
    let eavesdropper = SessionKeyPair::generate().unwrap();
    let wrapped = wrap(&client.public_key(), &SESSION, KID, &content_key()).unwrap();
    assert_eq!(
        unwrap(&eavesdropper, &SESSION, &wrapped),
        Err(WrapError::OpenFailed)
    );
}

#[test]
fn session_id_and_key_id_are_bound() {
    let client = SessionKeyPair::generate().unwrap();
    let wrapped = wrap(&client.public_key(), &SESSION, KID, &content_key()).unwrap();
    assert_eq!(
        unwrap(&client, &SessionId([6; 16]), &wrapped),
        Err(WrapError::OpenFailed)
    );
    let mut relabelled = wrapped.clone();
    relabelled.key_id = ContentKeyId([0xac; 16]);
    assert_eq!(
        unwrap(&client, &SESSION, &relabelled),
        Err(WrapError::OpenFailed)
    );
}

#[test]
fn tampered_ciphertext_or_encapsulation_does_not_open() {
    let client = SessionKeyPair::generate().unwrap();
    let wrapped = wrap(&client.public_key(), &SESSION, KID, &content_key()).unwrap();
    for index in 0..wrapped.ciphertext.len() {
        let mut bad = wrapped.clone();
        bad.ciphertext[index] ^= 0x80;
        assert_eq!(unwrap(&client, &SESSION, &bad), Err(WrapError::OpenFailed));
    }
    let mut bad = wrapped.clone();
    bad.encapsulated_key[0] ^= 0x01;
    assert_eq!(unwrap(&client, &SESSION, &bad), Err(WrapError::OpenFailed));
    let mut short = wrapped;
    short.ciphertext.truncate(10);
    assert_eq!(
        unwrap(&client, &SESSION, &short),
        Err(WrapError::OpenFailed)
    );
}

#[test]
fn two_sessions_get_different_ciphertexts_for_the_same_key() {
    let alice = SessionKeyPair::generate().unwrap();
    let bob = SessionKeyPair::generate().unwrap();
    let for_alice = wrap(&alice.public_key(), &SESSION, KID, &content_key()).unwrap();
    let for_bob = wrap(&bob.public_key(), &SessionId([6; 16]), KID, &content_key()).unwrap();
    assert_ne!(for_alice.ciphertext, for_bob.ciphertext);
    assert_ne!(for_alice.encapsulated_key, for_bob.encapsulated_key);
    // Even the same session wrapping twice never repeats itself.
    let again = wrap(&alice.public_key(), &SESSION, KID, &content_key()).unwrap();
    assert_ne!(for_alice.ciphertext, again.ciphertext);
    assert_eq!(
        unwrap(&bob, &SessionId([6; 16]), &for_bob).unwrap(),
        content_key()
    );
}

#[test]
fn low_order_and_malformed_public_keys_are_refused() {
    for point in loaves_testkit::fixtures::X25519_LOW_ORDER_POINTS {
        let point = hex::decode(point).unwrap();
        assert_eq!(
            wrap(&point, &SESSION, KID, &content_key()),
            Err(WrapError::LowOrderPublicKey),
            "{}",
            hex::encode(&point)
        );
    }
    assert_eq!(
        wrap(&[1; 31], &SESSION, KID, &content_key()),
        Err(WrapError::InvalidPublicKey)
    );
    assert_eq!(
        wrap(&[1; 33], &SESSION, KID, &content_key()),
        Err(WrapError::InvalidPublicKey)
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let client = SessionKeyPair::derive(&[1; 32]);
    let printed = format!("{client:?} {:?}", content_key());
    assert!(printed.contains("<redacted>"));
    assert!(!printed.contains("0123456789abcdef"));
    assert!(!printed.contains(&hex::encode(b"0123456789abcdef")));

    let signing = loaves_proto::keys::SigningKeyPair::from_seed(&[0x5a; 32]);
    let printed = format!("{signing:?}");
    assert!(!printed.contains(&hex::encode([0x5a; 32])), "{printed}");
    assert!(!printed.contains("90, 90, 90"), "{printed}");

    let pb_key = loaves_proto::pb::ContentKey {
        track_type: "hd".into(),
        key_period: 1,
        key_id: vec![1; 16],
        key: b"0123456789abcdef".to_vec(),
    };
    let printed = format!("{pb_key:?}");
    assert!(
        printed.contains("<redacted>") && !printed.contains("48, 49, 50"),
        "{printed}"
    );
}
