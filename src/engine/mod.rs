//! The cache itself: tiers, invalidation and entry rules, with no knowledge of HTTP.
//!
//! Two owners. [`Instance`] is what every cache of an instance shares: the L2 client, the
//! invalidation bus, the clock, the metrics and the background tasks of fetches
//! (`instance.rs`, `bus.rs`). [`Cache`] is what one cache owns: its L1, entry limits and
//! lifetimes, origin and flights, prefetch queue, warmer and persistence (`cache.rs`). The HTTP
//! layer and the tasks call a `Cache`, in domain types (`Key`, `Entry`, `Source`); failures are
//! `EngineError`, a miss is `None`.
//!
//! Reads go L1 → L2 → origin, one flight per key (`read.rs`, `flight.rs`, `origin.rs`); writes
//! go to both tiers before they are answered (`write.rs`); invalidations act on both and are
//! published to the other instances (`invalidation.rs`, `bus.rs`, `messages.rs`).

mod bus;
mod cache;
pub mod clock;
pub mod entry;
pub mod error;
mod flight;
pub mod glob;
mod instance;
mod invalidation;
pub mod key;
mod l1;
pub mod l2;
mod lifetime;
mod messages;
mod origin;
mod prefetch;
mod read;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod test_support;
pub mod warm;
mod write;

use std::time::Duration;

use bytes::Bytes;

pub use self::cache::Cache;
pub use self::clock::Clock;
pub use self::entry::{Entry, EntryParts};
pub use self::error::EngineError;
pub use self::instance::Instance;
pub use self::key::{Key, Tag};
pub use self::origin::OriginError;
pub use self::read::Brought;

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

/// What the JSON metrics report of a cache: the counter fields by name, and its sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStats {
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    pub l1_size: u64,
    pub l1_bytes: u64,
    pub prefetch_queue_size: u64,
    /// Stored / original bytes over compressed values; 1.0 when none.
    pub compression_ratio: f64,
    /// Unix ms of the last snapshot written by this process.
    pub snapshot_last_success_ms: Option<u64>,
}

impl CacheStats {
    /// The counter field `name` (0 for a name no counter adds to).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}
