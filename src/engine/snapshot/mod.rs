//! Snapshots of L1 on disk (SPEC §7), one concern per file:
//! - `format.rs`: the file format alone — writing records through a hashing writer, verifying
//!   a whole file, reading records with every length bounded. Knows entries, not caches.
//! - `restore.rs`: the restore policy — what of a verified file goes into L1 (expiry, limits,
//!   client changes since start, and with L2 only what L2 still holds).
//! - `persistence.rs`: `persistence.path`, one snapshot at a time, the atomic write (temp file,
//!   fsync, rename, directory fsync), blocking threads, logging and metrics.
//!
//! Format, version 1 (all integers little-endian):
//! ```text
//! header  "TCSNAP" | version u16 | created_at_ms u64
//! record  0x01 | key_len u32 | key | cached_at_ms u64 | expires_at_ms u64
//!              | n_tags u32 | (len u32 | tag)* | n_deps u32 | (len u32 | dep)* | value_len u32 | value
//! footer  0x00 | records u64 | xxh3-64 of every byte before it
//! ```
//! Writing streams records from L1 (one shard read lock at a time) through a buffer into
//! `<path>.tmp` in the same directory, fsyncs it, renames it over `<path>` and fsyncs the
//! directory: a crash at any point leaves the previous snapshot whole. Memory use does not grow
//! with the cache.
//!
//! Restoring reads the file twice: first the checksum over the whole file (nothing is applied
//! from a truncated, corrupt or foreign file), then the records, each inserted into L1 unless
//! expired, or unless a client wrote, removed or cleared the key, or invalidated a pattern, tag
//! or dependency covering it, since the restore began (`L1::insert_restored`; the record
//! starts before the server answers). Restored entries go to L1 only. Remembered 404s are not
//! written.
//!
//! With L2, the snapshot may be older than what other instances wrote while this one was down,
//! and their messages about it were missed. So each record is checked against L2 before it is
//! restored, after the subscriber has subscribed (from then on every change reaches this
//! instance, and one that lands between the check and the insert is recorded by the restore's
//! tracker and wins): only an entry L2 still holds, same write (`cached_at`) and same bytes, is
//! restored. An entry L2 lost, or holds in another version, is `outdated`. When L2 cannot be
//! asked (not subscribed within `restore::SUBSCRIBE_WAIT`, or a check fails), the rest of the file is
//! `unchecked` and not restored: a warm L1 is not worth serving a value that may be overwritten.
//!
//! Blocking file I/O: callers run these on a blocking thread.

mod format;
mod persistence;
mod restore;

use std::path::PathBuf;

pub use self::format::VERSION;
pub use self::persistence::Persistence;
pub use self::restore::{L2Check, RestoreStats};

