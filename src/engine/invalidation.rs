//! Invalidation (SPEC §5): by key, glob pattern and tag, with the dependency cascade, in L1
//! and L2, announced to the other instances on the bus; and applying what the bus receives.
//!
//! Cascade: removing or writing key K removes every key whose `depends_on` holds K,
//! transitively, breadth first through both dependency graphs (L1's index and L2's sets). A
//! visited set makes cycles safe, and a write spares the key it just wrote.
//!
//! Every L2 call of one invalidation goes through its [`L2Budget`]: when one fails, L1 is still
//! invalidated, the remaining steps skip L2, the announcement is skipped with its `seq` spent
//! (so every receiver sees the gap and clears its L1), and the call answers
//! [`EngineError::L2Unavailable`]: L2 may keep the value, and the caller must know.

use std::collections::{HashSet, VecDeque};

use super::bus::Received;
use super::l2::L2Budget;
use super::messages::{Message, MessageKind};
use super::{glob, Cache, DeleteOutcome, EngineError, Invalidation, Key};
use crate::metrics::EvictionReason;

impl Cache {
    /// Removes `key` and every key that depends on it, in every tier.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] when L2 could not take part (L1 was still cleaned).
    pub async fn delete(&self, key: &Key) -> Result<DeleteOutcome, EngineError> {
        let mut budget = self.instance.budget();
        let removed = self.remove_everywhere(&mut budget, vec![key.clone()], &HashSet::new()).await;
        let announced = std::iter::once(key).chain(&removed).map(Key::as_str);
        self.instance.bus().announce(&budget, announced).await;
        if budget.has_failed() {
            return Err(EngineError::L2Unavailable);
        }
        let deleted = removed.contains(key);
        if deleted {
            self.metrics().counters.deletes.inc();
        }
        Ok(DeleteOutcome { deleted, invalidated: removed.len() })
    }

    /// Removes what `invalidation` selects plus their dependents, in every tier; returns the
    /// distinct keys removed.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] when L2 could not take part (L1 was still cleaned).
    pub async fn invalidate(&self, invalidation: &Invalidation) -> Result<usize, EngineError> {
        self.l1.note_invalidation(invalidation.pattern.as_deref(), &invalidation.tags);
        let mut budget = self.instance.budget();
        let mut roots = invalidation.keys.clone();
        if let Some(pattern) = invalidation.pattern.as_ref().filter(|pattern| glob::is_literal(pattern)) {
            // A pattern without specials names one key: no scan needed.
            roots.extend(self.parse_names(vec![pattern.clone()]));
        } else if let Some(pattern) = &invalidation.pattern {
            roots.extend(self.l1.keys_where(|key| glob::matches(pattern, key)).into_iter().map(|(key, _)| key));
            if let Some(names) = budget.call(|l2| l2.scan(pattern)).await {
                roots.extend(self.parse_names(names));
            }
        }
        for tag in &invalidation.tags {
            roots.extend(self.l1.tagged(tag).into_iter().map(|(key, _)| key));
            if let Some(names) = budget.call(|l2| l2.tagged(tag)).await {
                roots.extend(self.parse_names(names));
            }
        }
        let removed = self.remove_everywhere(&mut budget, roots.clone(), &HashSet::new()).await;
        let bus = self.instance.bus();
        bus.announce(&budget, roots.iter().chain(&removed).map(Key::as_str)).await;
        if let Some(pattern) = &invalidation.pattern {
            bus.publish(&budget, Message::pattern(pattern.clone())).await;
        }
        if !invalidation.tags.is_empty() {
            bus.publish(&budget, Message::tags(invalidation.tags.clone())).await;
        }
        if budget.has_failed() {
            return Err(EngineError::L2Unavailable);
        }
        Ok(removed.len())
    }

    /// Removes every entry from every tier; returns how many entries the fuller tier held.
    ///
    /// # Errors
    /// [`EngineError::L2Unavailable`] when L2 could not be cleared (L1 was).
    pub async fn clear(&self) -> Result<usize, EngineError> {
        let n_l1 = self.l1.clear();
        let mut budget = self.instance.budget();
        let n_l2 = budget.call(|l2| l2.clear()).await;
        self.instance.bus().publish(&budget, Message::clear()).await;
        match (budget.has_failed(), n_l2) {
            (true, _) => Err(EngineError::L2Unavailable),
            (false, n_l2) => Ok(n_l1.max(n_l2.unwrap_or(0))),
        }
    }

    /// Removes the dependents of keys just written, sparing the written keys: entries of one
    /// batch never invalidate each other. `l2_dependents` are the written keys' dependents in
    /// L2, read with the write itself (empty when L2 failed or is absent). Returns the keys
    /// removed.
    pub(super) async fn cascade_from_writes(
        &self,
        budget: &mut L2Budget<'_>,
        written: &HashSet<Key>,
        l2_dependents: Vec<String>,
    ) -> HashSet<Key> {
        let mut roots: Vec<Key> =
            written.iter().flat_map(|key| self.l1.dependents(key.as_str())).map(|(dependent, _)| dependent).collect();
        roots.extend(self.parse_names(l2_dependents));
        roots.retain(|key| !written.contains(key));
        self.remove_everywhere(budget, roots, written).await
    }

