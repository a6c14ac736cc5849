//! Loops only: each task is a schedule around an engine call. `App` spawns them all on its
//! `TaskTracker` and stops them through its `CancellationToken`.

pub(crate) mod metrics_reporter;
pub(crate) mod sweeper;
