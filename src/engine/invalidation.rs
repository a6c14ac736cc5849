//! Invalidation (SPEC §5): by key, glob pattern and tag, with the dependency cascade, in L1
//! and L2, announced to the other instances; and the receiving side of those announcements.
//!
//! Cascade: removing or writing key K removes every key whose `depends_on` holds K,
//! transitively, breadth first through both dependency graphs (L1's index and L2's sets). A
//! visited set makes cycles safe, and a write spares the key it just wrote.
//!
//! When L2 is configured but fails during an invalidation, L1 is still invalidated, but the
//! call answers [`EngineError::L2Unavailable`]: L2 may keep the value, and the caller must know
//! the invalidation is incomplete. After one failed L2 call a request makes no more (so no
//! request waits for Redis much longer than one `l2.timeout_ms`), and its message is skipped
//! with its `seq` consumed, so every receiver sees the gap and clears its L1.

use std::collections::{HashSet, VecDeque};

use super::messages::{Message, MessageKind};
use super::{glob, DeleteOutcome, Engine, EngineError, Invalidation, Key};
use crate::metrics::EvictionReason;

/// Keys per published EVICT message: bounds a message's size on large invalidations.
const KEYS_PER_MESSAGE: usize = 1000;

/// What a removal did.
#[derive(Debug, Default)]
pub(super) struct Removal {
    /// Distinct keys that existed in L1 or L2 and were removed.
    pub removed: HashSet<Key>,
    /// L2 is configured and a call to it failed: L2 may still hold some of these keys.
    pub l2_failed: bool,
}

impl Engine {
    /// Removes `key` and every key that depends on it, in every tier.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] when L2 could not take part (L1 was still cleaned).
    pub async fn delete(&self, key: &Key) -> Result<DeleteOutcome, EngineError> {
        let removal = self.remove_everywhere(vec![key.clone()], &HashSet::new(), true).await;
        self.announce_keys(std::iter::once(key).chain(&removal.removed), !removal.l2_failed).await;
        if removal.l2_failed {
            return Err(EngineError::L2Unavailable);
        }
        let deleted = removal.removed.contains(key);
        if deleted {
            self.metrics.deletes.inc();
        }
        Ok(DeleteOutcome { deleted, invalidated: removal.removed.len() })
    }

    /// Removes what `invalidation` selects plus their dependents, in every tier; returns the
    /// distinct keys removed.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] when L2 could not take part (L1 was still cleaned).
    pub async fn invalidate(&self, invalidation: &Invalidation) -> Result<usize, EngineError> {
        self.l1.note_invalidation(invalidation.pattern.as_deref(), &invalidation.tags);
        let mut roots = invalidation.keys.clone();
        let mut l2_failed = false;
        if let Some(pattern) = invalidation.pattern.as_ref().filter(|pattern| glob::is_literal(pattern)) {
            // A pattern without specials names one key: no scan needed.
            roots.extend(self.parse_keys(vec![pattern.clone()]));
        } else if let Some(pattern) = &invalidation.pattern {
            roots.extend(self.l1.keys_where(|key| glob::matches(pattern, key)).into_iter().map(|(key, _)| key));
            if let Some(l2) = &self.l2 {
                match l2.scan(pattern).await {
                    Ok(names) => roots.extend(self.parse_keys(names)),
                    Err(_) => l2_failed = true,
                }
            }
        }
        for tag in &invalidation.tags {
            roots.extend(self.l1.tagged(tag).into_iter().map(|(key, _)| key));
            if let Some(l2) = &self.l2 {
                match l2.tagged(tag).await {
                    Ok(names) => roots.extend(self.parse_keys(names)),
                    Err(_) => l2_failed = true,
                }
            }
        }
        let removal = self.remove_everywhere(roots.clone(), &HashSet::new(), !l2_failed).await;
        let l2_ok = !l2_failed && !removal.l2_failed;
        self.announce_keys(roots.iter().chain(&removal.removed), l2_ok).await;
        if let Some(pattern) = &invalidation.pattern {
            self.publish(Message::pattern(pattern.clone()), l2_ok).await;
        }
        if !invalidation.tags.is_empty() {
            self.publish(Message::tags(invalidation.tags.clone()), l2_ok).await;
        }
        if l2_failed || removal.l2_failed {
            return Err(EngineError::L2Unavailable);
        }
        Ok(removal.removed.len())
    }

