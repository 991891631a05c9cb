//! Range tombstones: [`Db::delete_range`](crate::Db::delete_range) deletes
//! every key in `start..end` with one record, whatever the number of keys.
//!
//! A tombstone `[start, end) @ seq` hides every entry of a key in the range
//! whose sequence is below `seq`, from reads at `seq` or later. It lives
//! beside the point entries, never among them: in the memtable's list, then
//! in the properties block of the table its memtable was flushed to (see
//! `sstable::properties`), and from there it moves with compaction like an
//! entry until it reaches a level with nothing below it in its range, where
//! it is dropped (see `compaction`). A table's key range covers its
//! tombstones, so every read that could be affected looks at them.
//!
//! Encoding, in a batch (kind 3, key `start`, value `end`) and in a
//! table's properties:
//!
//! ```text
//! count varint | count x (varint len | start | varint len | end | seq u64 LE)
//! ```

use crate::coding::{
    get_length_prefixed, get_u64, get_varint64, put_length_prefixed, put_varint64,
};
use crate::error::DecodeError;

/// `[start, end) @ seq`: deletes the keys in `start..end` written before `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeTombstone {
    pub(crate) start: Vec<u8>,
    pub(crate) end: Vec<u8>,
    pub(crate) seq: u64,
}

impl RangeTombstone {
    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }

    /// Whether some key in `smallest..=largest` is in the range.
    pub(crate) fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        self.start.as_slice() <= largest && smallest < self.end.as_slice()
    }
}

/// The newest sequence among `tombstones` that covers `key` and is visible
/// at `seq` (0 if none): an entry of `key` below it is deleted.
pub(crate) fn newest_covering<'a>(
    tombstones: impl IntoIterator<Item = &'a RangeTombstone>,
    key: &[u8],
    seq: u64,
) -> u64 {
    tombstones
        .into_iter()
        .filter(|t| t.seq <= seq && t.covers(key))
        .map(|t| t.seq)
        .max()
        .unwrap_or(0)
}

pub(crate) fn encode(out: &mut Vec<u8>, tombstones: &[RangeTombstone]) {
    put_varint64(out, tombstones.len() as u64);
    for t in tombstones {
        put_length_prefixed(out, &t.start);
        put_length_prefixed(out, &t.end);
        out.extend_from_slice(&t.seq.to_le_bytes());
    }
}

pub(crate) fn decode(src: &mut &[u8]) -> Result<Vec<RangeTombstone>, DecodeError> {
    let count = get_varint64(src)?;
    // Each takes at least 10 bytes: a bad count cannot make a huge allocation.
    if count > src.len() as u64 / 10 {
        return Err(DecodeError("range tombstone count exceeds the bytes left"));
    }
    (0..count)
        .map(|_| {
            let start = get_length_prefixed(src)?.to_vec();
            let end = get_length_prefixed(src)?.to_vec();
            let seq = get_u64(src)?;
            if start > end {
                return Err(DecodeError("range tombstone ends before it starts"));
            }
            Ok(RangeTombstone { start, end, seq })
        })
        .collect()
}

/// The tombstones visible to one read, cut into non-overlapping fragments
/// that each know the newest sequence covering them (RocksDB's
/// `FragmentedRangeTombstoneList`): a scan asks about every key it yields,
/// in `O(log n)` each.
#[derive(Debug, Default)]
pub(crate) struct Fragments {
    /// Sorted, non-overlapping `(start, end, newest seq)`.
    fragments: Vec<(Vec<u8>, Vec<u8>, u64)>,
}

