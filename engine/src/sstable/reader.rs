//! Opens a table file through `mmap`, answers point lookups and serves scans.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::sync::Arc;

use super::block::BlockIter;
use super::block_buf::BlockBuf;
use super::cache::{next_table_id, BlockCache};
use super::filter;
use super::footer::{
    decompress_block, verify_block, verify_stored_block, BlockHandle, Footer, FOOTER_LEN,
    NO_COMPRESSION,
};
use super::index::Index;
use super::properties::Properties;
use crate::error::{DecodeError, Error, Result};
use crate::fs::{FileBytes, FileSystem};
use crate::iter::{Direction, Entry, KeyBounds, Source};
use crate::key::{
    append_internal_key, compare_internal, internal_key, ParsedKey, ValueKind, MAX_SEQUENCE,
    SEEK_KIND,
};
use crate::memtable::Lookup;
use crate::range_del::RangeTombstone;

/// A data block at least this large holds a big value (a file chunk, say)
/// and is rarely read twice in a row: once read, its whole pages leave this
/// process's mapping, so reading a gigabyte of big values (a download, a
/// compaction) does not leave a gigabyte of resident table pages behind. The
/// page cache keeps them; the next read maps them again without disk I/O.
const RELEASE_AFTER_READ: u64 = 256 << 10;

/// Key buffers longer than this are freed after a lookup rather than kept
/// for the thread's next one.
const MAX_KEPT_KEY: usize = 4096;

thread_local! {
    /// A point lookup's two key buffers (its target, and the block cursor's
    /// current key), kept per thread: a lookup then allocates only the
    /// value it returns.
    static LOOKUP_KEYS: Cell<(Vec<u8>, Vec<u8>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// A data block's state in [`Table::block_states`]: `BLOCK_UNVERIFIED`,
/// or `BLOCK_VERIFIED | compression` once its checksum has matched (the
/// trailer's compression byte, when below `BLOCK_VERIFIED`), so that a read
/// need not load the trailer's cache line to learn how to decode the block.
const BLOCK_UNVERIFIED: u8 = 0;
const BLOCK_VERIFIED: u8 = 0x80;

/// An open, immutable table.
pub(crate) struct Table {
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    mmap: FileBytes,
    /// The index block, decoded: last internal key of each data block, and where it is.
    pub(super) index: Index,
    filter: std::ops::Range<usize>,
    properties: Properties,
    /// Per data block: `BLOCK_UNVERIFIED` until its checksum has been
    /// verified, then `BLOCK_VERIFIED` and its compression byte.
    block_states: Box<[AtomicU8]>,
    /// This table's key in `cache`.
    id: u64,
    /// Where decompressed blocks are kept; without one (one-pass scans) a
    /// compressed block is decompressed on every read.
    pub(super) cache: Option<Arc<BlockCache>>,
}

/// A data block's uncompressed contents: in place in the mmap, or
/// decompressed and shared with the block cache.
enum BlockRef<'a> {
    Mapped(&'a [u8]),
    Decompressed(BlockBuf),
}

impl std::ops::Deref for BlockRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlockRef::Mapped(b) => b,
            BlockRef::Decompressed(b) => b,
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("path", &self.path).finish()
    }
}

impl Table {
    /// Maps the file and validates footer, index, filter and properties.
    /// Without a block cache: for one-pass scans (repair, orphan checks),
    /// which decompress each block once anyway.
    pub(crate) fn open(fs: &Arc<dyn FileSystem>, path: &Path) -> Result<Self> {
        Self::open_with_cache(fs, path, None)
    }

