//! L1: the bounded, sharded in-memory tier, with its tag index and dependency graph.
//!
//! The store is `quick_cache::sync::Cache` (sharded, S3-FIFO-like, scan resistant). Both bounds
//! of SPEC §4 are enforced through one weight: an entry weighs `max(size, unit)` where
//! `unit = ceil(max_bytes / max_entries)` and the capacity is `max_bytes`, so the count never
//! exceeds `max_entries` and the bytes never exceed `max_bytes`. The price: a cache mixing tiny
//! and huge entries holds fewer bytes than `max_bytes`, because tiny entries weigh `unit`.
//!
//! Invariants:
//! - `bytes` equals the sum of `Entry::size` over resident entries, plus entries being inserted
//!   (added before the insert so that a rejection's subtraction never goes below zero).
//! - Every resident entry with tags or dependencies has one index record per tag and dependency
//!   carrying its version; every record belongs to a resident entry or to a write in progress.
//!   Each path that takes an entry out (replace, remove, eviction, sweep, drain) calls `forget`
//!   exactly once for it.
//! - Writes of one key are serialized by its write stripe, and a fill racing a write,
//!   removal or clear is dropped (a miss), never resurrected (stale): `fill.rs`. Removals need
//!   no stripe: they clean up conditionally on the version they removed.
//! - A snapshot restore never overwrites or resurrects what a client changed since start:
//!   `restore.rs`.
//! - Knows nothing of Redis or HTTP.
//!
//! Files: `mod.rs` the storage and its indexes, `index.rs` the versioned index, `fill.rs` the
//! write stripes and fill tokens, `restore.rs` restore tracking.

mod fill;
mod index;
mod restore;

use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

pub(crate) use self::fill::FillToken;
use self::fill::Stripes;
use self::index::VersionedIndex;
use self::restore::RestoreTracker;
pub(crate) use self::restore::Restored;
use super::entry::Entry;
use super::key::{Key, Tag};
use crate::config::L1Config;
use crate::metrics::{EvictionReason, Metrics};

pub(crate) struct L1 {
    cache: Cache<KeyOf, Entry, EntryWeighter, DefaultHashBuilder, Hooks>,
    shared: Arc<Shared>,
    /// Write stripes and fill epochs (`fill.rs`).
    stripes: Stripes,
    /// Largest weight one shard can hold; a bigger entry could never be admitted.
    shard_capacity: u64,
    weighter: EntryWeighter,
    restore: RestoreTracker,
    max_entries: u64,
}

/// State the eviction hook shares with the cache's owner.
struct Shared {
    tags: VersionedIndex<Tag>,
    dependents: VersionedIndex<Key>,
    bytes: AtomicI64,
    metrics: Arc<Metrics>,
}

impl L1 {
    pub fn new(config: &L1Config, metrics: Arc<Metrics>) -> Self {
        let max_entries = config.max_entries.get() as u64;
        let unit = config.max_bytes.div_ceil(max_entries).max(1);
        let shards = shard_count(max_entries);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(max_entries.min(1 << 20) as usize)
            .weight_capacity(config.max_bytes)
            .shards(shards)
            .build()
            .expect("valid quick_cache options");
        let shared = Arc::new(Shared {
            tags: VersionedIndex::new(),
            dependents: VersionedIndex::new(),
            bytes: AtomicI64::new(0),
            metrics,
        });
        let weighter = EntryWeighter { unit };
        let cache =
            Cache::with_options(options, weighter, DefaultHashBuilder::default(), Hooks { shared: shared.clone() });
        let shard_capacity = cache.shard_capacity();
        Self {
            cache,
            shared,
            stripes: Stripes::new(),
            shard_capacity,
            weighter,
            restore: RestoreTracker::default(),
            max_entries,
        }
    }

    /// Whether an entry of `size` bytes could be admitted at all.
    pub fn fits(&self, size: usize) -> bool {
        self.weighter.weight_of(size) <= self.shard_capacity
    }

