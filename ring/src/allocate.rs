//! Token allocation: tokens for a joining node that even out ownership.
//!
//! Random tokens balance only statistically, which takes hundreds of vnodes
//! per node. Like Cassandra's allocator, this one looks at the ring and
//! places the new node's tokens where they relieve the most loaded nodes.
//!
//! **How much, from whom.** The new node's fair share after the join is
//! `2^64 / (nodes + 1)` of primary ownership. It takes that share by
//! water-filling: with at most one donor per vnode, the donors are the `d`
//! most loaded nodes and each gives what it holds above a common level `L`,
//! chosen so the gifts add up to the share. Vnodes go to donors in
//! proportion to their gifts (first to a donor whose ranges are too narrow
//! for its gift), so the new node's ranges come out of similar size. A
//! token `t` inside a donor's range `(a, b]` hands `(a, t]` to the new node.
//! While there are no more nodes than vnodes every donor reaches the level
//! exactly, so a ring built by successive allocation stays balanced to
//! within rounding.
//!
//! **Which ranges.** That fixes each donor's pieces but not which of its
//! ranges it cuts, and with `rf` replicas that choice sets what each node
//! stores: a token in `(a, b]` also makes the new node a replica of the
//! ranges just before `a` (back to `rf` distinct nodes) and pushes their last
//! replica out. So each piece goes to the range, among the donor's ranges
//! wide enough for it, where it brings the `rf`-replica loads closest to
//! their targets (least sum of squared distances). The new node's own target
//! grows with each piece it places, so its first pieces do not take its
//! whole replica share. A donor with no choice cuts its widest ranges.
//!
//! Joins should be serialized: two nodes allocating against the same ring
//! pick the same places. Each cut is shifted back by up to 1/1024 of its
//! size, by a hash of the new node's id, so that two such nodes at least
//! never claim the same tokens.
//!
//! Cost per join: `O(vnodes * ring tokens * rf)`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::error::RingError;
use crate::node::{Member, NodeId};
use crate::rf::ReplicationFactor;
use crate::ring::{preference_lists, Ring};
use crate::token::{derived_token, TokenRange, SPACE};