    /// [`Table::open`], keeping decompressed blocks in `cache`.
    pub(crate) fn open_with_cache(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Self> {
        // A table is written once and synced, and only then recorded in the
        // MANIFEST, before any reader opens it: it never changes under the
        // mapping (see `OsFs::map`).
        let mmap = fs.map(path).map_err(|e| Error::io(path, e))?;
        let corrupt = |offset: u64, e: DecodeError| e.at(path, offset);
        let len = mmap.len();
        let footer_at = len
            .checked_sub(FOOTER_LEN)
            .ok_or_else(|| Error::corruption(path, 0, "file shorter than a table footer"))?;
        let footer = Footer::decode(mmap.get(footer_at..).unwrap_or_default())
            .map_err(|e| corrupt(footer_at as u64, e))?;
        let block = |h: BlockHandle| -> Result<std::ops::Range<usize>> {
            let range = h.range_with_trailer(footer_at).ok_or_else(|| {
                Error::corruption(path, h.offset, "block handle points outside the file")
            })?;
            let raw = mmap.get(range.clone()).unwrap_or_default();
            verify_block(raw).map_err(|e| corrupt(h.offset, e))?;
            Ok(range.start..range.start + h.size as usize)
        };
        let filter = block(footer.filter)?;
        let props_range = block(footer.properties)?;
        let properties = Properties::decode(mmap.get(props_range).unwrap_or_default())
            .map_err(|e| corrupt(footer.properties.offset, e))?;
        let index =
            Index::read(&mmap, &footer, footer_at).map_err(|e| corrupt(footer.index.offset, e))?;
        if index.len() as u64 != properties.data_blocks {
            return Err(Error::corruption(
                path,
                footer.index.offset,
                "index and properties disagree on the number of data blocks",
            ));
        }
        let block_states = (0..index.len())
            .map(|_| AtomicU8::new(BLOCK_UNVERIFIED))
            .collect();
        Ok(Table {
            path: path.to_path_buf(),
            fs: fs.clone(),
            mmap,
            index,
            filter,
            properties,
            block_states,
            id: next_table_id(),
            cache,
        })
    }

    /// Unlinks the table's file; this open table stays readable.
    pub(crate) fn remove_file(&self) -> std::io::Result<()> {
        self.fs.remove_file(&self.path)
    }

    /// Entries and the newest sequence in the table, from the properties block.
    pub(crate) fn entries_and_largest_seq(&self) -> (u64, u64) {
        (self.properties.entries, self.properties.largest_seq)
    }

    /// The range tombstones the table holds, from the properties block.
    pub(crate) fn range_tombstones(&self) -> &[RangeTombstone] {
        &self.properties.range_tombstones
    }

    /// Smallest and largest internal keys, from the properties block.
    pub(crate) fn key_range(&self) -> (&[u8], &[u8]) {
        (&self.properties.smallest_key, &self.properties.largest_key)
    }

    /// Data block `i`'s uncompressed contents, checksum-verified on first use.
    fn data_block(&self, i: usize) -> Result<BlockRef<'_>> {
        // A block known to be compressed is looked up in the cache before
        // its stored bytes are touched: a hit then costs no page of the file.
        let state = self.block_state(i);
        let stored = if state != BLOCK_UNVERIFIED && state != BLOCK_VERIFIED | NO_COMPRESSION {
            None
        } else {
            match self.stored_block(i)? {
                (NO_COMPRESSION, plain) => return Ok(BlockRef::Mapped(plain)),
                compressed => Some(compressed),
            }
        };
        let load = || -> Result<BlockBuf> {
            let (compression, stored) = match stored {
                Some(read) => read,
                None => self.stored_block(i)?,
            };
            decompress_block(compression, stored).map_err(|e| self.block_corruption(i, e))
        };
        let block = match &self.cache {
            Some(cache) => cache.get_or_load((self.id, i as u32), load)?,
            None => load()?,
        };
        Ok(BlockRef::Decompressed(block))
    }

    fn block_state(&self, i: usize) -> u8 {
        self.block_states
            .get(i)
            .map_or(BLOCK_UNVERIFIED, |s| s.load(AtomicOrdering::Relaxed))
    }

    /// Data block `i` as stored, and its compression byte; its checksum is
    /// verified the first time.
    fn stored_block(&self, i: usize) -> Result<(u8, &[u8])> {
        let (_, handle) = self
            .index
            .get(i)
            .ok_or_else(|| Error::corruption(&self.path, 0, "data block index out of range"))?;
        let range = handle
            .range_with_trailer(self.mmap.len())
            .ok_or_else(|| Error::corruption(&self.path, handle.offset, "bad block handle"))?;
        let raw = self.mmap.get(range).unwrap_or_default();
        let state = self.block_state(i);
        if state != BLOCK_UNVERIFIED {
            return Ok((
                state & !BLOCK_VERIFIED,
                raw.get(..handle.size as usize).unwrap_or_default(),
            ));
        }
        let (compression, stored) =
            verify_stored_block(raw).map_err(|e| e.at(&self.path, handle.offset))?;
        // `verify_stored_block` refuses bytes no codec uses; this only keeps
        // a future codec byte from colliding with the flag (such a block
        // would be verified on every read: slower, still right).
        if let Some(state) = self
            .block_states
            .get(i)
            .filter(|_| compression < BLOCK_VERIFIED)
        {
            state.store(BLOCK_VERIFIED | compression, AtomicOrdering::Relaxed);
        }
        Ok((compression, stored))
    }

