//! The memtable's ordered index: a skiplist for one writer and any number of
//! lock-free readers, with every node in an [`Arena`] (LevelDB's
//! `db/skiplist.h`, with RocksDB's insert splice).
//!
//! # Why not `crossbeam_skiplist`
//!
//! Measured on `benches/compare fillrandom`, crossbeam's search was half of
//! the writer thread, and `malloc`/`free` of its nodes (two allocations per
//! entry: node and key) a tenth more, plus the flush thread's time freeing a
//! million nodes one by one. The memtable needs none of what that generality
//! pays for: the database already serialises writers (one group-commit
//! leader at a time), and entries are never removed, only dropped with the
//! whole memtable. So nodes here are immutable once published, live in an
//! arena, and hold their key inline, next to the links a search follows.
//!
//! # Node layout (in the node arena, 8-byte aligned)
//!
//! ```text
//! +----------------------------------+-------------------------+-----+
//! | Header (48 bytes)                | links: height x 8 bytes | key |
//! | prefix [u64; 2] | tag u64 |      | AtomicPtr to the next   |     |
//! | value ptr | key_len u32 |        | node at levels          |     |
//! | value_len u32 | height u32 | pad | 0..height               |     |
//! +----------------------------------+-------------------------+-----+
//! ```
//!
//! The value sits in a second arena: a search reads headers, links and keys
//! only, and keeping values out of their way packs more nodes per cache
//! line and page.
//!
//! `prefix` is the user key's first 16 bytes, zero-padded, as two big-endian
//! words: comparing it first orders most pairs of keys with two integer
//! compares (zero padding keeps the order lexicographic; equal prefixes fall
//! back to comparing the keys). Order: user key ascending, tag descending.
//!
//! # Concurrency
//!
//! Only the holder of the writer lock allocates and links nodes. A node is
//! written in full before the `Release` store that links it at level 0 (and
//! at each higher level) makes it reachable, and readers follow links with
//! `Acquire` loads, so a reader sees either no node or a whole one. A link
//! from `a` to `c` only ever changes to a new `b` with `a < b < c` whose own
//! link already points to `c`, so a reader walking a level never skips a node
//! that was published before it started, and never sees one out of order. Nothing is freed before the
//! skiplist itself is dropped, and every [`NodeRef`] borrows the skiplist.

use std::cmp::Ordering;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering as Atomic};
use std::sync::Arc;

use parking_lot::Mutex;

use super::arena::{Arena, ChunkPool};

/// Levels at most; with a branching factor of 4 that indexes 4^16 entries
/// at full speed, far beyond any memtable size.
const MAX_HEIGHT: usize = 16;
/// A node reaches each next level with probability 1/BRANCHING.
const BRANCHING: u32 = 4;

/// The fixed part of a node; its links and key follow it.
#[repr(C)]
struct Header {
    prefix: [u64; 2],
    tag: u64,
    /// In the value arena (see `Writer`).
    value: *const u8,
    key_len: u32,
    value_len: u32,
    height: u32,
}

const HEADER: usize = std::mem::size_of::<Header>();
// Links follow the header and must stay 8-byte aligned.
const _: () = assert!(HEADER.is_multiple_of(std::mem::align_of::<AtomicPtr<Header>>()));
const LINK: usize = std::mem::size_of::<AtomicPtr<Header>>();

/// Where a search goes: an internal key, user key plus tag.
#[derive(Clone, Copy)]
pub(super) struct Probe<'k> {
    prefix: [u64; 2],
    user_key: &'k [u8],
    tag: u64,
}

impl<'k> Probe<'k> {
    pub(super) fn new(user_key: &'k [u8], tag: u64) -> Self {
        Probe {
            prefix: prefix_of(user_key),
            user_key,
            tag,
        }
    }
}

fn prefix_of(key: &[u8]) -> [u64; 2] {
    let mut head = [0u8; 16];
    for (dst, src) in head.iter_mut().zip(key) {
        *dst = *src;
    }
    let word = u128::from_be_bytes(head);
    [(word >> 64) as u64, word as u64]
}

