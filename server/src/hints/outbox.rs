//! The apply batches of one target's turn ([`replay`](super::replay)):
//! hints go in oldest first, each with the destinations it must reach;
//! batches come out and are sent, and a hint leaves the store once every
//! batch that carried it was acknowledged.
//!
//! - **One open batch per destination** (`peer::wire::ApplyBatch`), sent as
//!   soon as it reaches `BATCH_TARGET`, so a batch is at most the target
//!   plus one entry; what is left open goes when the turn ends.
//! - **Paid before it is sent**: each batch's body bytes are spent from the
//!   shared background [`Throttle`] before its call starts.
//! - **[`IN_FLIGHT`] calls per destination**: a full batch waits for its
//!   destination's oldest call to end before it starts.
//! - **Deleted only once acknowledged**: a hint counts the destinations it
//!   still waits for, and is deleted (and counted delivered) when that
//!   reaches zero. A destination may refuse a batch whole (400, and it
//!   applies none of it) but never part of it, so a refusal leaves every
//!   hint of the batch in the store.
//! - **The first failure ends the turn**: no batch starts after it; the
//!   calls already going are waited for, and the hints they acknowledged
//!   are deleted, so a turn that fails never sends a hint twice for
//!   nothing (last-writer-wins makes a second copy harmless anyway).

use std::collections::HashMap;
use std::sync::Arc;

use strata_ring::NodeId;
use tokio::task::{JoinError, JoinSet};

use super::store::Hint;
use super::{HintError, Hints};
use crate::peer::wire::ApplyBatch;
use crate::peer::{Peer, PeerError};
use crate::throttle::Throttle;
use crate::view::MemberInfo;

/// Apply-batch calls in flight to one destination at once. Two let the
/// next batch travel while the destination applies the previous one: a
/// 100,000-hint backlog (`scripts/hints-converge.sh`, release build, 2
/// shared cores, builds alternated) converged in 3.9 and 3.0 s with two,
/// 10.8 and 5.3 s with one, at machine loads of 19-35 that made the p99
/// figures of both noise.
pub(super) const IN_FLIGHT: usize = 2;

/// Why a target's turn ended before its hints did.
#[derive(Debug, thiserror::Error)]
pub(super) enum TurnError {
    /// The hint store failed.
    #[error(transparent)]
    Store(#[from] HintError),
    /// A destination did not acknowledge a batch.
    #[error("a batch of {entries} hints to {to} not acknowledged: {error}")]
    Batch {
        /// The destination.
        to: NodeId,
        /// The batch's entries.
        entries: u64,
        /// What the call gave.
        error: PeerError,
    },
    /// A batch's task ended without an answer.
    #[error("a batch's call: {0}")]
    Task(JoinError),
    /// A hint whose key has no replica in the view (hand-off).
    #[error("no replica in the view for a hinted key")]
    NoReplicas,
}

/// The batches of one target's turn, and the hints they carry.
pub(super) struct Outbox {
    /// Whose hints these are (whose store range they are deleted from).
    target: NodeId,
    hints: Hints,
    peer: Arc<dyn Peer>,
    throttle: Throttle,
    /// The batch being filled for each destination.
    open: HashMap<NodeId, Open>,
    /// Each hint pushed and not yet deleted, by store key, with the
    /// destinations whose acknowledgement it still waits for.
    waiting: HashMap<Vec<u8>, (usize, Hint)>,
    /// Hints that wait for no one: deleted with the next acknowledgement.
    ready: Vec<Hint>,
    calls: JoinSet<Answer>,
    /// Calls in flight per destination.
    flying: HashMap<NodeId, usize>,
    /// Hints deleted so far.
    delivered: usize,
    /// The first failure: no batch is sent after it.
    failure: Option<TurnError>,
}

/// A destination's batch being filled.
struct Open {
    to: MemberInfo,
    batch: ApplyBatch,
    /// Store keys of the hints in it.
    keys: Vec<Vec<u8>>,
}

/// How a batch's call ended.
struct Answer {
    to: NodeId,
    keys: Vec<Vec<u8>>,
    entries: u64,
    result: Result<(), PeerError>,
}

impl Outbox {
    /// An empty outbox for `target`'s hints.
    pub(super) fn new(
        target: &NodeId,
        hints: Hints,
        peer: Arc<dyn Peer>,
        throttle: Throttle,
    ) -> Self {
        Self {
            target: target.clone(),
            hints,
            peer,
            throttle,
            open: HashMap::new(),
            waiting: HashMap::new(),
            ready: Vec::new(),
            calls: JoinSet::new(),
            flying: HashMap::new(),
            delivered: 0,
            failure: None,
        }
    }

