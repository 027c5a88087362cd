//! The QUIC side of the Loaves contracts: what viewers, seeds and the
//! tracker say to each other over quinn.
//!
//! - [`identity`]: self-signed Ed25519 certificates and mutual TLS that
//!   binds a connection to the key a session token names.
//! - [`peerwire`]: the peer wire protocol (hello and credential checks,
//!   segment requests, HAVE streams, egress limiter), written once for
//!   seeds and the SDK.
//! - [`tracker_client`]: the tracker's session stream (hello, then one
//!   request after another).
//! - [`framing`]: length-delimited frames on async streams, every read and
//!   write with a timeout.
//! - [`bind_endpoint`]: the one way to open a QUIC endpoint.
//!
//! Time that decides anything (credential validity) is an argument
//! ([`loaves_proto::UnixSeconds`]); the clock read here is tokio's, for
//! timeouts only.

mod endpoint;
pub mod framing;
pub mod identity;
pub mod peerwire;
pub mod tracker_client;

pub use endpoint::{SOCKET_BUFFER_BYTES, bind_endpoint, bind_endpoint_with_buffers, bind_udp};
