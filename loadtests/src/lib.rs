//! Load tests of Loaves: the demo (the whole platform and a crowd of
//! viewers in one process), the report format, and the discrete-event
//! simulator (the real-process swarm scenarios come next).

pub mod demo;
pub mod encoder;
pub mod platform;
pub mod report;
pub mod sim;
