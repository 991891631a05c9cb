//! Delivering hints: a task owned by the node's `Tasks` that, every
//! [`ROUND`], looks at each target with hints in the current view and
//!
//! - **delivers** them when the target is up: oldest first, in batches of
//!   [`BATCH`] with up to [`IN_FLIGHT`] calls at once, each call paid for
//!   from the shared background [`Throttle`], each hint deleted once the
//!   target acknowledged it. A failure ends the target's turn (it is tried
//!   again after a back-off): a target that just went down again costs a
//!   few calls, not a batch of timeouts;
//! - **hands them off** when the target left the ring (published LEFT, or
//!   gone from the view for [`ABSENT_GRACE`] while this node hears from
//!   other members): each hint goes to the key's
//!   current replicas, pending ones included, and is hinted again for those
//!   of them that are down. Apply is last-writer-wins, so a replica that
//!   already holds the write, or a newer one, is unchanged;
//! - otherwise (the target is down) only **expires** the hints that
//!   outlived the window.
//!
//! Hints of one batch travel concurrently, so their order of arrival is not
//! their order of storage; last-writer-wins makes the order of applies
//! irrelevant, and a batch is never started before the previous one is
//! done, so the store always drains from its oldest end.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_ring::{NodeId, ReplicationFactor};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::store::Hint;
use super::{HintError, Hints};
use crate::membership::{ClusterView, MemberInfo, Membership, NodeState};
use crate::peer::wire::decode_apply;
use crate::peer::Peer;
use crate::throttle::Throttle;

/// How often the task looks for targets to deliver to. Short, so that a
/// target back up gets its hints within a second of being seen up.
pub(crate) const ROUND: Duration = Duration::from_millis(500);
/// Hints read from the store at a time.
const BATCH: usize = 256;
/// Calls in flight to one target at once: enough to hide a round trip,
/// few enough that a target catching up still answers its clients. 32
/// delivered 100,000 hints no faster than 16 (about 12 s from the restart,
/// release build, 2 shared cores): the target's CPU is the limit, not the
/// round trips. The byte budget alone does not bound this: 100,000 small
/// hints are a few MiB, well within a second of it, yet each is a call.
const IN_FLIGHT: usize = 16;
/// How long a target must be missing from the view before its hints are
/// handed to the key's replicas: a node that just started learns the
/// members by gossip within seconds, and must not take "not heard of yet"
/// for "removed".
const ABSENT_GRACE: Duration = Duration::from_secs(60);
/// Back-off bounds after a failed turn.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the replay works with.
pub(crate) struct Replay {
    /// The node's hints.
    pub(crate) hints: Hints,
    /// The cluster view.
    pub(crate) membership: Arc<Membership>,
    /// Calls to the targets.
    pub(crate) peer: Arc<dyn Peer>,
    /// The shared background byte budget.
    pub(crate) throttle: Throttle,
    /// Replicas per key (for hand-off).
    pub(crate) rf: ReplicationFactor,
}

/// What to do with a target's hints in this round.
enum Fate<'a> {
    Deliver(&'a MemberInfo),
    HandOff,
    Wait,
}