    /// The resident entry for `key`, fresh or not; expiry is the caller's decision.
    #[inline]
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key.as_bytes())
    }

    /// The resident entry without counting an access for the eviction policy.
    pub fn peek(&self, key: &str) -> Option<Entry> {
        self.cache.peek(key.as_bytes())
    }

    /// Stores `entry` under its key; returns the entry it replaced. The caller checked `fits`.
    pub fn insert(&self, entry: Entry) -> Option<Entry> {
        let stripe = self.stripes.of(entry.key_bytes());
        let _write_guard = self.stripes.lock(stripe);
        self.restore.touch(&entry);
        self.stripes.bump(stripe);
        self.insert_locked(entry)
    }

    /// Makes room in the map for `additional` more entries (capped at `l1.max_entries`), so a
    /// bulk load does not rehash as it grows.
    pub fn reserve(&self, additional: u64) {
        self.cache.reserve(additional.min(self.max_entries) as usize);
    }

    /// Calls `visit` with each resident entry, one shard read lock at a time.
    pub fn for_each(&self, mut visit: impl FnMut(&Entry)) {
        for (_, entry) in self.cache.iter() {
            visit(&entry);
        }
    }

    /// Taken before reading `key` from L2; [`L1::insert_fill`] honours it.
    pub fn fill_token(&self, key: &str) -> FillToken {
        self.stripes.token(key.as_bytes())
    }

    /// Stores a copy read from L2 or the origin unless the key was written, removed or cleared
    /// since `token` was taken, or a fresh copy (at `now_ms`) is resident already; a stale
    /// resident copy is replaced. Returns whether it was stored.
    pub fn insert_fill(&self, entry: Entry, token: FillToken, now_ms: u64) -> bool {
        let _write_guard = self.stripes.lock(token.stripe());
        if !self.stripes.is_unchanged(token)
            || self.cache.peek(entry.key_bytes()).is_some_and(|resident| resident.is_fresh(now_ms))
        {
            return false;
        }
        self.restore.filled();
        self.insert_locked(entry);
        true
    }

    /// Whether nothing wrote, removed or cleared the token's key since it was taken.
    pub fn is_unchanged(&self, token: FillToken) -> bool {
        self.stripes.is_unchanged(token)
    }

    /// The insert itself; the caller holds the key's stripe lock.
    fn insert_locked(&self, entry: Entry) -> Option<Entry> {
        self.shared.remember(&entry);
        // A plain insert, so that the slot's key handle is the new entry's too (an in-place
        // value swap would leave the key pointing at, and keeping alive, the old allocation).
        // The hook tells the entry it replaces from capacity evictions (see `Evicted`).
        let mut evicted = Evicted { inserting: Some(entry.clone()), ..Evicted::default() };
        self.cache.insert_with_lifecycle(KeyOf(entry.clone()), entry, &mut evicted);
        evicted.replaced.take()
        // Evicted values are freed as `evicted` drops, outside every lock.
    }

    /// Removes `key` whatever its version; returns the removed entry. Pending fills of the key
    /// are cancelled even when nothing was resident.
    pub fn remove(&self, key: &str, reason: EvictionReason) -> Option<Entry> {
        self.touch_for_restore(key);
        self.stripes.bump(self.stripes.of(key.as_bytes()));
        let (_, entry) = self.cache.remove(key.as_bytes())?;
        self.shared.forget(&entry, reason);
        Some(entry)
    }

    /// Removes `key` only if its resident entry is `version`; returns the removed entry.
    pub fn remove_version(&self, key: &str, version: u64, reason: EvictionReason) -> Option<Entry> {
        self.touch_for_restore(key);
        self.stripes.bump(self.stripes.of(key.as_bytes()));
        let (_, entry) = self.cache.remove_if(key.as_bytes(), |resident| resident.version() == version)?;
        self.shared.forget(&entry, reason);
        Some(entry)
    }

    /// Removes every entry expired at `now_ms`; returns how many.
    pub fn remove_expired(&self, now_ms: u64) -> usize {
        let expired = RefCell::new(Vec::new());
        self.cache.retain(|_, entry| {
            let keep = !entry.is_expired(now_ms);
            if !keep {
                expired.borrow_mut().push(entry.clone());
            }
            keep
        });
        let expired = expired.into_inner();
        for entry in &expired {
            self.shared.forget(entry, EvictionReason::Expired);
        }
        expired.len()
    }

    /// Removes every entry; returns how many.
    pub fn clear(&self) -> usize {
        if self.restore.is_active() {
            // Every stripe, in order (no other path holds two), so that no restore insert is
            // between its check and its insert when the flag goes up.
            let _stripes = self.stripes.lock_all();
            self.restore.cleared();
        }
        self.stripes.bump_clear();
        let mut n_removed = 0;
        for (_, entry) in self.cache.drain() {
            self.shared.forget(&entry, EvictionReason::Invalidated);
            n_removed += 1;
        }
        n_removed
    }

    /// Resident keys (with versions) that satisfy `predicate`.
    pub fn keys_where(&self, mut predicate: impl FnMut(&str) -> bool) -> Vec<(Key, u64)> {
        self.cache
            .iter()
            .filter(|(_, entry)| predicate(entry.key()))
            .map(|(_, entry)| (Key::of_entry(&entry), entry.version()))
            .collect()
    }

    /// Keys carrying `tag`, with the version of the entry that carries it.
    pub fn tagged(&self, tag: &str) -> Vec<(Key, u64)> {
        self.shared.tags.members(tag)
    }

    /// Keys whose `depends_on` holds `key`, with the version of the entry that holds it.
    pub fn dependents(&self, key: &str) -> Vec<(Key, u64)> {
        self.shared.dependents.members(key)
    }

    /// The `count` entries the policy values least: fewest reads since they became resident,
    /// oldest first among equals. quick_cache does not expose its queues, so this ranks by the
    /// same signals its policy uses (frequency, then age).
    pub fn coldest(&self, count: usize) -> Vec<(Key, u64)> {
        if count == 0 {
            return Vec::new();
        }
        let mut ranked: Vec<(u64, u64, Key, u64)> = self
            .cache
            .iter()
            .map(|(key, entry)| {
                let reads = self.cache.item_stats(&key).map(|stats| stats.access_count).unwrap_or(0);
                (reads, entry.cached_at_ms(), Key::of_entry(&entry), entry.version())
            })
            .collect();
        let count = count.min(ranked.len());
        if count < ranked.len() {
            ranked.select_nth_unstable_by_key(count, |a| (a.0, a.1));
            ranked.truncate(count);
        }
        ranked.sort_by_key(|a| (a.0, a.1));
        ranked.into_iter().map(|(_, _, key, version)| (key, version)).collect()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Sizes of the indexes: (tags with members, dependency records).
    #[cfg(test)]
    pub fn index_sizes(&self) -> (usize, usize) {
        (self.shared.tags.len(), self.shared.dependents.record_count())
    }
}

