//! Session tokens: short-lived, signed by the license server, verified offline
//! by the tracker, the seeds and other peers.
//!
//! Wire form: an encoded [`pb::Signed`] envelope whose body is an encoded
//! [`pb::SessionTokenBody`], signed for [`Purpose::SessionToken`].

use ed25519_dalek::VerifyingKey;
use prost::Message;

use crate::UnixSeconds;
use crate::keys::{Keyring, SessionId, SigningKeyPair, verifying_key_from_slice};
use crate::pb;
use crate::signed::{self, OpenError, Purpose, SignatureError};

/// Longest encoded token accepted. Real tokens are a few hundred bytes; the
/// bound keeps a hostile peer from making us decode megabytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Clock skew tolerated by default between signer and verifier, in seconds.
pub const DEFAULT_MAX_CLOCK_SKEW_S: u64 = 30;

/// Why a token was refused. Each cause has its own variant so callers can
/// count them separately (e.g. in a `rejected_tokens_total{reason}` metric).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The encoded token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The envelope or body is not valid protobuf (e.g. truncated).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature envelope was refused.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A field has an impossible value (wrong length, invalid key, empty title).
    #[error("invalid token field `{0}`")]
    InvalidField(&'static str),
    /// The token's validity has not started yet (beyond the allowed skew).
    #[error("token not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity.
        not_before: UnixSeconds,
        /// Verifier's time.
        now: UnixSeconds,
    },
    /// The token has expired (beyond the allowed skew).
    #[error("token expired at {expires_at} (now {now})")]
    Expired {
        /// End of validity.
        expires_at: UnixSeconds,
        /// Verifier's time.
        now: UnixSeconds,
    },
    /// The token is valid but for another title.
    #[error("token is for title {actual:?}, not {expected:?}")]
    WrongTitle {
        /// Title the verifier serves.
        expected: String,
        /// Title in the token.
        actual: String,
    },
}

impl From<OpenError> for TokenError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::TooLarge { len, max } => Self::TooLarge { len, max },
            OpenError::Malformed(message) => Self::Malformed(message),
            OpenError::Signature(error) => Self::Signature(error),
        }
    }
}

impl TokenError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::Signature(SignatureError::UnknownSigner(_)) => "unknown_signer",
            Self::Signature(_) => "bad_signature",
            Self::InvalidField(_) => "invalid_field",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::Expired { .. } => "expired",
            Self::WrongTitle { .. } => "wrong_title",
        }
    }
}

/// A session token's claims, typed. Obtained verified from [`TokenVerifier`],
/// or built by the license server and turned into bytes with [`Self::sign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionToken {
    /// The playback session.
    pub session_id: SessionId,
    /// Pseudonymous account.
    pub account: String,
    /// The one title the token covers.
    pub title: String,
    /// Renditions the session may fetch.
    pub renditions: Vec<String>,
    /// Key of the client's QUIC certificate.
    pub peer_key: VerifyingKey,
    /// Region hint.
    pub region: String,
    /// ISP hint.
    pub isp: String,
    /// Start of validity.
    pub not_before: UnixSeconds,
    /// End of validity.
    pub expires_at: UnixSeconds,
}

impl SessionToken {
    /// The protobuf body.
    pub fn to_body(&self) -> pb::SessionTokenBody {
        pb::SessionTokenBody {
            session_id: self.session_id.0.to_vec(),
            account: self.account.clone(),
            title: self.title.clone(),
            renditions: self.renditions.clone(),
            peer_public_key: self.peer_key.as_bytes().to_vec(),
            region: self.region.clone(),
            isp: self.isp.clone(),
            not_before: self.not_before.0,
            expires_at: self.expires_at.0,
        }
    }

    /// Signs the token and returns its wire bytes.
    pub fn sign(&self, key: &SigningKeyPair) -> Vec<u8> {
        signed::sign(key, Purpose::SessionToken, self.to_body().encode_to_vec()).encode_to_vec()
    }

    /// Whether the token lets its holder fetch `rendition`.
    pub fn allows_rendition(&self, rendition: &str) -> bool {
        self.renditions.iter().any(|allowed| allowed == rendition)
    }

    fn from_body(body: pb::SessionTokenBody) -> Result<Self, TokenError> {
        let session_id = SessionId::from_slice(&body.session_id)
            .ok_or(TokenError::InvalidField("session_id"))?;
        let peer_key = verifying_key_from_slice(&body.peer_public_key)
            .map_err(|_| TokenError::InvalidField("peer_public_key"))?;
        if body.title.is_empty() {
            return Err(TokenError::InvalidField("title"));
        }
        if body.expires_at <= body.not_before {
            return Err(TokenError::InvalidField("expires_at"));
        }
        Ok(Self {
            session_id,
            account: body.account,
            title: body.title,
            renditions: body.renditions,
            peer_key,
            region: body.region,
            isp: body.isp,
            not_before: UnixSeconds(body.not_before),
            expires_at: UnixSeconds(body.expires_at),
        })
    }
}

/// Verifies session tokens offline against the license server's keys.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keyring: Keyring,
    max_clock_skew_s: u64,
}

impl TokenVerifier {
    /// Trusts the given license-server keys, with the default clock skew.
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring,
            max_clock_skew_s: DEFAULT_MAX_CLOCK_SKEW_S,
        }
    }

    /// Sets the tolerated clock skew, in seconds.
    pub fn with_max_clock_skew(mut self, seconds: u64) -> Self {
        self.max_clock_skew_s = seconds;
        self
    }

    /// Verifies a token for `title` at time `now`.
    pub fn verify(
        &self,
        token: &[u8],
        now: UnixSeconds,
        title: &str,
    ) -> Result<SessionToken, TokenError> {
        let claims = self.verify_any_title(token, now)?;
        if claims.title != title {
            return Err(TokenError::WrongTitle {
                expected: title.to_owned(),
                actual: claims.title,
            });
        }
        Ok(claims)
    }

    /// Verifies a token whatever its title; the caller must then check the
    /// title of every request against [`SessionToken::title`].
    pub fn verify_any_title(
        &self,
        token: &[u8],
        now: UnixSeconds,
    ) -> Result<SessionToken, TokenError> {
        let (_, body) = signed::open::<pb::SessionTokenBody>(
            &self.keyring,
            Purpose::SessionToken,
            token,
            MAX_TOKEN_LEN,
        )?;
        let claims = SessionToken::from_body(body)?;
        if now.0.saturating_add(self.max_clock_skew_s) < claims.not_before.0 {
            return Err(TokenError::NotYetValid {
                not_before: claims.not_before,
                now,
            });
        }
        if now.0 > claims.expires_at.0.saturating_add(self.max_clock_skew_s) {
            return Err(TokenError::Expired {
                expires_at: claims.expires_at,
                now,
            });
        }
        Ok(claims)
    }
}
