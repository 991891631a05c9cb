//! The chunk GC: deletes the chunks this node holds that no file refers to.
//!
//! A pass marks, then sweeps. It lists every file of the cluster (every
//! node must answer, or the pass is skipped: a node that did not answer may
//! hold the only manifest that refers to a chunk), reads each file's
//! manifest at ALL, and collects the chunks they name. It then scans this
//! node's engine and replaces with a tombstone every chunk that is neither
//! named nor written within the grace (`--file-gc-grace-ms`), counting from
//! when the pass began. Every replica of a chunk runs its own pass and
//! reaches the same verdict; the tombstone's version is one past the
//! chunk's, so the copies the other replicas still hold never come back
//! over it, and a write of the same chunk since (a new upload) is newer and
//! wins, on this replica or any other.
//!
//! Why a pass never deletes a chunk that a file needs: a manifest is
//! written only within the commit window (`Config::file_commit_window`:
//! half the grace, less the manifest write's own time and the clocks'
//! offset) of the versions of its chunks. A streamed upload writes every
//! chunk under a fresh version and is refused past the window; a commit of
//! chunks stored earlier writes again each chunk older than the window. A
//! chunk the sweep may delete was written more than a grace before the pass
//! began, so any manifest that names it was written before the pass began,
//! and the listing, which hears from every node, sees it. A file deleted (or
//! overwritten) leaves its chunks to the next pass that runs a grace after
//! their last write; chunks it shares with other files stay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::index::{self, ListRequest, MAX_PAGE};
use super::{chunk_hash, manifest_key, Manifest, CHUNK_PREFIX};
use crate::coordinator::{Consistency, Coordinator};
use crate::hlc::{self, WallClock};
use crate::metrics::Metrics;
use crate::storage::{Record, Storage};
use crate::throttle::Throttle;

/// Items a sweep examines between two payments to the throttle.
const BATCH: usize = 256;

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// Files the cluster holds.
    pub files: u64,
    /// Distinct chunks those files name.
    pub referenced_chunks: u64,
    /// Items of this node's engine the sweep read.
    pub examined_items: u64,
    /// Chunks this node deleted.
    pub deleted_chunks: u64,
    /// Their stored bytes.
    pub deleted_bytes: u64,
    /// How long the pass took.
    pub seconds: f64,
}

/// Why a pass did not run to the end; it deleted nothing, or only chunks
/// it had judged before the reason arose.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another pass is running on this node.
    #[error("a chunk GC pass is already running on this node")]
    Busy,
    /// Some node did not answer the listing.
    #[error("skipped: {0} did not answer the listing of files, and may hold the only manifest that names a chunk")]
    Unanswered(String),
    /// A manifest could not be read.
    #[error("skipped: the manifest of {name:?} could not be read: {why}")]
    Manifest {
        /// The file.
        name: String,
        /// What went wrong.
        why: String,
    },
    /// The sweep stopped.
    #[error("the sweep stopped: {0}")]
    Sweep(String),
}

/// Runs passes; cheap to clone.
#[derive(Clone)]
pub struct FileGc {
    inner: Arc<Inner>,
}

struct Inner {
    coordinator: Coordinator,
    storage: Storage,
    grace: Duration,
    clock: WallClock,
    metrics: Arc<Metrics>,
    throttle: Throttle,
    /// Held by the pass that runs; a second one is refused.
    running: tokio::sync::Mutex<()>,
}

impl FileGc {
    /// The GC of `storage`'s chunks, listing through `coordinator`, with
    /// chunks younger than `grace` (by `clock`) spared and the sweep paid
    /// for to `throttle`.
    pub(crate) fn new(
        coordinator: Coordinator,
        storage: Storage,
        (grace, clock): (Duration, WallClock),
        metrics: Arc<Metrics>,
        throttle: Throttle,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                coordinator,
                storage,
                grace,
                clock,
                metrics,
                throttle,
                running: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A pass every `every`, the first one after `every`.
    pub(crate) async fn run_scheduled(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.pass().await {
                Ok(report) => tracing::info!(?report, "chunk GC pass done"),
                Err(e) => tracing::warn!(error = %e, "chunk GC pass"),
            }
        }
    }

