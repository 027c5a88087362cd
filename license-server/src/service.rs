//! The license and key services: request checks, session admission, key
//! wrapping and signing ([`LicenseCore`]), and their gRPC faces
//! ([`GrpcLicenseService`], [`GrpcKeyService`]) with bounded admission.
//!
//! Order of work in an acquisition, chosen so a refused request writes
//! nothing: verify the entitlement, check the title, the keys offered by the
//! client (a trial HPKE seal refuses low-order X25519 points) and the key
//! periods, and only then admit the session (one transaction: replay marker
//! and session row, under the account's lock), fetch or create the content
//! keys, wrap, sign.

use std::sync::Arc;
use std::time::Duration;

use loaves_grpc::key_service_server::KeyService;
use loaves_grpc::license_service_server::LicenseService;
use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::{Entitlement, EntitlementVerifier};
use loaves_proto::keys::{
    ContentKey, ContentKeyId, SessionId, SigningKeyPair, verifying_key_from_slice,
};
use loaves_proto::keywrap::{self, WrapError, X25519_KEY_LEN};
use loaves_proto::pb;
use loaves_proto::signed::{self, Purpose};
use loaves_proto::token::SessionToken;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::{PolicyConfig, TitleConfig};
use crate::error::Denial;
use crate::metrics::Metrics;
use crate::store::{Admission, NewSession, SessionRecord, SessionUpdate, Store, StoredKey};

/// Longest region or ISP hint accepted.
pub const MAX_HINT_LEN: usize = 64;
/// Most renditions a client may name in one request.
pub const MAX_REQUESTED_RENDITIONS: usize = 64;

/// Everything the services need, shared by all requests.
#[derive(Debug)]
pub struct LicenseCore {
    /// The durable store.
    pub store: Store,
    catalog: Catalog,
    policy: PolicyConfig,
    max_keys_per_request: usize,
    signing_key: SigningKeyPair,
    entitlements: EntitlementVerifier,
    admin_digest: [u8; 32],
    clock: Arc<dyn Clock>,
    /// The service's metrics.
    pub metrics: Metrics,
}

