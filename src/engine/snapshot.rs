//! Snapshots of L1 on disk: the file format, writing (streamed, atomic) and restoring.
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
//! asked (not subscribed within [`SUBSCRIBE_WAIT`], or a check fails), the rest of the file is
//! `unchecked` and not restored: a warm L1 is not worth serving a value that may be overwritten.
//!
//! Blocking file I/O: callers run these on a blocking thread.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3Default;

use super::l1::Restored;
use super::{Cache, Entry, EntryParts, Key, Tag};
use crate::metrics::EvictionReason;

const MAGIC: &[u8; 6] = b"TCSNAP";
const VERSION: u16 = 1;
const HEADER_LEN: u64 = 6 + 2 + 8;
const FOOTER_LEN: u64 = 1 + 8 + 8;
const RECORD: u8 = 1;
const END: u8 = 0;
/// Bounds on lengths read from a file, so a corrupt length cannot ask for a huge allocation.
const MAX_NAME_LEN: u32 = 1 << 20;
const MAX_VALUE_LEN: u32 = 1 << 30;
const MAX_NAMES: u32 = 1 << 16;
/// How long a restore waits for the invalidation subscription before it gives up checking.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);
/// Records checked against L2 per MGET.
const CHECK_BATCH: usize = 256;

/// What a written snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub entries: u64,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreStats {
    pub restored: u64,
    /// Past their expiry (and grace) by now.
    pub expired: u64,
    /// Written, removed or cleared by a client since start, or resident already.
    pub superseded: u64,
    /// Records this build cannot take (a key or tag over today's limits).
    pub rejected: u64,
    /// L2 no longer holds this write of the key: changed or removed while this instance was down.
    pub outdated: u64,
    /// Not restored because L2 could not be asked.
    pub unchecked: u64,
}

