//! Snapshots: a consistent, read-only view of the database at one sequence.

use crate::iterator::{Iter, ReadView};
use crate::Result;

/// A point-in-time view, from [`Db::snapshot`](crate::Db::snapshot).
///
/// Taking one costs two atomic loads and an `Arc` clone. While it lives it
/// keeps the memtables and tables it reads alive; writes, flushes and the
/// database's own handle may come and go without changing what it sees.
#[derive(Clone)]
pub struct Snapshot {
    view: ReadView,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("sequence", &self.view.seq())
            .finish()
    }
}

impl Snapshot {
    pub(crate) fn new(view: ReadView) -> Self {
        Snapshot { view }
    }

    /// The sequence number of the last write this snapshot sees.
    pub fn sequence(&self) -> u64 {
        self.view.seq()
    }

    /// The value of `key` as of the snapshot.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.view.get(key.as_ref())
    }

    /// Entries with keys in `range` as of the snapshot (double-ended).
    pub fn range<K: AsRef<[u8]>>(&self, range: impl std::ops::RangeBounds<K>) -> Iter {
        self.view.range(range)
    }

    /// Entries whose keys start with `prefix` as of the snapshot (double-ended).
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        self.view.prefix(prefix.as_ref())
    }

    /// Every entry as of the snapshot (double-ended).
    pub fn iter(&self) -> Iter {
        self.range::<&[u8]>(..)
    }
}
