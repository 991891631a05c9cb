//! Lookups against a brute-force model: owners, preference lists, the
//! ranges a node holds, ownership shares and the serialized form.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::{a_ring, an_rf, probes, Model};
use proptest::prelude::*;
use strata_ring::{token, NodeId, ReplicationFactor, Ring};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn lookups_match_a_linear_scan(
        ring in a_ring(),
        rf in an_rf(),
        extra in proptest::collection::vec(any::<u64>(), 16),
    ) {
        let model = Model::new(ring.members());
        for t in probes(&ring, &ring, &extra) {
            let got: Vec<NodeId> = ring.token_replicas(t, rf).cloned().collect();
            prop_assert_eq!(&got, &model.replicas(t, rf.get()), "token {}", t);
            prop_assert_eq!(ring.token_owner(t), &got[0]);
        }
    }

    #[test]
    fn replicas_are_distinct_and_as_many_as_rf_allows(
        ring in a_ring(),
        rf in an_rf(),
        keys in proptest::collection::vec(any::<Vec<u8>>(), 16),
    ) {
        let want = rf.get().min(ring.members().len());
        for key in &keys {
            let replicas: Vec<&NodeId> = ring.replicas(key, rf).collect();
            prop_assert_eq!(replicas.len(), want);
            prop_assert_eq!(common::set(replicas.iter().copied()).len(), want);
            prop_assert_eq!(replicas, ring.token_replicas(token(key), rf).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_node_holds_exactly_its_ranges(
        ring in a_ring(),
        rf in an_rf(),
        extra in proptest::collection::vec(any::<u64>(), 16),
    ) {
        let ownership = ring.ownership(rf);
        let mut total = 0.0;
        for member in ring.members() {
            let ranges = ring.ranges(&member.id, rf);
            for t in probes(&ring, &ring, &extra) {
                let held = ring.token_replicas(t, rf).any(|n| *n == member.id);
                let covered = ranges.iter().filter(|r| r.contains(t)).count();
                prop_assert_eq!(covered, usize::from(held), "{} token {}", member.id, t);
            }
            let width: u128 = ranges.iter().map(|r| r.width()).sum();
            let share = ownership.get(&member.id).unwrap();
            prop_assert!((width as f64 / 2f64.powi(64) - share).abs() < 1e-9);
            total += share;
        }
        let copies = rf.get().min(ring.members().len()) as f64;
        prop_assert!((total - copies).abs() < 1e-9, "shares add to {}", total);
    }

    #[test]
    fn serde_round_trip_rebuilds_the_same_ring(ring in a_ring()) {
        let json = serde_json::to_string(&ring).unwrap();
        let back: Ring = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &ring);
        let rf = ReplicationFactor::new(3).unwrap();
        prop_assert_eq!(back.ownership(rf), ring.ownership(rf));
    }
}
