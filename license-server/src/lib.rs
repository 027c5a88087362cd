//! The Loaves license server: the only component that holds content keys in
//! the clear.
//!
//! - Viewers' players call the `LicenseService` (gRPC over TLS): an
//!   entitlement from the streamer's sign-in system plus an ephemeral X25519
//!   key buy a playback session — its content keys wrapped to that key with
//!   HPKE, a signed policy and a session token for tracker, seeds and peers.
//!   Sessions renew by heartbeat and end on release or after their grace
//!   period, freeing their slot of the account's concurrent-stream limit.
//! - The packager calls the `KeyService` (admin credential) to get, creating
//!   on first use, the key of each (title, track type, key period).
//! - Browsers get the same keys from a W3C ClearKey endpoint authorized by the
//!   session token.
//!
//! Code map: [`config`] (TOML + defaults), [`setup`] (key material),
//! [`store`] (durable keys and sessions, SQLite or PostgreSQL), [`seal`] (keys
//! at rest), [`catalog`] (titles), [`service`] (the request logic and gRPC),
//! [`precheck`] (request size and protobuf checks before tonic decodes),
//! [`http`] (metrics, health, ClearKey), [`server`] (wiring and shutdown),
//! [`clock`] (time as an input).

pub mod catalog;
pub mod clock;
pub mod config;
pub mod error;
mod files;
pub mod http;
pub mod metrics;
pub mod precheck;
pub mod seal;
pub mod server;
pub mod service;
pub mod setup;
pub mod store;
pub mod tls;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use error::Denial;
pub use server::{RunningServer, ServerError, start, start_with};
pub use store::Store;