    /// One pass now; see the module doc.
    pub async fn pass(&self) -> Result<GcReport, GcError> {
        let inner = &self.inner;
        let _running = inner.running.try_lock().map_err(|_| GcError::Busy)?;
        let started = Instant::now();
        let began_ms = inner.clock.now_ms();
        let (files, referenced) = match self.mark().await {
            Ok(marked) => marked,
            Err(e) => {
                inner.metrics.file_gc_pass(None);
                return Err(e);
            }
        };
        let referenced_chunks = referenced.len() as u64;
        let grace_ms = u64::try_from(inner.grace.as_millis()).unwrap_or(u64::MAX);
        let storage = inner.storage.clone();
        let throttle = inner.throttle.clone();
        let runtime = tokio::runtime::Handle::current();
        let swept = tokio::task::spawn_blocking(move || {
            let (mut examined, mut bytes) = (0u64, 0u64);
            let deleted = storage.tombstone_where(
                CHUNK_PREFIX,
                |key, record: &Record| {
                    chunk_hash(key).is_some_and(|hash| {
                        hlc::ms(record.version).saturating_add(grace_ms) < began_ms
                            && !referenced.contains(&hash)
                    })
                },
                BATCH,
                |batch| {
                    examined += batch.examined;
                    bytes += batch.deleted_bytes;
                    runtime.block_on(throttle.spend(batch.bytes));
                    Ok(())
                },
            );
            (deleted, examined, bytes)
        })
        .await;
        let (deleted, examined_items, deleted_bytes) =
            swept.map_err(|e| GcError::Sweep(e.to_string()))?;
        let deleted_chunks = deleted.map_err(|e| {
            inner.metrics.file_gc_pass(Some((e.deleted, 0)));
            GcError::Sweep(e.to_string())
        })?;
        inner
            .metrics
            .file_gc_pass(Some((deleted_chunks, deleted_bytes)));
        Ok(GcReport {
            files,
            referenced_chunks,
            examined_items,
            deleted_chunks,
            deleted_bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Every file of the cluster and the chunks their manifests name.
    async fn mark(&self) -> Result<(u64, HashSet<[u8; 32]>), GcError> {
        let coordinator = &self.inner.coordinator;
        let mut referenced = HashSet::new();
        let mut files = 0u64;
        let mut after = None;
        loop {
            let request = ListRequest {
                prefix: String::new(),
                after: after.take(),
                limit: MAX_PAGE,
            };
            let listing = coordinator.list_files(&request).await;
            if !listing.unanswered.is_empty() {
                return Err(GcError::Unanswered(listing.unanswered.join(", ")));
            }
            let page = index::merge(listing.pages, MAX_PAGE);
            for file in &page.files {
                let manifest_error = |why: String| GcError::Manifest {
                    name: file.name.clone(),
                    why,
                };
                // At ALL: the newest manifest may so far be on one replica
                // only (a write that failed its level still landed there),
                // and a read repair will spread it.
                let record = coordinator
                    .read(manifest_key(&file.name), Consistency::All)
                    .await
                    .map_err(|e| manifest_error(e.to_string()))?;
                // Deleted since it was listed: its chunks are garbage.
                let Some(value) = record.and_then(|r| r.value) else {
                    continue;
                };
                let manifest =
                    Manifest::decode(&value).map_err(|e| manifest_error(e.to_string()))?;
                files += 1;
                for i in 0..manifest.chunks.len() {
                    if let Some((hash, _)) = manifest.chunk(i) {
                        referenced.insert(hash);
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok((files, referenced)),
            }
        }
    }
}