    /// Removes `roots` (except `spared`) from L1 and L2, then their dependents, level by level;
    /// returns the distinct keys that existed in L1 or L2 and were removed. Roots are cascaded
    /// from whether or not they were present: a dependency edge outlives the key it points at.
    async fn remove_everywhere(
        &self,
        budget: &mut L2Budget<'_>,
        roots: Vec<Key>,
        spared: &HashSet<Key>,
    ) -> HashSet<Key> {
        let mut removed = HashSet::new();
        let mut visited: HashSet<Key> = HashSet::with_capacity(roots.len());
        let mut frontier: Vec<Key> = roots.into_iter().filter(|key| visited.insert(key.clone())).collect();
        while !frontier.is_empty() {
            let doomed: Vec<&Key> = frontier.iter().filter(|key| !spared.contains(*key)).collect();
            for key in &doomed {
                if self.l1.remove(key.as_str(), EvictionReason::Invalidated).is_some() {
                    removed.insert((*key).clone());
                }
            }
            if !doomed.is_empty() {
                let names: Vec<&str> = doomed.iter().map(|key| key.as_str()).collect();
                if let Some(existed) = budget.call(|l2| l2.remove_each(&names)).await {
                    let present = doomed.iter().zip(existed).filter(|(_, existed)| *existed);
                    removed.extend(present.map(|(key, _)| (*key).clone()));
                }
            }
            let mut next = Vec::new();
            let mut reach = |dependent: Key| {
                if !spared.contains(&dependent) && visited.insert(dependent.clone()) {
                    next.push(dependent);
                }
            };
            for key in &frontier {
                self.l1.dependents(key.as_str()).into_iter().for_each(|(dependent, _)| reach(dependent));
            }
            let names: Vec<&str> = frontier.iter().map(Key::as_str).collect();
            if let Some(dependents) = budget.call(|l2| l2.dependents_of_each(&names)).await {
                self.parse_names(dependents).into_iter().for_each(reach);
            }
            frontier = next;
        }
        removed
    }

    /// Judges a payload received on the invalidation channel and applies it (see
    /// [`Cache::apply`]).
    pub fn apply_payload(&self, payload: &[u8]) {
        self.apply(self.instance.bus().receive(payload));
    }

    /// Applies a received message to L1 (never to L2: the sender already did that), after
    /// clearing L1 when the bus noticed a missed message.
    pub fn apply(&self, received: Received) {
        let Received::Apply { message, missed } = received else { return };
        if missed {
            self.flush_l1("an invalidation message from a peer was missed");
        }
        let roots: Vec<Key> = match message.kind {
            MessageKind::Clear => {
                self.l1.clear();
                return;
            }
            MessageKind::Evict => self.parse_names(message.keys.unwrap_or_default()),
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
        if self.instance.bus().resubscribed() {
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

    /// Keys from L2 or a peer: untrusted, so invalid ones are skipped.
    fn parse_names(&self, names: Vec<String>) -> Vec<Key> {
        names.iter().filter_map(|name| Key::parse(name, self.limits.max_key_bytes).ok()).collect()
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;

    use proptest::strategy::Strategy as _;

    use crate::engine::test_support::{self, key};
    use crate::engine::{Cache, DeleteOutcome, WriteRequest};

    fn engine() -> Cache {
        test_support::cache(1000, 1 << 24)
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
            engine.apply_payload(&payload);
            let malformed = engine.stats().counter("invalidations_malformed");
            proptest::prop_assert_eq!(malformed, u64::from(!parses));
            if !parses {
                proptest::prop_assert!(present(&engine, "k"), "a malformed message changes nothing");
            }
        }
    }

    async fn put(engine: &Cache, key: &str, deps: &[&str]) {
        let request = WriteRequest {
            key: engine.parse_key(key).unwrap(),
            value: Bytes::from_static(b"1"),
            ttl_secs: None,
            tags: vec!["t".into()],
            depends_on: deps.iter().map(|dep| dep.to_string()).collect(),
        };
        engine.set(engine.validate(request).unwrap()).await.unwrap();
    }

    fn present(engine: &Cache, key: &str) -> bool {
        engine.l1.peek(key).is_some()
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
        engine.apply_payload(br#"{"type":"EVICT","keys":["a"],"origin":"peer","seq":1}"#);
        assert!(!present(&engine, "a") && !present(&engine, "a:child") && present(&engine, "b"));
        engine.apply_payload(br#"{"type":"TAGS","tags":["t"]}"#);
        assert!(!present(&engine, "b"), "a message without origin is applied");
    }

    #[tokio::test]
    async fn own_messages_are_skipped_and_malformed_ones_counted() {
        let engine = engine();
        put(&engine, "a", &[]).await;
        engine.apply_payload(br#"{"type":"CLEAR","origin":"me","seq":1}"#);
        assert!(present(&engine, "a"));
        engine.apply_payload(b"{not json");
        engine.apply_payload(br#"{"type":"EVICT"}"#);
        assert!(present(&engine, "a"));
        assert_eq!(engine.stats().counter("invalidations_malformed"), 2);
        assert_eq!(engine.stats().counter("invalidations_received"), 0);
    }

    #[tokio::test]
    async fn a_sequence_gap_flushes_l1() {
        let engine = engine();
        engine.apply_payload(br#"{"type":"EVICT","keys":["x"],"origin":"peer","seq":1}"#);
        put(&engine, "a", &[]).await;
        engine.apply_payload(br#"{"type":"EVICT","keys":["x"],"origin":"peer","seq":2}"#);
        assert!(present(&engine, "a"));
        engine.apply_payload(br#"{"type":"EVICT","keys":["x"],"origin":"peer","seq":4}"#);
        assert!(!present(&engine, "a"), "seq 3 was missed: L1 may hold stale values");
    }
}