/// What a written snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub entries: u64,
    pub bytes: u64,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot file")]
    Missing,
    #[error("snapshot file is truncated")]
    Truncated,
    #[error("snapshot file is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("snapshot format version {0} is not supported (this build reads version {VERSION})")]
    Version(u16),
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use std::sync::Arc;

    use bytes::Bytes;

    use super::format::{read_record, tmp_path};
    use super::*;
    use crate::engine::test_support;
    use crate::engine::WriteRequest;
    use crate::engine::{Cache, Key};

    fn engine() -> Arc<Cache> {
        Arc::new(test_support::cache(10_000, 1 << 26))
    }

    async fn put(engine: &Cache, key: &str, value: &str, ttl: u64, tags: &[&str], deps: &[&str]) {
        let write = engine
            .validate(WriteRequest {
                key: Key::parse(key, 512).unwrap(),
                value: Bytes::from(value.to_string()),
                ttl_secs: Some(ttl),
                tags: tags.iter().map(|tag| tag.to_string()).collect(),
                depends_on: deps.iter().map(|dep| dep.to_string()).collect(),
            })
            .unwrap();
        engine.set(write).await.unwrap();
    }

    fn contents(engine: &Cache) -> HashMap<String, (Bytes, u64, Vec<String>, Vec<String>)> {
        let mut out = HashMap::new();
        engine.l1.for_each(|entry| {
            out.insert(
                entry.key().to_string(),
                (
                    Bytes::copy_from_slice(entry.value()),
                    entry.expires_at_ms(),
                    entry.tags().iter().map(|tag| tag.as_str().to_string()).collect(),
                    entry.depends_on().iter().map(|dep| dep.as_str().to_string()).collect(),
                ),
            );
        });
        out
    }

    #[tokio::test]
    async fn a_snapshot_round_trips_values_expiry_tags_and_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snapshot");
        let source = engine();
        put(&source, "b", "null", 120, &[], &[]).await;
        put(&source, "a", r#"{"x":1}"#, 60, &["t1", "t2"], &["b"]).await;
        put(&source, "c", r#""three""#, 3600, &["t1"], &[]).await;
        let info = source.write_snapshot(&path).unwrap();
        assert_eq!(info.entries, 3);
        assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
        assert!(!tmp_path(&path).exists());

        let target = engine();
        let stats = target.restore_snapshot(&path, |_| L2Check::Skip).unwrap();
        assert_eq!(stats, RestoreStats { restored: 3, ..RestoreStats::default() });
        assert_eq!(contents(&target), contents(&source));
        assert_eq!(target.l1.tagged("t1").len(), 2, "indexes are rebuilt");
        assert_eq!(target.l1.dependents("b").len(), 1);
    }

    #[tokio::test]
    async fn a_restore_never_overwrites_what_a_client_changed_since_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let source = engine();
        put(&source, "kept", "1", 60, &[], &[]).await;
        put(&source, "rewritten", "1", 60, &[], &[]).await;
        put(&source, "deleted", "1", 60, &[], &[]).await;

        put(&source, "tagged", "1", 60, &["gone"], &[]).await;
        put(&source, "patterned", "1", 60, &[], &[]).await;
        put(&source, "dependent", "1", 60, &[], &["kept"]).await;
        put(&source, "grandchild", "1", 60, &[], &["dependent"]).await;
        source.write_snapshot(&path).unwrap();

        let target = engine();
        target.begin_restore();
        put(&target, "rewritten", "2", 60, &[], &[]).await;
        let invalidation = crate::engine::Invalidation {
            keys: vec![Key::parse("deleted", 512).unwrap(), Key::parse("kept", 512).unwrap()],
            pattern: Some("pattern*".into()),
            tags: vec!["gone".into()],
        };
        target.invalidate(&invalidation).await.unwrap();
        let stats = target.restore_snapshot(&path, |_| L2Check::Skip).unwrap();
        // A dependent met before its invalidated dependency is restored, then cascaded away.
        assert_eq!(stats.restored + stats.superseded, 7);
        assert_eq!(target.l1.len(), 1, "only the rewrite is left");
        assert_eq!(target.l1.peek("rewritten").unwrap().value(), b"2");
        for key in ["deleted", "kept", "tagged", "patterned", "dependent", "grandchild"] {
            assert!(target.l1.peek(key).is_none(), "{key}: an invalidation since start is not undone");
        }
    }

    #[tokio::test]
    async fn damaged_or_foreign_files_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let source = engine();
        for idx in 0..50 {
            put(&source, &format!("k{idx}"), "[1,2,3]", 60, &["t"], &[]).await;
        }
        source.write_snapshot(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let target = engine();

        assert!(matches!(
            target.restore_snapshot(&dir.path().join("none"), |_| L2Check::Skip),
            Err(SnapshotError::Missing)
        ));
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(target.restore_snapshot(&path, |_| L2Check::Skip).is_err(), "truncated");
        for position in [3, 20, good.len() / 2, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[position] ^= 0x01;
            std::fs::write(&path, &flipped).unwrap();
            assert!(target.restore_snapshot(&path, |_| L2Check::Skip).is_err(), "flipped byte at {position}");
        }
        let mut future = good.clone();
        future[6..8].copy_from_slice(&2u16.to_le_bytes());
        std::fs::write(&path, &future).unwrap();
        assert!(matches!(target.restore_snapshot(&path, |_| L2Check::Skip), Err(SnapshotError::Version(2))));
        assert_eq!(target.l1.len(), 0, "nothing applied from a bad file");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(target.restore_snapshot(&path, |_| L2Check::Skip).unwrap().restored, 50);
    }

    #[tokio::test]
    async fn expired_entries_are_skipped_on_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let source = engine();
        put(&source, "short", "1", 1, &[], &[]).await;
        put(&source, "long", "1", 60, &[], &[]).await;
        source.write_snapshot(&path).unwrap();
        let target = engine();
        target.clock().advance_ms(2_000);
        let stats = target.restore_snapshot(&path, |_| L2Check::Skip).unwrap();
        assert_eq!((stats.restored, stats.expired), (1, 1));
    }

    #[tokio::test]
    async fn nothing_is_restored_when_l2_cannot_be_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let source = engine();
        for idx in 0..300 {
            put(&source, &format!("k{idx}"), "1", 60, &[], &[]).await;
        }
        source.write_snapshot(&path).unwrap();
        let target = engine();
        let stats = target.restore_snapshot(&path, |_| L2Check::Unreachable).unwrap();
        assert_eq!((stats.restored, stats.unchecked), (0, 300));
        assert_eq!(target.l1.len(), 0);
    }

    /// A good snapshot of 600 entries (tags, dependencies, values of several sizes), made once.
    fn good_snapshot() -> &'static [u8] {
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        GOOD.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let source = engine();
            runtime.block_on(async {
                // More records than one L2 check batch, so damage can come after records applied.
                for idx in 0..600 {
                    let value = format!("\"{}\"", "v".repeat(idx % 40 * 7));
                    put(&source, &format!("k{idx}"), &value, 600, &["t1", "t2"][..idx % 3], &["k1"][..idx % 2]).await;
                }
            });
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("good");
            source.write_snapshot(&path).unwrap();
            std::fs::read(&path).unwrap()
        })
    }

    /// Restores `bytes` as a file into a fresh engine: never a panic; a refused file leaves L1
    /// empty, and what is restored are entries of the good snapshot's keys.
    fn restore_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, bytes).unwrap();
        let target = engine();
        match target.restore_snapshot(&path, |_| L2Check::Skip) {
            Err(_) => prop_assert_eq!(target.l1.len(), 0, "a refused file applies nothing"),
            // A damaged key can repeat an earlier one: the later record replaces it.
            Ok(stats) => prop_assert!(target.l1.len() as u64 <= stats.restored),
        }
        Ok(())
    }

    /// Recomputes the footer (count and checksum) over damaged records, so the damage reaches
    /// the record parser instead of stopping at the checksum.
    fn with_valid_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes.len() < 8 {
            return bytes;
        }
        let body = bytes.len() - 8;
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(512))]

        #[test]
        fn fuzz_snapshot_record_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_record(&mut bytes.as_slice(), &mut Vec::new());
        }

        #[test]
        fn fuzz_snapshot_arbitrary_files(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut prefixed = b"TCSNAP\x01\x00".to_vec();
            prefixed.extend_from_slice(&bytes);
            restore_bytes(&bytes)?;
            restore_bytes(&prefixed)?;
            restore_bytes(&with_valid_checksum(prefixed))?;
        }

        #[test]
        fn fuzz_snapshot_damaged_files(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            fix_checksum in any::<bool>(),
        ) {
            let mut bytes = good_snapshot().to_vec();
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= byte.max(1);
            }
            let damaged = if fix_checksum { with_valid_checksum(bytes.clone()) } else { bytes.clone() };
            restore_bytes(&damaged)?;
            restore_bytes(&bytes[..cut.index(bytes.len())])?;
        }
    }
}
