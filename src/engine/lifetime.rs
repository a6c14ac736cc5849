//! The one recipe for this cache's entries: how long an L1 copy is fresh (its entry's expiry,
//! capped by `l1.max_ttl_secs` when L2 is there to refill it), how long it is kept past expiry
//! to be served stale (`cache.grace_secs`), and how long L2 keeps an entry (its TTL plus that
//! grace, so every instance can serve it stale).

use std::time::Duration;

use super::entry::{EntryParts, NewEntry};
use super::{Instance, Key};
use crate::config::LifetimeConfig;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetime {
    /// `l1.max_ttl_secs`, only with L2: without it there is nothing to refill from.
    l1_max_ttl: Option<Duration>,
    grace: Duration,
}

impl Lifetime {
    /// The lifetimes of a cache of `instance` (the L1 cap holds only with L2).
    pub fn of(config: LifetimeConfig, instance: &Instance) -> Lifetime {
        Lifetime { l1_max_ttl: config.l1_max_ttl.filter(|_| instance.has_l2()), grace: config.grace }
    }

    /// An entry of `parts` with `version`, its L1 copy's lifetime set for a copy made at `now_ms`.
    pub fn entry(&self, parts: EntryParts, version: u64, now_ms: u64) -> NewEntry {
        NewEntry::new(parts, version).with_l1_lifetime(self.l1_deadline(now_ms), self.grace_ms())
    }

    /// A remembered origin 404 until `expires_at_ms`: never kept past it, never stale.
    pub fn negative(&self, key: &Key, now_ms: u64, expires_at_ms: u64, version: u64) -> NewEntry {
        NewEntry::negative(key, now_ms, expires_at_ms, version).with_l1_lifetime(self.l1_deadline(now_ms), 0)
    }

    /// When an L1 copy written or filled at `now_ms` stops being fresh.
    pub fn l1_deadline(&self, now_ms: u64) -> u64 {
        match self.l1_max_ttl {
            Some(max_ttl) => now_ms.saturating_add(max_ttl.as_millis() as u64),
            None => u64::MAX,
        }
    }

    /// How long past its expiry a copy is served stale; zero = never.
    pub fn grace_ms(&self) -> u64 {
        self.grace.as_millis() as u64
    }

    /// How long L2 keeps an entry of `ttl`.
    pub fn l2_retention(&self, ttl: Duration) -> Duration {
        ttl.saturating_add(self.grace)
    }
}
