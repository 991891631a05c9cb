//! Anti-entropy repair: replicas that missed writes converge without any
//! client read, and the traffic is proportional to the difference.
//!
//! # One range with one other replica
//!
//! The node repairing (the asker) builds the digest tree ([`tree`]) of the
//! range from one engine snapshot and walks it top-down against the other
//! replica's tree of the same range and depth (`POST /internal/v1/digest`,
//! [`peer::repair`](crate::peer::repair)): the children of the root first,
//! then only the children of the nodes that differ, in 4-byte hashes seeded
//! per session. Identical replicas cost one question of 34 bytes and an
//! answer of 24. The other replica builds its tree once per session (a
//! random id of the asker's) and keeps it for [`TREE_TTL`], so every level
//! is answered from the same snapshot. Its first answer carries its item
//! count: if that calls for a deeper tree than the asker's own count did
//! (the asker lacks most of the range), the asker starts again at that
//! depth, so that no leaf holds many more items than [`tree::LEAF_ITEMS`].
//!
//! The differing leaves are compared item by item ([`rows`]), a batch of
//! leaves per call (`POST /internal/v1/repair-rows`): the asker stores what
//! the other side had newer and pushes back (`POST /internal/v1/apply-batch`)
//! what it lacked, so only the items that differ travel.
//!
//! Every engine byte read for a comparison (each side's tree, each side's
//! leaves) and every body byte is drawn from the node's background
//! [`Throttle`], shared with streams and hint replay.
//!
//! # Which ranges, with whom
//!
//! The ranges are the ring's positions this node replicates, neighbours
//! with the same replicas merged (`Ring::replica_sets`); each is compared
//! with each of its other replicas in turn (the tree built again after a
//! replica sent items, or the next one would be asked for them too), so the
//! asker ends up with the newest of all and every other replica with the
//! newest of itself and the asker. A range one of whose replicas is down is
//! left for the next pass. A range of more items than one tree's leaves
//! hold at half an item each (`tree::MAX_TREE_ITEMS`) is compared in equal
//! token pieces, a tree each.
//!
//! # Driving it
//!
//! `kvnode repair` (`POST /admin/v1/repair`) runs one pass over this node's
//! ranges, or those that overlap the given ones; the scheduler
//! ([`Repairer::run_scheduled`]) runs one pass every `--repair-interval`.
//! One pass at a time, one range at a time, and every byte of it through
//! the node's background throttle ([`metered`]). `GET /v1/node` shows the
//! pass and each range's last completion under `"repair"`; the
//! `kvnode_repair_*` metrics count ranges, items and bytes.

pub(crate) mod metered;
pub(crate) mod rows;
pub(crate) mod tree;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use strata_engine::Snapshot;
use strata_ring::{NodeId, ReplicationFactor, TokenRange};

use self::tree::{depth_for, piece, Descent, RangeTree, MAX_TREE_ITEMS};
use crate::hlc::Hlc;
use crate::membership::{MemberInfo, Membership, NodeState};
use crate::metrics::Metrics;
use crate::peer::repair::{DigestAnswer, DigestRequest, RowsRequest, MAX_ROW_LEAVES};
use crate::peer::Peer;
use crate::storage::Storage;
use crate::throttle::Throttle;

/// How long an answering node keeps a session's tree: the asker walks it
/// level by level within seconds, but may pause while throttled.
const TREE_TTL: Duration = Duration::from_secs(120);
/// Trees an answering node keeps at once (each up to ~11 MiB at the
/// deepest): a few askers at a time.
const TREES_KEPT: usize = 4;
/// Longest wait for one digest or repair-rows answer: the first digest
/// answer of a session reads the whole range on the other side, throttled.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Leaves asked about in the first repair-rows call of a comparison: about
/// a batch of items' worth when each differing leaf differs in one 100-byte
/// item.
const FIRST_ROW_LEAVES: usize = 1024;
/// Engine bytes read are paid to the throttle in pieces of this size: one
/// wait per piece rather than per item.
const READ_PAYMENT: u64 = 64 * 1024;

