//! A table's index, decoded when the table is opened: each data block's last
//! internal key and where the block is, searched without chasing a pointer
//! per step.
//!
//! A lookup's binary search over the index touched two cold cache lines per
//! step (the entry, then its key on the heap). Every index key of a table
//! (the last key of each block) shares the prefix of the first and last
//! index keys; the eight bytes after it, as a
//! big-endian `u64` (zero-padded), order the keys as their bytes do, though
//! not strictly. The search runs over these contiguous hints and compares
//! whole keys only among the entries whose hint equals the target's.

use std::cmp::Ordering;

use super::block::BlockIter;
use super::footer::{
    decompress, verify_block, verify_stored_block, BlockHandle, Footer, FORMAT_V1, NO_COMPRESSION,
};
use crate::coding::get_varint32;
use crate::error::DecodeError;
use crate::key::{compare_internal, user_key, ParsedKey};

/// The last internal key of a data block, and where the block is.
pub(crate) type IndexEntry = (Box<[u8]>, BlockHandle);

/// The decoded index of one table.
pub(crate) struct Index {
    entries: Vec<IndexEntry>,
    /// The user-key prefix every entry shares.
    shared: Box<[u8]>,
    /// Per entry, [`hint`] of its user key after `shared`, from
    /// `hints_buf[hints_at]` on, which is aligned to a cache line: a run of
    /// [`HINTS_PER_LINE`] hints is one line.
    hints_buf: Vec<u64>,
    hints_at: usize,
    /// The last hint of each run of [`HINTS_PER_LINE`]: a search of these
    /// (an eighth of the hints, so they stay cached) names the one line of
    /// hints to search, where a search of all of them would miss the cache
    /// on a different line at each of its last steps.
    fences: Vec<u64>,
}

/// Hints in one 64-byte cache line.
const HINTS_PER_LINE: usize = 8;

impl Index {
    /// Reads and decodes the index block of a table (see the `sstable`
    /// module docs for what each format version holds); `data_end` bounds
    /// the data blocks.
    pub(crate) fn read(file: &[u8], footer: &Footer, data_end: usize) -> Result<Self, DecodeError> {
        Ok(Self::new(read_entries(file, footer, data_end)?))
    }

    fn new(entries: Vec<IndexEntry>) -> Self {
        let shared: Box<[u8]> = match (entries.first(), entries.last()) {
            (Some((first, _)), Some((last, _))) => {
                let (first, last) = (user_key(first), user_key(last));
                let n = first.iter().zip(last).take_while(|(a, b)| a == b).count();
                first.get(..n).unwrap_or_default().into()
            }
            _ => Box::default(),
        };
        // Up to a line's worth of room in front, to start the hints on a
        // line; reserved first, so the buffer never moves.
        let mut hints_buf: Vec<u64> = Vec::with_capacity(entries.len() + HINTS_PER_LINE - 1);
        let hints_at = hints_buf.as_ptr().align_offset(64).min(HINTS_PER_LINE - 1);
        hints_buf.resize(hints_at, 0);
        hints_buf.extend(
            entries
                .iter()
                .map(|(k, _)| hint(user_key(k).get(shared.len()..).unwrap_or_default())),
        );
        let fences = hints_buf
            .get(hints_at..)
            .unwrap_or_default()
            .chunks(HINTS_PER_LINE)
            .filter_map(|run| run.last().copied())
            .collect();
        Index {
            entries,
            shared,
            hints_buf,
            hints_at,
            fences,
        }
    }