/// How a restore checks its records against L2 (see the module docs).
pub enum L2Check {
    /// No L2: the snapshot is the only copy.
    Skip,
    /// Ask L2, from the restore's blocking thread through this runtime.
    Ask(tokio::runtime::Handle),
    /// L2 is configured but cannot be asked: nothing is restored.
    Unreachable,
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

/// `persistence.path` and the lock that keeps snapshots of it one at a time.
pub struct Persistence {
    path: PathBuf,
    writing: tokio::sync::Mutex<()>,
}

impl Persistence {
    pub fn new(path: PathBuf) -> Self {
        Self { path, writing: tokio::sync::Mutex::new(()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a snapshot on a blocking thread; a second caller waits for the first to finish.
    ///
    /// # Errors
    /// When the file cannot be written; the previous snapshot is then untouched.
    pub async fn snapshot(&self, engine: &Arc<Cache>) -> Result<SnapshotInfo, SnapshotError> {
        let _one_at_a_time = self.writing.lock().await;
        let (engine, path) = (engine.clone(), self.path.clone());
        let result = tokio::task::spawn_blocking(move || engine.write_snapshot(&path))
            .await
            .unwrap_or_else(|err| Err(SnapshotError::Io(std::io::Error::other(err.to_string()))));
        match &result {
            Ok(info) => tracing::info!(
                entries = info.entries,
                bytes = info.bytes,
                duration_ms = info.duration_ms,
                "snapshot written"
            ),
            Err(err) => tracing::warn!(%err, "snapshot failed"),
        }
        result
    }

    /// Restores the snapshot on a blocking thread, logging the outcome; a bad file counts in
    /// `tiercache_snapshot_load_errors_total` and is otherwise treated as absent.
    pub async fn restore(&self, engine: &Arc<Cache>) -> Option<RestoreStats> {
        let (worker, path) = (engine.clone(), self.path.clone());
        let started = Instant::now();
        let runtime = tokio::runtime::Handle::current();
        // Called once the file is known to be good: a bad file is reported without waiting for L2.
        let check = move |engine: &Cache| {
            if !engine.has_l2() {
                L2Check::Skip
            } else if runtime.block_on(engine.instance().bus().wait_subscribed(SUBSCRIBE_WAIT)) {
                L2Check::Ask(runtime)
            } else {
                tracing::warn!(
                    "l2 unreachable: the snapshot cannot be checked against newer writes and is not restored"
                );
                L2Check::Unreachable
            }
        };
        let result = tokio::task::spawn_blocking(move || worker.restore_snapshot(&path, check))
            .await
            .unwrap_or_else(|err| Err(SnapshotError::Io(std::io::Error::other(err.to_string()))));
        match result {
            Ok(stats) => {
                tracing::info!(
                    restored = stats.restored,
                    expired = stats.expired,
                    superseded = stats.superseded,
                    rejected = stats.rejected,
                    outdated = stats.outdated,
                    unchecked = stats.unchecked,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "snapshot restored"
                );
                Some(stats)
            }
            Err(SnapshotError::Missing) => None,
            Err(err) => {
                engine.metrics().counters.snapshot_load_errors.inc();
                tracing::warn!(%err, path = %self.path.display(), "snapshot ignored");
                None
            }
        }
    }

    /// Whether a snapshot file is there: start-up then restores in the background and is ready
    /// at once. Whether it is valid is the restore's business (a bad file is warned about,
    /// counted and ignored there), so this stays a cheap check.
    pub fn has_snapshot(&self) -> bool {
        self.path.is_file()
    }
}

impl Cache {
    /// Writes every live L1 entry to `path` atomically (see the module docs).
    ///
    /// # Errors
    /// When the file cannot be written; the previous snapshot is then untouched.
    pub fn write_snapshot(&self, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let started = Instant::now();
        let tmp = tmp_path(path);
        let result = self.write_snapshot_to(&tmp);
        let (entries, bytes) = match result {
            Ok(counts) => counts,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        self.metrics().snapshot_duration.observe(started.elapsed().as_secs_f64());
        self.metrics().snapshot_last_success.set(self.clock().now_ms() as f64 / 1000.0);
        Ok(SnapshotInfo { path: path.to_path_buf(), entries, bytes, duration_ms })
    }

    fn write_snapshot_to(&self, tmp: &Path) -> Result<(u64, u64), SnapshotError> {
        let file = File::create(tmp)?;
        let mut out =
            HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Xxh3Default::new(), written: 0 };
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&self.clock().now_ms().to_le_bytes())?;
        let now_ms = self.clock().now_ms();
        let mut count = 0u64;
        let mut failure = None;
        self.l1.for_each(|entry| {
            if failure.is_some() || entry.is_negative() || entry.is_expired(now_ms) {
                return;
            }
            match write_record(&mut out, entry) {
                Ok(()) => count += 1,
                Err(err) => failure = Some(err),
            }
        });
        if let Some(err) = failure {
            return Err(err.into());
        }
        out.write_all(&[END])?;
        out.write_all(&count.to_le_bytes())?;
        let checksum = out.hasher.digest();
        let mut inner = out.inner;
        inner.write_all(&checksum.to_le_bytes())?;
        let file = inner.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        Ok((count, out.written + 8))
    }

    /// Restores the snapshot at `path` into L1 (see the module docs).
    ///
    /// # Errors
    /// A missing, truncated, corrupt or foreign file; nothing was applied then.
    /// `check` says, once the file has been verified, how records are checked against L2.
    pub fn restore_snapshot(
        &self,
        path: &Path,
        check: impl FnOnce(&Cache) -> L2Check,
    ) -> Result<RestoreStats, SnapshotError> {
        self.begin_restore();
        // What was inserted, so a file that breaks off after its checksum passed (a record that
        // does not parse) is undone whole: a bad file applies nothing.
        let mut inserted: Vec<(Key, u64)> = Vec::new();
        let result = verify(path).and_then(|records| {
            let check = check(self);
            // Growing the map one rehash at a time is a third of a large restore's cost.
            self.l1.reserve(records);
            self.apply_snapshot(path, &check, &mut inserted)
        });
        if result.is_err() {
            for (key, version) in inserted {
                self.l1.remove_version(key.as_str(), version, EvictionReason::Manual);
            }
        }
        self.l1.end_restore();
        result
    }

    /// Starts recording what clients change, for a restore about to run: `App` calls it before
    /// the server answers, so that no write, delete or invalidation can precede the record.
    pub fn begin_restore(&self) {
        self.l1.begin_restore();
    }

    fn apply_snapshot(
        &self,
        path: &Path,
        check: &L2Check,
        inserted: &mut Vec<(Key, u64)>,
    ) -> Result<RestoreStats, SnapshotError> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        input.seek(SeekFrom::Start(HEADER_LEN))?;
        let mut stats = RestoreStats::default();
        let now_ms = self.clock().now_ms();
        let mut scratch = Vec::with_capacity(256); // The key of the record being read.
        let mut batch: Vec<(Key, Entry)> = Vec::with_capacity(CHECK_BATCH);
        let mut l2_answers = !matches!(check, L2Check::Unreachable);
        loop {
            match read_u8(&mut input)? {
                END => {
                    self.restore_batch(std::mem::take(&mut batch), check, &mut l2_answers, &mut stats, inserted);
                    return Ok(stats);
                }
                RECORD => {}
                _ => return Err(SnapshotError::Corrupt("unknown record type")),
            }
            let record = read_record(&mut input, &mut scratch)?;
            let key =
                std::str::from_utf8(&scratch).ok().and_then(|raw| Key::parse(raw, self.limits.max_key_bytes).ok());
            let tags: Result<Box<[Tag]>, _> = record.tags.iter().map(|tag| Tag::parse(tag)).collect();
            let deps: Result<Box<[Key]>, _> =
                record.deps.iter().map(|dep| Key::parse(dep, self.limits.max_key_bytes)).collect();
            let (Some(key), Ok(tags), Ok(deps)) = (key, tags, deps) else {
                stats.rejected += 1;
                continue;
            };
            let parts = EntryParts {
                key: key.clone(),
                value: record.value,
                cached_at_ms: record.cached_at_ms,
                expires_at_ms: record.expires_at_ms,
                tags,
                depends_on: deps,
            };
            let entry = self.new_entry(parts, now_ms).build();
            if entry.is_expired(now_ms) {
                stats.expired += 1;
            } else if !self.l1.fits(entry.size()) {
                stats.rejected += 1;
            } else {
                batch.push((key, entry));
                if batch.len() == CHECK_BATCH {
                    self.restore_batch(std::mem::take(&mut batch), check, &mut l2_answers, &mut stats, inserted);
                }
            }
        }
    }

    /// Inserts the entries of `batch` that L2 confirms (all of them without L2). After one
    /// failed check, `l2_answers` is false and the rest is counted unchecked.
    fn restore_batch(
        &self,
        batch: Vec<(Key, Entry)>,
        check: &L2Check,
        l2_answers: &mut bool,
        stats: &mut RestoreStats,
        inserted: &mut Vec<(Key, u64)>,
    ) {
        if batch.is_empty() {
            return;
        }
        let current: Vec<bool> = match (check, self.instance.l2()) {
            (L2Check::Ask(runtime), Some(l2)) if *l2_answers => {
                let keys: Vec<&str> = batch.iter().map(|(key, _)| key.as_str()).collect();
                match runtime.block_on(l2.get_many(&keys)) {
                    Ok(found) => batch
                        .iter()
                        .zip(found)
                        .map(|((_, entry), held)| {
                            held.is_some_and(|held| {
                                held.cached_at_ms == entry.cached_at_ms() && held.value[..] == *entry.value()
                            })
                        })
                        .collect(),
                    Err(err) => {
                        tracing::warn!(%err, "l2 failed during the snapshot check: the rest is not restored");
                        *l2_answers = false;
                        stats.unchecked += batch.len() as u64;
                        return;
                    }
                }
            }
            (L2Check::Skip, _) => vec![true; batch.len()],
            _ => {
                stats.unchecked += batch.len() as u64;
                return;
            }
        };
        for ((key, entry), current) in batch.into_iter().zip(current) {
            if !current {
                stats.outdated += 1;
                continue;
            }
            let version = entry.version();
            match self.l1.insert_restored(entry) {
                Restored::Inserted => {
                    stats.restored += 1;
                    inserted.push((key, version));
                }
                Restored::Superseded => stats.superseded += 1,
                Restored::Invalidated => {
                    // Dependents restored before it must go the way the cascade would have sent them.
                    self.remove_from_l1_with_cascade(vec![key]);
                    stats.superseded += 1;
                }
            }
        }
    }
}

/// Checks the header, the version and the checksum of the whole file without applying it;
/// returns the record count of its footer.
pub(crate) fn verify(path: &Path) -> Result<u64, SnapshotError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(err) => return Err(err.into()),
    };
    let len = file.metadata()?.len();
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(SnapshotError::Truncated);
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header)?;
    if &header[..6] != MAGIC {
        return Err(SnapshotError::Corrupt("not a tiercache snapshot"));
    }
    let version = u16::from_le_bytes([header[6], header[7]]);
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let mut hasher = Xxh3Default::new();
    hasher.update(&header);
    let mut remaining = len - HEADER_LEN - 8;
    let mut buffer = vec![0u8; 1 << 20];
    let mut last = [0u8; 8];
    while remaining > 0 {
        let chunk = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..chunk])?;
        hasher.update(&buffer[..chunk]);
        if chunk >= 8 {
            last.copy_from_slice(&buffer[chunk - 8..chunk]);
        } else {
            last.rotate_left(chunk);
            last[8 - chunk..].copy_from_slice(&buffer[..chunk]);
        }
        remaining -= chunk as u64;
    }
    let mut stored = [0u8; 8];
    file.read_exact(&mut stored)?;
    if u64::from_le_bytes(stored) != hasher.digest() {
        return Err(SnapshotError::Corrupt("checksum mismatch"));
    }
    Ok(u64::from_le_bytes(last)) // The footer's record count sits just before the checksum.
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Xxh3Default,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_record(out: &mut impl Write, entry: &Entry) -> std::io::Result<()> {
    out.write_all(&[RECORD])?;
    write_bytes(out, entry.key_bytes())?;
    out.write_all(&entry.cached_at_ms().to_le_bytes())?;
    out.write_all(&entry.expires_at_ms().to_le_bytes())?;
    out.write_all(&(entry.tags().len() as u32).to_le_bytes())?;
    for tag in entry.tags() {
        write_bytes(out, tag.as_str().as_bytes())?;
    }
    out.write_all(&(entry.depends_on().len() as u32).to_le_bytes())?;
    for dep in entry.depends_on() {
        write_bytes(out, dep.as_str().as_bytes())?;
    }
    write_bytes(out, entry.value())
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// One record as read, before the engine checks it (its key is left in the caller's buffer).
#[derive(Debug, PartialEq)]
pub(crate) struct Record {
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub tags: Vec<String>,
    pub deps: Vec<String>,
    pub value: Bytes,
}

/// Reads one record (after its type byte), its key into `key`; every length is bounded.
pub(crate) fn read_record(input: &mut impl Read, key: &mut Vec<u8>) -> Result<Record, SnapshotError> {
    read_bytes_into(input, MAX_NAME_LEN, key)?;
    let cached_at_ms = read_u64(input)?;
    let expires_at_ms = read_u64(input)?;
    let tags = read_strings(input)?;
    let deps = read_strings(input)?;
    let value = Bytes::from(read_bytes(input, MAX_VALUE_LEN)?);
    if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_err() {
        return Err(SnapshotError::Corrupt("a value is not JSON"));
    }
    Ok(Record { cached_at_ms, expires_at_ms, tags, deps, value })
}

fn read_strings(input: &mut impl Read) -> Result<Vec<String>, SnapshotError> {
    let count = read_u32(input)?;
    if count > MAX_NAMES {
        return Err(SnapshotError::Corrupt("too many tags or dependencies"));
    }
    (0..count).map(|_| read_string(input)).collect()
}

fn read_string(input: &mut impl Read) -> Result<String, SnapshotError> {
    String::from_utf8(read_bytes(input, MAX_NAME_LEN)?).map_err(|_| SnapshotError::Corrupt("a name is not UTF-8"))
}

fn read_bytes(input: &mut impl Read, max: u32) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    read_bytes_into(input, max, &mut bytes)?;
    Ok(bytes)
}

