//! L2: Redis (or Redis Cluster), shared by every instance.
//!
//! Key layout under `l2.key_prefix` (default `tiercache:`), one namespace letter each, so no
//! cache key can collide with an index:
//! - `{prefix}k:{key}`  the entry, an [`Envelope`]; its Redis TTL is the entry's TTL.
//! - `{prefix}t:{tag}`  set of keys written with that tag.
//! - `{prefix}d:{key}`  set of keys whose `depends_on` holds `key`.
//!
//! Index sets get a TTL at least as long as their longest-lived member (EXPIRE NX, then GT),
//! so they cannot grow forever. Index records are written *before* the entry, so every entry in
//! L2 is reachable from its tag and dependency sets; a record can outlive its entry's tag (the
//! key was rewritten without it), so removal through a set first reads the members' envelopes
//! and removes only those that still carry the tag or dependency.
//!
//! Every call is bounded by `l2.timeout_ms` and goes through the [`Breaker`]. Knows nothing of
//! HTTP or of L1.

mod batch;
mod breaker;
mod budget;
mod connection;
pub mod envelope;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::{Cmd, Value};

use self::breaker::{Breaker, Transition};
pub(crate) use self::budget::L2Budget;
pub(crate) use self::connection::open_pubsub;
use self::connection::{open_connection, Connection};
pub use self::envelope::Envelope;
use super::bus::Bus;
pub use crate::config::{Compression, L2Config, Target};
use crate::metrics::Metrics;

/// Why an L2 call did not happen or did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L2Error {
    #[error("l2 is not connected")]
    NotConnected,
    #[error("l2 circuit breaker is open")]
    BreakerOpen,
    #[error("l2 call timed out")]
    Timeout,
    #[error("l2 error: {0}")]
    Redis(String),
}

/// The shape of `/health`'s `l2` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Status {
    Up,
    Down,
}

/// One entry to store in L2: its key, its envelope, and how long Redis keeps it.
pub struct EntryWrite {
    pub key: String,
    pub envelope: Envelope,
    pub retention: Duration,
}

pub(crate) struct L2 {
    config: L2Config,
    /// The data connection once established; cloned out for each call (both kinds are cheap
    /// handles). A std lock: held only to clone, never across `.await`.
    connection: RwLock<Option<Connection>>,
    breaker: Breaker,
    /// Batches single-key reads into MGETs.
    reads: batch::Batcher<String, Option<Envelope>>,
    /// Batches writes into one pipeline and one invalidation message.
    writes: batch::Batcher<Arc<Vec<EntryWrite>>, Vec<Vec<String>>>,
    /// Set by the breaker opening, read by the subscriber: messages may have been missed.
    outage_seen: AtomicBool,
    metrics: Arc<Metrics>,
}

