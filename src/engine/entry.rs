//! An entry as the tiers hold it: serialized value bytes plus the metadata of SPEC §2.
//! Immutable once built (but for the one-shot prefetch mark); an [`Entry`] is itself a shared
//! handle, so a hit clones a pointer, not a value.
//!
//! Three instants rule an L1 copy, in this order: fresh-until (served as a hit before it),
//! `expires_at_ms` (the entry's own end, what clients see), keep-until (dropped from L1 at it).
//! Between fresh-until and keep-until a copy is only served as stale, which needs
//! `cache.grace_secs`: keep-until is then the expiry plus the grace; without grace it equals
//! fresh-until.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use triomphe::ThinArc;

use super::key::{Key, Tag};

/// Fixed bytes an entry costs beyond its key, value, tags and dependencies: the header, the
/// allocation's count and length words, and quick_cache's slot (two pointers and its
/// bookkeeping, about 40 bytes, plus its share of the hash table).
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Header>() + 16 + 48;
const PER_NAME_OVERHEAD_BYTES: usize = std::mem::size_of::<Key>() + 16;

/// An entry: one allocation holding a fixed header and then the key bytes followed by the
/// value bytes (`triomphe::ThinArc`: a one-word pointer, one count, no weak count). Clones
/// share the allocation. One allocation instead of three (entry, value, key) is what keeps
/// a million 100-byte entries near 260 bytes each (BENCHMARKS.md, target 5), and a read
/// follows one pointer from the cache slot to the key, the metadata and the value.
#[derive(Clone)]
pub struct Entry(ThinArc<Header, u8>);

/// Field widths keep the header at 72 bytes; the keep-until instant is derived from the
/// grace rather than stored.
struct Header {
    /// The 128-bit xxh3 of the value and the tags (what a JSON answer represents, SPEC §21),
    /// as two halves (8-byte alignment, where a `u128` would round the header up to 16);
    /// rendered into the ETag on demand.
    etag_hash: [u64; 2],
    cached_at_ms: u64,
    expires_at_ms: u64,
    /// Until when this L1 copy is served as fresh: `expires_at_ms`, or earlier when
    /// `l1.max_ttl_secs` bounds how stale a copy of a shared (L2) entry may get.
    l1_fresh_until_ms: u64,
    /// Unique per write, process-wide: index records carry it so that removing an old entry
    /// never removes the index record of the entry that replaced it.
    version: u64,
    /// Tags and dependencies, behind one pointer that most entries leave empty.
    names: Option<Box<Names>>,
    /// Seconds this L1 copy is kept past `expires_at_ms` to be served stale (`cache.grace_secs`,
    /// whole seconds, at most ten years); 0 drops it at `l1_fresh_until_ms`.
    grace_secs: u32,
    /// Bytes of the key at the start of the data; the value follows.
    key_len: u32,
    /// A remembered origin 404 (`origin.negative_ttl_secs`): no value, answers a miss.
    negative: bool,
    /// Brought in by prefetch and not read since: the first hit counts in `prefetch_hits`.
    prefetched: AtomicBool,
}

/// The tags and dependencies of an entry that has any, with its key as the handle the L1
/// indexes record.
#[derive(Debug)]
pub(crate) struct Names {
    pub key: Key,
    pub tags: Box<[Tag]>,
    pub depends_on: Box<[Key]>,
}

/// The ETag of an entry's JSON answer, rendered from its hash: weak (`W/"…"`), since the
/// answer also carries `expires_at` and `ttl_remaining`, which change while the entry does not
/// (RFC 9110 §8.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Etag([u8; ETAG_LEN]);

impl Etag {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("etag is ASCII hex")
    }
}

/// `W/`, a quote, 32 hex digits, a quote.
const ETAG_LEN: usize = 36;

