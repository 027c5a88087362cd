//! Arbitrary bytes offered as manifest chunks (with and without a valid
//! signature) never panic, and a manifest never verifies a segment whose
//! bytes do not hash to its entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loaves_proto::keys::{Keyring, SigningKeyPair};
use loaves_proto::manifest::{Manifest, verify_chunk};
use loaves_proto::signed::{Purpose, sign};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let key = SigningKeyPair::from_seed(&[3; 32]);
    let keyring: Keyring = [key.verifying_key()].into_iter().collect();
    // Unsigned garbage must be refused.
    let _ = verify_chunk(&keyring, data);
    // Garbage bodies signed by the trusted key reach the field checks.
    let signed = sign(&key, Purpose::ManifestChunk, data.to_vec()).encode_to_vec();
    if let Ok(chunk) = verify_chunk(&keyring, &signed) {
        let first = chunk.segments.first().map(|s| s.sequence);
        let mut manifest = Manifest::from_chunk(chunk.clone());
        let _ = manifest.append(chunk);
        if let Some(sequence) = first {
            if manifest.verify_segment(sequence, data).is_ok() {
                let entry = manifest.segment(sequence).map(|s| s.sha256);
                assert_eq!(entry, Some(loaves_proto::manifest::sha256(data)));
            }
        }
        manifest.forget_before(u64::MAX);
    }
});
