//! The node's background tasks and their one owner.
//!
//! Every long-lived task of a node (bootstrap, take-over, clean-up, the
//! health publisher, a decommission's leave) is spawned through [`Tasks`]:
//! it has a name, its state (running, finished, cancelled, failed) is in
//! `GET /v1/node` under `"tasks"`, an error or a panic is counted in
//! `kvnode_task_failures_total{task}`, and [`Tasks::shutdown`] cancels them
//! all with one token and joins them, so a node stops only once its tasks
//! have. A task is cancelled at its next `.await`, the same point at which
//! a runtime shutting down would have dropped it before this existed, but
//! now in order: after HTTP has drained and before the engine's last flush.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TaskState {
    /// Still running.
    Running,
    /// Returned by itself.
    Finished,
    /// Stopped by [`Tasks::shutdown`].
    Cancelled,
    /// Returned an error or panicked.
    Failed,
}

/// What a task returns: nothing, or a result whose error marks it failed.
pub(crate) trait TaskResult: Send + 'static {
    /// Why the task failed, if it did.
    fn error(self) -> Option<String>;
}

impl TaskResult for () {
    fn error(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display + Send + 'static> TaskResult for Result<(), E> {
    fn error(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// One task as `/v1/node` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TaskReport {
    /// Where it stands.
    pub(crate) state: TaskState,
    /// Why it failed, if it did.
    pub(crate) error: Option<String>,
}

/// Owns a node's background tasks. Cheap to clone: every clone spawns into
/// the same set.
#[derive(Debug, Clone)]
pub(crate) struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    set: Mutex<JoinSet<()>>,
    cancel: CancellationToken,
    reports: Mutex<BTreeMap<&'static str, TaskReport>>,
    metrics: Arc<Metrics>,
}

impl Tasks {
    /// An empty set, counting failures in `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                set: Mutex::new(JoinSet::new()),
                cancel: CancellationToken::new(),
                reports: Mutex::new(BTreeMap::new()),
                metrics,
            }),
        }
    }

    /// Runs `task` under `name` until it returns, panics or the set shuts
    /// down. A task that returns an error or panics is `failed`, with its
    /// error. After shutdown has begun, nothing new starts.
    pub(crate) fn spawn<R: TaskResult>(
        &self,
        name: &'static str,
        task: impl Future<Output = R> + Send + 'static,
    ) {
        if self.inner.cancel.is_cancelled() {
            tracing::debug!(task = name, "not started: the node is stopping");
            return;
        }
        self.set(name, TaskState::Running, None);
        // The task runs on its own, so that its panic is seen here (a join
        // error) rather than unwinding through the bookkeeping.
        let mut handle = tokio::spawn(task);
        let (me, cancel) = (self.clone(), self.inner.cancel.clone());
        self.inner.set.lock().spawn(async move {
            let (state, error) = tokio::select! {
                () = cancel.cancelled() => {
                    handle.abort();
                    (TaskState::Cancelled, None)
                }
                joined = &mut handle => match joined.map(TaskResult::error) {
                    Ok(None) => (TaskState::Finished, None),
                    Ok(Some(e)) => (TaskState::Failed, Some(e)),
                    Err(e) => (TaskState::Failed, Some(e.to_string())),
                },
            };
            if state == TaskState::Failed {
                me.inner.metrics.task_failed(name);
                tracing::error!(task = name, error = ?error, "background task failed");
            }
            me.set(name, state, error);
        });
    }

    /// Each task by name.
    pub(crate) fn report(&self) -> BTreeMap<&'static str, TaskReport> {
        self.inner.reports.lock().clone()
    }

    /// Cancels every task and waits up to `timeout` for all to stop; logs
    /// the ones that did not.
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        self.inner.cancel.cancel();
        let mut set = std::mem::take(&mut *self.inner.set.lock());
        let joined =
            tokio::time::timeout(timeout, async { while set.join_next().await.is_some() {} }).await;
        if joined.is_err() {
            let running: Vec<&str> = self
                .report()
                .into_iter()
                .filter(|(_, r)| r.state == TaskState::Running)
                .map(|(name, _)| name)
                .collect();
            tracing::warn!(?running, "tasks still running at the shutdown deadline");
        }
    }

    fn set(&self, name: &'static str, state: TaskState, error: Option<String>) {
        self.inner
            .reports
            .lock()
            .insert(name, TaskReport { state, error });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_joins_every_task_and_a_panic_is_reported() {
        let tasks = Tasks::new(Arc::new(Metrics::new()));
        let dropped = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = SetOnDrop(dropped.clone());
        tasks.spawn("forever", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tasks.spawn("short", async {});
        tasks.spawn::<()>("broken", async { panic!("boom") });
        tasks.spawn("refused", async { Err::<(), _>("no room") });
        // Let the short and the broken ones end.
        for _ in 0..100 {
            let r = tasks.report();
            if ["short", "broken", "refused"]
                .iter()
                .all(|t| r[*t].state != TaskState::Running)
            {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = tasks.report();
        assert_eq!(r["short"].state, TaskState::Finished);
        assert_eq!(r["broken"].state, TaskState::Failed);
        assert!(
            r["broken"].error.as_deref().unwrap().contains("panic"),
            "{r:?}"
        );
        assert_eq!(r["refused"].state, TaskState::Failed);
        assert_eq!(r["refused"].error.as_deref(), Some("no room"));
        assert_eq!(r["forever"].state, TaskState::Running);
        assert!(!dropped.load(Ordering::SeqCst));

        tasks.shutdown(Duration::from_secs(5)).await;
        // The aborted task's future is dropped once the runtime gets to it.
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            dropped.load(Ordering::SeqCst),
            "the endless task was not stopped"
        );
        assert_eq!(tasks.report()["forever"].state, TaskState::Cancelled);
        // Nothing starts once the node is stopping.
        tasks.spawn("late", async {});
        assert!(!tasks.report().contains_key("late"));
    }
}