/// What an entry is made of, before its L1 lifetime is set: the key, the value bytes, when it
/// was written and when it expires (Unix ms), its tags and dependencies.
#[derive(Debug, Clone)]
pub struct EntryParts {
    pub key: Key,
    pub value: Bytes,
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub tags: Box<[Tag]>,
    pub depends_on: Box<[Key]>,
}

impl EntryParts {
    /// A value without tags or dependencies (an origin answer).
    pub fn plain(key: &Key, value: Bytes, cached_at_ms: u64, expires_at_ms: u64) -> EntryParts {
        EntryParts { key: key.clone(), value, cached_at_ms, expires_at_ms, tags: [].into(), depends_on: [].into() }
    }
}

/// An entry being put together: its lifetime and marks are set here, before [`NewEntry::build`]
/// makes the one immutable allocation. Caches make them through their `Lifetime` recipe.
pub struct NewEntry {
    parts: EntryParts,
    l1_fresh_until_ms: u64,
    grace_secs: u32,
    version: u64,
    negative: bool,
    prefetched: bool,
}

impl NewEntry {
    /// An entry of `parts` with `version`. Its L1 copy lives until its expiry unless
    /// [`NewEntry::with_l1_lifetime`] says otherwise.
    pub fn new(parts: EntryParts, version: u64) -> NewEntry {
        NewEntry {
            l1_fresh_until_ms: parts.expires_at_ms,
            parts,
            grace_secs: 0,
            version,
            negative: false,
            prefetched: false,
        }
    }

    /// A remembered 404 for `key` until `expires_at_ms` (never served stale).
    pub fn negative(key: &Key, cached_at_ms: u64, expires_at_ms: u64, version: u64) -> NewEntry {
        NewEntry {
            negative: true,
            ..NewEntry::new(EntryParts::plain(key, Bytes::new(), cached_at_ms, expires_at_ms), version)
        }
    }

    /// Sets how long the L1 copy lives: fresh until `l1_deadline_ms` at most (never past the
    /// entry's own expiry), kept `grace_ms` (rounded up to whole seconds) past the expiry to be
    /// served stale. A remembered 404 is never kept past its freshness.
    pub fn with_l1_lifetime(mut self, l1_deadline_ms: u64, grace_ms: u64) -> NewEntry {
        self.l1_fresh_until_ms = self.parts.expires_at_ms.min(l1_deadline_ms);
        self.grace_secs = if self.negative { 0 } else { u32::try_from(grace_ms.div_ceil(1000)).unwrap_or(u32::MAX) };
        self
    }

    /// Marks an entry brought in by prefetch.
    pub fn mark_prefetched(mut self) -> NewEntry {
        self.prefetched = true;
        self
    }

    /// Makes the entry: one allocation, the key and value copied in.
    pub fn build(self) -> Entry {
        let EntryParts { key, value, cached_at_ms, expires_at_ms, tags, depends_on } = self.parts;
        let hash = etag_hash(&value, &tags);
        let key_len = u32::try_from(key.len()).expect("a key is far shorter than 4 GiB");
        let names = (!tags.is_empty() || !depends_on.is_empty())
            .then(|| Box::new(Names { key: key.clone(), tags, depends_on }));
        let header = Header {
            etag_hash: [(hash >> 64) as u64, hash as u64],
            cached_at_ms,
            expires_at_ms,
            l1_fresh_until_ms: self.l1_fresh_until_ms,
            version: self.version,
            names,
            grace_secs: self.grace_secs,
            key_len,
            negative: self.negative,
            prefetched: AtomicBool::new(self.prefetched),
        };
        Entry(with_concatenated(key.as_str().as_bytes(), &value, |data| ThinArc::from_header_and_slice(header, data)))
    }
}

