//! Versions: the immutable set of live tables per level.
//!
//! A [`Version`] never changes once built; a flush or compaction builds a new
//! one from the old plus a [`VersionEdit`] and swaps it in. Readers,
//! iterators and snapshots hold the `Arc<Version>` they started with, so the
//! tables they read stay mapped for as long as they need them.
//!
//! Level 0 holds flushed memtables, which may overlap; a lookup checks them
//! newest first. Levels 1 and deeper hold non-overlapping tables sorted by
//! key, and no user key spans two tables of one level.
//!
//! A table that a compaction replaced is marked obsolete and its file is
//! deleted when the last version holding it (through a reader, iterator or
//! snapshot) is dropped.

pub(crate) mod edit;
pub(crate) mod set;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(crate) use edit::{FileMeta, VersionEdit, NUM_LEVELS};
pub(crate) use set::{ManifestState, ManifestTables, VersionSet};

use crate::blob::{blob_path, BlobFile, BlobRef, Garbage};
use crate::error::Error;
use crate::iter::{Direction, KeyBounds, Source};
use crate::key::user_key;
use crate::memtable::Lookup;
use crate::range_del::{self, RangeTombstone};
use crate::sstable::{KeyHash, Table, TableSource};
use crate::stats::Counters;
use crate::Result;

/// A live table: its manifest entry and its open reader.
#[derive(Debug)]
pub(crate) struct TableFile {
    pub(crate) meta: FileMeta,
    pub(crate) table: Arc<Table>,
    /// Set once no current or future version holds this table.
    obsolete: AtomicBool,
}

impl TableFile {
    pub(crate) fn new(meta: FileMeta, table: Arc<Table>) -> Self {
        TableFile {
            meta,
            table,
            obsolete: AtomicBool::new(false),
        }
    }

    pub(crate) fn smallest_user_key(&self) -> &[u8] {
        user_key(&self.meta.smallest)
    }

    pub(crate) fn largest_user_key(&self) -> &[u8] {
        user_key(&self.meta.largest)
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for TableFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // A failed delete leaves garbage, not damage: the next open
            // removes it (an edit of its manifest deleted it).
            let _ = self.table.remove_file();
        }
    }
}

/// A blob file of a version, with the garbage the version's edits recorded for it.
#[derive(Debug, Clone)]
pub(crate) struct LiveBlob {
    pub(crate) file: Arc<BlobFile>,
    pub(crate) garbage: Garbage,
}

#[derive(Debug, Default)]
pub(crate) struct Version {
    /// `levels[0]` newest first; deeper levels sorted by smallest key.
    pub(crate) levels: [Vec<Arc<TableFile>>; NUM_LEVELS],
    /// Blob files that tables of this version point into, by number.
    pub(crate) blobs: BTreeMap<u64, LiveBlob>,
}

impl Version {
    /// The newest version of `key` visible at `seq` among the tables, with
    /// its sequence, range tombstones applied: a visible one newer than
    /// what was found (or covering a key not found) gives `Deleted` at the
    /// tombstone's sequence. The tables holding the key are visited newest
    /// first and a table's range covers its tombstones, so the tables past
    /// the one that holds the version found hold only older tombstones.
    pub(crate) fn get(
        &self,
        key: &[u8],
        seq: u64,
        counters: &Counters,
    ) -> Result<Option<(u64, Lookup)>> {
        let mut tombstone = 0;
        let hash = KeyHash::of(key);
        // Counted here and added once: the counters are shared by every
        // reader thread, and each atomic add costs more than a probe's
        // arithmetic.
        let (mut checks, mut negatives) = (0, 0);
        let mut tables = self.tables_holding(key).peekable();
        let found = (|| {
            while let Some(f) = tables.next() {
                // Each filter checked is a cache miss: the next table's
                // starts loading while this one's is checked.
                if let Some(next) = tables.peek() {
                    next.table.prefetch_filter(hash);
                }
                tombstone = tombstone.max(range_del::newest_covering(
                    f.table.range_tombstones(),
                    key,
                    seq,
                ));
                checks += 1;
                if !f.table.may_contain(hash) {
                    negatives += 1;
                    continue;
                }
                match f.table.lookup(key, seq)? {
                    Some((found, _)) if tombstone > found => {
                        return Ok(Some((tombstone, Lookup::Deleted)))
                    }
                    Some(found) => return Ok(Some(found)),
                    None => Counters::add(&counters.bloom_false_positives, 1),
                }
            }
            Ok((tombstone > 0).then_some((tombstone, Lookup::Deleted)))
        })();
        if checks > 0 {
            Counters::add(&counters.bloom_checks, checks);
        }
        if negatives > 0 {
            Counters::add(&counters.bloom_negatives, negatives);
        }
        found
    }

    /// The tables whose key range holds `key`, newest first.
    fn tables_holding<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a Arc<TableFile>> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(move |(level, files)| {
                if level == 0 {
                    files.as_slice()
                } else {
                    let i = files.partition_point(|f| f.largest_user_key() < key);
                    files.get(i..=i).unwrap_or_default()
                }
            })
            .filter(move |f| f.smallest_user_key() <= key && key <= f.largest_user_key())
    }

    /// The range tombstones of the tables that may hold keys within `bounds`.
    pub(crate) fn range_tombstones<'a>(
        &'a self,
        bounds: &'a KeyBounds,
    ) -> impl Iterator<Item = &'a RangeTombstone> {
        self.levels
            .iter()
            .flatten()
            .filter(|f| bounds.overlaps(f.smallest_user_key(), f.largest_user_key()))
            .flat_map(|f| f.table.range_tombstones())
    }

    /// The value a `BlobIndex` entry of this version points to.
    pub(crate) fn read_blob(&self, pointer: &[u8]) -> Result<Vec<u8>> {
        let r = BlobRef::from_entry(pointer)?;
        match self.blobs.get(&r.file) {
            Some(live) => live.file.read(&r),
            // Named relative to the database directory, which a version does not know.
            None => Err(Error::Corruption {
                file: blob_path(Path::new(""), r.file),
                offset: r.offset,
                reason: "a table entry points into a blob file the manifest does not name".into(),
            }),
        }
    }

    /// One scan source per table that may hold keys within `bounds`.
    pub(crate) fn sources(&self, bounds: &KeyBounds, direction: Direction) -> Vec<Box<dyn Source>> {
        self.levels
            .iter()
            .flatten()
            .filter(|f| bounds.overlaps(f.smallest_user_key(), f.largest_user_key()))
            .map(|f| {
                Box::new(TableSource::new(f.table.clone(), bounds, direction)) as Box<dyn Source>
            })
            .collect()
    }

    /// The tables of `level` (empty past the last level).
    pub(crate) fn files(&self, level: usize) -> &[Arc<TableFile>] {
        self.levels.get(level).map_or(&[], |l| l.as_slice())
    }

    /// Total bytes of the tables of `level`.
    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.files(level).iter().map(|f| f.meta.size).sum()
    }

    /// Tables of `level` holding some user key in `smallest..=largest`.
    pub(crate) fn overlapping(
        &self,
        level: usize,
        smallest: &[u8],
        largest: &[u8],
    ) -> Vec<Arc<TableFile>> {
        self.files(level)
            .iter()
            .filter(|f| f.largest_user_key() >= smallest && f.smallest_user_key() <= largest)
            .cloned()
            .collect()
    }

    /// Numbers of every live table.
    pub(crate) fn live_files(&self) -> impl Iterator<Item = u64> + '_ {
        self.levels
            .iter()
            .flatten()
            .map(|f| f.meta.number)
            .chain(self.blobs.keys().copied())
    }
}
