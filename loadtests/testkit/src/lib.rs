//! Test support shared by the Loaves crates' test suites (a dev-dependency
//! only; never published).
//!
//! - [`wait`]: wait for a condition, bounded, instead of sleeping a fixed time.
//! - [`http`]: a small HTTP/1.1 client that writes exactly the request asked
//!   for, over a real socket, every read bounded.
//! - [`metrics`]: the samples of a Prometheus text exposition.
//! - [`process`]: a child's log lines as they come, addresses it logs
//!   (servers bind port 0 and say where they listen), SIGTERM and a bounded
//!   wait for the exit.
//! - [`files`]: files readable by their owner only, as secret files must be.
//! - [`text`]: what a program printed must mention.
//! - [`keys`]: fixed signing keys, so that a failing run can be repeated.
//! - [`fixtures`]: protocol messages the tests of several crates send.
//! - `grpc` (feature `grpc`): the standard health check of a tonic server.
//! - `tls` (feature `tls`): a TLS client trusting a test server's
//!   certificate.
//!
//! Every helper panics with a message naming what it waited for: these are
//! assertions of the tests that call them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod files;
pub mod fixtures;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod process;
pub mod text;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wait;