impl Ring {
    /// Tokens for `id` joining this ring with up to `vnodes` vnodes, placed
    /// to take its fair share from the most loaded nodes, and where they keep
    /// the load of `rf` replicas even. Deterministic: the same ring and id
    /// give the same tokens on every node.
    ///
    /// Returns fewer than `vnodes` tokens only when the donors have fewer
    /// ranges than that (a ring of very few tokens).
    ///
    /// # Errors
    /// [`RingError::DuplicateNode`] if `id` is already a member,
    /// [`RingError::NoTokens`] if `vnodes` is 0.
    pub fn allocate(
        &self,
        id: &NodeId,
        vnodes: u32,
        rf: ReplicationFactor,
    ) -> Result<Member, RingError> {
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

        let nodes = self.members().len() + 1;
        let joiner = u32::try_from(self.members().len())
            .map_err(|_| RingError::TooManyNodes { count: nodes })?;
        // Until there are more nodes than replicas every node stores every
        // key, whatever the tokens.
        let mut loads = (rf.get() > 1 && nodes > rf.get()).then(|| ReplicaLoads {
            rf: rf.get(),
            joiner,
            cuts: counts.iter().sum(),
            ring: self
                .tokens()
                .iter()
                .copied()
                .zip(self.owners().iter().copied())
                .collect(),
        });
        let mut tokens = Vec::with_capacity(vnodes as usize);
        for (donor, count) in donors.iter().zip(counts) {
            let widest = donor.ranges.get(..count).unwrap_or_default();
            let piece = donor.gift / count as u128;
            let roomy = donor
                .ranges
                .iter()
                .take_while(|r| r.width() > piece)
                .count();
            match &mut loads {
                Some(loads) if roomy > count => {
                    let mut choice: Vec<TokenRange> =
                        donor.ranges.get(..roomy).unwrap_or_default().to_vec();
                    for _ in 0..count {
                        let Some(range) = loads.best(&mut choice, piece) else {
                            break;
                        };
                        let token = jittered(range, piece, id, tokens.len());
                        loads.insert(token);
                        tokens.push(token);
                    }
                }
                _ => {
                    for (range, take) in pieces(widest, donor.gift) {
                        let token = jittered(range, take, id, tokens.len());
                        if let Some(loads) = &mut loads {
                            loads.insert(token);
                        }
                        tokens.push(token);
                    }
                }
            }
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
        rf: ReplicationFactor,
    ) -> Result<Self, RingError> {
        let mut ids = ids.into_iter();
        let first = ids.next().ok_or(RingError::Empty)?;
        let mut ring = Ring::new([Member::derived(first, vnodes)])?;
        for id in ids {
            let member = ring.allocate(&id, vnodes, rf)?;
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

/// `gift` split over `ranges`, one piece per range, as equal as the range
/// widths allow (a piece leaves at least one token to the range's owner).
fn pieces(ranges: &[TokenRange], gift: u128) -> Vec<(TokenRange, u128)> {
    let mut by_width: Vec<TokenRange> = ranges.to_vec();
    // Narrow ranges first: what they cannot give passes to the wider ones.
    by_width.sort_by_key(|r| (r.width(), r.start()));
    let mut left = gift;
    let count = by_width.len();
    by_width
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let piece = (left / (count - i) as u128).min(range.width() - 1);
            left -= piece;
            (range, piece)
        })
        .filter(|&(_, piece)| piece > 0)
        .collect()
}

/// The token that hands the first `take` tokens of `range` to the joiner,
/// shifted back by up to 1/1024 of `take` by a hash of its id (see the
/// module doc); `salt` numbers the joiner's tokens.
fn jittered(range: TokenRange, take: u128, id: &NodeId, salt: usize) -> u64 {
    let seed = u32::try_from(salt).unwrap_or(u32::MAX);
    let jitter = u128::from(derived_token(id.as_str(), seed)) % (take / 1024 + 1);
    // take < 2^64: the widest range holds 2^64 tokens and gives one less.
    let take = u64::try_from(take - jitter).unwrap_or(u64::MAX);
    range.start().wrapping_add(take)
}

/// The ring being allocated, for choosing cuts by their effect on the load
/// of `rf` replicas.
struct ReplicaLoads {
    rf: usize,
    joiner: u32,
    /// How many cuts the joiner makes in all.
    cuts: usize,
    /// `(token, member index)`, sorted, the joiner's new tokens included.
    ring: Vec<(u64, u32)>,
}

impl ReplicaLoads {
    fn insert(&mut self, token: u64) {
        let at = self.ring.partition_point(|&(t, _)| t < token);
        self.ring.insert(at, (token, self.joiner));
    }

    /// Removes from `candidates` and returns the range where a cut of
    /// `piece` brings the loads closest to their targets; ties go to the
    /// first candidate.
    fn best(&self, candidates: &mut Vec<TokenRange>, piece: u128) -> Option<TokenRange> {
        let owners: Vec<u32> = self.ring.iter().map(|&(_, o)| o).collect();
        let last = self.ring.last().map_or(0, |&(t, _)| t);
        let starts = std::iter::once(last).chain(self.ring.iter().map(|&(t, _)| t));
        let widths: Vec<f64> = starts
            .zip(&self.ring)
            .map(|(start, &(end, _))| fraction(TokenRange::new(start, end).width()))
            .collect();
        let prefs = preference_lists(&owners, self.rf);
        let deviation = self.deviation(&prefs, &widths);
        let s = fraction(piece);
        let mut best: Option<(f64, usize)> = None;
        for (i, range) in candidates.iter().enumerate() {
            let q = self.ring.partition_point(|&(t, _)| t < range.end());
            let score = self.score(q, s, &owners, &widths, &prefs, &deviation);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        let (_, i) = best?;
        (i < candidates.len()).then(|| candidates.remove(i))
    }

    /// Each node's `rf`-replica load minus its target, as fractions of the
    /// space; the joiner's target is the part its cuts so far should hold.
    fn deviation(&self, prefs: &[u32], widths: &[f64]) -> Vec<f64> {
        let nodes = self.joiner as usize + 1;
        let mut deviation = vec![0.0; nodes];
        for (list, width) in prefs.chunks_exact(self.rf).zip(widths) {
            for &node in list {
                if let Some(d) = deviation.get_mut(node as usize) {
                    *d += width;
                }
            }
        }
        let target = self.rf as f64 / nodes as f64;
        let placed = self.ring.iter().filter(|&&(_, o)| o == self.joiner).count();
        let ramp = (placed + 1) as f64 / self.cuts.max(1) as f64;
        for (node, d) in deviation.iter_mut().enumerate() {
            *d -= if node == self.joiner as usize {
                target * ramp.min(1.0)
            } else {
                target
            };
        }
        deviation
    }

    /// How much the sum of squared deviations grows if the joiner takes `s`
    /// off the start of the range at position `q`.
    fn score(
        &self,
        q: usize,
        s: f64,
        owners: &[u32],
        widths: &[f64],
        prefs: &[u32],
        deviation: &[f64],
    ) -> f64 {
        let list = |p: usize| {
            prefs
                .get(p * self.rf..(p + 1) * self.rf)
                .unwrap_or_default()
        };
        // (node, change) for every load that moves.
        let mut changes: Vec<(u32, f64)> = Vec::new();
        let mut shift = |list: &[u32], amount: f64| {
            // The joiner enters the list and pushes its last node out.
            if !list.contains(&self.joiner) {
                changes.push((self.joiner, amount));
                if let Some(&last) = list.last() {
                    changes.push((last, -amount));
                }
            }
        };
        shift(list(q), s);
        // Ranges before q whose walk reaches q within rf distinct nodes now
        // meet the joiner first.
        let n = owners.len();
        let mut met: Vec<u32> = Vec::with_capacity(self.rf);
        for step in 1..n {
            let p = (q + n - step) % n;
            let Some(&owner) = owners.get(p) else { break };
            if owner == self.joiner {
                break;
            }
            if !met.contains(&owner) {
                met.push(owner);
            }
            if met.len() >= self.rf {
                break;
            }
            shift(list(p), widths.get(p).copied().unwrap_or(0.0));
        }
        changes.sort_unstable_by_key(|&(node, _)| node);
        let mut merged: Vec<(u32, f64)> = Vec::with_capacity(changes.len());
        for (node, amount) in changes {
            match merged.last_mut() {
                Some((last, total)) if *last == node => *total += amount,
                _ => merged.push((node, amount)),
            }
        }
        merged
            .into_iter()
            .map(|(node, moved)| {
                let e = deviation.get(node as usize).copied().unwrap_or(0.0);
                (e + moved).powi(2) - e * e
            })
            .sum()
    }
}

/// A token count as a fraction of the space.
fn fraction(tokens: u128) -> f64 {
    tokens as f64 / SPACE as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rf3() -> ReplicationFactor {
        ReplicationFactor::new(3).unwrap()
    }

    fn ids(n: usize) -> impl Iterator<Item = NodeId> {
        (0..n).map(|i| NodeId::from(format!("node-{i}")))
    }

    #[test]
    fn ten_nodes_with_sixteen_vnodes_balance_within_five_percent() {
        let ring = Ring::allocated(ids(10), 16, rf3()).unwrap();
        assert!(ring.members().iter().all(|m| m.tokens.len() == 16));
        let ratio = ring.ownership(ReplicationFactor::ONE).max_over_mean();
        assert!(ratio <= 1.05, "max/mean {ratio}");
    }

    #[test]
    fn replica_loads_stay_close_to_even() {
        // Cutting each donor's widest ranges regardless of replicas left
        // 10 x 16 at 1.27 max/mean for rf 3, worse than random tokens (1.20).
        for nodes in [10, 30] {
            let ring = Ring::allocated(ids(nodes), 16, rf3()).unwrap();
            let ratio = ring.ownership(rf3()).max_over_mean();
            assert!(ratio < 1.15, "{nodes} nodes: rf 3 max/mean {ratio}");
        }
    }

    #[test]
    fn every_join_up_to_vnodes_nodes_levels_the_ring() {
        // Regression: the last joiner once gave a single vnode to a donor
        // whose widest range was narrower than its gift, leaving 1.04.
        let mut ring = Ring::new([Member::derived("node-0", 16)]).unwrap();
        for id in ids(10).skip(1) {
            ring = ring.add(ring.allocate(&id, 16, rf3()).unwrap()).unwrap();
            let ratio = ring.ownership(ReplicationFactor::ONE).max_over_mean();
            assert!(ratio < 1.001, "{id} joined: max/mean {ratio}");
        }
    }

    #[test]
    fn a_joining_node_takes_its_fair_share() {
        let ring = Ring::allocated(ids(7), 8, rf3()).unwrap();
        let id = NodeId::from("new");
        let grown = ring.add(ring.allocate(&id, 8, rf3()).unwrap()).unwrap();
        let share = grown.ownership(ReplicationFactor::ONE).get(&id).unwrap();
        assert!((share * 8.0 - 1.0).abs() < 0.01, "share {share}");
    }

    #[test]
    fn allocation_is_deterministic_and_depends_on_the_id() {
        let ring = Ring::allocated(ids(5), 16, rf3()).unwrap();
        let x = NodeId::from("x");
        assert_eq!(ring.allocate(&x, 16, rf3()), ring.allocate(&x, 16, rf3()));
        let y = ring.allocate(&"y".into(), 16, rf3()).unwrap();
        let x = ring.allocate(&x, 16, rf3()).unwrap();
        assert!(x.tokens.iter().all(|t| !y.tokens.contains(t)));
    }

    #[test]
    fn allocation_takes_no_more_vnodes_than_there_are_ranges() {
        let ring = Ring::new([Member::new("a", vec![0])]).unwrap();
        let b = ring.allocate(&"b".into(), 16, rf3()).unwrap();
        assert_eq!(b.tokens.len(), 1);
        let two = ring.add(b).unwrap();
        let ratio = two.ownership(ReplicationFactor::ONE).max_over_mean();
        assert!(ratio < 1.01, "max/mean {ratio}");
    }

    #[test]
    fn bad_requests_are_errors() {
        let ring = Ring::allocated(ids(2), 4, rf3()).unwrap();
        let member = NodeId::from("node-0");
        assert_eq!(
            ring.allocate(&member, 4, rf3()),
            Err(RingError::DuplicateNode { node: member })
        );
        let new = NodeId::from("new");
        assert_eq!(
            ring.allocate(&new, 0, rf3()),
            Err(RingError::NoTokens { node: new })
        );
        assert_eq!(Ring::allocated(ids(0), 4, rf3()), Err(RingError::Empty));
    }
}
