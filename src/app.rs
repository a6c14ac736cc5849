//! The manager: owns the engine, the HTTP server and every background task, starts them in
//! stages and stops them in a fixed order.
//!
//! Shutdown order, and why: (1) stop accepting and let in-flight requests finish within
//! `server.shutdown_grace_ms`, so no answered write is lost; (2) cancel the token so every task
//! leaves its loop; (3) wait for the tasks, bounded, so a stuck task cannot hold the exit;
//! (4) wait, bounded, for origin fetches still in flight (each is bounded by
//! `origin.timeout_ms`), so a fetched value is not cut off between L2 and L1.
//! (5) write the final snapshot when persistence is on, once nothing can change L1 any more.
//!
//! Start-up stages, each logged once: open L1 → start the L2 connection in the background
//! (the monitor task) → decide the load (snapshot present: restore in the background and be
//! ready at once; else a warm source: warm, ready when it ends or `warm.timeout_secs` passes,
//! then snapshot; else ready at once) → listen.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Parts;
use crate::engine::{Cache, Clock, Instance};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::tasks::warmer::StartLoad;
use crate::tasks::{self, Supervisor, TaskHealth};

/// How long shutdown waits for background tasks after cancelling them.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct App {
    local_addr: SocketAddr,
    instance_id: String,
    /// Cancelled first: the server stops accepting and drains.
    stop_accepting: CancellationToken,
    /// Cancelled after the drain: every background task stops.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    cache: Arc<Cache>,
    server: JoinHandle<()>,
    shutdown_grace: Duration,
    task_health: Arc<TaskHealth>,
}

impl App {
    /// Binds the listener, opens L1, starts the tasks and the server.
    ///
    /// # Errors
    /// When the listen address cannot be bound.
    pub async fn start(parts: Parts) -> anyhow::Result<App> {
        let instance_id = parts.server.instance_id.clone().unwrap_or_else(generate_instance_id);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let supervisor = Supervisor::new(tasks.clone(), shutdown.clone());
        let core = Core::assemble(&parts, instance_id.clone(), supervisor.health());
        tracing::info!(max_entries = parts.cache.l1.max_entries.get(), max_bytes = parts.cache.l1.max_bytes, "l1 open");
        spawn_tier_tasks(&supervisor, &core.cache, &parts, &shutdown);
        let start = core.decide_start_load();
        spawn_load_tasks(&supervisor, &core, &parts, start, &shutdown);

        let listen = parts.server.listen;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding server.listen {listen}"))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let stop_accepting = CancellationToken::new();
        let server = tokio::spawn(http::serve(
            listener,
            http::service(core.state.clone()),
            parts.server.request_timeout,
            parts.server.max_header_bytes,
            stop_accepting.clone(),
        ));
        tracing::info!(%local_addr, instance_id, ready = core.ready.load(Ordering::Acquire), "listening");
        Ok(App {
            local_addr,
            instance_id,
            stop_accepting,
            shutdown,
            tasks,
            cache: core.cache,
            server,
            shutdown_grace: parts.server.shutdown_grace,
            task_health: supervisor.health(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The background tasks' health (`/health` reports dead ones); tests abort tasks through
    /// it to check that a death is noticed.
    pub fn task_health(&self) -> &TaskHealth {
        &self.task_health
    }

    /// Stops the service in the order documented at the top of this module.
    pub async fn shutdown(self) {
        tracing::info!("shutdown: draining in-flight requests");
        self.stop_accepting.cancel();
        let mut server = self.server;
        match tokio::time::timeout(self.shutdown_grace, &mut server).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "server task failed"),
            Err(_) => {
                tracing::warn!(grace_ms = self.shutdown_grace.as_millis() as u64, "drain exceeded the grace period");
                server.abort();
            }
        }
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASK_STOP_TIMEOUT, self.tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop in time");
        }
        if !self.cache.instance().finish_background(TASK_STOP_TIMEOUT).await {
            tracing::warn!("origin fetches did not finish in time");
        }
        if let Some(persistence) = self.cache.persistence() {
            tracing::info!("shutdown: writing the final snapshot");
            let _ = persistence.snapshot(&self.cache).await;
        }
        tracing::info!("shutdown complete");
    }
}

/// What answers requests: the instance, its cache and the HTTP state, before any task runs.
/// `App::start` adds the tasks and the listener; the router tests use it alone.
pub(crate) struct Core {
    pub cache: Arc<Cache>,
    pub state: AppState,
    /// Set once the start-up load of SPEC §7 is done.
    pub ready: Arc<AtomicBool>,
}

impl Core {
    pub(crate) fn assemble(parts: &Parts, instance_id: String, tasks: Arc<TaskHealth>) -> Core {
        let metrics = Arc::new(Metrics::new());
        let instance = Arc::new(Instance::new(&parts.instance, instance_id.clone(), metrics.clone(), Clock::new()));
        let cache = Arc::new(Cache::new(instance, parts.cache.clone()));
        let ready = Arc::new(AtomicBool::new(false));
        let state = AppState::new(http::Shared {
            cache: cache.clone(),
            metrics,
            instance_id,
            started: Instant::now(),
            ready: ready.clone(),
            metrics_enabled: parts.metrics.enabled,
            in_flight: Arc::new(Semaphore::new(parts.server.max_concurrency)),
            server: parts.server.clone(),
            auth: http::Auth::new(&parts.auth),
            tasks,
        });
        Core { cache, state, ready }
    }

