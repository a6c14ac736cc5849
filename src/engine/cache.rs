//! One cache: what it owns and the rules of its entries. Its L1, entry limits and lifetimes,
//! origin and flights, prefetch queue, warmer and persistence are its own; L2, the bus, the
//! clock and the metrics belong to the [`Instance`] it shares with every other cache. The read,
//! write and invalidation paths are `Cache` methods in `read.rs`, `write.rs` and
//! `invalidation.rs`; snapshots in `snapshot/`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::entry::{EntryParts, NewEntry};
use super::flight::Flights;
use super::l1::L1;
use super::lifetime::Lifetime;
use super::origin::Origin;
use super::prefetch::PrefetchQueue;
use super::read::Resolved;
use super::snapshot::Persistence;
use super::warm::Warmer;
use super::{CacheStats, Clock, EngineError, Entry, Instance, Key, Tag, TierStatus, ValidWrite, WriteRequest};
use crate::config::{CacheConfig, EntryLimits};
use crate::metrics::{EvictionReason, Metrics};

pub struct Cache {
    pub(super) instance: Arc<Instance>,
    pub(super) l1: L1,
    pub(super) limits: EntryLimits,
    pub(super) lifetime: Lifetime,
    pub(super) origin: Option<Origin>,
    /// Lookups below L1 in flight, one per key (`flight.rs`).
    pub(super) flights: Flights<Resolved>,
    pub(super) prefetch_queue: PrefetchQueue,
    warmer: Warmer,
    /// `None` when `persistence.path` is empty.
    persistence: Option<Persistence>,
}

impl Cache {
    pub fn new(instance: Arc<Instance>, config: CacheConfig) -> Cache {
        Cache {
            l1: L1::new(&config.l1, instance.metrics_handle()),
            lifetime: Lifetime::of(config.lifetime, &instance),
            limits: config.limits,
            origin: config.origin.map(Origin::new),
            flights: Flights::new(),
            prefetch_queue: PrefetchQueue::new(config.prefetch.max_queue),
            warmer: Warmer::new(config.warm),
            persistence: config.persistence.map(|persistence| Persistence::new(persistence.path)),
            instance,
        }
    }

