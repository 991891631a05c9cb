//! [`Db::repair`]: rebuilds a database whose MANIFEST, tables or logs are
//! damaged into one that opens, keeping every item that can still be read
//! (after LevelDB's `RepairDB`).
//!
//! 1. Every table is read whole: each data block's checksum, each entry,
//!    and the entry count against the properties block. A table that fails
//!    is set aside in `lost/`; the others keep their contents.
//! 2. Every WAL is replayed, oldest first, skipping damaged records (as
//!    [`RecoveryMode::SkipCorrupted`](crate::RecoveryMode::SkipCorrupted)
//!    does, and any log may end torn), into new tables.
//! 3. The manifest is not trusted, so levels are not known: every table
//!    goes into L0, where lookups search the highest file number first. So
//!    the tables are renamed to fresh numbers in the order of the newest
//!    sequence each holds, and a newer version of a key is found before an
//!    older one. Compaction sorts L0 into levels afterwards. (Known limit:
//!    base-level compaction outputs hold versions at sequence 0, see
//!    `compaction`; a compaction input that a reader kept alive past its
//!    edit when the process died is older than them but carries its real
//!    sequences, and would shadow them here. The open deletes such tables
//!    when it can read the MANIFEST; repair does not read it yet.)
//! 4. A fresh MANIFEST naming every table is synced and `CURRENT` switched
//!    to it; only then are the old MANIFESTs, the unreadable tables and the
//!    damaged logs moved into `lost/`, and the logs that replayed whole
//!    deleted (their writes are in tables named by a synced edit).
//!
//! A crash during a repair leaves either the old `CURRENT` or the new one,
//! and running the repair again finishes the job.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{build_table, lock_dir, open, Db};
use crate::blob::{self, BlobMeta, BlobRef, Garbage};
use crate::error::{Error, Result};
use crate::file_name::{self, FileKind};
use crate::fs::{Dir, FileSystem};
use crate::iter::{Direction, KeyBounds, Source};
use crate::options::{Options, RecoveryMode};
use crate::recovery_report::{Damage, RecoveryReport};
use crate::sstable::{Table, TableSource};
use crate::version::{FileMeta, Version, VersionEdit, VersionSet};

/// What [`Db::repair`] kept and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Tables that read back whole and are in the repaired database, by
    /// their new names (step 3 of the module docs renames them).
    pub tables_kept: Vec<PathBuf>,
    /// Tables that did not read back whole, with where the damage is; each
    /// is now in `lost/` and none of its items are in the database.
    pub tables_set_aside: Vec<Damage>,
    /// WAL records (write batches) replayed into new tables.
    pub wal_records_recovered: u64,
    /// Stretches of logs that could not be read (torn tails included),
    /// with their files, offsets and sizes: the writes in them are lost.
    pub wal_damage: Vec<Damage>,
    /// Every file moved into `lost/`, where it went.
    pub set_aside: Vec<PathBuf>,
}

impl RepairReport {
    /// Bytes of log records lost.
    pub fn wal_bytes_lost(&self) -> u64 {
        self.wal_damage.iter().map(|d| d.bytes).sum()
    }

    /// True when nothing was lost: every table and every log record read back.
    pub fn lost_nothing(&self) -> bool {
        self.tables_set_aside.is_empty() && self.wal_damage.is_empty()
    }
}