/// Why a target's turn ended before its hints did.
#[derive(Debug, thiserror::Error)]
enum TurnError {
    #[error(transparent)]
    Store(#[from] HintError),
    #[error("{undelivered} of a batch of {batch} hints not acknowledged")]
    Undelivered { undelivered: usize, batch: usize },
}

impl Replay {
    /// Runs until cancelled.
    pub(crate) async fn run(self) {
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut absent_since: HashMap<NodeId, Instant> = HashMap::new();
        let mut retry: HashMap<NodeId, (Instant, Duration)> = HashMap::new();
        loop {
            tick.tick().await;
            let view = self.membership.view();
            self.hints.observe_down(
                view.members
                    .values()
                    .filter(|m| !m.live && m.id != view.self_id)
                    .map(|m| &m.id),
            );
            let now = Instant::now();
            absent_since.retain(|id, _| !view.members.contains_key(id));
            for target in self.hints.pending().into_keys() {
                if retry.get(&target).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let turn = match fate(&view, &target, &mut absent_since, now) {
                    Fate::Deliver(member) => self.deliver(&target, member).await,
                    Fate::HandOff => self.hand_off(&target, &view).await,
                    Fate::Wait => match self.hints.oldest(&target, None, 0).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(e.into()),
                    },
                };
                match turn {
                    Ok(()) => {
                        retry.remove(&target);
                    }
                    Err(e) => {
                        let (_, last) = retry.get(&target).copied().unwrap_or((now, RETRY_MIN / 2));
                        let backoff = (last * 2).clamp(RETRY_MIN, RETRY_MAX);
                        tracing::info!(target = %target, error = %e, retry_in = ?backoff, "hint replay paused");
                        retry.insert(target, (now + backoff, backoff));
                    }
                }
            }
        }
    }

    /// Delivers `target`'s hints to it until none are left or one fails.
    async fn deliver(&self, target: &NodeId, member: &MemberInfo) -> Result<(), TurnError> {
        let (peer, member) = (self.peer.clone(), Arc::new(member.clone()));
        let delivered = self
            .drain(target, move |body| {
                let (peer, member) = (peer.clone(), member.clone());
                async move { peer.apply(member.endpoint(), body).await.is_ok() }
            })
            .await?;
        if delivered > 0 {
            tracing::info!(target = %target, delivered, "hints delivered");
        }
        Ok(())
    }

    /// Hands `target`'s hints to each key's current replicas.
    async fn hand_off(&self, target: &NodeId, view: &Arc<ClusterView>) -> Result<(), TurnError> {
        let (peer, hints, view, rf) =
            (self.peer.clone(), self.hints.clone(), view.clone(), self.rf);
        let handed = self
            .drain(target, move |body| {
                hand_one(peer.clone(), hints.clone(), view.clone(), rf, body)
            })
            .await?;
        if handed > 0 {
            tracing::info!(target = %target, handed, "hints of a node gone from the ring handed to the keys' replicas");
        }
        Ok(())
    }

    /// Sends `target`'s hints through `send`, batch after batch, deleting
    /// each acknowledged one, until none are left or one fails; how many
    /// went.
    async fn drain<F, Fut>(&self, target: &NodeId, send: F) -> Result<usize, TurnError>
    where
        F: Fn(Bytes) -> Fut,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let (mut sent, mut after) = (0, None);
        loop {
            let batch = self.hints.oldest(target, after.take(), BATCH).await?;
            if batch.is_empty() {
                return Ok(sent);
            }
            let (acked, batch_len) = self.send_all(batch, &send).await;
            let undelivered = batch_len - acked.len();
            sent += acked.len();
            after = acked.iter().map(|h| h.key.clone()).max();
            self.hints.delivered(target, acked).await?;
            if undelivered > 0 {
                return Err(TurnError::Undelivered {
                    undelivered,
                    batch: batch_len,
                });
            }
        }
    }

    /// Sends each of `batch` through `send`, up to [`IN_FLIGHT`] at once,
    /// each paid for from the throttle; stops starting new ones after the
    /// first failure. The hints acknowledged, and the batch's length.
    async fn send_all<F, Fut>(&self, batch: Vec<Hint>, send: &F) -> (Vec<Hint>, usize)
    where
        F: Fn(Bytes) -> Fut,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let batch_len = batch.len();
        let mut set = JoinSet::new();
        let mut acked = Vec::with_capacity(batch_len);
        let mut failed = false;
        for hint in batch {
            while set.len() >= IN_FLIGHT {
                failed |= !settle(set.join_next().await, &mut acked);
            }
            if failed {
                break;
            }
            self.throttle.spend(hint.size).await;
            let call = send(hint.body.clone());
            set.spawn(async move { (hint, call.await) });
        }
        while !set.is_empty() {
            settle(set.join_next().await, &mut acked);
        }
        (acked, batch_len)
    }
}