    /// A cache with an instance of its own (fresh metrics and clock): for unit tests and
    /// benchmarks, where no `App` assembles them.
    #[doc(hidden)]
    pub fn standalone(parts: &crate::config::Parts, instance_id: &str) -> Cache {
        let metrics = Arc::new(Metrics::new());
        let instance = Arc::new(Instance::new(&parts.instance, instance_id.into(), metrics, Clock::new()));
        Cache::new(instance, parts.cache.clone())
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    pub fn clock(&self) -> &Clock {
        self.instance.clock()
    }

    pub(super) fn metrics(&self) -> &Metrics {
        self.instance.metrics()
    }

    pub fn has_l2(&self) -> bool {
        self.instance.has_l2()
    }

    pub fn has_origin(&self) -> bool {
        self.origin.is_some()
    }

    pub fn l2_status(&self) -> TierStatus {
        self.instance.l2_status()
    }

    pub fn warmer(&self) -> &Warmer {
        &self.warmer
    }

    pub fn persistence(&self) -> Option<&Persistence> {
        self.persistence.as_ref()
    }

    /// An entry of `parts` made by this cache's recipe, with a fresh version, for a copy made
    /// at `now_ms`.
    pub(super) fn new_entry(&self, parts: EntryParts, now_ms: u64) -> NewEntry {
        self.lifetime.entry(parts, self.instance.next_version(), now_ms)
    }

    /// # Errors
    /// [`EngineError::InvalidKey`] for an empty, too long or control-character key.
    pub fn parse_key(&self, raw: &str) -> Result<Key, EngineError> {
        Key::parse(raw, self.limits.max_key_bytes)
    }

    /// A key an entry is about to be made under through the origin (prefetch, `warm.keys`);
    /// [`Engine::validate`] checks the same for written entries ([`Key::parse_writable`]).
    ///
    /// # Errors
    /// As [`Engine::parse_key`], and [`EngineError::InvalidKey`] for the name of a fixed route
    /// ([`key::RESERVED_KEYS`]).
    pub fn parse_writable_key(&self, raw: &str) -> Result<Key, EngineError> {
        Key::parse_writable(raw, self.limits.max_key_bytes)
    }

    /// Checks a write against the entry limits of SPEC §2 and the L1 capacity.
    ///
    /// # Errors
    /// The first limit the write breaks.
    pub fn validate(&self, request: WriteRequest) -> Result<ValidWrite, EngineError> {
        let limits = &self.limits;
        // Every client write comes through here (PUT, batch/set, warm items), whatever route
        // or body named the key.
        Key::parse_writable(request.key.as_str(), limits.max_key_bytes)?;
        if request.value.len() > limits.max_value_bytes {
            return Err(EngineError::ValueTooLarge(format!(
                "value is {} bytes serialized, the limit is {}",
                request.value.len(),
                limits.max_value_bytes
            )));
        }
        let ttl = match request.ttl_secs {
            None => limits.default_ttl,
            Some(0) => return Err(EngineError::InvalidTtl("ttl must be at least 1 second".into())),
            Some(secs) if secs > limits.max_ttl.as_secs() => {
                return Err(EngineError::InvalidTtl(format!(
                    "ttl must be at most {} seconds",
                    limits.max_ttl.as_secs()
                )))
            }
            Some(secs) => Duration::from_secs(secs),
        };
        if request.tags.len() > limits.max_tags {
            return Err(EngineError::InvalidTags(format!("at most {} tags per entry", limits.max_tags)));
        }
        if request.depends_on.len() > limits.max_deps {
            return Err(EngineError::InvalidDependencies(format!(
                "at most {} dependencies per entry",
                limits.max_deps
            )));
        }
        let tags = dedup(request.tags.iter().map(|raw| Tag::parse(raw)).collect::<Result<Vec<_>, _>>()?);
        let depends_on = dedup(
            request
                .depends_on
                .iter()
                .map(|raw| {
                    Key::parse(raw, limits.max_key_bytes)
                        .map_err(|err| EngineError::InvalidDependencies(err.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        let size = Entry::size_of(&request.key, request.value.len(), &tags, &depends_on);
        if !self.l1.fits(size) {
            return Err(EngineError::ValueTooLarge(format!(
                "an entry of {size} bytes does not fit in l1 (l1.max_bytes)"
            )));
        }
        Ok(ValidWrite { key: request.key, value: request.value, ttl, tags, depends_on })
    }

    /// Evicts `count` L1 entries: the policy's coldest, or with `predictions` the present
    /// keys least likely to be read. Evictions do not cascade.
    pub fn evict(&self, count: usize, predictions: Option<&HashMap<Key, f64>>) -> Vec<Key> {
        let victims: Vec<(Key, u64)> = match predictions {
            None => self.l1.coldest(count),
            Some(predictions) => {
                let mut present: Vec<(f64, Key, u64)> = predictions
                    .iter()
                    .filter_map(|(key, p)| self.l1.peek(key.as_str()).map(|entry| (*p, key.clone(), entry.version())))
                    .collect();
                present.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
                present.into_iter().take(count).map(|(_, key, version)| (key, version)).collect()
            }
        };
        victims
            .into_iter()
            .filter(|(key, version)| self.l1.remove_version(key.as_str(), *version, EvictionReason::Manual).is_some())
            .map(|(key, _)| key)
            .collect()
    }

    /// Removes expired entries (the background sweep); returns how many.
    pub fn remove_expired(&self) -> usize {
        self.l1.remove_expired(self.clock().now_ms())
    }

    /// The JSON metrics' counters (`Metrics` makes them from its one table) and this cache's
    /// sizes and ratios.
    pub fn stats(&self) -> CacheStats {
        let metrics = self.metrics();
        CacheStats {
            counters: metrics.counters.totals(),
            l1_size: self.l1.len() as u64,
            l1_bytes: self.l1.bytes(),
            prefetch_queue_size: self.prefetch_queue.len() as u64,
            compression_ratio: metrics.compression_ratio(),
            snapshot_last_success_ms: Some((metrics.snapshot_last_success.get() * 1000.0) as u64).filter(|ms| *ms > 0),
        }
    }

    /// Copies L1's size into the gauges (at scrape time and on the metrics interval).
    pub fn refresh_gauges(&self) {
        self.metrics().entries.set(self.l1.len() as i64);
        self.metrics().bytes.set(self.l1.bytes() as i64);
        self.metrics().prefetch_queue_size.set(self.prefetch_queue.len() as i64);
    }
}

fn dedup<T: std::hash::Hash + Eq + Clone>(items: Vec<T>) -> Box<[T]> {
    let mut seen = HashSet::with_capacity(items.len());
    items.into_iter().filter(|item| seen.insert(item.clone())).collect()
}
