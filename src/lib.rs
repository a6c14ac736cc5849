//! tiercache: a standalone HTTP cache service with a bounded in-memory L1.
//!
//! A short tour:
//! - [`config`] loads `Settings` (defaults < file < environment) and splits them into parts.
//! - `engine` is the cache: keys, entries, the L1 tier, invalidation with dependency cascade.
//!   It knows nothing of HTTP.
//! - `http` is the thin axum layer: routes, extractors, middleware and the error shape.
//! - `tasks` are loops around engine calls (the expiry sweep, the metrics reporter).
//! - [`App`] is the manager: it owns the engine, the server and every task, and stops them.

pub mod app;
#[doc(hidden)]
pub mod bench_api;
pub mod config;
pub(crate) mod engine;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod tasks;

pub use app::App;
pub use config::Settings;
#[doc(hidden)]
pub use http::route::FIXED as FIXED_ROUTES;
pub use http::router_for_tests;
pub use tasks::TaskHealth;

/// The config of every `fuzz_` property: `short` cases in the test command, or
/// `TIERCACHE_FUZZ_CASES` (`bench/fuzz.sh`); failures are printed, not persisted.
#[cfg(test)]
pub(crate) fn fuzz_config(short: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: bench_api::fuzz_cases(short),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
