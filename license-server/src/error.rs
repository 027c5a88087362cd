//! Why a request was refused, each cause with its gRPC status code and a
//! stable metrics label.

use loaves_proto::entitlement::EntitlementError;
use loaves_proto::keywrap::WrapError;
use tonic::Code;

use crate::store::StoreError;

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// A field is missing, has the wrong length or is not valid protobuf.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The entitlement was refused (malformed, forged, expired...).
    #[error("entitlement refused: {0}")]
    Entitlement(#[from] EntitlementError),
    /// The title is not in the catalog.
    #[error("unknown title")]
    UnknownTitle,
    /// The entitlement does not cover the title.
    #[error("the entitlement does not cover this title")]
    TitleNotEntitled,
    /// No rendition of the title is both requested and allowed.
    #[error("no rendition of this title is allowed for this entitlement")]
    NoAllowedRendition,
    /// The client's X25519 key is not 32 bytes or is a low-order point.
    #[error("invalid client HPKE public key: {0}")]
    InvalidClientKey(WrapError),
    /// The client's peer key is not a valid Ed25519 public key.
    #[error("invalid peer public key")]
    InvalidPeerKey,
    /// The key-period range is empty, too long or beyond the lookahead.
    #[error("key periods out of range: {0}")]
    KeyPeriodsOutOfRange(String),
    /// A track type the title does not have.
    #[error("unknown track type for this title")]
    UnknownTrackType,
    /// The request repeats an earlier one (same client key, or a renewal
    /// sequence that did not increase).
    #[error("replayed request")]
    Replay,
    /// The account already holds its maximum of concurrent sessions.
    #[error("concurrent stream limit reached ({0} sessions)")]
    ConcurrencyLimit(u32),
    /// No such session.
    #[error("unknown session")]
    UnknownSession,
    /// The session was released or missed its renewal grace period.
    #[error("session is over")]
    SessionOver,
    /// The renewal or release is not signed by the session's peer key.
    #[error("request signature refused")]
    BadRequestSignature,
    /// The entitlement behind the session has expired: acquire again.
    #[error("the entitlement behind this session has expired")]
    EntitlementLapsed,
    /// Missing or wrong admin credential.
    #[error("missing or invalid admin credential")]
    AdminUnauthenticated,
    /// Too many requests in flight; try again later.
    #[error("server overloaded, try again")]
    Overloaded,
    /// The store failed.
    #[error("store unavailable")]
    Store(#[from] StoreError),
    /// Signing or randomness failed.
    #[error("internal error")]
    Internal(String),
}

impl Denial {
    /// The gRPC status code.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_)
            | Self::InvalidClientKey(_)
            | Self::InvalidPeerKey
            | Self::UnknownTrackType => Code::InvalidArgument,
            Self::Entitlement(e) => match e {
                EntitlementError::TooLarge { .. }
                | EntitlementError::Malformed(_)
                | EntitlementError::InvalidField(_) => Code::InvalidArgument,
                EntitlementError::Signature(_)
                | EntitlementError::NotYetValid { .. }
                | EntitlementError::Expired { .. } => Code::Unauthenticated,
            },
            Self::UnknownTitle | Self::UnknownSession => Code::NotFound,
            Self::TitleNotEntitled | Self::NoAllowedRendition | Self::EntitlementLapsed => {
                Code::PermissionDenied
            }
            Self::KeyPeriodsOutOfRange(_) => Code::OutOfRange,
            Self::Replay => Code::AlreadyExists,
            Self::ConcurrencyLimit(_) | Self::Overloaded => Code::ResourceExhausted,
            Self::SessionOver => Code::FailedPrecondition,
            Self::BadRequestSignature | Self::AdminUnauthenticated => Code::Unauthenticated,
            Self::Store(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// A short, stable label for the `denials_total{reason}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Entitlement(e) => match e.reason() {
                "too_large" => "entitlement_too_large",
                "malformed" => "entitlement_malformed",
                "unknown_signer" => "entitlement_unknown_signer",
                "bad_signature" => "entitlement_bad_signature",
                "invalid_field" => "entitlement_invalid",
                "not_yet_valid" => "entitlement_not_yet_valid",
                _ => "entitlement_expired",
            },
            Self::UnknownTitle => "unknown_title",
            Self::TitleNotEntitled => "title_not_entitled",
            Self::NoAllowedRendition => "rendition_not_allowed",
            Self::InvalidClientKey(WrapError::LowOrderPublicKey) => "low_order_client_key",
            Self::InvalidClientKey(_) => "invalid_client_key",
            Self::InvalidPeerKey => "invalid_peer_key",
            Self::KeyPeriodsOutOfRange(_) => "key_periods_out_of_range",
            Self::UnknownTrackType => "unknown_track_type",
            Self::Replay => "replay",
            Self::ConcurrencyLimit(_) => "concurrency_limit",
            Self::UnknownSession => "unknown_session",
            Self::SessionOver => "session_over",
            Self::BadRequestSignature => "bad_request_signature",
            Self::EntitlementLapsed => "entitlement_lapsed",
            Self::AdminUnauthenticated => "admin_unauthenticated",
            Self::Overloaded => "overloaded",
            Self::Store(_) => "store_error",
            Self::Internal(_) => "internal",
        }
    }

    /// The gRPC status sent to the client. Store and internal details stay
    /// in the server's log.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), self.to_string())
    }
}
