//! Opening a database: what recovery reads, what it refuses, and what it
//! removes.
//!
//! # Order
//!
//! 1. Read the MANIFEST and open its tables, changing nothing on disk.
//! 2. Replay every WAL at or after the manifest's log number, oldest first,
//!    into memtables, still changing nothing. Damage is handled by the
//!    [`RecoveryMode`] (the newest log's torn tail is dropped in every mode).
//! 3. Check every table the MANIFEST does not name (an *orphan*). It is
//!    provably obsolete when an edit deleted it (a compaction input that a
//!    reader kept alive until the close), or when every entry it holds is
//!    found, the same, in the recovered state, or is a compaction filter's
//!    rewrite of the write the state holds at its sequence (a flush or
//!    compaction that crashed before its edit). Otherwise it holds writes
//!    nothing else has.
//!    Unless the recovery mode dropped WAL records (which may be those
//!    writes; the table is then set aside in `lost/`), the MANIFEST lost
//!    the edit that added it, after the edit was acted on (its WAL
//!    deleted): corruption, whether the edit was torn or vanished whole.
//!    (A MANIFEST roll repeats the deletions of tables whose files a reader
//!    still held, so a compaction input that survives a crash is known
//!    as deleted under the new MANIFEST too.) The tables an edit deleted
//!    are removed (or set aside) and the directory synced before step 4:
//!    the new MANIFEST forgets those deletions, and a table that came back
//!    after a crash would look like the output of a lost edit.
//! 4. Only now write: a fresh MANIFEST (`CURRENT` switched to it once it is
//!    synced), L0 tables of the replayed memtables, an edit naming them
//!    (synced), and a new WAL.
//! 5. Remove what is obsolete. An open that met any damage, a torn tail
//!    included, removes no table and no WAL: they go into `lost/` (see
//!    [`file_name::set_aside`]), as does an orphan it could not read, and
//!    the old MANIFEST. A clean open deletes them, which is safe because
//!    the edit covering them was synced in step 4. The directory is synced
//!    last, so that a deleted table does not return after a crash.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{BatchRecords, Record};
use crate::blob::{self, BlobRef};
use crate::error::{Error, Result};
use crate::file_name::{self, FileKind};
use crate::fs::{Dir, SequentialReader};
use crate::iter::{Direction, Entry, KeyBounds, Source};
use crate::key::{ValueKind, MAX_SEQUENCE};
use crate::memtable::{Lookup, Memtable};
use crate::options::{Options, RecoveryMode};
use crate::recovery_report::{Damage, RecoveryReport};
use crate::sstable::{BlockCache, Table, TableSource};
use crate::stats::Counters;
use crate::version::{ManifestState, Version, VersionEdit, VersionSet};
use crate::wal::{LogReader, LogWriter};

/// What a successful recovery hands the database.
pub(super) struct Recovered {
    pub(super) versions: VersionSet,
    pub(super) version: Arc<Version>,
    /// The new WAL, numbered `log_number`.
    pub(super) wal: LogWriter,
    pub(super) log_number: u64,
    pub(super) last_seq: u64,
    pub(super) report: RecoveryReport,
}

