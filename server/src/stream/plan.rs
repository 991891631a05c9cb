//! Which ranges this node pulls, and from whom, when the ring changes: one
//! plan for a join (`bootstrap`), a leave and a removal (`handoff`).
//!
//! The ranges are the moves of [`strata_ring::plan`] between the ring
//! before and after the change that this node gains. Each range's sources
//! are its replicas before the change, in this order:
//!
//! 1. the replica that gives the range up (the joiner pushes it out, or it
//!    is the leaver): it holds every write the others might lack, so it is
//!    the snapshot source the argument of [`stream`](super) relies on;
//! 2. the other replicas before the change, in preference order;
//! 3. with every source that the failure detector calls DOWN moved last,
//!    in the same order: it may be wrong, and a DOWN source is better than
//!    none.
//!
//! Never a source: this node, a member not in a ring state (JOINING,
//! BOOTSTRAPPING, LEFT: it holds nothing for sure), a member this node does
//! not know, and the `excluded` node (a removed member: it is dead, and
//! its data must not come back).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use strata_ring::{plan, NodeId, ReplicationFactor, Ring, TokenRange};

use crate::membership::MemberInfo;

/// One range to pull and its sources, best first: what
/// [`Receiver::pull_all`](super::receiver::Receiver::pull_all) takes.
pub(crate) type Pull = (TokenRange, Vec<MemberInfo>);

/// The ranges `me` gains between `before` and `after` with their ordered
/// sources (module doc), never `excluded`.
pub(crate) fn plan_pulls(
    members: &BTreeMap<NodeId, impl Borrow<MemberInfo>>,
    before: &Ring,
    after: &Ring,
    rf: ReplicationFactor,
    me: &NodeId,
    excluded: Option<&NodeId>,
) -> Vec<Pull> {
    plan(before, after, rf)
        .incoming(me)
        .map(|m| {
            let mut sources: Vec<MemberInfo> = m
                .lost()
                .chain(m.from().iter().filter(|n| !m.lost().any(|l| l == *n)))
                .filter(|id| *id != me && Some(*id) != excluded)
                .filter_map(|id| members.get(id).map(Borrow::borrow))
                .filter(|s| s.state.in_ring())
                .cloned()
                .collect();
            // Stable: the order above holds within the up and the down ones.
            sources.sort_by_key(|s| !s.live);
            (m.range(), sources)
        })
        .collect()
}

