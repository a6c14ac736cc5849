//! The integration test binary: real servers on loopback ports, real HTTP, real files.
//! One file per feature; `harness` is the only place that knows how to start things.

mod auth;
mod batch;
mod bounds;
mod chaos;
mod cluster;
mod contract;
mod entries;
mod errors;
mod exhaustion;
mod faults;
mod fuzz;
mod harness;
mod http_rules;
mod invalidation;
mod l2;
mod lifecycle;
mod multi;
mod ops;
mod origin;
mod prefetch;
mod process;
mod shipping;
