//! Replication and consistency: any node coordinates any request. It takes
//! the key's preference list from the ring, sends to the replicas in
//! parallel (its own engine directly, others through the [`Peer`], with a
//! timeout per call) and answers once the consistency level's replicas have.
//!
//! - **Writes** go to every replica that is up; the answer comes after
//!   [`Consistency::required`] acks, and the other calls finish in the
//!   background ([`background`]: a bounded set the node drains when it
//!   stops). A replica that is down is skipped, and one whose call fails
//!   or times out is only counted; either way it missed the write, so it
//!   gets a hint ([`hints`](crate::hints)), delivered once it is up again.
//!   A hint never counts toward the level.
//! - **Reads** ask only as many replicas as the level needs, this node first
//!   when it is one, and ask the next replica when one fails. The first is
//!   asked for the record, the others only for its digest
//!   ([`RecordDigest`]: version and hash, 16 bytes whatever the value's
//!   size), as Cassandra's digest reads do. When every digest matches the
//!   record, that is the answer. When one does not
//!   (`kvnode_digest_mismatches_total`), a digest of a lower version (or of
//!   nothing) is a replica that is behind, and any other (a higher version,
//!   the same version with other bytes, a record where the full read found
//!   none) is read in full; the newest record wins
//!   ([`Record::supersedes`]). A replica that fails a read of either kind is
//!   replaced by the next untried one, asked the same way. Every replica
//!   known to hold something older than the answer is repaired in the
//!   background. ONE reads ask one replica for the record and nothing else.
//! - A level that cannot be met is [`CoordinatorError`], which the API turns
//!   into a 503: up front when too few replicas are up, or after the calls
//!   when too many failed.
//!
//! - **Pending replicas**: while a node bootstraps or leaves, writes also go
//!   to the key's replicas in the ring after the move
//!   ([`ClusterView::pending`](crate::view::ClusterView::pending)), and
//!   each adds one to the acks needed. Reads never go to them.
//!
//! The required count is taken of the preference list, whose length is
//! `min(replication factor, ring members)`: a cluster smaller than its
//! replication factor stores each key on every member.
//!
//! The coordinator routes by a [`Routing`] (the view and the write gate),
//! not by gossip, so `tests` drive real coordinators over views built by
//! hand and a simulated network (`peer::sim`).

mod background;
#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use strata_ring::ReplicationFactor;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::background::Background;
use crate::applier::Applier;
use crate::files::index::{ListRequest, Listed};
use crate::hints::Hints;
use crate::hlc::Hlc;
use crate::metrics::{Metrics, Outcome, ReplicaOp, Target};
use crate::peer::wire::{decode_apply, encode_apply, RecordDigest};
use crate::peer::{Peer, PeerError};
use crate::routing::Routing;
use crate::storage::{Record, Storage};
use crate::view::{MemberInfo, NodeState};

/// How many replicas must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consistency {
    /// One replica.
    One,
    /// A majority of the preference list.
    Quorum,
    /// Every replica in the preference list.
    All,
}

impl Consistency {
    /// Parses the `consistency` query parameter (`one`, `quorum`, `all`, any case).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Some(Self::One),
            "quorum" => Some(Self::Quorum),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    /// Answers needed from a preference list of `replicas` nodes.
    pub(crate) fn required(self, replicas: usize) -> usize {
        match self {
            Self::One => replicas.min(1),
            Self::Quorum => replicas / 2 + 1,
            Self::All => replicas,
        }
    }
}

/// Why a consistency level was not met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CoordinatorError {
    /// No ring yet (the node is still learning the cluster).
    #[error("no ring: the cluster has no available member yet")]
    NoRing,
    /// Too few replicas up to even try.
    #[error("{needed} replicas needed, only {up} of {replicas} are up")]
    Unavailable {
        /// Answers needed.
        needed: usize,
        /// Replicas up.
        up: usize,
        /// Replicas in the preference list.
        replicas: usize,
    },
    /// Too many replica calls failed or timed out.
    #[error("{needed} replicas needed, only {answered} answered")]
    Failed {
        /// Answers needed.
        needed: usize,
        /// Answers received.
        answered: usize,
    },
}

