//! A prefetch worker: takes the highest-priority key from the engine's queue and brings it in.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// Drains the prefetch queue, one key at a time, until shutdown. Each fetch is bounded by
/// `origin.timeout_ms`; `prefetch.workers` of these run side by side.
pub(crate) async fn run(engine: Arc<Engine>, shutdown: CancellationToken) {
    loop {
        let key = tokio::select! {
            () = shutdown.cancelled() => break,
            key = engine.next_prefetch() => key,
        };
        let cached = engine.prefetch(&key).await;
        tracing::debug!(key = key.as_str(), cached, "prefetch");
    }
}
