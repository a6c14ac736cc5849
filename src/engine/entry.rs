//! An entry as the tiers hold it: serialized value bytes plus the metadata of SPEC §2.
//! Immutable once built (but for the one-shot prefetch mark); tiers share it behind an `Arc`,
//! so a hit clones a pointer, not a value.
//!
//! Three instants rule an L1 copy, in this order: `l1_fresh_until_ms` (served as a hit before
//! it), `expires_at_ms` (the entry's own end, what clients see), `l1_keep_until_ms` (dropped
//! from L1 at it). Between fresh-until and keep-until a copy is only served as stale, which
//! needs `cache.grace_secs`; without grace keep-until equals fresh-until.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::key::{Key, Tag};

/// Fixed bytes an entry costs beyond its key, value, tags and dependencies: the `Entry` itself,
/// the `Arc` counts, quick_cache's slot, and the pointer of each tag and dependency.
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Entry>() + 16 + 48;
const PER_NAME_OVERHEAD_BYTES: usize = std::mem::size_of::<Key>() + 16;

/// Field widths keep `Entry` at 104 bytes, so an `Arc<Entry>` (16 bytes of counts + 104) fits
/// one 128-byte glibc chunk: at a million entries every byte counts (BENCHMARKS.md, target 5).
#[derive(Debug)]
pub struct Entry {
    value: Bytes,
    /// The 128-bit xxh3 of the value, as two halves (8-byte alignment, where a `u128` would
    /// round the entry up to 16); rendered into the quoted ETag on demand.
    etag_hash: [u64; 2],
    cached_at_ms: u64,
    expires_at_ms: u64,
    /// Until when this L1 copy is served as fresh: `expires_at_ms`, or earlier when
    /// `l1.max_ttl_secs` bounds how stale a copy of a shared (L2) entry may get.
    l1_fresh_until_ms: u64,
    /// When this L1 copy is dropped: `l1_fresh_until_ms`, or `expires_at_ms + grace` with grace.
    l1_keep_until_ms: u64,
    /// A remembered origin 404 (`origin.negative_ttl_secs`): no value, answers a miss.
    negative: bool,
    /// Brought in by prefetch and not read since: the first hit counts in `prefetch_hits`.
    prefetched: AtomicBool,
    /// Tags and dependencies, behind one pointer that most entries leave empty.
    names: Option<Box<Names>>,
    /// Unique per write, process-wide: index records carry it so that removing an old entry
    /// never removes the index record of the entry that replaced it.
    version: u64,
    /// Bytes this entry counts against `l1.max_bytes`: key + value + metadata (saturating at
    /// 4 GiB, far past any value limit).
    size: u32,
}

#[derive(Debug)]
struct Names {
    tags: Box<[Tag]>,
    depends_on: Box<[Key]>,
}

/// The quoted strong ETag of an entry, rendered from its hash.
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

const ETAG_LEN: usize = 34;

impl Entry {
    /// An entry written at `cached_at_ms` that expires at `expires_at_ms` (Unix ms). Its L1
    /// copy lives until `expires_at_ms` unless [`Entry::with_l1_deadline`] shortens it.
    pub fn new(
        key: &Key,
        value: Bytes,
        cached_at_ms: u64,
        expires_at_ms: u64,
        tags: Box<[Tag]>,
        depends_on: Box<[Key]>,
        version: u64,
    ) -> Entry {
        let size = u32::try_from(Self::size_of(key, value.len(), &tags, &depends_on)).unwrap_or(u32::MAX);
        let names = (!tags.is_empty() || !depends_on.is_empty()).then(|| Box::new(Names { tags, depends_on }));
        let hash = xxhash_rust::xxh3::xxh3_128(&value);
        Entry {
            etag_hash: [(hash >> 64) as u64, hash as u64],
            value,
            cached_at_ms,
            expires_at_ms,
            l1_fresh_until_ms: expires_at_ms,
            l1_keep_until_ms: expires_at_ms,
            negative: false,
            prefetched: AtomicBool::new(false),
            names,
            version,
            size,
        }
    }

    /// A remembered 404 for `key` until `expires_at_ms` (never served stale).
    pub fn negative(key: &Key, cached_at_ms: u64, expires_at_ms: u64, version: u64) -> Entry {
        Entry {
            negative: true,
            ..Entry::new(key, Bytes::new(), cached_at_ms, expires_at_ms, [].into(), [].into(), version)
        }
    }

    /// Bytes a new entry of this shape would count, to refuse one that cannot fit before
    /// anything is written.
    pub fn size_of(key: &Key, value_len: usize, tags: &[Tag], depends_on: &[Key]) -> usize {
        ENTRY_OVERHEAD_BYTES
            + key.len()
            + value_len
            + tags.iter().map(|tag| tag.as_str().len() + PER_NAME_OVERHEAD_BYTES).sum::<usize>()
            + depends_on.iter().map(|dep| dep.len() + PER_NAME_OVERHEAD_BYTES).sum::<usize>()
    }

