//! The ring: sorted tokens, their owners, and every position's preference
//! list, precomputed so that a lookup is one binary search and one slice.
//!
//! Position `p` is the `p`-th smallest token; it owns the range from the
//! previous token (exclusive) to its own (inclusive), wrapping for `p = 0`.
//! Its preference list is the first [`MAX_RF`] distinct nodes met walking
//! clockwise from `p` (fewer if the ring has fewer nodes): replica `i` of
//! every key in the position's range is entry `i`.

use serde::{Deserialize, Serialize, Serializer};

use crate::error::RingError;
use crate::node::{Member, NodeId};
use crate::rf::{ReplicationFactor, MAX_RF};
use crate::token::{coalesce, token, TokenRange};

/// The consistent-hash ring built from a cluster's membership.
///
/// Immutable: a membership change builds a new ring ([`Ring::add`],
/// [`Ring::remove`]) so that a [`plan`](crate::plan()) can compare the two.
/// Two rings built from the same members are equal, whatever the order the
/// members came in. Serializes as its members with the tokens they hold.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<Member>")]
pub struct Ring {
    /// Sorted by id; each member's tokens are the ones it holds, sorted.
    members: Vec<Member>,
    /// Every held token, sorted and distinct.
    tokens: Vec<u64>,
    /// `owners[p]` is the index in `members` of the node holding `tokens[p]`.
    owners: Vec<u32>,
    /// Length of each preference list: `min(MAX_RF, members.len())`.
    depth: usize,
    /// The preference lists, `depth` member indices per position, flattened.
    prefs: Vec<u32>,
}

impl Ring {
    /// Builds the ring of `members`.
    ///
    /// Token collisions resolve the same way on every node: a token claimed
    /// by several nodes goes to the smallest id, and the others lose that
    /// vnode. Derived and allocated tokens practically never collide; the
    /// rule exists so that explicit tokens cannot make nodes disagree.
    ///
    /// # Errors
    /// [`RingError::Empty`] without members, [`RingError::DuplicateNode`] for
    /// a repeated id, [`RingError::NoTokens`] for a member left without a
    /// token, [`RingError::TooManyNodes`] past `u32::MAX` members.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Result<Self, RingError> {
        let mut members: Vec<Member> = members.into_iter().collect();
        if members.is_empty() {
            return Err(RingError::Empty);
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in members.windows(2) {
            if let [a, b] = pair {
                if a.id == b.id {
                    return Err(RingError::DuplicateNode { node: a.id.clone() });
                }
            }
        }
        let count = members.len();
        u32::try_from(count).map_err(|_| RingError::TooManyNodes { count })?;

        let mut claims = Vec::with_capacity(members.iter().map(|m| m.tokens.len()).sum());
        for (index, member) in (0u32..).zip(&mut members) {
            claims.extend(member.tokens.drain(..).map(|t| (t, index)));
        }
        // Sorted by token then member index, i.e. id: keeping the first claim
        // of each token gives it to the smallest id.
        claims.sort_unstable();
        claims.dedup_by_key(|&mut (t, _)| t);
        let (tokens, owners): (Vec<u64>, Vec<u32>) = claims.into_iter().unzip();
        for (&t, &owner) in tokens.iter().zip(&owners) {
            if let Some(member) = members.get_mut(owner as usize) {
                member.tokens.push(t);
            }
        }
        if let Some(member) = members.iter().find(|m| m.tokens.is_empty()) {
            return Err(RingError::NoTokens {
                node: member.id.clone(),
            });
        }

        let depth = count.min(MAX_RF);
        let prefs = preference_lists(&owners, depth);
        Ok(Self {
            members,
            tokens,
            owners,
            depth,
            prefs,
        })
    }

    /// This ring plus `member`.
    ///
    /// # Errors
    /// As [`Ring::new`]; [`RingError::DuplicateNode`] if it is already a member.
    pub fn add(&self, member: Member) -> Result<Self, RingError> {
        Self::new(self.members.iter().cloned().chain([member]))
    }

    /// This ring without `node`.
    ///
    /// # Errors
    /// [`RingError::UnknownNode`] if it is not a member, [`RingError::Empty`]
    /// if it is the last one.
    pub fn remove(&self, node: &NodeId) -> Result<Self, RingError> {
        if self.index_of(node).is_none() {
            return Err(RingError::UnknownNode { node: node.clone() });
        }
        Self::new(self.members.iter().filter(|m| m.id != *node).cloned())
    }

