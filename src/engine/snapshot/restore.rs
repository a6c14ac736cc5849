//! The restore policy: which records of a verified snapshot go into L1. A record is
//! inserted unless it is expired, breaks today's limits, or a client wrote, removed, cleared
//! or invalidated what it stands for since the restore began (`L1::insert_restored`); with L2,
//! only a record L2 still holds in the same write (`cached_at`) and bytes is restored. A file
//! that breaks off after its checksum passed is undone whole.

use std::path::Path;
use std::time::Duration;

use super::format::{verify, Reader};
use super::SnapshotError;
use crate::engine::l1::Restored;
use crate::engine::{Cache, Entry, EntryParts, Key, Tag};
use crate::metrics::EvictionReason;

/// How long a restore waits for the invalidation subscription before it gives up checking.
pub(super) const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);
/// Records checked against L2 per MGET.
const CHECK_BATCH: usize = 256;

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreStats {
    pub restored: u64,
    /// Past their expiry (and grace) by now.
    pub expired: u64,
    /// Written, removed or cleared by a client since start, or resident already.
    pub superseded: u64,
    /// Records this build cannot take (a key or tag over today's limits).
    pub rejected: u64,
    /// L2 no longer holds this write of the key: changed or removed while this instance was down.
    pub outdated: u64,
    /// Not restored because L2 could not be asked.
    pub unchecked: u64,
}

/// How a restore checks its records against L2 (see the module docs).
pub enum L2Check {
    /// No L2: the snapshot is the only copy.
    Skip,
    /// Ask L2, from the restore's blocking thread through this runtime.
    Ask(tokio::runtime::Handle),
    /// L2 is configured but cannot be asked: nothing is restored.
    Unreachable,
}

impl Cache {
    /// Restores the snapshot at `path` into L1 (see the module docs).
    ///
    /// # Errors
    /// A missing, truncated, corrupt or foreign file; nothing was applied then.
    /// `check` says, once the file has been verified, how records are checked against L2.
    pub fn restore_snapshot(
        &self,
        path: &Path,
        check: impl FnOnce(&Cache) -> L2Check,
    ) -> Result<RestoreStats, SnapshotError> {
        self.begin_restore();
        // What was inserted, so a file that breaks off after its checksum passed (a record that
        // does not parse) is undone whole: a bad file applies nothing.
        let mut inserted: Vec<(Key, u64)> = Vec::new();
        let result = verify(path).and_then(|records| {
            let check = check(self);
            // Growing the map one rehash at a time is a third of a large restore's cost.
            self.l1.reserve(records);
            self.apply_snapshot(path, &check, &mut inserted)
        });
        if result.is_err() {
            for (key, version) in inserted {
                self.l1.remove_version(key.as_str(), version, EvictionReason::Manual);
            }
        }
        self.l1.end_restore();
        result
    }

    /// Starts recording what clients change, for a restore about to run: `App` calls it before
    /// the server answers, so that no write, delete or invalidation can precede the record.
    pub fn begin_restore(&self) {
        self.l1.begin_restore();
    }

    fn apply_snapshot(
        &self,
        path: &Path,
        check: &L2Check,
        inserted: &mut Vec<(Key, u64)>,
    ) -> Result<RestoreStats, SnapshotError> {
        let mut reader = Reader::open(path)?;
        let mut stats = RestoreStats::default();
        let now_ms = self.clock().now_ms();
        let mut scratch = Vec::with_capacity(256); // The key of the record being read.
        let mut batch: Vec<(Key, Entry)> = Vec::with_capacity(CHECK_BATCH);
        let mut l2_answers = !matches!(check, L2Check::Unreachable);
        while let Some(record) = reader.next(&mut scratch)? {
            let key =
                std::str::from_utf8(&scratch).ok().and_then(|raw| Key::parse(raw, self.limits.max_key_bytes).ok());
            let tags: Result<Box<[Tag]>, _> = record.tags.iter().map(|tag| Tag::parse(tag)).collect();
            let deps: Result<Box<[Key]>, _> =
                record.deps.iter().map(|dep| Key::parse(dep, self.limits.max_key_bytes)).collect();
            let (Some(key), Ok(tags), Ok(deps)) = (key, tags, deps) else {
                stats.rejected += 1;
                continue;
            };
            let parts = EntryParts {
                key: key.clone(),
                value: record.value,
                cached_at_ms: record.cached_at_ms,
                expires_at_ms: record.expires_at_ms,
                tags,
                depends_on: deps,
            };
            let entry = self.new_entry(parts, now_ms).build();
            if entry.is_expired(now_ms) {
                stats.expired += 1;
            } else if !self.l1.fits(entry.size()) {
                stats.rejected += 1;
            } else {
                batch.push((key, entry));
                if batch.len() == CHECK_BATCH {
                    self.restore_batch(std::mem::take(&mut batch), check, &mut l2_answers, &mut stats, inserted);
                }
            }
        }
        self.restore_batch(batch, check, &mut l2_answers, &mut stats, inserted);
        Ok(stats)
    }

    /// Inserts the entries of `batch` that L2 confirms (all of them without L2). After one
    /// failed check, `l2_answers` is false and the rest is counted unchecked.
    fn restore_batch(
        &self,
        batch: Vec<(Key, Entry)>,
        check: &L2Check,
        l2_answers: &mut bool,
        stats: &mut RestoreStats,
        inserted: &mut Vec<(Key, u64)>,
    ) {
        if batch.is_empty() {
            return;
        }
        let current: Vec<bool> = match (check, self.instance.l2()) {
            (L2Check::Ask(runtime), Some(l2)) if *l2_answers => {
                let keys: Vec<&str> = batch.iter().map(|(key, _)| key.as_str()).collect();
                match runtime.block_on(l2.get_many(&keys)) {
                    Ok(found) => batch
                        .iter()
                        .zip(found)
                        .map(|((_, entry), held)| {
                            held.is_some_and(|held| {
                                held.cached_at_ms == entry.cached_at_ms() && held.value[..] == *entry.value()
                            })
                        })
                        .collect(),
                    Err(err) => {
                        tracing::warn!(%err, "l2 failed during the snapshot check: the rest is not restored");
                        *l2_answers = false;
                        stats.unchecked += batch.len() as u64;
                        return;
                    }
                }
            }
            (L2Check::Skip, _) => vec![true; batch.len()],
            _ => {
                stats.unchecked += batch.len() as u64;
                return;
            }
        };
        for ((key, entry), current) in batch.into_iter().zip(current) {
            if !current {
                stats.outdated += 1;
                continue;
            }
            let version = entry.version();
            match self.l1.insert_restored(entry) {
                Restored::Inserted => {
                    stats.restored += 1;
                    inserted.push((key, version));
                }
                Restored::Superseded => stats.superseded += 1,
                Restored::Invalidated => {
                    // Dependents restored before it must go the way the cascade would have sent them.
                    self.remove_from_l1_with_cascade(vec![key]);
                    stats.superseded += 1;
                }
            }
        }
    }
}
