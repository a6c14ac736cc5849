//! The L1 expiry sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::engine::Cache;

/// Removes expired entries from L1 every `interval` (lazy expiry covers reads in between).
pub(crate) async fn run(cache: Arc<Cache>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await; // The first tick is immediate; an empty cache needs no sweep.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let n_removed = cache.remove_expired();
                tracing::debug!(n_removed, "l1 sweep");
            }
        }
    }
}
