//! The tracker's pure core, like `quinn-proto` to `quinn`: no sockets, no
//! clock (every call takes `now`), no async runtime. The tracker's QUIC
//! driver, the simulator, the tests and the benchmarks all run this code.
//!
//! - [`swarm`]: the swarm book: who is in which swarm, and whom to
//!   introduce to whom (locality first, then holdings and spare upload).
//! - [`holdings`]: a peer's live window or VOD bitmap, bounded.
//! - [`stats`]: clamping and aggregation of viewers' counters.
//! - [`wire`]: the reply encoding (ordinary protobuf, built from bytes
//!   encoded once per announce).
//! - [`rng`]: the seeded generator peer choice draws from.

pub mod holdings;
pub mod rng;
pub mod stats;
pub mod swarm;
pub mod wire;

pub use swarm::{AnnounceOutcome, CoreError, PeerKey, Requester, SwarmBook, SwarmConfig};

/// The defaults of a settings struct, from its `#[config(default = ...)]`
/// attributes (the tracker's `print-config --commented` shows the same
/// ones). Its `Default` calls this, so they are written once. Plain
/// `confique` here rather than `loaves-service`: this crate stays free of
/// I/O and runtime dependencies.
///
/// # Panics
///
/// If a setting that is not an `Option` lacks a default: a programming
/// error, caught by the tracker's configuration tests.
pub(crate) fn config_defaults<C: confique::Config>() -> C {
    use confique::Layer;
    match C::from_layer(C::Layer::default_values()) {
        Ok(config) => config,
        Err(e) => panic!(
            "the built-in defaults of {} are incomplete: {e}",
            C::META.name
        ),
    }
}
