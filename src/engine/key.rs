//! Keys and tags: validated, cheaply clonable strings.
//! Knows nothing of HTTP; percent-decoding happens before a string gets here.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use super::error::EngineError;

/// Names a client cannot write as keys (SPEC §21): the fixed routes under `/api/cache/` take
/// them, so an entry of that name could be written (through a body) but never read back with
/// `GET /api/cache/{key}`.
pub const RESERVED_KEYS: [&str; 8] =
    ["invalidate", "batch/get", "batch/set", "prefetch", "evict", "warm", "snapshot", "metrics"];

/// A cache key: UTF-8, 1..=`max_key_bytes` bytes, no control characters.
/// Clones share one allocation, so the indexes can hold keys without copying them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// # Errors
    /// [`EngineError::InvalidKey`] when the key is empty, too long or holds a control character.
    pub fn parse(raw: &str, max_key_bytes: usize) -> Result<Key, EngineError> {
        check_text("key", raw, max_key_bytes).map_err(EngineError::InvalidKey)?;
        Ok(Key(Arc::from(raw)))
    }

    /// [`Key::parse`] for a key an entry is about to be made under (a write, a prefetch or
    /// warm item), which may not be one of the [`RESERVED_KEYS`]. Reads,
    /// invalidations and dependencies name keys through [`Key::parse`] alone, as do keys read
    /// back from L2, a snapshot or a peer's message: an entry of such a name that an older
    /// version stored stays readable (batch/get) and removable (invalidate by key).
    ///
    /// # Errors
    /// As [`Key::parse`], and [`EngineError::InvalidKey`] for a reserved name.
    pub fn parse_writable(raw: &str, max_key_bytes: usize) -> Result<Key, EngineError> {
        if RESERVED_KEYS.contains(&raw) {
            return Err(EngineError::InvalidKey(format!("{raw:?} is the name of a fixed route, not a key")));
        }
        Key::parse(raw, max_key_bytes)
    }

    /// A handle to the key of `entry`, validated when the entry was made.
    pub(crate) fn of_entry(entry: &super::entry::Entry) -> Key {
        Key(Arc::from(entry.key()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A tag: 1..=128 bytes of UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Arc<str>);

/// Longest tag accepted (SPEC §2).
pub const MAX_TAG_BYTES: usize = 128;

impl Tag {
    /// # Errors
    /// [`EngineError::InvalidTags`] when the tag is empty, too long or holds a control character.
    pub fn parse(raw: &str) -> Result<Tag, EngineError> {
        check_text("tag", raw, MAX_TAG_BYTES).map_err(EngineError::InvalidTags)?;
        Ok(Tag(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Tag {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

fn check_text(what: &str, raw: &str, max_bytes: usize) -> Result<(), String> {
    if raw.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if raw.len() > max_bytes {
        return Err(format!("{what} is {} bytes, the limit is {max_bytes}", raw.len()));
    }
    if raw.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_slashes_and_colons() {
        assert_eq!(Key::parse("/api/users//1:x", 512).unwrap().as_str(), "/api/users//1:x");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Key::parse("", 512).is_err());
        assert!(Key::parse("a\nb", 512).is_err());
        assert!(Key::parse("a\u{7f}", 512).is_err());
        assert!(Key::parse(&"k".repeat(513), 512).is_err());
        assert!(Key::parse(&"k".repeat(512), 512).is_ok());
        // The limit counts bytes, not characters.
        assert!(Key::parse(&"é".repeat(257), 512).is_err());
    }

    #[test]
    fn fixed_route_names_are_not_writable_keys() {
        for name in RESERVED_KEYS {
            assert!(Key::parse_writable(name, 512).is_err(), "{name}");
            assert!(Key::parse(name, 512).is_ok(), "{name} stays readable from stored data");
        }
        assert!(Key::parse_writable("metrics/", 512).is_ok());
        assert!(Key::parse_writable("batch", 512).is_ok());
        assert!(Key::parse_writable("", 512).is_err());
    }

    #[test]
    fn tags_are_bounded() {
        assert!(Tag::parse(&"t".repeat(128)).is_ok());
        assert!(Tag::parse(&"t".repeat(129)).is_err());
        assert!(Tag::parse("").is_err());
    }
}
