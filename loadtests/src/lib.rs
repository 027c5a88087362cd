//! Load tests of Loaves: the demo (the whole platform and a crowd of
//! viewers in one process), the swarm scenarios (the platform's binaries
//! as processes, a crowd of SDK viewers, faults), the network lab (viewers
//! behind real NATs in network namespaces), the report format, and the
//! discrete-event simulator.

pub mod demo;
pub mod encoder;
pub mod lab;
pub mod platform;
pub mod scrape;
pub mod soak;
pub mod swarm;

/// The simulator and the report format, the `loaves-sim` crate (which
/// depends on the pure cores only).
pub use loaves_sim::{self as sim, report};
