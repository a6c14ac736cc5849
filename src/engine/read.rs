//! The read path: L1 → (one flight per key) L2 → origin → miss, with stale serving.
//!
//! 1. L1 (synchronous, no allocation on a fresh hit). A fresh copy answers. A copy past its
//!    expiry but within grace answers at once, marked stale, and starts a refresh flight unless
//!    one runs (stale-while-revalidate). A copy only past its L1 deadline (`l1.max_ttl_secs`) is
//!    kept aside as the fallback.
//! 2. Anything else joins the key's flight (`flight.rs`): L2, filling L1 with the remaining
//!    TTL; then the origin, storing what it may cache in L1 and L2. A stale L2 copy is handed to
//!    the waiters at once while the same flight goes on to the origin.
//! 3. When the origin fails or the wait passes `origin.timeout_ms`, a stale copy within grace
//!    is served (fail-safe), else the error. An L2 outage is a miss, never an error.
//!
//! Fills honour the L1 fill token taken when the flight starts: a write, removal or clear of
//! the key since then wins, and the fill is dropped (and its L2 write skipped).
//!
//! Counting: `hits` (by tier) for fresh answers from L1 or L2, `misses` for everything the
//! cache could not answer itself (origin fetches included), `stale_served` for stale answers
//! (neither a hit nor a miss), `coalesced` for reads that joined a running flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::flight::{self, FlightRun};
use super::l1::FillToken;
use super::l2::Envelope;
use super::origin::{Fetched, OriginError};
use super::prefetch::{PrefetchOutcome, Queued};
use super::write::envelope_of;
use super::{Cache, EngineError, Entry, EntryParts, Hit, Key, Lookup, Miss, Served, Source, Stale, Tag};
use crate::metrics::EvictionReason;

/// How long a read waits for an L2-only flight (no origin): L2 calls are bounded by
/// `l2.timeout_ms` already, this only guards against a flight that never publishes.
const L2_ONLY_WAIT: Duration = Duration::from_secs(5);

/// What a flight found, shared by its waiters.
#[derive(Debug, Clone)]
pub(crate) enum Resolved {
    Found(Hit),
    /// No tier has it and there is no origin to ask.
    Absent,
    /// The origin answered 404; `stored` when it is remembered (`origin.negative_ttl_secs`).
    NotFound {
        stored: bool,
    },
    Failed(OriginError),
}

/// How a flight begins: with an L2 read, or straight at the origin when the caller has just
/// read L2 itself (a batch read's MGET) or there is no L2 copy to look for (an L2 stale copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L2Step {
    Read,
    Skip,
}

/// What an entry the origin brings is marked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brought {
    /// Asked for by a reader or a warm.
    OnDemand,
    /// Brought ahead of demand by prefetch: its first read counts in `prefetch_hits`.
    Prefetched,
}

/// What L1 holds for a key at one instant.
enum L1State {
    Fresh(Entry),
    /// A remembered origin 404.
    Negative,
    /// Past its expiry, within grace.
    Stale(Entry),
    /// Past its L1 deadline but not its expiry, within grace: a fallback, not an answer.
    Aged(Entry),
    Absent,
}

impl Cache {
    /// The answer for `key` from the nearest tier that has it, or the origin.
    ///
    /// # Errors
    /// [`EngineError::Origin`] when the origin failed and no stale copy could stand in.
    pub async fn read(self: &Arc<Self>, key: &Key) -> Result<Lookup, EngineError> {
        let fallback = match self.probe_l1(key, self.clock().now_ms()) {
            L1State::Fresh(entry) => {
                self.metrics().counters.hits_l1.inc();
                if entry.take_prefetched() {
                    self.metrics().counters.prefetch_hits.inc();
                }
                return Ok(Lookup::Hit(Hit { entry, source: Source::L1, served: Served::Fresh }));
            }
            L1State::Negative => {
                self.metrics().counters.misses.inc();
                return Ok(Lookup::Miss(Miss::Negative));
            }
            L1State::Stale(entry) => return Ok(Lookup::Hit(self.serve_stale(key, entry, Source::L1))),
            L1State::Aged(entry) => Some(entry),
            L1State::Absent => None,
        };
        if !self.has_l2() && self.origin.is_none() {
            self.metrics().counters.misses.inc();
            return Ok(Lookup::Miss(Miss::Absent));
        }
        let resolved = self.join_flight(key, L2Step::Read, Brought::OnDemand).await;
        self.settle(resolved, fallback)
    }