/// Adds a finished call's hint to `acked` if it was acknowledged; whether
/// it was (an empty set counts as no failure).
fn settle(joined: Option<Result<(Hint, bool), JoinError>>, acked: &mut Vec<Hint>) -> bool {
    match joined {
        Some(Ok((hint, true))) => {
            acked.push(hint);
            true
        }
        Some(Ok((_, false)) | Err(_)) => false,
        None => true,
    }
}

/// What to do with `target`'s hints in `view`.
fn fate<'a>(
    view: &'a ClusterView,
    target: &NodeId,
    absent_since: &mut HashMap<NodeId, Instant>,
    now: Instant,
) -> Fate<'a> {
    match view.members.get(target) {
        Some(m) if m.state == NodeState::Left => Fate::HandOff,
        Some(m) if m.live => Fate::Deliver(m),
        Some(_) => Fate::Wait,
        None => {
            let since = *absent_since.entry(target.clone()).or_insert(now);
            // A node that hears from no one else knows nothing about who
            // left: it may be the one cut off.
            let hears_others = view
                .members
                .values()
                .any(|m| m.live && m.id != view.self_id);
            if hears_others && now.duration_since(since) >= ABSENT_GRACE {
                Fate::HandOff
            } else {
                Fate::Wait
            }
        }
    }
}

