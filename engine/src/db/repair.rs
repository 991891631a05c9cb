//! [`Db::repair`]: rebuilds a database whose MANIFEST, tables or logs are
//! damaged into one that opens, keeping every item that can still be read
//! (after LevelDB's `RepairDB`).
//!
//! 1. Every table is read whole: each data block's checksum, each entry,
//!    and the entry count against the properties block; every blob file is
//!    scanned to its last whole record. A table that fails, or that points
//!    past the whole records of a blob file, is set aside in `lost/`; the
//!    others keep their contents. The MANIFESTs
//!    are read as far as their records are whole, only to learn which tables
//!    an edit deleted: those are set aside too while every table the newest
//!    MANIFEST names reads back whole (see [`RepairReport::tables_superseded`]).
//! 2. Every WAL is replayed, oldest first, skipping damaged records (as
//!    [`RecoveryMode::SkipCorrupted`](crate::RecoveryMode::SkipCorrupted)
//!    does, and any log may end torn), into new tables; but a log the
//!    newest MANIFEST's log number covers is set aside under the rule for
//!    superseded tables (see [`RepairReport::logs_superseded`]).
//! 3. The manifest is not trusted, so levels are not known, and neither
//!    file numbers nor a table's newest sequence order two tables' versions
//!    of a key (a table compacted deep late holds old versions of some keys
//!    and new writes of others). So every kept table and every table rebuilt
//!    from the logs is merged, as a compaction into the base level does,
//!    into one sorted run of new tables in L1: versions are ordered by their
//!    sequences, and equal internal keys (one write in two files) come from
//!    the newer file. (Known limit: base-level compaction outputs hold
//!    versions at sequence 0, see `compaction`; a compaction input that a
//!    reader kept alive past its edit when the process died is older than
//!    them but carries its real sequences, and would win the merge. Step 1
//!    sets such tables aside, unless the edit that deleted them cannot be
//!    read or a table that replaced them is damaged.)
//! 4. A fresh MANIFEST naming the merged tables, and deleting the tables
//!    merged into them, is synced and `CURRENT` switched to it; only then are
//!    the old MANIFESTs, the tables step 1 set aside and the damaged logs moved
//!    into `lost/`, and the merged tables and the logs that replayed whole
//!    deleted (their items are in tables named by a synced edit).
//!
//! A crash during a repair leaves either the old `CURRENT` or the new one.
//! Under the old one, running the repair again finishes the job (it merges
//! the first run's outputs too, each a copy of writes the inputs still
//! hold); under the new one, the next open deletes the merged tables the
//! crash left, as the edit says.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{build_table, lock_dir, open, Db};
use crate::blob::{self, BlobFile, BlobMeta, BlobRef, Garbage};
use crate::compaction::{self, Compaction, Output};
use crate::error::{Error, Result};
use crate::file_name::{self, FileKind};
use crate::fs::{Dir, FileSystem};
use crate::iter::{Direction, KeyBounds, Source};
use crate::options::{Options, RecoveryMode};
use crate::recovery_report::{Damage, RecoveryReport};
use crate::sstable::{Table, TableSource};
use crate::version::{
    FileMeta, LiveBlob, ManifestTables, TableFile, Version, VersionEdit, VersionSet,
};

