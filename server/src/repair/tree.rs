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
//! [`depth_for`] makes leaves hold at most half an item on average (so a
//! differing leaf is usually one differing item), within [`MAX_DEPTH`]:
//! `4^10` leaves, 8 MiB of leaf hashes. A range of more than
//! [`MAX_TREE_ITEMS`] is compared in equal token pieces ([`piece`]) of a
//! tree each, so that bound holds whatever the range's size.

use strata_engine::Snapshot;
use strata_ring::TokenRange;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

// The tree's shape is part of the wire protocol: both replicas must build
// the same one.
pub(crate) use crate::peer::repair::{FANOUT, MAX_DEPTH, MAX_NODES_PER_CALL};

/// The digest tree of one range, as of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeTree {
    range: TokenRange,
    items: u64,
    /// `levels[l]` holds the `FANOUT^l` hashes of level `l`.
    levels: Vec<Vec<u64>>,
}

/// The depth for a range of `items` items: leaves hold at most half an
/// item on average, no leaf is narrower than one token, and no deeper than
/// [`MAX_DEPTH`].
pub(crate) fn depth_for(range: TokenRange, items: u64) -> u8 {
    let mut depth = 0u8;
    let mut leaves = 1u128;
    let want = u128::from(items) * 2;
    while depth < MAX_DEPTH && leaves < want && leaves * u128::from(FANOUT) <= range.width() {
        depth += 1;
        leaves *= u128::from(FANOUT);
    }
    depth
}

/// Most items one tree is built over: at [`MAX_DEPTH`] its leaves then
/// still hold half an item on average. A larger range is compared as
/// [`piece`]s of at most this many items each.
pub(crate) const MAX_TREE_ITEMS: u64 = (FANOUT as u64).pow(MAX_DEPTH as u32) / 2;

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
fn leaf_of(range: TokenRange, depth: u8, token: u64) -> usize {
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
    /// depth [`depth_for`] picks for the items found. Blocks on engine
    /// reads: call it from a blocking context.
    pub(crate) fn build(
        snapshot: &Snapshot,
        range: TokenRange,
        depth: Option<u8>,
    ) -> Result<Self, strata_engine::Error> {
        let mut items = Vec::new();
        for span in offset_order(range) {
            let lo = span.start().to_be_bytes().to_vec();
            let upper = match span.end().checked_add(1) {
                Some(next) => std::ops::Bound::Excluded(next.to_be_bytes().to_vec()),
                None => std::ops::Bound::Unbounded,
            };
            for item in snapshot.range::<Vec<u8>>((std::ops::Bound::Included(lo), upper)) {
                let (key, record) = item?;
                items.push((token_of(&key), item_hash(&key, &record)));
            }
        }
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

    /// The hashes of `nodes` of `level`; `None` if a level or index is
    /// outside the tree.
    pub(crate) fn hashes(&self, level: u8, nodes: &[u32]) -> Option<Vec<u64>> {
        let level = self.levels.get(usize::from(level))?;
        nodes
            .iter()
            .map(|&n| level.get(usize::try_from(n).ok()?).copied())
            .collect()
    }
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
    /// An answer with another number of hashes than nodes asked for.
    #[error("asked for {asked} hashes, got {got}")]
    WrongCount {
        /// Nodes asked for.
        asked: usize,
        /// Hashes received.
        got: usize,
    },
}

/// A top-down comparison of a local tree with another replica's tree of the
/// same range and depth: asks for the root, then only for the children of
/// the nodes that differ, level by level. Transport-free: the caller sends
/// each [`Descent::request`] and feeds the answer to [`Descent::answer`].
#[derive(Debug)]
pub(crate) struct Descent<'a> {
    tree: &'a RangeTree,
    level: u8,
    /// The nodes of `level` to compare, ascending.
    pending: Vec<u32>,
    /// How many of `pending` have been answered.
    done: usize,
    /// Children of the differing nodes of `level`: the next level's nodes.
    next: Vec<u32>,
    /// Differing leaves with the other side's hash, ascending.
    leaves: Vec<(u32, u64)>,
}

impl<'a> Descent<'a> {
    /// A comparison that starts at the root.
    pub(crate) fn new(tree: &'a RangeTree) -> Self {
        Self {
            tree,
            level: 0,
            pending: vec![0],
            done: 0,
            next: Vec::new(),
            leaves: Vec::new(),
        }
    }

    /// The next nodes to ask the other side for (level, indices), at most
    /// [`MAX_NODES_PER_CALL`]; `None` once the comparison is over.
    pub(crate) fn request(&self) -> Option<(u8, &[u32])> {
        let rest = self.pending.get(self.done..).unwrap_or_default();
        let batch = rest.get(..rest.len().min(MAX_NODES_PER_CALL))?;
        (!batch.is_empty()).then_some((self.level, batch))
    }

    /// Takes the other side's hashes of the last request's nodes.
    pub(crate) fn answer(&mut self, theirs: &[u64]) -> Result<(), DescentError> {
        let Some((level, asked)) = self.request().map(|(l, a)| (l, a.to_vec())) else {
            return Ok(());
        };
        if theirs.len() != asked.len() {
            return Err(DescentError::WrongCount {
                asked: asked.len(),
                got: theirs.len(),
            });
        }
        let ours = self.tree.hashes(level, &asked).unwrap_or_default();
        let is_leaf = level >= self.tree.depth();
        let answered = asked.len();
        for ((&node, &mine), &other) in asked.iter().zip(&ours).zip(theirs) {
            if mine == other {
                continue;
            }
            if is_leaf {
                self.leaves.push((node, other));
            } else {
                self.next.extend((0..FANOUT).map(|c| node * FANOUT + c));
            }
        }
        self.done += answered;
        if self.done >= self.pending.len() {
            self.pending = std::mem::take(&mut self.next);
            self.done = 0;
            self.level += 1;
        }
        Ok(())
    }

    /// The differing leaves, with the other side's hash of each.
    pub(crate) fn into_leaves(self) -> Vec<(u32, u64)> {
        self.leaves
    }
}

/// Merges ascending leaf indices of `depth` into the token sub-ranges they
/// cover, neighbours joined: one stream per run of differing leaves.
pub(crate) fn leaf_runs(range: TokenRange, depth: u8, leaves: &[u32]) -> Vec<TokenRange> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &leaf in leaves {
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(leaf) => *last = leaf,
            _ => runs.push((leaf, leaf)),
        }
    }
    runs.into_iter()
        .filter_map(|(first, last)| {
            let lo = sub_range(range, depth, first)?;
            let hi = sub_range(range, depth, last)?;
            Some(TokenRange::new(lo.start(), hi.end()))
        })
        .collect()
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
