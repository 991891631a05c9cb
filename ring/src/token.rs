//! The token space: where a key lands on the ring, and token ranges.
//!
//! A token is a `u64`; the ring is the whole `u64` space closed into a
//! circle, so `u64::MAX` is followed by `0`.
//!
//! A [`TokenRange`] is half-open on the left, `(start, end]`, and may wrap
//! past `u64::MAX`. A ring position's token is the *end* of the range it owns,
//! as in Cassandra: the node holding token `t` owns every token after the
//! previous ring token up to and including `t`.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The token of a key: XXH3-64 of the key bytes with seed 0.
///
/// Fixed forever: nodes store every item under its token, so a different
/// hash (or seed) would put existing data in ranges that no longer own it,
/// orphaning it. The tests pin known values to catch an accidental change.
#[inline]
pub fn token(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The token of vnode `index` of a node whose tokens derive from its id:
/// XXH3-64 of the id bytes, seeded with the vnode index.
///
/// Fixed forever, like [`token`]: every node rebuilds the ring from the ids
/// it hears of, so two versions deriving differently would disagree about
/// who owns what.
pub(crate) fn derived_token(id: &str, index: u32) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), u64::from(index))
}

/// The number of tokens in the ring, `2^64`: the width of the full range.
pub(crate) const SPACE: u128 = 1 << 64;

/// A range of tokens `(start, end]`, wrapping past `u64::MAX` when
/// `start >= end`. `start == end` is the whole ring (a ring with one token
/// gives its owner everything), never an empty range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenRange {
    start: u64,
    end: u64,
}

impl TokenRange {
    /// The range `(start, end]`; the whole ring when `start == end`.
    pub fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    /// The exclusive left bound.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The inclusive right bound.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether the range is the whole token space.
    pub fn is_full(&self) -> bool {
        self.start == self.end
    }

    /// Whether `token` lies in the range.
    pub fn contains(&self, token: u64) -> bool {
        if self.start < self.end {
            self.start < token && token <= self.end
        } else {
            // Wrapping (or full): everything outside (end, start].
            token > self.start || token <= self.end
        }
    }

    /// How many tokens the range holds, `1..=2^64`.
    pub fn width(&self) -> u128 {
        match self.end.wrapping_sub(self.start) {
            0 => SPACE,
            w => u128::from(w),
        }
    }

    /// The range as one or two inclusive, non-wrapping spans in ascending
    /// token order, ready to become contiguous scans of a store keyed by
    /// big-endian token: a wrapping range splits into `0..=end` and
    /// `start + 1..=u64::MAX`.
    pub fn spans(&self) -> impl Iterator<Item = RangeInclusive<u64>> {
        let pair = if self.start < self.end {
            [Some(self.start + 1..=self.end), None]
        } else {
            // (start, MAX] is empty when start is MAX; for a full range with
            // start == end the two spans are [0, end] and (end, MAX].
            let high = self.start.checked_add(1).map(|lo| lo..=u64::MAX);
            [Some(0..=self.end), high]
        };
        pair.into_iter().flatten()
    }
}

/// Merges neighbouring items that carry equal values, including across the
/// wrap point. `items` must be in clockwise order starting with the range
/// that ends at the lowest token, each starting where the previous one ends
/// when they touch (the shape ring positions and plan segments have).
pub(crate) fn coalesce<T: PartialEq>(
    items: impl IntoIterator<Item = (TokenRange, T)>,
) -> Vec<(TokenRange, T)> {
    let mut out: Vec<(TokenRange, T)> = Vec::new();
    for (range, value) in items {
        match out.last_mut() {
            Some((last, last_value)) if last.end == range.start && *last_value == value => {
                last.end = range.end;
            }
            _ => out.push((range, value)),
        }
    }
    if out.len() >= 2 {
        let wraps = matches!(
            (out.first(), out.last()),
            (Some((first, fv)), Some((last, lv))) if last.end == first.start && fv == lv
        );
        if wraps {
            if let Some((last, _)) = out.pop() {
                if let Some((first, _)) = out.first_mut() {
                    first.start = last.start;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn key_tokens_are_pinned() {
        // The first two are XXH3-64's published values for "" and "a".
        assert_eq!(token(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(token(b"a"), 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(token(b"user:42"), 0x9FC1_E605_FA71_74AA);
        assert_eq!(token(b"strata"), 0x4B61_A189_7BFC_215F);
    }

    #[test]
    fn derived_tokens_are_pinned() {
        assert_eq!(derived_token("node-a", 0), 0xDADE_A24A_A124_81FE);
        assert_eq!(derived_token("node-a", 1), 0x6D76_4E42_205A_AE28);
        // Seed 0 is the plain hash: vnode 0 sits where the id itself hashes.
        assert_eq!(derived_token("node-a", 0), token(b"node-a"));
    }

    #[test]
    fn plain_range_contains_its_end_but_not_its_start() {
        let r = TokenRange::new(10, 20);
        assert!(!r.contains(10));
        assert!(r.contains(11));
        assert!(r.contains(20));
        assert!(!r.contains(21));
        assert_eq!(r.width(), 10);
        assert_eq!(r.spans().collect::<Vec<_>>(), vec![11..=20]);
    }

    #[test]
    fn wrapping_range_splits_into_two_spans() {
        let r = TokenRange::new(u64::MAX - 5, 3);
        assert!(r.contains(u64::MAX));
        assert!(r.contains(0));
        assert!(r.contains(3));
        assert!(!r.contains(4));
        assert!(!r.contains(u64::MAX - 5));
        assert_eq!(r.width(), 9);
        assert_eq!(
            r.spans().collect::<Vec<_>>(),
            vec![0..=3, u64::MAX - 4..=u64::MAX]
        );
    }

    #[test]
    fn range_starting_at_max_is_one_span() {
        let r = TokenRange::new(u64::MAX, 7);
        assert_eq!(r.spans().collect::<Vec<_>>(), vec![0..=7]);
        assert_eq!(r.width(), 8);
    }

    #[test]
    fn equal_bounds_mean_the_whole_ring() {
        for t in [0, 42, u64::MAX] {
            let r = TokenRange::new(t, t);
            assert!(r.is_full());
            assert!(r.contains(t) && r.contains(t.wrapping_add(1)));
            assert_eq!(r.width(), SPACE);
            let spans: Vec<_> = r.spans().collect();
            let covered: u128 = spans
                .iter()
                .map(|s| u128::from(s.end() - s.start()) + 1)
                .sum();
            assert_eq!(covered, SPACE, "{spans:?}");
        }
    }

    #[test]
    fn coalesce_merges_neighbours_and_the_wrap() {
        let items = vec![
            (TokenRange::new(90, 10), 'a'),
            (TokenRange::new(10, 20), 'b'),
            (TokenRange::new(20, 30), 'b'),
            (TokenRange::new(30, 90), 'a'),
        ];
        assert_eq!(
            coalesce(items),
            vec![
                (TokenRange::new(30, 10), 'a'),
                (TokenRange::new(10, 30), 'b')
            ]
        );
    }

    #[test]
    fn coalesce_of_equal_values_all_round_is_the_full_ring() {
        let items = vec![
            (TokenRange::new(90, 10), 'a'),
            (TokenRange::new(10, 90), 'a'),
        ];
        assert_eq!(coalesce(items), vec![(TokenRange::new(90, 90), 'a')]);
    }

    #[test]
    fn coalesce_keeps_gaps() {
        let items = vec![
            (TokenRange::new(0, 10), 'a'),
            (TokenRange::new(20, 30), 'a'),
        ];
        assert_eq!(coalesce(items.clone()), items);
    }
}
