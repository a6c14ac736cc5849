//! The start-up load and the warm schedule: restore a snapshot or warm first (SPEC §7), then
//! warm every `warm.interval_secs` and whenever `POST /api/cache/warm` asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::{Cache, TierStatus};

/// How long a start-up warm waits for the L2 connection before it goes ahead without it.
const L2_WAIT: Duration = Duration::from_secs(2);

/// What the start-up load is, decided by `App` before the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartLoad {
    /// A snapshot is there: restore it in the background (ready at once), then warm if a source
    /// is set.
    Restore,
    /// No snapshot, a warm source: warm (claimed by `App`), then be ready, then snapshot.
    Warm,
    /// Nothing to load; ready at once.
    Nothing,
}

/// The warmer of one cache: its start-up load, then its warm schedule.
pub(crate) struct WarmerTask {
    pub cache: Arc<Cache>,
    /// Set once the start-up load is done (`/ready`).
    pub ready: Arc<AtomicBool>,
}

impl WarmerTask {
    pub(crate) async fn run(self, start: StartLoad, shutdown: CancellationToken) {
        let (cache, warmer) = (&self.cache, self.cache.warmer());
        let loaded = tokio::select! {
            () = shutdown.cancelled() => false,
            () = self.start_load(start) => true,
        };
        if !loaded {
            warmer.abandon(cache.clock().now_ms());
            return;
        }
        loop {
            let periodic = async {
                match warmer.interval() {
                    Some(interval) => tokio::time::sleep(interval).await,
                    None => std::future::pending().await,
                }
            };
            let claimed = tokio::select! {
                () = shutdown.cancelled() => break,
                () = warmer.requested() => true,
                () = periodic => warmer.try_begin(cache.clock().now_ms()),
            };
            if claimed {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        warmer.abandon(cache.clock().now_ms());
                        break;
                    }
                    _ = warmer.run(cache) => {}
                }
            }
        }
    }

    /// Warmed entries are meant for L2 too, and at start its connection is still being made:
    /// give it a moment (bounded, counted against nothing else) before warming without it.
    async fn wait_for_l2(&self) {
        if !self.cache.has_l2() {
            return;
        }
        let deadline = tokio::time::Instant::now() + L2_WAIT;
        while self.cache.l2_status() != TierStatus::Up && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start_load(&self, start: StartLoad) {
        let (cache, warmer) = (&self.cache, self.cache.warmer());
        match start {
            StartLoad::Restore => {
                if let Some(persistence) = cache.persistence() {
                    tracing::info!(path = %persistence.path().display(), "start-up: restoring the snapshot in the background");
                    persistence.restore(cache).await;
                }
                if warmer.is_configured() && warmer.try_begin(cache.clock().now_ms()) {
                    tracing::info!("start-up: warming after the restore");
                    self.wait_for_l2().await;
                    warmer.run(cache).await;
                }
            }
            StartLoad::Warm => {
                tracing::info!("start-up: warming before ready");
                self.wait_for_l2().await;
                warmer.run(cache).await;
                self.ready.store(true, Ordering::Release);
                tracing::info!("ready");
                if let Some(persistence) = cache.persistence() {
                    let _ = persistence.snapshot(cache).await;
                }
            }
            StartLoad::Nothing => {}
        }
    }
}
