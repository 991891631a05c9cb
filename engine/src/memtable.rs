//! The memtable: recent writes in a lock-free skiplist, ordered by internal key.
//!
//! Writers insert (one group-commit leader at a time, so inserts never race
//! each other on a sequence), readers look up and scan concurrently without
//! locks. When it reaches `write_buffer_size` the database freezes it (it
//! becomes *immutable*: no more inserts) and a background thread writes it to
//! an L0 table. A memtable lives as long as any reader, snapshot or iterator
//! holds its `Arc`.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use crossbeam_skiplist::SkipMap;

use crate::batch::Record;
use crate::iter::{Direction, Entry, KeyBounds, Source};
use crate::key::{pack_tag, ValueKind, SEEK_KIND};
use crate::Result;

/// Per-entry bookkeeping overhead counted towards the memtable size: skiplist
/// node, tower pointers and allocation headers, roughly.
const ENTRY_OVERHEAD: usize = 64;

/// How many entries a scan copies out of the skiplist per visit, so that a
/// scan pays one O(log n) seek per chunk rather than per entry.
const SCAN_CHUNK: usize = 64;

/// A skiplist entry: user key ascending, then tag (sequence) descending.
///
/// `prefix` holds the key's first 16 bytes (zero-padded, big-endian) inside
/// the skiplist node: comparing it first orders most pairs of distinct keys
/// without following the `data` pointer, which is a cache miss per node on
/// the insert and lookup paths. Zero padding keeps the order lexicographic:
/// prefixes differ only where the keys' first 16 bytes do, or where one key
/// is a proper prefix of the other (and so sorts first).
///
/// The value lives in the same allocation as the key (`data` = key ++
/// value): one allocation per entry instead of two. Only the key takes part
/// in equality and order.
#[derive(Debug, Clone)]
pub(crate) struct MemKey {
    prefix: u128,
    data: Box<[u8]>,
    key_len: usize,
    tag: u64,
}

impl MemKey {
    /// A key to seek with: no value.
    fn new(user_key: &[u8], tag: u64) -> Self {
        Self::with_value(user_key, &[], tag)
    }

    fn with_value(user_key: &[u8], value: &[u8], tag: u64) -> Self {
        let mut head = [0u8; 16];
        for (dst, src) in head.iter_mut().zip(user_key) {
            *dst = *src;
        }
        let mut data = Vec::with_capacity(user_key.len() + value.len());
        data.extend_from_slice(user_key);
        data.extend_from_slice(value);
        MemKey {
            prefix: u128::from_be_bytes(head),
            data: data.into_boxed_slice(),
            key_len: user_key.len(),
            tag,
        }
    }

    fn user_key(&self) -> &[u8] {
        self.data.get(..self.key_len).unwrap_or_default()
    }

    fn value(&self) -> &[u8] {
        self.data.get(self.key_len..).unwrap_or_default()
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.user_key().cmp(other.user_key()))
            .then_with(|| other.tag.cmp(&self.tag))
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for MemKey {}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a point lookup found for a key at a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Value(Vec<u8>),
    Deleted,
}

pub(crate) struct Memtable {
    map: SkipMap<MemKey, ()>,
    size: AtomicUsize,
    /// The WAL file that holds this memtable's writes; once the memtable is in
    /// a table, WAL files older than the next memtable's can go.
    log_number: u64,
}

impl Memtable {
    pub(crate) fn new(log_number: u64) -> Self {
        Memtable {
            map: SkipMap::new(),
            size: AtomicUsize::new(0),
            log_number,
        }
    }

    pub(crate) fn log_number(&self) -> u64 {
        self.log_number
    }

