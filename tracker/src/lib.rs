//! The Loaves tracker: introduces viewers of the same title and rendition to
//! each other and to the seeds, nearest first, and turns what viewers report
//! into offload figures.
//!
//! - [`swarm`]: the swarm book, a pure state machine (no I/O, no clock).
//! - [`stats`]: clamping and aggregation of viewers' counters (pure).
//! - [`server`]: the QUIC front end (tokio + quinn) around them.
//! - [`http`]: `/metrics`, `/healthz`, `/dashboard` and its JSON.
//! - [`config`]: the service configuration (TOML + environment + flags).

pub mod client;
pub mod config;
pub mod credential;
pub mod holdings;
pub mod http;
pub mod metrics;
pub mod rng;
pub mod server;
pub mod stats;
pub mod swarm;
pub mod udp;
pub mod wire;
