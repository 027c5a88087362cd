//! The Loaves tracker: introduces viewers of the same title and rendition to
//! each other and to the seeds, nearest first, and turns what viewers report
//! into offload figures.
//!
//! - [`swarm`], [`stats`], [`holdings`], [`wire`]: the pure core, the
//!   `loaves-swarm` crate (re-exported here): the swarm book and the
//!   viewers' counters, no I/O, no clock.
//! - [`server`]: the QUIC front end (tokio + quinn) around them.
//! - [`http`]: `/metrics`, `/healthz`, `/dashboard` and its JSON.
//! - [`config`]: the service configuration (TOML + environment + flags).

pub mod client;
pub mod config;
pub mod credential;
pub mod http;
pub mod metrics;
pub mod server;

pub use loaves_swarm::{holdings, rng, stats, swarm, wire};