/// Coordinates requests. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    applier: Applier,
    storage: Storage,
    routing: Arc<Routing>,
    peer: Arc<dyn Peer>,
    hlc: Arc<Hlc>,
    rf: ReplicationFactor,
    metrics: Arc<Metrics>,
    background: Background,
    hints: Hints,
}

/// The pieces a coordinator works with.
pub(crate) struct CoordinatorParts {
    /// This node's engine, written in groups.
    pub(crate) applier: Applier,
    /// This node's engine, read directly.
    pub(crate) storage: Storage,
    /// The cluster view and the write gate.
    pub(crate) routing: Arc<Routing>,
    /// This node's clock.
    pub(crate) hlc: Arc<Hlc>,
    /// Replicas per key.
    pub(crate) rf: ReplicationFactor,
    /// Replica calls to the other nodes.
    pub(crate) peer: Arc<dyn Peer>,
    /// Replica call counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Most replica calls in flight that may outlive their request
    /// ([`background`]).
    pub(crate) max_background_calls: usize,
    /// Where writes that a replica missed are kept for it.
    pub(crate) hints: Hints,
}

impl Coordinator {
    /// A coordinator of `parts`.
    pub(crate) fn new(parts: CoordinatorParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                applier: parts.applier,
                storage: parts.storage,
                routing: parts.routing,
                peer: parts.peer,
                hlc: parts.hlc,
                rf: parts.rf,
                metrics: parts.metrics,
                background: Background::new(parts.max_background_calls),
                hints: parts.hints,
            }),
        }
    }

    /// Waits up to `deadline` for the replica calls still in flight (tail
    /// writes, read repairs) and cancels the rest; for a node that has
    /// stopped taking requests.
    pub(crate) async fn shutdown(&self, deadline: Duration) {
        self.inner.background.shutdown(deadline).await;
    }

    /// Writes `value` (`None` deletes) under `key`; returns the version.
    pub(crate) async fn write(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        consistency: Consistency,
    ) -> Result<u64, CoordinatorError> {
        let view = self.inner.routing.view();
        if view.ring.is_none() {
            return Err(CoordinatorError::NoRing);
        }
        // Counted until the answer, so that this node acknowledges no write
        // routed by this view after it has told the cluster it routes by a
        // newer one (membership's `seen`).
        let _in_flight = self.inner.routing.begin_write(view.epoch);
        let replicas = view.replicas(&key, self.inner.rf);
        let pending = view.pending(&key, self.inner.rf);
        // Cassandra's rule: each pending replica adds one to the acks
        // needed, so an acknowledged write reaches the level's count among
        // the replicas of the ring after the move as well as before it.
        let needed = consistency.required(replicas.len()) + pending.len();
        let (up, down): (Vec<_>, Vec<_>) = replicas
            .iter()
            .map(|m| (*m, m.serving()))
            .chain(pending.iter().map(|m| (*m, m.live)))
            .partition(|(_, up)| *up);
        let up: Vec<Arc<MemberInfo>> = up.into_iter().map(|(m, _)| m.clone()).collect();
        if up.len() < needed {
            return Err(CoordinatorError::Unavailable {
                needed,
                up: up.len(),
                replicas: replicas.len(),
            });
        }
        let version = self.inner.hlc.now();
        let record = match value {
            Some(v) => Record::value(version, v),
            None => Record::tombstone(version),
        };
        // Encoded once; every replica call shares these bytes. The client's
        // body is released as soon as this is built.
        let body = encode_apply(&key, &record);
        drop(record);
        let (tx, mut rx) = mpsc::channel(up.len().max(1));
        let sent = up.len();
        for member in up {
            // Any call may end up past the required acks, still running
            // after the client has its answer, so each is started in the
            // background set with room of its own (see `background`).
            let permit = self.inner.background.reserve().await;
            let (this, body, tx) = (self.clone(), body.clone(), tx.clone());
            self.inner.background.spawn(permit, async move {
                let ok = this.apply_on(&member, body.clone(), ReplicaOp::apply).await;
                let _ = tx.send(ok).await;
                if !ok && member.id != *this.inner.routing.self_id() {
                    this.inner.hints.hint(&member.id, body).await;
                }
            });
        }
        drop(tx);
        // Stored while the replica calls are out, not before them.
        for (member, _) in down {
            self.inner.hints.hint(&member.id, body.clone()).await;
        }
        let (mut acks, mut failures) = (0, 0);
        while let Some(ok) = rx.recv().await {
            if ok {
                acks += 1;
                if acks >= needed {
                    return Ok(version);
                }
            } else {
                failures += 1;
                if sent - failures < needed {
                    break;
                }
            }
        }
        Err(CoordinatorError::Failed {
            needed,
            answered: acks,
        })
    }

    /// Reads `key`: the newest record among the required replicas, or `None`
    /// if none holds it. Tombstones are returned as such.
    pub(crate) async fn read(
        &self,
        key: Bytes,
        consistency: Consistency,
    ) -> Result<Option<Record>, CoordinatorError> {
        let view = self.inner.routing.view();
        if view.ring.is_none() {
            return Err(CoordinatorError::NoRing);
        }
        let replicas = view.replicas(&key, self.inner.rf);
        let needed = consistency.required(replicas.len());
        // Reads go only to AVAILABLE nodes, this node first: a local read
        // costs no network hop.
        let mut candidates: Vec<Arc<MemberInfo>> = replicas
            .iter()
            .filter(|m| m.readable() && m.state == NodeState::Available)
            .map(|m| (*m).clone())
            .collect();
        candidates.sort_by_key(|m| m.id != view.self_id);
        if candidates.len() < needed {
            return Err(CoordinatorError::Unavailable {
                needed,
                up: candidates.len(),
                replicas: replicas.len(),
            });
        }
        let mut calls = ReadCalls {
            coordinator: self,
            key: key.clone(),
            untried: candidates.into_iter(),
            calls: JoinSet::new(),
        };
        let mut answers: Vec<(Arc<MemberInfo>, Answer)> = Vec::with_capacity(needed);
        let first: Vec<Arc<MemberInfo>> = calls.untried.by_ref().take(needed).collect();
        for (i, member) in first.into_iter().enumerate() {
            // One replica sends the record, the others only its digest.
            let ask = if i == 0 { Ask::Record } else { Ask::Digest };
            if member.id == view.self_id {
                // The local replica is read in place: a task per read would
                // cost more than the read (a third of a single node's GET
                // throughput).
                match self.ask(&member, key.clone(), ask).await {
                    Some(answer) => answers.push((member, answer)),
                    None => calls.replace(ask),
                }
            } else {
                calls.start(member, ask);
            }
        }
        calls.collect(&mut answers, needed).await;
        let mismatch = if answers.len() < needed {
            None
        } else {
            mismatched_digests(&mut answers)
        };
        if let Some(doubtful) = mismatch {
            self.inner.metrics.digest_mismatch();
            // Read in full in place of their digests; a replica that fails
            // now is replaced by the next untried one, read in full too.
            for member in doubtful {
                calls.start(member, Ask::Record);
            }
            calls.collect(&mut answers, needed).await;
        }
        if answers.len() < needed {
            return Err(CoordinatorError::Failed {
                needed,
                answered: answers.len(),
            });
        }
        let newest = newest_record(&answers).cloned();
        if let Some(newest) = &newest {
            self.inner.hlc.update(newest.version);
            self.repair(&key, newest, &answers);
        }
        Ok(newest)
    }

    /// Every available replica's own record of `key`, each read in full
    /// (`None` where a replica holds nothing or does not answer), in no
    /// particular order. For values whose right copy is known by their
    /// content (file chunks named by their hash), where newest-wins cannot
    /// tell a rotten copy from a good one.
    pub(crate) async fn read_each(&self, key: Bytes) -> Vec<Option<Record>> {
        let view = self.inner.routing.view();
        let mut calls = JoinSet::new();
        for member in view.replicas(&key, self.inner.rf) {
            if !(member.readable() && member.state == NodeState::Available) {
                continue;
            }
            let (this, member, key) = (self.clone(), Arc::clone(member), key.clone());
            calls.spawn(crate::peer::trace::carried(async move {
                match this.ask(&member, key, Ask::Record).await {
                    Some(Answer::Record(record)) => record,
                    _ => None,
                }
            }));
        }
        let mut records = Vec::with_capacity(calls.len());
        while let Some(done) = calls.join_next().await {
            records.push(done.unwrap_or_default());
        }
        records
    }

    /// Every member's page of its manifests for `request` (`files::index`):
    /// members that own or are taking over ranges are asked, this one
    /// locally; those down or failing are named in `unanswered`.
    pub(crate) async fn list_files(&self, request: &ListRequest) -> FileListing {
        let view = self.inner.routing.view();
        let mut listing = FileListing::default();
        let mut calls = JoinSet::new();
        // Members asked that have not answered yet; a call that panics
        // stays here.
        let mut waiting = std::collections::BTreeSet::new();
        for member in view.members.values() {
            if !(member.state.in_ring() || member.state.in_transition()) {
                continue;
            }
            if member.id == *self.inner.routing.self_id() {
                listing
                    .pages
                    .push(self.inner.storage.manifests().page(request));
                continue;
            }
            if !member.live {
                listing.unanswered.push(member.id.to_string());
                continue;
            }
            waiting.insert(member.id.to_string());
            let (this, member, request) = (self.clone(), Arc::clone(member), request.clone());
            calls.spawn(async move {
                let page = this
                    .inner
                    .peer
                    .list_files(member.endpoint(), &request)
                    .await;
                (member.id.to_string(), page)
            });
        }
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((id, Ok(page))) => {
                    waiting.remove(&id);
                    listing.pages.push(page);
                }
                Ok((id, Err(e))) => {
                    tracing::debug!(node = %id, error = %e, "listing files: no page")
                }
                Err(e) => tracing::error!(error = %e, "listing files: a call panicked"),
            }
        }
        listing.unanswered.extend(waiting);
        listing.asked = listing.pages.len() + listing.unanswered.len();
        listing.unanswered.sort();
        listing
    }

    /// Sends `newest` to every answering replica that holds something
    /// else (older, by the digest path's rules), in the background; skipped
    /// (and counted) for a replica when the background set is full.
    fn repair(&self, key: &Bytes, newest: &Record, answers: &[(Arc<MemberInfo>, Answer)]) {
        let newest_digest = OnceCell::new();
        let mut body = None;
        for (member, answer) in answers {
            let holds_newest = match answer {
                Answer::Record(record) => record.as_ref() == Some(newest),
                Answer::Digest(digest) => {
                    *digest == Some(*newest_digest.get_or_init(|| RecordDigest::of(newest)))
                }
            };
            if holds_newest {
                continue;
            }
            let Some(permit) = self.inner.background.try_reserve() else {
                self.inner.metrics.read_repair_skipped();
                tracing::debug!(node = %member.id, "read repair skipped: background set full");
                continue;
            };
            let body = body
                .get_or_insert_with(|| encode_apply(key, newest))
                .clone();
            let (this, member) = (self.clone(), member.clone());
            self.inner.background.spawn(permit, async move {
                this.apply_on(&member, body, ReplicaOp::repair).await;
            });
        }
    }

    /// Applies an apply `body` ([`encode_apply`]) on one replica; whether it
    /// acknowledged.
    async fn apply_on(&self, member: &MemberInfo, body: Bytes, op: ReplicaOp) -> bool {
        let inner = &self.inner;
        if member.id == *inner.routing.self_id() {
            // The local replica decodes the very bytes the remote ones
            // receive, so its record is a slice of them and the engine
            // stores that slice as it is, in a group with the node's other
            // replica writes.
            let result = match decode_apply(body) {
                Ok(item) => inner
                    .applier
                    .apply(vec![item])
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let ok = match result {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "local apply failed");
                    false
                }
            };
            inner.metrics.replica_call(op, Target::local, outcome(ok));
            return ok;
        }
        let result = match inner.peer.apply(member.endpoint(), body).await {
            Ok(()) => Outcome::ok,
            Err(e) => remote_failure(&member.id, "apply", &e),
        };
        inner.metrics.replica_call(op, Target::remote, result);
        result == Outcome::ok
    }

    /// Asks one replica for the record of `key`, or only its digest:
    /// `Some(answer)` if it answered, `None` if it failed.
    async fn ask(&self, member: &MemberInfo, key: Bytes, ask: Ask) -> Option<Answer> {
        let inner = &self.inner;
        let op = match ask {
            Ask::Record => ReplicaOp::read,
            Ask::Digest => ReplicaOp::digest,
        };
        if member.id == *inner.routing.self_id() {
            // The engine's read path does not wait on writers (memtable and
            // mmapped tables), so it runs inline rather than on the blocking
            // pool, whose hand-off would cost more than the read.
            let answer = match inner.storage.read(&key) {
                Ok(record) => Some(match ask {
                    Ask::Record => Answer::Record(record),
                    Ask::Digest => Answer::Digest(record.as_ref().map(RecordDigest::of)),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "local read failed");
                    None
                }
            };
            inner
                .metrics
                .replica_call(op, Target::local, outcome(answer.is_some()));
            return answer;
        }
        let to = member.endpoint();
        let result = match ask {
            Ask::Record => inner.peer.read(to, key).await.map(Answer::Record),
            Ask::Digest => inner.peer.read_digest(to, key).await.map(Answer::Digest),
        };
        let (answer, result) = match result {
            Ok(answer) => (Some(answer), Outcome::ok),
            Err(e) => (None, remote_failure(&member.id, ask.call(), &e)),
        };
        inner.metrics.replica_call(op, Target::remote, result);
        if let Some(Answer::Record(Some(record))) = &answer {
            inner.hlc.update(record.version);
        }
        answer
    }
}