impl Db {
    /// Rebuilds the database in `path` from whatever of its tables and logs
    /// can still be read, for when [`Db::open`] reports corruption that the
    /// [`RecoveryMode`] cannot get past (a damaged MANIFEST, a damaged
    /// table). The database must not be open. Damaged files are kept in
    /// `path/lost/`, never deleted; the report says what was lost.
    ///
    /// ```
    /// use strata_engine::{Db, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # { let db = Db::open(dir.path(), Options::default())?; db.put(b"k", b"v")?; }
    /// let report = Db::repair(dir.path())?;
    /// if !report.lost_nothing() {
    ///     eprintln!(
    ///         "lost {} log bytes and {} tables; damaged files are in lost/",
    ///         report.wal_bytes_lost(),
    ///         report.tables_set_aside.len()
    ///     );
    /// }
    /// let db = Db::open(dir.path(), Options::default())?;
    /// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport> {
        Self::repair_with(path, Options::default())
    }

    /// [`Db::repair`] on the file system of `options`
    /// ([`Options::file_system`]), writing its tables with `options`'
    /// settings. Its WALs are replayed as [`RecoveryMode::SkipCorrupted`]
    /// does, whatever `options` says.
    ///
    /// ```
    /// use strata_engine::{Db, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # { let db = Db::open(dir.path(), Options::default())?; db.put(b"k", b"v")?; }
    /// let options = Options::default().block_size(16 << 10);
    /// Db::repair_with(dir.path(), options.clone())?;
    /// let db = Db::open(dir.path(), options)?;
    /// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn repair_with(path: impl AsRef<Path>, options: Options) -> Result<RepairReport> {
        let options = Options {
            recovery_mode: RecoveryMode::SkipCorrupted,
            ..options
        };
        let dir = Dir::new(options.file_system.clone(), path.as_ref().to_path_buf());
        let fs = dir.fs().clone();
        if !fs.exists(&dir) {
            return Err(Error::InvalidArgument(format!(
                "no database directory at {}",
                dir.display()
            )));
        }
        let _lock = lock_dir(&dir)?;
        let files = file_name::list(&dir)?;
        let mut next_number = 1 + file_name::highest_number(&files);
        let mut report = RepairReport::default();

        // Step 1.
        let mut tables: Vec<(PathBuf, u64)> = Vec::new();
        let mut unreadable = Vec::new();
        let mut blobs: Vec<BlobMeta> = Vec::new();
        // Per blob file, the records and bytes the kept tables point to.
        let mut referenced: BTreeMap<u64, Garbage> = BTreeMap::new();
        for (path, kind) in &files {
            let salvaged = match kind {
                FileKind::Table(_) => salvage_table(&fs, path)?.map(|s| {
                    for (number, r) in s.pointers {
                        referenced.entry(number).or_default().add(r);
                    }
                    tables.push((path.clone(), s.largest_seq));
                }),
                FileKind::Blob(n) => {
                    salvage(&*fs, blob::scan(&*fs, path, *n))?.map(|meta| blobs.push(meta))
                }
                _ => continue,
            };
            if let Err(damage) = salvaged {
                unreadable.push(path.clone());
                report.tables_set_aside.push(damage);
            }
        }
        // Step 2.
        let mut logs: Vec<u64> = files
            .iter()
            .filter_map(|(_, kind)| match kind {
                FileKind::Log(n) => Some(*n),
                _ => None,
            })
            .collect();
        logs.sort_unstable();
        let mut last_seq = tables.iter().map(|(_, s)| *s).max().unwrap_or(0);
        let mut replayed = RecoveryReport::default();
        let memtables = open::replay_logs(&dir, &logs, &options, &mut last_seq, &mut replayed)?;
        report.wal_records_recovered = replayed.wal_records_replayed;
        report.wal_damage = replayed.torn_tails;
        report.wal_damage.extend(replayed.skipped);
        for mem in memtables.iter().filter(|m| !m.is_empty()) {
            let flushed = build_table(&dir, &options, next_number, next_number + 1, mem)?;
            next_number += 2;
            // The new table points into the blob file it wrote and into the
            // WALs' blob files.
            for meta in flushed.blob.iter().chain(&flushed.pointed) {
                referenced.entry(meta.number).or_default().add(Garbage {
                    count: meta.count,
                    bytes: meta.bytes,
                });
            }
            blobs.extend(flushed.blob);
            let path = file_name::table_path(&dir, flushed.table.number);
            let table = Table::open(&fs, &path)?;
            tables.push((path, table.entries_and_largest_seq().1));
        }

        // What the tables no longer point to is garbage; a file they do
        // not point into at all is set aside.
        let mut blob_garbage = Vec::new();
        blobs.retain(|meta| {
            let Some(r) = referenced.get(&meta.number) else {
                unreadable.push(blob::blob_path(&dir, meta.number));
                return false;
            };
            let garbage = Garbage {
                count: meta.count.saturating_sub(r.count),
                bytes: meta.bytes.saturating_sub(r.bytes),
            };
            if garbage != Garbage::default() {
                blob_garbage.push((meta.number, garbage));
            }
            true
        });

        // Step 3.
        tables.sort_by_key(|(_, largest_seq)| *largest_seq);
        let mut added = Vec::with_capacity(tables.len());
        for (old, _) in tables {
            let number = next_number;
            next_number += 1;
            let new = file_name::table_path(&dir, number);
            fs.rename(&old, &new).map_err(|e| Error::io(&old, e))?;
            let table = Table::open(&fs, &new)?;
            let (smallest, largest) = table.key_range();
            let size = fs.file_size(&new).map_err(|e| Error::io(&new, e))?;
            added.push((
                0,
                FileMeta {
                    number,
                    size,
                    smallest: smallest.to_vec(),
                    largest: largest.to_vec(),
                },
            ));
            report.tables_kept.push(new);
        }
        file_name::sync_dir(&dir)?;

        // Step 4.
        let mut versions =
            VersionSet::create(&dir, Version::default(), 0, last_seq, next_number, None)?;
        let log_number = versions.new_file_number();
        versions.log_and_apply(VersionEdit {
            log_number: Some(log_number),
            last_sequence: Some(last_seq),
            added,
            added_blobs: blobs,
            blob_garbage,
            ..VersionEdit::default()
        })?;
        let damaged_logs: HashSet<PathBuf> =
            report.wal_damage.iter().map(|d| d.file.clone()).collect();
        let unreadable: HashSet<PathBuf> = unreadable.into_iter().collect();
        for (path, kind) in files {
            let aside = match kind {
                FileKind::Log(_) => damaged_logs.contains(&path),
                FileKind::Table(_) | FileKind::Blob(_) => unreadable.contains(&path),
                FileKind::Manifest(_) => true,
                FileKind::Temp | FileKind::Current | FileKind::Lock => continue,
            };
            if aside {
                report.set_aside.push(file_name::set_aside(&dir, &path)?);
            } else if let FileKind::Log(_) = kind {
                fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        file_name::sync_dir(&dir)?;
        Ok(report)
    }
}

