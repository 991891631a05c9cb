//! How evenly a ring spreads the token space over its nodes.

use crate::node::NodeId;
use crate::rf::ReplicationFactor;
use crate::ring::Ring;
use crate::token::SPACE;

/// The fraction of the token space each node holds a replica of.
///
/// With `rf` replicas the fractions add up to `min(rf, nodes)`: each token
/// is counted once for every node that stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ownership {
    /// Sorted by id.
    shares: Vec<(NodeId, f64)>,
}

impl Ownership {
    /// The fraction `node` holds, if it is a member.
    pub fn get(&self, node: &NodeId) -> Option<f64> {
        let index = self.shares.binary_search_by(|(id, _)| id.cmp(node)).ok()?;
        self.shares.get(index).map(|&(_, share)| share)
    }

    /// Every node with its fraction, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, f64)> {
        self.shares.iter().map(|(id, share)| (id, *share))
    }

    /// The largest fraction over the mean one: 1.0 is a perfect balance, and
    /// the most loaded node stores that many times its fair share.
    pub fn max_over_mean(&self) -> f64 {
        let max = self.shares.iter().map(|&(_, s)| s).fold(0.0, f64::max);
        let sum: f64 = self.shares.iter().map(|&(_, s)| s).sum();
        // Lossless for any realistic node count.
        let mean = sum / self.shares.len() as f64;
        max / mean
    }
}

impl Ring {
    /// The fraction of the token space each node holds among the first `rf`
    /// replicas.
    pub fn ownership(&self, rf: ReplicationFactor) -> Ownership {
        let widths = self.owned_widths(rf);
        let shares = self
            .members()
            .iter()
            .zip(widths)
            .map(|(member, width)| (member.id.clone(), width as f64 / SPACE as f64))
            .collect();
        Ownership { shares }
    }

    /// How many tokens each member (by index) holds among the first `rf`
    /// replicas, exactly.
    pub(crate) fn owned_widths(&self, rf: ReplicationFactor) -> Vec<u128> {
        let mut widths = vec![0u128; self.members().len()];
        for (range, prefs) in self.positions(rf) {
            for &index in prefs {
                if let Some(width) = widths.get_mut(index as usize) {
                    *width += range.width();
                }
            }
        }
        widths
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::node::Member;

    #[test]
    fn shares_follow_the_ranges() {
        // a holds (3/4 of the space, 0], b holds (0, 3/4 of the space].
        let three_quarters = u64::MAX / 4 * 3;
        let ring = Ring::new([
            Member::new("a", vec![0]),
            Member::new("b", vec![three_quarters]),
        ])
        .unwrap();
        let one = ring.ownership(ReplicationFactor::ONE);
        let a = one.get(&"a".into()).unwrap();
        let b = one.get(&"b".into()).unwrap();
        assert!(
            (a - 0.25).abs() < 1e-9 && (b - 0.75).abs() < 1e-9,
            "{a} {b}"
        );
        assert!((one.max_over_mean() - 1.5).abs() < 1e-9);
        assert_eq!(one.get(&"c".into()), None);

        let two = ring.ownership(ReplicationFactor::new(2).unwrap());
        assert!(two.iter().all(|(_, share)| (share - 1.0).abs() < 1e-12));
    }
}