    /// The members, sorted by id, each with the tokens it holds, sorted.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.index_of(node).is_some()
    }

    /// The node that owns `key`: its first replica.
    pub fn owner(&self, key: &[u8]) -> &NodeId {
        self.token_owner(token(key))
    }

    /// The node that owns `token`.
    pub fn token_owner(&self, token: u64) -> &NodeId {
        let owner = self.owners.get(self.position(token));
        match owner.and_then(|&index| self.members.get(index as usize)) {
            Some(member) => &member.id,
            None => unreachable!("a ring has tokens, and each names a member"),
        }
    }

    /// The preference list of `key`: `min(rf, nodes)` distinct nodes in
    /// clockwise order from the key's token, the owner first.
    pub fn replicas(&self, key: &[u8], rf: ReplicationFactor) -> Replicas<'_> {
        self.token_replicas(token(key), rf)
    }

    /// The preference list of `token`, as [`Ring::replicas`].
    pub fn token_replicas(&self, token: u64, rf: ReplicationFactor) -> Replicas<'_> {
        Replicas {
            members: &self.members,
            indices: self.prefs_at(self.position(token), rf).iter(),
        }
    }

    /// The token ranges `node` holds a replica of, among the first `rf`, in
    /// clockwise order from the lowest token, neighbours merged. Empty for a
    /// node that is not a member.
    pub fn ranges(&self, node: &NodeId, rf: ReplicationFactor) -> Vec<TokenRange> {
        let Some(index) = self.index_of(node) else {
            return Vec::new();
        };
        let held = self
            .positions(rf)
            .filter(|(_, prefs)| prefs.contains(&index))
            .map(|(range, _)| (range, ()));
        coalesce(held)
            .into_iter()
            .map(|(range, ())| range)
            .collect()
    }

    /// The token ranges `node` holds a replica of, each with the other
    /// replicas of it (sorted by id): what anti-entropy repair compares with
    /// whom. Clockwise from the lowest token; neighbours with the same
    /// replicas are merged, so a ring of `rf` nodes is one range. Empty for
    /// a node that is not a member.
    pub fn replica_sets(
        &self,
        node: &NodeId,
        rf: ReplicationFactor,
    ) -> Vec<(TokenRange, Vec<NodeId>)> {
        let Some(index) = self.index_of(node) else {
            return Vec::new();
        };
        let held = self
            .positions(rf)
            .filter(|(_, prefs)| prefs.contains(&index))
            .map(|(range, prefs)| {
                let mut others: Vec<u32> = prefs.iter().copied().filter(|&p| p != index).collect();
                // Member indices follow the id order.
                others.sort_unstable();
                (range, others)
            });
        coalesce(held)
            .into_iter()
            .map(|(range, others)| {
                let ids = others
                    .iter()
                    .filter_map(|&i| self.members.get(i as usize).map(|m| m.id.clone()))
                    .collect();
                (range, ids)
            })
            .collect()
    }

    /// Every position's range with its preference list cut to `rf`, as
    /// indices into [`Ring::members`], clockwise from the lowest token.
    pub(crate) fn positions(
        &self,
        rf: ReplicationFactor,
    ) -> impl Iterator<Item = (TokenRange, &[u32])> + '_ {
        self.position_ranges()
            .enumerate()
            .map(move |(p, range)| (range, self.prefs_at(p, rf)))
    }

    /// The sorted ring tokens.
    pub(crate) fn tokens(&self) -> &[u64] {
        &self.tokens
    }

    /// The owner of each ring token, as an index into [`Ring::members`].
    pub(crate) fn owners(&self) -> &[u32] {
        &self.owners
    }

    /// The range of each position, clockwise from the lowest token.
    fn position_ranges(&self) -> impl Iterator<Item = TokenRange> + '_ {
        let last = self.tokens.last().copied().unwrap_or(0);
        let starts = std::iter::once(last).chain(self.tokens.iter().copied());
        starts
            .zip(&self.tokens)
            .map(|(start, &end)| TokenRange::new(start, end))
    }

    /// The position whose range holds `token`: the first token at or after
    /// it, wrapping to position 0 past the last one.
    #[inline]
    fn position(&self, token: u64) -> usize {
        let p = self.tokens.partition_point(|&t| t < token);
        if p == self.tokens.len() {
            0
        } else {
            p
        }
    }

    /// The first `rf` entries of position `p`'s preference list.
    #[inline]
    fn prefs_at(&self, p: usize, rf: ReplicationFactor) -> &[u32] {
        let start = p * self.depth;
        let len = rf.get().min(self.depth);
        // In bounds for every position; an empty list could only come from a
        // bug, and is safer than a panic on a lookup path.
        self.prefs.get(start..start + len).unwrap_or_default()
    }

    fn index_of(&self, node: &NodeId) -> Option<u32> {
        let index = self.members.binary_search_by(|m| m.id.cmp(node)).ok()?;
        u32::try_from(index).ok()
    }
}

impl Serialize for Ring {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.members.serialize(serializer)
    }
}

