//! The prefetch queue of SPEC §6: bounded, highest priority first (oldest first among equal
//! priorities), one place per key. When full, an item of higher priority than the lowest
//! queued pushes that lowest one out; otherwise the newcomer is the one dropped.
//!
//! What the queue does not know: whether a key is cached or being fetched (the caller passes
//! that in), and how keys are fetched (the prefetch workers in `tasks/` call the engine).
//! One mutex guards both maps so they always agree; it is held for map operations only,
//! never across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::key::Key;

pub(crate) struct PrefetchQueue {
    state: Mutex<QueueState>,
    /// Wakes a worker when a key is queued; a worker that takes a key while more remain passes
    /// the wake-up on, so every idle worker gets work.
    ready: Notify,
    max: usize,
}

/// A queued key, as `GET /api/cache/prefetch` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub key: Key,
    pub priority: f64,
    pub queued_at_ms: u64,
}

/// What one offer did: keys queued, and keys not queued (cached, in flight, already queued,
/// repeated in the offer, or dropped for lack of room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchOutcome {
    pub queued: usize,
    pub skipped: usize,
}

/// Ascending order = the order keys leave the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// `u64::MAX - priority bits`: priorities are non-negative, so their bit patterns order
    /// like the numbers, and subtracting from MAX puts the highest first.
    inverse_priority: u64,
    seq: u64,
}

#[derive(Default)]
struct QueueState {
    by_rank: BTreeMap<Rank, Queued>,
    by_key: HashMap<Key, Rank>,
    next_seq: u64,
}

impl PrefetchQueue {
    pub fn new(max: usize) -> Self {
        Self { state: Mutex::new(QueueState::default()), ready: Notify::new(), max: max.max(1) }
    }

    /// Queues `items` (priority in 0..=1, checked by the caller) unless `skip` says the key
    /// needs no fetch.
    pub fn offer(&self, items: &[(Key, f64)], now_ms: u64, skip: impl Fn(&Key) -> bool) -> PrefetchOutcome {
        let mut seen = HashSet::with_capacity(items.len());
        let mut queued_here: HashSet<Key> = HashSet::new();
        let mut outcome = PrefetchOutcome { queued: 0, skipped: 0 };
        {
            let mut state = self.lock();
            for (key, priority) in items {
                if !seen.insert(key) || state.by_key.contains_key(key) || skip(key) {
                    outcome.skipped += 1;
                    continue;
                }
                let priority = priority + 0.0; // -0.0 becomes 0.0, whose bits order first.
                let rank = Rank { inverse_priority: u64::MAX - priority.to_bits(), seq: state.next_seq };
                state.next_seq += 1;
                if state.by_rank.len() >= self.max {
                    let lowest = *state.by_rank.keys().next_back().expect("a full queue has a last item");
                    if lowest.inverse_priority <= rank.inverse_priority {
                        outcome.skipped += 1; // No higher than the lowest queued: the newcomer goes.
                        continue;
                    }
                    let dropped = state.by_rank.remove(&lowest).expect("present");
                    state.by_key.remove(&dropped.key);
                    if queued_here.remove(&dropped.key) {
                        outcome.queued -= 1;
                        outcome.skipped += 1;
                    }
                }
                state.by_key.insert(key.clone(), rank);
                state.by_rank.insert(rank, Queued { key: key.clone(), priority, queued_at_ms: now_ms });
                queued_here.insert(key.clone());
                outcome.queued += 1;
            }
        }
        if outcome.queued > 0 {
            self.ready.notify_one();
        }
        outcome
    }

    /// Waits for the highest-priority key and takes it out of the queue.
    pub async fn next(&self) -> Key {
        loop {
            let notified = self.ready.notified();
            if let Some(key) = self.pop() {
                return key;
            }
            notified.await;
        }
    }

    fn pop(&self) -> Option<Key> {
        let mut state = self.lock();
        let (_, item) = state.by_rank.pop_first()?;
        state.by_key.remove(&item.key);
        if !state.by_rank.is_empty() {
            self.ready.notify_one();
        }
        Some(item.key)
    }

    /// The queue, highest priority first.
    pub fn list(&self) -> Vec<Queued> {
        self.lock().by_rank.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().by_rank.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::test_support::key;

    fn keys(queue: &PrefetchQueue) -> Vec<String> {
        queue.list().into_iter().map(|item| item.key.as_str().to_string()).collect()
    }

    #[test]
    fn highest_priority_first_then_oldest_first() {
        let queue = PrefetchQueue::new(10);
        let items =
            [(key("low"), 0.1), (key("high"), 0.9), (key("mid-1"), 0.5), (key("mid-2"), 0.5), (key("zero"), -0.0)];
        assert_eq!(queue.offer(&items, 1, |_| false), PrefetchOutcome { queued: 5, skipped: 0 });
        assert_eq!(keys(&queue), ["high", "mid-1", "mid-2", "low", "zero"]);
        assert_eq!(queue.pop().unwrap().as_str(), "high");
        assert_eq!(queue.len(), 4);
    }

    #[test]
    fn duplicates_repeats_and_skipped_keys_are_not_queued() {
        let queue = PrefetchQueue::new(10);
        queue.offer(&[(key("a"), 0.5)], 1, |_| false);
        let outcome =
            queue.offer(&[(key("a"), 0.9), (key("b"), 0.5), (key("b"), 0.6), (key("cached"), 1.0)], 2, |key| {
                key.as_str() == "cached"
            });
        assert_eq!(outcome, PrefetchOutcome { queued: 1, skipped: 3 });
        assert_eq!(keys(&queue), ["a", "b"]);
        assert_eq!(queue.list()[0].priority, 0.5, "an already queued key keeps its place");
    }

    #[test]
    fn a_full_queue_drops_its_lowest_priority() {
        let queue = PrefetchQueue::new(2);
        queue.offer(&[(key("a"), 0.5), (key("b"), 0.2)], 1, |_| false);
        assert_eq!(queue.offer(&[(key("c"), 0.9)], 2, |_| false), PrefetchOutcome { queued: 1, skipped: 0 });
        assert_eq!(keys(&queue), ["c", "a"], "b, the lowest, was dropped");
        assert_eq!(queue.offer(&[(key("d"), 0.5)], 3, |_| false), PrefetchOutcome { queued: 0, skipped: 1 });
        assert_eq!(keys(&queue), ["c", "a"], "a tie with the lowest keeps the older item");
        let outcome = queue.offer(&[(key("e"), 0.6), (key("f"), 0.7), (key("g"), 0.8)], 4, |_| false);
        assert_eq!(outcome, PrefetchOutcome { queued: 1, skipped: 2 }, "e and f were queued, then pushed out");
        assert_eq!(keys(&queue), ["c", "g"]);
    }

    #[tokio::test]
    async fn workers_wait_for_keys_and_each_gets_a_different_one() {
        let queue = std::sync::Arc::new(PrefetchQueue::new(10));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.next().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.offer(&[(key("a"), 0.5), (key("b"), 0.4)], 1, |_| false);
        let mut got = Vec::new();
        for worker in workers {
            got.push(tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap().as_str().to_string());
        }
        got.sort();
        assert_eq!(got, ["a", "b"]);
    }
}