/// What [`LicenseCore::new`] needs.
#[derive(Debug)]
pub struct CoreParts {
    /// The durable store.
    pub store: Store,
    /// The titles.
    pub catalog: Catalog,
    /// License policy.
    pub policy: PolicyConfig,
    /// Most keys per key-service request.
    pub max_keys_per_request: usize,
    /// License signing key.
    pub signing_key: SigningKeyPair,
    /// Trusted entitlement signers.
    pub entitlements: EntitlementVerifier,
    /// The admin credential (only its digest is kept).
    pub admin_token: zeroize::Zeroizing<String>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Metrics,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Compares two digests without an early exit.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl LicenseCore {
    /// Assembles the core.
    pub fn new(parts: CoreParts) -> Self {
        Self {
            store: parts.store,
            catalog: parts.catalog,
            policy: parts.policy,
            max_keys_per_request: parts.max_keys_per_request,
            signing_key: parts.signing_key,
            entitlements: parts.entitlements,
            admin_digest: digest(parts.admin_token.as_bytes()),
            clock: parts.clock,
            metrics: parts.metrics,
        }
    }

    /// The time source.
    pub fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    /// The license signing key's public half.
    pub fn license_public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The license policy.
    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    fn session_expiry(&self, now: UnixSeconds) -> UnixSeconds {
        now.plus(u64::from(self.policy.renewal_interval_s))
            .plus(u64::from(self.policy.renewal_grace_s))
    }

    /// The key periods of a request, checked against the lookahead.
    fn key_periods(
        &self,
        title: &TitleConfig,
        range: Option<&pb::KeyPeriodRange>,
        now: UnixSeconds,
    ) -> Result<std::ops::RangeInclusive<u32>, Denial> {
        let current = title.current_period(now);
        let Some(range) = range else {
            return Ok(current..=current);
        };
        let out = |why: String| Err(Denial::KeyPeriodsOutOfRange(why));
        if range.count == 0 {
            return out("count is 0".into());
        }
        if range.count > self.policy.max_periods_per_request {
            return out(format!(
                "{} periods asked, at most {} per request",
                range.count, self.policy.max_periods_per_request
            ));
        }
        let Some(last) = range.first.checked_add(range.count - 1) else {
            return out("range overflows".into());
        };
        let horizon = current.saturating_add(self.policy.key_period_lookahead);
        if last > horizon {
            return out(format!(
                "period {last} is beyond the lookahead (current {current}, at most {horizon})"
            ));
        }
        Ok(range.first..=last)
    }

    /// AcquireLicense.
    pub async fn acquire(
        &self,
        req: pb::AcquireLicenseRequest,
    ) -> Result<pb::LicenseResponse, Denial> {
        let now = self.clock.now();
        let entitlement = self.entitlements.verify(&req.entitlement, now)?;
        let title = self.catalog.get(&req.title).ok_or(Denial::UnknownTitle)?;
        if !entitlement.allows_title(&title.id) {
            return Err(Denial::TitleNotEntitled);
        }
        let peer_key =
            verifying_key_from_slice(&req.peer_public_key).map_err(|_| Denial::InvalidPeerKey)?;
        if peer_key.is_weak() {
            return Err(Denial::InvalidPeerKey);
        }
        if req.client_hpke_public_key.len() != X25519_KEY_LEN {
            return Err(Denial::InvalidClientKey(WrapError::InvalidPublicKey));
        }
        let periods = self.key_periods(title, req.key_periods.as_ref(), now)?;
        if req.renditions.len() > MAX_REQUESTED_RENDITIONS {
            return Err(Denial::InvalidArgument("too many renditions".into()));
        }
        if req.region.len() > MAX_HINT_LEN || req.isp.len() > MAX_HINT_LEN {
            return Err(Denial::InvalidArgument(
                "region or isp hint too long".into(),
            ));
        }
        let renditions: Vec<String> = title
            .allowed_renditions(&entitlement, &req.renditions)
            .into_iter()
            .map(|r| r.name.clone())
            .collect();
        if renditions.is_empty() {
            return Err(Denial::NoAllowedRendition);
        }
        let limit = entitlement
            .max_concurrent_streams
            .min(self.policy.max_concurrent_streams_cap);

        let session_id = SessionId::random().map_err(|e| Denial::Internal(e.to_string()))?;
        let record = SessionRecord {
            session_id,
            account: entitlement.account.clone(),
            title: title.id.clone(),
            renditions,
            client_hpke_key: req.client_hpke_public_key.clone(),
            peer_key: req.peer_public_key.clone(),
            region: req.region.clone(),
            isp: req.isp.clone(),
            renewal_seq: 0,
            expires_at: self.session_expiry(now),
            entitlement_expires_at: entitlement.expires_at,
        };
        // Wrap now if every key exists already (the usual case): that also
        // refuses low-order client keys before anything is written.
        // Otherwise check the client key with a trial seal; the missing keys
        // are created only once the session is admitted.
        let wanted = wanted_keys(title, &record.renditions, &periods);
        let prewrapped = match self.store.known_keys(&title.id, &wanted).await? {
            Some(keys) => Some(wrap_all(&record, &keys)?),
            None => {
                check_client_key(&req.client_hpke_public_key)?;
                None
            }
        };
        let admission = self
            .store
            .admit_session(NewSession {
                record: &record,
                max_streams: limit,
                now,
                replay_horizon: replay_horizon(&entitlement, self.policy.max_clock_skew_s),
            })
            .await?;
        match admission {
            Admission::Admitted => {
                tracing::info!(
                    session = %session_id,
                    account = %record.account,
                    title = %record.title,
                    "session admitted"
                );
            }
            Admission::Replay => return Err(Denial::Replay),
            Admission::LimitReached => return Err(Denial::ConcurrencyLimit(limit)),
        }
        match self
            .issue(title, &record, periods, 0, now, prewrapped)
            .await
        {
            Ok(response) => {
                self.metrics.licenses_issued.inc();
                Ok(response)
            }
            Err(denial) => {
                // The slot must not stay taken by a session that never got
                // its license.
                if let Err(e) = self.store.release_session(&session_id, u64::MAX, now).await {
                    tracing::warn!(session = %session_id, error = %e, "could not free the slot of a failed acquisition");
                }
                Err(denial)
            }
        }
    }

    /// Fetches (creating if needed) the session's keys for `periods` and
    /// wraps them to the session (unless `prewrapped`), then signs the
    /// license and a fresh token.
    async fn issue(
        &self,
        title: &TitleConfig,
        session: &SessionRecord,
        periods: std::ops::RangeInclusive<u32>,
        renewal_sequence: u64,
        now: UnixSeconds,
        prewrapped: Option<Vec<pb::WrappedKey>>,
    ) -> Result<pb::LicenseResponse, Denial> {
        let wrapped = match prewrapped {
            Some(wrapped) => wrapped,
            None => {
                let wanted = wanted_keys(title, &session.renditions, &periods);
                let keys = self
                    .store
                    .get_or_create_keys(&title.id, &wanted, now)
                    .await?;
                wrap_all(session, &keys)?
            }
        };
        let expires_at = self.session_expiry(now);
        let peer_key =
            verifying_key_from_slice(&session.peer_key).map_err(|_| Denial::InvalidPeerKey)?;
        let token = SessionToken {
            session_id: session.session_id,
            account: session.account.clone(),
            title: session.title.clone(),
            renditions: session.renditions.clone(),
            peer_key,
            region: session.region.clone(),
            isp: session.isp.clone(),
            not_before: now,
            expires_at,
        }
        .sign(&self.signing_key);
        let body = pb::LicenseBody {
            session_id: session.session_id.0.to_vec(),
            title: session.title.clone(),
            policy: Some(pb::LicensePolicy {
                issued_at: now.0,
                expires_at: expires_at.0,
                renewal_interval_s: self.policy.renewal_interval_s,
                renewal_grace_s: self.policy.renewal_grace_s,
                renditions: session.renditions.clone(),
                can_persist: self.policy.can_persist,
            }),
            keys: wrapped,
            session_token: token,
            renewal_sequence,
        };
        Ok(pb::LicenseResponse {
            license: Some(loaves_proto::license::sign(&self.signing_key, &body)),
        })
    }

    /// Checks a signed renewal / release request: its body, its session and
    /// its signature by the session's peer key.
    async fn authenticated_session(
        &self,
        envelope: Option<pb::Signed>,
    ) -> Result<(pb::RenewRequestBody, SessionRecord), Denial> {
        let envelope =
            envelope.ok_or_else(|| Denial::InvalidArgument("`request` is missing".into()))?;
        let body = pb::RenewRequestBody::decode(envelope.body.as_slice())
            .map_err(|e| Denial::InvalidArgument(format!("malformed renewal body: {e}")))?;
        let session_id = SessionId::from_slice(&body.session_id)
            .ok_or_else(|| Denial::InvalidArgument("session_id must be 16 bytes".into()))?;
        let session = self
            .store
            .session(&session_id)
            .await?
            .ok_or(Denial::UnknownSession)?;
        let peer_key =
            verifying_key_from_slice(&session.peer_key).map_err(|_| Denial::InvalidPeerKey)?;
        signed::verify_with_key(&peer_key, Purpose::RenewRequest, &envelope)
            .map_err(|_| Denial::BadRequestSignature)?;
        Ok((body, session))
    }

    /// RenewLicense.
    pub async fn renew(&self, req: pb::RenewLicenseRequest) -> Result<pb::LicenseResponse, Denial> {
        let (body, session) = self.authenticated_session(req.request).await?;
        let now = self.clock.now();
        if session.expires_at < now {
            return Err(Denial::SessionOver);
        }
        if now > session.entitlement_expires_at {
            return Err(Denial::EntitlementLapsed);
        }
        let title = self
            .catalog
            .get(&session.title)
            .ok_or(Denial::UnknownTitle)?;
        let periods = self.key_periods(title, body.key_periods.as_ref(), now)?;
        let update = self
            .store
            .renew_session(
                &session.session_id,
                body.renewal_sequence,
                now,
                self.session_expiry(now),
            )
            .await?;
        session_update(update)?;
        let response = self
            .issue(title, &session, periods, body.renewal_sequence, now, None)
            .await?;
        self.metrics.renewals.inc();
        tracing::debug!(session = %session.session_id, seq = body.renewal_sequence, "session renewed");
        Ok(response)
    }

    /// ReleaseSession.
    pub async fn release(
        &self,
        req: pb::ReleaseSessionRequest,
    ) -> Result<pb::ReleaseSessionResponse, Denial> {
        let (body, session) = self.authenticated_session(req.request).await?;
        let now = self.clock.now();
        let update = self
            .store
            .release_session(&session.session_id, body.renewal_sequence, now)
            .await?;
        session_update(update)?;
        self.metrics.releases.inc();
        tracing::info!(session = %session.session_id, "session released");
        Ok(pb::ReleaseSessionResponse {})
    }

    /// Whether `authorization` metadata carries the admin credential.
    pub fn check_admin(&self, authorization: Option<&str>) -> Result<(), Denial> {
        let secret = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(Denial::AdminUnauthenticated)?;
        if digests_equal(&digest(secret.trim().as_bytes()), &self.admin_digest) {
            Ok(())
        } else {
            Err(Denial::AdminUnauthenticated)
        }
    }

    /// GetContentKeys (the caller checked the admin credential).
    pub async fn content_keys(
        &self,
        req: pb::GetContentKeysRequest,
    ) -> Result<pb::GetContentKeysResponse, Denial> {
        let title = self.catalog.get(&req.title).ok_or(Denial::UnknownTitle)?;
        if req.keys.is_empty() {
            return Err(Denial::InvalidArgument("no keys requested".into()));
        }
        if req.keys.len() > self.max_keys_per_request {
            return Err(Denial::InvalidArgument(format!(
                "{} keys requested, at most {} per request",
                req.keys.len(),
                self.max_keys_per_request
            )));
        }
        if req
            .keys
            .iter()
            .any(|k| !title.has_track_type(&k.track_type))
        {
            return Err(Denial::UnknownTrackType);
        }
        let wanted: Vec<(&str, u32)> = req
            .keys
            .iter()
            .map(|k| (k.track_type.as_str(), k.key_period))
            .collect();
        let now = self.clock.now();
        let keys = self
            .store
            .get_or_create_keys(&title.id, &wanted, now)
            .await?;
        // Answer in request order (duplicates repeated), from the stored set.
        let find = |t: &str, p: u32| -> Result<&StoredKey, Denial> {
            keys.iter()
                .find(|k| k.track_type == t && k.key_period == p)
                .ok_or_else(|| Denial::Internal("a requested key is missing".into()))
        };
        let mut out = Vec::with_capacity(req.keys.len());
        for (t, p) in wanted {
            let key = find(t, p)?;
            out.push(pb::ContentKey {
                track_type: key.track_type.clone(),
                key_period: key.key_period,
                key_id: key.key_id.0.to_vec(),
                key: key.key.as_bytes().to_vec(),
            });
        }
        self.metrics.keys_served.inc_by(out.len() as u64);
        Ok(pb::GetContentKeysResponse { keys: out })
    }
}

/// Every (track type, period) a session's renditions need.
fn wanted_keys<'a>(
    title: &'a TitleConfig,
    renditions: &[String],
    periods: &std::ops::RangeInclusive<u32>,
) -> Vec<(&'a str, u32)> {
    title
        .track_types_of(renditions)
        .into_iter()
        .flat_map(|t| periods.clone().map(move |p| (t, p)))
        .collect()
}

