//! The memtable: recent writes in a skiplist ordered by internal key, its
//! nodes in an arena (see `skiplist` for the layout and why).
//!
//! Writers insert (one group-commit leader at a time, so inserts never race
//! each other on a sequence), readers look up and scan concurrently without
//! locks. When it reaches `write_buffer_size` the database freezes it (it
//! becomes *immutable*: no more inserts) and a background thread writes it to
//! an L0 table. A memtable lives as long as any reader, snapshot or iterator
//! holds its `Arc`.

mod arena;
mod skiplist;

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::batch::Record;
use crate::blob::{BlobFile, BlobRef};
use crate::error::Error;
use crate::iter::{Direction, Entry, KeyBounds, Source};
use crate::key::{pack_tag, ValueKind, SEEK_KIND};
use crate::range_del::{self, RangeTombstone};
use crate::Result;
use skiplist::{NodeRef, Probe, SkipList};

pub(crate) use arena::ChunkPool;

/// How many entries a scan copies out of the skiplist per visit, so that a
/// scan pays one O(log n) seek per chunk rather than per entry.
const SCAN_CHUNK: usize = 64;

/// What a point lookup found for a key at a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Value(Vec<u8>),
    Deleted,
    /// A value in a blob file: the entry's `BlobRef`, for the read view
    /// to read.
    Blob(Vec<u8>),
}

pub(crate) struct Memtable {
    list: SkipList,
    /// The WAL file that holds this memtable's writes; once the memtable is in
    /// a table, WAL files older than the next memtable's can go.
    log_number: u64,
    /// Range tombstones, in sequence order: few, and read whole.
    tombstones: RwLock<Vec<RangeTombstone>>,
    /// Their bytes, which also tells readers without the lock that there are none.
    tombstone_bytes: AtomicUsize,
    /// Bytes of the values its `BlobIndex` entries point to: they count
    /// towards its size, so that a memtable of pointers still fills up
    /// (bounding what a flush installs and what recovery replays).
    blob_bytes: AtomicUsize,
    /// The blob file of this memtable's WAL, once a value went there: reads
    /// of its pointers go through it until a flush hands it to a version.
    vlog: OnceLock<Arc<BlobFile>>,
}

impl Memtable {
    pub(crate) fn new(log_number: u64) -> Self {
        Self::with_list(SkipList::new(None), log_number)
    }

    fn with_list(list: SkipList, log_number: u64) -> Self {
        Memtable {
            list,
            log_number,
            tombstones: RwLock::new(Vec::new()),
            tombstone_bytes: AtomicUsize::new(0),
            blob_bytes: AtomicUsize::new(0),
            vlog: OnceLock::new(),
        }
    }

    /// A memtable that takes its memory from `pool` first and gives it back
    /// there when dropped: the live memtables of one database.
    pub(crate) fn with_pool(log_number: u64, pool: &Arc<ChunkPool>) -> Self {
        Self::with_list(SkipList::new(Some(pool.clone())), log_number)
    }

    pub(crate) fn log_number(&self) -> u64 {
        self.log_number
    }

    /// Memory used, in bytes: the arena the entries live in.
    pub(crate) fn approximate_size(&self) -> usize {
        self.list.memory()
            + self.tombstone_bytes.load(Ordering::Relaxed)
            + self.blob_bytes.load(Ordering::Relaxed)
    }

    /// Sets the blob file of this memtable's WAL; once only.
    pub(crate) fn set_vlog(&self, file: Arc<BlobFile>) {
        let _ = self.vlog.set(file);
    }

    /// The blob file of this memtable's WAL, if it is number `number`.
    pub(crate) fn vlog(&self, number: u64) -> Option<&Arc<BlobFile>> {
        self.vlog.get().filter(|f| f.meta.number == number)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.len() == 0 && !self.has_tombstones()
    }

    fn has_tombstones(&self) -> bool {
        self.tombstone_bytes.load(Ordering::Acquire) > 0
    }

    /// The range tombstones, for a flush or a scan.
    pub(crate) fn range_tombstones(&self) -> Vec<RangeTombstone> {
        if !self.has_tombstones() {
            return Vec::new();
        }
        self.tombstones.read().clone()
    }

