//! Loops only: each task is a schedule around an engine call. `App` spawns them all on its
//! `TaskTracker` and stops them through its `CancellationToken`.

pub(crate) mod l2_monitor;
pub(crate) mod metrics_reporter;
pub(crate) mod prefetch;
pub(crate) mod snapshotter;
pub(crate) mod subscriber;
pub(crate) mod sweeper;
pub(crate) mod warmer;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff for reconnect loops.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { next: min, min, max }
    }

    /// Sleeps for the next delay; returns false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}