/// Steps 1 to 5 of the module docs. REQUIRES: the caller holds the lock on `dir`.
pub(super) fn recover(dir: &Dir, options: &Options) -> Result<Recovered> {
    let files = file_name::list(dir)?;
    let max_number = file_name::highest_number(&files);
    let state = ManifestState::read(dir, options.create_if_missing)?;
    let block_cache = Arc::new(BlockCache::new(options.block_cache_capacity));
    let version = state.open_version(dir, Some(&block_cache))?;
    let mut report = RecoveryReport::default();
    report.torn_tails.extend(state.torn_tail.clone());

    let mut logs: Vec<u64> = files
        .iter()
        .filter_map(|(_, kind)| match kind {
            FileKind::Log(n) if *n >= state.log_number() => Some(*n),
            _ => None,
        })
        .collect();
    logs.sort_unstable();
    let mut last_seq = state.last_sequence();
    let memtables = replay_logs(dir, &logs, options, &mut last_seq, &mut report)?;

    let live: HashSet<u64> = version.live_files().collect();
    let mut orphans_to_keep = HashSet::new();
    for (path, kind) in &files {
        let FileKind::Table(number) = *kind else {
            continue;
        };
        if live.contains(&number) {
            continue;
        }
        if state.deleted_by_edit(number) {
            // A compaction input a reader kept alive past its edit.
            continue;
        }
        match orphan_is_obsolete(dir, path, &version, &memtables)? {
            Some(true) => {}
            Some(false) if report.skipped.is_empty() => {
                // Either the torn tail dropped the edit that added it, or an
                // edit vanished whole: the MANIFEST lost a synced edit.
                let manifest = file_name::current_manifest(dir)?;
                let offset = state.torn_tail.as_ref().map_or(0, |t| t.offset);
                return Err(Error::corruption(
                    manifest,
                    offset,
                    format!(
                        "an edit that had been acted on is missing: table {number} holds \
                         writes that neither the manifest's tables nor the WALs have; \
                         run Db::repair"
                    ),
                ));
            }
            // Not provably garbage: it holds writes found nowhere else (the
            // WAL records the mode dropped, or an edit lost without a trace
            // in the MANIFEST), or it cannot be read.
            Some(false) | None => {
                orphans_to_keep.insert(number);
            }
        }
    }

    // Tables an edit of this MANIFEST deleted (compaction inputs a reader
    // held past the edit) go, durably, before a new MANIFEST replaces it:
    // after that nothing would tell one from the output of a lost edit.
    let damaged = !report.is_clean() || !orphans_to_keep.is_empty();
    let mut deleted = false;
    for (path, kind) in &files {
        if matches!(*kind, FileKind::Table(n) if !live.contains(&n) && state.deleted_by_edit(n)) {
            remove_or_set_aside(dir, path, damaged, &mut report)?;
            deleted = true;
        }
    }
    if deleted {
        file_name::sync_dir(dir)?;
    }

    let next_file_number = state.next_file_number().max(max_number + 1);
    let mut versions = VersionSet::create(
        dir,
        version,
        state.log_number(),
        state.last_sequence(),
        next_file_number,
        Some(block_cache),
    )?;
    let mut edit = VersionEdit::default();
    let mut pointed = Vec::new();
    for mem in memtables.iter().filter(|m| !m.is_empty()) {
        let (number, blob_number) = (versions.new_file_number(), versions.new_file_number());
        let flushed = super::build_table(dir, options, number, blob_number, mem)?;
        edit.added.push((0, flushed.table));
        edit.added_blobs.extend(flushed.blob);
        pointed.extend(flushed.pointed);
    }
    // One WAL's blob file may be pointed into by several of its memtables.
    edit.added_blobs.extend(blob::merge_counts(pointed));
    let log_number = versions.new_file_number();
    let version = versions.log_and_apply(VersionEdit {
        log_number: Some(log_number),
        last_sequence: Some(last_seq),
        ..edit
    })?;
    let wal = LogWriter::create_wal(
        &**dir.fs(),
        &file_name::log_path(dir, log_number),
        options.mapped_wal,
    )?;
    file_name::sync_dir(dir)?;

    let live: HashSet<u64> = version.live_files().collect();
    for (path, kind) in file_name::list(dir)? {
        let (obsolete, keep_aside) = match kind {
            FileKind::Log(n) => (n < log_number, damaged),
            FileKind::Table(n) => (!live.contains(&n), damaged || orphans_to_keep.contains(&n)),
            // An orphan blob file belongs to an orphan table (one edit adds
            // both), so it is kept with them.
            FileKind::Blob(n) => (!live.contains(&n), damaged),
            FileKind::Manifest(n) => (n != versions.manifest_number(), damaged),
            FileKind::Temp => (true, false),
            FileKind::Current | FileKind::Lock => (false, false),
        };
        if obsolete {
            remove_or_set_aside(dir, &path, keep_aside, &mut report)?;
        }
    }
    // Deletions made durable too: a table this open deleted as provably
    // obsolete must not come back after a crash under a MANIFEST that
    // never heard of it, once compactions have moved on.
    file_name::sync_dir(dir)?;
    Ok(Recovered {
        versions,
        version,
        wal,
        log_number,
        last_seq,
        report,
    })
}

/// Deletes an obsolete file, or moves it into `lost/` when the open met
/// damage (`keep`). The caller syncs `dir` afterwards.
fn remove_or_set_aside(
    dir: &Dir,
    path: &Path,
    keep: bool,
    report: &mut RecoveryReport,
) -> Result<()> {
    if keep {
        report.set_aside.push(file_name::set_aside(dir, path)?);
        Ok(())
    } else {
        dir.fs().remove_file(path).map_err(|e| Error::io(path, e))
    }
}

