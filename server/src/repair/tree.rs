//! The range digest tree: a hash tree over one token range's items, which
//! two replicas compare top-down to find the token sub-ranges where they
//! differ.
//!
//! # Shape
//!
//! The range `(S, E]` of width `W` tokens is cut into `FANOUT^d` leaves of
//! (near) equal token width, `d` the tree's depth. Token `t` has the offset
//! `o = t - S - 1` (wrapping), `0 <= o < W`, and lies in leaf
//! `floor(o * FANOUT^d / W)`. Node `j` of level `l` (level 0 is the root,
//! level `d` the leaves) covers the offsets `ceil(j * W / FANOUT^l) ..
//! ceil((j + 1) * W / FANOUT^l)`, so its children are `FANOUT * j ..
//! FANOUT * j + FANOUT` of level `l + 1`, and its token sub-range is
//! `(S + lo, S + hi]` ([`sub_range`]). The depth is chosen by whoever starts
//! the comparison ([`depth_for`]) and both sides build with it.
//!
//! # Hashes (all XXH3-64, seed 0; integers big-endian)
//!
//! ```text
//! item  = xxh3(key length u32 ++ engine key ++ stored record bytes)
//! leaf  = 0                                  if the leaf holds no item
//!       = xxh3(item_1 u64 ++ ... ++ item_n)  its items in engine-key order
//! inner = 0                                  if every child is 0
//!       = xxh3(child_0 u64 ++ ... ++ child_{FANOUT-1})
//! ```
//!
//! The item hash covers the whole stored record (version, tombstone flag
//! and value), not only key and version: hashing a value costs CPU, never
//! traffic, and two records with the same version but different values
//! (two coordinators in one HLC tick) are a real divergence that
//! last-writer-wins resolves (`storage::Record::supersedes`), so repair
//! must see it. An empty leaf hashes to 0 so that empty subtrees compare
//! equal without hashing; a non-empty one hashing to 0 by chance (2^-64)
//! would be missed until its contents change, as would any collision.
//!
//! # Size
//!
//! [`depth_for`] makes leaves hold at most [`LEAF_ITEMS`] items on average,
//! within [`MAX_DEPTH`]: `4^10` leaves, 8 MiB of leaf hashes. The walk
//! stops at the leaves, and the differing ones are compared item by item
//! (`repair::rows`), so a leaf of a few items costs a few short hashes where
//! a deeper tree would cost another level of the walk. A range of more
//! than [`MAX_TREE_ITEMS`] is compared in equal token pieces ([`piece`]) of
//! a tree each, so that bound holds whatever the range's size.
//!
//! # Comparing
//!
//! Two trees are compared top-down ([`Descent`]) in 4-byte short hashes
//! seeded per comparison (`peer::repair` says why that is safe): the
//! children of the root first, then the children of each node that differs,
//! down to the leaves.

use strata_engine::Snapshot;
use strata_ring::TokenRange;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

// The tree's shape is part of the wire protocol: both replicas must build
// the same one.
use crate::peer::repair::short_hash;
pub(crate) use crate::peer::repair::{FANOUT, MAX_DEPTH, MAX_PARENTS_PER_CALL};

/// Items a leaf holds on average, at most (but at [`MAX_DEPTH`]). A
/// differing leaf costs its items' short hashes (4 bytes each) in the row
/// step, a level more of the walk 20 bytes per differing parent: for
/// 1,000,000 items 1 % divergent (`scripts/repair-traffic.sh`), 4 items
/// (depth 9) cost 766 KB of comparison, fewer than the ~800 KB estimated
/// for 2 (depth 10, a level more of the walk for 2 fewer hashes a leaf).
pub(crate) const LEAF_ITEMS: u64 = 4;

/// The digest tree of one range, as of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeTree {
    range: TokenRange,
    items: u64,
    /// `levels[l]` holds the `FANOUT^l` hashes of level `l`.
    levels: Vec<Vec<u64>>,
}

/// The depth for a range of `items` items: leaves hold at most
/// [`LEAF_ITEMS`] items on average, no leaf is narrower than one token, and
/// no deeper than [`MAX_DEPTH`]. At least 1 when the range is wide enough:
/// the first digest answer tells the asker the other side's item count, by
/// which it may go deeper before any leaf is compared.
pub(crate) fn depth_for(range: TokenRange, items: u64) -> u8 {
    let mut depth = 0u8;
    let mut leaves = 1u128;
    let want = u128::from(items.div_ceil(LEAF_ITEMS));
    while depth < MAX_DEPTH
        && (depth == 0 || leaves < want)
        && leaves * u128::from(FANOUT) <= range.width()
    {
        depth += 1;
        leaves *= u128::from(FANOUT);
    }
    depth
}

/// Most items one tree is built over: at [`MAX_DEPTH`] its leaves then
/// still hold [`LEAF_ITEMS`] items on average. A larger range is compared
/// as [`piece`]s of at most this many items each.
pub(crate) const MAX_TREE_ITEMS: u64 = (FANOUT as u64).pow(MAX_DEPTH as u32) * LEAF_ITEMS;

