//! The license server's gRPC services, `loaves.v1.LicenseService` and
//! `loaves.v1.KeyService`: tonic client and server stubs whose messages are
//! [`loaves_proto::pb`]'s.
//!
//! A crate of its own so that the contracts stay free of tonic and its
//! async runtime: only the license server and its clients (the SDK, the
//! packager) depend on this.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

tonic::include_proto!("loaves.v1");
