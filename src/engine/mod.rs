//! The cache itself: tiers, invalidation and entry rules, with no knowledge of HTTP.
//!
//! `Engine` is the one entry point the HTTP layer and the tasks call. It speaks domain types
//! (`Key`, `Entry`, `Source`) and reports failures as `EngineError`; a miss is `None`.
//! Tiers: L1 (in process) and, when configured, L2 (Redis, shared), in front of an optional
//! HTTP origin. Reads go L1 → L2 → origin, one flight per key (`read.rs`, `flight.rs`,
//! `origin.rs`); writes go to both tiers before they are answered (`write.rs`); invalidations
//! act on both and are published to the other instances (`invalidation.rs`, `messages.rs`).

pub mod clock;
pub mod entry;
pub mod error;
mod flight;
pub mod glob;
mod invalidation;
pub mod key;
mod l1;
pub mod l2;
mod messages;
mod origin;
mod prefetch;
mod read;
pub mod snapshot;
pub mod warm;
mod write;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

pub use self::clock::Clock;
pub use self::entry::{Entry, NewEntry};
pub use self::error::EngineError;
use self::flight::Flights;
pub use self::key::{Key, Tag};
use self::l1::L1;
use self::l2::{L2Status, L2};
use self::messages::SequenceTracker;
use self::origin::Origin;
pub use self::origin::OriginError;
use self::prefetch::PrefetchQueue;
use self::read::Resolved;
use crate::config::{CacheConfig, EntryLimits, InstanceConfig, WritePolicy};
use crate::metrics::{EvictionReason, Metrics};

/// Which tier answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Origin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::Origin => "origin",
        }
    }
}

/// How an answered entry stands: the `X-Cache` and `Cache-Status` of a GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A fresh copy from L1 or L2.
    Fresh,
    /// Fetched from the origin for this read; `stored` unless the origin forbade caching it.
    Fetched { stored: bool },
    /// Past its expiry, within `cache.grace_secs`.
    Stale(Stale),
}

/// Why a stale copy was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// A background refresh runs (stale-while-revalidate).
    Refreshing,
    /// The origin failed or did not answer in time (fail-safe).
    OriginFailed,
    /// Nothing could refresh it: no origin, and no other tier to look in.
    NoRefresh,
}

/// What a read found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Hit(Hit),
    Miss(Miss),
}

/// Why a read found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No tier has it and there is no origin.
    Absent,
    /// The origin answered 404; `stored` when it is remembered (`origin.negative_ttl_secs`).
    NotFound { stored: bool },
    /// A 404 of the origin, remembered.
    Negative,
}

/// What happened to a write in L2, the `"l2"` field of a PUT answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Write {
    Stored,
    Disabled,
    Unavailable,
}

impl L2Write {
    pub fn as_str(self) -> &'static str {
        match self {
            L2Write::Stored => "stored",
            L2Write::Disabled => "disabled",
            L2Write::Unavailable => "unavailable",
        }
    }
}

/// The `l2` field of `/health` and `l2_status` of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierStatus {
    Up,
    Down,
    Disabled,
}

impl TierStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TierStatus::Up => "up",
            TierStatus::Down => "down",
            TierStatus::Disabled => "disabled",
        }
    }
}

/// An entry, the tier it came from, and how it stands.
#[derive(Debug, Clone)]
pub struct Hit {
    pub entry: Entry,
    pub source: Source,
    pub served: Served,
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
    pub l2: L2Write,
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
#[derive(Debug, Clone, Copy, PartialEq)]
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
    pub l2_misses: u64,
    pub l2_errors: u64,
    pub compression_ratio: f64,
    pub invalidations_published: u64,
    pub invalidations_received: u64,
    pub invalidations_malformed: u64,
    /// Origin requests, whatever their result; `origin_errors` counts the failed ones.
    pub origin_fetches: u64,
    pub origin_errors: u64,
    pub coalesced: u64,
    pub stale_served: u64,
    pub prefetch_requests: u64,
    pub prefetch_hits: u64,
    pub prefetch_queue_size: u64,
    /// Unix ms of the last snapshot written by this process.
    pub snapshot_last_success_ms: Option<u64>,
}

pub struct Engine {
    l1: L1,
    l2: Option<L2>,
    limits: EntryLimits,
    write_policy: WritePolicy,
    /// With L2, how long an L1 copy may live (`l1.max_ttl_secs`); `None` = the entry's TTL.
    l1_max_ttl: Option<Duration>,
    channel: String,
    flush_l1_on_reconnect: bool,
    /// `cache.grace_secs`; zero = no stale serving.
    grace: Duration,
    origin: Option<Origin>,
    /// Lookups below L1 in flight, one per key (`flight.rs`).
    flights: Flights<Resolved>,
    prefetch_queue: PrefetchQueue,
    /// Flight tasks: short-lived (bounded by `origin.timeout_ms`), waited for at shutdown.
    background: TaskTracker,
    instance_id: String,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Source of `Entry::version`; unique per write for the life of the process.
    next_version: AtomicU64,
    /// Number of the last invalidation message this instance published.
    last_seq: AtomicU64,
    peers: SequenceTracker,
    /// True once the subscriber has subscribed to the invalidation channel (with L2): from
    /// then on every change another instance makes reaches this one. A snapshot restore waits
    /// for it before checking its entries against L2 (`snapshot.rs`).
    subscribed: tokio::sync::watch::Sender<bool>,
}

