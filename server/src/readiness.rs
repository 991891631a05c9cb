//! When a node answers `GET /ready` with 200: when it can serve the default
//! consistency level (QUORUM) for its ranges, not merely when it publishes
//! AVAILABLE. A restarted node is AVAILABLE from its first instant (its
//! `node.json` says so), but until gossip has brought it the other members
//! its ring holds only itself, or a part of the cluster, and a QUORUM write
//! through it fails, or worse, is acknowledged by too few replicas.
//!
//! Ready means all of:
//!
//! 1. **WAL replayed**: by construction, the router only serves once the
//!    engine has opened, and opening replays the logs.
//! 2. **AVAILABLE**, and the engine takes writes (checked by the handler).
//! 3. **Membership settled**: the ring this node routes by is the ring that
//!    every live member in the ring publishes (its `ring` digest), and at
//!    least one such member agrees, so it has heard the ring from someone.
//!    A node that expects no peer (alone, never restarted) is settled at
//!    once; one that expects peers but hears none settles alone after
//!    [`SETTLE_ALONE_ROUNDS`] gossip rounds, so a lone restarted seed still
//!    comes up. Settling happens once per run: afterwards a ring change
//!    that peers learn a round later must not flap readiness.
//! 4. **Quorum of replicas**: every range this node replicates has a
//!    QUORUM of its replicas serving (up and AVAILABLE or LEAVING) in this
//!    node's view, itself included.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strata_ring::{ReplicationFactor, TokenRange};

use crate::coordinator::Consistency;
use crate::view::{ring_digest, ClusterView, MemberInfo, NodeState};

/// Gossip rounds a node that expects peers waits to hear one before it
/// settles alone: at the default 100 ms interval, 3 s, many times what a
/// live peer takes to answer.
pub(crate) const SETTLE_ALONE_ROUNDS: u32 = 30;

/// Why a node is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum NotReady {
    /// It is not AVAILABLE.
    #[error("node is {}", .0.as_str())]
    State(NodeState),
    /// Its ring is not yet the one its peers publish.
    #[error("membership not settled: {0}")]
    Unsettled(String),
    /// It has no ring yet.
    #[error("no ring yet")]
    NoRing,
    /// One of its ranges lacks a quorum of serving replicas.
    #[error("range {range:?}: {up} of {replicas} replicas serving, QUORUM needs {needed}")]
    NoQuorum {
        /// The range.
        range: TokenRange,
        /// Its replicas serving.
        up: usize,
        /// Its replicas.
        replicas: usize,
        /// Replicas QUORUM needs.
        needed: usize,
    },
}

/// The readiness of one run of a node; see the module doc.
#[derive(Debug)]
pub(crate) struct Readiness {
    /// Latched once membership settled.
    settled: AtomicBool,
    /// Whether the node has peers to hear: it has other seeds, or it served
    /// before (a restart).
    expects_peers: bool,
    started: Instant,
    settle_alone_after: Duration,
}

impl Readiness {
    /// The readiness of a run starting now.
    pub(crate) fn new(expects_peers: bool, gossip_interval: Duration) -> Self {
        Self {
            settled: AtomicBool::new(false),
            expects_peers,
            started: Instant::now(),
            settle_alone_after: gossip_interval * SETTLE_ALONE_ROUNDS,
        }
    }

    /// `Ok` when a node in `state` routing by `view` is ready.
    pub(crate) fn check(
        &self,
        state: NodeState,
        view: &ClusterView,
        rf: ReplicationFactor,
    ) -> Result<(), NotReady> {
        if state != NodeState::Available {
            return Err(NotReady::State(state));
        }
        self.settle(view)?;
        quorum(view, rf)
    }

    fn settle(&self, view: &ClusterView) -> Result<(), NotReady> {
        if self.settled.load(Ordering::Acquire) {
            return Ok(());
        }
        match agreement(view) {
            Agreement::Agrees => {}
            Agreement::Disagrees(peers) => {
                return Err(NotReady::Unsettled(format!(
                    "{} route by another ring",
                    peers.join(", ")
                )))
            }
            Agreement::NobodyHeard
                if self.expects_peers && self.started.elapsed() < self.settle_alone_after =>
            {
                return Err(NotReady::Unsettled(
                    "no member in the ring heard from yet".into(),
                ))
            }
            Agreement::NobodyHeard => {}
        }
        if !self.settled.swap(true, Ordering::AcqRel) {
            tracing::info!(
                after_ms = self.started.elapsed().as_millis(),
                members = view.members.len(),
                "membership settled"
            );
        }
        Ok(())
    }
}

/// What the live ring members publish of their rings, against this node's.
#[derive(Debug, PartialEq)]
enum Agreement {
    /// At least one publishes this node's ring and none another.
    Agrees,
    /// These publish another ring.
    Disagrees(Vec<String>),
    /// None publishes a ring yet.
    NobodyHeard,
}