/// The token sub-range of node `index` of `level`; `None` if it holds no
/// token (a range narrower than its level's node count).
pub(crate) fn sub_range(range: TokenRange, level: u8, index: u32) -> Option<TokenRange> {
    piece(range, nodes_at(level), u64::from(index))
}

/// Piece `index` of `range` cut into `parts` pieces of (near) equal token
/// width; `None` if it holds no token.
pub(crate) fn piece(range: TokenRange, parts: u128, index: u64) -> Option<TokenRange> {
    let nodes = parts.max(1);
    let width = range.width();
    let lo = ceil_div(u128::from(index) * width, nodes);
    let hi = ceil_div((u128::from(index) + 1) * width, nodes);
    if hi > width {
        return None;
    }
    // `hi <= width <= 2^64`; a full range's `hi` of 2^64 wraps to `S`, as
    // `TokenRange` writes the full range.
    (lo < hi).then(|| {
        TokenRange::new(
            range.start().wrapping_add(lo as u64),
            range.start().wrapping_add(hi as u64),
        )
    })
}

fn nodes_at(level: u8) -> u128 {
    u128::from(FANOUT).pow(u32::from(level))
}

fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

/// The leaf of `depth` that `token` (inside `range`) falls in.
pub(crate) fn leaf_of(range: TokenRange, depth: u8, token: u64) -> usize {
    let offset = token.wrapping_sub(range.start()).wrapping_sub(1);
    let leaf = u128::from(offset) * nodes_at(depth) / range.width();
    // Below FANOUT^MAX_DEPTH, far inside usize.
    usize::try_from(leaf).unwrap_or(usize::MAX)
}

