//! Restore tracking: what clients change while a snapshot restore runs, so the restore never
//! overwrites or resurrects it.
//!
//! Invariant: while a restore runs, every write, removal and clear marks what it touched
//! *before* acting, under the key's stripe lock (a clear: under all of them), and a restored
//! entry is inserted under the key's stripe lock only if the key is unmarked and absent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{Evicted, KeyOf, L1};
use crate::engine::entry::Entry;
use crate::metrics::EvictionReason;
use quick_cache::sync::{EntryAction, EntryResult};

/// What clients changed while a snapshot restore runs (see the module invariants): keys
/// written or removed, patterns and tags invalidated, and whether L1 was cleared.
#[derive(Default)]
pub(super) struct RestoreTracker {
    active: AtomicBool,
    touched: dashmap::DashSet<Box<str>>,
    /// Set once anything is touched: the common restore (no client changes) skips the set.
    any_touched: AtomicBool,
    /// Patterns and tags invalidated since the restore began. A std mutex: held for a push or
    /// a scan, never across `.await`.
    invalidated: Mutex<(Vec<String>, Vec<String>)>,
    /// Set once a pattern or tag invalidation is recorded.
    any_invalidated: AtomicBool,
    /// Set once a fill (L2 or origin copy) is inserted.
    any_filled: AtomicBool,
    cleared: AtomicBool,
}

/// What became of one snapshot entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restored {
    Inserted,
    /// Written, removed, cleared or filled since the restore began: the newer state stays.
    Superseded,
    /// A pattern, tag or dependency invalidated since the restore began covers it: it is
    /// marked touched, and the caller cascades to dependents restored before it.
    Invalidated,
}

impl RestoreTracker {
    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Records the key of an entry being written, when a restore runs.
    #[inline]
    pub(super) fn touch(&self, entry: &Entry) {
        if self.active.load(Ordering::Acquire) {
            self.mark(entry.key());
        }
    }

    /// Records `key`; the flag is raised first, so a reader that sees no flag saw no key.
    pub(super) fn mark(&self, key: &str) {
        self.any_touched.store(true, Ordering::Release);
        self.touched.insert(key.into());
    }

    pub(super) fn is_touched(&self, key: &str) -> bool {
        self.any_touched.load(Ordering::Acquire) && self.touched.contains(key)
    }

    /// Starts recording (idempotent).
    fn begin(&self) {
        if self.is_active() {
            return;
        }
        self.touched.clear();
        self.any_touched.store(false, Ordering::Release);
        *self.invalidated.lock().unwrap_or_else(PoisonError::into_inner) = Default::default();
        self.any_invalidated.store(false, Ordering::Release);
        self.any_filled.store(false, Ordering::Release);
        self.cleared.store(false, Ordering::Release);
        self.active.store(true, Ordering::Release);
    }

    fn end(&self) {
        self.active.store(false, Ordering::Release);
        self.touched.clear();
        *self.invalidated.lock().unwrap_or_else(PoisonError::into_inner) = Default::default();
    }

    fn note_invalidation(&self, pattern: Option<&str>, tags: &[String]) {
        if self.is_active() {
            let mut invalidated = self.invalidated.lock().unwrap_or_else(PoisonError::into_inner);
            invalidated.0.extend(pattern.map(str::to_string));
            invalidated.1.extend(tags.iter().cloned());
            self.any_invalidated.store(true, Ordering::Release);
        }
    }

    /// What a client change since the restore began makes of a snapshot `entry`: `None` when
    /// nothing touched it. The caller holds the entry's stripe.
    fn verdict(&self, entry: &Entry) -> Option<Restored> {
        let key = entry.key();
        if self.cleared.load(Ordering::Acquire) || self.is_touched(key) {
            return Some(Restored::Superseded);
        }
        let covered = self.any_invalidated.load(Ordering::Acquire) && {
            let invalidated = self.invalidated.lock().unwrap_or_else(PoisonError::into_inner);
            invalidated.0.iter().any(|pattern| crate::engine::glob::matches(pattern, key))
                || entry.tags().iter().any(|tag| invalidated.1.iter().any(|gone| gone == tag.as_str()))
        };
        if covered || entry.depends_on().iter().any(|dep| self.is_touched(dep.as_str())) {
            self.mark(key);
            return Some(Restored::Invalidated);
        }
        None
    }