/// The hash behind an entry's ETag: its value bytes and its tags, each tag length-prefixed and
/// the count last, so that no two different (value, tags) pairs hash the same input. Computed
/// once per entry, so a hit only renders it.
fn etag_hash(value: &[u8], tags: &[Tag]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(value);
    for tag in tags {
        hasher.update(&(tag.as_str().len() as u32).to_le_bytes());
        hasher.update(tag.as_str().as_bytes());
    }
    hasher.update(&(tags.len() as u32).to_le_bytes());
    hasher.digest128()
}

/// Calls `make` with `head` followed by `tail` as one slice, laid out in a per-thread buffer
/// that is reused (no allocation, no zeroing) while it stays under `SCRATCH_KEEP_BYTES`, so no
/// thread keeps a huge one.
fn with_concatenated<R>(head: &[u8], tail: &[u8], make: impl FnOnce(&[u8]) -> R) -> R {
    const SCRATCH_KEEP_BYTES: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // Taken out while in use: a nested call (none exists) would simply get a fresh buffer.
    let mut buf = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(head);
    buf.extend_from_slice(tail);
    let result = make(&buf);
    if buf.capacity() <= SCRATCH_KEEP_BYTES {
        // Fails only while the thread exits; the buffer is then just freed.
        let _ = SCRATCH.try_with(|scratch| scratch.set(buf));
    }
    result
}

impl Entry {
    /// Bytes a new entry of this shape would count, to refuse one that cannot fit before
    /// anything is written.
    pub fn size_of(key: &Key, value_len: usize, tags: &[Tag], depends_on: &[Key]) -> usize {
        Self::size_from(key.len(), value_len, tags, depends_on)
    }

    fn size_from(key_len: usize, value_len: usize, tags: &[Tag], depends_on: &[Key]) -> usize {
        ENTRY_OVERHEAD_BYTES
            + key_len
            + value_len
            + tags.iter().map(|tag| tag.as_str().len() + PER_NAME_OVERHEAD_BYTES).sum::<usize>()
            + depends_on.iter().map(|dep| dep.len() + PER_NAME_OVERHEAD_BYTES).sum::<usize>()
    }

    #[inline]
    fn header(&self) -> &Header {
        &self.0.header.header
    }

    /// The key, as validated when the entry was made.
    #[inline]
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).expect("the key bytes were copied from a str")
    }

    /// The key's bytes, for lookups that need no `str` (and so no UTF-8 check).
    #[inline]
    pub fn key_bytes(&self) -> &[u8] {
        &self.0.slice[..self.header().key_len as usize]
    }

    /// The serialized JSON value, exactly as written.
    #[inline]
    pub fn value(&self) -> &[u8] {
        &self.0.slice[self.header().key_len as usize..]
    }

    /// The weak ETag of the entry's JSON answer (`W/"<32 hex digits>"`).
    pub fn etag(&self) -> Etag {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'"'; ETAG_LEN];
        out[..2].copy_from_slice(b"W/");
        for (half, digits) in self.header().etag_hash.iter().zip(out[3..ETAG_LEN - 1].chunks_exact_mut(16)) {
            for (idx, digit) in digits.iter_mut().enumerate() {
                *digit = HEX[((half >> (60 - 4 * idx)) & 0xf) as usize];
            }
        }
        Etag(out)
    }

    pub fn cached_at_ms(&self) -> u64 {
        self.header().cached_at_ms
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.header().expires_at_ms
    }

    pub fn tags(&self) -> &[Tag] {
        self.names().map_or(&[], |names| &names.tags)
    }

    pub fn depends_on(&self) -> &[Key] {
        self.names().map_or(&[], |names| &names.depends_on)
    }

    /// Tags and dependencies with the key handle to index them under; `None` for an entry
    /// with neither.
    pub(crate) fn names(&self) -> Option<&Names> {
        self.header().names.as_deref()
    }

    pub fn version(&self) -> u64 {
        self.header().version
    }

    /// Bytes this entry counts against `l1.max_bytes`: key + value + metadata.
    pub fn size(&self) -> usize {
        let key_len = self.header().key_len as usize;
        Self::size_from(key_len, self.0.slice.len() - key_len, self.tags(), self.depends_on())
    }

    /// Whether this L1 copy may be served as a hit.
    #[inline]
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.header().l1_fresh_until_ms
    }

    /// Whether the entry itself is past its expiry (its copies are stale, not just old).
    #[inline]
    pub fn is_past_expiry(&self, now_ms: u64) -> bool {
        now_ms >= self.header().expires_at_ms
    }

    /// Whether this L1 copy must be dropped: past its deadline and any grace.
    #[inline]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let header = self.header();
        let keep_until_ms = match header.grace_secs {
            0 => header.l1_fresh_until_ms,
            grace_secs => header.expires_at_ms.saturating_add(u64::from(grace_secs) * 1000),
        };
        now_ms >= keep_until_ms
    }

    /// Handles sharing this entry's allocation (tests check that nothing keeps one alive).
    #[cfg(test)]
    pub(crate) fn handles(&self) -> usize {
        ThinArc::strong_count(&self.0)
    }

    pub fn is_negative(&self) -> bool {
        self.header().negative
    }

    /// True once, on the first read of a prefetched entry.
    #[inline]
    pub fn take_prefetched(&self) -> bool {
        let mark = &self.header().prefetched;
        mark.load(Ordering::Relaxed) && mark.swap(false, Ordering::Relaxed)
    }

    /// Whole seconds left, rounded down so that `max-age` never overstates freshness.
    pub fn ttl_remaining_secs(&self, now_ms: u64) -> u64 {
        self.header().expires_at_ms.saturating_sub(now_ms) / 1000
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key())
            .field("value_len", &self.value().len())
            .field("version", &self.version())
            .field("expires_at_ms", &self.expires_at_ms())
            .finish_non_exhaustive()
    }
}

