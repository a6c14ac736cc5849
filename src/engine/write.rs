//! The write path: L1 and L2 before the answer (write-through), then the dependency cascade,
//! then one invalidation message for the other instances.
//!
//! With `l2.write_policy = "required"` L2 is written first and a failure leaves nothing in L1
//! (the key is removed there, since L2's state is unknown after a failed call); with
//! `"best_effort"` L1 is written first and the answer says whether L2 took it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::l2::{EntryWrite, Envelope};
use super::{Engine, EngineError, Entry, Key, L2Write, NewEntry, ValidWrite, WriteOutcome};
use crate::config::WritePolicy;
use crate::metrics::EvictionReason;

impl Engine {
    /// Stores a write in every tier, then invalidates the keys that depend on it (never the key
    /// itself) and tells the other instances.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] under the `required` policy when L2 did not take it.
    pub async fn set(&self, write: ValidWrite) -> Result<WriteOutcome, EngineError> {
        let outcomes = self.set_many(vec![write]).await?;
        Ok(outcomes[0])
    }

    /// Stores writes (already validated) with one L2 pipeline; see [`Engine::set`].
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] under the `required` policy when L2 did not take them.
    pub async fn set_many(&self, writes: Vec<ValidWrite>) -> Result<Vec<WriteOutcome>, EngineError> {
        let now_ms = self.clock.now_ms();
        let l1_deadline = self.l1_deadline(now_ms);
        let entries: Vec<(Key, Entry, Duration)> = writes
            .into_iter()
            .map(|write| {
                let version = self.next_version.fetch_add(1, Ordering::Relaxed);
                let entry = NewEntry::new(
                    &write.key,
                    write.value,
                    now_ms,
                    expires_at(now_ms, write.ttl),
                    write.tags,
                    write.depends_on,
                    version,
                )
                .with_l1_lifetime(l1_deadline, self.grace_ms());
                (write.key, entry.build(), write.ttl)
            })
            .collect();

        let (l2_write, l2_dependents) = match (&self.l2, self.write_policy) {
            (None, _) => {
                self.insert_all_l1(&entries);
                (L2Write::Disabled, None)
            }
            (Some(_), WritePolicy::Required) => match self.write_l2(&entries).await {
                Ok(dependents) => {
                    self.insert_all_l1(&entries);
                    (L2Write::Stored, Some(dependents))
                }
                Err(()) => {
                    for (key, _, _) in &entries {
                        self.l1.remove(key.as_str(), EvictionReason::Invalidated);
                    }
                    return Err(EngineError::L2Unavailable);
                }
            },
            (Some(_), WritePolicy::BestEffort) => {
                self.insert_all_l1(&entries);
                match self.write_l2(&entries).await {
                    Ok(dependents) => (L2Write::Stored, Some(dependents)),
                    Err(()) => (L2Write::Unavailable, None),
                }
            }
        };
        self.metrics.sets.inc_by(entries.len() as u64);

        // The written keys were announced with the write; what the cascade removed is
        // announced now.
        let written: HashSet<Key> = entries.iter().map(|(key, _, _)| key.clone()).collect();
        let removal = self.cascade_from_writes(&written, l2_dependents).await;
        self.announce_keys(removal.removed.iter(), !removal.l2_failed).await;
        Ok(entries
            .iter()
            .map(|(_, entry, _)| WriteOutcome { expires_at_ms: entry.expires_at_ms(), l2: l2_write })
            .collect())
    }

    fn insert_all_l1(&self, entries: &[(Key, Entry, Duration)]) {
        for (_, entry, _) in entries {
            self.l1.insert(entry.clone());
        }
    }

    /// Stores `entries` in L2 and announces their keys to the other instances, in one round
    /// trip; returns the keys that depend on them there. On failure the announcement's `seq` is
    /// spent all the same, so every receiver clears its L1 (L2's state is unknown).
    async fn write_l2(&self, entries: &[(Key, Entry, Duration)]) -> Result<Vec<String>, ()> {
        let Some(l2) = &self.l2 else { return Ok(Vec::new()) };
        let writes = entries
            .iter()
            .map(|(key, entry, ttl)| EntryWrite {
                key: key.as_str().to_string(),
                envelope: envelope_of(entry),
                retention: self.l2_retention(*ttl),
            })
            .collect();
        let announce = |keys: &[&str]| self.evict_payloads(keys.iter().copied());
        l2.write_and_announce(writes, &self.channel, announce).await.map_err(|err| {
            tracing::debug!(%err, "l2 write failed");
        })
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