impl Fragments {
    /// The fragments of the tombstones visible at `seq`.
    pub(crate) fn new<'a>(
        tombstones: impl IntoIterator<Item = &'a RangeTombstone>,
        seq: u64,
    ) -> Self {
        let visible: Vec<&RangeTombstone> = tombstones
            .into_iter()
            .filter(|t| t.seq <= seq && t.start < t.end)
            .collect();
        let mut bounds: Vec<&[u8]> = visible
            .iter()
            .flat_map(|t| [t.start.as_slice(), t.end.as_slice()])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        // Sweep the bounds in order; `active` holds the sequences of the
        // tombstones covering the current fragment, with multiplicity.
        let mut by_start = visible.clone();
        by_start.sort_unstable_by(|a, b| a.start.cmp(&b.start));
        let mut by_end = visible;
        by_end.sort_unstable_by(|a, b| a.end.cmp(&b.end));
        let (mut starts, mut ends) = (by_start.iter().peekable(), by_end.iter().peekable());
        let mut active = std::collections::BTreeMap::<u64, usize>::new();
        let mut fragments: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
        for pair in bounds.windows(2) {
            let [lo, hi] = pair else { continue };
            while let Some(t) = ends.next_if(|t| t.end.as_slice() <= *lo) {
                if let Some(n) = active.get_mut(&t.seq) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&t.seq);
                    }
                }
            }
            while let Some(t) = starts.next_if(|t| t.start.as_slice() <= *lo) {
                *active.entry(t.seq).or_default() += 1;
            }
            let Some((&newest, _)) = active.last_key_value() else {
                continue;
            };
            match fragments.last_mut() {
                // Adjacent and equal: one fragment.
                Some((_, end, s)) if *s == newest && end.as_slice() == *lo => *end = hi.to_vec(),
                _ => fragments.push((lo.to_vec(), hi.to_vec(), newest)),
            }
        }
        Fragments { fragments }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fragments.is_empty()
    }

    /// The newest visible sequence covering `key`; 0 if none does.
    pub(crate) fn newest_covering(&self, key: &[u8]) -> u64 {
        let i = self
            .fragments
            .partition_point(|(start, _, _)| start.as_slice() <= key);
        match i.checked_sub(1).and_then(|i| self.fragments.get(i)) {
            Some((_, end, seq)) if key < end.as_slice() => *seq,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(start: &str, end: &str, seq: u64) -> RangeTombstone {
        RangeTombstone {
            start: start.into(),
            end: end.into(),
            seq,
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_damage() {
        let list = vec![t("a", "c", 5), t("", "zz", 9), t("m", "m", 1)];
        let mut out = Vec::new();
        encode(&mut out, &list);
        assert_eq!(decode(&mut out.as_slice()).unwrap(), list);
        for cut in 0..out.len() {
            assert!(decode(&mut &out[..cut]).is_err(), "cut at {cut}");
        }
        let mut backwards = Vec::new();
        encode(&mut backwards, &[t("b", "a", 1)]);
        assert!(decode(&mut backwards.as_slice()).is_err());
    }

    #[test]
    fn fragments_answer_the_newest_covering_sequence() {
        let list = [
            t("b", "f", 5),
            t("d", "h", 9),
            t("g", "k", 3),
            t("x", "z", 20),
        ];
        let f = Fragments::new(&list, 10);
        assert_eq!(f.newest_covering(b"a"), 0);
        assert_eq!(f.newest_covering(b"b"), 5);
        assert_eq!(f.newest_covering(b"d"), 9);
        assert_eq!(f.newest_covering(b"g"), 9);
        assert_eq!(f.newest_covering(b"h"), 3);
        assert_eq!(f.newest_covering(b"k"), 0);
        assert_eq!(f.newest_covering(b"y"), 0, "seq 20 is not visible at 10");
    }

    proptest! {
        #[test]
        fn fragments_agree_with_a_scan(
            list in proptest::collection::vec((0u8..20, 0u8..20, 1u64..30), 0..12),
            seq in 0u64..32,
        ) {
            let list: Vec<RangeTombstone> = list
                .into_iter()
                .map(|(a, b, s)| RangeTombstone { start: vec![a], end: vec![b], seq: s })
                .collect();
            let f = Fragments::new(&list, seq);
            for k in 0u8..21 {
                prop_assert_eq!(f.newest_covering(&[k]), newest_covering(&list, &[k], seq));
            }
        }
    }
}
