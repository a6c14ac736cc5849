//! Writes a snapshot every `persistence.interval_secs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::engine::snapshot::Persistence;
use crate::engine::Engine;

pub(crate) async fn run(
    engine: Arc<Engine>,
    persistence: Arc<Persistence>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await; // The first tick is immediate; the start-up load decides the first one.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let _ = persistence.snapshot(&engine).await;
            }
        }
    }
}