/// What [`Db::repair`] kept and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Tables that read back whole, by their old names: their items, with
    /// the logs' records, are now in [`tables_written`](Self::tables_written)
    /// and the files themselves are gone.
    pub tables_kept: Vec<PathBuf>,
    /// The repaired database's tables: one sorted run in L1, merged from
    /// every kept table and every replayed log record.
    pub tables_written: Vec<PathBuf>,
    /// Tables that did not read back whole, with where the damage is; each
    /// is now in `lost/` and none of its items are in the database.
    pub tables_set_aside: Vec<Damage>,
    /// Tables that an edit of a readable MANIFEST had deleted (compaction
    /// inputs a reader kept alive when the process stopped): the tables that
    /// replaced them hold their items. Each is now in `lost/`. Kept and
    /// merged instead when a table the newest MANIFEST names is damaged or
    /// missing (see step 1 of the module docs).
    pub tables_superseded: Vec<PathBuf>,
    /// Logs numbered below the newest readable MANIFEST's log number: their
    /// writes are in its tables. Each is now in `lost/`, under the same rule
    /// as [`tables_superseded`](Self::tables_superseded).
    pub logs_superseded: Vec<PathBuf>,
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
        let mut manifests: Vec<(u64, PathBuf)> = files
            .iter()
            .filter_map(|(path, kind)| match kind {
                FileKind::Manifest(n) => Some((*n, path.clone())),
                _ => None,
            })
            .collect();
        manifests.sort_unstable();
        let manifests: Vec<PathBuf> = manifests.into_iter().map(|(_, path)| path).collect();
        let manifest = ManifestTables::read(&dir, &manifests);
        // A number an edit deleted names that table to a later repair too.
        let named = manifest.deleted.iter().chain(&manifest.live);
        next_number = next_number.max(1 + named.max().copied().unwrap_or(0));
        let mut salvaged: Vec<(u64, PathBuf, Salvaged)> = Vec::new();
        // Files that go into `lost/` once the new MANIFEST is in place.
        let mut aside = Vec::new();
        let mut blobs: Vec<BlobMeta> = Vec::new();
        for (path, kind) in &files {
            let read = match kind {
                FileKind::Table(number) => {
                    salvage_table(&fs, path)?.map(|s| salvaged.push((*number, path.clone(), s)))
                }
                FileKind::Blob(n) => {
                    salvage(&*fs, blob::scan(&*fs, path, *n))?.map(|meta| blobs.push(meta))
                }
                _ => continue,
            };
            if let Err(damage) = read {
                aside.push(path.clone());
                report.tables_set_aside.push(damage);
            }
        }
        // A table pointing past the whole records of a blob file (or into one
        // that is gone or unreadable) lost values: the output of a compaction
        // a crash cut, whose tables were synced before its blob file, or a
        // table whose blob file was damaged.
        let readable: BTreeMap<u64, BlobMeta> = blobs.iter().map(|m| (m.number, *m)).collect();
        let mut dangling = Vec::new();
        salvaged.retain(|(_, path, s)| {
            let lost = s
                .furthest
                .values()
                .find(|r| !readable.get(&r.file).is_some_and(|meta| meta.holds(r)));
            if let Some(r) = lost {
                dangling.push(Damage {
                    file: path.clone(),
                    offset: 0,
                    bytes: fs.file_size(path).unwrap_or(0),
                    reason: format!(
                        "points to a value past the whole records of blob file {}",
                        r.file
                    ),
                });
            }
            lost.is_none()
        });
        for damage in dangling {
            aside.push(damage.file.clone());
            report.tables_set_aside.push(damage);
        }
        // A table an edit deleted is a compaction input that a reader kept
        // alive: the edit was written after its outputs were synced, and they
        // (or their own outputs) hold its items, down to the tables the
        // newest MANIFEST names. Merged, its real sequences would beat its
        // outputs' versions at sequence 0 (step 3). It is set aside, unless
        // one of those named tables is damaged or missing: it may then hold
        // the only readable copy of what that one held. (A damaged table the
        // MANIFEST does not name, such as the torn output of a compaction a
        // crash cut, holds only copies.)
        let whole: HashSet<u64> = salvaged.iter().map(|(number, _, _)| *number).collect();
        let drop_superseded = manifest.live.iter().all(|number| whole.contains(number));
        // Kept tables and their numbers.
        let mut tables: Vec<(u64, PathBuf)> = Vec::new();
        let mut last_seq = 0;
        for (number, path, s) in salvaged {
            last_seq = last_seq.max(s.largest_seq);
            if drop_superseded && manifest.deleted.contains(&number) {
                aside.push(path.clone());
                report.tables_superseded.push(path);
                continue;
            }
            tables.push((number, path));
        }
        // Step 2.
        // A log numbered below the newest MANIFEST's log number holds writes
        // that tables it names hold (or that compaction dropped or wrote at
        // sequence 0): replayed, its real sequences would win the merge as a
        // superseded table's would, so the same rule sets it aside.
        let mut logs: Vec<u64> = Vec::new();
        for (path, kind) in &files {
            match kind {
                FileKind::Log(n) if drop_superseded && *n < manifest.log_number => {
                    aside.push(path.clone());
                    report.logs_superseded.push(path.clone());
                }
                FileKind::Log(n) => logs.push(*n),
                _ => {}
            }
        }
        logs.sort_unstable();
        report.tables_kept = tables.iter().map(|(_, path)| path.clone()).collect();
        let mut replayed = RecoveryReport::default();
        let memtables = open::replay_logs(&dir, &logs, &options, &mut last_seq, &mut replayed)?;
        report.wal_records_recovered = replayed.wal_records_replayed;
        report.wal_damage = replayed.torn_tails;
        report.wal_damage.extend(replayed.skipped);
        for mem in memtables.iter().filter(|m| !m.is_empty()) {
            let flushed = build_table(&dir, &options, next_number, next_number + 1, mem)?;
            next_number += 2;
            blobs.extend(flushed.blob);
            let number = flushed.table.number;
            tables.push((number, file_name::table_path(&dir, number)));
        }

        // Step 3.
        let merged = merge(&dir, &options, &tables, &blobs, last_seq, &mut next_number)?;
        blobs.extend(merged.blob);
        // What the merged tables do not point to is garbage (copies of one
        // write in several tables make the inputs' pointers useless to
        // count); a file they do not point into at all is set aside.
        let mut referenced: BTreeMap<u64, Garbage> = BTreeMap::new();
        for meta in &merged.tables {
            let path = file_name::table_path(&dir, meta.number);
            let written = salvage_table(&fs, &path)?
                .map_err(|damage| Error::corruption(&path, damage.offset, damage.reason))?;
            for (number, r) in written.pointers {
                referenced.entry(number).or_default().add(r);
            }
        }
        let mut blob_garbage = Vec::new();
        blobs.retain(|meta| {
            let Some(r) = referenced.get(&meta.number) else {
                aside.push(blob::blob_path(&dir, meta.number));
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
        report.tables_written = merged
            .tables
            .iter()
            .map(|m| file_name::table_path(&dir, m.number))
            .collect();

        // Step 4.
        let mut versions =
            VersionSet::create(&dir, Version::default(), 0, last_seq, next_number, None)?;
        let log_number = versions.new_file_number();
        versions.log_and_apply(VersionEdit {
            log_number: Some(log_number),
            last_sequence: Some(last_seq),
            added: merged.tables.into_iter().map(|m| (1, m)).collect(),
            deleted: tables.iter().map(|(number, _)| (0, *number)).collect(),
            added_blobs: blobs,
            blob_garbage,
            ..VersionEdit::default()
        })?;
        let damaged_logs: HashSet<PathBuf> =
            report.wal_damage.iter().map(|d| d.file.clone()).collect();
        let aside: HashSet<PathBuf> = aside.into_iter().collect();
        for (path, kind) in files {
            let set_aside = match kind {
                FileKind::Log(_) => damaged_logs.contains(&path) || aside.contains(&path),
                FileKind::Table(_) | FileKind::Blob(_) => aside.contains(&path),
                FileKind::Manifest(_) => true,
                FileKind::Temp | FileKind::Current | FileKind::Lock => continue,
            };
            if set_aside {
                report.set_aside.push(file_name::set_aside(&dir, &path)?);
            } else if let FileKind::Log(_) = kind {
                fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        for (_, path) in &tables {
            fs.remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        file_name::sync_dir(&dir)?;
        Ok(report)
    }
}

/// Step 3 of the module docs: merges `tables` (with their numbers) into new
/// tables of L1 numbered from `next_number` on, as a compaction of them all
/// from L0 into an empty base level with no reader older than `last_seq`.
/// `blobs` are the blob files they may point into; counted as holding no
/// garbage, none has its values moved.
fn merge(
    dir: &Dir,
    options: &Options,
    tables: &[(u64, PathBuf)],
    blobs: &[BlobMeta],
    last_seq: u64,
    next_number: &mut u64,
) -> Result<Output> {
    let mut version = Version::default();
    for meta in blobs {
        let garbage = Garbage::default();
        let file = Arc::new(BlobFile::open(dir, *meta)?);
        version
            .blobs
            .insert(meta.number, LiveBlob { file, garbage });
    }
    let mut inputs = Vec::with_capacity(tables.len());
    for (number, path) in tables {
        let table = Table::open(dir.fs(), path)?;
        let (smallest, largest) = table.key_range();
        let meta = FileMeta {
            number: *number,
            size: dir.fs().file_size(path).map_err(|e| Error::io(path, e))?,
            smallest: smallest.to_vec(),
            largest: largest.to_vec(),
        };
        inputs.push(Arc::new(TableFile::new(meta, Arc::new(table))));
    }
    // L0 order, newest file first: on equal internal keys the merge takes
    // the first input's.
    inputs.sort_by_key(|f| std::cmp::Reverse(f.meta.number));
    if let Some(l0) = version.levels.first_mut() {
        l0.clone_from(&inputs);
    }
    let c = Compaction::new(Arc::new(version), 0, inputs, options);
    let next = Cell::new(*next_number);
    let new_file_number = || {
        let n = next.get();
        next.set(n + 1);
        n
    };
    let never = AtomicBool::new(false);
    let env = compaction::Env {
        dir,
        options,
        smallest_snapshot: last_seq,
        new_file_number: &new_file_number,
        cancel: &never,
    };
    let merged = compaction::run(&c, &env)?;
    *next_number = next.get();
    merged.ok_or_else(|| Error::Background("the repair's merge was cancelled".into()))
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
            let mut furthest: BTreeMap<u64, BlobRef> = BTreeMap::new();
            while let Some(entry) = source.next_entry()? {
                seen += 1;
                if entry.is_blob_index() {
                    let r = BlobRef::decode(&entry.value).map_err(|e| e.at(path, 0))?;
                    pointers.entry(r.file).or_default().add(Garbage {
                        count: 1,
                        bytes: r.len,
                    });
                    let end = |r: &BlobRef| r.offset.saturating_add(r.len);
                    let far = furthest.entry(r.file).or_insert(r);
                    if end(&r) > end(far) {
                        *far = r;
                    }
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
                furthest,
            })
        })(),
    )
}

/// What a readable table holds that the repair needs.
struct Salvaged {
    largest_seq: u64,
    /// Records and value bytes it points to, per blob file.
    pointers: BTreeMap<u64, Garbage>,
    /// The pointer reaching furthest into each blob file.
    furthest: BTreeMap<u64, BlobRef>,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::key::{internal_key, ValueKind};
    use crate::sstable::TableBuilder;

    /// User key, sequence, value (none for a deletion).
    type TestEntry<'a> = (&'a [u8], u64, Option<&'a [u8]>);

    /// Writes table `number` holding `entries`, in order.
    fn write_table(dir: &Dir, number: u64, entries: &[TestEntry<'_>]) {
        let path = file_name::table_path(dir, number);
        let mut builder = TableBuilder::create(&**dir.fs(), &path, 4096, 10).unwrap();
        for (key, seq, value) in entries {
            let kind = if value.is_some() {
                ValueKind::Value
            } else {
                ValueKind::Deletion
            };
            builder
                .add(&internal_key(key, *seq, kind), value.unwrap_or_default())
                .unwrap();
        }
        builder.finish().unwrap();
    }

    fn dir_of(path: &Path) -> Dir {
        Dir::new(Options::default().file_system, path.to_path_buf())
    }

    #[test]
    fn versions_are_ordered_by_sequence_not_by_table() {
        // Table 5 holds the newest versions of a and c; table 6, compacted
        // into a deeper level later, holds older ones and a newer write of
        // another key. Neither the file numbers nor the tables' newest
        // sequences order the versions of a and c.
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        write_table(&dir, 5, &[(b"a", 10, Some(b"new")), (b"c", 11, None)]);
        write_table(
            &dir,
            6,
            &[
                (b"a", 3, Some(b"old")),
                (b"b", 20, Some(b"b")),
                (b"c", 4, Some(b"old")),
            ],
        );
        let report = Db::repair(tmp.path()).unwrap();
        assert!(report.lost_nothing(), "{report:?}");
        assert_eq!(report.tables_kept.len(), 2, "{report:?}");
        assert_eq!(report.tables_written.len(), 1, "{report:?}");
        for number in [5, 6] {
            assert!(!file_name::table_path(&dir, number).exists(), "merged");
        }

        let db = Db::open(tmp.path(), Options::default()).unwrap();
        assert!(db.recovery_report().is_clean());
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(db.get(b"c").unwrap(), None);
        let all: Vec<_> = db.iter().map(|r| r.unwrap().0).collect();
        assert_eq!(all, [b"a".to_vec(), b"b".to_vec()]);
        // New writes go above every repaired sequence.
        db.put(b"b", b"after").unwrap();
        drop(db);
        let db = Db::open(tmp.path(), Options::default()).unwrap();
        assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn one_internal_key_in_two_tables_is_read_from_the_newer() {
        // Two base-level outputs, both at sequence 0: the older one a
        // compaction input that outlived its edit.
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        write_table(&dir, 5, &[(b"a", 0, Some(b"v1"))]);
        write_table(&dir, 7, &[(b"a", 0, Some(b"v2"))]);
        Db::repair(tmp.path()).unwrap();
        let db = Db::open(tmp.path(), Options::default()).unwrap();
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"v2"[..]));
    }

    #[test]
    fn a_table_pointing_into_a_torn_blob_tail_is_set_aside() {
        // The output of a compaction a crash cut: its tables were synced,
        // its blob file's last value was not.
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        let mut blob = blob::BlobWriter::create(&dir, 4).unwrap();
        let whole = blob.add(b"whole value").unwrap();
        let torn = blob.add(b"torn value").unwrap();
        blob.finish().unwrap();
        let path = blob::blob_path(&dir, 4);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let pointing = |number: u64, r: BlobRef| {
            let table = file_name::table_path(&dir, number);
            let mut builder = TableBuilder::create(&**dir.fs(), &table, 4096, 10).unwrap();
            let key = internal_key(b"k", number, ValueKind::BlobIndex);
            builder.add(&key, &r.encode()).unwrap();
            builder.finish().unwrap();
            table
        };
        pointing(5, whole);
        let dangling = pointing(6, torn);
        write_table(&dir, 7, &[(b"other", 1, Some(b"v"))]);

        let report = Db::repair(tmp.path()).unwrap();
        assert_eq!(report.tables_set_aside.len(), 1, "{report:?}");
        assert_eq!(report.tables_set_aside[0].file, dangling);
        assert!(tmp.path().join("lost/000006.sst").exists());
        let db = Db::open(tmp.path(), Options::default()).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"whole value"[..]));
        assert_eq!(db.get(b"other").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_blob_value_two_tables_point_to_stays() {
        // One write in two tables (a flush's output beside its replayed
        // WAL, a compaction cut before its edit): counted once, the merge
        // keeps one pointer, and the value is not taken for garbage.
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        let mut blob = blob::BlobWriter::create(&dir, 4).unwrap();
        let r = blob.add(b"the only value").unwrap();
        blob.finish().unwrap();
        for number in [5, 6] {
            let table = file_name::table_path(&dir, number);
            let mut builder = TableBuilder::create(&**dir.fs(), &table, 4096, 10).unwrap();
            let key = internal_key(b"k", 3, ValueKind::BlobIndex);
            builder.add(&key, &r.encode()).unwrap();
            builder.finish().unwrap();
        }
        let report = Db::repair(tmp.path()).unwrap();
        assert!(report.lost_nothing(), "{report:?}");
        let db = Db::open(tmp.path(), Options::default()).unwrap();
        assert!(db.recovery_report().is_clean());
        assert_eq!(
            db.get(b"k").unwrap().as_deref(),
            Some(&b"the only value"[..])
        );
    }

    #[test]
    fn a_repair_cut_before_its_manifest_is_finished_by_the_next() {
        // The first run's outputs are orphans next to its inputs; a second
        // run merges them all again and keeps the newest versions.
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        write_table(&dir, 5, &[(b"a", 10, Some(b"new")), (b"c", 11, None)]);
        write_table(&dir, 6, &[(b"a", 3, Some(b"old")), (b"c", 4, Some(b"old"))]);
        // What the first run wrote: a at sequence 0 (zeroed), c dropped.
        write_table(&dir, 9, &[(b"a", 0, Some(b"new"))]);
        let report = Db::repair(tmp.path()).unwrap();
        assert_eq!(report.tables_kept.len(), 3, "{report:?}");
        let db = Db::open(tmp.path(), Options::default()).unwrap();
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(db.get(b"c").unwrap(), None);
    }
}
