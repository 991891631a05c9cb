//! Hinted handoff: when a replica misses a write (it is down when the write
//! is routed, or its call fails or times out), the coordinator keeps the
//! write as a *hint* for it, and replays the hints once it is up again, so a
//! replica that was away catches up with no client reads and no operator.
//!
//! - [`store`]: the durable hints, their layout and bounds.
//! - [`replay`]: the task that delivers them (or hands them to the key's
//!   current replicas when the target left the ring).
//! - [`outbox`]: the apply batches a delivery sends, and which hints each
//!   acknowledged batch lets go.
//!
//! A hint never counts toward a consistency level: the coordinator stores it
//! beside the replica calls, and acks are only ever replicas' answers.
//!
//! # Why a second engine
//!
//! Hints live in a second `strata_engine::Db` under `<data_dir>/hints/`, not
//! in a dedicated log. The engine already gives what a hint log needs: a
//! checksummed WAL with torn-tail recovery and group commit, and ordered
//! keys, so keying by target then sequence makes one target's hints a
//! prefix scan in arrival order. What a plain log lacks is reclaiming space
//! out of order: hints of several targets interleave, and one target's are
//! delivered (deleted) while another's wait for hours, so a log would need
//! segments per target or its own compaction; the engine's compaction drops
//! delivered hints' tombstones. Keeping them out of the data engine means
//! clean-up, streaming and repair scans never meet a hint, and no token
//! range can contain one. The cost is a run of tombstones at the head of a
//! target's range right after a delivery, which compaction removes.

mod outbox;
pub(crate) mod replay;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_ring::NodeId;

use crate::config::HintLimits;
use crate::metrics::HintMetrics;
use store::{now_ms, Hint, HintStore, Stored};
pub(crate) use store::{HintError, Pending};

/// The node's hints. Cheap to clone: every clone shares one store.
#[derive(Debug, Clone)]
pub(crate) struct Hints {
    store: Arc<HintStore>,
}

impl Hints {
    /// Opens (creating if needed) the hint store in `dir`.
    pub(crate) fn open(
        dir: &Path,
        limits: HintLimits,
        metrics: HintMetrics,
    ) -> Result<Self, HintError> {
        Ok(Self {
            store: Arc::new(HintStore::open(dir, limits, metrics)?),
        })
    }

    /// Keeps the apply `body` (`peer::wire::encode_apply`) for `target`,
    /// which missed it. It never fails the write it stands for: a hint that
    /// cannot be stored is logged (and repair is what catches the replica
    /// up then).
    pub(crate) async fn hint(&self, target: &NodeId, body: Bytes) {
        let target_id = target.clone();
        let stored = self
            .blocking(move |store| store.store(&target_id, &body, now_ms()))
            .await;
        match stored {
            Ok(Stored::Kept | Stored::Off) => {}
            Ok(Stored::Dropped(reason)) => {
                tracing::debug!(target = %target, ?reason, "hint not kept");
            }
            Err(e) => tracing::warn!(target = %target, error = %e, "hint not stored"),
        }
    }

    /// What each target with hints has pending.
    pub(crate) fn pending(&self) -> BTreeMap<NodeId, Pending> {
        self.store.pending()
    }

    /// `target`'s oldest live hints past `after`, about `max_bytes` of
    /// them, expiring the old ones ([`HintStore::oldest`]).
    async fn oldest(
        &self,
        target: &NodeId,
        after: Option<Vec<u8>>,
        max_bytes: u64,
    ) -> Result<Vec<Hint>, HintError> {
        let target = target.clone();
        self.blocking(move |store| store.oldest(&target, after.as_deref(), max_bytes, now_ms()))
            .await
    }

    /// Deletes `hints` of `target`, delivered.
    async fn delivered(&self, target: &NodeId, hints: Vec<Hint>) -> Result<(), HintError> {
        let target = target.clone();
        self.blocking(move |store| store.delivered(&target, &hints))
            .await
    }

    /// Notes the members seen down now (the window counts from the first
    /// time).
    fn observe_down<'a>(&self, down: impl Iterator<Item = &'a NodeId>) {
        self.store.observe_down(down, now_ms());
    }

    /// Runs `job` on the blocking pool: the engine's write path may wait on
    /// I/O or on back-pressure.
    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&HintStore) -> Result<T, HintError> + Send + 'static,
    ) -> Result<T, HintError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || job(&store))
            .await
            .map_err(|e| HintError::Task(e.to_string()))?
    }
}
