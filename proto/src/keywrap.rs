//! Per-session content key wrapping with HPKE (RFC 9180).
//!
//! Suite: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
//! The client makes an ephemeral X25519 key pair per session
//! ([`SessionKeyPair`]) and sends the public half with its license request;
//! the license server seals each 16-byte content key to it with
//!
//! - `info = "loaves/v1/content-key-wrap\0" || session_id` (16 bytes), and
//! - `aad = key_id` (the 16-byte CENC KID),
//!
//! so a wrapped key opens only for that session's private key, and only as
//! the key it claims to be: moving it to another session or relabelling it
//! with another KID makes the AEAD fail.

use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::keys::{ContentKey, ContentKeyId, KeyError, SessionId, random_array};
use crate::pb;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

/// Fixed prefix of the HPKE `info` parameter.
pub const WRAP_INFO_CONTEXT: &[u8] = b"loaves/v1/content-key-wrap\0";

/// Length of an X25519 public key and of an encapsulated key.
pub const X25519_KEY_LEN: usize = 32;

/// Why wrapping or unwrapping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The recipient public key is not 32 bytes.
    #[error("X25519 public key must be 32 bytes")]
    InvalidPublicKey,
    /// The recipient public key is a low-order point: the shared secret would
    /// be all zeros (RFC 9180 §7.1.4 requires refusing it).
    #[error("X25519 public key is a low-order point")]
    LowOrderPublicKey,
    /// The encapsulated key is not 32 bytes.
    #[error("encapsulated key must be 32 bytes")]
    InvalidEncapsulatedKey,
    /// Opening failed: another session's private key, another session id or
    /// key id, or tampered ciphertext.
    #[error("wrapped key does not open for this session")]
    OpenFailed,
    /// The opened plaintext is not a 16-byte key.
    #[error("wrapped plaintext is not a 16-byte content key")]
    InvalidKeyLength,
    /// The key id is not 16 bytes.
    #[error("content key id must be 16 bytes")]
    InvalidKeyId,
    /// Randomness or key generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A client's ephemeral X25519 key pair for one session. The private key is
/// zeroized on drop and never shown by `Debug`.
#[derive(Clone)]
pub struct SessionKeyPair {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: <Kem as hpke::Kem>::PublicKey,
}

impl SessionKeyPair {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, WrapError> {
        let ikm = Zeroizing::new(random_array::<32>()?);
        Ok(Self::derive(&ikm[..]))
    }

    /// The key pair RFC 9180's `DeriveKeyPair` makes from `ikm`
    /// (deterministic; used by test vectors).
    pub fn derive(ikm: &[u8]) -> Self {
        let (private, public) = Kem::derive_keypair(ikm);
        Self { private, public }
    }

    /// The public key to send with the license request.
    pub fn public_key(&self) -> [u8; X25519_KEY_LEN] {
        self.public.to_bytes().into()
    }
}

impl std::fmt::Debug for SessionKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeyPair")
            .field("public", &hex::encode(self.public_key()))
            .field("private", &"<redacted>")
            .finish()
    }
}

/// A content key sealed to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedContentKey {
    /// The CENC key id.
    pub key_id: ContentKeyId,
    /// HPKE encapsulated key.
    pub encapsulated_key: [u8; X25519_KEY_LEN],
    /// AES-256-GCM ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

fn info(session_id: &SessionId) -> Vec<u8> {
    let mut info = Vec::with_capacity(WRAP_INFO_CONTEXT.len() + session_id.0.len());
    info.extend_from_slice(WRAP_INFO_CONTEXT);
    info.extend_from_slice(&session_id.0);
    info
}

/// Seals `key` to the session whose ephemeral public key is `recipient`.
pub fn wrap(
    recipient: &[u8],
    session_id: &SessionId,
    key_id: ContentKeyId,
    key: &ContentKey,
) -> Result<WrappedContentKey, WrapError> {
    wrap_with_rng(
        recipient,
        session_id,
        key_id,
        key,
        &mut hpke::rand_core::UnwrapErr(getrandom::SysRng),
    )
}

/// [`wrap`] with an explicit random source (deterministic test vectors).
pub fn wrap_with_rng(
    recipient: &[u8],
    session_id: &SessionId,
    key_id: ContentKeyId,
    key: &ContentKey,
    rng: &mut impl CryptoRng,
) -> Result<WrappedContentKey, WrapError> {
    if recipient.len() != X25519_KEY_LEN {
        return Err(WrapError::InvalidPublicKey);
    }
    let recipient = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| WrapError::InvalidPublicKey)?;
    let (encapsulated, ciphertext) = hpke::single_shot_seal_with_rng::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &recipient,
        &info(session_id),
        key.as_bytes(),
        &key_id.0,
        rng,
    )
    // The only way sealing fails with valid lengths is an all-zero shared
    // secret, i.e. a low-order recipient key.
    .map_err(|_| WrapError::LowOrderPublicKey)?;
    Ok(WrappedContentKey {
        key_id,
        encapsulated_key: encapsulated.to_bytes().into(),
        ciphertext,
    })
}

/// Opens a wrapped key with the session's private key.
pub fn unwrap(
    session_keys: &SessionKeyPair,
    session_id: &SessionId,
    wrapped: &WrappedContentKey,
) -> Result<ContentKey, WrapError> {
    let encapsulated = <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrapped.encapsulated_key)
        .map_err(|_| WrapError::InvalidEncapsulatedKey)?;
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &session_keys.private,
            &encapsulated,
            &info(session_id),
            &wrapped.ciphertext,
            &wrapped.key_id.0,
        )
        .map_err(|_| WrapError::OpenFailed)?,
    );
    ContentKey::from_slice(&plaintext).ok_or(WrapError::InvalidKeyLength)
}

impl WrappedContentKey {
    /// The protobuf form, labelled with its track type and key period.
    pub fn to_pb(&self, track_type: &str, key_period: u32) -> pb::WrappedKey {
        pb::WrappedKey {
            key_id: self.key_id.0.to_vec(),
            track_type: track_type.to_owned(),
            key_period,
            encapsulated_key: self.encapsulated_key.to_vec(),
            ciphertext: self.ciphertext.clone(),
        }
    }

    /// Parses the protobuf form (lengths checked, nothing opened).
    pub fn from_pb(wrapped: &pb::WrappedKey) -> Result<Self, WrapError> {
        Ok(Self {
            key_id: ContentKeyId::from_slice(&wrapped.key_id).ok_or(WrapError::InvalidKeyId)?,
            encapsulated_key: wrapped
                .encapsulated_key
                .as_slice()
                .try_into()
                .map_err(|_| WrapError::InvalidEncapsulatedKey)?,
            ciphertext: wrapped.ciphertext.clone(),
        })
    }
}