/// Reads the table at `path` whole. `Ok(Err(damage))` when it is damaged;
/// the outer error is for I/O that failed.
fn salvage_table(fs: &Arc<dyn FileSystem>, path: &Path) -> Result<Result<Salvaged, Damage>> {
    salvage(
        &**fs,
        (|| {
            let table = Arc::new(Table::open(fs, path)?);
            let (entries, largest_seq) = table.entries_and_largest_seq();
            let mut source = TableSource::new(table, &KeyBounds::prefix(b""), Direction::Forward);
            let mut seen = 0u64;
            let mut pointers: BTreeMap<u64, Garbage> = BTreeMap::new();
            while let Some(entry) = source.next_entry()? {
                seen += 1;
                if entry.is_blob_index() {
                    let r = BlobRef::decode(&entry.value).map_err(|e| e.at(path, 0))?;
                    pointers.entry(r.file).or_default().add(Garbage {
                        count: 1,
                        bytes: r.len,
                    });
                }
            }
            if seen != entries {
                return Err(Error::corruption(
                    path,
                    0,
                    format!("table holds {seen} entries, its properties say {entries}"),
                ));
            }
            Ok(Salvaged {
                largest_seq,
                pointers,
            })
        })(),
    )
}

/// What a readable table holds that the repair needs.
struct Salvaged {
    largest_seq: u64,
    /// Records and value bytes it points to, per blob file.
    pointers: BTreeMap<u64, Garbage>,
}

/// Splits corruption (`Ok(Err(damage))`, the file is set aside) from
/// other errors (I/O that failed, which fails the repair).
fn salvage<T>(fs: &dyn FileSystem, read: Result<T>) -> Result<Result<T, Damage>> {
    match read {
        Ok(t) => Ok(Ok(t)),
        Err(Error::Corruption {
            file,
            offset,
            reason,
        }) => Ok(Err(Damage {
            bytes: fs.file_size(&file).unwrap_or(0),
            file,
            offset,
            reason,
        })),
        Err(other) => Err(other),
    }
}