/// The members' answers to one page of a file listing.
#[derive(Debug, Default)]
pub(crate) struct FileListing {
    /// The pages of the members that answered.
    pub(crate) pages: Vec<Vec<Listed>>,
    /// The members asked, answering or not.
    pub(crate) asked: usize,
    /// The members that did not answer, by id.
    pub(crate) unanswered: Vec<String>,
}

/// What a read asks of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// The record ([`Peer::read`]).
    Record,
    /// Only its digest ([`Peer::read_digest`]).
    Digest,
}

impl Ask {
    /// The call's name in logs.
    fn call(self) -> &'static str {
        match self {
            Self::Record => "read",
            Self::Digest => "read-digest",
        }
    }
}

/// What one replica answered a read.
#[derive(Debug, Clone)]
enum Answer {
    /// Its record, `None` if it holds nothing.
    Record(Option<Record>),
    /// Its record's digest, `None` if it holds nothing.
    Digest(Option<RecordDigest>),
}

/// The replica calls of one read. Owned by the read: a read that is
/// dropped (its client gone) cancels its calls, and none outlives the
/// answer.
struct ReadCalls<'a> {
    coordinator: &'a Coordinator,
    key: Bytes,
    /// Readable replicas not asked yet, in the order to ask them.
    untried: std::vec::IntoIter<Arc<MemberInfo>>,
    calls: JoinSet<(Arc<MemberInfo>, Ask, Option<Answer>)>,
}