/// Applies `body` on every current replica of its key that is up, and
/// hints it for the ones that are down; whether every one that is up
/// acknowledged (and there was one).
async fn hand_one(
    peer: Arc<dyn Peer>,
    hints: Hints,
    view: Arc<ClusterView>,
    rf: ReplicationFactor,
    body: Bytes,
) -> bool {
    // The store checked the body when it read it back.
    let Ok((key, _)) = decode_apply(body.clone()) else {
        return false;
    };
    let replicas: Vec<MemberInfo> = view
        .replicas(&key, rf)
        .into_iter()
        .chain(view.pending(&key, rf))
        .cloned()
        .collect();
    let mut all = !replicas.is_empty();
    for replica in replicas {
        if replica.live {
            all &= peer.apply(replica.endpoint(), body.clone()).await.is_ok();
        } else {
            hints.hint(&replica.id, body.clone()).await;
        }
    }
    all
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use strata_ring::TokenRange;

    use super::*;
    use crate::config::HintLimits;
    use crate::metrics::HintMetrics;
    use crate::peer::repair::{DigestAnswer, DigestRequest, RowsAnswer, RowsRequest};
    use crate::peer::wire::encode_apply;
    use crate::peer::{Chunks, Endpoint, PeerError};
    use crate::storage::Record;

    /// Applies nothing; remembers who was sent what, and refuses `refuse`.
    #[derive(Default)]
    struct FakePeer {
        applied: Mutex<Vec<(NodeId, Bytes)>>,
        refuse: Option<NodeId>,
    }

    #[async_trait]
    impl Peer for FakePeer {
        async fn apply(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
            if self.refuse.as_ref() == Some(to.id) {
                return Err(PeerError::Refused { status: 503 });
            }
            self.applied.lock().push((to.id.clone(), body));
            Ok(())
        }

        async fn apply_batch(&self, _: Endpoint<'_>, _: Bytes) -> Result<(), PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }

        async fn read(&self, _: Endpoint<'_>, _: Bytes) -> Result<Option<Record>, PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }

        async fn stream(
            &self,
            _: Endpoint<'_>,
            _: TokenRange,
            _: Option<&[u8]>,
        ) -> Result<Box<dyn Chunks>, PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }

        async fn digest(
            &self,
            _: Endpoint<'_>,
            _: &DigestRequest,
        ) -> Result<DigestAnswer, PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }

        async fn repair_rows(
            &self,
            _: Endpoint<'_>,
            _: &RowsRequest,
        ) -> Result<RowsAnswer, PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }
    }

    /// `a` (this node) and `b` up, `c` down, `gone` LEFT; RF 3 puts every
    /// key on a, b and c.
    fn view() -> Arc<ClusterView> {
        let mut members = BTreeMap::new();
        for (id, state, live) in [
            ("a", NodeState::Available, true),
            ("b", NodeState::Available, true),
            ("c", NodeState::Available, false),
            ("gone", NodeState::Left, false),
        ] {
            let mut m = MemberInfo::for_test(id, state, 1);
            m.live = live;
            members.insert(m.id.clone(), m);
        }
        Arc::new(ClusterView::build(NodeId::from("a"), members, 1))
    }

    fn hints(dir: &std::path::Path) -> Hints {
        let limits = HintLimits {
            max_bytes_per_node: u64::MAX,
            window: Duration::from_secs(3600),
        };
        Hints::open(dir, limits, HintMetrics::default()).unwrap()
    }

    #[tokio::test]
    async fn a_left_targets_hint_goes_to_the_keys_replicas_and_is_hinted_for_the_down_one() {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        let peer = Arc::new(FakePeer::default());
        let body = encode_apply(b"k", &Record::value(7, b"v".to_vec()));
        let rf = ReplicationFactor::new(3).unwrap();
        assert!(hand_one(peer.clone(), hints.clone(), view(), rf, body.clone()).await);
        let mut to: Vec<NodeId> = peer
            .applied
            .lock()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        to.sort();
        assert_eq!(to, [NodeId::from("a"), NodeId::from("b")]);
        assert!(peer.applied.lock().iter().all(|(_, b)| *b == body));
        let pending = hints.pending();
        assert_eq!(pending.keys().collect::<Vec<_>>(), [&NodeId::from("c")]);
        assert_eq!(pending[&NodeId::from("c")].hints, 1);

        // A replica that refuses keeps the hint where it is.
        let refusing = Arc::new(FakePeer {
            refuse: Some(NodeId::from("b")),
            ..FakePeer::default()
        });
        assert!(!hand_one(refusing, hints, view(), rf, body).await);
    }

    #[test]
    fn targets_are_delivered_to_when_up_handed_off_when_gone_and_kept_otherwise() {
        let view = view();
        let mut absent = HashMap::new();
        let now = Instant::now();
        let fate_of = |id: &str, absent: &mut HashMap<NodeId, Instant>, at: Instant| match fate(
            &view,
            &NodeId::from(id),
            absent,
            at,
        ) {
            Fate::Deliver(m) => format!("deliver to {}", m.id),
            Fate::HandOff => "hand off".to_owned(),
            Fate::Wait => "wait".to_owned(),
        };
        assert_eq!(fate_of("b", &mut absent, now), "deliver to b");
        assert_eq!(fate_of("c", &mut absent, now), "wait");
        assert_eq!(fate_of("gone", &mut absent, now), "hand off");
        // Not in the view: it may not have been heard of yet, so its hints
        // wait out the grace before they move.
        assert_eq!(fate_of("removed", &mut absent, now), "wait");
        assert_eq!(
            fate_of("removed", &mut absent, now + ABSENT_GRACE / 2),
            "wait"
        );
        assert_eq!(
            fate_of("removed", &mut absent, now + ABSENT_GRACE),
            "hand off"
        );
        // Unless this node hears from no other member.
        let mut alone = BTreeMap::new();
        let me = MemberInfo::for_test("a", NodeState::Available, 1);
        alone.insert(me.id.clone(), me);
        let mut b = MemberInfo::for_test("b", NodeState::Available, 1);
        b.live = false;
        alone.insert(b.id.clone(), b);
        let alone = ClusterView::build(NodeId::from("a"), alone, 2);
        assert!(matches!(
            fate(
                &alone,
                &NodeId::from("removed"),
                &mut absent,
                now + ABSENT_GRACE
            ),
            Fate::Wait
        ));
    }
}
