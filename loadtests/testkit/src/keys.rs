//! Fixed signing keys: the same on every run, so that a failing run can be
//! repeated byte for byte.

use loaves_proto::keys::SigningKeyPair;

/// The Ed25519 key whose seed is 32 times `byte`.
pub fn fixed(byte: u8) -> SigningKeyPair {
    SigningKeyPair::from_seed(&[byte; 32])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_byte_is_the_same_key_and_others_differ() {
        let a = super::fixed(1).verifying_key();
        assert_eq!(a, super::fixed(1).verifying_key());
        assert_ne!(a, super::fixed(2).verifying_key());
    }
}