impl L2 {
    pub fn new(config: L2Config, metrics: Arc<Metrics>) -> Self {
        Self {
            breaker: Breaker::new(config.breaker_failures, config.breaker_open_for),
            config,
            connection: RwLock::new(None),
            reads: batch::Batcher::default(),
            writes: batch::Batcher::default(),
            outage_seen: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn config(&self) -> &L2Config {
        &self.config
    }

    /// Opens the data connection once. The connector task retries this with backoff.
    ///
    /// # Errors
    /// When Redis cannot be reached or the URL is unusable.
    pub async fn connect(&self) -> Result<(), L2Error> {
        let connection = open_connection(&self.config).await?;
        *self.connection.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection);
        self.breaker.record_success();
        self.metrics.l2_up.set(1);
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.connection.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    pub fn status(&self) -> L2Status {
        if self.is_connected() && self.breaker.is_closed() {
            L2Status::Up
        } else {
            L2Status::Down
        }
    }

    /// Whether an outage happened since the last call (and forgets it).
    pub fn take_outage_seen(&self) -> bool {
        self.outage_seen.swap(false, Ordering::AcqRel)
    }

    /// The redis key of an entry.
    pub fn entry_key(&self, key: &str) -> String {
        format!("{}k:{key}", self.config.key_prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.config.key_prefix)
    }

    fn dependents_key(&self, key: &str) -> String {
        format!("{}d:{key}", self.config.key_prefix)
    }

    /// The entry under `key`, if L2 holds a well-formed one. A malformed value is counted in
    /// `l2_errors` and is a miss. Reads that arrive together share one MGET (`batch.rs`).
    pub async fn get(&self, key: &str) -> Result<Option<Envelope>, L2Error> {
        let read = self.reads.run(
            self.entry_key(key),
            |names| self.mget(names),
            |name| async move { Ok(self.mget(vec![name]).await?.pop().flatten()) },
        );
        self.within_timeout(read).await
    }

    /// Bounds a batched call by one `l2.timeout_ms` from the caller's arrival. A caller that
    /// queued behind a batch in flight would otherwise wait for that batch and then its own:
    /// two timeouts when Redis does not answer. A caller cut off leaves its slot (see
    /// `batch.rs`); the batch's own failure is what the breaker counts.
    async fn within_timeout<A>(
        &self,
        call: impl std::future::Future<Output = Result<A, L2Error>>,
    ) -> Result<A, L2Error> {
        tokio::time::timeout(self.config.timeout, call).await.unwrap_or(Err(L2Error::Timeout))
    }

    /// The entries under `keys`, in order (one MGET; the cluster client splits it by slot).
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Envelope>>, L2Error> {
        self.mget(keys.iter().map(|key| self.entry_key(key)).collect()).await
    }

    /// MGET of entry keys (already prefixed).
    async fn mget(&self, names: Vec<String>) -> Result<Vec<Option<Envelope>>, L2Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(names);
        let raw: Vec<Option<Vec<u8>>> = self.query(&cmd).await?;
        Ok(raw.into_iter().map(|bytes| bytes.and_then(|bytes| self.decode(&bytes))).collect())
    }

    /// Stores entries (index records, then the entries; see [`L2::write_and_announce`]).
    pub async fn set_many(&self, entries: &[(&str, &Envelope, Duration)]) -> Result<(), L2Error> {
        let (index, writes) = self.write_commands(entries);
        self.query_steps(vec![index, writes]).await.map(|_| ())
    }

    /// Stores entries, reads the dependents sets of their keys and publishes the invalidation
    /// messages the bus makes of the written keys, in that order: index records before the
    /// entries they index, so a tag or dependency lookup never misses a stored entry; the
    /// entries before the messages, so a peer that drops its copy on a message reads the new
    /// value. Writes that arrive together go as one batch (`batch.rs`) with one announcement for
    /// all their keys. On one server a batch is a single pipeline (one round trip; Redis runs it
    /// in order); on a cluster, three steps (see [`L2::query_steps`]).
    ///
    /// Returns the keys whose entries still declare a dependency on one of the written keys
    /// (verified as in [`L2::dependents_of_each`]).
    pub async fn write_and_announce(&self, entries: Vec<EntryWrite>, bus: &Bus) -> Result<Vec<String>, L2Error> {
        let entries = Arc::new(entries);
        let write = self.writes.run(
            entries.clone(),
            |batch| self.write_batch(batch, bus),
            |alone| async { Ok(self.write_batch(vec![alone], bus).await?.remove(0)) },
        );
        let members = self.within_timeout(write).await?;
        let sets: Vec<(String, &str)> =
            entries.iter().map(|entry| (self.dependents_key(&entry.key), entry.key.as_str())).collect();
        self.verify_members(&sets, members, |envelope, key| envelope.depends_on.iter().any(|dep| dep == key)).await
    }

    /// Sends one batch of writes (see [`L2::write_and_announce`]); answers, for each writer and
    /// each of its entries, the members of the entry's dependents set.
    async fn write_batch(&self, batch: Vec<Arc<Vec<EntryWrite>>>, bus: &Bus) -> Result<Vec<Vec<Vec<String>>>, L2Error> {
        let flat: Vec<(&str, &Envelope, Duration)> = batch
            .iter()
            .flat_map(|entries| entries.iter().map(|entry| (entry.key.as_str(), &entry.envelope, entry.retention)))
            .collect();
        let (index, mut writes) = self.write_commands(&flat);
        writes.extend(flat.iter().map(|(key, _, _)| redis::cmd("SMEMBERS").arg(self.dependents_key(key)).clone()));
        let announcements = bus.evict_payloads(flat.iter().map(|(key, _, _)| *key));
        let publishes =
            announcements.iter().map(|message| redis::cmd("PUBLISH").arg(bus.channel()).arg(message).clone());
        let mut replies = self.query_steps(vec![index, writes, publishes.collect()]).await?;
        if replies[1].len() != flat.len() * 2 {
            return Err(L2Error::Redis("a write pipeline came back short".to_string()));
        }
        bus.published(announcements.len());
        let mut members = replies[1].split_off(flat.len()).into_iter().map(redis::from_redis_value::<Vec<String>>);
        let mut answers = Vec::with_capacity(batch.len());
        for entries in &batch {
            let mine = members.by_ref().take(entries.len()).collect::<Result<Vec<_>, _>>();
            answers.push(mine.map_err(|err| L2Error::Redis(err.to_string()))?);
        }
        Ok(answers)
    }

    /// The index records (SADD + EXPIRE NX + EXPIRE GT per tag and dependency set) and the SETs
    /// that store `entries`.
    fn write_commands(&self, entries: &[(&str, &Envelope, Duration)]) -> (Vec<Cmd>, Vec<Cmd>) {
        let mut index = Vec::new();
        for (key, envelope, ttl) in entries {
            let ttl_secs = ttl.as_secs().max(1);
            let names = envelope.tags.iter().map(|tag| self.tag_key(tag));
            let deps = envelope.depends_on.iter().map(|dep| self.dependents_key(dep));
            for set_key in names.chain(deps) {
                index.push(redis::cmd("SADD").arg(&set_key).arg(*key).clone());
                index.push(redis::cmd("EXPIRE").arg(&set_key).arg(ttl_secs).arg("NX").clone());
                index.push(redis::cmd("EXPIRE").arg(&set_key).arg(ttl_secs).arg("GT").clone());
            }
        }
        let mut writes = Vec::with_capacity(entries.len() * 2);
        for (key, envelope, ttl) in entries {
            let encoded = envelope.encode(self.config.compression);
            if let Some((original, stored)) = encoded.compressed {
                self.metrics.record_compression(original, stored);
            }
            let ttl_ms = (ttl.as_millis() as u64).max(1);
            writes.push(redis::cmd("SET").arg(self.entry_key(key)).arg(encoded.bytes).arg("PX").arg(ttl_ms).clone());
        }
        (index, writes)
    }

    /// Removes entries; says for each whether it existed (one pipeline).
    pub async fn remove_each(&self, keys: &[&str]) -> Result<Vec<bool>, L2Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let unlinks = keys.iter().map(|key| redis::cmd("UNLINK").arg(self.entry_key(key)).clone()).collect();
        let counts: Vec<usize> = self.query_all(unlinks).await?;
        Ok(counts.into_iter().map(|count| count > 0).collect())
    }

