//! Listens on the invalidation channel and applies what other instances publish. When the
//! subscription is lost, or L2 had an outage (messages may have been missed while it was
//! unreachable), it reconnects with backoff and, once subscribed again, has L1 cleared.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::engine::l2::open_pubsub;
use crate::engine::Cache;

/// How often the loop checks whether the data connection saw an outage.
const OUTAGE_CHECK: Duration = Duration::from_millis(200);

pub(crate) async fn run(cache: Arc<Cache>, shutdown: CancellationToken) {
    let instance = cache.instance().clone();
    let Some(config) = instance.l2_config().cloned() else { return };
    let channel = instance.bus().channel().to_string();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut was_subscribed = false;
    loop {
        let pubsub = tokio::select! {
            () = shutdown.cancelled() => return,
            pubsub = open_pubsub(&config, &channel) => pubsub,
        };
        let pubsub = match pubsub {
            Ok(pubsub) => pubsub,
            Err(err) => {
                tracing::debug!(%err, "invalidation subscription failed, retrying");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        instance.take_l2_outage_seen();
        instance.bus().mark_subscribed();
        if was_subscribed {
            tracing::info!(channel, "invalidation subscription re-established");
            cache.on_resubscribed();
        } else {
            tracing::info!(channel, "subscribed to invalidations");
        }
        was_subscribed = true;

        let mut messages = pubsub.into_on_message();
        let mut outage_check = tokio::time::interval(OUTAGE_CHECK);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                message = messages.next() => match message {
                    Some(message) => cache.apply_payload(message.get_payload_bytes()),
                    None => {
                        tracing::info!("invalidation subscription lost");
                        break;
                    }
                },
                _ = outage_check.tick() => {
                    if instance.take_l2_outage_seen() {
                        tracing::info!("l2 outage: re-subscribing to invalidations");
                        break;
                    }
                }
            }
        }
    }
}