/// Seals every key to the session with HPKE.
fn wrap_all(session: &SessionRecord, keys: &[StoredKey]) -> Result<Vec<pb::WrappedKey>, Denial> {
    keys.iter()
        .map(|key| {
            keywrap::wrap(
                &session.client_hpke_key,
                &session.session_id,
                key.key_id,
                &key.key,
            )
            .map(|w| w.to_pb(&key.track_type, key.key_period))
            .map_err(Denial::InvalidClientKey)
        })
        .collect()
}

fn replay_horizon(entitlement: &Entitlement, skew_s: u64) -> UnixSeconds {
    entitlement.expires_at.plus(skew_s)
}

fn session_update(update: SessionUpdate) -> Result<(), Denial> {
    match update {
        SessionUpdate::Updated => Ok(()),
        SessionUpdate::Unknown => Err(Denial::UnknownSession),
        SessionUpdate::Over => Err(Denial::SessionOver),
        SessionUpdate::Replay => Err(Denial::Replay),
    }
}

/// Refuses client HPKE keys that are not 32 bytes or are low-order points,
/// by sealing a dummy key to them exactly as a real license would.
fn check_client_key(key: &[u8]) -> Result<(), Denial> {
    if key.len() != X25519_KEY_LEN {
        return Err(Denial::InvalidClientKey(WrapError::InvalidPublicKey));
    }
    keywrap::wrap(
        key,
        &SessionId([0; 16]),
        ContentKeyId([0; 16]),
        &ContentKey::new([0; 16]),
    )
    .map(|_| ())
    .map_err(Denial::InvalidClientKey)
}