    /// Removes every entry from every tier; returns how many entries the fuller tier held.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] when L2 could not be cleared (L1 was).
    pub async fn clear(&self) -> Result<usize, EngineError> {
        let n_l1 = self.l1.clear();
        let n_l2 = match &self.l2 {
            Some(l2) => Some(l2.clear().await),
            None => None,
        };
        self.publish(Message::clear(), !matches!(n_l2, Some(Err(_)))).await;
        match n_l2 {
            None => Ok(n_l1),
            Some(Ok(n_l2)) => Ok(n_l1.max(n_l2)),
            Some(Err(_)) => Err(EngineError::L2Unavailable),
        }
    }

    /// Removes the dependents of keys just written, sparing the written keys: entries of one
    /// batch never invalidate each other. `l2_dependents` are the written keys' dependents in
    /// L2, read with the write itself; `None` after L2 failed in this request (or without L2).
    pub(super) async fn cascade_from_writes(
        &self,
        written: &HashSet<Key>,
        l2_dependents: Option<Vec<String>>,
    ) -> Removal {
        let use_l2 = l2_dependents.is_some();
        let mut roots: Vec<Key> =
            written.iter().flat_map(|key| self.l1.dependents(key.as_str())).map(|(dependent, _)| dependent).collect();
        roots.extend(self.parse_keys(l2_dependents.unwrap_or_default()));
        roots.retain(|key| !written.contains(key));
        self.remove_everywhere(roots, written, use_l2).await
    }

    /// Removes `roots` (except `spared`) from L1 and L2, then their dependents, level by level.
    /// Roots are cascaded from whether or not they were present: a dependency edge outlives
    /// the key it points at.
    async fn remove_everywhere(&self, roots: Vec<Key>, spared: &HashSet<Key>, use_l2: bool) -> Removal {
        let mut removal = Removal { l2_failed: !use_l2 && self.l2.is_some(), ..Removal::default() };
        let mut visited: HashSet<Key> = HashSet::with_capacity(roots.len());
        let mut frontier: Vec<Key> = roots.into_iter().filter(|key| visited.insert(key.clone())).collect();
        while !frontier.is_empty() {
            let doomed: Vec<&Key> = frontier.iter().filter(|key| !spared.contains(*key)).collect();
            for key in &doomed {
                if self.l1.remove(key.as_str(), EvictionReason::Invalidated).is_some() {
                    removal.removed.insert((*key).clone());
                }
            }
            if let Some(l2) = &self.l2 {
                if !doomed.is_empty() && !removal.l2_failed {
                    let names: Vec<&str> = doomed.iter().map(|key| key.as_str()).collect();
                    match l2.remove_each(&names).await {
                        Ok(existed) => {
                            let present = doomed.iter().zip(existed).filter(|(_, existed)| *existed);
                            removal.removed.extend(present.map(|(key, _)| (*key).clone()));
                        }
                        Err(_) => removal.l2_failed = true,
                    }
                }
            }
            let mut next = Vec::new();
            for key in &frontier {
                for (dependent, _) in self.l1.dependents(key.as_str()) {
                    if !spared.contains(&dependent) && visited.insert(dependent.clone()) {
                        next.push(dependent);
                    }
                }
            }
            if let Some(l2) = &self.l2 {
                if !removal.l2_failed {
                    let names: Vec<&str> = frontier.iter().map(Key::as_str).collect();
                    match l2.dependents_of_each(&names).await {
                        Ok(dependents) => {
                            for dependent in self.parse_keys(dependents) {
                                if !spared.contains(&dependent) && visited.insert(dependent.clone()) {
                                    next.push(dependent);
                                }
                            }
                        }
                        Err(_) => removal.l2_failed = true,
                    }
                }
            }
            frontier = next;
        }
        removal
    }

