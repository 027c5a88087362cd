//! Key types: Ed25519 signing key pairs and their ids, trusted keyrings,
//! session ids and CENC content keys.
//!
//! Every type that holds secret material zeroizes it on drop and prints
//! `<redacted>` (or only public parts) in `Debug`.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Errors about keys and randomness.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("the system random source failed: {0}")]
    Random(getrandom::Error),
    /// A PEM / PKCS#8 / SPKI document could not be read or written.
    #[error("invalid key encoding: {0}")]
    Encoding(String),
    /// A public key had the wrong length or is not a valid Ed25519 point.
    #[error("invalid Ed25519 public key")]
    InvalidPublicKey,
}

/// Fills an array from the operating system's random source.
pub fn random_array<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(KeyError::Random)?;
    Ok(out)
}

/// Short identifier of an Ed25519 public key: the first 8 bytes of SHA-256
/// over its 32 bytes. Carried in signed envelopes so verifiers pick the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }

    /// Parses the 8-byte wire form.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 signing key with its key id. The secret is zeroized on drop
/// and never shown by `Debug`.
#[derive(Clone)]
pub struct SigningKeyPair {
    key: SigningKey,
    key_id: KeyId,
}

impl SigningKeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let seed = Zeroizing::new(random_array::<32>()?);
        Ok(Self::from_seed(&seed))
    }

    /// The key pair for a 32-byte secret seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = KeyId::of(&key.verifying_key());
        Self { key, key_id }
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Signs raw bytes. Crate-private: callers sign through [`crate::signed`],
    /// which adds the domain separation.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// PKCS#8 v1 PEM ("BEGIN PRIVATE KEY", RFC 5208: the private key alone),
    /// readable by OpenSSL 3 and pyca/cryptography, which refuse the v2
    /// form (RFC 5958, public key included) that the signing key's own
    /// encoder writes.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encoding(e.to_string()))
    }

    /// Reads a PKCS#8 PEM private key, v1 or v2 (a v2 key's public half must
    /// match its private half).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Encoding(e.to_string()))?;
        let key_id = KeyId::of(&key.verifying_key());
        Ok(Self { key, key_id })
    }

    /// The secret seed, for the few callers that must derive from it (e.g. a
    /// TLS certificate for the same identity).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Parses a 32-byte Ed25519 public key.
pub fn verifying_key_from_slice(bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let array: &[u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidPublicKey)?;
    VerifyingKey::from_bytes(array).map_err(|_| KeyError::InvalidPublicKey)
}

/// SPKI PEM ("BEGIN PUBLIC KEY") of a public key.
pub fn public_key_to_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encoding(e.to_string()))
}

/// Reads an SPKI PEM public key.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Encoding(e.to_string()))
}

/// The public keys a verifier trusts, by key id.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: HashMap<KeyId, VerifyingKey>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts one more key; returns its id.
    pub fn insert(&mut self, key: VerifyingKey) -> KeyId {
        let id = KeyId::of(&key);
        self.keys.insert(id, key);
        id
    }

    /// The trusted key with this id, if any.
    pub fn get(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.get(id)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromIterator<VerifyingKey> for Keyring {
    fn from_iter<I: IntoIterator<Item = VerifyingKey>>(iter: I) -> Self {
        let mut ring = Self::new();
        for key in iter {
            ring.insert(key);
        }
        ring
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// A random id from the operating system's random source.
            pub fn random() -> Result<Self, KeyError> {
                random_array().map(Self)
            }

            /// Parses the wire form, which must be exactly the right length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

hex_id!(
    /// 16 random bytes naming one playback session.
    SessionId,
    16
);
hex_id!(
    /// A 16-byte CENC key id (KID), public: it travels in init segments.
    ContentKeyId,
    16
);

/// A clear 16-byte AES-128 content key. Zeroized on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey([u8; 16]);

impl ContentKey {
    /// Wraps 16 key bytes.
    pub fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        random_array().map(Self)
    }

    /// Parses exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The key bytes. Handle with care: never log them.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}
