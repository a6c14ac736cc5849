//! Removal with dependency cascade (SPEC §5): removing or writing key K removes every key whose
//! `depends_on` holds K, transitively. A visited set makes cycles safe, and a write spares the
//! key it just wrote. Records in the dependency graph carry the dependent's version, so the
//! cascade removes exactly the entry that declared the dependency, never a newer one.

use std::collections::{HashSet, VecDeque};

use super::{Engine, Key};
use crate::metrics::EvictionReason;

impl Engine {
    /// Removes `key` (any version) and cascades. Returns whether `key` itself was present and
    /// the distinct keys removed in all.
    pub(super) fn remove_and_cascade(&self, key: &Key) -> (bool, usize) {
        let deleted = self.l1.peek(key.as_str()).is_some();
        let removed = self.invalidate_roots(vec![(key.clone(), None)]);
        (deleted && removed > 0, removed)
    }

    /// Removes the dependents of a key just written, sparing the key itself.
    pub(super) fn invalidate_dependents_of(&self, written: &Key) -> usize {
        let mut visited = HashSet::from([written.clone()]);
        let mut queue = VecDeque::from([written.clone()]);
        self.cascade(&mut visited, &mut queue)
    }

    /// Removes each root (only at the given version when one is given) and cascades from every
    /// root, present or not: a dependency edge outlives the key it points at.
    pub(super) fn invalidate_roots(&self, roots: Vec<(Key, Option<u64>)>) -> usize {
        let mut visited = HashSet::with_capacity(roots.len());
        let mut queue = VecDeque::with_capacity(roots.len());
        let mut n_removed = 0;
        for (key, version) in roots {
            if !visited.insert(key.clone()) {
                continue;
            }
            let removed = match version {
                Some(version) => {
                    self.l1
                        .remove_version(key.as_str(), version, EvictionReason::Invalidated)
                }
                None => self.l1.remove(key.as_str(), EvictionReason::Invalidated),
            };
            n_removed += usize::from(removed.is_some());
            queue.push_back(key);
        }
        n_removed + self.cascade(&mut visited, &mut queue)
    }

    /// Breadth-first walk of the dependency graph from `queue`; returns the keys removed.
    fn cascade(&self, visited: &mut HashSet<Key>, queue: &mut VecDeque<Key>) -> usize {
        let mut n_removed = 0;
        while let Some(key) = queue.pop_front() {
            for (dependent, version) in self.l1.dependents(key.as_str()) {
                if !visited.insert(dependent.clone()) {
                    continue;
                }
                let removed = self.l1.remove_version(
                    dependent.as_str(),
                    version,
                    EvictionReason::Invalidated,
                );
                n_removed += usize::from(removed.is_some());
                queue.push_back(dependent);
            }
        }
        n_removed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::config::EngineConfig;
    use crate::engine::{Clock, Engine, Key, WriteRequest};
    use crate::metrics::Metrics;

    fn engine() -> Engine {
        Engine::new(
            EngineConfig::for_tests(1000, 1 << 24),
            Arc::new(Metrics::new()),
            Clock::new(),
        )
    }

    fn put(engine: &Engine, key: &str, deps: &[&str]) {
        let request = WriteRequest {
            key: engine.parse_key(key).unwrap(),
            value: Bytes::from_static(b"1"),
            ttl_secs: None,
            tags: vec![],
            depends_on: deps.iter().map(|dep| dep.to_string()).collect(),
        };
        engine.set(engine.validate(request).unwrap());
    }

    fn present(engine: &Engine, key: &str) -> bool {
        engine.l1.peek(key).is_some()
    }

    fn key(raw: &str) -> Key {
        Key::parse(raw, 512).unwrap()
    }

    #[test]
    fn delete_cascades_through_three_levels() {
        let engine = engine();
        put(&engine, "page", &[]);
        put(&engine, "section", &["page"]);
        put(&engine, "fragment", &["section"]);
        put(&engine, "unrelated", &[]);
        let outcome = engine.delete(&key("page"));
        assert!(outcome.deleted);
        assert_eq!(outcome.invalidated, 3);
        assert!(!present(&engine, "section") && !present(&engine, "fragment"));
        assert!(present(&engine, "unrelated"));
    }

    #[test]
    fn a_cycle_terminates_and_spares_the_key_written() {
        let engine = engine();
        put(&engine, "a", &["c"]);
        put(&engine, "b", &["a"]);
        // c closes the cycle a -> c -> b -> a: its write removes a and b, then reaches c again.
        let write = WriteRequest {
            key: key("c"),
            value: Bytes::from_static(b"1"),
            ttl_secs: None,
            tags: vec![],
            depends_on: vec!["b".into()],
        };
        engine.set(engine.validate(write).unwrap());
        assert!(present(&engine, "c"));
        assert!(!present(&engine, "a") && !present(&engine, "b"));
        assert_eq!(
            engine.delete(&key("c")),
            crate::engine::DeleteOutcome {
                deleted: true,
                invalidated: 1
            }
        );
    }

    #[test]
    fn a_write_spares_itself_in_a_cycle() {
        let engine = engine();
        put(&engine, "x", &["y"]);
        put(&engine, "y", &["x"]); // y's write cascades to x (x depends on y), which depends on... y: spared.
        assert!(present(&engine, "y"));
        assert!(!present(&engine, "x"));
    }

    #[test]
    fn cascade_reaches_dependents_of_a_missing_key() {
        let engine = engine();
        put(&engine, "child", &["gone"]);
        let outcome = engine.delete(&key("gone"));
        assert_eq!(
            outcome,
            crate::engine::DeleteOutcome {
                deleted: false,
                invalidated: 1
            }
        );
        assert!(!present(&engine, "child"));
    }

    #[test]
    fn a_rewritten_dependent_with_new_dependencies_is_spared() {
        let engine = engine();
        put(&engine, "child", &["old-parent"]);
        put(&engine, "child", &["new-parent"]);
        assert_eq!(engine.delete(&key("old-parent")).invalidated, 0);
        assert!(present(&engine, "child"));
        assert_eq!(engine.delete(&key("new-parent")).invalidated, 1);
    }
}
