//! Movement plans: a join moves data only to the new node, a leave only
//! away from the leaving one, and any plan applied to the old ring gives
//! exactly the new ring's placement.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::{a_ring, a_token, an_rf, probes, set};
use proptest::prelude::*;
use strata_ring::{plan, Member, NodeId, Plan, ReplicationFactor, Ring};

/// The replica set of `t` once `plan` is applied to `before`: the moved
/// range's new replicas, or the old ones where nothing moved. Also checks
/// that moves never overlap and name the replicas both rings agree on.
fn applied(plan: &Plan, before: &Ring, after: &Ring, t: u64, rf: ReplicationFactor) -> Vec<NodeId> {
    let moves: Vec<_> = plan
        .moves()
        .iter()
        .filter(|m| m.range().contains(t))
        .collect();
    assert!(moves.len() <= 1, "moves overlap at {t}");
    match moves.first() {
        Some(m) => {
            assert!(
                m.from().iter().eq(before.token_replicas(t, rf)),
                "from at {t}"
            );
            assert!(m.to().iter().eq(after.token_replicas(t, rf)), "to at {t}");
            set(m.to())
        }
        None => set(before.token_replicas(t, rf)),
    }
}

/// A ring with `joiner` added, with tokens either allocated or claimed.
fn grown(
    ring: &Ring,
    joiner: &NodeId,
    rf: ReplicationFactor,
    allocated: bool,
    tokens: Vec<u64>,
) -> Option<Ring> {
    let member = if allocated {
        ring.allocate(joiner, 4, rf).ok()?
    } else {
        // A token already on the ring is contested, and the smaller id
        // takes it: the joiner would take it from its holder and change that
        // holder's ranges too, which is not a join. Allocation never picks
        // a held token; random ones must not either.
        let held: Vec<u64> = ring
            .members()
            .iter()
            .flat_map(|m| m.tokens.clone())
            .collect();
        let fresh: Vec<u64> = tokens.into_iter().filter(|t| !held.contains(t)).collect();
        if fresh.is_empty() {
            return None;
        }
        Member::new(joiner.clone(), fresh)
    };
    ring.add(member).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_plan_applied_to_before_gives_after(
        before in a_ring(),
        after in a_ring(),
        rf in an_rf(),
        extra in proptest::collection::vec(any::<u64>(), 16),
    ) {
        let plan = plan(&before, &after, rf);
        for t in probes(&before, &after, &extra) {
            let want = set(after.token_replicas(t, rf));
            prop_assert_eq!(applied(&plan, &before, &after, t, rf), want, "token {}", t);
        }
        for m in plan.moves() {
            prop_assert_ne!(set(m.from()), set(m.to()));
        }
    }

    #[test]
    fn a_join_moves_ranges_only_to_the_new_node(
        ring in a_ring(),
        rf in an_rf(),
        allocated in any::<bool>(),
        tokens in proptest::collection::vec(a_token(), 1..=6),
    ) {
        let joiner = NodeId::from("joiner");
        // No fresh token to join with: not a join at all, so not a case.
        let after = grown(&ring, &joiner, rf, allocated, tokens);
        prop_assume!(after.is_some());
        let after = after.unwrap();
        let plan = plan(&ring, &after, rf);
        prop_assert!(!plan.is_empty());
        for m in plan.moves() {
            prop_assert!(m.gained().eq([&joiner]), "{:?}", m);
            prop_assert!(m.lost().count() <= 1, "{:?}", m);
            if rf == ReplicationFactor::ONE {
                prop_assert_eq!(m.to(), std::slice::from_ref(&joiner));
            }
        }
        let streamed: u128 = plan.incoming(&joiner).map(|m| m.range().width()).sum();
        let share = after.ownership(rf).get(&joiner).unwrap();
        prop_assert!((streamed as f64 / 2f64.powi(64) - share).abs() < 1e-9);
    }

    #[test]
    fn a_leave_moves_ranges_only_from_the_leaving_node(
        ring in a_ring(),
        rf in an_rf(),
        pick in any::<prop::sample::Index>(),
    ) {
        let leaver = pick.get(ring.members()).id.clone();
        // The last member cannot leave: not a case.
        let after = ring.remove(&leaver);
        prop_assume!(after.is_ok());
        let after = after.unwrap();
        let plan = plan(&ring, &after, rf);
        for m in plan.moves() {
            prop_assert!(m.lost().eq([&leaver]), "{:?}", m);
            prop_assert!(m.gained().count() <= 1, "{:?}", m);
        }
        let handed: u128 = plan.outgoing(&leaver).map(|m| m.range().width()).sum();
        let share = ring.ownership(rf).get(&leaver).unwrap();
        prop_assert!((handed as f64 / 2f64.powi(64) - share).abs() < 1e-9);
    }
}
