#![warn(missing_docs)]
//! The Loaves client SDK: what a player app embeds to receive a title from
//! peers, seeds and the CDN, with DRM intact.
//!
//! ```no_run
//! # async fn demo(license_keys: loaves_client_sdk::Keyring,
//! #               origin_keys: loaves_client_sdk::Keyring,
//! #               entitlement: Vec<u8>) -> Result<(), loaves_client_sdk::Error> {
//! use loaves_client_sdk::Loaves;
//! let loaves = Loaves::builder()
//!     .license_server("https://license.example:8443", license_keys)
//!     .clearkey_url("https://license.example:8444/clearkey")
//!     .manifest_keys(origin_keys)
//!     .cdn_urls(["https://cdn.example/vod/"])
//!     .trackers(["tracker-0.example:7400"])
//!     .build()?;
//! let session = loaves.open("sample", entitlement).await?;
//! println!("point the player at {}", session.player_url());
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! - [`Loaves`] / [`Session`]: the app-facing API — a builder
//!   ([`LoavesBuilder`]), `open(title, entitlement)`, the local player URL,
//!   [`Events`] (a `Stream`), [`Stats`], `close`.
//! - [`scheduler`]: the sans-I/O heart (the `loaves-scheduler` crate,
//!   re-exported), deciding for every segment whether it comes from a peer,
//!   a seed or the CDN so that it meets its deadline.
//! - The driver around it: one task per rendition (`track`), the QUIC side
//!   (`peers`: upload server, peer connections, tracker announces), the
//!   local HTTP player endpoint (`endpoint`), the [`license`] client, the
//!   [`cdn`] client and the verified-segment [`store`].
//!
//! Every segment is verified against the origin's signed manifest before it
//! reaches the player, the store or another peer. VOD and live: a live
//! rendition's manifest is followed as it grows, every appended chunk
//! verified before any segment it lists is fetched or offered to the player.

pub mod cdn;
mod config;
mod credential;
mod endpoint;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod license;
mod live;
mod peers;
pub mod player;
mod session;
mod stats;
pub mod store;
mod track;

#[cfg(feature = "test-faults")]
pub use config::Faults;
pub use config::{DEFAULT_NAT_KEEPALIVE, LoavesBuilder, NetworkType, Upload};
pub use error::{ConfigError, Error, PresentationError};
pub use events::{EndReason, Event, Events};
pub use license::LicenseClientError;
pub use loaves_proto::keys::Keyring;
pub use loaves_proto::names::{NameError, RenditionName, Title};
pub use loaves_scheduler as scheduler;
pub use scheduler::{DropReason, Source};
pub use session::{Loaves, Session};
pub use stats::{NatType, Stats};

/// Makes ring the process's TLS crypto provider (the HTTP client needs one);
/// harmless when the application already installed one.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Locks a mutex, carrying on after a panic elsewhere (the data are counters
/// and caches, consistent after every single operation).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
