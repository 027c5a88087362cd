//! Signed licenses: per-session policy plus content keys wrapped to the
//! session, signed by the license server ([`Purpose::License`]).

use prost::Message;

use crate::UnixSeconds;
use crate::keys::{ContentKey, ContentKeyId, Keyring, SessionId, SigningKeyPair};
use crate::keywrap::{self, SessionKeyPair, WrapError, WrappedContentKey};
use crate::pb;
use crate::signed::{self, Purpose, SignatureError};

/// Longest encoded license accepted (a license with hundreds of key periods
/// stays far below).
pub const MAX_LICENSE_LEN: usize = 256 * 1024;

/// Why a license was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    /// Longer than [`MAX_LICENSE_LEN`].
    #[error("license is {0} bytes, more than allowed")]
    TooLarge(usize),
    /// Not valid protobuf.
    #[error("malformed license: {0}")]
    Malformed(String),
    /// The envelope was refused.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A field is missing or has an impossible value.
    #[error("invalid license field `{0}`")]
    InvalidField(&'static str),
    /// The license is for another session.
    #[error("license is for another session")]
    OtherSession,
    /// The license has expired.
    #[error("license expired at {0}")]
    Expired(UnixSeconds),
    /// A wrapped key did not open.
    #[error("content key {key_id}: {source}")]
    Key {
        /// The key that failed.
        key_id: String,
        /// Why.
        source: WrapError,
    },
}

/// Signs a license body.
pub fn sign(key: &SigningKeyPair, body: &pb::LicenseBody) -> pb::Signed {
    signed::sign(key, Purpose::License, body.encode_to_vec())
}

/// A license whose signature, session and validity were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedLicense {
    /// The session.
    pub session_id: SessionId,
    /// The title.
    pub title: String,
    /// Expiry, renewal and rendition policy.
    pub policy: pb::LicensePolicy,
    /// The wrapped content keys.
    pub keys: Vec<pb::WrappedKey>,
    /// Session token for tracker, seeds and peers.
    pub session_token: Vec<u8>,
    /// The renewal this license answers (0 for the acquisition).
    pub renewal_sequence: u64,
}

/// A content key opened from a license.
#[derive(Debug, Clone)]
pub struct OpenedKey {
    /// CENC key id.
    pub key_id: ContentKeyId,
    /// Track type ("audio", "sd", "hd", ...).
    pub track_type: String,
    /// Key period.
    pub key_period: u32,
    /// The clear key.
    pub key: ContentKey,
}

/// Verifies a license received for `session_id` at time `now`.
pub fn verify(
    keyring: &Keyring,
    envelope: &pb::Signed,
    session_id: &SessionId,
    now: UnixSeconds,
) -> Result<VerifiedLicense, LicenseError> {
    let size = envelope.encoded_len();
    if size > MAX_LICENSE_LEN {
        return Err(LicenseError::TooLarge(size));
    }
    let (_, body) = signed::verify(keyring, Purpose::License, envelope)?;
    let body = pb::LicenseBody::decode(body).map_err(|e| LicenseError::Malformed(e.to_string()))?;
    let licensed_session =
        SessionId::from_slice(&body.session_id).ok_or(LicenseError::InvalidField("session_id"))?;
    if &licensed_session != session_id {
        return Err(LicenseError::OtherSession);
    }
    let policy = body.policy.ok_or(LicenseError::InvalidField("policy"))?;
    if now.0 > policy.expires_at {
        return Err(LicenseError::Expired(UnixSeconds(policy.expires_at)));
    }
    Ok(VerifiedLicense {
        session_id: licensed_session,
        title: body.title,
        policy,
        keys: body.keys,
        session_token: body.session_token,
        renewal_sequence: body.renewal_sequence,
    })
}

impl VerifiedLicense {
    /// Opens every wrapped key with the session's private key.
    pub fn open_keys(&self, session_keys: &SessionKeyPair) -> Result<Vec<OpenedKey>, LicenseError> {
        self.keys
            .iter()
            .map(|wrapped| {
                let fail = |source| LicenseError::Key {
                    key_id: hex::encode(&wrapped.key_id),
                    source,
                };
                let parsed = WrappedContentKey::from_pb(wrapped).map_err(fail)?;
                let key = keywrap::unwrap(session_keys, &self.session_id, &parsed).map_err(fail)?;
                Ok(OpenedKey {
                    key_id: parsed.key_id,
                    track_type: wrapped.track_type.clone(),
                    key_period: wrapped.key_period,
                    key,
                })
            })
            .collect()
    }
}