    /// The newest range tombstone visible at `seq` that covers `key`; 0 if none.
    pub(crate) fn newest_tombstone_covering(&self, key: &[u8], seq: u64) -> u64 {
        if !self.has_tombstones() {
            return 0;
        }
        range_del::newest_covering(self.tombstones.read().iter(), key, seq)
    }

    /// Adds `record`. A record whose sequence this memtable already holds
    /// for the key is the same write again and is ignored. REQUIRES: the
    /// caller is the one writer of this memtable (the group-commit leader,
    /// or recovery); concurrent inserts are serialised, not merged.
    pub(crate) fn insert(&self, record: &Record<'_>) -> Result<()> {
        if record.kind == ValueKind::RangeDeletion {
            let mut tombstones = self.tombstones.write();
            // In sequence order, so only a replayed record needs the search.
            let replayed = tombstones.last().is_some_and(|t| t.seq >= record.seq);
            if replayed && tombstones.iter().any(|t| t.seq == record.seq) {
                return Ok(());
            }
            tombstones.push(RangeTombstone {
                start: record.key.to_vec(),
                end: record.value.to_vec(),
                seq: record.seq,
            });
            // Counted like a skiplist entry: the bytes and some overhead.
            let bytes = record.key.len() + record.value.len() + 64;
            self.tombstone_bytes.fetch_add(bytes, Ordering::Release);
            return Ok(());
        }
        if record.kind == ValueKind::BlobIndex {
            let len = BlobRef::decode(record.value).map_or(0, |r| r.len);
            self.blob_bytes.fetch_add(
                usize::try_from(len).unwrap_or(usize::MAX),
                Ordering::Relaxed,
            );
        }
        self.list
            .insert(record.key, pack_tag(record.seq, record.kind), record.value)
            .map(drop)
            .map_err(|_| {
                Error::InvalidArgument(format!(
                    "entry of {} key and {} value bytes exceeds the memtable's 4 GiB limit",
                    record.key.len(),
                    record.value.len()
                ))
            })
    }

    /// The newest version of `key` visible at `seq`, with its sequence, if
    /// this memtable has one. Ignores range tombstones: see [`Memtable::newest_tombstone_covering`].
    pub(crate) fn get(&self, key: &[u8], seq: u64) -> Option<(u64, Lookup)> {
        let entry = self
            .list
            .seek(&Probe::new(key, pack_tag(seq, SEEK_KIND)), true)?;
        if entry.user_key() != key {
            return None;
        }
        let lookup = match entry.tag() & 0xff {
            t if t == ValueKind::Deletion as u64 => Lookup::Deleted,
            t if t == ValueKind::BlobIndex as u64 => Lookup::Blob(entry.value().to_vec()),
            _ => Lookup::Value(entry.value().to_vec()),
        };
        Some((entry.tag() >> 8, lookup))
    }

    /// Calls `f(internal_key, value)` for every entry in internal-key order,
    /// for flushing to a table; stops at the first error.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let mut ikey = Vec::new();
        for e in self.list.iter() {
            ikey.clear();
            ikey.extend_from_slice(e.user_key());
            ikey.extend_from_slice(&e.tag().to_le_bytes());
            f(&ikey, e.value())?;
        }
        Ok(())
    }
}

/// A scan bound on internal keys: a user key and a tag.
type MemBound = Bound<(Vec<u8>, u64)>;

/// The internal-key bound that admits exactly the entries of user keys
/// within `b`, as a lower (`is_lower`) or upper bound.
fn mem_bound(b: &Bound<Vec<u8>>, is_lower: bool) -> MemBound {
    // Within one user key, tag u64::MAX sorts before every real entry and tag 0 after.
    match (b, is_lower) {
        (Bound::Unbounded, _) => Bound::Unbounded,
        (Bound::Included(k), true) => Bound::Included((k.clone(), u64::MAX)),
        (Bound::Excluded(k), true) => Bound::Excluded((k.clone(), 0)),
        (Bound::Included(k), false) => Bound::Included((k.clone(), 0)),
        (Bound::Excluded(k), false) => Bound::Excluded((k.clone(), u64::MAX)),
    }
}

