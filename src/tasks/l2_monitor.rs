//! Connects L2 in the background (Redis down at start-up is not fatal), then pings it every
//! second so the breaker and `/health` notice an outage even when no request touches Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::engine::Instance;

const PING_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn run(instance: Arc<Instance>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut is_first_failure = true;
    loop {
        // Cancel safety: a connect attempt dropped by shutdown leaves nothing half-made.
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            attempt = instance.connect_l2() => attempt,
        };
        match attempt {
            Ok(()) => {
                tracing::info!("l2 connected");
                break;
            }
            Err(err) => {
                if is_first_failure {
                    tracing::info!(%err, "l2 unreachable, retrying in the background");
                    is_first_failure = false;
                }
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
    let mut ticker = tokio::time::interval(PING_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => instance.ping_l2().await,
        }
    }
}
