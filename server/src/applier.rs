//! Replicated writes applied in groups: the one place where this node's
//! replica writes (a coordinator's own replica, the apply routes, the
//! binary peer transport) meet the engine.
//!
//! Callers queue their items and wait; one drain at a time (a blocking-pool
//! task, started when items arrive and none runs) takes whatever is queued
//! (up to [`GROUP_ITEMS`] items or [`GROUP_BYTES`] bytes), applies it with
//! [`Storage::apply_encoded_many`] as one engine write, answers every caller
//! of the group, and goes on until the queue is empty. Under load a group
//! holds many writes, so the engine sees one WAL append and the node one
//! hand-off per group instead of a blocking-pool hand-off and an engine write
//! per item; alone, a write waits for nothing but its own group. The queue is
//! bounded ([`QUEUE_JOBS`]): when the engine falls behind (its back-pressure
//! holds the drain), callers wait for room instead of growing memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::storage::{EncodedRecord, Storage};

/// Most items one group applies.
const GROUP_ITEMS: usize = 1024;
/// A group closes once it holds this many bytes (one job may cross it).
const GROUP_BYTES: usize = 1 << 20;
/// Jobs waiting at most; a caller past it waits for room.
const QUEUE_JOBS: usize = 4096;

/// Why a queued apply failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ApplyError {
    /// The engine refused the group this job was part of.
    #[error("apply failed: {0}")]
    Storage(String),
    /// The drain is gone (the runtime is stopping).
    #[error("apply stopped")]
    Stopped,
}

/// Queues applies and drains them in groups. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Applier {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

struct Shared {
    storage: Storage,
    queue: mpsc::Sender<Job>,
    /// Held by the one drain running.
    jobs: Mutex<mpsc::Receiver<Job>>,
    /// Whether a drain is running or about to.
    draining: AtomicBool,
}

/// Items that are applied together and answered together.
struct Job {
    items: Vec<(Bytes, EncodedRecord)>,
    done: oneshot::Sender<Result<(), ApplyError>>,
}

impl Applier {
    /// An applier over `storage`.
    pub(crate) fn new(storage: Storage) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE_JOBS);
        Self {
            shared: Arc::new(Shared {
                storage,
                queue,
                jobs: Mutex::new(jobs),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Applies `items` (each merged by last-writer-wins) and waits until
    /// they are in the engine. Call it from the runtime.
    pub(crate) async fn apply(&self, items: Vec<(Bytes, EncodedRecord)>) -> Result<(), ApplyError> {
        if items.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.shared
            .queue
            .send(Job { items, done })
            .await
            .map_err(|_| ApplyError::Stopped)?;
        if !self.shared.draining.swap(true, Ordering::AcqRel) {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.drain());
        }
        answer.await.map_err(|_| ApplyError::Stopped)?
    }
}

impl Shared {
    /// Applies groups until the queue is empty.
    fn drain(&self) {
        let mut jobs = self.jobs.lock();
        let mut group: Vec<Job> = Vec::new();
        let mut items: Vec<(Bytes, EncodedRecord)> = Vec::new();
        loop {
            let first = match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    self.draining.store(false, Ordering::Release);
                    // A job queued after the failed receive but before the
                    // store saw a drain running and started none: look once
                    // more, now that a new job would start one.
                    match jobs.try_recv() {
                        Ok(job) => {
                            self.draining.store(true, Ordering::Release);
                            job
                        }
                        Err(_) => return,
                    }
                }
            };
            let mut bytes = size(&first);
            let mut count = first.items.len();
            group.push(first);
            while count < GROUP_ITEMS && bytes < GROUP_BYTES {
                let Ok(job) = jobs.try_recv() else { break };
                bytes += size(&job);
                count += job.items.len();
                group.push(job);
            }
            for job in &mut group {
                items.append(&mut job.items);
            }
            let result = self
                .storage
                .apply_encoded_many(&items)
                .map_err(|e| ApplyError::Storage(e.to_string()));
            if let Err(e) = &result {
                tracing::error!(error = %e, items = items.len(), "replica apply failed");
            }
            items.clear();
            for job in group.drain(..) {
                // A caller that gave up (its request timed out) no longer
                // listens; its items are applied all the same.
                let _ = job.done.send(result.clone());
            }
        }
    }
}

/// Bytes a job brings to its group.
fn size(job: &Job) -> usize {
    job.items
        .iter()
        .map(|(k, r)| k.len() + r.bytes().len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Record;

    fn item(key: &str, version: u64, value: &str) -> (Bytes, EncodedRecord) {
        let record = Record::value(version, value.as_bytes().to_vec());
        (Bytes::from(key.to_owned()), EncodedRecord::from(&record))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_all_land_and_the_newest_version_of_a_key_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Storage::open(dir.path(), std::time::Duration::from_secs(3600)).expect("open");
        let applier = Applier::new(storage.clone());
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let applier = applier.clone();
            calls.spawn(async move {
                // Every job also writes the shared key, at its own version,
                // in an order unrelated to the versions.
                let version = (i * 7919) % 200 + 1;
                applier
                    .apply(vec![
                        item(&format!("k{i}"), 1, &format!("v{i}")),
                        item("shared", version, &format!("s{version}")),
                    ])
                    .await
            });
        }
        while let Some(done) = calls.join_next().await {
            assert_eq!(done.expect("task"), Ok(()));
        }
        for i in 0..200 {
            let got = storage.read(format!("k{i}").as_bytes()).expect("read");
            assert_eq!(got, Some(Record::value(1, format!("v{i}").into_bytes())));
        }
        let shared = storage.read(b"shared").expect("read");
        assert_eq!(shared, Some(Record::value(200, b"s200".to_vec())));
    }

    #[tokio::test]
    async fn a_stale_item_in_a_job_does_not_replace_the_stored_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Storage::open(dir.path(), std::time::Duration::from_secs(3600)).expect("open");
        let applier = Applier::new(storage.clone());
        applier
            .apply(vec![item("k", 5, "new")])
            .await
            .expect("apply");
        applier
            .apply(vec![item("k", 4, "old"), item("k", 3, "older")])
            .await
            .expect("apply");
        assert_eq!(
            storage.read(b"k").expect("read"),
            Some(Record::value(5, b"new".to_vec()))
        );
    }
}