    fn hints(&self) -> &[u64] {
        self.hints_buf.get(self.hints_at..).unwrap_or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&IndexEntry> {
        self.entries.get(i)
    }

    /// Index of the first data block whose last key is `>= target` (an
    /// internal key); `len()` when there is none.
    pub(crate) fn find(&self, target: &[u8]) -> usize {
        let user = user_key(target);
        let Some(rest) = user.strip_prefix(&*self.shared) else {
            // Every key starts with `shared` and `user` does not: it sorts
            // before all of them or after all of them.
            return if user < &*self.shared {
                0
            } else {
                self.entries.len()
            };
        };
        let t = hint(rest);
        let hints = self.hints();
        // Every run before the first whose last hint is >= t holds only
        // hints < t; that run holds the first hint >= t.
        let run = (self.fences.partition_point(|&f| f < t) * HINTS_PER_LINE).min(hints.len());
        let lo = run
            + hints
                .get(run..)
                .unwrap_or_default()
                .iter()
                .take(HINTS_PER_LINE)
                .take_while(|&&h| h < t)
                .count();
        // Usually no hint equals the target's; the binary search for the end
        // of the ties would still take all its steps over the rest of the
        // hints, each a cold line, to find that.
        if hints.get(lo) != Some(&t) {
            return lo;
        }
        let ties = hints.get(lo..).unwrap_or_default();
        let hi = lo + ties.partition_point(|&h| h == t);
        lo + self
            .entries
            .get(lo..hi)
            .unwrap_or_default()
            .partition_point(|(last, _)| compare_internal(last, target) == Ordering::Less)
    }
}

/// The first eight bytes of `rest`, zero-padded, as a big-endian number:
/// `a < b` implies `hint(a) <= hint(b)`, so `hint(a) < hint(b)` implies
/// `a < b`.
fn hint(rest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (b, r) in bytes.iter_mut().zip(rest) {
        *b = *r;
    }
    u64::from_be_bytes(bytes)
}

/// Reads and decodes the index block (see the module docs for what each
/// format version holds); `data_end` bounds the data blocks.
fn read_entries(
    file: &[u8],
    footer: &Footer,
    data_end: usize,
) -> Result<Vec<IndexEntry>, DecodeError> {
    let range = footer
        .index
        .range_with_trailer(data_end)
        .ok_or(DecodeError("block handle points outside the file"))?;
    let stored = file.get(range).unwrap_or_default();
    if footer.version == FORMAT_V1 {
        return decode_index(verify_block(stored)?, data_end, |v, _| {
            BlockHandle::decode_from(v)
        });
    }
    let contents = match verify_stored_block(stored)? {
        (NO_COMPRESSION, contents) => std::borrow::Cow::Borrowed(contents),
        (compression, packed) => std::borrow::Cow::Owned(decompress(compression, packed)?),
    };
    decode_index(&contents, data_end, |v, offset| {
        Ok(BlockHandle {
            offset,
            size: get_varint32(v)?,
        })
    })
}

/// Decodes an index block whose values `handle` decodes, given where the
/// block ends if it follows the previous one.
fn decode_index(
    block: &[u8],
    data_end: usize,
    handle: impl Fn(&mut &[u8], u64) -> Result<BlockHandle, DecodeError>,
) -> Result<Vec<IndexEntry>, DecodeError> {
    let mut it = BlockIter::new(block)?;
    let mut out: Vec<IndexEntry> = Vec::new();
    let mut next_offset = 0u64;
    while it.advance()? {
        let Some((k, mut v)) = it.current() else {
            break;
        };
        ParsedKey::parse(k)?;
        if let Some((prev, _)) = out.last() {
            if compare_internal(prev, k) != std::cmp::Ordering::Less {
                return Err(DecodeError("index keys out of order"));
            }
        }
        let handle = handle(&mut v, next_offset)?;
        let range = handle
            .range_with_trailer(data_end)
            .ok_or(DecodeError("index entry points outside the data"))?;
        next_offset = range.end as u64;
        out.push((k.into(), handle));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::key::{internal_key, ValueKind, SEEK_KIND};

    fn index_of(keys: &[(Vec<u8>, u64)]) -> Index {
        let handle = BlockHandle { offset: 0, size: 0 };
        Index::new(
            keys.iter()
                .map(|(k, seq)| (internal_key(k, *seq, ValueKind::Value).into(), handle))
                .collect(),
        )
    }

    /// What a binary search over the whole index keys finds.
    fn plain_find(index: &Index, target: &[u8]) -> usize {
        index
            .entries
            .partition_point(|(last, _)| compare_internal(last, target) == Ordering::Less)
    }

    proptest! {
        /// The hinted search finds what a plain binary search over the
        /// whole keys finds, for keys with long shared prefixes, keys that
        /// are prefixes of each other, repeated user keys and targets
        /// outside the table's range.
        #[test]
        fn finds_what_a_plain_search_finds(
            mut user_keys in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(0u8), Just(b'k'), Just(255u8), any::<u8>()], 0..14),
                1..40,
            ),
            prefix in proptest::collection::vec(any::<u8>(), 0..12),
            targets in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..14), any::<bool>(), 0u64..4),
                1..20,
            ),
        ) {
            user_keys.sort();
            let mut keys: Vec<(Vec<u8>, u64)> = Vec::new();
            for k in user_keys {
                let full = [prefix.as_slice(), &k].concat();
                // Two versions of some keys: a user key can end two blocks.
                match keys.last() {
                    Some((last, seq)) if *last == full => {
                        if *seq > 1 {
                            let next = seq - 1;
                            keys.push((full, next));
                        }
                    }
                    _ => keys.push((full, 3)),
                }
            }
            let index = index_of(&keys);
            for (t, with_prefix, seq) in targets {
                let user = if with_prefix { [prefix.as_slice(), &t].concat() } else { t };
                let target = internal_key(&user, seq, SEEK_KIND);
                let expected = plain_find(&index, &target);
                prop_assert_eq!(index.find(&target), expected);
            }
            // The index's own keys: targets equal to a run's last hint.
            for (user, _) in &keys {
                for seq in 0..5 {
                    let target = internal_key(user, seq, SEEK_KIND);
                    let expected = plain_find(&index, &target);
                    prop_assert_eq!(index.find(&target), expected);
                }
            }
        }
    }

    /// Keys whose hints tie in threes, so that ties cross the runs of
    /// hints, for every length around a run's.
    #[test]
    fn ties_across_runs_are_found() {
        for n in 0..=33u8 {
            let keys: Vec<(Vec<u8>, u64)> = (0..n)
                .map(|i| (vec![i / 3, 0, 0, 0, 0, 0, 0, 0, i % 3], 3))
                .collect();
            let index = index_of(&keys);
            let mut targets: Vec<Vec<u8>> = keys.iter().map(|(k, _)| k.clone()).collect();
            targets.extend([vec![], vec![255; 10], vec![5, 0, 0, 0, 0, 0, 0, 0, 1, 1]]);
            for user in &targets {
                for seq in [2, 3, 4] {
                    let target = internal_key(user, seq, SEEK_KIND);
                    let expected = plain_find(&index, &target);
                    assert_eq!(index.find(&target), expected, "n {n}, {user:?} @ {seq}");
                }
            }
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = index_of(&[]);
        assert_eq!(index.find(&internal_key(b"a", 1, SEEK_KIND)), 0);
    }
}
