//! The read path: L1, then L2 (filling L1 with the entry's remaining TTL, capped by
//! `l1.max_ttl_secs`), then a miss. An L2 outage is a miss, never an error: the breaker and
//! `l2.timeout_ms` bound how long a read can wait for Redis.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::l2::{Envelope, L2};
use super::{Engine, Entry, Hit, Key, Source, Tag};
use crate::metrics::EvictionReason;

impl Engine {
    /// The fresh entry for `key` from the nearest tier that has it, counting a hit or a miss.
    pub async fn get(&self, key: &Key) -> Option<Hit> {
        if let Some(hit) = self.get_l1(key.as_str()) {
            self.metrics.hits_l1.inc();
            return Some(hit);
        }
        let hit = match &self.l2 {
            Some(l2) => self.get_l2(l2, key).await,
            None => None,
        };
        match hit {
            Some(_) => self.metrics.hits_l2.inc(),
            None => self.metrics.misses.inc(),
        }
        hit
    }

    /// The fresh entries for `keys` (distinct), in order: one L2 round trip for all L1 misses.
    pub async fn get_many(&self, keys: &[Key]) -> Vec<Option<Hit>> {
        let mut hits: Vec<Option<Hit>> = keys.iter().map(|key| self.get_l1(key.as_str())).collect();
        let n_l1 = hits.iter().filter(|hit| hit.is_some()).count();
        self.metrics.hits_l1.inc_by(n_l1 as u64);
        if let Some(l2) = &self.l2 {
            let missing: Vec<usize> = (0..keys.len()).filter(|idx| hits[*idx].is_none()).collect();
            if !missing.is_empty() {
                let tokens: Vec<_> = missing.iter().map(|idx| self.l1.fill_token(keys[*idx].as_str())).collect();
                let names: Vec<&str> = missing.iter().map(|idx| keys[*idx].as_str()).collect();
                if let Ok(envelopes) = l2.get_many(&names).await {
                    for ((idx, token), envelope) in missing.iter().zip(tokens).zip(envelopes) {
                        hits[*idx] = match envelope {
                            Some(envelope) => self.fill_from_l2(&keys[*idx], envelope, token),
                            None => {
                                self.metrics.l2_misses.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                        };
                        if hits[*idx].is_some() {
                            self.metrics.hits_l2.inc();
                        }
                    }
                }
            }
        }
        let n_missing = hits.iter().filter(|hit| hit.is_none()).count();
        self.metrics.misses.inc_by(n_missing as u64);
        hits
    }

    /// L1 alone, without counting: an expired copy is removed and never returned.
    #[inline]
    fn get_l1(&self, key: &str) -> Option<Hit> {
        let entry = self.l1.get(key)?;
        if entry.is_expired(self.clock.now_ms()) {
            self.l1.remove_version(key, entry.version(), EvictionReason::Expired);
            return None;
        }
        Some(Hit { entry, source: Source::L1 })
    }

    async fn get_l2(&self, l2: &L2, key: &Key) -> Option<Hit> {
        let token = self.l1.fill_token(key.as_str());
        match l2.get(key.as_str()).await {
            Ok(Some(envelope)) => self.fill_from_l2(key, envelope, token),
            Ok(None) => {
                self.metrics.l2_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(err) => {
                tracing::debug!(%err, "l2 read failed, answering from the tiers that remain");
                None
            }
        }
    }

    /// Turns an L2 envelope into a hit and copies it into L1 unless the key changed meanwhile.
    fn fill_from_l2(&self, key: &Key, envelope: Envelope, token: super::l1::FillToken) -> Option<Hit> {
        let now_ms = self.clock.now_ms();
        if envelope.expires_at_ms <= now_ms {
            return None;
        }
        let tags: Result<Box<[Tag]>, _> = envelope.tags.iter().map(|tag| Tag::parse(tag)).collect();
        let depends_on: Result<Box<[Key]>, _> =
            envelope.depends_on.iter().map(|dep| Key::parse(dep, self.limits.max_key_bytes)).collect();
        let (Ok(tags), Ok(depends_on)) = (tags, depends_on) else {
            self.metrics.l2_errors.inc();
            tracing::warn!("l2 entry with invalid tags or dependencies, treated as a miss");
            return None;
        };
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let entry =
            Entry::new(key, envelope.value, envelope.cached_at_ms, envelope.expires_at_ms, tags, depends_on, version);
        let entry = Arc::new(entry.with_l1_deadline(self.l1_deadline(now_ms)));
        if self.l1.fits(entry.size()) {
            self.l1.insert_fill(key, entry.clone(), token);
        }
        Some(Hit { entry, source: Source::L2 })
    }

    /// When an L1 copy written or filled now must be dropped.
    pub(super) fn l1_deadline(&self, now_ms: u64) -> u64 {
        match (self.l2.is_some(), self.l1_max_ttl) {
            (true, Some(max_ttl)) => now_ms.saturating_add(max_ttl.as_millis() as u64),
            _ => u64::MAX,
        }
    }
}
