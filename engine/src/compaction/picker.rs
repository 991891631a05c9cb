//! Choosing the next compaction: which level is most overdue, and which of
//! its tables go, together with what they overlap one level down.
//!
//! A level's score is how far it is over its budget: L0 by table count
//! against `level0_compaction_trigger` (every L0 table costs each lookup a
//! probe), deeper levels by bytes against their target size
//! (`level1_target_size`, times [`LEVEL_SIZE_MULTIPLIER`] per level). The
//! highest score of at least 1 goes first. Within a level, compactions
//! rotate through the key space from a per-level pointer, so every part of
//! the level is rewritten in turn and tombstones everywhere get pushed down.

use std::sync::Arc;

use super::Compaction;
use crate::iter::KeyBounds;
use crate::key::compare_internal;
use crate::options::Options;
use crate::version::{TableFile, Version, NUM_LEVELS};

/// Each level below L1 targets this many times the bytes of the one above.
pub(crate) const LEVEL_SIZE_MULTIPLIER: u64 = 10;

/// A compaction output is cut early once it overlaps this many target-sized
/// tables of the grandparent level, so that the next compaction down stays
/// small.
const MAX_GRANDPARENT_OVERLAP_TABLES: u64 = 10;

/// Byte budget of `level` (L1 and deeper).
pub(crate) fn level_target(options: &Options, level: usize) -> u64 {
    let mut target = options.level1_target_size;
    for _ in 1..level {
        target = target.saturating_mul(LEVEL_SIZE_MULTIPLIER);
    }
    target
}

/// How overdue `level` is for compaction; 1.0 or more means due. The last
/// level has nowhere to compact to and scores 0.
pub(crate) fn score(version: &Version, options: &Options, level: usize) -> f64 {
    if level + 1 >= NUM_LEVELS {
        return 0.0;
    }
    if level == 0 {
        version.files(0).len() as f64 / options.level0_compaction_trigger as f64
    } else {
        version.level_bytes(level) as f64 / level_target(options, level) as f64
    }
}

pub(crate) fn max_grandparent_overlap(options: &Options) -> u64 {
    options
        .target_table_size
        .saturating_mul(MAX_GRANDPARENT_OVERLAP_TABLES)
}

/// The compaction the tree needs most, if any level is due. `pointers`
/// holds, per level, the largest internal key of the last compaction there.
pub(crate) fn pick(
    version: &Arc<Version>,
    options: &Options,
    pointers: &mut [Vec<u8>; NUM_LEVELS],
) -> Option<Compaction> {
    let (level, best) = (0..NUM_LEVELS - 1)
        .map(|l| (l, score(version, options, l)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    if best < 1.0 {
        return None;
    }
    let inputs: Vec<Arc<TableFile>> = if level == 0 {
        // All of L0, oldest to newest: leaving an older L0 table behind
        // while its newer neighbours move down would let its stale versions
        // shadow theirs.
        version.files(0).to_vec()
    } else {
        let files = version.files(level);
        let pointer = pointers.get(level).map_or(&[][..], |p| p.as_slice());
        let next = files
            .iter()
            .find(|f| pointer.is_empty() || compare_internal(&f.meta.largest, pointer).is_gt())
            .or_else(|| files.first())?;
        vec![next.clone()]
    };
    let c = Compaction::new(version.clone(), level, inputs, options);
    if let (Some(p), Some(last)) = (pointers.get_mut(level), c.largest_input_key()) {
        *p = last;
    }
    Some(c)
}

/// A compaction of everything in `level` that holds keys within `bounds`
/// (all of L0, if any of it does), for manual compaction. `None` when
/// nothing in the level overlaps.
pub(crate) fn pick_range(
    version: &Arc<Version>,
    options: &Options,
    level: usize,
    bounds: &KeyBounds,
) -> Option<Compaction> {
    let mut overlapping = overlapping(version, level, bounds).peekable();
    overlapping.peek()?;
    let inputs = if level == 0 {
        version.files(0).to_vec()
    } else {
        overlapping.cloned().collect()
    };
    Some(Compaction::new(version.clone(), level, inputs, options))
}

/// One bottom rewrite per table of `level` within `bounds` numbered below
/// `written_from` (tables from `written_from` on were just written by a
/// compaction, which already ran the filter over them). One table each, so
/// that no output can reach over a table left out.
/// REQUIRES: `level` is at least 1 and no deeper level holds a table.
pub(crate) fn pick_bottom_rewrites(
    version: &Arc<Version>,
    options: &Options,
    level: usize,
    bounds: &KeyBounds,
    written_from: u64,
) -> Vec<Compaction> {
    overlapping(version, level, bounds)
        .filter(|f| f.meta.number < written_from)
        .map(|f| Compaction::bottom_rewrite(version.clone(), level, vec![f.clone()], options))
        .collect()
}

/// Tables of `level` holding keys within `bounds`.
fn overlapping<'a>(
    version: &'a Version,
    level: usize,
    bounds: &'a KeyBounds,
) -> impl Iterator<Item = &'a Arc<TableFile>> {
    version
        .files(level)
        .iter()
        .filter(|f| bounds.overlaps(f.smallest_user_key(), f.largest_user_key()))
}