impl TryFrom<Vec<Member>> for Ring {
    type Error = RingError;

    fn try_from(members: Vec<Member>) -> Result<Self, RingError> {
        Self::new(members)
    }
}

/// A preference list: distinct nodes in clockwise order, the owner first.
/// Borrows the ring; walking it allocates nothing.
#[derive(Clone, Debug)]
pub struct Replicas<'a> {
    members: &'a [Member],
    indices: std::slice::Iter<'a, u32>,
}

impl<'a> Iterator for Replicas<'a> {
    type Item = &'a NodeId;

    #[inline]
    fn next(&mut self) -> Option<&'a NodeId> {
        let index = *self.indices.next()?;
        self.members.get(index as usize).map(|m| &m.id)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.indices.size_hint()
    }
}

impl ExactSizeIterator for Replicas<'_> {}

/// The first `depth` distinct owners met walking clockwise from each
/// position, flattened. REQUIRES at least `depth` distinct owners.
///
/// Built backwards in `O(positions * depth)`: the list at `p` is `p`'s owner
/// followed by the list at `p + 1` without that owner, cut to `depth`. Only
/// the last position needs a walk, which wraps round the ring.
pub(crate) fn preference_lists(owners: &[u32], depth: usize) -> Vec<u32> {
    let mut prefs = vec![0u32; owners.len() * depth];
    let mut list: Vec<u32> = Vec::with_capacity(depth);
    for &owner in owners.last().into_iter().chain(owners) {
        if list.len() == depth {
            break;
        }
        if !list.contains(&owner) {
            list.push(owner);
        }
    }
    let last = owners.len().saturating_sub(1);
    for (p, &owner) in owners.iter().enumerate().rev() {
        if p != last {
            match list.iter().position(|&o| o == owner) {
                Some(i) => {
                    list.remove(i);
                }
                None => list.truncate(depth - 1),
            }
            list.insert(0, owner);
        }
        if let Some(slot) = prefs.get_mut(p * depth..(p + 1) * depth) {
            slot.copy_from_slice(&list);
        }
    }
    prefs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ring(members: &[(&str, &[u64])]) -> Ring {
        Ring::new(members.iter().map(|(id, t)| Member::new(*id, t.to_vec()))).unwrap()
    }

    fn ids<'a>(replicas: Replicas<'a>) -> Vec<&'a str> {
        replicas.map(NodeId::as_str).collect()
    }

    #[test]
    fn a_token_belongs_to_the_next_ring_token_wrapping_past_the_last() {
        let r = ring(&[("a", &[100]), ("b", &[200])]);
        for (t, owner) in [(0, "a"), (100, "a"), (101, "b"), (200, "b"), (201, "a")] {
            assert_eq!(r.token_owner(t).as_str(), owner, "token {t}");
        }
        assert_eq!(r.token_owner(u64::MAX).as_str(), "a");
    }

    #[test]
    fn replica_sets_name_the_other_replicas_and_merge_equal_neighbours() {
        let r = ring(&[("a", &[10, 20]), ("b", &[30]), ("c", &[40])]);
        let rf = |n| ReplicationFactor::new(n).unwrap();
        let sets = |node: &str, n| -> Vec<(TokenRange, Vec<String>)> {
            r.replica_sets(&NodeId::from(node), rf(n))
                .into_iter()
                .map(|(range, ids)| (range, ids.iter().map(|i| i.as_str().to_owned()).collect()))
                .collect()
        };
        // Three nodes, rf 3: one range, the whole ring, with both others.
        assert_eq!(
            sets("a", 3),
            [(TokenRange::new(40, 40), vec!["b".into(), "c".into()])]
        );
        // rf 2: a holds (40, 20] with b (positions 10 and 20 list a, b) and
        // (30, 40] with c (position 40 lists c, a).
        assert_eq!(
            sets("a", 2),
            [
                (TokenRange::new(40, 20), vec!["b".to_owned()]),
                (TokenRange::new(30, 40), vec!["c".to_owned()]),
            ]
        );
        // Every range agrees with the preference lists, and together they
        // are what `ranges` gives.
        for node in ["a", "b", "c"] {
            let got = r.replica_sets(&NodeId::from(node), rf(2));
            for (range, others) in &got {
                let mut want: Vec<&str> = ids(r.token_replicas(range.end(), rf(2)))
                    .into_iter()
                    .filter(|id| *id != node)
                    .collect();
                want.sort_unstable();
                let others: Vec<&str> = others.iter().map(NodeId::as_str).collect();
                assert_eq!(others, want, "{node} {range:?}");
            }
            let width: u128 = got.iter().map(|(r, _)| r.width()).sum();
            let want: u128 = r
                .ranges(&NodeId::from(node), rf(2))
                .iter()
                .map(TokenRange::width)
                .sum();
            assert_eq!(width, want, "{node}");
        }
        assert!(sets("z", 2).is_empty());
    }

    #[test]
    fn replicas_are_distinct_and_capped_by_the_node_count() {
        let r = ring(&[("a", &[10, 20]), ("b", &[30]), ("c", &[40])]);
        let rf = |n| ReplicationFactor::new(n).unwrap();
        assert_eq!(ids(r.token_replicas(15, rf(3))), ["a", "b", "c"]);
        assert_eq!(ids(r.token_replicas(5, rf(2))), ["a", "b"]);
        assert_eq!(ids(r.token_replicas(35, rf(3))), ["c", "a", "b"]);
        assert_eq!(ids(r.token_replicas(35, rf(MAX_RF))), ["c", "a", "b"]);
        assert_eq!(r.token_replicas(35, rf(MAX_RF)).len(), 3);
    }

    #[test]
    fn member_order_does_not_matter() {
        let one = ring(&[("a", &[3, 1]), ("b", &[2])]);
        let other = ring(&[("b", &[2]), ("a", &[1, 3])]);
        assert_eq!(one, other);
    }

    #[test]
    fn a_contested_token_goes_to_the_smallest_id() {
        let r = ring(&[("b", &[100, 300]), ("a", &[100])]);
        assert_eq!(r.token_owner(100).as_str(), "a");
        assert_eq!(r.members()[1].tokens, [300]);
        let lost_all = Ring::new([Member::new("b", vec![100]), Member::new("a", vec![100])]);
        assert_eq!(lost_all, Err(RingError::NoTokens { node: "b".into() }));
    }

    #[test]
    fn a_node_repeating_a_token_holds_it_once() {
        let r = ring(&[("a", &[7, 7, 7])]);
        assert_eq!(r.members()[0].tokens, [7]);
        assert_eq!(
            r.ranges(&"a".into(), ReplicationFactor::ONE),
            [TokenRange::new(7, 7)]
        );
    }

    #[test]
    fn bad_memberships_are_errors() {
        assert_eq!(Ring::new([]), Err(RingError::Empty));
        assert_eq!(
            Ring::new([Member::new("a", vec![1]), Member::new("a", vec![2])]),
            Err(RingError::DuplicateNode { node: "a".into() })
        );
        assert_eq!(
            Ring::new([Member::derived("a", 0)]),
            Err(RingError::NoTokens { node: "a".into() })
        );
        let r = ring(&[("a", &[1])]);
        assert_eq!(r.remove(&"a".into()), Err(RingError::Empty));
        assert_eq!(
            r.remove(&"z".into()),
            Err(RingError::UnknownNode { node: "z".into() })
        );
        assert_eq!(
            r.add(Member::new("a", vec![5])),
            Err(RingError::DuplicateNode { node: "a".into() })
        );
    }

    #[test]
    fn add_then_remove_is_the_same_ring() {
        let r = ring(&[("a", &[1, 50]), ("b", &[20])]);
        let grown = r.add(Member::derived("c", 4)).unwrap();
        assert!(grown.contains(&"c".into()));
        assert_eq!(grown.remove(&"c".into()).unwrap(), r);
    }

    #[test]
    fn ranges_merge_neighbours_and_wrap() {
        let r = ring(&[("a", &[10, 20]), ("b", &[30]), ("c", &[40])]);
        let a = NodeId::from("a");
        assert_eq!(
            r.ranges(&a, ReplicationFactor::ONE),
            [TokenRange::new(40, 20)]
        );
        // As second replica a also holds c's range (30, 40].
        let two = ReplicationFactor::new(2).unwrap();
        assert_eq!(r.ranges(&a, two), [TokenRange::new(30, 20)]);
        assert!(r.ranges(&"z".into(), two).is_empty());
    }

    #[test]
    fn preference_lists_wrap_for_the_last_positions() {
        // Owners by position: a a b a c.
        let prefs = preference_lists(&[0, 0, 1, 0, 2], 3);
        let lists: Vec<&[u32]> = prefs.chunks(3).collect();
        assert_eq!(
            lists,
            [[0, 1, 2], [0, 1, 2], [1, 0, 2], [0, 2, 1], [2, 0, 1]]
        );
    }

    #[test]
    fn serializes_as_its_members() {
        let r = ring(&[("b", &[100, 300]), ("a", &[100, 5])]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"[{"id":"a","tokens":[5,100]},{"id":"b","tokens":[300]}]"#
        );
        assert_eq!(serde_json::from_str::<Ring>(&json).unwrap(), r);
        let invalid = serde_json::from_str::<Ring>("[]");
        assert!(invalid.is_err());
    }
}
