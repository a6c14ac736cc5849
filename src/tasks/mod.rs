//! Loops only: each task is a schedule around an engine call. `App` spawns them all on its
//! `TaskTracker` and stops them through its `CancellationToken`.

pub(crate) mod l2_monitor;
pub(crate) mod metrics_reporter;
pub(crate) mod prefetch;
pub(crate) mod snapshotter;
pub(crate) mod subscriber;
pub(crate) mod sweeper;
pub(crate) mod warmer;

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns the background tasks and notices when one dies: a task that panics (or is aborted)
/// before shutdown is recorded by name, logged at error, and reported by `/health`. A task that
/// returns normally has finished its work (the warmer without an interval does) and is not dead.
#[derive(Clone)]
pub(crate) struct Supervisor {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    health: Arc<TaskHealth>,
}

/// What the supervisor knows; shared with the HTTP layer for `/health`.
#[derive(Default)]
pub struct TaskHealth {
    /// Names of the tasks that died, in the order they died (a name can repeat: prefetch
    /// workers share one). Written by a dying task's guard, read by `/health`.
    dead: Mutex<Vec<&'static str>>,
    /// Every spawned task, for [`TaskHealth::abort`] in tests.
    handles: Mutex<Vec<(&'static str, AbortHandle)>>,
}

impl TaskHealth {
    pub fn dead(&self) -> Vec<&'static str> {
        self.dead.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Aborts the running tasks called `name`, as a crash would end them; returns how many.
    pub fn abort(&self, name: &str) -> usize {
        let handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        let matching: Vec<_> = handles.iter().filter(|(task, handle)| *task == name && !handle.is_finished()).collect();
        matching.iter().for_each(|(_, handle)| handle.abort());
        matching.len()
    }
}

impl Supervisor {
    pub fn new(tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self { tracker, shutdown, health: Arc::new(TaskHealth::default()) }
    }

    pub fn health(&self) -> Arc<TaskHealth> {
        self.health.clone()
    }

    /// Spawns `task` on the tracker, watched under `name`.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let watch = Watch { name, health: self.health.clone(), shutdown: self.shutdown.clone(), done: false };
        let handle = self.tracker.spawn(async move {
            let mut watch = watch; // Moved in whole: the task owns the guard.
            task.await;
            watch.done = true;
        });
        let mut handles = self.health.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handles.retain(|(_, handle)| !handle.is_finished());
        handles.push((name, handle.abort_handle()));
    }
}

/// Dropped with its task: unwinding from a panic or an abort drops it with `done` unset.
struct Watch {
    name: &'static str,
    health: Arc<TaskHealth>,
    shutdown: CancellationToken,
    done: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done && !self.shutdown.is_cancelled() {
            tracing::error!(task = self.name, "a background task died");
            self.health.dead.lock().unwrap_or_else(PoisonError::into_inner).push(self.name);
        }
    }
}

/// Capped exponential backoff for reconnect loops.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { next: min, min, max }
    }

    /// Sleeps for the next delay; returns false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_and_a_finished_one_is_not() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(TaskTracker::new(), shutdown.clone());
        supervisor.spawn("finishes", async {});
        supervisor.spawn("panics", async { panic!("a bug in a loop") });
        supervisor.spawn("loops", std::future::pending());
        supervisor.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), async {
            while supervisor.health.dead().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the panic is noticed");
        assert_eq!(supervisor.health.dead(), vec!["panics"]);
        assert_eq!(supervisor.health.abort("loops"), 1);
        tokio::time::timeout(Duration::from_secs(5), async {
            while supervisor.health.dead().len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the abort is noticed");
        assert_eq!(supervisor.health.dead(), vec!["panics", "loops"]);

        supervisor.spawn("stopped", std::future::pending());
        shutdown.cancel();
        assert_eq!(supervisor.health.abort("stopped"), 1);
        supervisor.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), supervisor.tracker.wait()).await.unwrap();
        assert_eq!(supervisor.health.dead().len(), 2, "ending at shutdown is not dying");
    }
}