    /// The answers for `keys` (distinct), in order: L1, then one L2 round trip for the rest,
    /// then the origin for what is still missing, concurrently (each key coalesced with single
    /// reads). A key the origin failed for is a miss here, unless a stale copy stands in.
    pub async fn read_many(self: &Arc<Self>, keys: &[Key]) -> Vec<Option<Hit>> {
        let mut answers: Vec<Option<Hit>> = Vec::with_capacity(keys.len());
        let mut pending: Vec<(usize, Option<Entry>)> = Vec::new();
        // One instant for the whole batch: every key is judged fresh or not at the same time.
        let now_ms = self.clock().now_ms();
        for (idx, key) in keys.iter().enumerate() {
            answers.push(match self.probe_l1(key, now_ms) {
                L1State::Fresh(entry) => {
                    self.metrics().counters.hits_l1.inc();
                    Some(Hit { entry, source: Source::L1, served: Served::Fresh })
                }
                L1State::Negative => {
                    self.metrics().counters.misses.inc();
                    None
                }
                L1State::Stale(entry) => Some(self.serve_stale(key, entry, Source::L1)),
                L1State::Aged(entry) => {
                    pending.push((idx, Some(entry)));
                    None
                }
                L1State::Absent => {
                    pending.push((idx, None));
                    None
                }
            });
        }
        if let (Some(l2), false) = (self.instance.l2(), pending.is_empty()) {
            let tokens: Vec<FillToken> =
                pending.iter().map(|(idx, _)| self.l1.fill_token(keys[*idx].as_str())).collect();
            let names: Vec<&str> = pending.iter().map(|(idx, _)| keys[*idx].as_str()).collect();
            if let Ok(envelopes) = l2.get_many(&names).await {
                let mut still_pending = Vec::new();
                for ((idx, fallback), (token, envelope)) in pending.into_iter().zip(tokens.into_iter().zip(envelopes)) {
                    let key = &keys[idx];
                    match envelope.and_then(|envelope| self.fill_from_l2(key, envelope, token)) {
                        Some(entry) if !entry.is_past_expiry(self.clock().now_ms()) => {
                            self.metrics().counters.hits_l2.inc();
                            answers[idx] = Some(Hit { entry, source: Source::L2, served: Served::Fresh });
                        }
                        Some(stale) => answers[idx] = Some(self.serve_stale(key, stale, Source::L2)),
                        None => {
                            self.metrics().counters.l2_misses.inc();
                            still_pending.push((idx, fallback));
                        }
                    }
                }
                pending = still_pending;
            }
        }
        if self.origin.is_none() {
            self.metrics().counters.misses.inc_by(pending.len() as u64);
            return answers;
        }
        let fetches = pending.iter().map(|(idx, _)| self.join_flight(&keys[*idx], L2Step::Skip, Brought::OnDemand));
        let results = join_all(fetches).await;
        for ((idx, fallback), resolved) in pending.into_iter().zip(results) {
            answers[idx] = match self.settle(resolved, fallback) {
                Ok(Lookup::Hit(hit)) => Some(hit),
                Ok(Lookup::Miss(_)) | Err(_) => None,
            };
        }
        answers
    }

    /// Queues keys for the prefetch workers, skipping those cached fresh in L1 or in flight.
    pub fn queue_prefetch(&self, items: &[(Key, f64)]) -> PrefetchOutcome {
        let outcome = self
            .prefetch_queue
            .offer(items, self.clock().now_ms(), |key| self.is_cached(key) || self.flights.is_running(key.as_str()));
        self.metrics().counters.prefetch_requests.inc_by(outcome.queued as u64);
        self.metrics().prefetch_queue_size.set(self.prefetch_queue.len() as i64);
        outcome
    }

    /// The prefetch queue, highest priority first.
    pub fn prefetch_queue(&self) -> Vec<Queued> {
        self.prefetch_queue.list()
    }

    /// Waits for the next key to prefetch (a worker's loop).
    pub async fn next_prefetch(&self) -> Key {
        let key = self.prefetch_queue.next().await;
        self.metrics().prefetch_queue_size.set(self.prefetch_queue.len() as i64);
        key
    }

    /// Brings `key` in through L2 or the origin unless L1 holds it fresh (a prefetch worker's
    /// job); an entry it brings from the origin counts in `prefetch_hits` when first read.
    /// Returns whether the key is now cached.
    pub async fn prefetch(self: &Arc<Self>, key: &Key) -> bool {
        self.fetch_into_cache(key, Brought::Prefetched).await
    }

