//! Delivering hints: a task owned by the node's `Tasks` that, each time
//! the routing publishes a new view and at least every [`ROUND`], looks at
//! each target with hints and
//!
//! - **delivers** them when the target is up: oldest first, in apply
//!   batches ([`outbox`](super::outbox): one call per batch of up to
//!   `BATCH_TARGET` bytes, a couple in flight, each paid from the shared
//!   background [`Throttle`] before it is sent, its hints deleted once the
//!   target acknowledged it). A failure ends the target's turn (it is
//!   tried again after a back-off): a target that just went down again
//!   costs a call or two, not a batch of timeouts;
//! - **hands them off** when the target left the ring (published LEFT, or
//!   gone from the view for [`ABSENT_GRACE`] while this node hears from
//!   other members): each hint goes, in the same batches, to the key's
//!   current replicas, pending ones included, and is hinted again for
//!   those of them that are down. Apply is last-writer-wins, so a replica
//!   that already holds the write, or a newer one, is unchanged;
//! - otherwise (the target is down) only **expires** the hints that
//!   outlived the window.
//!
//! Waking on a new view rather than on a timer alone is what makes a
//! target seen up get its hints at once; the timer is for what no view
//! change announces (a hint stored for a target that is up, after a
//! timeout) and for back-offs that ran out.
//!
//! Batches to one destination may be in flight together and are applied
//! in any order; last-writer-wins makes the order of applies irrelevant.
//! Hints are read from the store oldest first and each read starts past
//! the last one, so a target's backlog of n hints costs n steps to read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strata_ring::{NodeId, ReplicationFactor};
use tokio::time::Instant;

use super::outbox::{Outbox, TurnError};
use super::store::Hint;
use super::Hints;
use crate::peer::wire::BATCH_TARGET;
use crate::peer::Peer;
use crate::routing::Routing;
use crate::throttle::Throttle;
use crate::view::{ClusterView, MemberInfo, NodeState};

/// The longest the task waits between two looks when no view is
/// published: short, so that a hint stored for a target that is up, or a
/// back-off that ran out, waits at most this long.
const ROUND: Duration = Duration::from_millis(500);
/// Bytes of hints read from the store at a time: one batch's worth, so a
/// read fills a delivery's batch and memory stays bounded by a few.
const READ_BYTES: u64 = BATCH_TARGET as u64;
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
    /// The cluster view, and its changes.
    pub(crate) routing: Arc<Routing>,
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