    /// Whether the turn failed: pushing more is useless.
    pub(super) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Ends the turn with `error` (the first one counts).
    pub(super) fn fail(&mut self, error: TurnError) {
        self.failure.get_or_insert(error);
    }

    /// Adds `hint` to the batch of each of `to`, sending the batches that
    /// are full. With `to` empty (every destination hinted again instead)
    /// the hint only waits to be deleted.
    pub(super) async fn push(&mut self, hint: Hint, to: &[&MemberInfo]) {
        if self.failed() {
            return;
        }
        for member in to {
            let open = self.open.entry(member.id.clone()).or_insert_with(|| Open {
                to: (*member).clone(),
                batch: ApplyBatch::default(),
                keys: Vec::new(),
            });
            open.batch.push(&hint.user_key, &hint.record);
            open.keys.push(hint.key.clone());
        }
        if to.is_empty() {
            self.ready.push(hint);
        } else {
            self.waiting.insert(hint.key.clone(), (to.len(), hint));
        }
        for member in to {
            if self.open.get(&member.id).is_some_and(|o| o.batch.is_full()) {
                self.send(&member.id).await;
            }
        }
    }

    /// Sends what is still open, waits for every call, and deletes what
    /// was acknowledged; the hints deleted, or the turn's first failure.
    pub(super) async fn finish(mut self) -> Result<usize, TurnError> {
        let mut open: Vec<NodeId> = self.open.keys().cloned().collect();
        open.sort();
        for to in open {
            self.send(&to).await;
        }
        while !self.calls.is_empty() {
            self.settle_one().await;
        }
        self.delete_ready().await;
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.delivered),
        }
    }

    /// Sends `to`'s open batch once `to` has room for another call, paid
    /// from the throttle first; nothing after a failure.
    async fn send(&mut self, to: &NodeId) {
        while self.flying.get(to).is_some_and(|n| *n >= IN_FLIGHT) && !self.failed() {
            self.settle_one().await;
        }
        let Some(open) = self.open.remove(to) else {
            return;
        };
        if self.failed() {
            return;
        }
        let entries = open.batch.entries();
        let body = open.batch.finish();
        self.throttle.spend(body.len() as u64).await;
        *self.flying.entry(to.clone()).or_default() += 1;
        let peer = self.peer.clone();
        let keys = open.keys;
        self.calls.spawn(async move {
            let result = peer.apply_batch(open.to.endpoint(), body).await;
            Answer {
                to: open.to.id,
                keys,
                entries,
                result,
            }
        });
    }

    /// Waits for one call to end and deletes the hints it was the last
    /// acknowledgement of; a refusal or a lost task is the turn's failure.
    async fn settle_one(&mut self) {
        let answer = match self.calls.join_next().await {
            None => return,
            Some(Ok(answer)) => answer,
            Some(Err(error)) => {
                // No batch is sent after a failure, so the lost call's
                // count in `flying` no longer matters.
                self.fail(TurnError::Task(error));
                return;
            }
        };
        if let Some(n) = self.flying.get_mut(&answer.to) {
            *n = n.saturating_sub(1);
        }
        if let Err(error) = answer.result {
            self.fail(TurnError::Batch {
                to: answer.to,
                entries: answer.entries,
                error,
            });
            return;
        }
        for key in answer.keys {
            if let Some((left, _)) = self.waiting.get_mut(&key) {
                *left -= 1;
                if *left == 0 {
                    if let Some((_, hint)) = self.waiting.remove(&key) {
                        self.ready.push(hint);
                    }
                }
            }
        }
        self.delete_ready().await;
    }

    /// Deletes the hints that wait for no one.
    async fn delete_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let done = std::mem::take(&mut self.ready);
        let n = done.len();
        match self.hints.delivered(&self.target, done).await {
            Ok(()) => self.delivered += n,
            Err(e) => self.fail(e.into()),
        }
    }
}