    /// Keys recorded under `tag` whose entry still carries it; stale records are removed.
    pub async fn tagged(&self, tag: &str) -> Result<Vec<String>, L2Error> {
        self.verified_members(&[(self.tag_key(tag), tag)], |envelope, tag| envelope.tags.iter().any(|t| t == tag)).await
    }

    /// Keys whose entry still declares a dependency on any of `keys`; stale records are
    /// removed. Three round trips at most, whatever the number of keys.
    pub async fn dependents_of_each(&self, keys: &[&str]) -> Result<Vec<String>, L2Error> {
        let sets: Vec<(String, &str)> = keys.iter().map(|key| (self.dependents_key(key), *key)).collect();
        self.verified_members(&sets, |envelope, key| envelope.depends_on.iter().any(|dep| dep == key)).await
    }

    /// Members of each `(set, name)` whose envelope still `holds` the name. A record whose
    /// entry is gone or no longer holds the name is removed from its set.
    async fn verified_members(
        &self,
        sets: &[(String, &str)],
        holds: impl Fn(&Envelope, &str) -> bool,
    ) -> Result<Vec<String>, L2Error> {
        if sets.is_empty() {
            return Ok(Vec::new());
        }
        let smembers = sets.iter().map(|(set_key, _)| redis::cmd("SMEMBERS").arg(set_key).clone()).collect();
        let members: Vec<Vec<String>> = self.query_all(smembers).await?;
        self.verify_members(sets, members, holds).await
    }

    /// The `members` (read from each of `sets`, in order) whose envelope still `holds` the
    /// set's name; the others are removed from their set.
    async fn verify_members(
        &self,
        sets: &[(String, &str)],
        members: Vec<Vec<String>>,
        holds: impl Fn(&Envelope, &str) -> bool,
    ) -> Result<Vec<String>, L2Error> {
        let all: Vec<&str> = members.iter().flatten().map(String::as_str).collect();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let mut envelopes = self.get_many(&all).await?.into_iter();
        let mut holding = Vec::new();
        let mut stale = Vec::new();
        for ((set_key, name), set_members) in sets.iter().zip(&members) {
            for member in set_members {
                match envelopes.next().flatten() {
                    Some(envelope) if holds(&envelope, name) => holding.push(member.clone()),
                    _ => stale.push(redis::cmd("SREM").arg(set_key).arg(member).clone()),
                }
            }
        }
        if !stale.is_empty() {
            self.query_all::<Value>(stale).await?;
        }
        holding.sort_unstable();
        holding.dedup();
        Ok(holding)
    }

