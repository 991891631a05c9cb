//! Token allocation: tokens for a joining node that even out ownership.
//!
//! Random tokens balance only statistically, which takes hundreds of vnodes
//! per node. Like Cassandra's allocator, this one looks at the ring and
//! places the new node's tokens where they relieve the most loaded nodes.
//!
//! The new node's fair share after the join is `2^64 / (nodes + 1)`
//! (primary ownership). It takes that share from the most loaded nodes by
//! water-filling: with at most one donor per vnode, the donors are the
//! `d` most loaded nodes and each gives what it holds above a common level
//! `L`, where `L` is chosen so the gifts add up to the share. Each donor
//! cuts its gift from its largest ranges, one vnode per range: a token `t`
//! placed inside the range `(a, b]` hands `(a, t]` to the new node. Vnodes
//! go to donors in proportion to their gifts, so the new node's ranges come
//! out of similar size.
//!
//! While there are no more nodes than vnodes every donor reaches the level
//! exactly, so a ring built by successive allocation stays balanced to
//! within rounding. Allocation balances primary ownership; replicas follow
//! the token order and balance roughly as well (the `ring_report` example
//! measures both).
//!
//! Joins should be serialized: two nodes allocating against the same ring
//! pick from the same donors. Each cut is shifted by up to 1/1024 of its
//! size, by a hash of the new node's id, so that two such nodes at least
//! never claim the same tokens.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::error::RingError;
use crate::node::{Member, NodeId};
use crate::rf::ReplicationFactor;
use crate::ring::Ring;
use crate::token::{derived_token, TokenRange, SPACE};

impl Ring {
    /// Tokens for `id` joining this ring with up to `vnodes` vnodes, placed
    /// to take its fair share from the most loaded nodes. Deterministic:
    /// the same ring and id give the same tokens on every node.
    ///
    /// Returns fewer than `vnodes` tokens only when the donors have fewer
    /// ranges than that (a ring of very few tokens).
    ///
    /// # Errors
    /// [`RingError::DuplicateNode`] if `id` is already a member,
    /// [`RingError::NoTokens`] if `vnodes` is 0.
    pub fn allocate(&self, id: &NodeId, vnodes: u32) -> Result<Member, RingError> {
        if self.contains(id) {
            return Err(RingError::DuplicateNode { node: id.clone() });
        }
        let no_tokens = || RingError::NoTokens { node: id.clone() };
        if vnodes == 0 {
            return Err(no_tokens());
        }

        let mut ranges: Vec<Vec<TokenRange>> = vec![Vec::new(); self.members().len()];
        for (range, prefs) in self.positions(ReplicationFactor::ONE) {
            if let Some(list) = prefs.first().and_then(|&o| ranges.get_mut(o as usize)) {
                list.push(range);
            }
        }
        for list in &mut ranges {
            list.sort_by_key(|r| (Reverse(r.width()), r.start()));
        }
        let owned = self.owned_widths(ReplicationFactor::ONE);
        let share = SPACE / (owned.len() as u128 + 1);
        let donors: Vec<Donor<'_>> = gifts(&owned, share, vnodes as usize)
            .into_iter()
            .filter_map(|(index, gift)| {
                let ranges = ranges.get(index)?;
                Some(Donor { gift, ranges })
            })
            .collect();
        let counts = vnodes_per_donor(&donors, vnodes as usize);

        let mut tokens = Vec::with_capacity(vnodes as usize);
        for (donor, count) in donors.iter().zip(counts) {
            let cuts = donor.ranges.get(..count).unwrap_or_default();
            tokens.extend(cut(cuts, donor.gift, id, tokens.len()));
        }
        if tokens.is_empty() {
            return Err(no_tokens());
        }
        tokens.sort_unstable();
        Ok(Member::new(id.clone(), tokens))
    }

    /// A ring of `ids` joined one after the other, each with `vnodes` tokens
    /// from [`Ring::allocate`]; the first node, alone, derives its tokens
    /// ([`Member::derived`]).
    ///
    /// # Errors
    /// [`RingError::Empty`] without ids, otherwise as [`Ring::allocate`].
    pub fn allocated(
        ids: impl IntoIterator<Item = NodeId>,
        vnodes: u32,
    ) -> Result<Self, RingError> {
        let mut ids = ids.into_iter();
        let first = ids.next().ok_or(RingError::Empty)?;
        let mut ring = Ring::new([Member::derived(first, vnodes)])?;
        for id in ids {
            let member = ring.allocate(&id, vnodes)?;
            ring = ring.add(member)?;
        }
        Ok(ring)
    }
}

