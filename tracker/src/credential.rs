//! What a connection proved in its hello: a viewer's session token or a
//! seed's credential, verified offline and bound to the TLS certificate key.

use ed25519_dalek::VerifyingKey;
use loaves_proto::keys::{Keyring, verifying_key_from_slice};
use loaves_proto::signed::{self, Purpose};
use loaves_proto::token::{MAX_TOKEN_LEN, SessionToken, TokenError, TokenVerifier};
use loaves_proto::{UnixSeconds, pb};
use prost::Message;

/// A seed's verified credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedCredential {
    /// Operator-chosen name.
    pub seed_name: String,
    /// Key of the seed's QUIC certificate.
    pub peer_key: VerifyingKey,
    /// Region.
    pub region: String,
    /// ISP.
    pub isp: String,
    /// Titles the seed may serve ("*" = all).
    pub titles: Vec<String>,
    /// Start of validity.
    pub not_before: UnixSeconds,
    /// End of validity.
    pub expires_at: UnixSeconds,
}

impl SeedCredential {
    /// Whether the credential covers `title`.
    pub fn allows_title(&self, title: &str) -> bool {
        self.titles.iter().any(|t| t == "*" || t == title)
    }
}

/// What a connection proved.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A viewer with a session token.
    Viewer(SessionToken),
    /// An edge seed.
    Seed(SeedCredential),
}

impl Credential {
    /// The key the credential names.
    pub fn peer_key(&self) -> &VerifyingKey {
        match self {
            Self::Viewer(token) => &token.peer_key,
            Self::Seed(seed) => &seed.peer_key,
        }
    }

    /// End of validity.
    pub fn expires_at(&self) -> UnixSeconds {
        match self {
            Self::Viewer(token) => token.expires_at,
            Self::Seed(seed) => seed.expires_at,
        }
    }

    /// Region hint.
    pub fn region(&self) -> &str {
        match self {
            Self::Viewer(token) => &token.region,
            Self::Seed(seed) => &seed.region,
        }
    }

    /// ISP hint.
    pub fn isp(&self) -> &str {
        match self {
            Self::Viewer(token) => &token.isp,
            Self::Seed(seed) => &seed.isp,
        }
    }
}

/// Why a hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The credential did not verify.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The credential is valid but names another key than the certificate's.
    #[error("credential key does not match the TLS certificate key")]
    KeyMismatch,
    /// The request carried no credential.
    #[error("hello without a credential")]
    Missing,
}

impl HelloError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(error) => error.reason(),
            Self::KeyMismatch => "key_mismatch",
            Self::Missing => "missing",
        }
    }
}

/// Verifies hellos against the license server's keys.
#[derive(Debug, Clone)]
pub struct CredentialVerifier {
    tokens: TokenVerifier,
    keyring: Keyring,
    max_clock_skew_s: u64,
}

impl CredentialVerifier {
    /// Trusts `keyring` (the license server's public keys).
    pub fn new(keyring: Keyring, max_clock_skew_s: u64) -> Self {
        Self {
            tokens: TokenVerifier::new(keyring.clone()).with_max_clock_skew(max_clock_skew_s),
            keyring,
            max_clock_skew_s,
        }
    }

    /// Verifies a hello and checks that its credential names `certificate_key`.
    pub fn verify_hello(
        &self,
        hello: &pb::TrackerHello,
        certificate_key: &VerifyingKey,
        now: UnixSeconds,
    ) -> Result<Credential, HelloError> {
        use pb::tracker_hello::Credential as Wire;
        let credential = match &hello.credential {
            Some(Wire::SessionToken(bytes)) => {
                Credential::Viewer(self.tokens.verify_any_title(bytes, now)?)
            }
            Some(Wire::SeedCredential(bytes)) => Credential::Seed(self.verify_seed(bytes, now)?),
            None => return Err(HelloError::Missing),
        };
        if credential.peer_key() != certificate_key {
            return Err(HelloError::KeyMismatch);
        }
        Ok(credential)
    }

    /// Whether the credential is still valid at `now` (connections outlive
    /// short tokens; each request re-checks).
    pub fn still_valid(&self, credential: &Credential, now: UnixSeconds) -> Result<(), TokenError> {
        let expires_at = credential.expires_at();
        if now.0 > expires_at.0.saturating_add(self.max_clock_skew_s) {
            return Err(TokenError::Expired { expires_at, now });
        }
        Ok(())
    }

    /// Verifies a seed credential (signed for [`Purpose::SeedCredential`]).
    pub fn verify_seed(
        &self,
        bytes: &[u8],
        now: UnixSeconds,
    ) -> Result<SeedCredential, TokenError> {
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge {
                len: bytes.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let envelope =
            pb::Signed::decode(bytes).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let (_, body) = signed::verify(&self.keyring, Purpose::SeedCredential, &envelope)?;
        let body = pb::SeedCredentialBody::decode(body)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        let peer_key = verifying_key_from_slice(&body.peer_public_key)
            .map_err(|_| TokenError::InvalidField("peer_public_key"))?;
        if body.expires_at <= body.not_before {
            return Err(TokenError::InvalidField("expires_at"));
        }
        if body.titles.is_empty() {
            return Err(TokenError::InvalidField("titles"));
        }
        let credential = SeedCredential {
            seed_name: body.seed_name,
            peer_key,
            region: body.region,
            isp: body.isp,
            titles: body.titles,
            not_before: UnixSeconds(body.not_before),
            expires_at: UnixSeconds(body.expires_at),
        };
        if now.0.saturating_add(self.max_clock_skew_s) < credential.not_before.0 {
            return Err(TokenError::NotYetValid {
                not_before: credential.not_before,
                now,
            });
        }
        if now.0
            > credential
                .expires_at
                .0
                .saturating_add(self.max_clock_skew_s)
        {
            return Err(TokenError::Expired {
                expires_at: credential.expires_at,
                now,
            });
        }
        Ok(credential)
    }
}

/// Signs a seed credential (for operators' tooling and tests).
pub fn sign_seed_credential(
    body: &pb::SeedCredentialBody,
    key: &loaves_proto::keys::SigningKeyPair,
) -> Vec<u8> {
    signed::sign(key, Purpose::SeedCredential, body.encode_to_vec()).encode_to_vec()
}