    /// Brings `key` into L1 through L2 or the origin unless it is there fresh (prefetch and
    /// warming by keys), marking what the origin brings as `brought`. Returns whether the key
    /// is now cached.
    pub async fn fetch_into_cache(self: &Arc<Self>, key: &Key, brought: Brought) -> bool {
        if matches!(self.probe_l1(key, self.clock().now_ms()), L1State::Fresh(_) | L1State::Negative) {
            return true;
        }
        matches!(self.join_flight(key, L2Step::Read, brought).await, Some(Resolved::Found(_)))
    }

    /// Whether `key` is in L1 and fresh, without counting a read or touching the policy.
    pub fn is_cached(&self, key: &Key) -> bool {
        self.l1.peek(key.as_str()).is_some_and(|entry| entry.is_fresh(self.clock().now_ms()))
    }

    /// L1 alone, without counting: a copy past every deadline is removed and never returned.
    #[inline]
    fn probe_l1(&self, key: &Key, now_ms: u64) -> L1State {
        let Some(entry) = self.l1.get(key.as_str()) else { return L1State::Absent };
        if entry.is_fresh(now_ms) {
            return if entry.is_negative() { L1State::Negative } else { L1State::Fresh(entry) };
        }
        if entry.is_expired(now_ms) {
            self.l1.remove_version(key.as_str(), entry.version(), EvictionReason::Expired);
            return L1State::Absent;
        }
        if entry.is_past_expiry(now_ms) {
            L1State::Stale(entry)
        } else {
            L1State::Aged(entry)
        }
    }

    /// A stale copy answers now; a refresh starts unless one runs or nothing could refresh it
    /// (no origin, and the copy came from L2 or there is no L2 to look in).
    fn serve_stale(self: &Arc<Self>, key: &Key, entry: Entry, source: Source) -> Hit {
        self.metrics().counters.stale_served.inc();
        // A copy from L1 may have a fresher one in L2; one from L2 has not.
        let l2_step = if source == Source::L1 && self.has_l2() { L2Step::Read } else { L2Step::Skip };
        let stale = if l2_step == L2Step::Skip && self.origin.is_none() {
            Stale::NoRefresh
        } else {
            if !self.flights.is_running(key.as_str()) {
                if let Some(run) = self.flights.join(key).run {
                    self.spawn_flight(run, l2_step, Brought::OnDemand);
                }
            }
            Stale::Refreshing
        };
        Hit { entry, source, served: Served::Stale(stale) }
    }

