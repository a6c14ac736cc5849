//! The invalidation bus (SPEC §5): this instance's side of `invalidation.channel`, shared by
//! every cache of the instance. It stamps what this instance publishes (`origin`, `seq`),
//! publishes it through L2 within a request's [`L2Budget`], counts it, and judges what arrives
//! (malformed, own, or from a peer whose `seq` skipped). Applying a message to L1 is the
//! cache's business (`invalidation.rs`); the message format is `messages.rs`.
//!
//! The one rule of `seq`: every stamped message spends a number, whether it is then published,
//! skipped because L2 already failed in the request, or lost because the publish failed. A
//! peer that sees the gap clears its L1, which is the only safe answer when L2's state is
//! unknown.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::l2::L2Budget;
use super::messages::{Message, MessageKind, SequenceTracker};
use crate::config::BusConfig;
use crate::metrics::Metrics;

/// Keys per published EVICT message: bounds a message's size on large invalidations.
const KEYS_PER_MESSAGE: usize = 1000;

pub(crate) struct Bus {
    instance_id: String,
    channel: String,
    flush_l1_on_reconnect: bool,
    /// Number of the last message this instance stamped.
    last_seq: AtomicU64,
    /// The last `seq` seen from each peer.
    peers: SequenceTracker,
    /// True once the subscriber has subscribed (with L2): from then on every change another
    /// instance makes reaches this one. A snapshot restore waits for it before checking its
    /// entries against L2.
    subscribed: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// What a received payload asks of this instance's caches.
#[derive(Debug)]
pub(crate) enum Received {
    /// Malformed (counted) or this instance's own: nothing to do.
    Ignored,
    /// Apply `message` to L1; `missed` when its sender's `seq` skipped, so an earlier message
    /// was lost: L1 must be cleared first.
    Apply { message: Message, missed: bool },
}

impl Bus {
    pub fn new(config: &BusConfig, instance_id: String, metrics: Arc<Metrics>) -> Bus {
        Bus {
            instance_id,
            channel: config.channel.clone(),
            flush_l1_on_reconnect: config.flush_l1_on_reconnect,
            last_seq: AtomicU64::new(0),
            peers: SequenceTracker::new(),
            subscribed: watch::Sender::new(false),
            metrics,
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// EVICT messages naming `keys` (each once, in chunks), published unless L2 failed in this
    /// request. Without L2 there is nobody to tell, and nothing is stamped.
    pub async fn announce<'a>(&self, budget: &L2Budget<'_>, keys: impl Iterator<Item = &'a str>) {
        if !budget.is_configured() {
            return;
        }
        for payload in self.evict_payloads(keys) {
            self.send(budget, &payload).await;
        }
    }

    /// Publishes one message (see [`Bus::announce`]); an EVICT naming no key is not sent.
    pub async fn publish(&self, budget: &L2Budget<'_>, message: Message) {
        let is_empty = message.kind == MessageKind::Evict && message.keys.as_ref().is_some_and(Vec::is_empty);
        if !budget.is_configured() || is_empty {
            return;
        }
        self.send(budget, &self.stamp(message)).await;
    }

    /// EVICT payloads naming `keys` (distinct, in chunks), each stamped.
    pub fn evict_payloads<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut seen = HashSet::new();
        let names: Vec<String> = keys.filter(|key| seen.insert(*key)).map(str::to_string).collect();
        names.chunks(KEYS_PER_MESSAGE).map(|chunk| self.stamp(Message::evict(chunk.to_vec()))).collect()
    }

    /// Counts messages L2 took: the one place `invalidations_published` grows, whether they
    /// went alone ([`Bus::send`]) or with a write's pipeline (`L2::write_and_announce`).
    pub fn published(&self, count: usize) {
        self.metrics.counters.invalidations_published.inc_by(count as u64);
    }

    /// Judges a payload received on the channel: counts it, skips this instance's own, and
    /// notices a gap in a peer's `seq`.
    pub fn receive(&self, payload: &[u8]) -> Received {
        let Some(message) = Message::parse(payload) else {
            self.metrics.counters.invalidations_malformed.inc();
            tracing::warn!(payload_len = payload.len(), "malformed invalidation message ignored");
            return Received::Ignored;
        };
        if message.origin.as_deref() == Some(self.instance_id.as_str()) {
            return Received::Ignored;
        }
        self.metrics.counters.invalidations_received.inc();
        let missed = match (&message.origin, message.seq) {
            (Some(origin), Some(seq)) => self.peers.observe(origin, seq),
            _ => false,
        };
        Received::Apply { message, missed }
    }

    /// Called by the subscriber each time it has subscribed.
    pub fn mark_subscribed(&self) {
        self.subscribed.send_replace(true);
    }

    /// Waits up to `limit` for the first subscription; true when it is there.
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        let mut subscribed = self.subscribed.subscribe();
        tokio::time::timeout(limit, subscribed.wait_for(|subscribed| *subscribed)).await.is_ok_and(|seen| seen.is_ok())
    }

    /// The subscription was lost and is back: messages may have been missed. True when L1
    /// must be cleared (`invalidation.flush_l1_on_reconnect`); the peers' numbers start over.
    pub fn resubscribed(&self) -> bool {
        if self.flush_l1_on_reconnect {
            self.peers.reset();
        }
        self.flush_l1_on_reconnect
    }

    /// Sends a stamped payload unless L2 failed in this request; a skipped or failed publish
    /// has spent its `seq` all the same (see the module docs).
    async fn send(&self, budget: &L2Budget<'_>, payload: &str) {
        let Some(l2) = budget.usable() else { return };
        match l2.publish(&self.channel, payload).await {
            Ok(()) => self.published(1),
            Err(err) => tracing::debug!(%err, "invalidation message not published"),
        }
    }

    /// The payload of `message` from this instance: its `origin` and the next `seq`.
    fn stamp(&self, mut message: Message) -> String {
        message.origin = Some(self.instance_id.clone());
        message.seq = Some(self.last_seq.fetch_add(1, Ordering::AcqRel) + 1);
        serde_json::to_string(&message).expect("a message serializes")
    }
}
