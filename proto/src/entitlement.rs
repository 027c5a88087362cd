//! Entitlement tokens: the streamer's own sign-in system vouches for a viewer.
//!
//! Wire form: an encoded [`pb::Signed`] envelope whose body is an encoded
//! [`pb::EntitlementBody`], signed for [`Purpose::Entitlement`] by a key the
//! license server trusts. Only the license server verifies them.

use prost::Message;

use crate::UnixSeconds;
use crate::keys::{Keyring, SigningKeyPair};
use crate::pb;
use crate::signed::{self, OpenError, Purpose, SignatureError};

/// Longest encoded entitlement accepted. Real ones are a few hundred bytes.
pub const MAX_ENTITLEMENT_LEN: usize = 4096;

/// The title wildcard: a single `"*"` in `titles` means every title.
pub const ALL_TITLES: &str = "*";

/// Clock skew tolerated by default between the sign-in system and the
/// license server, in seconds.
pub const DEFAULT_MAX_CLOCK_SKEW_S: u64 = 30;

/// Why an entitlement was refused. One variant per cause, so callers can
/// map each to its own status and metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntitlementError {
    /// Longer than [`MAX_ENTITLEMENT_LEN`].
    #[error("entitlement is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The envelope or body is not valid protobuf.
    #[error("malformed entitlement: {0}")]
    Malformed(String),
    /// The signature envelope was refused (forged or unknown signer).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A field is missing or impossible (empty account, no titles, zero
    /// streams, expiry not after issue).
    #[error("invalid entitlement field `{0}`")]
    InvalidField(&'static str),
    /// Issued in the future (beyond the allowed skew).
    #[error("entitlement issued at {issued_at}, in the future (now {now})")]
    NotYetValid {
        /// Issue time.
        issued_at: UnixSeconds,
        /// Verifier's time.
        now: UnixSeconds,
    },
    /// Expired (beyond the allowed skew).
    #[error("entitlement expired at {expires_at} (now {now})")]
    Expired {
        /// End of validity.
        expires_at: UnixSeconds,
        /// Verifier's time.
        now: UnixSeconds,
    },
}

impl From<OpenError> for EntitlementError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::TooLarge { len, max } => Self::TooLarge { len, max },
            OpenError::Malformed(message) => Self::Malformed(message),
            OpenError::Signature(error) => Self::Signature(error),
        }
    }
}

impl EntitlementError {
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
        }
    }
}

/// An entitlement's claims, typed. Obtained verified from
/// [`EntitlementVerifier`], or built by a sign-in system (or the development
/// minting tool) and turned into bytes with [`Self::sign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    /// Pseudonymous account identifier.
    pub account: String,
    /// Titles the account may watch; `["*"]` means every title.
    pub titles: Vec<String>,
    /// How many sessions the account may hold at once (at least 1).
    pub max_concurrent_streams: u32,
    /// Renditions the account may watch; empty means every rendition.
    pub renditions: Vec<String>,
    /// Largest picture height allowed; 0 means no limit.
    pub max_height: u32,
    /// Issue time.
    pub issued_at: UnixSeconds,
    /// End of validity.
    pub expires_at: UnixSeconds,
}

impl Entitlement {
    /// The protobuf body.
    pub fn to_body(&self) -> pb::EntitlementBody {
        pb::EntitlementBody {
            account: self.account.clone(),
            titles: self.titles.clone(),
            max_concurrent_streams: self.max_concurrent_streams,
            renditions: self.renditions.clone(),
            max_height: self.max_height,
            issued_at: self.issued_at.0,
            expires_at: self.expires_at.0,
        }
    }

    /// Signs the entitlement and returns its wire bytes.
    pub fn sign(&self, key: &SigningKeyPair) -> Vec<u8> {
        signed::sign(key, Purpose::Entitlement, self.to_body().encode_to_vec()).encode_to_vec()
    }

    /// Whether the entitlement covers `title`.
    pub fn allows_title(&self, title: &str) -> bool {
        self.titles
            .iter()
            .any(|allowed| allowed == ALL_TITLES || allowed == title)
    }

    /// Whether the entitlement covers a rendition of this name and height.
    pub fn allows_rendition(&self, rendition: &str, height: u32) -> bool {
        let named = self.renditions.is_empty() || self.renditions.iter().any(|r| r == rendition);
        let tall_enough = self.max_height == 0 || height <= self.max_height;
        named && tall_enough
    }