impl ReadCalls<'_> {
    /// Asks `member`.
    fn start(&mut self, member: Arc<MemberInfo>, ask: Ask) {
        let (this, key) = (self.coordinator.clone(), self.key.clone());
        self.calls.spawn(crate::peer::trace::carried(async move {
            let answer = this.ask(&member, key, ask).await;
            (member, ask, answer)
        }));
    }

    /// Asks the next untried replica, if any, in place of one that failed.
    fn replace(&mut self, ask: Ask) {
        if let Some(next) = self.untried.next() {
            self.start(next, ask);
        }
    }

    /// Adds answers until there are `needed`, replacing each replica that
    /// fails by the next untried one; stops short when every replica has
    /// been tried. At most `needed` replicas are asked at a time, so reaching
    /// `needed` means every call has answered, the full read included.
    async fn collect(&mut self, answers: &mut Vec<(Arc<MemberInfo>, Answer)>, needed: usize) {
        while answers.len() < needed {
            let Some(joined) = self.calls.join_next().await else {
                break;
            };
            match joined {
                Ok((member, _, Some(answer))) => answers.push((member, answer)),
                Ok((_, ask, None)) => self.replace(ask),
                // A call that panicked is a failed one; the panic hook has
                // reported it. Which call it was is lost with it, and a full
                // read stands in for either kind.
                Err(_) => self.replace(Ask::Record),
            }
        }
    }
}

