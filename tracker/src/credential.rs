//! What a connection proved in its hello: a viewer's session token or a
//! seed's credential, verified offline and bound to the TLS certificate key.
//!
//! The credential types and the seed-credential check are the peer wire's
//! ([`loaves_wire::peerwire`]), so the tracker, the seeds and the viewers
//! accept exactly the same credentials; this module adds the tracker's
//! hello (a [`pb::TrackerHello`]).

use ed25519_dalek::VerifyingKey;
use loaves_proto::keys::Keyring;
use loaves_proto::token::{TokenError, TokenVerifier};
use loaves_proto::{UnixSeconds, pb};
use loaves_wire::peerwire;

pub use loaves_wire::peerwire::{
    PeerCredential as Credential, SeedCredential, sign_seed_credential,
};

/// Why a tracker hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The token or seed credential was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The credential names another key than the TLS certificate's.
    #[error("credential key does not match the TLS certificate key")]
    KeyMismatch,
    /// The hello carries no credential.
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

/// Verifies tracker hellos against the license server's keys.
#[derive(Debug, Clone)]
pub struct CredentialVerifier {
    tokens: TokenVerifier,
    peers: peerwire::CredentialVerifier,
}

impl CredentialVerifier {
    /// Trusts `keyring`, tolerating `max_clock_skew_s` of clock skew.
    pub fn new(keyring: Keyring, max_clock_skew_s: u64) -> Self {
        Self {
            tokens: TokenVerifier::new(keyring.clone()).with_max_clock_skew(max_clock_skew_s),
            peers: peerwire::CredentialVerifier::new(keyring, max_clock_skew_s),
        }
    }

    /// Verifies the hello of a connection whose certificate key is
    /// `certificate_key`. Viewers' titles are checked per request.
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
            Some(Wire::SeedCredential(bytes)) => {
                Credential::Seed(self.peers.verify_seed(bytes, now)?)
            }
            None => return Err(HelloError::Missing),
        };
        if credential.peer_key() != certificate_key {
            return Err(HelloError::KeyMismatch);
        }
        Ok(credential)
    }

    /// Whether `credential` is still valid at `now` (connections outlive
    /// short tokens: every request re-checks).
    pub fn still_valid(&self, credential: &Credential, now: UnixSeconds) -> Result<(), TokenError> {
        self.peers.still_valid(credential, now)
    }

    /// Verifies a seed credential.
    pub fn verify_seed(
        &self,
        bytes: &[u8],
        now: UnixSeconds,
    ) -> Result<SeedCredential, TokenError> {
        self.peers.verify_seed(bytes, now)
    }
}