/// Why a range could not be repaired (it is tried again next pass).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RepairError {
    /// The local engine could not be read.
    #[error("local engine: {0}")]
    Engine(String),
    /// Another replica failed, was down or answered nonsense.
    #[error("replica {node}: {reason}")]
    Replica {
        /// Which.
        node: NodeId,
        /// What happened.
        reason: String,
    },
}

/// One range in the status.
#[derive(Debug, Clone, Serialize)]
struct RangeStatus {
    start: u64,
    end: u64,
    /// `pending`, `running`, `done` or `failed` in the current or last pass.
    state: &'static str,
    /// When it was last repaired with all its other replicas.
    last_completed_unix_ms: Option<u64>,
    differing_leaves: u64,
    keys_pulled: u64,
    keys_pushed: u64,
    error: Option<String>,
}

/// The repair passes, for `/v1/node`.
#[derive(Debug, Clone, Default, Serialize)]
struct Status {
    running: bool,
    /// Passes finished.
    passes: u64,
    /// Ranges of the current (or last) pass done so far, and in all.
    ranges_done: usize,
    ranges_total: usize,
    last_pass_finished_unix_ms: Option<u64>,
    last_pass_failed_ranges: usize,
    ranges: Vec<RangeStatus>,
}

/// What one range's repair did.
#[derive(Debug, Default)]
struct Outcome {
    differing_leaves: u64,
    pulled: u64,
    pushed: u64,
}

/// A tree kept for a session of another node's.
struct Kept {
    key: (u64, TokenRange, u8),
    tree: Arc<RangeTree>,
    used: Instant,
}

/// Runs this node's repairs and answers other nodes' digest and rows calls.
pub(crate) struct Repairer {
    membership: Arc<Membership>,
    storage: Storage,
    rf: ReplicationFactor,
    /// Metered and throttled ([`metered::MeteredPeer`]).
    peer: Arc<dyn Peer>,
    /// Moved past the newest version received, as on any replicated apply.
    hlc: Arc<Hlc>,
    /// Pays for the engine bytes read (the peer pays for body bytes).
    throttle: Throttle,
    metrics: Arc<Metrics>,
    trees: Mutex<Vec<Kept>>,
    status: Mutex<Status>,
}