/// Where a turn sends each hint.
#[derive(Clone, Copy)]
enum Destinations<'a> {
    /// To the target itself.
    Target(&'a MemberInfo),
    /// To the current replicas of the hint's key, in this view.
    Replicas(&'a ClusterView),
}

impl Replay {
    /// Runs until cancelled, or until the routing is gone (the node is
    /// stopping).
    pub(crate) async fn run(self) {
        let mut views = self.routing.subscribe();
        let mut absent_since: HashMap<NodeId, Instant> = HashMap::new();
        let mut retry: HashMap<NodeId, (Instant, Duration)> = HashMap::new();
        loop {
            let view = views.borrow_and_update().clone();
            self.round(&view, &mut absent_since, &mut retry).await;
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(ROUND) => {}
            }
        }
    }

    /// One look at every target with hints, by `view`.
    async fn round(
        &self,
        view: &ClusterView,
        absent_since: &mut HashMap<NodeId, Instant>,
        retry: &mut HashMap<NodeId, (Instant, Duration)>,
    ) {
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
            let turn = match fate(view, &target, absent_since, now) {
                Fate::Deliver(member) => self.deliver(&target, member).await,
                Fate::HandOff => self.hand_off(&target, view).await,
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

    /// Delivers `target`'s hints to it until none are left or a batch
    /// fails.
    async fn deliver(&self, target: &NodeId, member: &MemberInfo) -> Result<(), TurnError> {
        let delivered = self.drain(target, Destinations::Target(member)).await?;
        if delivered > 0 {
            tracing::info!(target = %target, delivered, "hints delivered");
        }
        Ok(())
    }

    /// Hands `target`'s hints to each key's current replicas.
    async fn hand_off(&self, target: &NodeId, view: &ClusterView) -> Result<(), TurnError> {
        let handed = self.drain(target, Destinations::Replicas(view)).await?;
        if handed > 0 {
            tracing::info!(target = %target, handed, "hints of a node gone from the ring handed to the keys' replicas");
        }
        Ok(())
    }

    /// Sends `target`'s hints to `to`, oldest first, until none are left
    /// or the turn fails; how many were delivered (and deleted).
    async fn drain(&self, target: &NodeId, to: Destinations<'_>) -> Result<usize, TurnError> {
        let mut outbox = Outbox::new(
            target,
            self.hints.clone(),
            self.peer.clone(),
            self.throttle.clone(),
        );
        let mut after = None;
        while !outbox.failed() {
            let hints = match self.hints.oldest(target, after.take(), READ_BYTES).await {
                Ok(hints) => hints,
                Err(e) => {
                    outbox.fail(e.into());
                    break;
                }
            };
            let Some(last) = hints.last() else { break };
            after = Some(last.key.clone());
            for hint in hints {
                match to {
                    Destinations::Target(member) => outbox.push(hint, &[member]).await,
                    Destinations::Replicas(view) => self.to_replicas(hint, view, &mut outbox).await,
                }
            }
        }
        outbox.finish().await
    }

    /// Puts `hint` in the batches of its key's replicas that are up, and
    /// hints it again for those that are down.
    async fn to_replicas(&self, hint: Hint, view: &ClusterView, outbox: &mut Outbox) {
        let replicas: Vec<&MemberInfo> = view
            .replicas(&hint.user_key, self.rf)
            .into_iter()
            .chain(view.pending(&hint.user_key, self.rf))
            .map(|m| &**m)
            .collect();
        if replicas.is_empty() {
            outbox.fail(TurnError::NoReplicas);
            return;
        }
        let (up, down): (Vec<&MemberInfo>, Vec<&MemberInfo>) =
            replicas.into_iter().partition(|m| m.live);
        for member in down {
            self.hints.hint(&member.id, hint.body.clone()).await;
        }
        outbox.push(hint, &up).await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::collections::{BTreeMap, HashSet};

    use async_trait::async_trait;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use strata_ring::TokenRange;

    use super::*;
    use crate::config::HintLimits;
    use crate::files::index::{ListRequest, Listed};
    use crate::hints::outbox::IN_FLIGHT;
    use crate::metrics::HintMetrics;
    use crate::peer::repair::{DigestAnswer, DigestRequest, RowsAnswer, RowsRequest};
    use crate::peer::wire::{decode_apply_batch, encode_apply, max_batch_body, RecordDigest};
    use crate::peer::{Chunks, Endpoint, PeerError};
    use crate::storage::Record;

    /// A batch a destination acknowledged.
    #[derive(Debug)]
    struct Batch {
        to: NodeId,
        body_len: usize,
        /// User keys, in the batch's order.
        keys: Vec<Vec<u8>>,
    }

    /// Applies nothing; decodes every batch as the route does (whole or
    /// not at all), remembers the acknowledged ones, and refuses those to
    /// `refuse` and every one after the first `accept` calls.
    #[derive(Default)]
    struct FakePeer {
        acked: Mutex<Vec<Batch>>,
        calls: Mutex<usize>,
        refuse: Option<NodeId>,
        accept: Option<usize>,
    }

    #[async_trait]
    impl Peer for FakePeer {
        async fn apply(&self, _: Endpoint<'_>, _: Bytes) -> Result<(), PeerError> {
            Err(PeerError::Unreachable("replay sends batches only".into()))
        }

        async fn apply_batch(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
            let entries =
                decode_apply_batch(&body).map_err(|_| PeerError::Refused { status: 400 })?;
            let call = {
                let mut calls = self.calls.lock();
                *calls += 1;
                *calls
            };
            if self.refuse.as_ref() == Some(to.id) || self.accept.is_some_and(|n| call > n) {
                return Err(PeerError::Refused { status: 503 });
            }
            self.acked.lock().push(Batch {
                to: to.id.clone(),
                body_len: body.len(),
                keys: entries.iter().map(|e| e.user_key().to_vec()).collect(),
            });
            Ok(())
        }

        async fn read(&self, _: Endpoint<'_>, _: Bytes) -> Result<Option<Record>, PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }

        async fn read_digest(
            &self,
            _: Endpoint<'_>,
            _: Bytes,
        ) -> Result<Option<RecordDigest>, PeerError> {
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

        async fn list_files(
            &self,
            _: Endpoint<'_>,
            _: &ListRequest,
        ) -> Result<Vec<Listed>, PeerError> {
            Err(PeerError::Unreachable("not in this test".into()))
        }
    }

    /// `a` (this node) and `b` up, `c` down, `gone` LEFT; RF 3 puts every
    /// key on a, b and c.
    fn view() -> ClusterView {
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
        ClusterView::build(NodeId::from("a"), members, 1)
    }

    fn hints(dir: &std::path::Path) -> Hints {
        let limits = HintLimits {
            max_bytes_per_node: u64::MAX,
            window: Duration::from_secs(3600),
        };
        Hints::open(dir, limits, HintMetrics::default()).unwrap()
    }

    /// A replay by [`view`].
    fn replay(hints: &Hints, peer: &Arc<FakePeer>, throttle: Throttle) -> Replay {
        Replay {
            hints: hints.clone(),
            routing: Arc::new(Routing::new(view())),
            peer: peer.clone(),
            throttle,
            rf: ReplicationFactor::new(3).unwrap(),
        }
    }

    /// Key `i` of a backlog, in store order when stored in order of `i`.
    fn key(i: usize) -> Vec<u8> {
        format!("key-{i:06}").into_bytes()
    }

    /// Hints `n` writes for `target`; every 97th value is 20 KB, the rest
    /// 300 bytes, so batches close on entries of both sizes. Returns the
    /// largest apply body.
    async fn backlog(hints: &Hints, target: &str, n: usize) -> usize {
        let mut largest = 0;
        for i in 0..n {
            let len = if i % 97 == 0 { 20_000 } else { 300 };
            let body = encode_apply(&key(i), &Record::value(i as u64 + 1, vec![b'v'; len]));
            largest = largest.max(body.len());
            hints.hint(&NodeId::from(target), body).await;
        }
        largest
    }

    /// The user keys `target` still has hints for, oldest first.
    async fn left(hints: &Hints, target: &str) -> Vec<Vec<u8>> {
        let all = hints
            .oldest(&NodeId::from(target), None, u64::MAX)
            .await
            .unwrap();
        all.into_iter().map(|h| h.user_key.to_vec()).collect()
    }

    #[tokio::test]
    async fn delivery_sends_the_oldest_first_in_batches_of_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        let largest = backlog(&hints, "b", 3000).await;
        let peer = Arc::new(FakePeer::default());
        let view = view();
        let b = view.members[&NodeId::from("b")].clone();
        let replay = replay(&hints, &peer, Throttle::new(0));
        replay.deliver(&NodeId::from("b"), &b).await.unwrap();

        let mut batches = std::mem::take(&mut *peer.acked.lock());
        assert!(batches.len() >= 4, "{} batches", batches.len());
        assert!(batches.iter().all(|b| b.to == NodeId::from("b")));
        // Never past the target plus one entry; every batch but the last
        // filled up to the target.
        assert!(batches
            .iter()
            .all(|b| b.body_len <= max_batch_body(largest)));
        let mut sizes: Vec<usize> = batches.iter().map(|b| b.body_len).collect();
        sizes.sort_unstable();
        assert!(
            sizes[1..].iter().all(|len| *len >= BATCH_TARGET),
            "{sizes:?}"
        );
        // Each batch a run of consecutive hints, and together all of them.
        batches.sort_by(|x, y| x.keys[0].cmp(&y.keys[0]));
        let sent: Vec<Vec<u8>> = batches.into_iter().flat_map(|b| b.keys).collect();
        assert_eq!(sent, (0..3000).map(key).collect::<Vec<_>>());
        assert!(hints.pending().is_empty());
    }

    #[tokio::test]
    async fn a_refused_batch_deletes_nothing_and_ends_the_turn() {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        backlog(&hints, "b", 3000).await;
        let before = hints.pending();
        let peer = Arc::new(FakePeer {
            refuse: Some(NodeId::from("b")),
            ..FakePeer::default()
        });
        let view = view();
        let b = view.members[&NodeId::from("b")].clone();
        let replay = replay(&hints, &peer, Throttle::new(0));
        let err = replay.deliver(&NodeId::from("b"), &b).await.unwrap_err();
        assert!(
            matches!(err, TurnError::Batch { ref to, .. } if *to == NodeId::from("b")),
            "{err}"
        );
        assert_eq!(hints.pending(), before);
        assert_eq!(
            left(&hints, "b").await,
            (0..3000).map(key).collect::<Vec<_>>()
        );
        // No batch starts after the refusal is known.
        assert!(*peer.calls.lock() <= IN_FLIGHT);
    }

    #[tokio::test]
    async fn a_failure_mid_turn_deletes_exactly_the_acknowledged_batches() {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        backlog(&hints, "b", 3000).await;
        let peer = Arc::new(FakePeer {
            accept: Some(2),
            ..FakePeer::default()
        });
        let view = view();
        let b = view.members[&NodeId::from("b")].clone();
        let replay = replay(&hints, &peer, Throttle::new(0));
        assert!(replay.deliver(&NodeId::from("b"), &b).await.is_err());
        let acked: HashSet<Vec<u8>> = peer
            .acked
            .lock()
            .iter()
            .flat_map(|b| b.keys.clone())
            .collect();
        assert!(!acked.is_empty());
        let expected: Vec<Vec<u8>> = (0..3000).map(key).filter(|k| !acked.contains(k)).collect();
        assert_eq!(left(&hints, "b").await, expected);
        assert_eq!(
            hints.pending()[&NodeId::from("b")].hints,
            expected.len() as u64
        );
    }

    #[tokio::test]
    async fn a_left_targets_hints_go_in_batches_to_the_keys_replicas_and_are_hinted_for_the_down_one(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        backlog(&hints, "gone", 2000).await;
        let peer = Arc::new(FakePeer::default());
        let view = view();
        let handing = replay(&hints, &peer, Throttle::new(0));
        handing
            .hand_off(&NodeId::from("gone"), &view)
            .await
            .unwrap();

        let all: Vec<Vec<u8>> = (0..2000).map(key).collect();
        for to in ["a", "b"] {
            let mut got: Vec<Vec<u8>> = peer
                .acked
                .lock()
                .iter()
                .filter(|b| b.to == NodeId::from(to))
                .flat_map(|b| b.keys.clone())
                .collect();
            got.sort();
            assert_eq!(got, all, "to {to}");
        }
        assert!(peer.acked.lock().iter().all(|b| b.to != NodeId::from("c")));
        assert_eq!(left(&hints, "c").await, all);
        assert!(left(&hints, "gone").await.is_empty());

        // A replica that refuses keeps the hints where they are.
        backlog(&hints, "gone", 10).await;
        let refusing = Arc::new(FakePeer {
            refuse: Some(NodeId::from("b")),
            ..FakePeer::default()
        });
        let handing = replay(&hints, &refusing, Throttle::new(0));
        assert!(handing
            .hand_off(&NodeId::from("gone"), &view)
            .await
            .is_err());
        assert_eq!(left(&hints, "gone").await.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn every_batch_is_paid_from_the_throttle_before_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        backlog(&hints, "b", 3000).await;
        let peer = Arc::new(FakePeer::default());
        let view = view();
        let b = view.members[&NodeId::from("b")].clone();
        let rate = BATCH_TARGET as u64;
        let replay = replay(&hints, &peer, Throttle::new(rate));
        let start = Instant::now();
        replay.deliver(&NodeId::from("b"), &b).await.unwrap();
        let sent: usize = peer.acked.lock().iter().map(|b| b.body_len).sum();
        // A second's worth passes at once; the rest is paid at the rate.
        let owed = Duration::from_secs_f64((sent as u64 - rate) as f64 / rate as f64);
        assert!(start.elapsed() >= owed, "{:?} < {owed:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_seen_up_gets_its_hints_without_waiting_for_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let hints = hints(dir.path());
        backlog(&hints, "c", 100).await;
        let peer = Arc::new(FakePeer::default());
        let replay = replay(&hints, &peer, Throttle::new(0));
        let routing = replay.routing.clone();
        let task = tokio::spawn(replay.run());
        // The first round finds c down and waits.
        tokio::time::sleep(ROUND / 10).await;
        assert_eq!(*peer.calls.lock(), 0);
        assert_eq!(hints.pending()[&NodeId::from("c")].hints, 100);

        let published = Instant::now();
        assert!(routing.publish_with(|v| {
            let mut members: BTreeMap<_, _> = v
                .members
                .iter()
                .map(|(id, m)| (id.clone(), MemberInfo::clone(m)))
                .collect();
            members.get_mut(&NodeId::from("c")).unwrap().live = true;
            Some(ClusterView::build(v.self_id.clone(), members, v.epoch + 1))
        }));
        while !hints.pending().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            published.elapsed() < ROUND / 2,
            "delivered {:?} after the view",
            published.elapsed()
        );
        assert!(peer.acked.lock().iter().all(|b| b.to == NodeId::from("c")));
        task.abort();
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
