//! The tracker client, which lives in `loaves_wire::tracker_client` so that
//! the client SDK and the seeds can use it without depending on this crate;
//! re-exported here for the tracker's own tests and benchmarks.

pub use loaves_wire::tracker_client::*;