    /// Nothing but the restore has inserted since it began.
    fn is_undisturbed(&self) -> bool {
        !self.any_touched.load(Ordering::Acquire) && !self.any_filled.load(Ordering::Acquire)
    }

    /// Records a fill inserted while a restore runs.
    pub(super) fn filled(&self) {
        self.any_filled.store(true, Ordering::Release);
    }

    /// Records a clear; the caller holds every stripe.
    pub(super) fn cleared(&self) {
        self.cleared.store(true, Ordering::Release);
    }
}

impl L1 {
    /// Starts tracking client changes for a restore; [`L1::insert_restored`] honours them.
    /// Called before the server answers, so no change can slip in before it. Idempotent.
    pub fn begin_restore(&self) {
        self.restore.begin();
    }

    pub fn end_restore(&self) {
        self.restore.end();
    }

    /// Records a pattern or tag invalidation for a running restore (before it is applied).
    pub fn note_invalidation(&self, pattern: Option<&str>, tags: &[String]) {
        self.restore.note_invalidation(pattern, tags);
    }

    /// Inserts an entry from a snapshot unless clients changed what it stands for since
    /// [`L1::begin_restore`] (see [`Restored`]).
    pub fn insert_restored(&self, entry: Entry) -> Restored {
        let _write_guard = self.stripes.lock(self.stripes.of(entry.key_bytes()));
        if let Some(verdict) = self.restore.verdict(&entry) {
            return verdict;
        }
        if self.restore.is_undisturbed() {
            // Nothing but this restore has inserted since it began, and a snapshot names each
            // key once, so the key is vacant: one plain insert. (A client insert of this key
            // raises its flag under this same stripe lock, so it cannot slip in between.)
            self.insert_new_locked(entry);
            return Restored::Inserted;
        }
        if self.insert_vacant_locked(entry) {
            Restored::Inserted
        } else {
            Restored::Superseded
        }
    }

    /// Records a removal for a running restore. Removals otherwise take no stripe lock; here
    /// they take the key's, so a restore insert is either before the mark (and the removal then
    /// removes it) or after it (and sees it).
    pub(super) fn touch_for_restore(&self, key: &str) {
        if self.restore.is_active() {
            let _stripe = self.stripes.lock(self.stripes.of(key.as_bytes()));
            self.restore.mark(key);
        }
    }

    /// Inserts an entry whose key is known to be vacant; the caller holds the stripe.
    fn insert_new_locked(&self, entry: Entry) {
        self.shared.remember(&entry);
        let mut evicted = Evicted::default();
        self.cache.insert_with_lifecycle(KeyOf(entry.clone()), entry, &mut evicted);
        drop(evicted); // Evicted values are freed here, outside every lock.
    }

    /// Inserts `entry` only if `key` is not resident, in one map lookup (the restore's hot
    /// path); returns whether it did. Same record order as `insert_locked`: index records and
    /// bytes first, withdrawn if the key turns out to be resident. The caller holds the stripe.
    fn insert_vacant_locked(&self, entry: Entry) -> bool {
        self.shared.remember(&entry);
        let mut evicted = Evicted::default();
        let inserted = match self.cache.entry(&KeyOf(entry.clone()), None, |_, _| EntryAction::Retain(())) {
            EntryResult::Vacant(guard) => match guard.insert_with_lifecycle(entry.clone(), &mut evicted) {
                Ok(()) => true,
                Err(rejected) => {
                    self.shared.forget(&rejected, EvictionReason::Replaced);
                    return false; // Too heavy to admit; its records are withdrawn already.
                }
            },
            _ => false,
        };
        if !inserted {
            self.shared.forget(&entry, EvictionReason::Replaced);
        }
        drop(evicted);
        inserted
    }
}