    /// Every key whose name matches `pattern` (Redis glob), by SCAN in batches.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, L2Error> {
        let prefix = self.entry_key("");
        let mut scan = self.start_scan(format!("{}{pattern}", escape_glob(&prefix))).await?;
        let mut found = Vec::new();
        while let Some(keys) = scan.next_batch(self).await? {
            found.extend(keys.into_iter().filter_map(|redis_key| redis_key.strip_prefix(&prefix).map(String::from)));
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// Removes every entry and index under the prefix, batch by batch as SCAN finds them;
    /// returns how many entries there were.
    pub async fn clear(&self) -> Result<usize, L2Error> {
        let entry_prefix = self.entry_key("");
        let mut scan = self.start_scan(format!("{}*", escape_glob(&self.config.key_prefix))).await?;
        let mut n_entries = 0;
        while let Some(keys) = scan.next_batch(self).await? {
            let removed: usize = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
            n_entries += keys.iter().filter(|key| key.starts_with(&entry_prefix)).count().min(removed);
        }
        Ok(n_entries)
    }

    async fn start_scan(&self, match_pattern: String) -> Result<Scan, L2Error> {
        Ok(Scan { nodes: self.scan_targets().await?, node_idx: 0, cursor: 0, match_pattern })
    }

    /// Publishes `message` on `channel`.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), L2Error> {
        self.query::<()>(redis::cmd("PUBLISH").arg(channel).arg(message)).await
    }

    fn decode(&self, bytes: &[u8]) -> Option<Envelope> {
        match Envelope::decode(bytes, self.config.max_value_bytes) {
            Ok(envelope) => Some(envelope),
            Err(err) => {
                self.metrics.counters.l2_errors.inc();
                tracing::warn!(%err, "malformed value in l2, treated as a miss");
                None
            }
        }
    }

    /// The nodes a SCAN must visit: `None` (the one server) or every cluster master.
    async fn scan_targets(&self) -> Result<Vec<Option<(String, u16)>>, L2Error> {
        if matches!(self.config.target, Target::Single(_)) {
            return Ok(vec![None]);
        }
        let nodes: String = self.query(&redis::cmd("CLUSTER").arg("NODES").clone()).await?;
        let masters = nodes
            .lines()
            .filter(|line| {
                line.split(' ').nth(2).is_some_and(|flags| flags.contains("master") && !flags.contains("fail"))
            })
            .filter_map(|line| {
                let address = line.split(' ').nth(1)?.split('@').next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some(Some((host.to_string(), port.parse().ok()?)))
            })
            .collect();
        Ok(masters)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, L2Error> {
        self.query_on(cmd, None).await
    }

    /// Runs one command, on a given cluster node when `node` is set.
    async fn query_on<T: redis::FromRedisValue>(&self, cmd: &Cmd, node: Option<&(String, u16)>) -> Result<T, L2Error> {
        let mut connection = self.checked_out()?;
        let call = async {
            match (node, &mut connection) {
                (Some((host, port)), Connection::Cluster(cluster)) => {
                    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
                    let value = cluster.route_command(cmd.clone(), routing).await?;
                    T::from_redis_value(value).map_err(redis::RedisError::from)
                }
                _ => cmd.query_async(&mut connection).await,
            }
        };
        self.finish(tokio::time::timeout(self.config.timeout, call).await)
    }

    /// Runs independent commands in one round trip and returns their replies in order: one
    /// pipeline on a single server; on a cluster, concurrent commands each routed to its slot
    /// (the cluster client refuses pipelines that cross slots).
    async fn query_all<T: redis::FromRedisValue>(&self, commands: Vec<Cmd>) -> Result<Vec<T>, L2Error> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.checked_out()?;
        let call = async {
            match &connection {
                Connection::Single(_) => {
                    let mut pipeline = redis::pipe();
                    for cmd in commands {
                        pipeline.add_command(cmd);
                    }
                    pipeline.query_async::<Vec<T>>(&mut connection).await
                }
                Connection::Cluster(cluster) => {
                    let calls = commands.into_iter().map(|cmd| {
                        let mut cluster = cluster.clone();
                        async move { cmd.query_async::<T>(&mut cluster).await }
                    });
                    futures_util::future::try_join_all(calls).await
                }
            }
        };
        self.finish(tokio::time::timeout(self.config.timeout, call).await)
    }

