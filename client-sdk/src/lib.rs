//! The Loaves client SDK.
//!
//! So far this crate holds the heart of the SDK, the [`scheduler`]: a
//! sans-I/O state machine that decides, for every segment, whether it comes
//! from a peer, a seed or the CDN, so that each segment meets its playback
//! deadline while as many bytes as possible come from peers. The tokio
//! driver, the peer wire, license handling and the local player endpoint are
//! built around it in later steps.

pub mod cdn;
pub mod license;
pub mod scheduler;
pub mod store;

/// Makes ring the process's TLS crypto provider (the HTTP client needs one);
/// harmless when the application already installed one.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
