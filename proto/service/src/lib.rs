//! What the Loaves server binaries (license server, tracker, edge seed)
//! share, so that each does it the same way:
//!
//! - [`config`]: one configuration loader. Defaults, then the TOML file,
//!   then the environment, then flags, each layer overriding the one before.
//!   Every setting has one environment name derived from its place in the
//!   file (`LOAVES_<BINARY>_<FIELD>`, `LOAVES_<BINARY>_<SECTION>__<FIELD>`),
//!   and the commented TOML reference (`print-config --commented`) is
//!   generated from the configuration structs' doc comments.
//! - [`secret`]: secrets read from files, refused when the file is readable
//!   by group or others.
//! - [`telemetry`]: the tracing subscriber.
//! - [`signal`]: the shutdown signal (SIGTERM or Ctrl-C).

pub mod config;
mod env;
pub mod secret;
pub mod signal;
pub mod telemetry;

/// The configuration derive and its traits, re-exported so that the
/// binaries name one version.
pub use confique;
pub use confique::Config;
