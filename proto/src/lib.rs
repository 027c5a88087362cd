//! The contracts between Loaves processes.
//!
//! Everything two processes must agree on lives here, and nothing else:
//!
//! - [`pb`]: the protobuf messages generated from `schemas/` (the gRPC
//!   service stubs are the `loaves-grpc` crate's).
//! - [`framing`]: the length-delimited frame layout and its sans-I/O
//!   decoder, with a hard size limit (the async side is `loaves-wire`'s).
//! - [`keys`]: Ed25519 key pairs, key ids, keyrings, content keys — all key
//!   material zeroized on drop and redacted from `Debug`.
//! - [`signed`]: the domain-separated signature envelope every signed object uses.
//! - [`token`]: session tokens, verified offline by tracker, seeds and peers.
//! - [`manifest`]: signed segment manifests that grow by signed appends.
//! - [`keywrap`]: HPKE sealing of content keys to one session.
//! - [`license`]: signed licenses carrying wrapped keys and policy.
//! - [`keygen`]: reading and writing key files.
//! - [`shard`]: the rendezvous mapping of titles onto tracker shards.
//! - [`names`]: the one rule for title and rendition names.
//! - [`addresses`]: which addresses a viewer may announce, which are on a LAN.
//!
//! Time is always an input ([`UnixSeconds`]): nothing here reads a clock, so
//! callers (and the simulator) decide what "now" is. Nothing here does I/O
//! but the key files: no async runtime, no sockets (the QUIC side is
//! `loaves-wire`, CMAF and Common Encryption `loaves-cmaf`).

pub mod addresses;
pub mod entitlement;
pub mod framing;
pub mod keygen;
pub mod keys;
pub mod keywrap;
pub mod license;
pub mod manifest;
pub mod names;
pub mod shard;
pub mod signed;
pub mod token;

/// Generated protobuf messages (package `loaves.v1`).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/loaves.v1.rs"));

    impl std::fmt::Debug for ContentKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ContentKey")
                .field("track_type", &self.track_type)
                .field("key_period", &self.key_period)
                .field("key_id", &hex::encode(&self.key_id))
                .field("key", &"<redacted>")
                .finish()
        }
    }
}

/// ALPN of the peer wire protocol (viewers and seeds).
pub const ALPN_PEER: &[u8] = b"loaves-peer/1";
/// ALPN of the tracker protocol. Version 2: one session stream per
/// connection (version 1 opened a stream per request); a client of the
/// other version fails at the handshake, not at its first announce.
pub const ALPN_TRACKER: &[u8] = b"loaves-tracker/2";

/// A point in time as whole seconds since the Unix epoch.
///
/// Passed in by callers: the core never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixSeconds(pub u64);

impl UnixSeconds {
    /// The current wall-clock time, for drivers (never used by the core).
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(since_epoch.as_secs())
    }

    /// `self + seconds`, saturating.
    pub fn plus(self, seconds: u64) -> Self {
        Self(self.0.saturating_add(seconds))
    }
}

impl std::fmt::Display for UnixSeconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
