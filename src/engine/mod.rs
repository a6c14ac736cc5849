//! The cache itself: tiers, invalidation and entry rules, with no knowledge of HTTP.
//!
//! `Engine` is the one entry point the HTTP layer and the tasks call. It speaks domain types
//! (`Key`, `Entry`, `Source`) and reports failures as `EngineError`; a miss is `None`.
//! Today it has one tier (L1); L2 and the origin plug in behind the same calls.

pub mod clock;
pub mod entry;
pub mod error;
pub mod glob;
mod invalidation;
pub mod key;
mod l1;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use self::clock::Clock;
pub use self::entry::Entry;
pub use self::error::EngineError;
pub use self::key::{Key, Tag};
use self::l1::L1;
use crate::config::{EngineConfig, EntryLimits};
use crate::metrics::{EvictionReason, Metrics};

/// Which tier answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    L1,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::L1 => "l1",
        }
    }
}

/// A fresh entry and the tier it came from.
#[derive(Debug, Clone)]
pub struct Hit {
    pub entry: Arc<Entry>,
    pub source: Source,
}

/// A write as a caller asks for it; [`Engine::validate`] checks it against the limits.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub key: Key,
    pub value: Bytes,
    pub ttl_secs: Option<u64>,
    pub tags: Vec<String>,
    pub depends_on: Vec<String>,
}

/// A write that passed every check: storing it cannot fail.
#[derive(Debug, Clone)]
pub struct ValidWrite {
    key: Key,
    value: Bytes,
    ttl: Duration,
    tags: Box<[Tag]>,
    depends_on: Box<[Key]>,
}

impl ValidWrite {
    pub fn key(&self) -> &Key {
        &self.key
    }
}

/// What a stored write reports back.
#[derive(Debug, Clone, Copy)]
pub struct WriteOutcome {
    pub expires_at_ms: u64,
}

/// What a delete reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteOutcome {
    pub deleted: bool,
    /// Distinct keys removed, the key itself and its cascaded dependents included.
    pub invalidated: usize,
}

/// What to invalidate; at least one part is present (the HTTP layer checks).
#[derive(Debug, Clone, Default)]
pub struct Invalidation {
    pub keys: Vec<Key>,
    pub pattern: Option<String>,
    pub tags: Vec<String>,
}

/// Counters and sizes for the JSON metrics.
#[derive(Debug, Clone, Copy)]
pub struct EngineStats {
    pub hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub l1_size: u64,
    pub l1_bytes: u64,
}

pub struct Engine {
    l1: L1,
    limits: EntryLimits,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Source of `Entry::version`; unique per write for the life of the process.
    next_version: AtomicU64,
}

