//! Anti-entropy repair: replicas that missed writes converge without any
//! client read, and the traffic is proportional to the difference.
//!
//! # One range with one other replica
//!
//! The node repairing (the asker) builds the digest tree ([`tree`]) of the
//! range from one engine snapshot and walks it top-down against the other
//! replica's tree of the same range and depth (`POST /internal/v1/digest`,
//! [`peer::repair`](crate::peer::repair)): the root first, then only the
//! children of the nodes that differ. Identical replicas cost one question
//! of 34 bytes and an answer of 16. The other replica builds its tree once
//! per session (a random id of the asker's) and keeps it for
//! [`TREE_TTL`], so every level is answered from the same snapshot.
//!
//! The differing leaves, neighbours merged, are token sub-ranges:
//!
//! 1. the asker pulls them from the other replica with the bootstrap
//!    stream receiver (`stream::receiver`), applying last-writer-wins;
//! 2. it hashes each differing leaf again over a new snapshot: a leaf that
//!    now equals the other side's hash needed nothing from the asker (the
//!    other side was ahead); the rest it asks the other replica to pull
//!    back (`POST /internal/v1/repair-pull`), which that replica does with
//!    its own receiver, newest version winning there too.
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
pub(crate) mod tree;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use strata_ring::{NodeId, ReplicationFactor, TokenRange};
use tokio::sync::mpsc;

use self::tree::{leaf_runs, piece, sub_range, Descent, RangeTree, MAX_TREE_ITEMS};
use crate::membership::{MemberInfo, Membership, NodeState};
use crate::metrics::Metrics;
use crate::peer::repair::{
    DigestAnswer, DigestRequest, PullCounts, PullRequest, MAX_PULL_RANGES, PULL_FAILED,
};
use crate::peer::Peer;
use crate::storage::Storage;
use crate::stream::receiver::Receiver;

/// How long an answering node keeps a session's tree: the asker walks it
/// level by level within seconds, but may pause while throttled.
const TREE_TTL: Duration = Duration::from_secs(120);
/// Trees an answering node keeps at once (each up to ~11 MiB at the
/// deepest): a few askers at a time.
const TREES_KEPT: usize = 4;
/// Longest wait for one digest answer: the first of a session reads the
/// whole range on the other side.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence of a repair-pull answer: the other side reports each
/// range as it finishes, and retries a failing stream for up to ~20 s.
const PULL_IDLE: Duration = Duration::from_secs(120);

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

