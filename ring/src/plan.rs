//! Movement plans: what data must move when the membership changes.
//!
//! Between two rings, the token space splits at every token of either ring
//! into segments that each have one preference list before and one after.
//! A segment moves when its replica *set* changes; a new order of the same
//! nodes moves no data. Neighbouring segments with the same lists merge, so
//! a plan lists as few ranges as the change allows.

use crate::node::NodeId;
use crate::rf::ReplicationFactor;
use crate::ring::{Replicas, Ring};
use crate::token::{coalesce, TokenRange};

/// One token range whose replica set changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    range: TokenRange,
    from: Vec<NodeId>,
    to: Vec<NodeId>,
}

impl Move {
    /// The range that moves.
    pub fn range(&self) -> TokenRange {
        self.range
    }

    /// Its replicas before the change, in preference order: the sources a
    /// new replica can stream it from.
    pub fn from(&self) -> &[NodeId] {
        &self.from
    }

    /// Its replicas after the change, in preference order.
    pub fn to(&self) -> &[NodeId] {
        &self.to
    }

    /// The nodes that must receive the range: replicas after, not before.
    pub fn gained(&self) -> impl Iterator<Item = &NodeId> {
        self.to.iter().filter(|node| !self.from.contains(node))
    }

    /// The nodes that may drop the range once the change completes:
    /// replicas before, not after.
    pub fn lost(&self) -> impl Iterator<Item = &NodeId> {
        self.from.iter().filter(|node| !self.to.contains(node))
    }
}

/// The moves between two rings, in clockwise order from the lowest token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    moves: Vec<Move>,
}

impl Plan {
    /// Every move.
    pub fn moves(&self) -> &[Move] {
        &self.moves
    }

    /// Whether nothing moves.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// The moves `node` must receive, e.g. what a joining node streams and
    /// from whom ([`Move::from`]).
    pub fn incoming<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a Move> {
        self.moves
            .iter()
            .filter(move |m| m.gained().any(|n| n == node))
    }

    /// The moves `node` stops holding, e.g. what a leaving node hands over
    /// and to whom ([`Move::gained`]).
    pub fn outgoing<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a Move> {
        self.moves
            .iter()
            .filter(move |m| m.lost().any(|n| n == node))
    }
}

/// The token ranges whose `rf` replicas differ between `before` and
/// `after`, with the replicas on each side.
///
/// For a join, every move gains only the new node; for a leave, every move
/// loses only the leaving one; other changes (several nodes at once) give
/// whatever the two rings imply.
pub fn plan(before: &Ring, after: &Ring, rf: ReplicationFactor) -> Plan {
    let bounds = merged(before.tokens(), after.tokens());
    let last = bounds.last().copied().unwrap_or(0);
    let starts = std::iter::once(last).chain(bounds.iter().copied());
    let changed = starts.zip(&bounds).filter_map(|(start, &end)| {
        // Both rings have a token at every bound, so each side has one
        // preference list across the whole segment: the one at its end.
        let old = before.token_replicas(end, rf);
        let new = after.token_replicas(end, rf);
        if same_set(old.clone(), new.clone()) {
            return None;
        }
        let lists = (old.cloned().collect(), new.cloned().collect());
        Some((TokenRange::new(start, end), lists))
    });
    let moves = coalesce(changed)
        .into_iter()
        .map(|(range, (from, to))| Move { range, from, to })
        .collect();
    Plan { moves }
}

/// The union of two sorted token lists, sorted and distinct.
fn merged(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut all = Vec::with_capacity(a.len() + b.len());
    all.extend_from_slice(a);
    all.extend_from_slice(b);
    all.sort_unstable();
    all.dedup();
    all
}

/// Whether two preference lists (each of distinct nodes) hold the same nodes.
fn same_set(a: Replicas<'_>, b: Replicas<'_>) -> bool {
    a.len() == b.len() && a.clone().all(|node| b.clone().any(|other| other == node))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::node::Member;

    fn ring(members: &[(&str, &[u64])]) -> Ring {
        Ring::new(members.iter().map(|(id, t)| Member::new(*id, t.to_vec()))).unwrap()
    }

    #[test]
    fn joining_node_takes_the_range_before_its_token_from_its_successor() {
        let before = ring(&[("a", &[100]), ("b", &[200])]);
        let after = ring(&[("a", &[100]), ("b", &[200]), ("c", &[150])]);
        let plan = plan(&before, &after, ReplicationFactor::ONE);
        let c = NodeId::from("c");
        let b = NodeId::from("b");
        assert_eq!(plan.moves().len(), 1);
        let m = &plan.moves()[0];
        assert_eq!(m.range(), TokenRange::new(100, 150));
        assert_eq!(m.from(), std::slice::from_ref(&b));
        assert_eq!(m.to(), std::slice::from_ref(&c));
        assert_eq!(plan.incoming(&c).count(), 1);
        assert_eq!(plan.outgoing(&b).count(), 1);
        assert_eq!(plan.outgoing(&c).count(), 0);
    }

    #[test]
    fn reordered_replicas_move_nothing() {
        // With rf 2 and two nodes each holds everything; a third token for
        // a only changes who comes first.
        let before = ring(&[("a", &[100]), ("b", &[200])]);
        let after = ring(&[("a", &[100, 150]), ("b", &[200])]);
        let rf = ReplicationFactor::new(2).unwrap();
        assert!(plan(&before, &after, rf).is_empty());
        assert!(!plan(&before, &after, ReplicationFactor::ONE).is_empty());
    }

    #[test]
    fn growing_past_rf_gives_the_new_node_everything_it_now_replicates() {
        let before = ring(&[("a", &[100]), ("b", &[200])]);
        let after = ring(&[("a", &[100]), ("b", &[200]), ("c", &[300])]);
        let rf = ReplicationFactor::new(3).unwrap();
        let plan = plan(&before, &after, rf);
        let c = NodeId::from("c");
        let moved: u128 = plan.moves().iter().map(|m| m.range().width()).sum();
        assert_eq!(moved, crate::token::SPACE);
        assert!(plan.moves().iter().all(|m| m.gained().eq([&c])));
        assert!(plan.moves().iter().all(|m| m.lost().next().is_none()));
    }

    #[test]
    fn identical_rings_plan_nothing() {
        let r = ring(&[("a", &[1, 5]), ("b", &[3])]);
        assert!(plan(&r, &r, ReplicationFactor::ONE).is_empty());
    }
}