/// The nodes that gain a range between `before` and `after` and do not
/// list `incarnation` (the leaving or removed run) under `pulled` yet.
pub(crate) fn waiting_for(
    members: &BTreeMap<NodeId, impl Borrow<MemberInfo>>,
    before: &Ring,
    after: &Ring,
    rf: ReplicationFactor,
    incarnation: &str,
) -> Vec<NodeId> {
    let plan = plan(before, after, rf);
    let gainers: BTreeSet<&NodeId> = plan.moves().iter().flat_map(|m| m.gained()).collect();
    gainers
        .into_iter()
        .filter(|id| {
            !members
                .get(*id)
                .is_some_and(|m| m.borrow().pulled.iter().any(|p| p == incarnation))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use strata_ring::Member;

    use super::*;
    use crate::membership::NodeState;

    fn rf(n: usize) -> ReplicationFactor {
        ReplicationFactor::new(n).unwrap()
    }

    fn members(list: &[(&str, NodeState, bool)]) -> BTreeMap<NodeId, MemberInfo> {
        list.iter()
            .map(|&(id, state, live)| MemberInfo {
                live,
                ..MemberInfo::for_test(id, state, 1)
            })
            .map(|m| (m.id.clone(), m))
            .collect()
    }

    fn ring(ids: &[&str]) -> Ring {
        Ring::new(ids.iter().map(|id| Member::derived(*id, 8))).unwrap()
    }

    fn ids(sources: &[MemberInfo]) -> Vec<&str> {
        sources.iter().map(|s| s.id.as_str()).collect()
    }

    /// Every range of the plan for `me`, checked against the ring's own
    /// plan: the same ranges, each with the sources the rule gives.
    fn assert_covers(pulls: &[Pull], before: &Ring, after: &Ring, rf: ReplicationFactor, me: &str) {
        let me = NodeId::from(me);
        let want: Vec<TokenRange> = plan(before, after, rf)
            .incoming(&me)
            .map(|m| m.range())
            .collect();
        let got: Vec<TokenRange> = pulls.iter().map(|p| p.0).collect();
        assert_eq!(got, want);
        assert!(!got.is_empty());
    }

    #[test]
    fn a_joiner_pulls_from_the_replica_it_pushes_out_first() {
        let before = ring(&["a", "b", "c", "d"]);
        let after = before.add(Member::derived("e", 8)).unwrap();
        let view = members(&[
            ("a", NodeState::Available, true),
            ("b", NodeState::Available, true),
            ("c", NodeState::Available, true),
            ("d", NodeState::Available, true),
            ("e", NodeState::Bootstrapping, true),
        ]);
        let pulls = plan_pulls(&view, &before, &after, rf(3), &NodeId::from("e"), None);
        assert_covers(&pulls, &before, &after, rf(3), "e");
        let moves = plan(&before, &after, rf(3));
        for ((range, sources), m) in pulls.iter().zip(moves.incoming(&NodeId::from("e"))) {
            assert_eq!(*range, m.range());
            let lost: Vec<&str> = m.lost().map(NodeId::as_str).collect();
            assert_eq!(lost.len(), 1, "a join pushes out one replica");
            assert_eq!(ids(sources)[0], lost[0]);
            // Then the rest of the old replicas, in preference order.
            let rest: Vec<&str> = m
                .from()
                .iter()
                .map(NodeId::as_str)
                .filter(|id| *id != lost[0])
                .collect();
            assert_eq!(ids(sources)[1..], rest[..]);
        }
    }

    #[test]
    fn a_leaver_is_every_ranges_first_source() {
        let before = ring(&["a", "b", "c", "d"]);
        let after = before.remove(&NodeId::from("b")).unwrap();
        let view = members(&[
            ("a", NodeState::Available, true),
            ("b", NodeState::Leaving, true),
            ("c", NodeState::Available, true),
            ("d", NodeState::Available, true),
        ]);
        for me in ["a", "c", "d"] {
            let pulls = plan_pulls(&view, &before, &after, rf(3), &NodeId::from(me), None);
            assert_covers(&pulls, &before, &after, rf(3), me);
            for (_, sources) in &pulls {
                assert_eq!(ids(sources)[0], "b");
                assert_eq!(sources.len(), 3, "the leaver and two keepers");
                assert!(!ids(sources).contains(&me));
            }
        }
    }

    #[test]
    fn down_sources_come_last_in_their_order() {
        let before = ring(&["a", "b", "c", "d"]);
        let after = before.remove(&NodeId::from("b")).unwrap();
        let view = members(&[
            ("a", NodeState::Available, false),
            ("b", NodeState::Leaving, false),
            ("c", NodeState::Available, true),
            ("d", NodeState::Available, true),
        ]);
        let pulls = plan_pulls(&view, &before, &after, rf(3), &NodeId::from("d"), None);
        assert_covers(&pulls, &before, &after, rf(3), "d");
        for (_, sources) in &pulls {
            let live: Vec<bool> = sources.iter().map(|s| s.live).collect();
            assert!(live.windows(2).all(|w| w[0] >= w[1]), "{live:?}");
            let down: Vec<&str> = ids(sources).into_iter().filter(|id| *id != "c").collect();
            // The leaver stays ahead of the other down replica.
            assert_eq!(down[0], "b", "{:?}", ids(sources));
        }
    }

    #[test]
    fn neither_this_node_nor_members_outside_the_ring_are_sources() {
        let before = ring(&["a", "b", "c", "d"]);
        let after = before.add(Member::derived("e", 8)).unwrap();
        for (state, name) in [
            (NodeState::Joining, "joining"),
            (NodeState::Bootstrapping, "bootstrapping"),
            (NodeState::Left, "left"),
        ] {
            let view = members(&[
                ("a", NodeState::Available, true),
                ("b", state, true),
                ("c", NodeState::Available, true),
                ("d", NodeState::Available, true),
                ("e", NodeState::Bootstrapping, true),
            ]);
            let pulls = plan_pulls(&view, &before, &after, rf(3), &NodeId::from("e"), None);
            assert_covers(&pulls, &before, &after, rf(3), "e");
            for (_, sources) in &pulls {
                assert!(!ids(sources).contains(&"b"), "{name}: {:?}", ids(sources));
                assert!(!ids(sources).contains(&"e"));
            }
        }
    }

    #[test]
    fn a_replication_factor_above_the_ring_size_pulls_from_every_member() {
        let before = ring(&["a", "b"]);
        let after = before.add(Member::derived("c", 8)).unwrap();
        let view = members(&[
            ("a", NodeState::Available, true),
            ("b", NodeState::Available, true),
            ("c", NodeState::Bootstrapping, true),
        ]);
        let pulls = plan_pulls(&view, &before, &after, rf(5), &NodeId::from("c"), None);
        // c becomes a replica of everything and pushes no one out.
        let width: u128 = pulls.iter().map(|p| p.0.width()).sum();
        assert_eq!(width, 1u128 << 64);
        for (_, sources) in &pulls {
            let mut sources = ids(sources);
            sources.sort_unstable();
            assert_eq!(sources, ["a", "b"]);
        }
    }

    #[test]
    fn a_move_waits_for_each_gainer_until_it_lists_the_incarnation() {
        let before = ring(&["a", "b", "c", "d"]);
        let after = before.remove(&NodeId::from("b")).unwrap();
        let mut view = members(&[
            ("a", NodeState::Available, true),
            ("b", NodeState::Leaving, true),
            ("c", NodeState::Available, true),
            ("d", NodeState::Available, true),
        ]);
        let waiting = |view: &BTreeMap<NodeId, MemberInfo>| {
            waiting_for(view, &before, &after, rf(3), "b:1")
                .into_iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
        };
        let all = waiting(&view);
        let gainers: BTreeSet<String> = plan(&before, &after, rf(3))
            .moves()
            .iter()
            .flat_map(|m| m.gained().map(|id| id.to_string()))
            .collect();
        assert_eq!(all, gainers.iter().cloned().collect::<Vec<_>>());
        assert!(all.len() >= 2, "{all:?}");
        let (first, second) = (NodeId::from(all[0].as_str()), NodeId::from(all[1].as_str()));
        // Only the exact incarnation counts.
        view.get_mut(&first).unwrap().pulled = vec!["b:0".into(), "b:1".into()];
        view.get_mut(&second).unwrap().pulled = vec!["b:0".into()];
        assert_eq!(waiting(&view), all[1..]);
        // A gainer this node does not know is waited for, not skipped.
        view.remove(&second);
        assert_eq!(waiting(&view), all[1..]);
    }

    #[test]
    fn a_removed_member_is_never_a_source() {
        // d died and was removed: it is still in the ring before, and it
        // is the replica that gives every moving range up.
        let before = ring(&["a", "b", "c", "d", "e"]);
        let after = before.remove(&NodeId::from("d")).unwrap();
        let view = members(&[
            ("a", NodeState::Available, true),
            ("b", NodeState::Available, true),
            ("c", NodeState::Available, true),
            ("d", NodeState::Available, false),
            ("e", NodeState::Available, true),
        ]);
        let d = NodeId::from("d");
        let mut gainers = 0;
        for me in ["a", "b", "c", "e"] {
            let pulls = plan_pulls(&view, &before, &after, rf(3), &NodeId::from(me), Some(&d));
            gainers += usize::from(!pulls.is_empty());
            for (_, sources) in &pulls {
                assert_eq!(sources.len(), 2, "the two surviving replicas");
                assert!(!ids(sources).contains(&"d"));
                assert!(sources.iter().all(|s| s.live));
            }
        }
        assert!(gainers >= 3, "{gainers}");
        // Without the exclusion, the dead node would have come first.
        let unguarded = plan_pulls(&view, &before, &after, rf(3), &NodeId::from("a"), None);
        assert!(unguarded.iter().all(|(_, s)| s.last().unwrap().id == d));
    }
}