/// Milliseconds since the epoch, for reports.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Repairer {
    /// A repairer whose calls go through `peer` (already metered) and whose
    /// engine reads are paid to `throttle`.
    pub(crate) fn new(
        membership: Arc<Membership>,
        storage: Storage,
        rf: ReplicationFactor,
        peer: Arc<dyn Peer>,
        (hlc, throttle): (Arc<Hlc>, Throttle),
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            membership,
            storage,
            rf,
            peer,
            hlc,
            throttle,
            metrics,
            trees: Mutex::new(Vec::new()),
            status: Mutex::new(Status::default()),
        })
    }

    /// The status, as JSON for `/v1/node`.
    pub(crate) fn report(&self) -> serde_json::Value {
        serde_json::to_value(&*self.status.lock()).unwrap_or_default()
    }

    /// Marks a pass as running, unless one is or this node cannot repair.
    pub(crate) fn begin(&self) -> Result<(), String> {
        if self.membership.state() != NodeState::Available {
            return Err("this node is not AVAILABLE".into());
        }
        let mut status = self.status.lock();
        if status.running {
            return Err("a repair is already running".into());
        }
        status.running = true;
        Ok(())
    }

    /// Repairs every `--repair-interval`, for as long as the node lives.
    pub(crate) async fn run_scheduled(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.begin() {
                Ok(()) => self.pass(None).await,
                Err(reason) => tracing::debug!(%reason, "scheduled repair skipped"),
            }
        }
    }

    /// One pass over this node's ranges (those overlapping `only`, when
    /// given), one at a time. REQUIRES: [`Repairer::begin`] succeeded.
    pub(crate) async fn pass(&self, only: Option<Vec<TokenRange>>) {
        let view = self.membership.view();
        let me = self.membership.self_id().clone();
        let ranges: Vec<(TokenRange, Vec<NodeId>)> = view
            .ring
            .as_ref()
            .map(|ring| ring.replica_sets(&me, self.rf))
            .unwrap_or_default()
            .into_iter()
            .filter(|(range, _)| {
                only.as_ref()
                    .is_none_or(|o| o.iter().any(|r| overlap(*r, *range)))
            })
            .collect();
        self.plan(&ranges);
        tracing::info!(ranges = ranges.len(), "repair pass started");
        let mut failed = 0;
        for (i, (range, peers)) in ranges.iter().enumerate() {
            self.set(i, |r| r.state = "running");
            match self.repair_range(*range, peers).await {
                Ok(o) => {
                    self.metrics.repair_range_done();
                    self.set(i, |r| {
                        r.state = "done";
                        r.last_completed_unix_ms = Some(unix_ms());
                        r.differing_leaves = o.differing_leaves;
                        r.keys_pulled = o.pulled;
                        r.keys_pushed = o.pushed;
                        r.error = None;
                    });
                }
                Err(e) => {
                    tracing::warn!(?range, error = %e, "range not repaired");
                    failed += 1;
                    self.set(i, |r| {
                        r.state = "failed";
                        r.error = Some(e.to_string());
                    });
                }
            }
            self.status.lock().ranges_done = i + 1;
        }
        let mut status = self.status.lock();
        status.running = false;
        status.passes += 1;
        status.last_pass_finished_unix_ms = Some(unix_ms());
        status.last_pass_failed_ranges = failed;
        tracing::info!(ranges = ranges.len(), failed, "repair pass finished");
    }

    /// Starts the status of a pass over `ranges`, keeping each range's last
    /// completion from earlier passes.
    fn plan(&self, ranges: &[(TokenRange, Vec<NodeId>)]) {
        let mut status = self.status.lock();
        let before = std::mem::take(&mut status.ranges);
        status.ranges = ranges
            .iter()
            .map(|(range, _)| RangeStatus {
                start: range.start(),
                end: range.end(),
                state: "pending",
                last_completed_unix_ms: before
                    .iter()
                    .find(|r| r.start == range.start() && r.end == range.end())
                    .and_then(|r| r.last_completed_unix_ms),
                differing_leaves: 0,
                keys_pulled: 0,
                keys_pushed: 0,
                error: None,
            })
            .collect();
        status.ranges_done = 0;
        status.ranges_total = ranges.len();
    }

    fn set(&self, i: usize, f: impl FnOnce(&mut RangeStatus)) {
        if let Some(r) = self.status.lock().ranges.get_mut(i) {
            f(r);
        }
    }

    /// Repairs `range` with each of `peers`, in pieces of at most
    /// [`MAX_TREE_ITEMS`] items.
    async fn repair_range(
        &self,
        range: TokenRange,
        peers: &[NodeId],
    ) -> Result<Outcome, RepairError> {
        let tree = self.build(range, None).await?;
        if tree.items() <= MAX_TREE_ITEMS {
            return self.repair_piece(range, peers, Some(tree)).await;
        }
        // Keys spread evenly over tokens (they are hashes), so equal token
        // widths hold about equal item counts.
        let parts = tree.items().div_ceil(MAX_TREE_ITEMS);
        drop(tree);
        let mut outcome = Outcome::default();
        for j in 0..parts {
            if let Some(part) = piece(range, u128::from(parts), j) {
                let o = self.repair_piece(part, peers, None).await?;
                outcome.differing_leaves += o.differing_leaves;
                outcome.pulled += o.pulled;
                outcome.pushed += o.pushed;
            }
        }
        Ok(outcome)
    }

    /// Repairs `range` with each of `peers` in turn, starting from `tree`
    /// when given.
    async fn repair_piece(
        &self,
        range: TokenRange,
        peers: &[NodeId],
        mut tree: Option<RangeTree>,
    ) -> Result<Outcome, RepairError> {
        let view = self.membership.view();
        let mut outcome = Outcome::default();
        for id in peers {
            let failed = |reason: String| RepairError::Replica {
                node: id.clone(),
                reason,
            };
            let member = view
                .members
                .get(id)
                .filter(|m| m.serving())
                .ok_or_else(|| failed("down or not serving".into()))?;
            // A tree stays good for the next replica unless this one sent
            // something: comparing a stale tree would fetch it all again.
            let mut current = match tree.take() {
                Some(t) => t,
                None => self.build(range, None).await?,
            };
            let pulled_before = outcome.pulled;
            if let Some(deeper) = self
                .repair_with(&current, member, &mut outcome)
                .await
                .map_err(failed)?
            {
                current = self.build(range, Some(deeper)).await?;
                if self
                    .repair_with(&current, member, &mut outcome)
                    .await
                    .map_err(failed)?
                    .is_some()
                {
                    return Err(failed("its item count outgrew the tree twice".into()));
                }
            }
            if outcome.pulled == pulled_before {
                tree = Some(current);
            }
        }
        Ok(outcome)
    }

    /// This node's tree of `range`, as of now, of `depth` or the depth its
    /// item count calls for.
    async fn build(&self, range: TokenRange, depth: Option<u8>) -> Result<RangeTree, RepairError> {
        self.read(move |snapshot, pay| RangeTree::build(snapshot, range, depth, pay))
            .await
            .map_err(RepairError::Engine)
    }

    /// Runs `f` over a new snapshot on a blocking thread, paying the bytes
    /// it reports to the throttle.
    async fn read<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshot, &mut dyn FnMut(u64)) -> Result<T, E> + Send + 'static,
    ) -> Result<T, String> {
        let snapshot = self.storage.snapshot();
        let throttle = self.throttle.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut owed = 0u64;
            let mut pay = |n: u64| {
                owed += n;
                if owed >= READ_PAYMENT {
                    handle.block_on(throttle.spend(std::mem::take(&mut owed)));
                }
            };
            let out = f(&snapshot, &mut pay);
            handle.block_on(throttle.spend(owed));
            out
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Compares `tree` with `member`'s and exchanges the items of the
    /// differing leaves. `Some(depth)`, having exchanged nothing, if the
    /// other side holds so many more items that the comparison is to start
    /// again at that depth.
    async fn repair_with(
        &self,
        tree: &RangeTree,
        member: &MemberInfo,
        outcome: &mut Outcome,
    ) -> Result<Option<u8>, String> {
        let session: u64 = rand::random();
        let (range, depth) = (tree.range(), tree.depth());
        let mut descent = Descent::new(tree, session);
        let mut first = true;
        while let Some((level, parents)) = descent.request() {
            let request = DigestRequest {
                session,
                range,
                depth,
                level,
                parents: parents.to_vec(),
            };
            let answer: DigestAnswer =
                tokio::time::timeout(CALL_TIMEOUT, self.peer.digest(member.endpoint(), &request))
                    .await
                    .map_err(|_| format!("no digest within {CALL_TIMEOUT:?}"))?
                    .map_err(|e| format!("digest: {e}"))?;
            if std::mem::take(&mut first) {
                let wanted = depth_for(range, answer.items.max(tree.items()));
                if wanted > depth {
                    return Ok(Some(wanted));
                }
            }
            descent.answer(&answer.hashes).map_err(|e| e.to_string())?;
        }
        let leaves = descent.into_leaves();
        outcome.differing_leaves += leaves.len() as u64;
        let mut rest = leaves.as_slice();
        // Leaves asked per call: the other side answers as many as fit one
        // batch of items, and asking for more than it answers would send
        // the rest's hashes again, so each call asks for about what the
        // last one answered (twice as many once all were answered).
        let mut ask_for = FIRST_ROW_LEAVES;
        while !rest.is_empty() {
            let batch = rest.get(..ask_for.min(rest.len())).unwrap_or(rest).to_vec();
            let ask = self
                .read(move |snapshot, pay| {
                    rows::ask(snapshot, (range, depth, session), &batch, pay)
                })
                .await
                .map_err(|e| format!("local engine: {e}"))?;
            let answer = tokio::time::timeout(
                CALL_TIMEOUT,
                self.peer.repair_rows(member.endpoint(), &ask.request),
            )
            .await
            .map_err(|_| format!("no repair-rows answer within {CALL_TIMEOUT:?}"))?
            .map_err(|e| format!("repair-rows: {e}"))?;
            if let Some(v) = answer.entries.iter().map(|e| e.record.version).max() {
                self.hlc.update(v);
            }
            ask_for = if answer.answered < ask.request.leaves.len() {
                answer.answered
            } else {
                (ask_for * 2).min(MAX_ROW_LEAVES)
            };
            rest = rest.get(answer.answered..).unwrap_or_default();
            let storage = self.storage.clone();
            let settled =
                tokio::task::spawn_blocking(move || rows::settle(&storage, &ask, &answer))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("repair-rows answer: {e}"))?;
            for body in settled.push {
                self.peer
                    .apply_batch(member.endpoint(), body)
                    .await
                    .map_err(|e| format!("apply-batch: {e}"))?;
            }
            self.metrics.repair_keys(settled.pulled + settled.pushed);
            outcome.pulled += settled.pulled;
            outcome.pushed += settled.pushed;
        }
        Ok(None)
    }

    /// Answers a digest request from this node's tree of the session.
    pub(crate) async fn digest(&self, request: DigestRequest) -> Result<DigestAnswer, String> {
        let key = (request.session, request.range, request.depth);
        let kept = {
            let mut trees = self.trees.lock();
            trees.retain(|k| k.used.elapsed() < TREE_TTL);
            trees.iter_mut().find(|k| k.key == key).map(|k| {
                k.used = Instant::now();
                k.tree.clone()
            })
        };
        let tree = match kept {
            Some(tree) => tree,
            None => {
                let (range, depth) = (request.range, request.depth);
                let tree = Arc::new(
                    self.read(move |snapshot, pay| {
                        RangeTree::build(snapshot, range, Some(depth), pay)
                    })
                    .await?,
                );
                let mut trees = self.trees.lock();
                if trees.len() >= TREES_KEPT {
                    if let Some(oldest) = trees
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, k)| k.used)
                        .map(|(i, _)| i)
                    {
                        trees.swap_remove(oldest);
                    }
                }
                trees.push(Kept {
                    key,
                    tree: tree.clone(),
                    used: Instant::now(),
                });
                tree
            }
        };
        let hashes = tree
            .children(request.level, &request.parents, request.session)
            .ok_or("a parent outside the tree")?;
        Ok(DigestAnswer {
            items: tree.items(),
            hashes,
        })
    }

    /// Answers a repair-rows request from a new snapshot: its body.
    pub(crate) async fn rows(&self, request: RowsRequest) -> Result<Vec<u8>, String> {
        self.read(move |snapshot, pay| rows::answer(snapshot, &request, pay))
            .await
    }
}

/// Whether two token ranges share a token.
fn overlap(a: TokenRange, b: TokenRange) -> bool {
    a.contains(b.end()) || b.contains(a.end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_when_either_holds_the_others_end() {
        let r = TokenRange::new;
        assert!(overlap(r(0, 10), r(5, 20)));
        assert!(overlap(r(5, 20), r(0, 10)));
        assert!(!overlap(r(0, 10), r(10, 20)));
        assert!(overlap(r(u64::MAX - 5, 5), r(2, 3)));
        assert!(overlap(r(7, 7), r(100, 200)));
        assert!(!overlap(r(100, 200), r(300, 50)));
        assert!(overlap(r(100, 200), r(150, 50)));
    }
}
