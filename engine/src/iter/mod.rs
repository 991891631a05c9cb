//! Iteration over internal entries: the [`Source`] every memtable and table
//! scan implements, the [`merge::MergingSource`] that combines them, and the
//! key bounds they all honour.

pub(crate) mod merge;

use std::cmp::Ordering;
use std::ops::Bound;

use crate::key::ValueKind;
use crate::Result;

/// Which way a scan walks the internal-key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Forward,
    Backward,
}

/// One internal entry, owned: a version of a user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) user_key: Vec<u8>,
    /// `(sequence << 8) | kind`, see [`crate::key`].
    pub(crate) tag: u64,
    pub(crate) value: Vec<u8>,
}

impl Entry {
    pub(crate) fn seq(&self) -> u64 {
        self.tag >> 8
    }

    pub(crate) fn is_deletion(&self) -> bool {
        self.tag & 0xff == ValueKind::Deletion as u64
    }

    /// Internal-key order: user key ascending, tag descending.
    pub(crate) fn is_blob_index(&self) -> bool {
        self.tag & 0xff == ValueKind::BlobIndex as u64
    }

    pub(crate) fn cmp_key(&self, other: &Entry) -> Ordering {
        self.user_key
            .cmp(&other.user_key)
            .then_with(|| other.tag.cmp(&self.tag))
    }
}

/// A stream of internal entries in one direction.
pub(crate) trait Source: Send {
    fn next_entry(&mut self) -> Result<Option<Entry>>;
}

/// A user-key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyBounds {
    pub(crate) lower: Bound<Vec<u8>>,
    pub(crate) upper: Bound<Vec<u8>>,
}

impl KeyBounds {
    pub(crate) fn from_range<K: AsRef<[u8]>>(range: &impl std::ops::RangeBounds<K>) -> Self {
        let own = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        KeyBounds {
            lower: own(range.start_bound()),
            upper: own(range.end_bound()),
        }
    }

    /// Every key that starts with `prefix`.
    pub(crate) fn prefix(prefix: &[u8]) -> Self {
        KeyBounds {
            lower: Bound::Included(prefix.to_vec()),
            upper: prefix_successor(prefix).map_or(Bound::Unbounded, Bound::Excluded),
        }
    }

    pub(crate) fn above_lower(&self, key: &[u8]) -> bool {
        match &self.lower {
            Bound::Included(l) => key >= l.as_slice(),
            Bound::Excluded(l) => key > l.as_slice(),
            Bound::Unbounded => true,
        }
    }

    pub(crate) fn below_upper(&self, key: &[u8]) -> bool {
        match &self.upper {
            Bound::Included(u) => key <= u.as_slice(),
            Bound::Excluded(u) => key < u.as_slice(),
            Bound::Unbounded => true,
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.above_lower(key) && self.below_upper(key)
    }

    /// True when some key in `smallest..=largest` may lie within the bounds.
    pub(crate) fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        self.above_lower(largest) && self.below_upper(smallest)
    }
}

/// The smallest key greater than every key with `prefix`, if there is one
/// (a prefix of only 0xff bytes has none).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut succ = prefix.to_vec();
    while let Some(last) = succ.pop() {
        if last < 0xff {
            succ.push(last + 1);
            return Some(succ);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        let b = KeyBounds::prefix(b"ab");
        assert!(b.contains(b"ab"));
        assert!(b.contains(b"ab\xff\xff"));
        assert!(!b.contains(b"ac"));
        assert!(!b.contains(b"aa\xff"));
        let all = KeyBounds::prefix(b"\xff\xff");
        assert!(all.contains(b"\xff\xff\x00"));
        assert_eq!(all.upper, Bound::Unbounded);
        assert!(KeyBounds::prefix(b"").contains(b"anything"));
    }

    #[test]
    fn overlap() {
        let b = KeyBounds::from_range(&(b"c".to_vec()..b"f".to_vec()));
        assert!(b.overlaps(b"a", b"c"));
        assert!(b.overlaps(b"e", b"z"));
        assert!(!b.overlaps(b"f", b"z"));
        assert!(!b.overlaps(b"a", b"b"));
    }
}
