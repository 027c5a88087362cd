//! Sealing content keys at rest with AES-256-GCM under the key-encryption
//! key (KEK).
//!
//! Sealed form: `version (1) || nonce (12) || ciphertext+tag (16+16)`. The
//! associated data binds the sealed key to its row — title, track type, key
//! period and key id — so a database writer cannot swap two sealed keys
//! between rows without the swap being detected at unseal time.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use loaves_proto::keys::{ContentKey, ContentKeyId, random_array};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const AAD_CONTEXT: &[u8] = b"loaves/v1/sealed-content-key\0";
const CHECK_CONTEXT: &[u8] = b"loaves/v1/kek-check\0";
const CHECK_PLAINTEXT: &[u8] = b"the key-encryption key of this store";

/// Why a KEK could not be loaded or a sealed value not opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The KEK is not 32 bytes (or 64 hex digits).
    #[error("the key-encryption key must be 32 bytes or 64 hex digits")]
    BadKek,
    /// The KEK file could not be read or written.
    #[error("key-encryption key file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The KEK file is readable by others, empty or unreadable.
    #[error("key-encryption key: {0}")]
    Secret(#[from] loaves_service::secret::SecretError),
    /// The random source failed.
    #[error("random source: {0}")]
    Random(#[from] loaves_proto::keys::KeyError),
    /// A sealed value did not open: wrong KEK, or the row was tampered with.
    #[error("sealed value does not open under this key-encryption key")]
    Open,
}

/// The key-encryption key. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct Kek {
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// A KEK from 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| SealError::BadKek)?;
        Ok(Self { cipher })
    }

    /// A KEK from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| SealError::BadKek)?);
        Self::from_bytes(&bytes)
    }

    /// A KEK from a file holding 32 raw bytes or 64 hex digits; the file
    /// must not be readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let bytes = loaves_service::secret::read_secret_bytes(path)?;
        if bytes.len() == 32 {
            return Self::from_bytes(&bytes);
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| SealError::BadKek)?;
        Self::from_hex(text)
    }

    /// Reads the KEK file, first writing a fresh random one (mode 0600, as
    /// hex) if it does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, SealError> {
        if !path.exists() {
            let bytes = Zeroizing::new(random_array::<32>()?);
            let hex = Zeroizing::new(hex::encode(*bytes));
            crate::files::write_secret_file(path, hex.as_bytes()).map_err(|source| {
                SealError::Io {
                    path: path.to_owned(),
                    source,
                }
            })?;
        }
        Self::from_file(path)
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes = random_array::<NONCE_LEN>()?;
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Open)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Open)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }

    /// Seals a content key for its row.
    pub fn seal_key(
        &self,
        row: &KeyRow<'_>,
        key_id: &ContentKeyId,
        key: &ContentKey,
    ) -> Result<Vec<u8>, SealError> {
        self.seal(key.as_bytes(), &row.aad(key_id))
    }

    /// Opens a sealed content key of a row.
    pub fn open_key(
        &self,
        row: &KeyRow<'_>,
        key_id: &ContentKeyId,
        sealed: &[u8],
    ) -> Result<ContentKey, SealError> {
        let plaintext = self.open(sealed, &row.aad(key_id))?;
        ContentKey::from_slice(&plaintext).ok_or(SealError::Open)
    }

    /// A value stored beside the keys that proves which KEK sealed them.
    pub fn check_value(&self) -> Result<Vec<u8>, SealError> {
        self.seal(CHECK_PLAINTEXT, CHECK_CONTEXT)
    }

    /// Whether `check` was made by this KEK.
    pub fn verify_check_value(&self, check: &[u8]) -> bool {
        self.open(check, CHECK_CONTEXT)
            .is_ok_and(|plain| plain.as_slice() == CHECK_PLAINTEXT)
    }
}

/// The identity of one content-key row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRow<'a> {
    /// Title id.
    pub title: &'a str,
    /// Track type.
    pub track_type: &'a str,
    /// Key period.
    pub key_period: u32,
}

impl KeyRow<'_> {
    fn aad(&self, key_id: &ContentKeyId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + 64);
        aad.extend_from_slice(AAD_CONTEXT);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        for part in [self.title.as_bytes(), self.track_type.as_bytes()] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(&self.key_period.to_be_bytes());
        aad.extend_from_slice(&key_id.0);
        aad
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_row_and_kek() {
        let kek = Kek::from_bytes(&[1; 32]).unwrap();
        let other = Kek::from_hex(&hex::encode([2u8; 32])).unwrap();
        let row = KeyRow {
            title: "t",
            track_type: "hd",
            key_period: 3,
        };
        let kid = ContentKeyId([9; 16]);
        let key = ContentKey::new([5; 16]);
        let sealed = kek.seal_key(&row, &kid, &key).unwrap();
        assert_eq!(sealed.len(), 1 + 12 + 16 + 16);
        assert_eq!(kek.open_key(&row, &kid, &sealed).unwrap(), key);
        assert!(other.open_key(&row, &kid, &sealed).is_err());
        let moved = KeyRow {
            key_period: 4,
            ..row
        };
        assert!(kek.open_key(&moved, &kid, &sealed).is_err());
        assert!(kek.open_key(&row, &ContentKeyId([8; 16]), &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(kek.open_key(&row, &kid, &flipped).is_err());
        assert!(kek.verify_check_value(&kek.check_value().unwrap()));
        assert!(!other.verify_check_value(&kek.check_value().unwrap()));
        assert!(Kek::from_bytes(&[0; 31]).is_err());
        assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    }
}