impl Engine {
    pub fn new(
        instance: &InstanceConfig,
        config: CacheConfig,
        instance_id: String,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        Self {
            l1: L1::new(&config.l1, metrics.clone()),
            l2: instance.l2.clone().map(|l2_config| L2::new(l2_config, metrics.clone())),
            limits: config.limits,
            write_policy: instance.write_policy,
            l1_max_ttl: config.lifetime.l1_max_ttl,
            channel: instance.bus.channel.clone(),
            flush_l1_on_reconnect: instance.bus.flush_l1_on_reconnect,
            grace: config.lifetime.grace,
            origin: config.origin.map(Origin::new),
            flights: Flights::new(),
            prefetch_queue: PrefetchQueue::new(config.prefetch.max_queue),
            background: TaskTracker::new(),
            instance_id,
            clock,
            metrics,
            next_version: AtomicU64::new(1),
            last_seq: AtomicU64::new(0),
            peers: SequenceTracker::new(),
            subscribed: tokio::sync::watch::Sender::new(false),
        }
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

    pub fn has_l2(&self) -> bool {
        self.l2.is_some()
    }

    pub fn has_origin(&self) -> bool {
        self.origin.is_some()
    }

    /// Waits, bounded, for the flights still running (shutdown, after requests drained).
    pub async fn finish_background(&self, limit: Duration) -> bool {
        self.background.close();
        tokio::time::timeout(limit, self.background.wait()).await.is_ok()
    }

    pub fn l2_config(&self) -> Option<&crate::config::L2Config> {
        self.l2.as_ref().map(L2::config)
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Opens the L2 data connection (the monitor task retries it).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect_l2(&self) -> Result<(), l2::L2Error> {
        match &self.l2 {
            Some(l2) => l2.connect().await,
            None => Ok(()),
        }
    }

    /// One health round trip to L2; failures feed the breaker.
    pub async fn ping_l2(&self) {
        if let Some(l2) = &self.l2 {
            if l2.is_connected() {
                let _ = l2.ping().await;
            }
        }
    }

    /// Whether L2 had an outage since the last call: invalidations may have been missed.
    pub fn take_l2_outage_seen(&self) -> bool {
        self.l2.as_ref().is_some_and(L2::take_outage_seen)
    }

    pub fn l2_status(&self) -> TierStatus {
        match &self.l2 {
            None => TierStatus::Disabled,
            Some(l2) if l2.status() == L2Status::Up => TierStatus::Up,
            Some(_) => TierStatus::Down,
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
            evictions: metrics.evictions(EvictionReason::Capacity) + metrics.evictions(EvictionReason::Manual),
            expirations: metrics.evictions(EvictionReason::Expired),
            l1_size: self.l1.len() as u64,
            l1_bytes: self.l1.bytes(),
            l2_misses: metrics.l2_misses.load(std::sync::atomic::Ordering::Relaxed),
            l2_errors: metrics.l2_errors.get(),
            compression_ratio: metrics.compression_ratio(),
            invalidations_published: metrics.invalidations_published.get(),
            invalidations_received: metrics.invalidations_received.get(),
            invalidations_malformed: metrics.invalidations_malformed.get(),
            origin_fetches: metrics.origin_ok.get() + metrics.origin_not_found.get() + metrics.origin_errors.get(),
            origin_errors: metrics.origin_errors.get(),
            coalesced: metrics.coalesced.get(),
            stale_served: metrics.stale_served.get(),
            prefetch_requests: metrics.prefetch_requests.get(),
            prefetch_hits: metrics.prefetch_hits.get(),
            prefetch_queue_size: self.prefetch_queue.len() as u64,
            snapshot_last_success_ms: Some((metrics.snapshot_last_success.get() * 1000.0) as u64).filter(|ms| *ms > 0),
        }
    }

    /// Copies L1's size into the gauges (at scrape time and on the metrics interval).
    pub fn refresh_gauges(&self) {
        self.metrics.entries.set(self.l1.len() as i64);
        self.metrics.bytes.set(self.l1.bytes() as i64);
        self.metrics.prefetch_queue_size.set(self.prefetch_queue.len() as i64);
    }
}

fn dedup<T: std::hash::Hash + Eq + Clone>(items: Vec<T>) -> Box<[T]> {
    let mut seen = HashSet::with_capacity(items.len());
    items.into_iter().filter(|item| seen.insert(item.clone())).collect()
}