    /// Applies a message received on the invalidation channel to L1 (never to L2: the sender
    /// already did that). Own messages are skipped; a gap in a sender's `seq` clears L1.
    pub fn apply_message(&self, payload: &[u8]) {
        let Some(message) = Message::parse(payload) else {
            self.metrics.invalidations_malformed.inc();
            tracing::warn!(payload_len = payload.len(), "malformed invalidation message ignored");
            return;
        };
        if message.origin.as_deref() == Some(self.instance_id.as_str()) {
            return;
        }
        self.metrics.invalidations_received.inc();
        if let (Some(origin), Some(seq)) = (&message.origin, message.seq) {
            if self.peers.observe(origin, seq) {
                self.flush_l1("an invalidation message from a peer was missed");
            }
        }
        let roots: Vec<Key> = match message.kind {
            MessageKind::Clear => {
                self.l1.clear();
                return;
            }
            MessageKind::Evict => self.parse_keys(message.keys.unwrap_or_default()),
            MessageKind::Pattern => {
                let pattern = message.pattern.unwrap_or_default();
                self.l1.note_invalidation(Some(&pattern), &[]);
                self.l1.keys_where(|key| glob::matches(&pattern, key)).into_iter().map(|(key, _)| key).collect()
            }
            MessageKind::Tags => {
                let tags = message.tags.unwrap_or_default();
                self.l1.note_invalidation(None, &tags);
                tags.iter().flat_map(|tag| self.l1.tagged(tag)).map(|(key, _)| key).collect()
            }
        };
        self.remove_from_l1_with_cascade(roots);
    }

    /// Clears L1 because invalidations may have been missed; L2 stays the source of truth.
    pub fn flush_l1(&self, reason: &str) {
        let n_removed = self.l1.clear();
        tracing::info!(n_removed, reason, "l1 flushed");
    }

    /// Clears L1 after the subscription was lost and re-established (when configured to).
    pub fn on_resubscribed(&self) {
        if self.flush_l1_on_reconnect {
            self.peers.reset();
            self.flush_l1("invalidation subscription re-established");
        }
    }

    /// L1 only: removes `roots` and their L1 dependents, transitively.
    pub(super) fn remove_from_l1_with_cascade(&self, roots: Vec<Key>) {
        let mut visited: HashSet<Key> = HashSet::with_capacity(roots.len());
        let mut queue: VecDeque<Key> = roots.into_iter().filter(|key| visited.insert(key.clone())).collect();
        while let Some(key) = queue.pop_front() {
            self.l1.remove(key.as_str(), EvictionReason::Invalidated);
            for (dependent, _) in self.l1.dependents(key.as_str()) {
                if visited.insert(dependent.clone()) {
                    queue.push_back(dependent);
                }
            }
        }
    }

    /// Publishes EVICT messages naming `keys` (distinct, in chunks).
    pub(super) async fn announce_keys(&self, keys: impl Iterator<Item = &Key>, l2_ok: bool) {
        if self.l2.is_none() {
            return;
        }
        for payload in self.evict_payloads(keys.map(Key::as_str)) {
            self.send(&payload, l2_ok).await;
        }
    }

    /// Publishes one message with this instance's `origin` and next `seq` (see [`Engine::send`]).
    async fn publish(&self, message: Message, l2_ok: bool) {
        if self.l2.is_none() || (message.kind == MessageKind::Evict && message.keys.as_ref().is_some_and(Vec::is_empty))
        {
            return;
        }
        self.send(&self.stamp(message), l2_ok).await;
    }

    /// Sends a stamped payload. When `l2_ok` is false (L2 already failed in this request) or
    /// the publish fails, its `seq` is spent all the same: the gap tells every receiver to
    /// clear its L1.
    async fn send(&self, payload: &str, l2_ok: bool) {
        let Some(l2) = self.l2.as_ref().filter(|_| l2_ok) else { return };
        match l2.publish(&self.channel, payload).await {
            Ok(()) => self.metrics.invalidations_published.inc(),
            Err(err) => tracing::debug!(%err, "invalidation message not published"),
        }
    }