    /// Approximate memory used, in bytes.
    pub(crate) fn approximate_size(&self) -> usize {
        self.size.load(AtomicOrdering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn insert(&self, record: &Record<'_>) {
        let key = MemKey::with_value(record.key, record.value, pack_tag(record.seq, record.kind));
        self.size.fetch_add(
            record.key.len() + record.value.len() + ENTRY_OVERHEAD,
            AtomicOrdering::Relaxed,
        );
        self.map.insert(key, ());
    }

    /// The newest version of `key` visible at `seq`, if this memtable has one.
    pub(crate) fn get(&self, key: &[u8], seq: u64) -> Option<Lookup> {
        let seek = MemKey::new(key, pack_tag(seq, SEEK_KIND));
        let entry = self.map.lower_bound(Bound::Included(&seek))?;
        if entry.key().user_key() != key {
            return None;
        }
        Some(match entry.key().tag & 0xff {
            t if t == ValueKind::Deletion as u64 => Lookup::Deleted,
            _ => Lookup::Value(entry.key().value().to_vec()),
        })
    }

    /// Calls `f(internal_key, value)` for every entry in internal-key order,
    /// for flushing to a table; stops at the first error.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let mut ikey = Vec::new();
        for e in self.map.iter() {
            ikey.clear();
            ikey.extend_from_slice(e.key().user_key());
            ikey.extend_from_slice(&e.key().tag.to_le_bytes());
            f(&ikey, e.key().value())?;
        }
        Ok(())
    }
}

/// The skiplist bound that admits exactly the entries of user keys within `b`,
/// as a lower (`is_lower`) or upper bound.
fn mem_bound(b: &Bound<Vec<u8>>, is_lower: bool) -> Bound<MemKey> {
    let key = |k: &Vec<u8>, tag| MemKey::new(k, tag);
    // Within one user key, tag u64::MAX sorts before every real entry and tag 0 after.
    match (b, is_lower) {
        (Bound::Unbounded, _) => Bound::Unbounded,
        (Bound::Included(k), true) => Bound::Included(key(k, u64::MAX)),
        (Bound::Excluded(k), true) => Bound::Excluded(key(k, 0)),
        (Bound::Included(k), false) => Bound::Included(key(k, 0)),
        (Bound::Excluded(k), false) => Bound::Excluded(key(k, u64::MAX)),
    }
}

/// A scan over one memtable in either direction, copying entries out in chunks.
pub(crate) struct MemSource {
    mem: std::sync::Arc<Memtable>,
    direction: Direction,
    /// Where the next chunk starts (exclusive once something was read).
    lower: Bound<MemKey>,
    upper: Bound<MemKey>,
    buffer: VecDeque<Entry>,
    exhausted: bool,
}

impl MemSource {
    pub(crate) fn new(
        mem: std::sync::Arc<Memtable>,
        bounds: &KeyBounds,
        direction: Direction,
    ) -> Self {
        MemSource {
            mem,
            direction,
            lower: mem_bound(&bounds.lower, true),
            upper: mem_bound(&bounds.upper, false),
            buffer: VecDeque::new(),
            exhausted: false,
        }
    }

    fn refill(&mut self) {
        let range = self.mem.map.range((self.lower.clone(), self.upper.clone()));
        let to_entry = |e: crossbeam_skiplist::map::Entry<'_, MemKey, ()>| Entry {
            user_key: e.key().user_key().to_vec(),
            tag: e.key().tag,
            value: e.key().value().to_vec(),
        };
        match self.direction {
            Direction::Forward => self.buffer.extend(range.take(SCAN_CHUNK).map(to_entry)),
            Direction::Backward => self
                .buffer
                .extend(range.rev().take(SCAN_CHUNK).map(to_entry)),
        }
        self.exhausted = self.buffer.len() < SCAN_CHUNK;
        if let Some(last) = self.buffer.back() {
            let resume = Bound::Excluded(MemKey::new(&last.user_key, last.tag));
            match self.direction {
                Direction::Forward => self.lower = resume,
                Direction::Backward => self.upper = resume,
            }
        }
    }
}

impl Source for MemSource {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.buffer.is_empty() && !self.exhausted {
            self.refill();
        }
        Ok(self.buffer.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(key: &'static [u8], seq: u64, kind: ValueKind, value: &'static [u8]) -> Record<'static> {
        Record {
            seq,
            kind,
            key,
            value,
        }
    }

    #[test]
    fn get_sees_newest_version_at_snapshot() {
        let m = Memtable::new(1);
        m.insert(&rec(b"k", 1, ValueKind::Value, b"v1"));
        m.insert(&rec(b"k", 3, ValueKind::Deletion, b""));
        m.insert(&rec(b"k", 5, ValueKind::Value, b"v5"));
        m.insert(&rec(b"k0", 2, ValueKind::Value, b"other"));
        assert_eq!(m.get(b"k", 0), None);
        assert_eq!(m.get(b"k", 1), Some(Lookup::Value(b"v1".to_vec())));
        assert_eq!(m.get(b"k", 2), Some(Lookup::Value(b"v1".to_vec())));
        assert_eq!(m.get(b"k", 4), Some(Lookup::Deleted));
        assert_eq!(m.get(b"k", 99), Some(Lookup::Value(b"v5".to_vec())));
        assert_eq!(m.get(b"j", 99), None);
        assert!(m.approximate_size() > 0);
    }

    #[test]
    fn scans_in_chunks_both_directions_within_bounds() {
        let m = Arc::new(Memtable::new(1));
        let keys: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("{i:04}").into_bytes())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            let key: &'static [u8] = Box::leak(k.clone().into_boxed_slice());
            m.insert(&rec(key, i as u64 + 1, ValueKind::Value, b"v"));
            m.insert(&rec(key, i as u64 + 1000, ValueKind::Value, b"w"));
        }
        let bounds = KeyBounds {
            lower: Bound::Excluded(b"0010".to_vec()),
            upper: Bound::Included(b"0150".to_vec()),
        };
        let collect = |dir| {
            let mut s = MemSource::new(m.clone(), &bounds, dir);
            let mut out = Vec::new();
            while let Some(e) = s.next_entry().unwrap() {
                out.push((e.user_key, e.tag >> 8));
            }
            out
        };
        let fwd = collect(Direction::Forward);
        assert_eq!(fwd.len(), 2 * 140);
        assert_eq!(fwd[0], (b"0011".to_vec(), 1011));
        assert_eq!(fwd[1], (b"0011".to_vec(), 12));
        let mut bwd = collect(Direction::Backward);
        bwd.reverse();
        assert_eq!(fwd, bwd);
    }
}
