//! The write path: L1 and L2 before the answer (write-through), then the dependency cascade,
//! then one invalidation message for the other instances.
//!
//! With `l2.write_policy = "required"` L2 is written first and a failure leaves nothing in L1
//! (the key is removed there, since L2's state is unknown after a failed call); with
//! `"best_effort"` L1 is written first and the answer says whether L2 took it.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;

use super::l2::{EntryWrite, Envelope, L2Budget};
use super::{Cache, EngineError, Entry, EntryParts, Key, L2Write, ValidWrite, WriteOutcome};
use crate::config::WritePolicy;
use crate::metrics::EvictionReason;

impl Cache {
    /// Stores a write in every tier, then invalidates the keys that depend on it (never the key
    /// itself) and tells the other instances.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] under the `required` policy when L2 did not take it.
    pub async fn set(&self, write: ValidWrite) -> Result<WriteOutcome, EngineError> {
        let outcomes = self.set_many(vec![write]).await?;
        Ok(outcomes[0])
    }

    /// Stores writes (already validated) with one L2 pipeline; see [`Cache::set`].
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] under the `required` policy when L2 did not take them.
    pub async fn set_many(&self, writes: Vec<ValidWrite>) -> Result<Vec<WriteOutcome>, EngineError> {
        // One instant for the whole batch.
        let now_ms = self.clock().now_ms();
        let entries: Vec<(Entry, Duration)> = writes
            .into_iter()
            .map(|write| {
                let parts = EntryParts {
                    key: write.key,
                    value: write.value,
                    cached_at_ms: now_ms,
                    expires_at_ms: expires_at(now_ms, write.ttl),
                    tags: write.tags,
                    depends_on: write.depends_on,
                };
                (self.new_entry(parts, now_ms).build(), write.ttl)
            })
            .collect();

        let mut budget = self.instance.budget();
        let (l2_write, l2_dependents) = match (budget.is_configured(), self.instance.write_policy()) {
            (false, _) => {
                self.insert_all_l1(&entries);
                (L2Write::Disabled, Vec::new())
            }
            (true, WritePolicy::Required) => match self.write_l2(&mut budget, &entries).await {
                Some(dependents) => {
                    self.insert_all_l1(&entries);
                    (L2Write::Stored, dependents)
                }
                None => {
                    for (entry, _) in &entries {
                        self.l1.remove(entry.key(), EvictionReason::Invalidated);
                    }
                    return Err(EngineError::L2Unavailable);
                }
            },
            (true, WritePolicy::BestEffort) => {
                self.insert_all_l1(&entries);
                match self.write_l2(&mut budget, &entries).await {
                    Some(dependents) => (L2Write::Stored, dependents),
                    None => (L2Write::Unavailable, Vec::new()),
                }
            }
        };
        self.metrics().counters.sets.inc_by(entries.len() as u64);

        // The written keys were announced with the write; what the cascade removed is
        // announced now.
        let written: HashSet<Key> = entries.iter().map(|(entry, _)| Key::of_entry(entry)).collect();
        let removed = self.cascade_from_writes(&mut budget, &written, l2_dependents).await;
        self.instance.bus().announce(&budget, removed.iter().map(Key::as_str)).await;
        Ok(entries
            .iter()
            .map(|(entry, _)| WriteOutcome { expires_at_ms: entry.expires_at_ms(), l2: l2_write })
            .collect())
    }

    fn insert_all_l1(&self, entries: &[(Entry, Duration)]) {
        for (entry, _) in entries {
            self.l1.insert(entry.clone());
        }
    }

    /// Stores `entries` in L2 and announces their keys to the other instances, in one round
    /// trip; returns the keys that depend on them there. On failure the announcement's `seq` is
    /// spent all the same, so every receiver clears its L1 (L2's state is unknown).
    async fn write_l2(&self, budget: &mut L2Budget<'_>, entries: &[(Entry, Duration)]) -> Option<Vec<String>> {
        let writes = entries
            .iter()
            .map(|(entry, ttl)| EntryWrite {
                key: entry.key().to_string(),
                envelope: envelope_of(entry),
                retention: self.lifetime.l2_retention(*ttl),
            })
            .collect();
        budget.call(|l2| l2.write_and_announce(writes, self.instance.bus())).await
    }
}

fn expires_at(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(ttl.as_millis() as u64)
}

/// The L2 form of an entry.
pub(super) fn envelope_of(entry: &Entry) -> Envelope {
    Envelope {
        value: Bytes::copy_from_slice(entry.value()),
        cached_at_ms: entry.cached_at_ms(),
        expires_at_ms: entry.expires_at_ms(),
        tags: entry.tags().iter().map(|tag| tag.as_str().to_string()).collect(),
        depends_on: entry.depends_on().iter().map(|dep| dep.as_str().to_string()).collect(),
    }
}
