//! strata-engine: an embeddable LSM-tree key-value storage engine.
//!
//! Writes go to a write-ahead log and a skiplist memtable; full memtables are
//! flushed by a background thread to immutable, checksummed tables that are
//! read through `mmap`, with a bloom filter in front of every table, and a
//! second thread compacts the tables into levels. Reads and snapshots never
//! wait for writers or for background work.
//!
//! ```
//! use strata_engine::{Db, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Db::open(dir.path(), Options::default())?;
//! db.put(b"hello", b"world")?;
//! assert_eq!(db.get(b"hello")?.as_deref(), Some(&b"world"[..]));
//! db.delete(b"hello")?;
//! assert_eq!(db.get(b"hello")?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The on-disk formats are documented in the modules that write them: the
//! log ([`wal`](crate) — `src/wal/mod.rs`), tables (`src/sstable/`), version
//! edits (`src/version/edit.rs`) and internal keys (`src/key.rs`).

mod batch;
mod blob;
mod coding;
mod compaction;
mod db;
mod error;
mod file_name;
pub mod fs;
mod health;
mod iter;
mod iterator;
mod key;
mod memtable;
mod options;
mod prefetch;
mod range_del;
mod recovery_report;
mod snapshot;
mod sstable;
mod stats;
mod version;
mod wal;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use batch::WriteBatch;
pub use compaction::{CompactionFilter, FilterDecision};
pub use db::Db;
pub use db::RepairReport;
pub use error::{Error, Result};
pub use health::Health;
pub use iterator::Iter;
pub use key::MAX_SEQUENCE;
pub use options::{
    Compression, Options, RecoveryMode, WriteOptions, MAX_KEY_SIZE_LIMIT, MAX_VALUE_SIZE_LIMIT,
};
pub use recovery_report::{Damage, RecoveryReport};
pub use snapshot::Snapshot;
pub use stats::{LevelStats, Stats, TableInfo};
