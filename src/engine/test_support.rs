//! Fixtures for the engine's unit tests, in one place: keys, tags, entries and caches.

use bytes::Bytes;

use super::entry::{EntryParts, NewEntry};
use super::{Cache, Entry, Key, Tag};
use crate::config::Parts;

/// A key; test keys are always valid.
pub(crate) fn key(raw: &str) -> Key {
    Key::parse(raw, 512).expect("a valid test key")
}

fn tags(names: &[&str]) -> Box<[Tag]> {
    names.iter().map(|name| Tag::parse(name).expect("a valid test tag")).collect()
}

fn keys(names: &[&str]) -> Box<[Key]> {
    names.iter().map(|name| key(name)).collect()
}

/// The parts of an entry of `key` with `value`, written at `cached_at_ms`, expiring at
/// `expires_at_ms`, with `tag_names` and `dependencies`.
pub(crate) fn parts(
    key: &Key,
    value: impl Into<Bytes>,
    (cached_at_ms, expires_at_ms): (u64, u64),
    tag_names: &[&str],
    dependencies: &[&str],
) -> EntryParts {
    EntryParts {
        key: key.clone(),
        value: value.into(),
        cached_at_ms,
        expires_at_ms,
        tags: tags(tag_names),
        depends_on: keys(dependencies),
    }
}

/// An entry built from [`parts`] with `version`, its L1 copy living until its expiry.
pub(crate) fn entry(parts: EntryParts, version: u64) -> Entry {
    NewEntry::new(parts, version).build()
}

/// An L1-only cache with the defaults of SPEC §11 and the L1 bounds given.
pub(crate) fn cache(max_entries: usize, max_bytes: u64) -> Cache {
    cache_with(max_entries, max_bytes, |_| {})
}

/// [`cache`] with `configure` applied to its parts first.
pub(crate) fn cache_with(max_entries: usize, max_bytes: u64, configure: impl FnOnce(&mut Parts)) -> Cache {
    let mut parts = Parts::for_tests(max_entries, max_bytes);
    configure(&mut parts);
    Cache::standalone(&parts, "me")
}