impl Shared {
    /// Accounts for an entry about to enter the cache: index records and bytes, added before
    /// the insert (see the module invariants); `forget` undoes exactly this.
    fn remember(&self, entry: &Entry) {
        if let Some(names) = entry.names() {
            for tag in &names.tags {
                self.tags.add(tag, &names.key, entry.version());
            }
            for dependency in &names.depends_on {
                self.dependents.add(dependency, &names.key, entry.version());
            }
        }
        self.bytes.fetch_add(entry.size() as i64, Ordering::Relaxed);
    }

    /// Accounts for an entry that left the cache: bytes, index records, the eviction counter.
    fn forget(&self, entry: &Entry, reason: EvictionReason) {
        self.bytes.fetch_sub(entry.size() as i64, Ordering::Relaxed);
        if let Some(names) = entry.names() {
            for tag in &names.tags {
                self.tags.remove(tag, &names.key, entry.version());
            }
            for dependency in &names.depends_on {
                self.dependents.remove(dependency, &names.key, entry.version());
            }
        }
        self.metrics.record_eviction(reason);
    }
}

/// Weighs an entry `max(size, unit)`: see the module docs for why one weight bounds both
/// the entry count and the bytes.
#[derive(Clone, Copy)]
struct EntryWeighter {
    unit: u64,
}