    fn from_body(body: pb::EntitlementBody) -> Result<Self, EntitlementError> {
        if body.account.is_empty() {
            return Err(EntitlementError::InvalidField("account"));
        }
        if body.titles.is_empty() || body.titles.iter().any(String::is_empty) {
            return Err(EntitlementError::InvalidField("titles"));
        }
        if body.max_concurrent_streams == 0 {
            return Err(EntitlementError::InvalidField("max_concurrent_streams"));
        }
        if body.expires_at <= body.issued_at {
            return Err(EntitlementError::InvalidField("expires_at"));
        }
        Ok(Self {
            account: body.account,
            titles: body.titles,
            max_concurrent_streams: body.max_concurrent_streams,
            renditions: body.renditions,
            max_height: body.max_height,
            issued_at: UnixSeconds(body.issued_at),
            expires_at: UnixSeconds(body.expires_at),
        })
    }
}

/// Verifies entitlements against the sign-in systems' public keys.
#[derive(Debug, Clone)]
pub struct EntitlementVerifier {
    keyring: Keyring,
    max_clock_skew_s: u64,
}

impl EntitlementVerifier {
    /// Trusts the given keys, with the default clock skew.
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

    /// Verifies an entitlement at time `now`.
    pub fn verify(
        &self,
        entitlement: &[u8],
        now: UnixSeconds,
    ) -> Result<Entitlement, EntitlementError> {
        let (_, body) = signed::open::<pb::EntitlementBody>(
            &self.keyring,
            Purpose::Entitlement,
            entitlement,
            MAX_ENTITLEMENT_LEN,
        )?;
        let claims = Entitlement::from_body(body)?;
        if now.0.saturating_add(self.max_clock_skew_s) < claims.issued_at.0 {
            return Err(EntitlementError::NotYetValid {
                issued_at: claims.issued_at,
                now,
            });
        }
        if now.0 > claims.expires_at.0.saturating_add(self.max_clock_skew_s) {
            return Err(EntitlementError::Expired {
                expires_at: claims.expires_at,
                now,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sample(now: u64) -> Entitlement {
        Entitlement {
            account: "acct-1".into(),
            titles: vec!["t1".into()],
            max_concurrent_streams: 2,
            renditions: vec![],
            max_height: 720,
            issued_at: UnixSeconds(now),
            expires_at: UnixSeconds(now + 3600),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let signer = SigningKeyPair::from_seed(&[7; 32]);
        let other = SigningKeyPair::from_seed(&[8; 32]);
        let verifier = EntitlementVerifier::new([signer.verifying_key()].into_iter().collect());
        let now = UnixSeconds(1_000_000);
        let ent = sample(now.0);
        let bytes = ent.sign(&signer);
        assert_eq!(verifier.verify(&bytes, now).unwrap(), ent);
        assert!(ent.allows_title("t1") && !ent.allows_title("t2"));
        assert!(ent.allows_rendition("hd", 720) && !ent.allows_rendition("fhd", 1080));

        let forged = ent.sign(&other);
        assert_eq!(
            verifier.verify(&forged, now).unwrap_err().reason(),
            "unknown_signer"
        );
        let mut tampered = pb::Signed::decode(bytes.as_slice()).unwrap();
        tampered.body.push(0);
        assert_eq!(
            verifier
                .verify(&tampered.encode_to_vec(), now)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        assert!(matches!(
            verifier.verify(&bytes, now.plus(3600 + 31)),
            Err(EntitlementError::Expired { .. })
        ));
        assert!(matches!(
            verifier.verify(&bytes, UnixSeconds(now.0 - 31)),
            Err(EntitlementError::NotYetValid { .. })
        ));
        assert!(matches!(
            verifier.verify(&[0xff; 10], now),
            Err(EntitlementError::Malformed(_))
        ));
        assert!(matches!(
            verifier.verify(&vec![0; MAX_ENTITLEMENT_LEN + 1], now),
            Err(EntitlementError::TooLarge { .. })
        ));
        let zero_streams = Entitlement {
            max_concurrent_streams: 0,
            ..ent
        };
        assert_eq!(
            verifier.verify(&zero_streams.sign(&signer), now),
            Err(EntitlementError::InvalidField("max_concurrent_streams"))
        );
    }
}
