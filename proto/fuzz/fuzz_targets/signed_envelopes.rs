//! Every signed object a component accepts from the network (entitlements,
//! session tokens, seed credentials, licenses, renewal requests) and the
//! license server's request messages: arbitrary bytes, as the wire bytes
//! and as a body *validly signed* by the trusted key, are refused or
//! accepted, never a panic. Nothing unsigned, signed by another key, signed
//! for another purpose or altered after signing is ever accepted; what is
//! accepted round-trips (signing the verified claims again verifies to the
//! same claims), and a license's genuinely wrapped key opens to itself.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use loaves_proto::entitlement::EntitlementVerifier;
use loaves_proto::keys::{
    ContentKey, ContentKeyId, Keyring, SessionId, SigningKeyPair, verifying_key_from_slice,
};
use loaves_proto::keywrap::{self, SessionKeyPair};
use loaves_proto::signed::{self, Purpose};
use loaves_proto::token::TokenVerifier;
use loaves_proto::{UnixSeconds, license, pb};
use loaves_wire::peerwire::CredentialVerifier;
use prost::Message;

struct Keys {
    trusted: SigningKeyPair,
    other: SigningKeyPair,
    keyring: Keyring,
    session: SessionKeyPair,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let trusted = SigningKeyPair::from_seed(&[5; 32]);
    Keys {
        keyring: [trusted.verifying_key()].into_iter().collect(),
        trusted,
        other: SigningKeyPair::from_seed(&[6; 32]),
        session: SessionKeyPair::derive(&[9; 32]),
    }
});

const PURPOSES: [Purpose; 5] = [
    Purpose::Entitlement,
    Purpose::SessionToken,
    Purpose::SeedCredential,
    Purpose::License,
    Purpose::RenewRequest,
];

/// Whether each verifier accepts `bytes` as its object, at `now`.
fn accepted(keys: &Keys, bytes: &[u8], now: UnixSeconds) -> [bool; 4] {
    let entitlement = EntitlementVerifier::new(keys.keyring.clone()).verify(bytes, now);
    let token = TokenVerifier::new(keys.keyring.clone()).verify_any_title(bytes, now);
    let seed = CredentialVerifier::new(keys.keyring.clone(), 60).verify_seed(bytes, now);
    let license = pb::Signed::decode(bytes).ok().and_then(|envelope| {
        let body = pb::LicenseBody::decode(envelope.body.as_slice()).ok()?;
        let session = SessionId::from_slice(&body.session_id)?;
        let verified = license::verify(&keys.keyring, &envelope, &session, now).ok()?;
        // Garbage wrapped keys are refused, never a panic.
        let _ = verified.open_keys(&keys.session);
        Some(verified)
    });
    [
        entitlement.is_ok(),
        token.is_ok(),
        seed.is_ok(),
        license.is_some(),
    ]
}

/// The object each purpose is (index into [`accepted`]'s answer).
fn object(purpose: Purpose) -> Option<usize> {
    match purpose {
        Purpose::Entitlement => Some(0),
        Purpose::SessionToken => Some(1),
        Purpose::SeedCredential => Some(2),
        Purpose::License => Some(3),
        _ => None,
    }
}

/// What the license server checks of its request messages before it
/// touches its store (`license-server`'s precheck decodes, then `acquire` /
/// `renew` / `release`): all refused for unsigned input, never a panic.
fn license_requests(keys: &Keys, data: &[u8], now: UnixSeconds) {
    if let Ok(request) = pb::AcquireLicenseRequest::decode(data) {
        let entitlements = EntitlementVerifier::new(keys.keyring.clone());
        assert!(entitlements.verify(&request.entitlement, now).is_err());
        let _ = verifying_key_from_slice(&request.peer_public_key).map(|k| k.is_weak());
        // A client key of the wrong length or of low order is an error.
        let wrapped = keywrap::wrap(
            &request.client_hpke_public_key,
            &SessionId([0; 16]),
            ContentKeyId([0; 16]),
            &ContentKey::new([0; 16]),
        );
        if request.client_hpke_public_key.len() != 32 {
            assert!(wrapped.is_err());
        }
    }
    let peer = keys.other.verifying_key();
    for request in [
        pb::RenewLicenseRequest::decode(data).map(|r| r.request),
        pb::ReleaseSessionRequest::decode(data).map(|r| r.request),
    ]
    .into_iter()
    .flatten()
    .flatten()
    {
        let _ = pb::RenewRequestBody::decode(request.body.as_slice())
            .map(|body| SessionId::from_slice(&body.session_id));
        // Not signed by the session's peer key: refused.
        assert!(signed::verify_with_key(&peer, Purpose::RenewRequest, &request).is_err());
    }
    let _ = pb::GetContentKeysRequest::decode(data);
}