    /// The serialized JSON value, exactly as written.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The quoted ETag as bytes (ASCII), for a header value without a UTF-8 check.
    pub fn etag(&self) -> Etag {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'"'; ETAG_LEN];
        for (half, digits) in self.etag_hash.iter().zip(out[1..ETAG_LEN - 1].chunks_exact_mut(16)) {
            for (idx, digit) in digits.iter_mut().enumerate() {
                *digit = HEX[((half >> (60 - 4 * idx)) & 0xf) as usize];
            }
        }
        Etag(out)
    }

    pub fn cached_at_ms(&self) -> u64 {
        self.cached_at_ms
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    pub fn tags(&self) -> &[Tag] {
        self.names.as_ref().map_or(&[], |names| &names.tags)
    }

    pub fn depends_on(&self) -> &[Key] {
        self.names.as_ref().map_or(&[], |names| &names.depends_on)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Sets how long the L1 copy lives: fresh until `l1_deadline_ms` at most (never past the
    /// entry's own expiry), kept `grace_ms` past the expiry to be served stale.
    pub fn with_l1_lifetime(mut self, l1_deadline_ms: u64, grace_ms: u64) -> Entry {
        self.l1_fresh_until_ms = self.expires_at_ms.min(l1_deadline_ms);
        self.l1_keep_until_ms = if grace_ms == 0 || self.negative {
            self.l1_fresh_until_ms
        } else {
            self.expires_at_ms.saturating_add(grace_ms)
        };
        self
    }

    /// Whether this L1 copy may be served as a hit.
    #[inline]
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.l1_fresh_until_ms
    }

    /// Whether the entry itself is past its expiry (its copies are stale, not just old).
    #[inline]
    pub fn is_past_expiry(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Whether this L1 copy must be dropped: past its deadline and any grace.
    #[inline]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.l1_keep_until_ms
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Marks an entry brought in by prefetch (before it is shared).
    pub fn mark_prefetched(self) -> Entry {
        self.prefetched.store(true, Ordering::Relaxed);
        self
    }

    /// True once, on the first read of a prefetched entry.
    #[inline]
    pub fn take_prefetched(&self) -> bool {
        self.prefetched.load(Ordering::Relaxed) && self.prefetched.swap(false, Ordering::Relaxed)
    }

    /// Whole seconds left, rounded down so that `max-age` never overstates freshness.
    pub fn ttl_remaining_secs(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &'static [u8]) -> Entry {
        let key = Key::parse("k", 512).unwrap();
        Entry::new(&key, Bytes::from_static(value), 1_000, 11_000, Box::new([]), Box::new([]), 1)
    }

    #[test]
    fn etag_follows_the_bytes() {
        assert_eq!(entry(b"{\"a\":1}").etag(), entry(b"{\"a\":1}").etag());
        assert_ne!(entry(b"{\"a\":1}").etag(), entry(b"{\"a\":2}").etag());
        let etag = entry(b"1").etag().as_str().to_string();
        assert_eq!(etag.len(), 34);
        assert!(etag.starts_with('"') && etag.ends_with('"'));
    }

    #[test]
    fn an_arc_entry_is_one_128_byte_allocation() {
        assert_eq!(std::mem::size_of::<Entry>(), 104);
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
        let capped = entry(b"1").with_l1_lifetime(5_000, 0);
        assert!(!capped.is_fresh(5_000));
        assert!(capped.is_expired(5_000));
        assert_eq!(capped.expires_at_ms(), 11_000, "clients still see the entry's own expiry");
        let uncapped = entry(b"1").with_l1_lifetime(u64::MAX, 0);
        assert!(uncapped.is_fresh(10_999));
        assert!(!uncapped.is_expired(10_999));
    }

    #[test]
    fn grace_keeps_an_expired_copy_but_never_as_fresh() {
        let graced = entry(b"1").with_l1_lifetime(u64::MAX, 5_000);
        assert!(!graced.is_fresh(11_000));
        assert!(graced.is_past_expiry(11_000));
        assert!(!graced.is_expired(15_999));
        assert!(graced.is_expired(16_000));
        let capped = entry(b"1").with_l1_lifetime(5_000, 5_000);
        assert!(!capped.is_fresh(5_000) && !capped.is_past_expiry(5_000) && !capped.is_expired(5_000));
        let key = Key::parse("k", 512).unwrap();
        let negative = Entry::negative(&key, 1_000, 2_000, 1).with_l1_lifetime(u64::MAX, 5_000);
        assert!(negative.is_negative() && negative.is_expired(2_000), "a remembered 404 is never served stale");
    }

    #[test]
    fn the_prefetch_mark_is_taken_once() {
        let entry = entry(b"1").mark_prefetched();
        assert!(entry.take_prefetched());
        assert!(!entry.take_prefetched());
    }

    #[test]
    fn size_counts_key_value_and_metadata() {
        let key = Key::parse("key", 512).unwrap();
        let tags: Box<[Tag]> = Box::new([Tag::parse("t1").unwrap()]);
        let entry = Entry::new(&key, Bytes::from(vec![b'1'; 100]), 0, 1_000, tags.clone(), Box::new([]), 1);
        assert_eq!(entry.size(), Entry::size_of(&key, 100, &tags, &[]));
        assert!(entry.size() > 100 + 3 + 2);
    }
}