    /// The payload of `message` from this instance: its `origin` and the next `seq`. A stamped
    /// message that is then not published leaves a gap its receivers notice.
    pub(super) fn stamp(&self, mut message: Message) -> String {
        message.origin = Some(self.instance_id.clone());
        message.seq = Some(self.last_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1);
        serde_json::to_string(&message).expect("a message serializes")
    }

    /// EVICT payloads naming `keys` (distinct, in chunks), stamped by [`Engine::stamp`].
    pub(super) fn evict_payloads<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut seen = HashSet::new();
        let names: Vec<String> = keys.filter(|key| seen.insert(*key)).map(str::to_string).collect();
        names.chunks(KEYS_PER_MESSAGE).map(|chunk| self.stamp(Message::evict(chunk.to_vec()))).collect()
    }

    /// Keys from L2 or a peer: untrusted, so invalid ones are skipped.
    fn parse_keys(&self, names: Vec<String>) -> Vec<Key> {
        names.iter().filter_map(|name| Key::parse(name, self.limits.max_key_bytes).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use proptest::strategy::Strategy as _;

    use crate::config::Parts;
    use crate::engine::{Clock, DeleteOutcome, Engine, Key, WriteRequest};
    use crate::metrics::Metrics;

    fn engine() -> Engine {
        let parts = Parts::for_tests(1000, 1 << 24);
        Engine::new(&parts.instance, parts.cache, "me".into(), Arc::new(Metrics::new()), Clock::new())
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_config(500))]

        /// Applying any payload: no panic; one that does not parse is counted as malformed and
        /// changes nothing.
        #[test]
        fn fuzz_applying_received_payloads(
            payload in proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
                "\\{\"type\":\"(EVICT|PATTERN|TAGS|CLEAR|X)\",\"(keys|pattern|tags|seq|origin)\":(\\[\"[ -~]{0,10}\"\\]|\"[ -~]{0,10}\"|-?[0-9]{1,20}|null)\\}"
                    .prop_map(String::into_bytes),
            ],
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let engine = engine();
            runtime.block_on(put(&engine, "k", &[]));
            let parses = crate::engine::messages::Message::parse(&payload).is_some();
            engine.apply_message(&payload);
            let malformed = engine.stats().invalidations_malformed;
            proptest::prop_assert_eq!(malformed, u64::from(!parses));
            if !parses {
                proptest::prop_assert!(present(&engine, "k"), "a malformed message changes nothing");
            }
        }
    }

    async fn put(engine: &Engine, key: &str, deps: &[&str]) {
        let request = WriteRequest {
            key: engine.parse_key(key).unwrap(),
            value: Bytes::from_static(b"1"),
            ttl_secs: None,
            tags: vec!["t".into()],
            depends_on: deps.iter().map(|dep| dep.to_string()).collect(),
        };
        engine.set(engine.validate(request).unwrap()).await.unwrap();
    }

    fn present(engine: &Engine, key: &str) -> bool {
        engine.l1.peek(key).is_some()
    }

    fn key(raw: &str) -> Key {
        Key::parse(raw, 512).unwrap()
    }

    #[tokio::test]
    async fn delete_cascades_through_three_levels() {
        let engine = engine();
        put(&engine, "page", &[]).await;
        put(&engine, "section", &["page"]).await;
        put(&engine, "fragment", &["section"]).await;
        put(&engine, "unrelated", &[]).await;
        assert_eq!(engine.delete(&key("page")).await.unwrap(), DeleteOutcome { deleted: true, invalidated: 3 });
        assert!(!present(&engine, "section") && !present(&engine, "fragment"));
        assert!(present(&engine, "unrelated"));
    }

    #[tokio::test]
    async fn a_cycle_terminates_and_spares_the_key_written() {
        let engine = engine();
        put(&engine, "a", &["c"]).await;
        put(&engine, "b", &["a"]).await;
        // c closes the cycle a -> c -> b -> a: its write removes a and b, then reaches c again.
        put(&engine, "c", &["b"]).await;
        assert!(present(&engine, "c"));
        assert!(!present(&engine, "a") && !present(&engine, "b"));
        assert_eq!(engine.delete(&key("c")).await.unwrap(), DeleteOutcome { deleted: true, invalidated: 1 });
    }

    #[tokio::test]
    async fn cascade_reaches_dependents_of_a_missing_key() {
        let engine = engine();
        put(&engine, "child", &["gone"]).await;
        assert_eq!(engine.delete(&key("gone")).await.unwrap(), DeleteOutcome { deleted: false, invalidated: 1 });
        assert!(!present(&engine, "child"));
    }

    #[tokio::test]
    async fn a_rewritten_dependent_with_new_dependencies_is_spared() {
        let engine = engine();
        put(&engine, "child", &["old-parent"]).await;
        put(&engine, "child", &["new-parent"]).await;
        assert_eq!(engine.delete(&key("old-parent")).await.unwrap().invalidated, 0);
        assert!(present(&engine, "child"));
        assert_eq!(engine.delete(&key("new-parent")).await.unwrap().invalidated, 1);
    }

    #[tokio::test]
    async fn entries_of_one_batch_never_invalidate_each_other() {
        let engine = engine();
        put(&engine, "old-child", &["parent"]).await;
        let writes = [("parent", vec![]), ("child", vec!["parent".to_string()])]
            .into_iter()
            .map(|(name, depends_on)| {
                let request = WriteRequest {
                    key: key(name),
                    value: Bytes::from_static(b"1"),
                    ttl_secs: None,
                    tags: vec![],
                    depends_on,
                };
                engine.validate(request).unwrap()
            })
            .collect();
        engine.set_many(writes).await.unwrap();
        assert!(present(&engine, "parent") && present(&engine, "child"));
        assert!(!present(&engine, "old-child"), "a dependent from before the batch is invalidated");
    }

    #[tokio::test]
    async fn received_messages_apply_to_l1_with_cascade() {
        let engine = engine();
        put(&engine, "a", &[]).await;
        put(&engine, "a:child", &["a"]).await;
        put(&engine, "b", &[]).await;
        engine.apply_message(br#"{"type":"EVICT","keys":["a"],"origin":"peer","seq":1}"#);
        assert!(!present(&engine, "a") && !present(&engine, "a:child") && present(&engine, "b"));
        engine.apply_message(br#"{"type":"TAGS","tags":["t"]}"#);
        assert!(!present(&engine, "b"), "a message without origin is applied");
    }

    #[tokio::test]
    async fn own_messages_are_skipped_and_malformed_ones_counted() {
        let engine = engine();
        put(&engine, "a", &[]).await;
        engine.apply_message(br#"{"type":"CLEAR","origin":"me","seq":1}"#);
        assert!(present(&engine, "a"));
        engine.apply_message(b"{not json");
        engine.apply_message(br#"{"type":"EVICT"}"#);
        assert!(present(&engine, "a"));
        assert_eq!(engine.stats().invalidations_malformed, 2);
        assert_eq!(engine.stats().invalidations_received, 0);
    }

    #[tokio::test]
    async fn a_sequence_gap_flushes_l1() {
        let engine = engine();
        engine.apply_message(br#"{"type":"EVICT","keys":["x"],"origin":"peer","seq":1}"#);
        put(&engine, "a", &[]).await;
        engine.apply_message(br#"{"type":"EVICT","keys":["x"],"origin":"peer","seq":2}"#);
        assert!(present(&engine, "a"));
        engine.apply_message(br#"{"type":"EVICT","keys":["x"],"origin":"peer","seq":4}"#);
        assert!(!present(&engine, "a"), "seq 3 was missed: L1 may hold stale values");
    }
}
