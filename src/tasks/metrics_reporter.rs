//! Refreshes the gauges and logs one info line of counters every `metrics.interval_secs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::engine::Cache;

pub(crate) async fn run(cache: Arc<Cache>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                cache.refresh_gauges();
                let stats = cache.stats();
                tracing::info!(
                    hits = stats.counter("hits"),
                    misses = stats.counter("misses"),
                    sets = stats.counter("sets"),
                    evictions = stats.counter("evictions"),
                    expirations = stats.counter("expirations"),
                    l1_size = stats.l1_size,
                    l1_bytes = stats.l1_bytes,
                    "cache counters"
                );
            }
        }
    }
}