/// A published node, borrowed from its skiplist.
#[derive(Clone, Copy)]
pub(super) struct NodeRef<'a> {
    ptr: NonNull<Header>,
    _list: PhantomData<&'a SkipList>,
}

impl<'a> NodeRef<'a> {
    /// REQUIRES: `ptr` is the head or a node published in a skiplist that
    /// outlives `'a`.
    fn new(ptr: NonNull<Header>) -> Self {
        NodeRef {
            ptr,
            _list: PhantomData,
        }
    }

    fn header(self) -> &'a Header {
        // SAFETY: the header was written in full before the node was
        // published (see the module docs) and is never written again; the
        // arena keeps it in place for as long as the skiplist lives.
        unsafe { self.ptr.as_ref() }
    }

    /// The byte `offset` bytes into the node.
    fn at(self, offset: usize) -> *const u8 {
        // SAFETY: callers stay within the node's allocation, whose size is
        // `HEADER + height * LINK + key_len`.
        unsafe { self.ptr.as_ptr().cast::<u8>().add(offset) }
    }

    fn data(self) -> usize {
        HEADER + self.header().height as usize * LINK
    }

    /// The link at `level`. REQUIRES: `level < height`.
    fn link(self, level: usize) -> &'a AtomicPtr<Header> {
        debug_assert!(level < self.header().height as usize);
        // SAFETY: links sit right after the header, 8-byte aligned (the
        // header is 48 bytes and nodes start 8-byte aligned), one per level
        // below `height`; they are only ever accessed atomically.
        unsafe { &*self.at(HEADER + level * LINK).cast::<AtomicPtr<Header>>() }
    }

    fn next_at(self, level: usize) -> Option<NodeRef<'a>> {
        NonNull::new(self.link(level).load(Atomic::Acquire)).map(NodeRef::new)
    }

    /// The following node in key order.
    pub(super) fn next(self) -> Option<NodeRef<'a>> {
        self.next_at(0)
    }

    pub(super) fn tag(self) -> u64 {
        self.header().tag
    }

    pub(super) fn user_key(self) -> &'a [u8] {
        // SAFETY: `key_len` bytes of key follow the links, written before
        // the node was published and never changed.
        unsafe { std::slice::from_raw_parts(self.at(self.data()), self.header().key_len as usize) }
    }

    pub(super) fn value(self) -> &'a [u8] {
        let h = self.header();
        // SAFETY: `value` points to `value_len` bytes in the skiplist's value
        // arena, written before the node was published and never changed.
        unsafe { std::slice::from_raw_parts(h.value, h.value_len as usize) }
    }

    /// This node's internal key against `probe`'s.
    pub(super) fn cmp_probe(self, probe: &Probe<'_>) -> Ordering {
        let h = self.header();
        h.prefix
            .cmp(&probe.prefix)
            .then_with(|| self.user_key().cmp(probe.user_key))
            .then_with(|| probe.tag.cmp(&h.tag))
    }
}

/// What only the writer touches.
struct Writer {
    arena: Arena,
    /// Values live apart from the nodes, so that the nodes a search visits
    /// sit densely in memory (about 70 bytes each for 16-byte keys instead
    /// of 170 with a 100-byte value inline) and more of them stay cached.
    values: Arena,
    /// xorshift32 state for node heights.
    rng: u32,
    /// Each level's predecessor of the last inserted node. An insert that
    /// lands between the same neighbours at every level (sequential keys)
    /// reuses it instead of searching from the top.
    splice: [NonNull<Header>; MAX_HEIGHT],
}

// SAFETY: the pointers are addresses into the arena that `Writer` owns and
// carries along; they are only dereferenced under the writer lock or as
// published nodes.
unsafe impl Send for Writer {}

/// An entry could not be stored: its key or value is longer than the
/// node layout's 32-bit lengths.
#[derive(Debug)]
pub(super) struct TooLarge;

