//! Generates the protobuf and gRPC code from `schemas/` with protox, a pure-Rust
//! protobuf compiler, so a fresh machine needs no system `protoc`.

use std::path::Path;

const SCHEMAS: &[&str] = &[
    "loaves/v1/signed.proto",
    "loaves/v1/token.proto",
    "loaves/v1/manifest.proto",
    "loaves/v1/license.proto",
    "loaves/v1/tracker.proto",
    "loaves/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("schemas");
    for schema in SCHEMAS {
        println!("cargo:rerun-if-changed={}", root.join(schema).display());
    }
    let descriptors = protox::compile(SCHEMAS, [root])?;
    tonic_prost_build::configure()
        .build_transport(false)
        // Messages holding clear key material get a hand-written, redacting Debug.
        .skip_debug(["loaves.v1.ContentKey"])
        .compile_fds(descriptors)?;
    Ok(())
}