impl EntryWeighter {
    fn weight_of(&self, size: usize) -> u64 {
        (size as u64).max(self.unit)
    }
}

impl Weighter<KeyOf, Entry> for EntryWeighter {
    #[inline]
    fn weight(&self, _key: &KeyOf, entry: &Entry) -> u64 {
        self.weight_of(entry.size())
    }
}

/// quick_cache's eviction hook. It runs under a quick_cache shard lock: it touches only the
/// dashmap indexes and atomics, and stashes the evicted value so it is freed after the lock.
#[derive(Clone)]
struct Hooks {
    shared: Arc<Shared>,
}

impl Lifecycle<KeyOf, Entry> for Hooks {
    type RequestState = Evicted;

    fn on_evict(&self, state: &mut Evicted, _key: KeyOf, entry: Entry) {
        match &state.inserting {
            // The entry being inserted, refused as too heavy: its records are withdrawn.
            Some(new) if new.version() == entry.version() => {
                self.shared.forget(&entry, EvictionReason::Replaced);
                state.capacity.push(entry);
            }
            // The resident entry of the key being written, which the insert replaced.
            Some(new) if new.key_bytes() == entry.key_bytes() => {
                self.shared.forget(&entry, EvictionReason::Replaced);
                state.replaced = Some(entry);
            }
            _ => {
                self.shared.forget(&entry, EvictionReason::Capacity);
                state.capacity.push(entry);
            }
        }
    }
}

/// What one cache call pushed out, collected under the shard lock and freed after it.
#[derive(Default)]
struct Evicted {
    /// The entry a plain insert is storing: an eviction of its key is a replacement.
    inserting: Option<Entry>,
    replaced: Option<Entry>,
    capacity: Vec<Entry>,
}

/// The cache's key: a second handle to the entry, hashed and compared as the entry's key
/// bytes, so the key costs no allocation of its own. Lookups pass the key as `&[u8]`, whose
/// `Hash` agrees with this one's (no UTF-8 check on the hot path).
#[derive(Clone)]
struct KeyOf(Entry);

impl KeyOf {
    #[inline]
    fn bytes(&self) -> &[u8] {
        self.0.key_bytes()
    }
}

impl PartialEq for KeyOf {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for KeyOf {}

impl Hash for KeyOf {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

impl Borrow<[u8]> for KeyOf {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

/// Shards: a power of two, at most 4 per core, and few enough that each shard holds at least
/// 64 entries, so that small caches keep an exact, policy-wide eviction order.
fn shard_count(max_entries: u64) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let by_cores = (cores * 4).next_power_of_two();
    let by_size = (max_entries / 64).max(1);
    let by_size = if by_size.is_power_of_two() { by_size } else { by_size.next_power_of_two() / 2 };
    by_cores.min(by_size as usize).max(1)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::engine::test_support::{self, key, parts};

    fn l1(max_entries: usize, max_bytes: u64) -> L1 {
        let config = L1Config {
            max_entries: NonZeroUsize::new(max_entries).unwrap(),
            max_bytes,
            cleanup_interval: std::time::Duration::from_secs(60),
        };
        L1::new(&config, Arc::new(Metrics::new()))
    }

    /// An entry of `value_len` bytes living from 0 to 60 s.
    fn entry(key: &Key, value_len: usize, version: u64, tags: &[&str], deps: &[&str]) -> Entry {
        test_support::entry(parts(key, vec![b'1'; value_len], (0, 60_000), tags, deps), version)
    }

    #[test]
    fn entry_count_stays_within_max_entries() {
        let cache = l1(100, 1 << 30);
        for idx in 0..300 {
            let k = key(&format!("k{idx}"));
            cache.insert(entry(&k, 10, idx, &[], &[]));
            assert!(cache.len() <= 100);
        }
        assert!(cache.len() >= 90, "the cache fills up: {}", cache.len());
    }