/// Replays `logs` (numbers, oldest first) into memtables of about
/// `write_buffer_size` each, raising `last_seq` to the newest sequence seen,
/// handling damage as `options.recovery_mode` says and noting it in `report`.
/// The memtables stay in memory until the open has checked everything: the
/// database held as much before it closed.
pub(super) fn replay_logs(
    dir: &Dir,
    logs: &[u64],
    options: &Options,
    last_seq: &mut u64,
    report: &mut RecoveryReport,
) -> Result<Vec<Memtable>> {
    let mut memtables = vec![Memtable::new(0)];
    for (i, &number) in logs.iter().enumerate() {
        let path = file_name::log_path(dir, number);
        let newest = i + 1 == logs.len();
        let skipping = options.recovery_mode == RecoveryMode::SkipCorrupted;
        let mut replay = LogReplay::open(dir, &path, newest, skipping)?;
        let stopped = loop {
            let mem = memtables.last().map_or(0, Memtable::approximate_size);
            if mem >= options.write_buffer_size {
                memtables.push(Memtable::new(0));
            }
            let Some(mem) = memtables.last() else {
                break false;
            };
            match replay.next(mem, last_seq) {
                Ok(true) => report.wal_records_replayed += 1,
                Ok(false) => break false,
                Err(Error::Corruption {
                    file,
                    offset,
                    reason,
                }) => match options.recovery_mode {
                    RecoveryMode::AbsoluteConsistency => {
                        return Err(Error::Corruption {
                            file,
                            offset,
                            reason,
                        })
                    }
                    RecoveryMode::PointInTime => {
                        let len = dir.fs().file_size(&path).map_err(|e| Error::io(&path, e))?;
                        report.skipped.push(Damage {
                            file,
                            offset,
                            bytes: len.saturating_sub(offset),
                            reason: format!("{reason}; replay stopped here"),
                        });
                        break true;
                    }
                    RecoveryMode::SkipCorrupted => {
                        replay.skip(offset, reason);
                    }
                },
                Err(e) => return Err(e),
            }
        };
        report.skipped.extend(replay.finish());
        report.torn_tails.extend(replay.torn_tail());
        if stopped {
            report.logs_not_replayed.extend(
                logs.iter()
                    .skip(i + 1)
                    .map(|&n| file_name::log_path(dir, n)),
            );
            break;
        }
    }
    Ok(memtables)
}

/// One WAL being replayed.
struct LogReplay {
    dir: Dir,
    path: PathBuf,
    /// This is the newest log: a pointer into its blob file that finds no
    /// record ends the replay as a torn tail (see `LogReplay::next`).
    newest: bool,
    /// The record where a missing blob record ended the replay.
    blob_torn: Option<Damage>,
    reader: LogReader<std::io::BufReader<SequentialReader>>,
    /// Damage skipped so far, in file order.
    skipped: Vec<Skipped>,
    /// The record that passed its checksum but did not decode, if the last
    /// error was one: skipping it means dropping just that record.
    bad_record: Option<Damage>,
    /// A record was read since the last skip: a new corruption is a new stretch.
    read_since_skip: bool,
}

enum Skipped {
    /// A whole record that did not decode.
    Record(Damage),
    /// Bytes the reader skipped from `offset`; its size is the growth of
    /// the reader's running count, known once the reader found the next
    /// record or the end of the file.
    Stretch {
        offset: u64,
        reason: String,
        count_before: u64,
    },
}

impl LogReplay {
    /// `skipping`: damage will be skipped, so a page a power cut lost in
    /// the newest log is damage to skip rather than its end (see `wal::reader`).
    fn open(dir: &Dir, path: &Path, newest: bool, skipping: bool) -> Result<Self> {
        let file = dir.fs().open(path).map_err(|e| Error::io(path, e))?;
        let reader = LogReader::new(
            std::io::BufReader::with_capacity(1 << 16, SequentialReader::new(file)),
            path,
            newest,
        )
        .zero_tail_ends();
        Ok(LogReplay {
            dir: dir.clone(),
            path: path.to_path_buf(),
            newest,
            blob_torn: None,
            reader: if skipping {
                reader.read_past_holes()
            } else {
                reader
            },
            skipped: Vec::new(),
            bad_record: None,
            read_since_skip: true,
        })
    }

