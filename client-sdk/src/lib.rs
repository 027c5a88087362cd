#![warn(missing_docs)]
//! The Loaves client SDK: what a player app embeds to receive a title from
//! peers, seeds and the CDN, with DRM intact.
//!
//! - [`Loaves`] / [`Session`] ([`session`]): the app-facing API — a builder,
//!   `open(title, entitlement)`, the local player URL, events, stats, close.
//! - [`scheduler`]: the sans-I/O heart, deciding for every segment whether
//!   it comes from a peer, a seed or the CDN so that it meets its deadline.
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
mod endpoint;
pub mod license;
mod peers;
pub mod player;
pub mod scheduler;
pub mod session;
pub mod store;
mod track;

pub use session::{
    Error, Event, Events, Loaves, LoavesBuilder, NetworkType, Options, Session, Stats, Upload,
};

/// Makes ring the process's TLS crypto provider (the HTTP client needs one);
/// harmless when the application already installed one.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