/// Deserializes a present field as its raw JSON text, so that `null` is `Some("null")` and
/// only a missing field (with `#[serde(default)]`) is `None`: a value field of a body or a
/// warm item, kept as the bytes the client sent.
pub(crate) fn present_raw<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<serde_json::value::RawValue>>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_entry(value: &'static [u8]) -> NewEntry {
        let key = Key::parse("k", 512).unwrap();
        NewEntry::new(
            EntryParts {
                key: key.clone(),
                value: Bytes::from_static(value),
                cached_at_ms: 1_000,
                expires_at_ms: 11_000,
                tags: Box::new([]),
                depends_on: Box::new([]),
            },
            1,
        )
    }

    fn entry(value: &'static [u8]) -> Entry {
        new_entry(value).build()
    }

    #[test]
    fn etag_follows_the_bytes_and_the_tags() {
        assert_eq!(entry(b"{\"a\":1}").etag(), entry(b"{\"a\":1}").etag());
        assert_ne!(entry(b"{\"a\":1}").etag(), entry(b"{\"a\":2}").etag());
        let etag = entry(b"1").etag().as_str().to_string();
        assert_eq!(etag.len(), 36);
        assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
        assert!(etag[3..35].bytes().all(|digit| digit.is_ascii_hexdigit()), "{etag}");
        let tagged = |tags: &[&str]| {
            let key = Key::parse("k", 512).unwrap();
            let tags = tags.iter().map(|tag| Tag::parse(tag).unwrap()).collect();
            NewEntry::new(
                EntryParts {
                    key: key.clone(),
                    value: Bytes::from_static(b"1"),
                    cached_at_ms: 1_000,
                    expires_at_ms: 11_000,
                    tags,
                    depends_on: Box::new([]),
                },
                1,
            )
            .build()
            .etag()
        };
        assert_eq!(tagged(&[]), entry(b"1").etag());
        assert_ne!(tagged(&["users"]), tagged(&[]), "new tags, new representation");
        assert_ne!(tagged(&["ab", "c"]), tagged(&["a", "bc"]));
        assert_eq!(tagged(&["a", "b"]), tagged(&["a", "b"]));
    }

    #[test]
    fn an_entry_is_one_pointer_to_a_72_byte_header_and_its_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
        assert_eq!(std::mem::size_of::<Header>(), 72);
        let key = Key::parse("user:1", 512).unwrap();
        let entry = NewEntry::new(
            EntryParts {
                key: key.clone(),
                value: Bytes::from_static(b"{\"a\":1}"),
                cached_at_ms: 0,
                expires_at_ms: 1,
                tags: [].into(),
                depends_on: [].into(),
            },
            1,
        )
        .build();
        assert_eq!(entry.key(), "user:1");
        assert_eq!(entry.value(), b"{\"a\":1}");
        let big = vec![b'7'; 5000];
        let entry = NewEntry::new(
            EntryParts {
                key: key.clone(),
                value: Bytes::from(big.clone()),
                cached_at_ms: 0,
                expires_at_ms: 1,
                tags: [].into(),
                depends_on: [].into(),
            },
            1,
        )
        .build();
        assert_eq!((entry.key(), entry.value()), ("user:1", &big[..]), "past the stack buffer");
    }

    #[test]
    fn expiry_and_remaining_ttl() {
        let entry = entry(b"1");
        assert_eq!(entry.expires_at_ms(), 11_000);
        assert!(!entry.is_expired(10_999));
        assert!(entry.is_expired(11_000));
        assert_eq!(entry.ttl_remaining_secs(1_500), 9);
    }

    #[test]
    fn an_l1_deadline_ends_the_copy_early_but_not_the_entry() {
        let capped = new_entry(b"1").with_l1_lifetime(5_000, 0).build();
        assert!(!capped.is_fresh(5_000));
        assert!(capped.is_expired(5_000));
        assert_eq!(capped.expires_at_ms(), 11_000, "clients still see the entry's own expiry");
        let uncapped = new_entry(b"1").with_l1_lifetime(u64::MAX, 0).build();
        assert!(uncapped.is_fresh(10_999));
        assert!(!uncapped.is_expired(10_999));
    }

    #[test]
    fn grace_keeps_an_expired_copy_but_never_as_fresh() {
        let graced = new_entry(b"1").with_l1_lifetime(u64::MAX, 5_000).build();
        assert!(!graced.is_fresh(11_000));
        assert!(graced.is_past_expiry(11_000));
        assert!(!graced.is_expired(15_999));
        assert!(graced.is_expired(16_000));
        let capped = new_entry(b"1").with_l1_lifetime(5_000, 5_000).build();
        assert!(!capped.is_fresh(5_000) && !capped.is_past_expiry(5_000) && !capped.is_expired(5_000));
        let key = Key::parse("k", 512).unwrap();
        let negative = NewEntry::negative(&key, 1_000, 2_000, 1).with_l1_lifetime(u64::MAX, 5_000).build();
        assert!(negative.is_negative() && negative.is_expired(2_000), "a remembered 404 is never served stale");
    }

    #[test]
    fn the_prefetch_mark_is_taken_once() {
        let entry = new_entry(b"1").mark_prefetched().build();
        assert!(entry.take_prefetched());
        assert!(!entry.take_prefetched());
    }

    #[test]
    fn size_counts_key_value_and_metadata() {
        let key = Key::parse("key", 512).unwrap();
        let tags: Box<[Tag]> = Box::new([Tag::parse("t1").unwrap()]);
        let entry = NewEntry::new(
            EntryParts {
                key: key.clone(),
                value: Bytes::from(vec![b'1'; 100]),
                cached_at_ms: 0,
                expires_at_ms: 1_000,
                tags: tags.clone(),
                depends_on: Box::new([]),
            },
            1,
        )
        .build();
        assert_eq!(entry.size(), Entry::size_of(&key, 100, &tags, &[]));
        assert!(entry.size() > 100 + 3 + 2);
    }
}
