//! Arbitrary bytes offered as a session token are refused or accepted, never
//! a panic; an accepted token is always the one signed by the trusted key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::token::TokenVerifier;

fuzz_target!(|data: &[u8]| {
    let key = SigningKeyPair::from_seed(&[7; 32]);
    let keyring: Keyring = [key.verifying_key()].into_iter().collect();
    let verifier = TokenVerifier::new(keyring);
    if let Ok(token) = verifier.verify_any_title(data, UnixSeconds(1_800_000_000)) {
        // Only a token genuinely signed by `key` can get here: the fuzzer
        // cannot forge Ed25519, so this would reveal a verification bypass.
        panic!("accepted a token for {:?}", token.title);
    }
});
