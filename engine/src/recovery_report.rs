//! What [`Db::open`](crate::Db::open) found wrong on disk and what it did
//! about it, for the caller to read back with
//! [`Db::recovery_report`](crate::Db::recovery_report). The engine has no
//! logging of its own: this report is how a dropped torn tail or a skipped
//! record reaches someone who can act on it.

use std::path::PathBuf;

/// One stretch of a file that recovery could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The damaged file (its path when it was read; it may since have been
    /// moved into `lost/`, see [`RecoveryReport::set_aside`]).
    pub file: PathBuf,
    /// Where the unusable bytes start.
    pub offset: u64,
    /// How many bytes were dropped from `offset` on.
    pub bytes: u64,
    /// What was wrong.
    pub reason: String,
}

/// What an open recovered past, and where the files it would not delete went.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let db = strata_engine::Db::open(dir.path(), Default::default())?;
/// let report = db.recovery_report();
/// if !report.is_clean() {
///     eprintln!("recovery dropped {} bytes: {report:?}", report.dropped_bytes());
/// }
/// # assert!(report.is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Torn tails dropped: the interrupted last append of the newest WAL or
    /// of the MANIFEST. A synced write whose append was interrupted was
    /// never acknowledged; a write without `sync` may be among them (its
    /// durability ends with the OS page cache).
    pub torn_tails: Vec<Damage>,
    /// Damage that the [`RecoveryMode`](crate::RecoveryMode) let the open
    /// get past: where point-in-time recovery stopped, or each stretch that
    /// skip-corrupted recovery skipped. Always empty under absolute
    /// consistency, which fails the open instead.
    pub skipped: Vec<Damage>,
    /// WAL files that point-in-time recovery did not replay because damage
    /// came before them (moved into `lost/`).
    pub logs_not_replayed: Vec<PathBuf>,
    /// WAL records (write batches) replayed.
    pub wal_records_replayed: u64,
    /// Files moved into the database's `lost/` directory instead of being
    /// deleted, because the open met damage (or, for a table, could not
    /// prove that every entry it holds is recovered elsewhere). Nothing in
    /// `lost/` is read again; an operator may inspect it and delete it.
    pub set_aside: Vec<PathBuf>,
}

impl RecoveryReport {
    /// True when the open met no damage at all, torn tails included, and
    /// set nothing aside.
    pub fn is_clean(&self) -> bool {
        self.torn_tails.is_empty()
            && self.skipped.is_empty()
            && self.logs_not_replayed.is_empty()
            && self.set_aside.is_empty()
    }

    /// Bytes of log and manifest records dropped, torn tails included (a log
    /// that was not replayed at all is listed, not counted).
    pub fn dropped_bytes(&self) -> u64 {
        self.torn_tails
            .iter()
            .chain(&self.skipped)
            .map(|d| d.bytes)
            .sum()
    }
}
