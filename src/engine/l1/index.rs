//! A versioned many-to-many index: name → {key → entry version}.
//!
//! Used twice by L1: tag → tagged keys, and dependency → dependent keys. Records carry the
//! version of the entry that added them, and removal is conditional on that version, so a late
//! cleanup for an old entry can never drop the record of the entry that replaced it. That is
//! what keeps the index exact without holding any lock across the cache and the index.
//!
//! Lock rule: a dashmap guard is never held while calling into quick_cache (eviction hooks call
//! this index while holding a quick_cache shard lock, so the reverse order could deadlock).

use std::collections::HashMap;
use std::hash::Hash;

use dashmap::DashMap;

use crate::engine::key::Key;

pub(crate) struct VersionedIndex<N: Eq + Hash> {
    records: DashMap<N, HashMap<Key, u64>>,
}

impl<N: Eq + Hash + Clone> VersionedIndex<N> {
    pub fn new() -> Self {
        Self { records: DashMap::new() }
    }

    pub fn add(&self, name: &N, key: &Key, version: u64) {
        self.records.entry(name.clone()).or_default().insert(key.clone(), version);
    }

    /// Removes `key` from `name` if the record still carries `version`.
    pub fn remove(&self, name: &N, key: &Key, version: u64) {
        let emptied = match self.records.get_mut(name) {
            Some(mut members) => {
                if members.get(key) == Some(&version) {
                    members.remove(key);
                }
                members.is_empty()
            }
            None => false,
        };
        if emptied {
            self.records.remove_if(name, |_, members| members.is_empty());
        }
    }

    /// The keys recorded under `name`, with the version each record carries.
    pub fn members<Q>(&self, name: &Q) -> Vec<(Key, u64)>
    where
        N: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.records
            .get(name)
            .map(|members| members.iter().map(|(key, version)| (key.clone(), *version)).collect())
            .unwrap_or_default()
    }

    /// Number of names with at least one record.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Total records under all names.
    #[cfg(test)]
    pub fn record_count(&self) -> usize {
        self.records.iter().map(|members| members.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_only_drops_the_matching_version() {
        let index: VersionedIndex<Key> = VersionedIndex::new();
        let name = Key::parse("tag", 64).unwrap();
        let key = Key::parse("k", 64).unwrap();
        index.add(&name, &key, 1);
        index.add(&name, &key, 2);
        index.remove(&name, &key, 1);
        assert_eq!(index.members("tag"), vec![(key.clone(), 2)]);
        index.remove(&name, &key, 2);
        assert!(index.members("tag").is_empty());
        assert_eq!(index.len(), 0, "an emptied name is dropped");
    }
}