/// The donors and what each gives: `(member index, tokens to give)`, most
/// loaded first, gifts adding up to about `share`, at most `max_donors`.
fn gifts(owned: &[u128], share: u128, max_donors: usize) -> Vec<(usize, u128)> {
    let mut order: Vec<usize> = (0..owned.len()).collect();
    // Ties go to the smaller id (index) so every node picks the same donors.
    order.sort_by_key(|&i| (Reverse(owned.get(i).copied()), i));
    let load = |rank: usize| {
        order
            .get(rank)
            .and_then(|&i| owned.get(i))
            .copied()
            .unwrap_or(0)
    };
    let donors = max_donors.min(order.len());
    let mut sum = 0u128;
    let mut level = 0u128;
    let mut count = 0;
    while count < donors {
        sum += load(count);
        count += 1;
        // The level if the `count` most loaded give: it lies below all of
        // them, so stop as soon as it is no lower than the next one down.
        level = sum.saturating_sub(share) / count as u128;
        let next = if count < donors { load(count) } else { 0 };
        if level >= next {
            break;
        }
    }
    order
        .into_iter()
        .take(count)
        .map(|i| (i, owned.get(i).copied().unwrap_or(0).saturating_sub(level)))
        .filter(|&(_, gift)| gift > 0)
        .collect()
}

/// A node giving part of its ownership to the joining one.
struct Donor<'a> {
    /// How many tokens it gives.
    gift: u128,
    /// Its ranges, widest first: the ones it cuts its gift from.
    ranges: &'a [TokenRange],
}

impl Donor<'_> {
    /// How much `count` cuts can take: all but one token of each of the
    /// `count` widest ranges.
    fn capacity(&self, count: usize) -> u128 {
        self.ranges.iter().take(count).map(|r| r.width() - 1).sum()
    }
}