/// The claims `bytes` (signed for `purpose` by the trusted key) verify to,
/// signed again from their typed form, verify to the same claims.
fn round_trip(keys: &Keys, purpose: Purpose, bytes: &[u8], now: UnixSeconds) {
    match purpose {
        Purpose::Entitlement => {
            let verifier = EntitlementVerifier::new(keys.keyring.clone());
            if let Ok(claims) = verifier.verify(bytes, now) {
                let again = verifier.verify(&claims.sign(&keys.trusted), now).ok();
                assert_eq!(again.as_ref(), Some(&claims));
            }
        }
        Purpose::SessionToken => {
            let verifier = TokenVerifier::new(keys.keyring.clone());
            if let Ok(claims) = verifier.verify_any_title(bytes, now) {
                assert!(claims.not_before < claims.expires_at && !claims.title.is_empty());
                let again = verifier
                    .verify(&claims.sign(&keys.trusted), now, &claims.title)
                    .ok();
                assert_eq!(again.as_ref(), Some(&claims));
            }
        }
        Purpose::SeedCredential => {
            let verifier = CredentialVerifier::new(keys.keyring.clone(), 60);
            if let Ok(seed) = verifier.verify_seed(bytes, now) {
                assert!(seed.not_before < seed.expires_at && !seed.titles.is_empty());
            }
        }
        Purpose::License => {
            let Ok(envelope) = pb::Signed::decode(bytes) else {
                return;
            };
            let Ok(mut body) = pb::LicenseBody::decode(envelope.body.as_slice()) else {
                return;
            };
            let Some(session) = SessionId::from_slice(&body.session_id) else {
                return;
            };
            // A genuinely wrapped key among the garbage opens to itself.
            let key = ContentKey::new([0x42; 16]);
            let kid = ContentKeyId([0x17; 16]);
            let Ok(wrapped) = keywrap::wrap(&keys.session.public_key(), &session, kid, &key) else {
                panic!("wrapping to a valid key failed");
            };
            body.keys = vec![wrapped.to_pb("sd", 3)];
            let envelope = license::sign(&keys.trusted, &body);
            if let Ok(verified) = license::verify(&keys.keyring, &envelope, &session, now) {
                let opened = verified
                    .open_keys(&keys.session)
                    .expect("a genuine key opens");
                assert!(opened.len() == 1 && opened[0].key == key && opened[0].key_id == kid);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = &*KEYS;
    // The first byte picks the purpose and the time.
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let purpose = PURPOSES[usize::from(selector) % PURPOSES.len()];
    let now = UnixSeconds(if selector & 0x80 == 0 {
        1_800_000_000
    } else {
        u64::from(selector) << 24
    });

    // Unsigned bytes: nothing is accepted.
    assert_eq!(
        accepted(keys, data, now),
        [false; 4],
        "unsigned bytes accepted"
    );
    license_requests(keys, data, now);

    // A validly signed body reaches the field checks of its object only.
    let envelope = signed::sign(&keys.trusted, purpose, body.to_vec());
    let bytes = envelope.encode_to_vec();
    let (signer, opened) =
        signed::verify(&keys.keyring, purpose, &envelope).expect("a fresh signature verifies");
    assert!(signer == keys.trusted.key_id() && opened == body);
    let verdicts = accepted(keys, &bytes, now);
    for (i, accepted) in verdicts.into_iter().enumerate() {
        assert!(
            !accepted || object(purpose) == Some(i),
            "signed for {purpose:?}, accepted as object {i}"
        );
    }
    round_trip(keys, purpose, &bytes, now);

    // The same body signed by an untrusted key, or altered after signing.
    let foreign = signed::sign(&keys.other, purpose, body.to_vec()).encode_to_vec();
    assert_eq!(
        accepted(keys, &foreign, now),
        [false; 4],
        "foreign signer accepted"
    );
    if !body.is_empty() {
        let mut altered = envelope.clone();
        let at = usize::from(selector) % body.len();
        altered.body[at] ^= 1 << (selector % 8);
        assert!(signed::verify(&keys.keyring, purpose, &altered).is_err());
        assert_eq!(
            accepted(keys, &altered.encode_to_vec(), now),
            [false; 4],
            "altered body accepted"
        );
    }
});