pub(super) struct SkipList {
    /// A node of `MAX_HEIGHT` links and no key, before every entry.
    head: NonNull<Header>,
    /// Levels in use (1..=MAX_HEIGHT). Readers may see a stale value: a
    /// smaller one only skips the new top levels, a larger one finds their
    /// links still null at the head and descends.
    height: AtomicUsize,
    len: AtomicUsize,
    /// Bytes of arena in use, readable without the writer lock.
    memory: AtomicUsize,
    writer: Mutex<Writer>,
}

// SAFETY: published nodes are immutable except for their atomic links, the
// arena that holds them is only changed under `writer`, and it lives until
// the skiplist is dropped; so references handed to any thread stay valid
// and race-free.
unsafe impl Send for SkipList {}
// SAFETY: as above.
unsafe impl Sync for SkipList {}

impl SkipList {
    /// An empty skiplist whose arenas recycle 2 MiB chunks through `pool`.
    pub(super) fn new(pool: Option<Arc<ChunkPool>>) -> Self {
        let mut arena = Arena::new(pool.clone());
        let head = arena.alloc(HEADER + MAX_HEIGHT * LINK).cast::<Header>();
        // SAFETY: freshly allocated, large enough and aligned for a header
        // and MAX_HEIGHT links.
        unsafe {
            head.as_ptr().write(Header {
                prefix: [0; 2],
                tag: 0,
                value: NonNull::dangling().as_ptr(),
                key_len: 0,
                value_len: 0,
                height: MAX_HEIGHT as u32,
            });
        }
        // Arena memory may hold a previous memtable's bytes.
        for level in 0..MAX_HEIGHT {
            NodeRef::new(head)
                .link(level)
                .store(std::ptr::null_mut(), Atomic::Relaxed);
        }
        SkipList {
            head,
            height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            memory: AtomicUsize::new(arena.used()),
            writer: Mutex::new(Writer {
                arena,
                values: Arena::new(pool),
                rng: 0x9e37_79b9,
                splice: [head; MAX_HEIGHT],
            }),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Atomic::Relaxed)
    }

    /// Bytes of memory the nodes take, links and padding included.
    pub(super) fn memory(&self) -> usize {
        self.memory.load(Atomic::Relaxed)
    }