/// Bounded admission shared by both gRPC services: at most `permits`
/// requests are processed at once; the others wait up to `timeout`, then
/// get `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone)]
pub struct AdmissionGate {
    semaphore: Arc<Semaphore>,
    timeout: Duration,
}

impl AdmissionGate {
    /// A gate of `permits` slots.
    pub fn new(permits: usize, timeout: Duration) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(permits)),
            timeout,
        }
    }

    /// Refuses every request still waiting (shutdown).
    pub fn close(&self) {
        self.semaphore.close();
    }
}

async fn serve<T>(
    metrics: &Metrics,
    gate: &AdmissionGate,
    method: &'static str,
    work: impl Future<Output = Result<T, Denial>>,
) -> Result<Response<T>, Status> {
    let timer = metrics.latency(method).start_timer();
    let result = match tokio::time::timeout(gate.timeout, gate.semaphore.acquire()).await {
        Ok(Ok(_permit)) => {
            metrics.in_flight.inc();
            let result = work.await;
            metrics.in_flight.dec();
            result
        }
        // Timed out waiting, or the gate was closed for shutdown.
        _ => Err(Denial::Overloaded),
    };
    timer.observe_duration();
    result.map(Response::new).map_err(|denial| {
        metrics.deny(&denial);
        match &denial {
            Denial::Store(e) => tracing::warn!(method, error = %e, "store failure"),
            Denial::Internal(e) => tracing::error!(method, error = %e, "internal failure"),
            other => tracing::info!(method, reason = other.reason(), "request refused"),
        }
        denial.to_status()
    })
}