    /// Applies the next record to `mem`; false at the end of the log. A
    /// batch is applied whole or not at all.
    ///
    /// Every pointer into the WAL's blob file must find its record, whole.
    /// The WAL and its blob file are synced together, blob file first, so a
    /// record whose value is missing was never synced, and neither was
    /// anything after it: in the newest log that is a torn tail, where the
    /// replay ends; in an older one (synced whole at rotation) it is damage.
    fn next(&mut self, mem: &Memtable, last_seq: &mut u64) -> Result<bool> {
        if self.blob_torn.is_some() {
            return Ok(false);
        }
        let Some(record) = self.reader.next_record()? else {
            return Ok(false);
        };
        self.read_since_skip = true;
        let offset = self.reader.record_offset();
        let decoded: Result<Vec<Record<'_>>, _> =
            BatchRecords::decode(&record).and_then(|records| records.collect());
        if let Ok(records) = &decoded {
            if let Some(reason) = self.missing_blob_value(records)? {
                let damage = Damage {
                    file: self.path.clone(),
                    offset,
                    bytes: record.len() as u64,
                    reason,
                };
                if self.newest {
                    let len = self
                        .dir
                        .fs()
                        .file_size(&self.path)
                        .map_err(|e| Error::io(&self.path, e))?;
                    self.blob_torn = Some(Damage {
                        bytes: len.saturating_sub(offset),
                        ..damage
                    });
                    return Ok(false);
                }
                let err = Error::corruption(&self.path, offset, &damage.reason);
                self.bad_record = Some(damage);
                return Err(err);
            }
        }
        match decoded {
            Ok(records) => {
                for rec in &records {
                    mem.insert(rec)?;
                    *last_seq = (*last_seq).max(rec.seq);
                }
                Ok(true)
            }
            Err(e) => {
                self.bad_record = Some(Damage {
                    file: self.path.clone(),
                    offset,
                    bytes: record.len() as u64,
                    reason: e.0.to_string(),
                });
                Err(e.at(&self.path, offset))
            }
        }
    }

    /// Moves past the corruption `next` reported at `offset` (skip-corrupted mode).
    fn skip(&mut self, offset: u64, reason: String) {
        if let Some(bad) = self.bad_record.take() {
            // The reader is already past it.
            self.skipped.push(Skipped::Record(bad));
            return;
        }
        let count_before = self.reader.skipped_bytes();
        self.reader.skip_damage(offset);
        if self.read_since_skip {
            self.skipped.push(Skipped::Stretch {
                offset,
                reason,
                count_before,
            });
        }
        // Otherwise this is more of the stretch being skipped: the reader
        // counts it from that stretch's start.
        self.read_since_skip = false;
    }

    /// The damage skipped in this log, each with its size.
    fn finish(&mut self) -> Vec<Damage> {
        let mut count_after = self.reader.skipped_bytes();
        let mut out = Vec::with_capacity(self.skipped.len());
        // Backwards: a stretch's size is the count at the next stretch's
        // start (or the final count) minus the count at its own start.
        for skipped in self.skipped.drain(..).rev() {
            out.push(match skipped {
                Skipped::Record(d) => d,
                Skipped::Stretch {
                    offset,
                    reason,
                    count_before,
                } => {
                    let bytes = count_after.saturating_sub(count_before);
                    count_after = count_before;
                    Damage {
                        file: self.path.clone(),
                        offset,
                        bytes,
                        reason,
                    }
                }
            });
        }
        out.reverse();
        out
    }