    fn head(&self) -> NodeRef<'_> {
        NodeRef::new(self.head)
    }

    fn levels(&self) -> usize {
        self.height.load(Atomic::Relaxed).clamp(1, MAX_HEIGHT)
    }

    /// Adds an entry; false (and nothing changes) if an entry with the same
    /// internal key is already there: a sequence number names one write.
    pub(super) fn insert(&self, user_key: &[u8], tag: u64, value: &[u8]) -> Result<bool, TooLarge> {
        let key_len = u32::try_from(user_key.len()).map_err(|_| TooLarge)?;
        let value_len = u32::try_from(value.len()).map_err(|_| TooLarge)?;
        let probe = Probe::new(user_key, tag);
        let mut guard = self.writer.lock();
        let w = &mut *guard;
        let levels = self.levels();
        let mut prev = w.splice;
        if !self.splice_fits(&prev, levels, &probe) {
            let found = self.find_ge(&probe, Some(&mut prev));
            if found.is_some_and(|n| n.cmp_probe(&probe) == Ordering::Equal) {
                return Ok(false);
            }
        }
        let height = random_height(&mut w.rng);
        if height > levels {
            // `prev` is the head above the old height (splices start as
            // the head there, searches fill it in), which is right.
            self.height.store(height, Atomic::Relaxed);
        }
        let value_ptr = w.values.alloc(value.len()).as_ptr();
        let ptr = w
            .arena
            .alloc(HEADER + height * LINK + user_key.len())
            .cast::<Header>();
        // SAFETY: `ptr` and `value_ptr` are fresh, unpublished allocations of
        // the sizes written here, 8-byte aligned: nobody else can see them yet.
        unsafe {
            std::ptr::copy_nonoverlapping(value.as_ptr(), value_ptr, value.len());
            ptr.as_ptr().write(Header {
                prefix: probe.prefix,
                tag,
                value: value_ptr,
                key_len,
                value_len,
                height: height as u32,
            });
            let key = ptr.as_ptr().cast::<u8>().add(HEADER + height * LINK);
            std::ptr::copy_nonoverlapping(user_key.as_ptr(), key, user_key.len());
        }
        let node = NodeRef::new(ptr);
        for (level, p) in prev.iter().enumerate().take(height) {
            let p = NodeRef::new(*p);
            // Only the writer stores links, so its own view is current.
            node.link(level)
                .store(p.link(level).load(Atomic::Relaxed), Atomic::Relaxed);
            // Publishes the node, header, key and value included.
            p.link(level).store(ptr.as_ptr(), Atomic::Release);
        }
        for (level, slot) in w.splice.iter_mut().enumerate() {
            *slot = if level < height {
                ptr
            } else {
                prev.get(level).copied().unwrap_or(self.head)
            };
        }
        self.len.fetch_add(1, Atomic::Relaxed);
        self.memory
            .store(w.arena.used() + w.values.used(), Atomic::Relaxed);
        Ok(true)
    }

    /// Whether `probe` goes right after `splice[level]` at every level in use.
    fn splice_fits(
        &self,
        splice: &[NonNull<Header>; MAX_HEIGHT],
        levels: usize,
        probe: &Probe<'_>,
    ) -> bool {
        splice.iter().take(levels).enumerate().all(|(level, &p)| {
            let p = NodeRef::new(p);
            let after_p = p.ptr == self.head || p.cmp_probe(probe) == Ordering::Less;
            after_p
                && p.next_at(level)
                    .is_none_or(|n| n.cmp_probe(probe) == Ordering::Greater)
        })
    }

    /// The first node at or after `probe`. With `prev`, also each level's
    /// last node before `probe` (the head where there is none).
    fn find_ge(
        &self,
        probe: &Probe<'_>,
        mut prev: Option<&mut [NonNull<Header>; MAX_HEIGHT]>,
    ) -> Option<NodeRef<'_>> {
        let mut x = self.head();
        let mut level = self.levels() - 1;
        loop {
            let next = x.next_at(level);
            if let Some(down) = level.checked_sub(1).and_then(|l| x.next_at(l)) {
                // Where the search goes if `next` is past the probe: its
                // miss now overlaps the one on `next` instead of following it.
                prefetch(down);
            }
            match next {
                Some(n) if n.cmp_probe(probe) == Ordering::Less => x = n,
                _ => {
                    if let Some(slot) = prev.as_deref_mut().and_then(|p| p.get_mut(level)) {
                        *slot = x.ptr;
                    }
                    if level == 0 {
                        return next;
                    }
                    level -= 1;
                }
            }
        }
    }

    /// The first node after `probe`, or at it with `inclusive`.
    pub(super) fn seek(&self, probe: &Probe<'_>, inclusive: bool) -> Option<NodeRef<'_>> {
        let found = self.find_ge(probe, None)?;
        if !inclusive && found.cmp_probe(probe) == Ordering::Equal {
            return found.next();
        }
        Some(found)
    }

    /// The last node before `probe`, or at it with `inclusive`.
    pub(super) fn seek_back(&self, probe: &Probe<'_>, inclusive: bool) -> Option<NodeRef<'_>> {
        let mut x = self.head();
        let mut level = self.levels() - 1;
        loop {
            match x.next_at(level) {
                Some(n)
                    if match n.cmp_probe(probe) {
                        Ordering::Less => true,
                        Ordering::Equal => inclusive,
                        Ordering::Greater => false,
                    } =>
                {
                    x = n
                }
                _ if level == 0 => break,
                _ => level -= 1,
            }
        }
        (x.ptr != self.head).then_some(x)
    }

    /// The first node, if any.
    pub(super) fn first(&self) -> Option<NodeRef<'_>> {
        self.head().next()
    }

    /// The last node, if any.
    pub(super) fn last(&self) -> Option<NodeRef<'_>> {
        let mut x = self.head();
        for level in (0..self.levels()).rev() {
            while let Some(n) = x.next_at(level) {
                x = n;
            }
        }
        (x.ptr != self.head).then_some(x)
    }

    /// Every node in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = NodeRef<'_>> {
        std::iter::successors(self.first(), |n| n.next())
    }
}