    #[test]
    fn bytes_stay_within_max_bytes_and_are_counted_exactly() {
        let cache = l1(10_000, 64 * 1024);
        let mut version = 0;
        for idx in 0..100 {
            let k = key(&format!("k{idx}"));
            version += 1;
            cache.insert(entry(&k, 4000, version, &["t"], &["dep"]));
            assert!(cache.bytes() <= 64 * 1024, "{}", cache.bytes());
        }
        let resident: u64 = cache.cache.iter().map(|(_, entry)| entry.size() as u64).sum();
        assert_eq!(cache.bytes(), resident);
        // Every index record belongs to a resident entry.
        assert_eq!(cache.tagged("t").len(), cache.len());
        assert_eq!(cache.dependents("dep").len(), cache.len());
    }

    #[test]
    fn replace_updates_indexes_and_bytes() {
        let cache = l1(100, 1 << 20);
        let k = key("k");
        cache.insert(entry(&k, 10, 1, &["old"], &["a"]));
        let replaced = cache.insert(entry(&k, 20, 2, &["new"], &["b"]));
        assert_eq!(replaced.map(|old| old.version()), Some(1));
        assert!(cache.tagged("old").is_empty());
        assert!(cache.dependents("a").is_empty());
        assert_eq!(cache.tagged("new"), vec![(k.clone(), 2)]);
        assert_eq!(cache.dependents("b"), vec![(k.clone(), 2)]);
        assert_eq!(cache.bytes(), cache.peek("k").unwrap().size() as u64);
        cache.remove("k", EvictionReason::Invalidated);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.index_sizes(), (0, 0));
    }

    #[test]
    fn a_replaced_entry_is_released_with_its_key_handle() {
        let cache = l1(100, 1 << 20);
        let k = key("k");
        let old = entry(&k, 10, 1, &[], &[]);
        cache.insert(old.clone());
        assert_eq!(old.handles(), 3, "ours, the slot's key and the slot's value");
        let replaced = cache.insert(entry(&k, 20, 2, &[], &[])).expect("the old entry comes back");
        assert_eq!(replaced.version(), 1);
        drop(replaced);
        assert_eq!(old.handles(), 1, "neither the key nor the value of the slot holds the old entry");
        assert_eq!(cache.peek("k").unwrap().version(), 2);
        assert_eq!(cache.shared.metrics.counters.evicted_capacity.get(), 0, "a replacement is no eviction");

        // Too heavy for its shard: refused, the old entry is gone, and nothing is kept.
        let huge = entry(&k, 2 << 20, 3, &["t"], &[]);
        let replaced = cache.insert(huge.clone()).expect("the resident entry was replaced");
        assert_eq!(replaced.version(), 2);
        assert!(cache.peek("k").is_none());
        assert_eq!(huge.handles(), 1);
        assert_eq!((cache.bytes(), cache.index_sizes()), (0, (0, 0)));
    }

    #[test]
    fn conditional_remove_spares_a_newer_version() {
        let cache = l1(100, 1 << 20);
        let k = key("k");
        cache.insert(entry(&k, 10, 1, &["t"], &[]));
        cache.insert(entry(&k, 10, 2, &["t"], &[]));
        assert!(cache.remove_version("k", 1, EvictionReason::Expired).is_none());
        assert_eq!(cache.tagged("t"), vec![(k.clone(), 2)]);
        assert!(cache.remove_version("k", 2, EvictionReason::Expired).is_some());
        assert!(cache.tagged("t").is_empty());
    }

    #[test]
    fn capacity_evictions_clean_the_indexes() {
        let cache = l1(64, 1 << 30);
        for idx in 0..640u64 {
            let k = key(&format!("k{idx}"));
            cache.insert(entry(&k, 10, idx + 1, &["all"], &["root"]));
        }
        assert_eq!(cache.tagged("all").len(), cache.len());
        assert_eq!(cache.dependents("root").len(), cache.len());
        assert!(cache.shared.metrics.counters.evicted_capacity.get() >= 576);
    }

