//! A prefetch worker: takes the highest-priority key from the cache's queue and brings it in.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::engine::Cache;

/// Drains the prefetch queue, one key at a time, until shutdown. Each fetch is bounded by
/// `origin.timeout_ms`; `prefetch.workers` of these run side by side.
pub(crate) async fn run(cache: Arc<Cache>, shutdown: CancellationToken) {
    loop {
        let key = tokio::select! {
            () = shutdown.cancelled() => break,
            key = cache.next_prefetch() => key,
        };
        let cached = cache.prefetch(&key).await;
        tracing::debug!(key = key.as_str(), cached, "prefetch");
    }
}
