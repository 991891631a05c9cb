//! Versions: the immutable set of live tables per level.
//!
//! A [`Version`] never changes once built; a flush or compaction builds a new
//! one from the old plus a [`VersionEdit`] and swaps it in. Readers,
//! iterators and snapshots hold the `Arc<Version>` they started with, so the
//! tables they read stay mapped for as long as they need them.
//!
//! Level 0 holds flushed memtables, which may overlap; a lookup checks them
//! newest first. Levels 1 and deeper hold non-overlapping tables sorted by key.

pub(crate) mod edit;
pub(crate) mod set;

use std::sync::Arc;

pub(crate) use edit::{FileMeta, VersionEdit, NUM_LEVELS};
pub(crate) use set::VersionSet;

use crate::iter::{Direction, KeyBounds, Source};
use crate::key::user_key;
use crate::memtable::Lookup;
use crate::sstable::{Table, TableSource};
use crate::Result;

/// A live table: its manifest entry and its open reader.
#[derive(Debug)]
pub(crate) struct TableFile {
    pub(crate) meta: FileMeta,
    pub(crate) table: Arc<Table>,
}

impl TableFile {
    fn smallest_user_key(&self) -> &[u8] {
        user_key(&self.meta.smallest)
    }

    fn largest_user_key(&self) -> &[u8] {
        user_key(&self.meta.largest)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Version {
    /// `levels[0]` newest first; deeper levels sorted by smallest key.
    pub(crate) levels: [Vec<Arc<TableFile>>; NUM_LEVELS],
}

impl Version {
    /// The newest version of `key` visible at `seq` among the tables.
    pub(crate) fn get(&self, key: &[u8], seq: u64) -> Result<Option<Lookup>> {
        for (level, files) in self.levels.iter().enumerate() {
            let candidates: &[Arc<TableFile>] = if level == 0 {
                files
            } else {
                let i = files.partition_point(|f| f.largest_user_key() < key);
                files.get(i..=i).unwrap_or_default()
            };
            for f in candidates {
                if key < f.smallest_user_key() || key > f.largest_user_key() {
                    continue;
                }
                if let Some(found) = f.table.get(key, seq)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
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

    /// Numbers of every live table.
    pub(crate) fn live_files(&self) -> impl Iterator<Item = u64> + '_ {
        self.levels.iter().flatten().map(|f| f.meta.number)
    }
}
