//! The license side of a playback session: acquire a license (content keys
//! wrapped to this session, signed policy, session token), renew it on its
//! heartbeat, release it at the end.
//!
//! Every license is verified against the license server's public key and
//! opened with the session's ephemeral X25519 key before anything uses it.

use std::time::Duration;

use loaves_grpc::license_service_client::LicenseServiceClient;
use loaves_proto::UnixSeconds;
use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::keywrap::{SessionKeyPair, WrapError};
use loaves_proto::license::{self, LicenseError, OpenedKey, VerifiedLicense};
use loaves_proto::pb;
use loaves_proto::signed::{self, Purpose};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How to reach and trust the license server.
#[derive(Debug, Clone)]
pub struct LicenseServerConfig {
    /// `https://host:port` of the gRPC service (`None`: not configured).
    pub url: Option<url::Url>,
    /// PEM certificate(s) to trust for its TLS; `None` trusts the system
    /// roots (production certificates).
    pub ca_pem: Option<String>,
    /// The name its certificate is issued to, when it differs from the host
    /// in `url` (development certificates are issued to "localhost").
    pub tls_server_name: Option<String>,
    /// The license server's Ed25519 public keys (licenses and tokens are
    /// signed by one of them).
    pub trusted_keys: Keyring,
    /// Bound on each call.
    pub request_timeout: Duration,
}