/// How many vnodes each donor's gift is cut with: one each, then the rest
/// one at a time, first to donors whose widest ranges cannot hold their gift,
/// then to the donor whose pieces are largest, so the new node's ranges come
/// out of similar size. Never more than a donor's ranges.
fn vnodes_per_donor(donors: &[Donor<'_>], vnodes: usize) -> Vec<usize> {
    let mut counts = vec![1usize; donors.len()];
    let piece = |slot: usize, count: usize| {
        let donor = donors.get(slot)?;
        (count < donor.ranges.len()).then(|| Piece {
            shortfall: donor.gift.saturating_sub(donor.capacity(count)),
            gift: donor.gift,
            count,
            slot,
        })
    };
    let mut heap: BinaryHeap<Piece> = (0..donors.len())
        .filter_map(|slot| piece(slot, 1))
        .collect();
    let mut spare = vnodes.saturating_sub(donors.len());
    while spare > 0 {
        let Some(top) = heap.pop() else { break };
        spare -= 1;
        if let Some(count) = counts.get_mut(top.slot) {
            *count = top.count + 1;
        }
        heap.extend(piece(top.slot, top.count + 1));
    }
    counts
}

/// A donor's gift cut into `count` pieces, as the next vnode should find
/// it: a gift its cuts cannot hold (largest shortfall) comes first, then
/// the largest pieces, then the most loaded donor.
#[derive(PartialEq, Eq)]
struct Piece {
    shortfall: u128,
    gift: u128,
    count: usize,
    slot: usize,
}

impl Ord for Piece {
    fn cmp(&self, other: &Self) -> Ordering {
        // gift / count against other.gift / other.count, exactly: gifts are
        // below 2^64 and counts far below, so the products fit.
        let mine = self.gift * other.count as u128;
        let theirs = other.gift * self.count as u128;
        self.shortfall
            .cmp(&other.shortfall)
            .then(mine.cmp(&theirs))
            .then(other.slot.cmp(&self.slot))
    }
}

impl PartialOrd for Piece {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// New tokens that take `gift` tokens in all from `ranges`, one per range,
/// in pieces as equal as the range widths allow (a piece leaves at least one
/// token to the range's owner). `salt` numbers the id hashes that jitter the
/// pieces.
fn cut(ranges: &[TokenRange], gift: u128, id: &NodeId, salt: usize) -> Vec<u64> {
    let mut by_width: Vec<TokenRange> = ranges.to_vec();
    // Narrow ranges first: what they cannot give passes to the wider ones.
    by_width.sort_by_key(|r| (r.width(), r.start()));
    let mut left = gift;
    let mut tokens = Vec::with_capacity(by_width.len());
    for (i, range) in by_width.iter().enumerate() {
        let pieces = (by_width.len() - i) as u128;
        let piece = (left / pieces).min(range.width() - 1);
        left -= piece;
        let jitter_seed = u32::try_from(salt + i).unwrap_or(u32::MAX);
        let jitter = u128::from(derived_token(id.as_str(), jitter_seed)) % (piece / 1024 + 1);
        let piece = piece - jitter;
        // piece < 2^64: the widest range holds 2^64 tokens and gives one less.
        if let Ok(piece) = u64::try_from(piece) {
            if piece > 0 {
                tokens.push(range.start().wrapping_add(piece));
            }
        }
    }
    tokens
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ids(n: usize) -> impl Iterator<Item = NodeId> {
        (0..n).map(|i| NodeId::from(format!("node-{i}")))
    }

    #[test]
    fn ten_nodes_with_sixteen_vnodes_balance_within_five_percent() {
        let ring = Ring::allocated(ids(10), 16).unwrap();
        assert!(ring.members().iter().all(|m| m.tokens.len() == 16));
        let ratio = ring.ownership(ReplicationFactor::ONE).max_over_mean();
        assert!(ratio <= 1.05, "max/mean {ratio}");
    }

    #[test]
    fn every_join_up_to_vnodes_nodes_levels_the_ring() {
        // Regression: the last joiner once gave a single vnode to a donor
        // whose widest range was narrower than its gift, leaving 1.04.
        let mut ring = Ring::new([Member::derived("node-0", 16)]).unwrap();
        for id in ids(10).skip(1) {
            ring = ring.add(ring.allocate(&id, 16).unwrap()).unwrap();
            let ratio = ring.ownership(ReplicationFactor::ONE).max_over_mean();
            assert!(ratio < 1.001, "{id} joined: max/mean {ratio}");
        }
    }

    #[test]
    fn a_joining_node_takes_its_fair_share() {
        let ring = Ring::allocated(ids(7), 8).unwrap();
        let id = NodeId::from("new");
        let grown = ring.add(ring.allocate(&id, 8).unwrap()).unwrap();
        let share = grown.ownership(ReplicationFactor::ONE).get(&id).unwrap();
        assert!((share * 8.0 - 1.0).abs() < 0.01, "share {share}");
    }

    #[test]
    fn allocation_is_deterministic_and_depends_on_the_id() {
        let ring = Ring::allocated(ids(5), 16).unwrap();
        let x = NodeId::from("x");
        assert_eq!(ring.allocate(&x, 16), ring.allocate(&x, 16));
        let y = ring.allocate(&"y".into(), 16).unwrap();
        let x = ring.allocate(&x, 16).unwrap();
        assert!(x.tokens.iter().all(|t| !y.tokens.contains(t)));
    }

    #[test]
    fn allocation_takes_no_more_vnodes_than_there_are_ranges() {
        let ring = Ring::new([Member::new("a", vec![0])]).unwrap();
        let b = ring.allocate(&"b".into(), 16).unwrap();
        assert_eq!(b.tokens.len(), 1);
        let two = ring.add(b).unwrap();
        let ratio = two.ownership(ReplicationFactor::ONE).max_over_mean();
        assert!(ratio < 1.01, "max/mean {ratio}");
    }

    #[test]
    fn bad_requests_are_errors() {
        let ring = Ring::allocated(ids(2), 4).unwrap();
        let member = NodeId::from("node-0");
        assert_eq!(
            ring.allocate(&member, 4),
            Err(RingError::DuplicateNode { node: member })
        );
        let new = NodeId::from("new");
        assert_eq!(
            ring.allocate(&new, 0),
            Err(RingError::NoTokens { node: new })
        );
        assert_eq!(Ring::allocated(ids(0), 4), Err(RingError::Empty));
    }
}
