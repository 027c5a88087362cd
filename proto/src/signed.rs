//! The signature envelope shared by every signed object.
//!
//! A signature covers `context || body`, where `context` is a fixed,
//! NUL-terminated ASCII string per object type ([`Purpose`]). Because no
//! context is a prefix of another and each ends in NUL, a signature made over
//! one type of object can never verify as another type, even if the body
//! bytes happen to parse as both.

use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;

use crate::keys::{KeyId, Keyring, SigningKeyPair};
use crate::pb;

/// What a signature is for. Each purpose has its own signing context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A session token (license server → tracker, seeds, peers).
    SessionToken,
    /// An entitlement (the streamer's sign-in system → license server).
    Entitlement,
    /// An edge seed's credential (operator → tracker, peers).
    SeedCredential,
    /// One chunk of a segment manifest (origin → everybody).
    ManifestChunk,
    /// A license (license server → one client).
    License,
    /// A renewal or release request (client → license server).
    RenewRequest,
}

impl Purpose {
    /// The context string prepended to the body before signing.
    pub const fn context(self) -> &'static [u8] {
        match self {
            Self::SessionToken => b"loaves/v1/session-token\0",
            Self::Entitlement => b"loaves/v1/entitlement\0",
            Self::SeedCredential => b"loaves/v1/seed-credential\0",
            Self::ManifestChunk => b"loaves/v1/manifest-chunk\0",
            Self::License => b"loaves/v1/license\0",
            Self::RenewRequest => b"loaves/v1/renew-request\0",
        }
    }
}

/// Why an envelope's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signer key id field is not 8 bytes.
    #[error("malformed signer key id")]
    MalformedKeyId,
    /// The signature field is not 64 bytes.
    #[error("malformed signature")]
    MalformedSignature,
    /// The key id names no key this verifier trusts.
    #[error("signed by unknown key {0}")]
    UnknownSigner(KeyId),
    /// The signature does not verify over the context and body.
    #[error("signature does not verify")]
    BadSignature,
}

/// The exact bytes an Ed25519 signature covers.
pub fn signing_message(purpose: Purpose, body: &[u8]) -> Vec<u8> {
    let context = purpose.context();
    let mut message = Vec::with_capacity(context.len() + body.len());
    message.extend_from_slice(context);
    message.extend_from_slice(body);
    message
}

/// Signs an encoded body for `purpose`.
pub fn sign(key: &SigningKeyPair, purpose: Purpose, body: Vec<u8>) -> pb::Signed {
    let signature = key.sign_raw(&signing_message(purpose, &body));
    pb::Signed {
        body,
        signer_key_id: key.key_id().0.to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

/// Verifies an envelope against the keyring and returns its signer and body.
pub fn verify<'a>(
    keyring: &Keyring,
    purpose: Purpose,
    envelope: &'a pb::Signed,
) -> Result<(KeyId, &'a [u8]), SignatureError> {
    let key_id =
        KeyId::from_slice(&envelope.signer_key_id).ok_or(SignatureError::MalformedKeyId)?;
    let key = keyring
        .get(&key_id)
        .ok_or(SignatureError::UnknownSigner(key_id))?;
    verify_with_key(key, purpose, envelope).map(|body| (key_id, body))
}

/// Verifies an envelope against one known key (e.g. a client's peer key).
pub fn verify_with_key<'a>(
    key: &VerifyingKey,
    purpose: Purpose,
    envelope: &'a pb::Signed,
) -> Result<&'a [u8], SignatureError> {
    let key_id =
        KeyId::from_slice(&envelope.signer_key_id).ok_or(SignatureError::MalformedKeyId)?;
    if key_id != KeyId::of(key) {
        return Err(SignatureError::UnknownSigner(key_id));
    }
    let signature_bytes: &[u8; 64] = envelope
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::MalformedSignature)?;
    let signature = Signature::from_bytes(signature_bytes);
    // verify_strict rejects small-order keys and non-canonical signatures, so
    // one body has exactly one accepted signature per key.
    key.verify_strict(&signing_message(purpose, &envelope.body), &signature)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(&envelope.body)
}

/// Why the wire bytes of a signed object could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Longer than the object type allows.
    #[error("{len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The envelope or the body is not valid protobuf (e.g. truncated).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The signature envelope was refused.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// Opens an encoded [`pb::Signed`] of at most `max_len` bytes: checks the
/// size before decoding anything, verifies the signature for `purpose`, and
/// decodes the body as `M`. Field checks are the caller's.
pub fn open<M: Message + Default>(
    keyring: &Keyring,
    purpose: Purpose,
    bytes: &[u8],
    max_len: usize,
) -> Result<(KeyId, M), OpenError> {
    if bytes.len() > max_len {
        return Err(OpenError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let envelope = pb::Signed::decode(bytes).map_err(|e| OpenError::Malformed(e.to_string()))?;
    let (signer, body) = verify(keyring, purpose, &envelope)?;
    let body = M::decode(body).map_err(|e| OpenError::Malformed(e.to_string()))?;
    Ok((signer, body))
}