impl Default for LicenseServerConfig {
    /// No server yet, no trusted key, 10 s per call.
    fn default() -> Self {
        Self {
            url: None,
            ca_pem: None,
            tls_server_name: None,
            trusted_keys: Keyring::default(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a license call failed.
#[derive(Debug, thiserror::Error)]
pub enum LicenseClientError {
    /// No license server URL is configured.
    #[error("no license server configured")]
    NotConfigured,
    /// The license server could not be reached (or TLS failed).
    #[error("license server unreachable: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The license server refused, with its gRPC status and message
    /// (entitlement expired, concurrent-stream limit, unknown title...).
    #[error("license refused ({code:?}): {message}")]
    Refused {
        /// gRPC status code.
        code: tonic::Code,
        /// The server's explanation.
        message: String,
    },
    /// The response is not a valid license for this session.
    #[error("invalid license: {0}")]
    Invalid(#[from] LicenseError),
    /// The response has no license in it.
    #[error("the response carries no license")]
    Missing,
    /// Key generation failed.
    #[error(transparent)]
    Keys(#[from] WrapError),
}

impl From<tonic::Status> for LicenseClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// What a caller asks for when opening a session.
#[derive(Debug, Clone, Default)]
pub struct LicenseRequest {
    /// Encoded entitlement from the streamer's sign-in system.
    pub entitlement: Vec<u8>,
    /// The title.
    pub title: String,
    /// Renditions the player wants (empty: all the entitlement allows).
    pub renditions: Vec<String>,
    /// First key period and how many (`None`: the server's default).
    pub key_periods: Option<(u32, u32)>,
    /// Region hint.
    pub region: String,
    /// ISP hint.
    pub isp: String,
}

/// A licensed playback session.
#[derive(Debug)]
pub struct LicensedSession {
    session_keys: SessionKeyPair,
    /// The verified license currently in force.
    pub license: VerifiedLicense,
    /// The content keys opened from it (and from renewals).
    pub keys: Vec<OpenedKey>,
    renewal_sequence: u64,
}

impl LicensedSession {
    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.license.session_id
    }

    /// The session token to present to the tracker, seeds and peers.
    pub fn session_token(&self) -> &[u8] {
        &self.license.session_token
    }

    /// When the license must have been renewed by.
    pub fn expires_at(&self) -> UnixSeconds {
        UnixSeconds(self.license.policy.expires_at)
    }

    /// Seconds between heartbeats, as the policy asks.
    pub fn renewal_interval_s(&self) -> u32 {
        self.license.policy.renewal_interval_s
    }

    /// Takes the next renewal sequence number for a request about to be
    /// sent. A number is spent whether or not the answer arrives: the
    /// server may have applied a request whose answer was lost, failed to
    /// verify, or was abandoned (a renewal cut short by `close`), and it
    /// refuses a number it has seen as a replay. The server asks only that
    /// numbers grow, so gaps are harmless.
    fn next_sequence(&mut self) -> u64 {
        self.renewal_sequence += 1;
        self.renewal_sequence
    }

    fn absorb(&mut self, license: VerifiedLicense) -> Result<(), LicenseClientError> {
        for key in license.open_keys(&self.session_keys)? {
            let known = self.keys.iter().any(|k| {
                k.key_id == key.key_id
                    && k.key_period == key.key_period
                    && k.track_type == key.track_type
            });
            if !known {
                self.keys.push(key);
            }
        }
        self.license = license;
        Ok(())
    }
}

/// A client of the license service.
#[derive(Debug, Clone)]
pub struct LicenseClient {
    grpc: LicenseServiceClient<Channel>,
    trusted_keys: Keyring,
}

impl LicenseClient {
    /// Connects (TLS) to the license server.
    pub async fn connect(config: &LicenseServerConfig) -> Result<Self, LicenseClientError> {
        let mut tls = ClientTlsConfig::new();
        if let Some(pem) = &config.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        } else {
            tls = tls.with_native_roots();
        }
        if let Some(name) = &config.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        let url = config
            .url
            .as_ref()
            .ok_or(LicenseClientError::NotConfigured)?;
        let channel = Endpoint::from_shared(url.as_str().trim_end_matches('/').to_owned())?
            .tls_config(tls)?
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .connect()
            .await?;
        Ok(Self {
            grpc: LicenseServiceClient::new(channel),
            trusted_keys: config.trusted_keys.clone(),
        })
    }

    /// Opens a session: a fresh ephemeral key pair is made for it, and
    /// `peer_identity` is the key of this client's QUIC certificate, which
    /// the session token will name.
    pub async fn acquire(
        &mut self,
        request: &LicenseRequest,
        peer_identity: &SigningKeyPair,
        now: UnixSeconds,
    ) -> Result<LicensedSession, LicenseClientError> {
        let session_keys = SessionKeyPair::generate()?;
        let response = self
            .grpc
            .acquire_license(pb::AcquireLicenseRequest {
                entitlement: request.entitlement.clone(),
                title: request.title.clone(),
                client_hpke_public_key: session_keys.public_key().to_vec(),
                peer_public_key: peer_identity.verifying_key().as_bytes().to_vec(),
                key_periods: request
                    .key_periods
                    .map(|(first, count)| pb::KeyPeriodRange { first, count }),
                renditions: request.renditions.clone(),
                region: request.region.clone(),
                isp: request.isp.clone(),
            })
            .await?
            .into_inner();
        let envelope = response.license.ok_or(LicenseClientError::Missing)?;
        // The session id is the license's own; check the signature first,
        // then that the license is consistent for that id.
        let unverified = pb::LicenseBody::decode(envelope.body.as_slice())
            .map_err(|e| LicenseError::Malformed(e.to_string()))?;
        let session_id = SessionId::from_slice(&unverified.session_id)
            .ok_or(LicenseError::InvalidField("session_id"))?;
        let license = license::verify(&self.trusted_keys, &envelope, &session_id, now)?;
        let mut session = LicensedSession {
            session_keys,
            license: license.clone(),
            keys: Vec::new(),
            renewal_sequence: 0,
        };
        session.absorb(license)?;
        Ok(session)
    }

    /// Heartbeat: extends the session and fetches the keys of
    /// `key_periods` (first, count) ahead of time.
    pub async fn renew(
        &mut self,
        session: &mut LicensedSession,
        peer_identity: &SigningKeyPair,
        key_periods: Option<(u32, u32)>,
        now: UnixSeconds,
    ) -> Result<(), LicenseClientError> {
        let request = signed_request(
            session.session_id(),
            session.next_sequence(),
            key_periods,
            peer_identity,
        );
        let response = self
            .grpc
            .renew_license(pb::RenewLicenseRequest {
                request: Some(request),
            })
            .await?
            .into_inner();
        let envelope = response.license.ok_or(LicenseClientError::Missing)?;
        let license = license::verify(&self.trusted_keys, &envelope, &session.session_id(), now)?;
        session.absorb(license)
    }

    /// Ends the session at once, freeing its concurrency slot.
    pub async fn release(
        &mut self,
        session: &mut LicensedSession,
        peer_identity: &SigningKeyPair,
    ) -> Result<(), LicenseClientError> {
        let request = signed_request(
            session.session_id(),
            session.next_sequence(),
            None,
            peer_identity,
        );
        self.grpc
            .release_session(pb::ReleaseSessionRequest {
                request: Some(request),
            })
            .await?;
        Ok(())
    }
}

fn signed_request(
    session_id: SessionId,
    renewal_sequence: u64,
    key_periods: Option<(u32, u32)>,
    peer_identity: &SigningKeyPair,
) -> pb::Signed {
    let body = pb::RenewRequestBody {
        session_id: session_id.0.to_vec(),
        renewal_sequence,
        key_periods: key_periods.map(|(first, count)| pb::KeyPeriodRange { first, count }),
    };
    signed::sign(peer_identity, Purpose::RenewRequest, body.encode_to_vec())
}