/// Runs this node's repairs and answers other nodes' digest and pull calls.
pub(crate) struct Repairer {
    membership: Arc<Membership>,
    storage: Storage,
    rf: ReplicationFactor,
    /// Metered and throttled ([`metered::MeteredPeer`]).
    peer: Arc<dyn Peer>,
    /// Pulls through the same metered peer.
    receiver: Receiver,
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
    /// pulls go through `receiver` (built over the same peer).
    pub(crate) fn new(
        membership: Arc<Membership>,
        storage: Storage,
        rf: ReplicationFactor,
        (peer, receiver): (Arc<dyn Peer>, Receiver),
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            membership,
            storage,
            rf,
            peer,
            receiver,
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
        let tree = self.build(range).await?;
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
            // something: comparing a stale tree would pull it all again.
            let current = match tree.take() {
                Some(t) => t,
                None => self.build(range).await?,
            };
            let pulled_before = outcome.pulled;
            self.repair_with(&current, rand::random(), member, &mut outcome)
                .await
                .map_err(failed)?;
            if outcome.pulled == pulled_before {
                tree = Some(current);
            }
        }
        Ok(outcome)
    }

    /// This node's tree of `range`, as of now.
    async fn build(&self, range: TokenRange) -> Result<RangeTree, RepairError> {
        let snapshot = self.storage.snapshot();
        tokio::task::spawn_blocking(move || RangeTree::build(&snapshot, range, None))
            .await
            .map_err(|e| RepairError::Engine(e.to_string()))?
            .map_err(|e| RepairError::Engine(e.to_string()))
    }

    /// Compares `tree` with `member`'s, pulls the differing leaves and gets
    /// it to pull those where this node has something it lacks.
    async fn repair_with(
        &self,
        tree: &RangeTree,
        session: u64,
        member: &MemberInfo,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let (range, depth) = (tree.range(), tree.depth());
        let mut descent = Descent::new(tree);
        while let Some((level, nodes)) = descent.request() {
            let request = DigestRequest {
                session,
                range,
                depth,
                level,
                nodes: nodes.to_vec(),
            };
            let answer: DigestAnswer = tokio::time::timeout(
                DIGEST_TIMEOUT,
                self.peer.digest(member.endpoint(), &request),
            )
            .await
            .map_err(|_| format!("no digest within {DIGEST_TIMEOUT:?}"))?
            .map_err(|e| format!("digest: {e}"))?;
            descent.answer(&answer.hashes).map_err(|e| e.to_string())?;
        }
        let leaves = descent.into_leaves();
        if leaves.is_empty() {
            return Ok(());
        }
        outcome.differing_leaves += leaves.len() as u64;
        let indices: Vec<u32> = leaves.iter().map(|(leaf, _)| *leaf).collect();
        let jobs = leaf_runs(range, depth, &indices)
            .into_iter()
            .map(|r| (r, vec![member.clone()]))
            .collect();
        let (pulled, failed) = self.receiver.pull_all(jobs).await;
        self.metrics.repair_keys(pulled);
        outcome.pulled += pulled;
        if failed > 0 {
            return Err(format!("{failed} sub-ranges could not be pulled"));
        }
        let snapshot = self.storage.snapshot();
        let behind = tokio::task::spawn_blocking(move || {
            let mut behind = Vec::new();
            for (leaf, theirs) in leaves {
                let Some(sub) = sub_range(range, depth, leaf) else {
                    continue;
                };
                let ours = RangeTree::build(&snapshot, sub, Some(0))?;
                if ours.hashes(0, &[0]) != Some(vec![theirs]) {
                    behind.push(leaf);
                }
            }
            Ok::<_, strata_engine::Error>(behind)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("local engine: {e}"))?;
        for batch in leaf_runs(range, depth, &behind).chunks(MAX_PULL_RANGES) {
            outcome.pushed += self.ask_to_pull(member, batch).await?;
        }
        Ok(())
    }

    /// Gets `member` to pull `ranges` from this node; the entries it applied.
    async fn ask_to_pull(&self, member: &MemberInfo, ranges: &[TokenRange]) -> Result<u64, String> {
        let request = PullRequest {
            from: self.membership.self_id().as_str().to_owned(),
            ranges: ranges.to_vec(),
        };
        let mut body =
            tokio::time::timeout(PULL_IDLE, self.peer.pull_from(member.endpoint(), &request))
                .await
                .map_err(|_| "repair-pull not answered".to_owned())?
                .map_err(|e| format!("repair-pull: {e}"))?;
        let mut counts = PullCounts::default();
        while let Some(chunk) = tokio::time::timeout(PULL_IDLE, body.next_chunk())
            .await
            .map_err(|_| format!("repair-pull silent for {PULL_IDLE:?}"))?
            .map_err(|e| format!("repair-pull: {e}"))?
        {
            counts
                .push(&chunk, ranges.len())
                .map_err(|e| format!("repair-pull answer: {e}"))?;
        }
        let counts = counts.counts();
        if counts.len() < ranges.len() {
            return Err(format!(
                "repair-pull answered {} of {} ranges",
                counts.len(),
                ranges.len()
            ));
        }
        if counts.contains(&PULL_FAILED) {
            return Err("the replica failed to pull some ranges back".into());
        }
        Ok(counts.iter().sum())
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
                let snapshot = self.storage.snapshot();
                let (range, depth) = (request.range, request.depth);
                let tree = tokio::task::spawn_blocking(move || {
                    RangeTree::build(&snapshot, range, Some(depth))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                let tree = Arc::new(tree);
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
            .hashes(request.level, &request.nodes)
            .ok_or("a node outside the tree")?;
        Ok(DigestAnswer {
            items: tree.items(),
            hashes,
        })
    }

    /// Starts pulling `request.ranges` from the asker; the answer body's
    /// counts, one per range as it finishes. The pull stops if the asker
    /// hangs up.
    pub(crate) fn pull_for(
        self: &Arc<Self>,
        request: PullRequest,
    ) -> Result<mpsc::Receiver<Result<Bytes, std::io::Error>>, String> {
        let view = self.membership.view();
        let source = view
            .members
            .get(&NodeId::from(request.from.as_str()))
            .filter(|m| m.serving())
            .cloned()
            .ok_or_else(|| format!("{} is not a serving member", request.from))?;
        let (tx, rx) = mpsc::channel(16);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            for range in request.ranges {
                let n = match me.receiver.pull(range, std::slice::from_ref(&source)).await {
                    Ok(n) => {
                        me.metrics.repair_keys(n);
                        n
                    }
                    Err(e) => {
                        tracing::warn!(?range, source = %source.id, error = %e, "repair pull failed");
                        PULL_FAILED
                    }
                };
                if tx
                    .send(Ok(Bytes::copy_from_slice(&n.to_be_bytes())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
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