    #[test]
    fn policy_keeps_frequently_read_entries_through_a_scan() {
        // One shard (64 entries), so the order is policy-wide.
        let cache = l1(64, 1 << 30);
        let mut version = 0;
        let mut put = |name: String| {
            version += 1;
            let k = key(&name);
            cache.insert(entry(&k, 10, version, &[], &[]));
        };
        for idx in 0..32 {
            put(format!("hot{idx}"));
        }
        for _ in 0..3 {
            for idx in 0..32 {
                assert!(cache.get(&format!("hot{idx}")).is_some());
            }
        }
        // A scan of one-hit wonders, four times the capacity.
        for idx in 0..256 {
            put(format!("scan{idx}"));
        }
        let hot_left = (0..32).filter(|idx| cache.peek(&format!("hot{idx}")).is_some()).count();
        assert!(hot_left >= 30, "a scan must not flush the frequently read entries: {hot_left} of 32 left");
        let scan_left = (0..256).filter(|idx| cache.peek(&format!("scan{idx}")).is_some()).count();
        assert!(scan_left <= 34, "{scan_left}");
    }

    #[test]
    fn coldest_ranks_unread_and_oldest_first() {
        let cache = l1(100, 1 << 20);
        for (version, name) in ["a", "b", "c"].iter().enumerate() {
            let k = key(name);
            cache.insert(entry(&k, 10, version as u64 + 1, &[], &[]));
        }
        cache.get("a");
        cache.get("a");
        cache.get("c");
        let names: Vec<String> = cache.coldest(2).into_iter().map(|(key, _)| key.as_str().to_string()).collect();
        assert_eq!(names, vec!["b", "c"]);
    }

    #[test]
    fn sweep_removes_only_expired_entries() {
        let cache = l1(100, 1 << 20);
        let fresh = key("fresh");
        cache.insert(entry(&fresh, 10, 1, &["t"], &[]));
        let short = key("short");
        let short_entry = test_support::entry(parts(&short, &b"1"[..], (0, 1_000), &["t"], &[]), 2);
        cache.insert(short_entry);
        assert_eq!(cache.remove_expired(1_000), 1);
        assert!(cache.peek("short").is_none());
        assert!(cache.peek("fresh").is_some());
        assert_eq!(cache.tagged("t"), vec![(fresh, 1)]);
    }

    #[test]
    fn a_fill_racing_a_removal_or_write_is_dropped() {
        let cache = l1(100, 1 << 20);
        let k = key("k");
        let token = cache.fill_token("k");
        cache.remove("k", EvictionReason::Invalidated); // Nothing resident: still cancels the fill.
        assert!(!cache.insert_fill(entry(&k, 10, 1, &[], &[]), token, 0));
        assert!(cache.peek("k").is_none());

        let token = cache.fill_token("k");
        cache.insert(entry(&k, 10, 2, &[], &[]));
        assert!(!cache.insert_fill(entry(&k, 10, 3, &[], &[]), token, 0));
        assert_eq!(cache.peek("k").unwrap().version(), 2, "the write wins over the older fill");

        let other = key("other");
        let token = cache.fill_token("other");
        cache.clear();
        assert!(!cache.insert_fill(entry(&other, 10, 4, &[], &[]), token, 0));

        let token = cache.fill_token("other");
        assert!(cache.insert_fill(entry(&other, 10, 5, &[], &[]), token, 0));
        assert_eq!(cache.peek("other").unwrap().version(), 5);

        let token = cache.fill_token("other");
        assert!(!cache.insert_fill(entry(&other, 10, 6, &[], &[]), token, 59_999), "a fresh copy stays");
        assert!(cache.insert_fill(entry(&other, 10, 7, &[], &[]), token, 60_000), "a stale copy is replaced");
        assert_eq!(cache.peek("other").unwrap().version(), 7);
    }

    #[test]
    fn shard_count_is_a_bounded_power_of_two() {
        assert_eq!(shard_count(1), 1);
        assert_eq!(shard_count(100), 1);
        assert_eq!(shard_count(128), 2);
        assert!(shard_count(10_000).is_power_of_two());
        assert!(shard_count(10_000_000) <= 4 * std::thread::available_parallelism().unwrap().get().next_power_of_two());
    }
}