/// Reads a length-prefixed byte string into `bytes` (cleared first).
fn read_bytes_into(input: &mut impl Read, max: u32, bytes: &mut Vec<u8>) -> Result<(), SnapshotError> {
    let len = read_u32(input)?;
    if len > max {
        return Err(SnapshotError::Corrupt("a length is out of range"));
    }
    bytes.clear();
    // Sized up front for ordinary lengths, grown as bytes arrive beyond that, so a corrupt
    // length cannot allocate more than the input holds.
    bytes.reserve_exact((len as usize).min(64 * 1024));
    input.take(u64::from(len)).read_to_end(bytes)?;
    if bytes.len() != len as usize {
        return Err(SnapshotError::Truncated);
    }
    Ok(())
}

fn read_u8(input: &mut impl Read) -> Result<u8, SnapshotError> {
    let mut buf = [0u8; 1];
    read_exact(input, &mut buf)?;
    Ok(buf[0])
}

fn read_u32(input: &mut impl Read) -> Result<u32, SnapshotError> {
    let mut buf = [0u8; 4];
    read_exact(input, &mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

fn read_u64(input: &mut impl Read) -> Result<u64, SnapshotError> {
    let mut buf = [0u8; 8];
    read_exact(input, &mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|err| match err.kind() {
        std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
        _ => SnapshotError::Io(err),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::test_support;
    use crate::engine::WriteRequest;

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
