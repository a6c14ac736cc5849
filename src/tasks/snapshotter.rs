//! Writes a snapshot every `persistence.interval_secs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::engine::Cache;

/// Snapshots `cache` every `interval` (a cache without persistence has no snapshotter).
pub(crate) async fn run(cache: Arc<Cache>, interval: Duration, shutdown: CancellationToken) {
    let Some(persistence) = cache.persistence() else { return };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await; // The first tick is immediate; the start-up load decides the first one.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let _ = persistence.snapshot(&cache).await;
            }
        }
    }
}
