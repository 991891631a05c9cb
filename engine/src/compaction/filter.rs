//! Compaction filters: a user callback that drops or rewrites entries as
//! compaction writes them (after RocksDB's `CompactionFilter` and
//! lsm-tree's `CompactionFilter`), the hook for TTLs and tombstone GC.
//!
//! # Rules
//!
//! - Only the newest version of each user key in a compaction is offered,
//!   and only if it is a value (engine deletions are never offered). Older
//!   versions are dropped or kept exactly as without a filter.
//! - A snapshot never sees a filtered entry it had seen: snapshots read
//!   through the table version they pinned, which no compaction changes,
//!   and a compaction only offers entries at or below the sequence every
//!   later reader reads at (`smallest_snapshot` in the parent module).
//! - [`FilterDecision::Remove`] must not uncover an older version of the
//!   key in a deeper level. Unless no level below the output holds the key,
//!   the entry is replaced by a deletion marker with its sequence number,
//!   which shadows those versions and is dropped once it reaches the bottom,
//!   like any tombstone.
//! - The filter runs on the compaction's thread (the background compactor,
//!   or the caller of [`Db::compact_range`](crate::Db::compact_range)),
//!   never on a read. Flushes and trivial moves do not run it:
//!   `compact_range` rewrites every table in its range, the deepest level
//!   included, so it reaches every entry.
//! - A filter that panics keeps the entry: the panic is caught, counted in
//!   [`Stats::compaction_filter_panics`](crate::Stats::compaction_filter_panics),
//!   and the compaction goes on. Only the filter's own state can be left
//!   half-updated by the panic; the engine's is not touched during the call.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// What to do with an entry offered to a [`CompactionFilter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterDecision {
    /// Write the entry unchanged.
    Keep,
    /// Drop the entry: reads find no value for the key from then on (see
    /// the module docs for how older versions stay hidden).
    Remove,
    /// Write this value instead, with the entry's sequence number.
    ChangeValue(Vec<u8>),
}

/// A callback compaction asks about the newest value of each key it writes.
///
/// Set it in [`Options::compaction_filter`](crate::Options::compaction_filter).
/// It must be deterministic enough that dropping or keeping an entry at any
/// compaction is acceptable: which compaction offers an entry, and when, is
/// up to the engine. A `Remove` takes effect once that compaction is
/// installed; until then (and for snapshots taken before) the entry reads
/// as before.
///
/// ```
/// use std::sync::Arc;
/// use strata_engine::{CompactionFilter, Db, FilterDecision, Options};
///
/// /// Drops values that start with "tmp:".
/// struct DropTemporary;
///
/// impl CompactionFilter for DropTemporary {
///     fn filter(&self, _level: usize, _key: &[u8], value: &[u8]) -> FilterDecision {
///         if value.starts_with(b"tmp:") {
///             FilterDecision::Remove
///         } else {
///             FilterDecision::Keep
///         }
///     }
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let db = Db::open(
///     dir.path(),
///     Options::default().compaction_filter(Arc::new(DropTemporary)),
/// )?;
/// db.put(b"a", b"tmp:scratch")?;
/// db.put(b"b", b"kept")?;
/// db.compact_range::<&[u8]>(..)?;
/// assert_eq!(db.get(b"a")?, None);
/// assert_eq!(db.get(b"b")?.as_deref(), Some(&b"kept"[..]));
/// assert_eq!(db.stats().compaction_filter_removed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait CompactionFilter: Send + Sync {
    /// Decides about `value`, the newest value of `key`, which a compaction
    /// is about to write to `level` (1 for a compaction out of L0).
    fn filter(&self, level: usize, key: &[u8], value: &[u8]) -> FilterDecision;

    /// A name for logs and `Debug` output.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Whether values kept in blob files (see
    /// [`Options::blob_threshold`](crate::Options::blob_threshold)) are
    /// offered. Offering one reads it from its blob file, a disk read per
    /// value; a filter that decides only by small values (tombstones, say)
    /// answers `false`, and blob values are then kept as they are.
    fn filters_blob_values(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for dyn CompactionFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompactionFilter({})", self.name())
    }
}

/// What a filter decided during one compaction; added to the database's
/// counters only once the compaction is installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FilterCounts {
    pub(crate) removed: u64,
    pub(crate) changed: u64,
    pub(crate) panics: u64,
}

impl FilterCounts {
    /// Asks `filter`, counting the decision; a panic is counted and keeps
    /// the entry.
    pub(crate) fn decide(
        &mut self,
        filter: &dyn CompactionFilter,
        level: usize,
        key: &[u8],
        value: &[u8],
    ) -> FilterDecision {
        // The closure only reads borrowed bytes; nothing of the engine's
        // can be observed half-changed after an unwind.
        match catch_unwind(AssertUnwindSafe(|| filter.filter(level, key, value))) {
            Ok(decision) => {
                match decision {
                    FilterDecision::Keep => {}
                    FilterDecision::Remove => self.removed += 1,
                    FilterDecision::ChangeValue(_) => self.changed += 1,
                }
                decision
            }
            Err(_) => {
                self.panics += 1;
                FilterDecision::Keep
            }
        }
    }
}