    /// Runs steps of independent commands, each step after the one before has run, and returns
    /// the replies by step. On one server all steps go in one pipeline (one round trip: Redis
    /// runs a pipeline in order); on a cluster each step is one [`L2::query_all`].
    async fn query_steps(&self, steps: Vec<Vec<Cmd>>) -> Result<Vec<Vec<Value>>, L2Error> {
        if steps.iter().all(Vec::is_empty) {
            return Ok(steps.into_iter().map(|_| Vec::new()).collect());
        }
        let mut connection = self.checked_out()?;
        if matches!(connection, Connection::Cluster(_)) {
            let mut replies = Vec::with_capacity(steps.len());
            for step in steps {
                replies.push(self.query_all(step).await?);
            }
            return Ok(replies);
        }
        let lengths: Vec<usize> = steps.iter().map(Vec::len).collect();
        let mut pipeline = redis::pipe();
        for cmd in steps.into_iter().flatten() {
            pipeline.add_command(cmd);
        }
        let call = pipeline.query_async::<Vec<Value>>(&mut connection);
        let mut flat = self.finish(tokio::time::timeout(self.config.timeout, call).await)?.into_iter();
        Ok(lengths.into_iter().map(|length| flat.by_ref().take(length).collect()).collect())
    }

    /// A connection for one call, unless there is none yet or the breaker is open. The
    /// connection is checked first, so a half-open probe is only handed out to a real call.
    fn checked_out(&self) -> Result<Connection, L2Error> {
        let connection = self.connection.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(connection) = connection else { return Err(L2Error::NotConnected) };
        if !self.breaker.allow(Instant::now()) {
            return Err(L2Error::BreakerOpen);
        }
        Ok(connection)
    }

    /// A cheap round trip, so the breaker and `/health` notice an outage without traffic.
    pub async fn ping(&self) -> Result<(), L2Error> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    fn finish<T>(&self, outcome: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>) -> Result<T, L2Error> {
        let error = match outcome {
            Ok(Ok(value)) => {
                if self.breaker.record_success() == Some(Transition::Closed) {
                    tracing::info!("l2 is up again: circuit breaker closed");
                    self.metrics.l2_up.set(1);
                }
                return Ok(value);
            }
            Ok(Err(err)) if is_data_error(&err) => {
                // Redis answered about one key's data: the tier is fine, this command was not.
                self.metrics.counters.l2_errors.inc();
                return Err(L2Error::Redis(err.to_string()));
            }
            Ok(Err(err)) => L2Error::Redis(err.to_string()),
            Err(_) => L2Error::Timeout,
        };
        self.metrics.counters.l2_errors.inc();
        if self.breaker.record_failure(Instant::now()) == Some(Transition::Opened) {
            tracing::info!(failures = self.config.breaker_failures, "l2 is down: circuit breaker opened");
            self.metrics.l2_up.set(0);
            self.outage_seen.store(true, Ordering::Release);
        }
        Err(error)
    }
}

/// An error about one key's data (a key of the wrong type under our namespace): not a sign that
/// L2 is unusable. Every other error, replies such as NOAUTH, LOADING or CLUSTERDOWN included,
/// counts toward the breaker.
fn is_data_error(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}

/// A SCAN in progress over every master (never KEYS): `SCAN cursor MATCH pattern COUNT 1000`
/// until each node's cursor returns to 0.
struct Scan {
    nodes: Vec<Option<(String, u16)>>,
    node_idx: usize,
    cursor: u64,
    match_pattern: String,
}

impl Scan {
    /// The next non-empty batch of Redis key names, or `None` when every node is done.
    async fn next_batch(&mut self, l2: &L2) -> Result<Option<Vec<String>>, L2Error> {
        while let Some(node) = self.nodes.get(self.node_idx) {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(self.cursor).arg("MATCH").arg(&self.match_pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) = l2.query_on(&cmd, node.as_ref()).await?;
            self.cursor = next;
            if next == 0 {
                self.node_idx += 1;
            }
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }
}

/// Escapes the glob specials of Redis `MATCH` so `text` matches itself.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::escape_glob;
    use crate::engine::glob;

    #[test]
    fn escaped_prefixes_match_only_themselves() {
        let prefix = "app[1]*:";
        let pattern = format!("{}*", escape_glob(prefix));
        assert!(glob::matches(&pattern, "app[1]*:user"));
        assert!(!glob::matches(&pattern, "app1x:user"));
    }
}
