//! Ring strategies and a brute-force model of placement, shared by the
//! property tests.

#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use strata_ring::{Member, NodeId, ReplicationFactor, Ring, MAX_RF};

/// Node ids the strategies draw from.
pub const IDS: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];

/// Tokens that collide and sit next to each other often, at both ends of
/// the space, mixed with arbitrary ones.
pub fn a_token() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..48, u64::MAX - 16..=u64::MAX, any::<u64>(),]
}

/// Any valid ring of 1 to 6 nodes with 1 to 6 claimed tokens each.
pub fn a_ring() -> impl Strategy<Value = Ring> {
    proptest::sample::subsequence(IDS.to_vec(), 1..=IDS.len())
        .prop_flat_map(|ids| {
            let members: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    proptest::collection::vec(a_token(), 1..=6)
                        .prop_map(move |t| Member::new(id, t))
                })
                .collect();
            members
        })
        .prop_filter_map("every node keeps a token", |members| {
            Ring::new(members).ok()
        })
}

/// A replication factor from 1 to `MAX_RF`.
pub fn an_rf() -> impl Strategy<Value = ReplicationFactor> {
    (1..=MAX_RF).prop_map(|rf| ReplicationFactor::new(rf).unwrap())
}

/// Placement worked out the slow way from the claims alone: each token
/// goes to the smallest id claiming it, and replicas come from walking the
/// sorted tokens one by one.
pub struct Model {
    ring: Vec<(u64, NodeId)>,
}

impl Model {
    pub fn new(members: &[Member]) -> Self {
        let mut owners: BTreeMap<u64, NodeId> = BTreeMap::new();
        for member in members {
            for &t in &member.tokens {
                let owner = owners.entry(t).or_insert_with(|| member.id.clone());
                if member.id < *owner {
                    *owner = member.id.clone();
                }
            }
        }
        Self {
            ring: owners.into_iter().collect(),
        }
    }

    pub fn replicas(&self, token: u64, rf: usize) -> Vec<NodeId> {
        let first = self.ring.iter().position(|(t, _)| *t >= token).unwrap_or(0);
        let mut out: Vec<NodeId> = Vec::new();
        for step in 0..self.ring.len() {
            let (_, id) = &self.ring[(first + step) % self.ring.len()];
            if out.len() < rf && !out.contains(id) {
                out.push(id.clone());
            }
        }
        out
    }

    /// Every ring token with its neighbours: the tokens where bugs live.
    pub fn edges(&self) -> Vec<u64> {
        self.ring
            .iter()
            .flat_map(|&(t, _)| [t.wrapping_sub(1), t, t.wrapping_add(1)])
            .collect()
    }
}

/// The tokens of both rings with their neighbours, plus `extra`.
pub fn probes(a: &Ring, b: &Ring, extra: &[u64]) -> Vec<u64> {
    let mut all = Model::new(a.members()).edges();
    all.extend(Model::new(b.members()).edges());
    all.extend_from_slice(extra);
    all.extend([0, u64::MAX]);
    all
}

/// The nodes as a sorted list, to compare replica sets.
pub fn set<'a>(nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = nodes.into_iter().cloned().collect();
    v.sort();
    v
}
