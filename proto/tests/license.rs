#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signed licenses: verified, bound to one session, keys open only there.

use loaves_proto::UnixSeconds;
use loaves_proto::keys::{ContentKey, ContentKeyId, Keyring, SessionId, SigningKeyPair};
use loaves_proto::keywrap::{SessionKeyPair, wrap};
use loaves_proto::license::{self, LicenseError};
use loaves_proto::pb;
use loaves_proto::signed::{Purpose, SignatureError};

const SESSION: SessionId = SessionId([9; 16]);

fn server_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[1; 32])
}

fn keyring() -> Keyring {
    [server_key().verifying_key()].into_iter().collect()
}

fn license_for(client: &SessionKeyPair) -> pb::Signed {
    let keys = [
        ("sd", 0u32, [1u8; 16]),
        ("hd", 0, [2; 16]),
        ("audio", 1, [3; 16]),
    ]
    .into_iter()
    .map(|(track, period, key)| {
        let kid = ContentKeyId([period as u8 + track.len() as u8; 16]);
        wrap(&client.public_key(), &SESSION, kid, &ContentKey::new(key))
            .unwrap()
            .to_pb(track, period)
    })
    .collect();
    license::sign(
        &server_key(),
        &pb::LicenseBody {
            session_id: SESSION.0.to_vec(),
            title: "t".into(),
            policy: Some(pb::LicensePolicy {
                issued_at: 100,
                expires_at: 700,
                renewal_interval_s: 60,
                renewal_grace_s: 30,
                renditions: vec!["sd".into()],
                can_persist: false,
            }),
            keys,
            session_token: vec![1, 2, 3],
            renewal_sequence: 0,
        },
    )
}

#[test]
fn license_verifies_and_its_keys_open_for_the_session() {
    let client = SessionKeyPair::generate().unwrap();
    let verified = license::verify(
        &keyring(),
        &license_for(&client),
        &SESSION,
        UnixSeconds(200),
    )
    .unwrap();
    let keys = verified.open_keys(&client).unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[1].track_type, "hd");
    assert_eq!(keys[1].key, ContentKey::new([2; 16]));
    assert!(!verified.policy.can_persist);
}

#[test]
fn license_for_another_session_or_expired_or_forged_is_refused() {
    let client = SessionKeyPair::generate().unwrap();
    let signed = license_for(&client);
    assert_eq!(
        license::verify(&keyring(), &signed, &SessionId([8; 16]), UnixSeconds(200)),
        Err(LicenseError::OtherSession)
    );
    assert_eq!(
        license::verify(&keyring(), &signed, &SESSION, UnixSeconds(701)),
        Err(LicenseError::Expired(UnixSeconds(700)))
    );
    let mut forged = signed.clone();
    forged.body[5] ^= 1;
    assert!(matches!(
        license::verify(&keyring(), &forged, &SESSION, UnixSeconds(200)),
        Err(LicenseError::Signature(SignatureError::BadSignature) | LicenseError::Malformed(_))
    ));
    // A session token signed by the same key is not a license.
    let token_envelope =
        loaves_proto::signed::sign(&server_key(), Purpose::SessionToken, signed.body);
    assert_eq!(
        license::verify(&keyring(), &token_envelope, &SESSION, UnixSeconds(200)),
        Err(LicenseError::Signature(SignatureError::BadSignature))
    );
}

#[test]
fn keys_of_a_license_do_not_open_for_another_client() {
    let client = SessionKeyPair::generate().unwrap();
    let thief = SessionKeyPair::generate().unwrap();
    let verified = license::verify(
        &keyring(),
        &license_for(&client),
        &SESSION,
        UnixSeconds(200),
    )
    .unwrap();
    assert!(matches!(
        verified.open_keys(&thief),
        Err(LicenseError::Key { .. })
    ));
}