    /// The start-up load of SPEC §7, decided before the server answers (a restore starts
    /// recording client changes now, a warm claims its run); sets readiness accordingly.
    fn decide_start_load(&self) -> StartLoad {
        let (cache, warmer) = (&self.cache, self.cache.warmer());
        let start = match (cache.persistence(), warmer.is_configured()) {
            (Some(persistence), _) if persistence.has_snapshot() => {
                cache.begin_restore(); // Before the server answers: see Cache::begin_restore.
                StartLoad::Restore
            }
            (_, true) => {
                warmer.try_begin(cache.clock().now_ms());
                StartLoad::Warm
            }
            _ => StartLoad::Nothing,
        };
        tracing::info!(load = ?start, "start-up load decided");
        self.ready.store(start != StartLoad::Warm, Ordering::Release);
        start
    }
}

/// Spawns the tasks that keep the tiers (sweeper, metrics, L2 connection and subscriber,
/// prefetch workers), before the start-up load is decided, as the start-up log shows.
fn spawn_tier_tasks(supervisor: &Supervisor, cache: &Arc<Cache>, parts: &Parts, shutdown: &CancellationToken) {
    let config = &parts.cache;
    supervisor.spawn("sweeper", tasks::sweeper::run(cache.clone(), config.l1.cleanup_interval, shutdown.clone()));
    supervisor.spawn(
        "metrics_reporter",
        tasks::metrics_reporter::run(cache.clone(), parts.metrics.interval, shutdown.clone()),
    );
    if cache.has_l2() {
        tracing::info!("l2 connecting in the background");
        supervisor.spawn("l2_monitor", tasks::l2_monitor::run(cache.instance().clone(), shutdown.clone()));
        supervisor.spawn("subscriber", tasks::subscriber::run(cache.clone(), shutdown.clone()));
    }
    if cache.has_origin() {
        for _ in 0..config.prefetch.workers {
            supervisor.spawn("prefetch", tasks::prefetch::run(cache.clone(), shutdown.clone()));
        }
    }
}

/// Spawns the tasks of the start-up load and the schedules after it (warmer, snapshotter).
fn spawn_load_tasks(
    supervisor: &Supervisor,
    core: &Core,
    parts: &Parts,
    start: StartLoad,
    shutdown: &CancellationToken,
) {
    let warmer_task = tasks::warmer::WarmerTask { cache: core.cache.clone(), ready: core.ready.clone() };
    supervisor.spawn("warmer", warmer_task.run(start, shutdown.clone()));
    if let Some(config) = &parts.cache.persistence {
        supervisor.spawn("snapshotter", tasks::snapshotter::run(core.cache.clone(), config.interval, shutdown.clone()));
    }
}

/// `hostname-xxxxxxxx`: readable in logs, unique across restarts.
fn generate_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tiercache".into());
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{host}-{:08x}", hasher.finish() as u32)
}
