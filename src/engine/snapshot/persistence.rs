//! `persistence.path`: one snapshot at a time, written atomically on a blocking thread and
//! restored from there, with logging and metrics. The atomic write: records stream into
//! `<path>.tmp` in the same directory, which is fsynced and renamed over `<path>`, and the
//! directory is fsynced, so a crash at any point leaves the previous snapshot whole.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::format::{tmp_path, Writer};
use super::restore::SUBSCRIBE_WAIT;
use super::{L2Check, RestoreStats, SnapshotError, SnapshotInfo};
use crate::engine::Cache;

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
        let (entries, bytes) = match self.write_snapshot_to(&tmp) {
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

    /// Streams L1 (one shard read lock at a time) into `tmp`; remembered 404s and expired
    /// copies are not written. Memory does not grow with the cache.
    fn write_snapshot_to(&self, tmp: &Path) -> Result<(u64, u64), SnapshotError> {
        let now_ms = self.clock().now_ms();
        let mut writer = Writer::create(tmp, now_ms)?;
        let mut failure = None;
        self.l1.for_each(|entry| {
            if failure.is_none() && !entry.is_negative() && !entry.is_expired(now_ms) {
                failure = writer.record(entry).err();
            }
        });
        match failure {
            Some(err) => Err(err.into()),
            None => writer.finish(),
        }
    }
}