/// The hash of one stored item.
pub(crate) fn item_hash(engine_key: &[u8], record: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(
        &u32::try_from(engine_key.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    h.update(engine_key);
    h.update(record);
    h.digest()
}

/// The hash of a leaf holding the items of `hashes`, in order.
fn leaf_hash(hashes: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = Xxh3::new();
    let mut any = false;
    for item in hashes {
        h.update(&item.to_be_bytes());
        any = true;
    }
    if any {
        h.digest()
    } else {
        0
    }
}

fn inner_hash(children: &[u64]) -> u64 {
    if children.iter().all(|&c| c == 0) {
        return 0;
    }
    let bytes: Vec<u8> = children.iter().flat_map(|c| c.to_be_bytes()).collect();
    xxh3_64(&bytes)
}

impl RangeTree {
    /// The tree of `range` in `snapshot`, of `depth` or, when `None`, of the
    /// depth [`depth_for`] picks for the items found. `pay` hears the bytes
    /// read as they are. Blocks on engine reads: call it from a blocking
    /// context.
    pub(crate) fn build(
        snapshot: &Snapshot,
        range: TokenRange,
        depth: Option<u8>,
        pay: &mut dyn FnMut(u64),
    ) -> Result<Self, strata_engine::Error> {
        let mut items = Vec::new();
        scan(snapshot, range, &mut |key, record| {
            pay((key.len() + record.len()) as u64);
            items.push((token_of(key), item_hash(key, record)));
        })?;
        Ok(Self::from_hashes(range, depth, &items))
    }

    /// The tree over `items`: `(token, item hash)` in engine-key order
    /// within offset order (what [`RangeTree::build`] reads). Items outside
    /// the range are left out.
    pub(crate) fn from_hashes(range: TokenRange, depth: Option<u8>, items: &[(u64, u64)]) -> Self {
        let inside: Vec<&(u64, u64)> = items.iter().filter(|(t, _)| range.contains(*t)).collect();
        let count = inside.len() as u64;
        let depth = depth
            .unwrap_or_else(|| depth_for(range, count))
            .min(MAX_DEPTH);
        let leaves_len = usize::try_from(nodes_at(depth)).unwrap_or(usize::MAX);
        let mut leaves = vec![0u64; leaves_len];
        let mut rest = inside.as_slice();
        while let Some(((token, _), _)) = rest.split_first() {
            let leaf = leaf_of(range, depth, *token);
            let run = rest
                .iter()
                .take_while(|(t, _)| leaf_of(range, depth, *t) == leaf)
                .count();
            let (group, tail) = rest.split_at(run.max(1));
            if let Some(slot) = leaves.get_mut(leaf) {
                *slot = leaf_hash(group.iter().map(|(_, h)| *h));
            }
            rest = tail;
        }
        let mut levels = vec![leaves];
        while levels.len() <= usize::from(depth) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let above = below
                .chunks(FANOUT as usize)
                .map(inner_hash)
                .collect::<Vec<_>>();
            levels.push(above);
        }
        levels.reverse();
        Self {
            range,
            items: count,
            levels,
        }
    }

    /// The range it covers.
    pub(crate) fn range(&self) -> TokenRange {
        self.range
    }

    /// Items it was built over.
    pub(crate) fn items(&self) -> u64 {
        self.items
    }

    /// Its depth (0: the root is the only leaf).
    pub(crate) fn depth(&self) -> u8 {
        u8::try_from(self.levels.len().saturating_sub(1)).unwrap_or(MAX_DEPTH)
    }

    /// The short hashes under `seed` of the children of `parents` of
    /// `level`, [`FANOUT`] per parent in order; `None` if a parent is
    /// outside the tree or is a leaf.
    pub(crate) fn children(&self, level: u8, parents: &[u32], seed: u64) -> Option<Vec<u32>> {
        let below = self.levels.get(usize::from(level) + 1)?;
        let mut out = Vec::with_capacity(parents.len() * FANOUT as usize);
        for &p in parents {
            let first = usize::try_from(p).ok()?.checked_mul(FANOUT as usize)?;
            let children = below.get(first..first + FANOUT as usize)?;
            out.extend(children.iter().map(|&h| short_hash(h, seed)));
        }
        Some(out)
    }
}

/// Calls `f` with every item (engine key, stored record) of `range` in
/// `snapshot`, in offset order: a wrapping range starts with its high
/// tokens. Blocks on engine reads.
pub(crate) fn scan(
    snapshot: &Snapshot,
    range: TokenRange,
    f: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<(), strata_engine::Error> {
    for span in offset_order(range) {
        let lo = span.start().to_be_bytes().to_vec();
        let upper = match span.end().checked_add(1) {
            Some(next) => std::ops::Bound::Excluded(next.to_be_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        for item in snapshot.range::<Vec<u8>>((std::ops::Bound::Included(lo), upper)) {
            let (key, record) = item?;
            f(&key, &record);
        }
    }
    Ok(())
}

/// The range's one or two spans in offset order: a wrapping range starts
/// with its high tokens.
fn offset_order(range: TokenRange) -> impl Iterator<Item = std::ops::RangeInclusive<u64>> {
    let mut spans: Vec<_> = range.spans().collect();
    spans.reverse();
    spans.into_iter()
}

fn token_of(engine_key: &[u8]) -> u64 {
    engine_key
        .first_chunk::<8>()
        .map_or(0, |t| u64::from_be_bytes(*t))
}

/// Why a comparison cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DescentError {
    /// An answer with another number of hashes than children asked for.
    #[error("asked for {asked} hashes, got {got}")]
    WrongCount {
        /// Children asked for.
        asked: usize,
        /// Hashes received.
        got: usize,
    },
}

/// A top-down comparison of a local tree with another replica's tree of the
/// same range and depth: asks for the children of the root, then for the
/// children of each node that differs, level by level, in short hashes
/// seeded by `seed`. Transport-free: the caller sends each
/// [`Descent::request`] and feeds the answer to [`Descent::answer`].
#[derive(Debug)]
pub(crate) struct Descent<'a> {
    tree: &'a RangeTree,
    seed: u64,
    /// The level of `pending`.
    level: u8,
    /// The differing nodes of `level` whose children are to be compared,
    /// ascending.
    pending: Vec<u32>,
    /// How many of `pending` have been answered.
    done: usize,
    /// Differing nodes of `level + 1`.
    next: Vec<u32>,
}

impl<'a> Descent<'a> {
    /// A comparison that starts at the root (so nothing to do for a tree
    /// of depth 0: its root is its only leaf).
    pub(crate) fn new(tree: &'a RangeTree, seed: u64) -> Self {
        let pending = if tree.depth() == 0 { vec![] } else { vec![0] };
        Self {
            tree,
            seed,
            level: 0,
            pending,
            done: 0,
            next: Vec::new(),
        }
    }

    /// The next parents whose children to ask the other side for (level,
    /// indices), at most [`MAX_PARENTS_PER_CALL`]; `None` once the walk
    /// reached the leaves.
    pub(crate) fn request(&self) -> Option<(u8, &[u32])> {
        if self.level >= self.tree.depth() {
            return None;
        }
        let rest = self.pending.get(self.done..).unwrap_or_default();
        let batch = rest.get(..rest.len().min(MAX_PARENTS_PER_CALL))?;
        (!batch.is_empty()).then_some((self.level, batch))
    }

    /// Takes the other side's short hashes of the last request's children.
    pub(crate) fn answer(&mut self, theirs: &[u32]) -> Result<(), DescentError> {
        let Some((level, asked)) = self.request().map(|(l, a)| (l, a.to_vec())) else {
            return Ok(());
        };
        let ours = self
            .tree
            .children(level, &asked, self.seed)
            .unwrap_or_default();
        if theirs.len() != ours.len() {
            return Err(DescentError::WrongCount {
                asked: ours.len(),
                got: theirs.len(),
            });
        }
        let children = asked
            .iter()
            .flat_map(|&p| (0..FANOUT).map(move |c| p * FANOUT + c));
        for ((child, mine), other) in children.zip(&ours).zip(theirs) {
            if mine != other {
                self.next.push(child);
            }
        }
        self.done += asked.len();
        if self.done >= self.pending.len() {
            self.pending = std::mem::take(&mut self.next);
            self.done = 0;
            self.level += 1;
        }
        Ok(())
    }

    /// The differing leaves, ascending, once [`Descent::request`] is `None`
    /// (all of them, [`0`], for a tree of depth 0).
    pub(crate) fn into_leaves(self) -> Vec<u32> {
        if self.tree.depth() == 0 {
            return vec![0];
        }
        self.pending
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