/// The newest record among the answers read in full (`None` if none holds
/// one).
fn newest_record(answers: &[(Arc<MemberInfo>, Answer)]) -> Option<&Record> {
    answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Record(record) => record.as_ref(),
            Answer::Digest(_) => None,
        })
        .fold(None, |best, r| match best {
            Some(b) if !r.supersedes(b) => Some(b),
            _ => Some(r),
        })
}

/// Compares the digests among `answers` with the newest record read in
/// full: `None` if they all match it. Otherwise takes out the digests that
/// may stand for something newer (a record where none was read, a higher
/// version, or the same version with other bytes) and returns their
/// replicas, to be read in full. The digests left behind say that their
/// replica holds the newest record or one that loses to it (nothing, or a
/// lower version): enough to answer, and to repair them.
fn mismatched_digests(
    answers: &mut Vec<(Arc<MemberInfo>, Answer)>,
) -> Option<Vec<Arc<MemberInfo>>> {
    if !answers.iter().any(|(_, a)| matches!(a, Answer::Digest(_))) {
        return None;
    }
    let newest = newest_record(answers).map(|r| (r.version, RecordDigest::of(r)));
    let matches = |answer: &Answer| match answer {
        Answer::Digest(digest) => *digest == newest.map(|(_, d)| d),
        Answer::Record(_) => true,
    };
    if answers.iter().all(|(_, answer)| matches(answer)) {
        return None;
    }
    let loses = |digest: &Option<RecordDigest>| match (digest, newest) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(d), Some((version, _))) => d.version < version,
    };
    let mut doubtful = Vec::new();
    answers.retain(|(member, answer)| match answer {
        Answer::Digest(digest) if !matches(answer) && !loses(digest) => {
            doubtful.push(member.clone());
            false
        }
        _ => true,
    });
    Some(doubtful)
}

fn outcome(ok: bool) -> Outcome {
    if ok {
        Outcome::ok
    } else {
        Outcome::error
    }
}

/// The metrics outcome of a failed replica call; logs it, loudly when the
/// replica answered wrong rather than not at all.
fn remote_failure(node: &strata_ring::NodeId, call: &str, e: &PeerError) -> Outcome {
    match e {
        PeerError::Timeout => {
            tracing::debug!(%node, call, error = %e, "replica call failed");
            Outcome::timeout
        }
        PeerError::Unreachable(_) => {
            tracing::debug!(%node, call, error = %e, "replica call failed");
            Outcome::error
        }
        PeerError::Refused { .. } | PeerError::BadAnswer(_) => {
            tracing::warn!(%node, call, error = %e, "replica refused the call");
            Outcome::error
        }
    }
}
