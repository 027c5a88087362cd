//! Why a request was refused, each cause with its gRPC status code and a
//! stable metrics label.

use loaves_proto::entitlement::EntitlementError;
use loaves_proto::keywrap::WrapError;
use tonic::Code;

use crate::store::StoreError;

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// A field is missing, has the wrong length or is out of its bounds.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The request message is not valid protobuf for its method (checked
    /// before tonic decodes it: [`crate::precheck`]).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request message is larger than `limits.max_request_bytes`
    /// (refused from its length prefix, before it is read).
    #[error("request message of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The client reset the stream while sending its request.
    #[error("the request was aborted: {0}")]
    RequestAborted(String),
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
            | Self::Malformed(_)
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
            Self::ConcurrencyLimit(_) | Self::Overloaded | Self::TooLarge { .. } => {
                Code::ResourceExhausted
            }
            Self::RequestAborted(_) => Code::Cancelled,
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
            Self::Malformed(_) => "malformed_request",
            Self::TooLarge { .. } => "request_too_large",
            Self::RequestAborted(_) => "request_aborted",
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

#[cfg(test)]
mod tests {
    use loaves_proto::UnixSeconds;
    use loaves_proto::keys::KeyId;
    use loaves_proto::signed::SignatureError;

    use super::*;

    /// One of each refusal. The match below stops compiling when a variant
    /// is added, so that it is added here, and so to the documented table.
    fn every_denial() -> Vec<Denial> {
        let all = vec![
            Denial::InvalidArgument(String::new()),
            Denial::Malformed(String::new()),
            Denial::TooLarge { size: 2, limit: 1 },
            Denial::RequestAborted(String::new()),
            Denial::Entitlement(EntitlementError::TooLarge { len: 2, max: 1 }),
            Denial::Entitlement(EntitlementError::Malformed(String::new())),
            Denial::Entitlement(EntitlementError::InvalidField("account")),
            Denial::Entitlement(EntitlementError::Signature(SignatureError::UnknownSigner(
                KeyId([0; 8]),
            ))),
            Denial::Entitlement(EntitlementError::Signature(SignatureError::BadSignature)),
            Denial::Entitlement(EntitlementError::NotYetValid {
                issued_at: UnixSeconds(2),
                now: UnixSeconds(1),
            }),
            Denial::Entitlement(EntitlementError::Expired {
                expires_at: UnixSeconds(1),
                now: UnixSeconds(2),
            }),
            Denial::UnknownTitle,
            Denial::TitleNotEntitled,
            Denial::NoAllowedRendition,
            Denial::InvalidClientKey(WrapError::InvalidPublicKey),
            Denial::InvalidClientKey(WrapError::LowOrderPublicKey),
            Denial::InvalidPeerKey,
            Denial::KeyPeriodsOutOfRange(String::new()),
            Denial::UnknownTrackType,
            Denial::Replay,
            Denial::ConcurrencyLimit(1),
            Denial::UnknownSession,
            Denial::SessionOver,
            Denial::BadRequestSignature,
            Denial::EntitlementLapsed,
            Denial::AdminUnauthenticated,
            Denial::Overloaded,
            Denial::Store(StoreError::UnsupportedUrl),
            Denial::Internal(String::new()),
        ];
        for denial in &all {
            match denial {
                Denial::InvalidArgument(_)
                | Denial::Malformed(_)
                | Denial::TooLarge { .. }
                | Denial::RequestAborted(_)
                | Denial::Entitlement(_)
                | Denial::UnknownTitle
                | Denial::TitleNotEntitled
                | Denial::NoAllowedRendition
                | Denial::InvalidClientKey(_)
                | Denial::InvalidPeerKey
                | Denial::KeyPeriodsOutOfRange(_)
                | Denial::UnknownTrackType
                | Denial::Replay
                | Denial::ConcurrencyLimit(_)
                | Denial::UnknownSession
                | Denial::SessionOver
                | Denial::BadRequestSignature
                | Denial::EntitlementLapsed
                | Denial::AdminUnauthenticated
                | Denial::Overloaded
                | Denial::Store(_)
                | Denial::Internal(_) => {}
            }
        }
        all
    }

    /// The gRPC name of a code, as gRPC's table and the docs write it.
    fn grpc_name(code: Code) -> String {
        let mut name = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
        name
    }

    #[test]
    fn the_operations_table_lists_every_refusal_with_its_status() {
        let doc = include_str!("../../docs/operations.md");
        let mut reasons = std::collections::HashSet::new();
        for denial in every_denial() {
            assert!(reasons.insert(denial.reason()), "{} twice", denial.reason());
            let row = format!("| `{}` | `{}` |", grpc_name(denial.code()), denial.reason());
            assert!(
                doc.contains(&row),
                "docs/operations.md lacks the row {row} ({denial})"
            );
        }
        assert_eq!(grpc_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn decoding_refusals_have_grpcs_statuses() {
        assert_eq!(
            Denial::Malformed(String::new()).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Denial::TooLarge { size: 2, limit: 1 }.code(),
            Code::ResourceExhausted
        );
    }
}