/// The `LicenseService` gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcLicenseService {
    core: Arc<LicenseCore>,
    gate: AdmissionGate,
}

impl GrpcLicenseService {
    /// The service over a shared core and admission gate.
    pub fn new(core: Arc<LicenseCore>, gate: AdmissionGate) -> Self {
        Self { core, gate }
    }
}

#[tonic::async_trait]
impl LicenseService for GrpcLicenseService {
    async fn acquire_license(
        &self,
        request: Request<pb::AcquireLicenseRequest>,
    ) -> Result<Response<pb::LicenseResponse>, Status> {
        let core = &self.core;
        serve(
            &core.metrics,
            &self.gate,
            "acquire",
            core.acquire(request.into_inner()),
        )
        .await
    }

    async fn renew_license(
        &self,
        request: Request<pb::RenewLicenseRequest>,
    ) -> Result<Response<pb::LicenseResponse>, Status> {
        let core = &self.core;
        serve(
            &core.metrics,
            &self.gate,
            "renew",
            core.renew(request.into_inner()),
        )
        .await
    }

    async fn release_session(
        &self,
        request: Request<pb::ReleaseSessionRequest>,
    ) -> Result<Response<pb::ReleaseSessionResponse>, Status> {
        let core = &self.core;
        serve(
            &core.metrics,
            &self.gate,
            "release",
            core.release(request.into_inner()),
        )
        .await
    }
}

/// The `KeyService` gRPC service (packager-facing, admin credential).
#[derive(Debug, Clone)]
pub struct GrpcKeyService {
    core: Arc<LicenseCore>,
    gate: AdmissionGate,
}

impl GrpcKeyService {
    /// The service over a shared core and admission gate.
    pub fn new(core: Arc<LicenseCore>, gate: AdmissionGate) -> Self {
        Self { core, gate }
    }
}

#[tonic::async_trait]
impl KeyService for GrpcKeyService {
    async fn get_content_keys(
        &self,
        request: Request<pb::GetContentKeysRequest>,
    ) -> Result<Response<pb::GetContentKeysResponse>, Status> {
        let core = &self.core;
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let work = async {
            core.check_admin(authorization.as_deref())?;
            core.content_keys(request.into_inner()).await
        };
        serve(&core.metrics, &self.gate, "get_content_keys", work).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn a_full_gate_refuses_after_its_timeout_and_counts_it() {
        let metrics = Metrics::new().unwrap();
        let gate = AdmissionGate::new(1, Duration::from_millis(20));
        let held = gate.semaphore.clone().acquire_owned().await.unwrap();
        let status = serve(&metrics, &gate, "acquire", async { Ok(()) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(metrics.denials.with_label_values(&["overloaded"]).get(), 1);
        drop(held);
        serve(&metrics, &gate, "acquire", async { Ok(()) })
            .await
            .unwrap();
        gate.close();
        let status = serve(&metrics, &gate, "acquire", async { Ok(()) })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "closed at shutdown"
        );
    }

    #[test]
    fn low_order_and_short_client_keys_are_refused() {
        assert!(matches!(
            check_client_key(&[0; 32]),
            Err(Denial::InvalidClientKey(WrapError::LowOrderPublicKey))
        ));
        assert!(matches!(
            check_client_key(&[9; 31]),
            Err(Denial::InvalidClientKey(WrapError::InvalidPublicKey))
        ));
        check_client_key(&[9; 32]).unwrap();
    }

    #[test]
    fn admin_digest_comparison() {
        let a = digest(b"secret");
        assert!(digests_equal(&a, &digest(b"secret")));
        assert!(!digests_equal(&a, &digest(b"secreT")));
    }
}