    /// Joins (or starts) the flight for `key` and waits for its first result, bounded.
    ///
    /// The reader that starts a flight reads L2 itself, without a task: an L2 hit, the common
    /// L1 miss, costs no spawn and no hand-off. Only the origin step runs detached, so a client
    /// that goes away never cancels an origin fetch others wait for. A starter that goes away
    /// during the L2 read ends the flight without a result; its waiters then start again.
    async fn join_flight(self: &Arc<Self>, key: &Key, l2_step: L2Step, brought: Brought) -> Option<Resolved> {
        let limit = self.origin.as_ref().map_or(L2_ONLY_WAIT, |origin| origin.timeout());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let joined = self.flights.join(key);
            match joined.run {
                Some(run) => {
                    if let Some(resolved) = self.start_flight(run, l2_step, brought).await {
                        return Some(resolved);
                    }
                }
                None => self.metrics().counters.coalesced.inc(),
            }
            match flight::wait(joined.receiver, deadline).await {
                Ok(resolved) => return Some(resolved),
                Err(flight::Unanswered::Abandoned) => continue,
                Err(flight::Unanswered::TimedOut) => return None,
            }
        }
    }

    /// Runs a flight's L2 step here and, when the origin must be asked, spawns its origin
    /// step. `Some` when this reader has its answer (published to the waiters too); `None`
    /// when it must wait for the origin like the others.
    async fn start_flight(
        self: &Arc<Self>,
        run: FlightRun<Resolved>,
        l2_step: L2Step,
        brought: Brought,
    ) -> Option<Resolved> {
        let token = self.l1.fill_token(run.key().as_str());
        let started = Instant::now();
        let stale_from_l2 = match self.flight_l2_step(&run, token, l2_step).await {
            Ok(stale) => stale,
            Err(resolved) => {
                run.publish(resolved.clone());
                return Some(resolved);
            }
        };
        let own = stale_from_l2
            .clone()
            .map(|entry| Resolved::Found(Hit { entry, source: Source::L2, served: Served::Stale(Stale::Refreshing) }));
        if let Some(own) = &own {
            run.publish(own.clone());
        }
        let engine = self.clone();
        self.instance.spawn(async move {
            let resolved = engine.flight_origin_step(&run, token, stale_from_l2, started, brought).await;
            run.publish(resolved);
        });
        own
    }

    /// A whole flight in the background (a stale-while-revalidate refresh).
    fn spawn_flight(self: &Arc<Self>, run: FlightRun<Resolved>, l2_step: L2Step, brought: Brought) {
        let engine = self.clone();
        self.instance.spawn(async move {
            engine.start_flight(run, l2_step, brought).await;
        });
    }

    /// A flight's first step: L2 (unless the caller just looked). `Err` ends the flight with
    /// that result (a fresh L2 copy, or nothing more to ask); `Ok` goes on to the origin,
    /// with the stale L2 copy to fall back on, if any.
    async fn flight_l2_step(
        &self,
        run: &FlightRun<Resolved>,
        token: FillToken,
        l2_step: L2Step,
    ) -> Result<Option<Entry>, Resolved> {
        let key = run.key();
        let mut stale_from_l2 = None;
        if let (Some(l2), L2Step::Read) = (self.instance.l2(), l2_step) {
            match l2.get(key.as_str()).await {
                Ok(Some(envelope)) => match self.fill_from_l2(key, envelope, token) {
                    Some(entry) if !entry.is_past_expiry(self.clock().now_ms()) => {
                        return Err(Resolved::Found(Hit { entry, source: Source::L2, served: Served::Fresh }))
                    }
                    Some(stale) => stale_from_l2 = Some(stale),
                    None => {}
                },
                Ok(None) => {
                    self.metrics().counters.l2_misses.inc();
                }
                Err(err) => tracing::debug!(%err, "l2 read failed, answering from the tiers that remain"),
            }
        }
        if self.origin.is_none() {
            return Err(match stale_from_l2 {
                Some(entry) => {
                    Resolved::Found(Hit { entry, source: Source::L2, served: Served::Stale(Stale::NoRefresh) })
                }
                None => Resolved::Absent,
            });
        }
        Ok(stale_from_l2)
    }

    /// A flight's second step: the origin, storing what it may keep; the stale L2 copy stands
    /// in when the origin fails.
    async fn flight_origin_step(
        &self,
        run: &FlightRun<Resolved>,
        token: FillToken,
        stale_from_l2: Option<Entry>,
        started: Instant,
        brought: Brought,
    ) -> Resolved {
        let key = run.key();
        let Some(origin) = &self.origin else { return Resolved::Absent };
        let fetched = origin.fetch(key, started + origin.timeout(), self.metrics()).await;
        let now_ms = self.clock().now_ms();
        match fetched {
            Ok(Fetched::Value { value, ttl }) => {
                let expires_at_ms = now_ms.saturating_add(ttl.map_or(0, |ttl| ttl.as_millis() as u64));
                let mut entry = self.new_entry(EntryParts::plain(key, value, now_ms, expires_at_ms), now_ms);
                if brought == Brought::Prefetched {
                    entry = entry.mark_prefetched();
                }
                let entry = entry.build();
                let stored = match ttl {
                    Some(ttl) => self.store_fetched(key, &entry, ttl, token).await,
                    None => {
                        self.drop_unfresh_copy(key);
                        false
                    }
                };
                Resolved::Found(Hit { entry, source: Source::Origin, served: Served::Fetched { stored } })
            }
            Ok(Fetched::NotFound) => {
                let stored = match origin.negative_ttl() {
                    Some(ttl) => {
                        let expires_at_ms = now_ms.saturating_add(ttl.as_millis() as u64);
                        let entry = self.lifetime.negative(key, now_ms, expires_at_ms, self.instance.next_version());
                        self.l1.insert_fill(entry.build(), token, now_ms)
                    }
                    None => false,
                };
                if !stored {
                    self.drop_unfresh_copy(key);
                }
                Resolved::NotFound { stored }
            }
            Err(err) => match stale_from_l2 {
                Some(entry) => {
                    Resolved::Found(Hit { entry, source: Source::L2, served: Served::Stale(Stale::OriginFailed) })
                }
                None => Resolved::Failed(err),
            },
        }
    }

    /// Stores an origin value in L2 (kept `grace` longer) and L1, unless the key changed since
    /// `token`. Returns whether it was stored. The L2 write is best effort: the value is the
    /// origin's, so losing it costs a refetch, never correctness.
    async fn store_fetched(&self, key: &Key, entry: &Entry, ttl: Duration, token: FillToken) -> bool {
        if !self.l1.is_unchanged(token) {
            return false;
        }
        if let Some(l2) = self.instance.l2() {
            let envelope = envelope_of(entry);
            if let Err(err) = l2.set_many(&[(key.as_str(), &envelope, self.lifetime.l2_retention(ttl))]).await {
                tracing::debug!(%err, "l2 write of an origin value failed");
            }
        }
        if self.l1.fits(entry.size()) {
            self.l1.insert_fill(entry.clone(), token, self.clock().now_ms());
        }
        true
    }

    /// The origin said not to keep the key: a stale or aged copy must not be served again.
    fn drop_unfresh_copy(&self, key: &Key) {
        if let Some(resident) = self.l1.peek(key.as_str()) {
            if !resident.is_fresh(self.clock().now_ms()) {
                self.l1.remove_version(key.as_str(), resident.version(), EvictionReason::Expired);
            }
        }
    }

    /// Turns a flight's result into an answer, counting it; `fallback` stands in on failure.
    fn settle(&self, resolved: Option<Resolved>, fallback: Option<Entry>) -> Result<Lookup, EngineError> {
        let resolved = resolved.unwrap_or(Resolved::Failed(OriginError::Timeout));
        match resolved {
            Resolved::Found(hit) => {
                match (&hit.served, hit.source) {
                    (Served::Fresh, Source::L2) => self.metrics().counters.hits_l2.inc(),
                    (Served::Stale(_), _) => self.metrics().counters.stale_served.inc(),
                    _ => self.metrics().counters.misses.inc(),
                }
                Ok(Lookup::Hit(hit))
            }
            Resolved::Absent => {
                self.metrics().counters.misses.inc();
                Ok(Lookup::Miss(Miss::Absent))
            }
            Resolved::NotFound { stored } => {
                self.metrics().counters.misses.inc();
                Ok(Lookup::Miss(Miss::NotFound { stored }))
            }
            Resolved::Failed(err) => match fallback {
                Some(entry) => {
                    self.metrics().counters.stale_served.inc();
                    Ok(Lookup::Hit(Hit { entry, source: Source::L1, served: Served::Stale(Stale::OriginFailed) }))
                }
                None if self.origin.is_none() => {
                    // An L2-only flight that died: L2 is a best-effort tier, so this is a miss.
                    self.metrics().counters.misses.inc();
                    Ok(Lookup::Miss(Miss::Absent))
                }
                None => {
                    self.metrics().counters.misses.inc();
                    Err(EngineError::Origin(err))
                }
            },
        }
    }

    /// Turns an L2 envelope into an entry and copies it into L1 unless the key changed
    /// meanwhile. `None` when it is past expiry and grace, or malformed.
    fn fill_from_l2(&self, key: &Key, envelope: Envelope, token: FillToken) -> Option<Entry> {
        let now_ms = self.clock().now_ms();
        if envelope.expires_at_ms.saturating_add(self.lifetime.grace_ms()) <= now_ms {
            return None;
        }
        let tags: Result<Box<[Tag]>, _> = envelope.tags.iter().map(|tag| Tag::parse(tag)).collect();
        let depends_on: Result<Box<[Key]>, _> =
            envelope.depends_on.iter().map(|dep| Key::parse(dep, self.limits.max_key_bytes)).collect();
        let (Ok(tags), Ok(depends_on)) = (tags, depends_on) else {
            self.metrics().counters.l2_errors.inc();
            tracing::warn!("l2 entry with invalid tags or dependencies, treated as a miss");
            return None;
        };
        let parts = EntryParts {
            key: key.clone(),
            value: envelope.value,
            cached_at_ms: envelope.cached_at_ms,
            expires_at_ms: envelope.expires_at_ms,
            tags,
            depends_on,
        };
        let entry = self.new_entry(parts, now_ms).build();
        if self.l1.fits(entry.size()) {
            self.l1.insert_fill(entry.clone(), token, now_ms);
        }
        Some(entry)
    }
}
