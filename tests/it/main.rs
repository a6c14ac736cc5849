//! The integration test binary: real servers on loopback ports, real HTTP, real files.
mod harness;