    /// Drops data block `i`'s whole pages from the mapping when the block
    /// is big (see [`RELEASE_AFTER_READ`]). Best effort: the advice only
    /// saves memory, so its failure is ignored.
    fn release_if_big(&self, i: usize) {
        let Some((_, handle)) = self.index.get(i) else {
            return;
        };
        if u64::from(handle.size) < RELEASE_AFTER_READ {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let start = (handle.offset as usize).next_multiple_of(page);
        let end = (handle.offset + u64::from(handle.size)) as usize / page * page;
        if start < end && end <= self.mmap.len() {
            // A dropped page is mapped again from the page cache, with the
            // same bytes (the file never changes while open), on its next
            // access, so any reader of the range sees the same contents.
            self.mmap.release(start, end);
        }
    }

    fn block_corruption(&self, i: usize, e: DecodeError) -> Error {
        let offset = self.index.get(i).map_or(0, |(_, h)| h.offset);
        e.at(&self.path, offset)
    }

    /// Index of the first data block whose last key is `>= target`.
    fn find_block(&self, target: &[u8]) -> usize {
        self.index.find(target)
    }

    /// False when the bloom filter rules out the user key hashed to `h`.
    pub(crate) fn may_contain(&self, h: filter::KeyHash) -> bool {
        filter::may_contain(self.filter_bytes(), h)
    }

    /// Starts loading what [`Table::may_contain`] will read for `h`.
    pub(crate) fn prefetch_filter(&self, h: filter::KeyHash) {
        filter::prefetch(self.filter_bytes(), h);
    }

    fn filter_bytes(&self) -> &[u8] {
        self.mmap.get(self.filter.clone()).unwrap_or_default()
    }

    /// The newest version of `user_key` visible at `seq`, with its
    /// sequence; range tombstones are not applied. The caller has
    /// already checked the key range and [`Table::may_contain`], counting
    /// the filter's verdicts.
    pub(crate) fn lookup(&self, user_key: &[u8], seq: u64) -> Result<Option<(u64, Lookup)>> {
        let (mut target, cursor_key) = LOOKUP_KEYS.try_with(Cell::take).unwrap_or_default();
        target.clear();
        append_internal_key(&mut target, user_key, seq, SEEK_KIND);
        let (found, cursor_key) = self.lookup_in_block(user_key, &target, cursor_key);
        if target.capacity().max(cursor_key.capacity()) <= MAX_KEPT_KEY {
            let _ = LOOKUP_KEYS.try_with(|keys| keys.set((target, cursor_key)));
        }
        found
    }

    /// [`Table::lookup`] for the internal key `target`, with `cursor_key`
    /// as the block cursor's key buffer, which it hands back.
    fn lookup_in_block(
        &self,
        user_key: &[u8],
        target: &[u8],
        cursor_key: Vec<u8>,
    ) -> (Result<Option<(u64, Lookup)>>, Vec<u8>) {
        let i = self.find_block(target);
        if i >= self.index.len() {
            return (Ok(None), cursor_key);
        }
        let block = match self.data_block(i) {
            Ok(block) => block,
            Err(e) => return (Err(e), cursor_key),
        };
        let mut it = match BlockIter::with_key_buffer(&block, cursor_key) {
            Ok(it) => it,
            Err((e, cursor_key)) => return (Err(self.block_corruption(i, e)), cursor_key),
        };
        let found = (|| {
            if !it.seek(target, compare_internal)? {
                return Ok(None);
            }
            let Some((k, v)) = it.current() else {
                return Ok(None);
            };
            let parsed = ParsedKey::parse(k)?;
            if parsed.user_key != user_key {
                return Ok(None);
            }
            let lookup = match parsed.kind {
                ValueKind::Value => Lookup::Value(v.to_vec()),
                ValueKind::Deletion => Lookup::Deleted,
                ValueKind::BlobIndex => Lookup::Blob(v.to_vec()),
                ValueKind::RangeDeletion => {
                    return Err(DecodeError("range deletion among point entries"))
                }
            };
            Ok(Some((parsed.seq, lookup)))
        })();
        let (_, cursor_key) = it.into_position();
        drop(block);
        self.release_if_big(i);
        (found.map_err(|e| self.block_corruption(i, e)), cursor_key)
    }

    /// Every entry of data block `i`, decoded.
    fn decode_block(&self, i: usize, out: &mut VecDeque<Entry>) -> Result<()> {
        let block = self.data_block(i)?;
        let mut decode = || -> Result<(), DecodeError> {
            let mut it = BlockIter::new(&block)?;
            while it.advance()? {
                if let Some((k, v)) = it.current() {
                    let parsed = ParsedKey::parse(k)?;
                    out.push_back(Entry {
                        user_key: parsed.user_key.to_vec(),
                        tag: crate::key::pack_tag(parsed.seq, parsed.kind),
                        value: v.to_vec(),
                    });
                }
            }
            Ok(())
        };
        let decoded = decode().map_err(|e| self.block_corruption(i, e));
        drop(block);
        self.release_if_big(i);
        decoded
    }
}

/// A scan over one table. Forward scans decode one entry at a time, so a
/// seek that reads a few entries pays for those alone; backward scans
/// decode a block at a time (entries can only be decoded forwards) and hand
/// it out reversed.
pub(crate) struct TableSource {
    table: Arc<Table>,
    bounds: KeyBounds,
    direction: Direction,
    /// Backward: the next data block to decode; `None` when none is left.
    next_block: Option<usize>,
    /// Backward: the decoded entries of the current block, in walk order.
    buffer: VecDeque<Entry>,
    /// Forward: where the next entry is; `None` once the scan is over.
    forward: Option<ForwardPos>,
    /// Forward: the first entry still has to be found by a seek.
    seek_pending: bool,
}

/// A forward scan's place in the table.
struct ForwardPos {
    block: usize,
    /// Offset of the next entry in the block, and the key before it.
    next: usize,
    key: Vec<u8>,
}

impl TableSource {
    pub(crate) fn new(table: Arc<Table>, bounds: &KeyBounds, direction: Direction) -> Self {
        let n = table.index.len();
        let (next_block, forward) = match direction {
            Direction::Forward => {
                let start = match &bounds.lower {
                    Bound::Unbounded => 0,
                    Bound::Included(k) | Bound::Excluded(k) => {
                        table.find_block(&internal_key(k, MAX_SEQUENCE, SEEK_KIND))
                    }
                };
                let pos = (start < n).then_some(ForwardPos {
                    block: start,
                    next: 0,
                    key: Vec::new(),
                });
                (None, pos)
            }
            Direction::Backward => {
                let block = match &bounds.upper {
                    Bound::Unbounded => n.checked_sub(1),
                    Bound::Included(k) | Bound::Excluded(k) => {
                        // The block holding the last version of `k` (seq 0 sorts last).
                        let end = table.find_block(&internal_key(k, 0, ValueKind::Deletion));
                        Some(end.min(n.saturating_sub(1))).filter(|_| n > 0)
                    }
                };
                (block, None)
            }
        };
        TableSource {
            seek_pending: !matches!(bounds.lower, Bound::Unbounded),
            table,
            bounds: bounds.clone(),
            direction,
            next_block,
            buffer: VecDeque::new(),
            forward,
        }
    }

