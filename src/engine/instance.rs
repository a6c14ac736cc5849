//! What every cache of an instance shares: the L2 client, the invalidation bus, the clock, the
//! metrics registry, the write policy, the source of entry versions, and the tracker of the
//! short background tasks caches start (origin fetches, refreshes). One per `App`; each cache
//! holds it behind an `Arc` and owns nothing of it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::bus::Bus;
use super::l2::{L2Budget, L2Error, L2Status, L2};
use super::{Clock, TierStatus};
use crate::config::{InstanceConfig, L2Config, WritePolicy};
use crate::metrics::Metrics;

pub struct Instance {
    /// `None`: L1 only.
    l2: Option<L2>,
    bus: Bus,
    clock: Clock,
    metrics: Arc<Metrics>,
    write_policy: WritePolicy,
    /// Source of `Entry::version`: unique per entry for the life of the process, across caches.
    versions: AtomicU64,
    /// Origin fetches and refreshes: short-lived (bounded by `origin.timeout_ms`), waited for
    /// at shutdown so a fetched value is not cut off between L2 and L1.
    background: TaskTracker,
}

impl Instance {
    pub fn new(config: &InstanceConfig, instance_id: String, metrics: Arc<Metrics>, clock: Clock) -> Instance {
        Instance {
            l2: config.l2.clone().map(|l2_config| L2::new(l2_config, metrics.clone())),
            bus: Bus::new(&config.bus, instance_id, metrics.clone()),
            clock,
            metrics,
            write_policy: config.write_policy,
            versions: AtomicU64::new(1),
            background: TaskTracker::new(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    pub(crate) fn l2(&self) -> Option<&L2> {
        self.l2.as_ref()
    }

    /// A fresh budget for one request's L2 calls.
    pub(crate) fn budget(&self) -> L2Budget<'_> {
        L2Budget::new(self.l2.as_ref())
    }

    pub fn has_l2(&self) -> bool {
        self.l2.is_some()
    }

    pub fn write_policy(&self) -> WritePolicy {
        self.write_policy
    }

    pub fn l2_config(&self) -> Option<&L2Config> {
        self.l2.as_ref().map(L2::config)
    }

    pub(crate) fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `task` on the background tracker (see its field).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.spawn(task);
    }

    /// Waits, bounded, for the background tasks still running (shutdown, after requests drained).
    pub async fn finish_background(&self, limit: Duration) -> bool {
        self.background.close();
        tokio::time::timeout(limit, self.background.wait()).await.is_ok()
    }

    /// Opens the L2 data connection (the monitor task retries it).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect_l2(&self) -> Result<(), L2Error> {
        match &self.l2 {
            Some(l2) => l2.connect().await,
            None => Ok(()),
        }
    }

    /// One health round trip to L2; failures feed the breaker.
    pub async fn ping_l2(&self) {
        if let Some(l2) = self.l2.as_ref().filter(|l2| l2.is_connected()) {
            let _ = l2.ping().await;
        }
    }

    /// Whether L2 had an outage since the last call: invalidations may have been missed.
    pub fn take_l2_outage_seen(&self) -> bool {
        self.l2.as_ref().is_some_and(L2::take_outage_seen)
    }

    pub fn l2_status(&self) -> TierStatus {
        match &self.l2 {
            None => TierStatus::Disabled,
            Some(l2) if l2.status() == L2Status::Up => TierStatus::Up,
            Some(_) => TierStatus::Down,
        }
    }
}