impl Engine {
    pub fn new(config: EngineConfig, metrics: Arc<Metrics>, clock: Clock) -> Self {
        Self {
            l1: L1::new(&config.l1, metrics.clone()),
            limits: config.limits,
            clock,
            metrics,
            next_version: AtomicU64::new(1),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// # Errors
    /// [`EngineError::InvalidKey`] for an empty, too long or control-character key.
    pub fn parse_key(&self, raw: &str) -> Result<Key, EngineError> {
        Key::parse(raw, self.limits.max_key_bytes)
    }

    /// Checks a write against the entry limits of SPEC §2 and the L1 capacity.
    ///
    /// # Errors
    /// The first limit the write breaks.
    pub fn validate(&self, request: WriteRequest) -> Result<ValidWrite, EngineError> {
        let limits = &self.limits;
        if request.value.len() > limits.max_value_bytes {
            return Err(EngineError::ValueTooLarge(format!(
                "value is {} bytes serialized, the limit is {}",
                request.value.len(),
                limits.max_value_bytes
            )));
        }
        let ttl = match request.ttl_secs {
            None => limits.default_ttl,
            Some(0) => {
                return Err(EngineError::InvalidTtl(
                    "ttl must be at least 1 second".into(),
                ))
            }
            Some(secs) if secs > limits.max_ttl.as_secs() => {
                return Err(EngineError::InvalidTtl(format!(
                    "ttl must be at most {} seconds",
                    limits.max_ttl.as_secs()
                )))
            }
            Some(secs) => Duration::from_secs(secs),
        };
        if request.tags.len() > limits.max_tags {
            return Err(EngineError::InvalidTags(format!(
                "at most {} tags per entry",
                limits.max_tags
            )));
        }
        if request.depends_on.len() > limits.max_deps {
            return Err(EngineError::InvalidDependencies(format!(
                "at most {} dependencies per entry",
                limits.max_deps
            )));
        }
        let tags = dedup(
            request
                .tags
                .iter()
                .map(|raw| Tag::parse(raw))
                .collect::<Result<Vec<_>, _>>()?,
        );
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
        Ok(ValidWrite {
            key: request.key,
            value: request.value,
            ttl,
            tags,
            depends_on,
        })
    }

    /// The fresh entry for `key`, counting a hit or a miss. An expired entry is removed and
    /// never returned.
    #[inline]
    pub fn get(&self, key: &str) -> Option<Hit> {
        match self.l1.get(key) {
            Some(entry) if !entry.is_expired(self.clock.now_ms()) => {
                self.metrics.hits_l1.inc();
                Some(Hit {
                    entry,
                    source: Source::L1,
                })
            }
            Some(expired) => {
                self.l1
                    .remove_version(key, expired.version(), EvictionReason::Expired);
                self.metrics.misses.inc();
                None
            }
            None => {
                self.metrics.misses.inc();
                None
            }
        }
    }

    /// Stores a write, then invalidates the keys that depend on it (never the key itself).
    pub fn set(&self, write: ValidWrite) -> WriteOutcome {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let entry = Entry::new(
            &write.key,
            write.value,
            self.clock.now_ms(),
            write.ttl,
            write.tags,
            write.depends_on,
            version,
        );
        let expires_at_ms = entry.expires_at_ms();
        self.l1.insert(&write.key, Arc::new(entry));
        self.metrics.sets.inc();
        let n_invalidated = self.invalidate_dependents_of(&write.key);
        tracing::debug!(key_len = write.key.len(), n_invalidated, "write cascade");
        WriteOutcome { expires_at_ms }
    }

    /// Removes `key` and every key that depends on it, transitively.
    pub fn delete(&self, key: &Key) -> DeleteOutcome {
        let (deleted, invalidated) = self.remove_and_cascade(key);
        if deleted {
            self.metrics.deletes.inc();
        }
        DeleteOutcome {
            deleted,
            invalidated,
        }
    }

    /// Removes what `invalidation` selects plus their dependents; returns the distinct keys
    /// removed.
    pub fn invalidate(&self, invalidation: &Invalidation) -> usize {
        let mut roots: Vec<(Key, Option<u64>)> = invalidation
            .keys
            .iter()
            .map(|key| (key.clone(), None))
            .collect();
        if let Some(pattern) = &invalidation.pattern {
            if glob::is_literal(pattern) {
                if let Ok(key) = self.parse_key(pattern) {
                    roots.push((key, None));
                }
            } else {
                roots.extend(
                    self.l1
                        .keys_where(|key| glob::matches(pattern, key.as_str()))
                        .into_iter()
                        .map(|(key, v)| (key, Some(v))),
                );
            }
        }
        for tag in &invalidation.tags {
            roots.extend(
                self.l1
                    .tagged(tag)
                    .into_iter()
                    .map(|(key, version)| (key, Some(version))),
            );
        }
        self.invalidate_roots(roots)
    }

    /// Evicts `count` L1 entries: the policy's coldest, or with `predictions` the present
    /// keys least likely to be read. Evictions do not cascade.
    pub fn evict(&self, count: usize, predictions: Option<&HashMap<Key, f64>>) -> Vec<Key> {
        let victims: Vec<(Key, u64)> = match predictions {
            None => self.l1.coldest(count),
            Some(predictions) => {
                let mut present: Vec<(f64, Key, u64)> = predictions
                    .iter()
                    .filter_map(|(key, p)| {
                        self.l1
                            .peek(key.as_str())
                            .map(|entry| (*p, key.clone(), entry.version()))
                    })
                    .collect();
                present.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
                present
                    .into_iter()
                    .take(count)
                    .map(|(_, key, version)| (key, version))
                    .collect()
            }
        };
        victims
            .into_iter()
            .filter(|(key, version)| {
                self.l1
                    .remove_version(key.as_str(), *version, EvictionReason::Manual)
                    .is_some()
            })
            .map(|(key, _)| key)
            .collect()
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        self.l1.clear()
    }

    /// Removes expired entries (the background sweep); returns how many.
    pub fn remove_expired(&self) -> usize {
        self.l1.remove_expired(self.clock.now_ms())
    }

    pub fn stats(&self) -> EngineStats {
        let metrics = &self.metrics;
        EngineStats {
            hits: metrics.hits_l1.get() + metrics.hits_l2.get(),
            l2_hits: metrics.hits_l2.get(),
            misses: metrics.misses.get(),
            sets: metrics.sets.get(),
            deletes: metrics.deletes.get(),
            evictions: metrics.evictions(EvictionReason::Capacity)
                + metrics.evictions(EvictionReason::Manual),
            expirations: metrics.evictions(EvictionReason::Expired),
            l1_size: self.l1.len() as u64,
            l1_bytes: self.l1.bytes(),
        }
    }

    /// Copies L1's size into the gauges (at scrape time and on the metrics interval).
    pub fn refresh_gauges(&self) {
        self.metrics.entries.set(self.l1.len() as i64);
        self.metrics.bytes.set(self.l1.bytes() as i64);
    }
}

fn dedup<T: std::hash::Hash + Eq + Clone>(items: Vec<T>) -> Box<[T]> {
    let mut seen = HashSet::with_capacity(items.len());
    items
        .into_iter()
        .filter(|item| seen.insert(item.clone()))
        .collect()
}
