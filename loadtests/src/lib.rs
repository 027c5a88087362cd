//! Load tests of Loaves: the report format and the discrete-event simulator
//! (the demo and the real-process swarm scenarios come next).

pub mod report;
pub mod sim;