/// Asks the CPU to start loading `node`'s first cache line.
fn prefetch(node: NodeRef<'_>) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is only a
    // hint: it never faults and changes no memory, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            node.ptr.as_ptr().cast::<i8>(),
        );
    }
}

fn random_height(rng: &mut u32) -> usize {
    let mut height = 1;
    while height < MAX_HEIGHT {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 17;
        *rng ^= *rng << 5;
        if !rng.is_multiple_of(BRANCHING) {
            break;
        }
        height += 1;
    }
    height
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Internal-key order, as a `BTreeMap` key: user key ascending, tag descending.
    type ModelKey = (Vec<u8>, std::cmp::Reverse<u64>);

    fn contents(list: &SkipList) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        list.iter()
            .map(|n| (n.user_key().to_vec(), n.tag(), n.value().to_vec()))
            .collect()
    }

    proptest! {
        /// Against a `BTreeMap`: the order, every kind of seek, and that a
        /// repeated internal key is refused, for keys that share long
        /// prefixes (past the inline 16 bytes) or are prefixes of each other.
        #[test]
        fn matches_a_btreemap(
            ops in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..20), 0u64..6, proptest::collection::vec(any::<u8>(), 0..40)),
                0..300,
            ),
            probes in proptest::collection::vec((proptest::collection::vec(0u8..3, 0..20), 0u64..7), 0..30),
        ) {
            let list = SkipList::new(None);
            let mut model: BTreeMap<ModelKey, Vec<u8>> = BTreeMap::new();
            for (key, tag, value) in &ops {
                let inserted = list.insert(key, *tag, value).unwrap();
                let fresh = !model.contains_key(&(key.clone(), std::cmp::Reverse(*tag)));
                prop_assert_eq!(inserted, fresh);
                model.entry((key.clone(), std::cmp::Reverse(*tag))).or_insert_with(|| value.clone());
            }
            let expected: Vec<_> = model.iter().map(|((k, t), v)| (k.clone(), t.0, v.clone())).collect();
            prop_assert_eq!(contents(&list), expected);
            prop_assert_eq!(list.len(), model.len());
            let at = |n: Option<NodeRef<'_>>| n.map(|n| (n.user_key().to_vec(), n.tag()));
            let key_of = |(k, _): (&ModelKey, &Vec<u8>)| (k.0.clone(), k.1 .0);
            for (key, tag) in &probes {
                let probe = Probe::new(key, *tag);
                let mk = (key.clone(), std::cmp::Reverse(*tag));
                use std::ops::Bound::*;
                prop_assert_eq!(at(list.seek(&probe, true)), model.range((Included(&mk), Unbounded)).next().map(key_of));
                prop_assert_eq!(at(list.seek(&probe, false)), model.range((Excluded(&mk), Unbounded)).next().map(key_of));
                prop_assert_eq!(at(list.seek_back(&probe, true)), model.range((Unbounded, Included(&mk))).next_back().map(key_of));
                prop_assert_eq!(at(list.seek_back(&probe, false)), model.range((Unbounded, Excluded(&mk))).next_back().map(key_of));
            }
            prop_assert_eq!(at(list.first()), model.iter().next().map(key_of));
            prop_assert_eq!(at(list.last()), model.iter().next_back().map(key_of));
        }
    }

    /// Ascending and descending runs, with and without gaps, go through
    /// the splice; interleaving them forces it to be rejected and rebuilt.
    #[test]
    fn splice_keeps_order_for_runs_in_both_directions() {
        let list = SkipList::new(None);
        let mut model = BTreeMap::new();
        let mut put = |i: u64, tag: u64| {
            let key = format!("{i:020}").into_bytes();
            list.insert(&key, tag, b"v").unwrap();
            model.insert((key, std::cmp::Reverse(tag)), ());
        };
        for i in 0..5000 {
            put(i * 2, 1);
        }
        for i in (0..5000).rev() {
            put(i * 2 + 1, 1);
        }
        for i in 0..5000 {
            put(i * 2, 2 + i % 3);
            put(10_000 + i, 1);
        }
        let keys: Vec<_> = list
            .iter()
            .map(|n| (n.user_key().to_vec(), std::cmp::Reverse(n.tag())))
            .collect();
        let expected: Vec<_> = model.into_keys().collect();
        assert_eq!(keys, expected);
    }

    /// A skiplist on chunks that a dropped one left full of old nodes reads
    /// back only what was inserted into it.
    #[test]
    fn recycled_chunks_hold_no_stale_links() {
        let pool = ChunkPool::new(64 << 20);
        let fill = |list: &SkipList, round: u64| {
            for i in 0..60_000u64 {
                let key = format!("{:08}", (i * 7919 + round) % 100_000).into_bytes();
                list.insert(&key, round, &[round as u8; 40]).unwrap();
            }
        };
        let old = SkipList::new(Some(pool.clone()));
        fill(&old, 1);
        drop(old);
        let list = SkipList::new(Some(pool));
        fill(&list, 2);
        list.insert(b"zzz", 3, b"last").unwrap();
        let entries = contents(&list);
        assert_eq!(entries.len(), 60_001);
        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(entries
            .iter()
            .take(60_000)
            .all(|(_, t, v)| *t == 2 && v == &[2u8; 40]));
        assert_eq!(list.last().unwrap().value(), b"last");
    }

    #[test]
    fn large_entries_and_empty_ones() {
        let list = SkipList::new(None);
        let big = vec![7u8; 300_000];
        list.insert(b"big", 1, &big).unwrap();
        list.insert(b"", 2, b"").unwrap();
        list.insert(b"small", 3, b"s").unwrap();
        let found = list.seek(&Probe::new(b"big", u64::MAX), true).unwrap();
        assert_eq!(found.value(), &big[..]);
        assert_eq!(list.first().unwrap().user_key(), b"");
        assert!(list.memory() > big.len());
    }

    /// Readers scanning while one writer inserts see every entry whole and
    /// in order, and never lose one that was there when they started.
    #[test]
    fn readers_see_whole_entries_in_order_during_inserts() {
        let list = Arc::new(SkipList::new(None));
        const N: u64 = 20_000;
        let writer = {
            let list = list.clone();
            std::thread::spawn(move || {
                // A fixed shuffle: i * an odd constant mod a power of two.
                for i in 0..N {
                    let k = (i * 7919) % 32_768;
                    let key = k.to_be_bytes();
                    // The value repeats the key, so a torn entry shows.
                    let value: Vec<u8> = key
                        .iter()
                        .cycle()
                        .take(8 + (k % 50) as usize)
                        .copied()
                        .collect();
                    list.insert(&key, k, &value).unwrap();
                }
            })
        };
        let mut scans = 0;
        loop {
            let done = writer.is_finished();
            let before = list.len();
            let mut seen = 0;
            let mut last: Option<Vec<u8>> = None;
            for n in list.iter() {
                let key = n.user_key();
                assert_eq!(key.len(), 8);
                assert!(
                    n.value().chunks(8).all(|c| key.starts_with(c)),
                    "torn entry"
                );
                assert!(last.as_deref().is_none_or(|l| l < key), "out of order");
                last = Some(key.to_vec());
                seen += 1;
            }
            assert!(seen >= before);
            scans += 1;
            if done {
                break;
            }
        }
        writer.join().unwrap();
        assert_eq!(list.len(), N as usize);
        assert!(scans > 1);
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// `cargo test --release -p strata-engine --lib skiplist_insert_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn skiplist_insert_speed() {
        let value = [b'v'; 100];
        for round in 0..3 {
            let list = SkipList::new(None);
            let mut x: u64 = 0x1234_5678;
            let start = std::time::Instant::now();
            for i in 0..400_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("{:016}", x % 1_000_000);
                list.insert(key.as_bytes(), i << 8 | 1, &value).unwrap();
            }
            let el = start.elapsed();
            println!(
                "round {round}: {:.0} ns/insert, {} MiB",
                el.as_nanos() as f64 / 400_000.0,
                list.memory() >> 20
            );
        }
    }
}