fn agreement(view: &ClusterView) -> Agreement {
    let mine = ring_digest(view.ring.as_ref());
    let peers: Vec<&MemberInfo> = view
        .members
        .values()
        .filter(|m| m.id != view.self_id && m.live && m.state.in_ring() && !m.ring.is_empty())
        .map(|m| &**m)
        .collect();
    if peers.is_empty() {
        return Agreement::NobodyHeard;
    }
    let other: Vec<String> = peers
        .iter()
        .filter(|m| m.ring != mine)
        .map(|m| m.id.to_string())
        .collect();
    if other.is_empty() {
        Agreement::Agrees
    } else {
        Agreement::Disagrees(other)
    }
}

/// `Ok` when every range this node replicates has a QUORUM of serving
/// replicas; this node counts as serving (the caller checked it is
/// AVAILABLE).
fn quorum(view: &ClusterView, rf: ReplicationFactor) -> Result<(), NotReady> {
    let ring = view.ring.as_ref().ok_or(NotReady::NoRing)?;
    for (range, others) in ring.replica_sets(&view.self_id, rf) {
        let replicas = others.len() + 1;
        let up = 1 + others
            .iter()
            .filter(|id| view.members.get(*id).is_some_and(|m| m.serving()))
            .count();
        let needed = Consistency::Quorum.required(replicas);
        if up < needed {
            return Err(NotReady::NoQuorum {
                range,
                up,
                replicas,
                needed,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    const ROUND: Duration = Duration::from_millis(1);

    fn view(members: Vec<MemberInfo>) -> ClusterView {
        let members: BTreeMap<_, _> = members.into_iter().map(|m| (m.id.clone(), m)).collect();
        ClusterView::build("a".into(), members, 1)
    }

    fn member(id: &str) -> MemberInfo {
        MemberInfo::for_test(id, NodeState::Available, 1)
    }

    /// The three-node cluster `a`, `b`, `c` with every member publishing
    /// the ring they make.
    fn agreed() -> Vec<MemberInfo> {
        let digest = ring_digest(
            view(vec![member("a"), member("b"), member("c")])
                .ring
                .as_ref(),
        );
        ["a", "b", "c"]
            .into_iter()
            .map(|id| MemberInfo {
                ring: digest.clone(),
                ..member(id)
            })
            .collect()
    }

    fn rf3() -> ReplicationFactor {
        ReplicationFactor::new(3).unwrap()
    }

    #[test]
    fn a_restarted_node_that_heard_nobody_is_not_ready() {
        let readiness = Readiness::new(true, Duration::from_secs(60));
        // Its ring is itself alone: one replica, so QUORUM would be met by
        // one write, which is the false readiness this guards against.
        let alone = view(vec![member("a")]);
        assert!(matches!(
            readiness.check(NodeState::Available, &alone, rf3()),
            Err(NotReady::Unsettled(_))
        ));
    }

    #[test]
    fn a_partial_ring_is_not_settled_and_the_whole_one_is() {
        let readiness = Readiness::new(true, Duration::from_secs(60));
        let mut members = agreed();
        // Heard b (which knows c) but not yet c's record.
        members.pop();
        let partial = view(members);
        let err = readiness
            .check(NodeState::Available, &partial, rf3())
            .unwrap_err();
        assert_eq!(
            err,
            NotReady::Unsettled("b route by another ring".into()),
            "{err}"
        );
        let whole = view(agreed());
        assert_eq!(readiness.check(NodeState::Available, &whole, rf3()), Ok(()));
        // Settled for good: a peer a round behind on a later ring change
        // does not take readiness away.
        let mut behind = agreed();
        behind[1].ring = "0000000000000000".into();
        assert_eq!(
            readiness.check(NodeState::Available, &view(behind), rf3()),
            Ok(())
        );
    }

    #[test]
    fn a_range_without_a_quorum_of_serving_replicas_is_not_ready() {
        let readiness = Readiness::new(true, ROUND);
        let mut members = agreed();
        members[1].live = false;
        // One of three down: QUORUM (2) still met everywhere.
        assert_eq!(
            readiness.check(NodeState::Available, &view(members.clone()), rf3()),
            Ok(())
        );
        members[2].live = false;
        let err = readiness
            .check(NodeState::Available, &view(members), rf3())
            .unwrap_err();
        assert!(
            matches!(
                err,
                NotReady::NoQuorum {
                    up: 1,
                    replicas: 3,
                    needed: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn only_available_nodes_are_ready_and_lone_ones_settle_at_once() {
        let lone = Readiness::new(false, Duration::from_secs(60));
        let alone = view(vec![member("a")]);
        assert_eq!(
            lone.check(NodeState::Joining, &alone, rf3()),
            Err(NotReady::State(NodeState::Joining))
        );
        assert_eq!(lone.check(NodeState::Available, &alone, rf3()), Ok(()));
        // A restarted seed that hears nobody comes up after the grace.
        let seed = Readiness::new(true, ROUND);
        std::thread::sleep(ROUND * SETTLE_ALONE_ROUNDS);
        assert_eq!(seed.check(NodeState::Available, &alone, rf3()), Ok(()));
    }
}