    /// Why a pointer of `records` finds no whole value, if one does not.
    fn missing_blob_value(&self, records: &[Record<'_>]) -> Result<Option<String>> {
        for rec in records.iter().filter(|r| r.kind == ValueKind::BlobIndex) {
            let found = BlobRef::decode(rec.value)
                .map_err(|e| Error::corruption(&self.path, 0, e.0))
                .and_then(|r| blob::read_from_dir(&self.dir, &r));
            match found {
                Ok(_) => {}
                Err(Error::Corruption { file, reason, .. }) => {
                    return Ok(Some(format!(
                        "its value is not in the WAL's blob file {}: {reason}",
                        file.display()
                    )))
                }
                Err(Error::Io { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(Some(format!(
                        "the WAL's blob file {} is missing",
                        path.display()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn torn_tail(&self) -> Option<Damage> {
        let torn = self.reader.torn_tail().map(|t| Damage {
            file: self.path.clone(),
            offset: t.offset,
            bytes: t.bytes,
            reason: t.reason.to_string(),
        });
        torn.or_else(|| self.blob_torn.clone())
    }
}

/// Whether the orphan table at `path` is provably obsolete: every entry it
/// holds is what the recovered state (`memtables`, then `version`) gives for
/// its key at its sequence, so dropping it changes no read at any
/// sequence. `None` when it cannot be read.
fn orphan_is_obsolete(
    dir: &Dir,
    path: &Path,
    version: &Version,
    memtables: &[Memtable],
) -> Result<Option<bool>> {
    let Ok(table) = Table::open(dir.fs(), path) else {
        return Ok(None);
    };
    // Its range tombstones, copied from a WAL or from compaction inputs,
    // must be in the recovered state as they are.
    for t in table.range_tombstones() {
        let known = memtables.iter().any(|m| m.range_tombstones().contains(t))
            || version
                .levels
                .iter()
                .flatten()
                .any(|f| f.table.range_tombstones().contains(t));
        if !known {
            return Ok(Some(false));
        }
    }
    let counters = Counters::default();
    let mut source = TableSource::new(Arc::new(table), &KeyBounds::prefix(b""), Direction::Forward);
    loop {
        let entry = match source.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(Some(true)),
            Err(e) if e.is_corruption() => return Ok(None),
            Err(e) => return Err(e),
        };
        let lookup = |seq: u64| -> Result<Option<(u64, Lookup)>> {
            match memtables
                .iter()
                .rev()
                .find_map(|m| m.get(&entry.user_key, seq))
            {
                Some(found) => Ok(Some(found)),
                None => version.get(&entry.user_key, seq, &counters),
            }
        };
        let same = |found: Option<(u64, Lookup)>| -> Result<Option<bool>> {
            Ok(Some(match found.map(|(_, lookup)| lookup) {
                Some(Lookup::Deleted) => entry.is_deletion(),
                // A compaction output that copied the pointer.
                Some(Lookup::Blob(pointer)) if pointer == entry.value => entry.is_blob_index(),
                Some(found) if !entry.is_deletion() => {
                    // Compared by value: a flush that crashed before its edit
                    // has its values in the replayed WAL too, and a compaction
                    // that moved blob values (see `compaction`) points into a
                    // blob file of its own.
                    let value = |lookup: Lookup| match lookup {
                        Lookup::Value(v) => Ok(v),
                        // A replayed memtable's pointer names a WAL's blob
                        // file, which no version holds yet.
                        Lookup::Blob(pointer) => {
                            BlobRef::from_entry(&pointer).and_then(|r| blob::read_from_dir(dir, &r))
                        }
                        Lookup::Deleted => Ok(Vec::new()),
                    };
                    let separated = |e: &Entry| {
                        let r = BlobRef::decode(&e.value).map_err(|e| e.at(path, 0))?;
                        blob::read_from_dir(dir, &r)
                    };
                    let orphan = if entry.is_blob_index() {
                        separated(&entry)
                    } else {
                        Ok(entry.value.clone())
                    };
                    match (orphan, value(found)) {
                        (Ok(a), Ok(b)) => a == b,
                        // Unreadable: not provably garbage.
                        _ => return Ok(None),
                    }
                }
                Some(_) | None => false,
            }))
        };
        let same = if entry.seq() == 0 {
            // A compaction into the base level dropped the sequence of a
            // version every reader saw (see `compaction`): it must be one of
            // the key's versions in the recovered tables (compactions read
            // only tables), newest first.
            let mut at = MAX_SEQUENCE;
            loop {
                let found = version.get(&entry.user_key, at, &counters)?;
                let next = found.as_ref().map_or(0, |(seq, _)| *seq);
                match same(found)? {
                    Some(true) => break true,
                    None => return Ok(None),
                    Some(false) if next == 0 => break false,
                    Some(false) => at = next - 1,
                }
            }
        } else {
            let found = lookup(entry.seq())?;
            if found.as_ref().is_some_and(|(seq, _)| *seq == entry.seq()) {
                // A sequence names one write: the entry is the write the
                // recovered state holds, or a compaction filter's rewrite of
                // it (a `Remove` above the base writes a deletion at the
                // value's sequence, a change keeps it), and the state's
                // version is what reads find.
                true
            } else {
                match same(found)? {
                    Some(same) => same,
                    None => return Ok(None),
                }
            }
        };
        if !same {
            return Ok(Some(false));
        }
    }
}
