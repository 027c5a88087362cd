//! Generates the gRPC service stubs from the contracts' schemas (protox: no
//! system `protoc`). The messages are `loaves_proto::pb`'s: only the
//! services are generated here.

use std::path::Path;

const SCHEMAS: &[&str] = &["loaves/v1/license.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("../schemas");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(SCHEMAS, [root])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .extern_path(".loaves.v1", "::loaves_proto::pb")
        .compile_fds(descriptors)?;
    Ok(())
}