/// Whether `node` is on the inner side of `bound` (`is_lower`: at or above it).
fn within(node: NodeRef<'_>, bound: &MemBound, is_lower: bool) -> bool {
    let (key, tag, inclusive) = match bound {
        Bound::Unbounded => return true,
        Bound::Included((k, t)) => (k, *t, true),
        Bound::Excluded((k, t)) => (k, *t, false),
    };
    match node.cmp_probe(&Probe::new(key, tag)) {
        std::cmp::Ordering::Equal => inclusive,
        std::cmp::Ordering::Greater => is_lower,
        std::cmp::Ordering::Less => !is_lower,
    }
}

/// A scan over one memtable in either direction, copying entries out in chunks.
pub(crate) struct MemSource {
    mem: Arc<Memtable>,
    direction: Direction,
    /// Where the next chunk starts (exclusive once something was read).
    lower: MemBound,
    upper: MemBound,
    buffer: VecDeque<Entry>,
    exhausted: bool,
}

impl MemSource {
    pub(crate) fn new(mem: Arc<Memtable>, bounds: &KeyBounds, direction: Direction) -> Self {
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
        let list = &self.mem.list;
        let to_entry = |n: NodeRef<'_>| Entry {
            user_key: n.user_key().to_vec(),
            tag: n.tag(),
            value: n.value().to_vec(),
        };
        let seek = |bound: &MemBound, forward: bool| {
            let (key, tag, inclusive) = match bound {
                Bound::Unbounded if forward => return list.first(),
                Bound::Unbounded => return list.last(),
                Bound::Included((k, t)) => (k, *t, true),
                Bound::Excluded((k, t)) => (k, *t, false),
            };
            let probe = Probe::new(key, tag);
            if forward {
                list.seek(&probe, inclusive)
            } else {
                list.seek_back(&probe, inclusive)
            }
        };
        match self.direction {
            Direction::Forward => {
                let mut node = seek(&self.lower, true);
                while let Some(n) = node.filter(|n| within(*n, &self.upper, false)) {
                    if self.buffer.len() == SCAN_CHUNK {
                        break;
                    }
                    self.buffer.push_back(to_entry(n));
                    node = n.next();
                }
            }
            Direction::Backward => {
                // No back links: each step back is a search, as in LevelDB.
                let mut bound = self.upper.clone();
                while let Some(n) = seek(&bound, false).filter(|n| within(*n, &self.lower, true)) {
                    if self.buffer.len() == SCAN_CHUNK {
                        break;
                    }
                    self.buffer.push_back(to_entry(n));
                    bound = Bound::Excluded((n.user_key().to_vec(), n.tag()));
                }
            }
        }
        self.exhausted = self.buffer.len() < SCAN_CHUNK;
        if let Some(last) = self.buffer.back() {
            let resume = Bound::Excluded((last.user_key.clone(), last.tag));
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
        m.insert(&rec(b"k", 1, ValueKind::Value, b"v1")).unwrap();
        m.insert(&rec(b"k", 3, ValueKind::Deletion, b"")).unwrap();
        m.insert(&rec(b"k", 5, ValueKind::Value, b"v5")).unwrap();
        m.insert(&rec(b"k0", 2, ValueKind::Value, b"other"))
            .unwrap();
        assert_eq!(m.get(b"k", 0), None);
        assert_eq!(m.get(b"k", 1), Some((1, Lookup::Value(b"v1".to_vec()))));
        assert_eq!(m.get(b"k", 2), Some((1, Lookup::Value(b"v1".to_vec()))));
        assert_eq!(m.get(b"k", 4), Some((3, Lookup::Deleted)));
        assert_eq!(m.get(b"k", 99), Some((5, Lookup::Value(b"v5".to_vec()))));
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
            m.insert(&rec(key, i as u64 + 1, ValueKind::Value, b"v"))
                .unwrap();
            m.insert(&rec(key, i as u64 + 1000, ValueKind::Value, b"w"))
                .unwrap();
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