    /// The next entry of a forward scan within the bounds.
    fn next_forward(&mut self) -> Result<Option<Entry>> {
        loop {
            let Some(pos) = self.forward.as_mut() else {
                return Ok(None);
            };
            let i = pos.block;
            let block = self.table.data_block(i)?;
            let key = std::mem::take(&mut pos.key);
            let step = (|| {
                let mut it = BlockIter::resume(&block, pos.next, key)?;
                let found = if self.seek_pending {
                    let target = match &self.bounds.lower {
                        Bound::Included(k) | Bound::Excluded(k) => {
                            internal_key(k, MAX_SEQUENCE, SEEK_KIND)
                        }
                        Bound::Unbounded => Vec::new(),
                    };
                    it.seek(&target, compare_internal)?
                } else {
                    it.advance()?
                };
                let entry = match it.current().filter(|_| found) {
                    Some((k, v)) => {
                        let parsed = ParsedKey::parse(k)?;
                        Some(Entry {
                            user_key: parsed.user_key.to_vec(),
                            tag: crate::key::pack_tag(parsed.seq, parsed.kind),
                            value: v.to_vec(),
                        })
                    }
                    None => None,
                };
                Ok((entry, it.into_position()))
            })();
            let (entry, (next, key)) = step.map_err(|e| self.table.block_corruption(i, e))?;
            self.seek_pending = false;
            pos.next = next;
            pos.key = key;
            let Some(entry) = entry else {
                // End of this block: on to the next one, from its start.
                drop(block);
                self.table.release_if_big(i);
                pos.block += 1;
                pos.next = 0;
                pos.key.clear();
                if pos.block >= self.table.index.len() {
                    self.forward = None;
                }
                continue;
            };
            if !self.bounds.below_upper(&entry.user_key) {
                self.forward = None;
                return Ok(None);
            }
            if self.bounds.above_lower(&entry.user_key) {
                return Ok(Some(entry));
            }
        }
    }

    fn load_next_block(&mut self) -> Result<()> {
        let Some(i) = self.next_block else {
            return Ok(());
        };
        let mut entries = VecDeque::new();
        self.table.decode_block(i, &mut entries)?;
        let before_start = entries
            .front()
            .is_some_and(|e| !self.bounds.above_lower(&e.user_key));
        self.next_block = i.checked_sub(1).filter(|_| !before_start);
        entries.retain(|e| self.bounds.contains(&e.user_key));
        entries.make_contiguous().reverse();
        self.buffer = entries;
        Ok(())
    }
}

impl Source for TableSource {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.direction == Direction::Forward {
            return self.next_forward();
        }
        while self.buffer.is_empty() && self.next_block.is_some() {
            self.load_next_block()?;
        }
        Ok(self.buffer.pop_front())
    }
}
