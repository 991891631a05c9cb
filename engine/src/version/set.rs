//! The version set: the current [`Version`], the MANIFEST that records how it
//! came to be, and the file-number and sequence counters that must survive a
//! restart.
//!
//! Recovery first reads the MANIFEST named by `CURRENT` without changing
//! anything on disk ([`ManifestState::read`]); only once the whole open has
//! found nothing it must refuse does it start a fresh MANIFEST holding one
//! edit that describes the whole state, switching `CURRENT` to it
//! atomically ([`VersionSet::create`]). So a MANIFEST never grows across
//! restarts, and an open that fails leaves the files as it found them.
//!
//! # Damage in the MANIFEST
//!
//! A torn tail (the last edit's append was interrupted: it runs past the
//! end of the file, or the file ends in zeros) is dropped, and reported:
//! that edit was never synced, so nothing was built on it *as long as the
//! files agree*. The open checks that they do (`db/open.rs`): a table the
//! dropped edit deleted must still exist, and a table it added that holds
//! writes found nowhere else (its WAL already deleted, as a flush does once
//! its edit is synced) means the edit *was* synced and has been damaged
//! since. Both fail the open as corruption of the MANIFEST.
//!
//! Any other damage (a whole record with a bad checksum, an edit that does
//! not decode, damage before the last record) fails the open in every
//! [`RecoveryMode`](crate::RecoveryMode), skip included. Unlike a WAL
//! record, an edit is not independent of the ones around it: skipping one
//! that added a flushed table loses that table's writes (its WAL is gone),
//! skipping one that deleted compacted tables resurrects stale data and
//! overlapping tables in a level, and every later edit is relative to the
//! state it skipped. Stopping at the damage instead drops every later edit
//! with the same effect. The file numbers, levels and key ranges an edit
//! carries cannot be guessed back, but every table can be read back:
//! [`Db::repair`](crate::Db::repair) rebuilds a MANIFEST from the tables
//! themselves, which is the remedy the error points to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::{FileMeta, LiveBlob, TableFile, Version, VersionEdit, NUM_LEVELS};
use crate::blob::{BlobFile, BlobMeta, Garbage};
use crate::error::{Error, Result};
use crate::file_name::{self, manifest_name};
use crate::fs::{Dir, SequentialReader};
use crate::key::compare_internal;
use crate::recovery_report::Damage;
use crate::sstable::{BlockCache, Table};
use crate::wal::{LogReader, LogWriter};

/// A MANIFEST longer than this is replaced by a fresh one holding one edit,
/// so that a long-running database's recovery stays quick.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Past this many remembered deletions, the ones whose files are gone are
/// forgotten (see `VersionSet::deleted`).
const MAX_REMEMBERED_DELETIONS: usize = 1024;

pub(crate) struct VersionSet {
    dir: Dir,
    manifest: LogWriter,
    manifest_number: u64,
    next_file_number: u64,
    log_number: u64,
    /// The last sequence recorded in the manifest (not the live one: that is the Db's).
    last_sequence: u64,
    current: Arc<Version>,
    /// [`MAX_MANIFEST_BYTES`], except in tests.
    max_manifest_bytes: u64,
    /// An append to or a sync of `manifest` failed: it may end in part of an
    /// edit, and an edit appended after that would sit behind the tear,
    /// where recovery reports corruption. The next edit goes to a new
    /// MANIFEST instead.
    manifest_broken: bool,
    /// Shared by every table this set opens.
    block_cache: Option<Arc<BlockCache>>,
    /// Tables an edit of this set deleted, by level and number, whose file
    /// may still exist (a reader holds it). A new MANIFEST's snapshot edit
    /// deletes them again: without that, one that survived a crash would
    /// look like the output of a lost edit to the next open.
    deleted: Vec<(usize, u64)>,
}

/// The state a manifest replay accumulates.
#[derive(Default)]
struct Replay {
    log_number: u64,
    next_file_number: u64,
    last_sequence: u64,
    levels: [BTreeMap<u64, FileMeta>; NUM_LEVELS],
    blobs: BTreeMap<u64, (BlobMeta, Garbage)>,
    /// Tables and blob files an edit deleted (and no later edit added
    /// back): garbage by the word of a synced edit, even if a reader kept
    /// the file alive.
    deleted: HashSet<u64>,
}

impl Replay {
    fn apply(&mut self, edit: VersionEdit) {
        let dead = apply_blob_changes(
            &mut self.blobs,
            &edit,
            |meta| Ok((*meta, Garbage::default())),
            |(meta, garbage)| (&*meta, garbage),
        );
        // Replaying cannot fail: nothing is opened.
        for (meta, _) in dead.unwrap_or_default() {
            self.deleted.insert(meta.number);
        }
        if let Some(n) = edit.log_number {
            self.log_number = n;
        }
        if let Some(n) = edit.next_file_number {
            self.next_file_number = n;
        }
        if let Some(n) = edit.last_sequence {
            self.last_sequence = n;
        }
        for (level, number) in edit.deleted {
            if let Some(l) = self.levels.get_mut(level) {
                l.remove(&number);
            }
            self.deleted.insert(number);
        }
        for (level, meta) in edit.added {
            self.deleted.remove(&meta.number);
            if let Some(l) = self.levels.get_mut(level) {
                l.insert(meta.number, meta);
            }
        }
    }
}

/// What the MANIFEST named by `CURRENT` records, read without writing anything.
pub(crate) struct ManifestState {
    replay: Replay,
    /// The interrupted last edit that was dropped, if any.
    pub(crate) torn_tail: Option<Damage>,
}

impl ManifestState {
    /// Reads the MANIFEST of the database in `dir`, or an empty state if
    /// there is none and `create_if_missing`. Any damage but a torn tail is
    /// [`Error::Corruption`] (see the module docs).
    pub(crate) fn read(dir: &Dir, create_if_missing: bool) -> Result<Self> {
        let mut replay = Replay {
            next_file_number: 2,
            ..Replay::default()
        };
        if !dir.fs().exists(&file_name::current_path(dir)) {
            if !create_if_missing {
                return Err(Error::InvalidArgument(format!(
                    "no database at {} and create_if_missing is false",
                    dir.display()
                )));
            }
            return Ok(ManifestState {
                replay,
                torn_tail: None,
            });
        }
        let number = file_name::read_current(dir)?;
        let path = dir.join(manifest_name(number));
        let file = dir.fs().open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = LogReader::new(
            std::io::BufReader::new(SequentialReader::new(file)),
            &path,
            true,
        );
        let mut records = 0u64;
        while let Some(record) = reader.next_record()? {
            let edit =
                VersionEdit::decode(&record).map_err(|e| e.at(&path, reader.record_offset()))?;
            replay.apply(edit);
            records += 1;
        }
        let torn_tail = reader.torn_tail().map(|t| Damage {
            file: path.clone(),
            offset: t.offset,
            bytes: t.bytes,
            reason: t.reason.to_string(),
        });
        if records == 0 {
            // Even the snapshot edit every MANIFEST starts with is gone:
            // there is no state to fall back to.
            return Err(Error::corruption(
                &path,
                0,
                "manifest holds no version edit",
            ));
        }
        replay.next_file_number = replay.next_file_number.max(number + 1);
        Ok(ManifestState { replay, torn_tail })
    }

    /// WAL files numbered below this hold nothing that is not in a table.
    pub(crate) fn log_number(&self) -> u64 {
        self.replay.log_number
    }

    pub(crate) fn last_sequence(&self) -> u64 {
        self.replay.last_sequence
    }

    pub(crate) fn next_file_number(&self) -> u64 {
        self.replay.next_file_number
    }

    /// True when an edit of this MANIFEST deleted table `number`.
    pub(crate) fn deleted_by_edit(&self, number: u64) -> bool {
        self.replay.deleted.contains(&number)
    }

    /// Opens every table the MANIFEST names into a version. A missing table
    /// behind a dropped torn tail means that edit had been synced (it was
    /// acted on): corruption of the MANIFEST, not of the table.
    pub(crate) fn open_version(
        &self,
        dir: &Dir,
        block_cache: Option<&Arc<BlockCache>>,
    ) -> Result<Version> {
        let mut version = Version::default();
        for (level, files) in self.replay.levels.iter().enumerate() {
            for meta in files.values() {
                let file = open_table(dir, meta.clone(), block_cache).map_err(|e| {
                    match (&self.torn_tail, &e) {
                        (Some(torn), Error::Corruption { reason, .. })
                            if reason == MISSING_TABLE =>
                        {
                            Error::corruption(
                                &torn.file,
                                torn.offset,
                                format!(
                                    "the damaged last edit had been acted on: table {} \
                                     is missing without it; run Db::repair",
                                    meta.number
                                ),
                            )
                        }
                        _ => e,
                    }
                })?;
                if let Some(l) = version.levels.get_mut(level) {
                    l.push(file);
                }
            }
        }
        for (meta, garbage) in self.replay.blobs.values() {
            let file = Arc::new(BlobFile::open(dir, *meta)?);
            let garbage = *garbage;
            version
                .blobs
                .insert(meta.number, LiveBlob { file, garbage });
        }
        sort_levels(&mut version);
        Ok(version)
    }
}

/// What the MANIFESTs of a database say about its tables, read only as far
/// as their records are whole: for [`Db::repair`](crate::Db::repair), which
/// cannot trust any MANIFEST to be.
#[derive(Debug, Default)]
pub(crate) struct ManifestTables {
    /// The tables the newest MANIFEST with a whole record names.
    pub(crate) live: HashSet<u64>,
    /// The tables an edit deleted that no later edit added back. A MANIFEST
    /// roll repeats the deletions of tables whose files may still exist, so
    /// the newest MANIFESTs know them all.
    pub(crate) deleted: HashSet<u64>,
    /// The newest MANIFEST's log number: the logs below it hold nothing
    /// that its tables do not.
    pub(crate) log_number: u64,
}

impl ManifestTables {
    /// Reads the MANIFESTs at `paths`, oldest first.
    pub(crate) fn read(dir: &Dir, paths: &[PathBuf]) -> Self {
        let mut tables = ManifestTables::default();
        for path in paths {
            let Ok(file) = dir.fs().open(path) else {
                continue;
            };
            let mut reader = LogReader::new(
                std::io::BufReader::new(SequentialReader::new(file)),
                path,
                true,
            );
            // Every MANIFEST starts with an edit describing the whole state.
            let mut replay = Replay::default();
            let mut records = 0u64;
            while let Ok(Some(record)) = reader.next_record() {
                let Ok(edit) = VersionEdit::decode(&record) else {
                    break;
                };
                replay.apply(edit);
                records += 1;
            }
            if records > 0 {
                tables.log_number = replay.log_number;
                tables.live = replay
                    .levels
                    .iter()
                    .flat_map(|level| level.keys().copied())
                    .collect();
            }
            tables.deleted.extend(replay.deleted);
        }
        let live = &tables.live;
        tables.deleted.retain(|number| !live.contains(number));
        tables
    }
}

/// Applies the blob files and garbage of `edit` to `blobs` (see "Lifetime"
/// in `blob`), opening each added file with `open`, and returns the files
/// whose garbage now covers all their records, removed from `blobs`.
fn apply_blob_changes<T>(
    blobs: &mut BTreeMap<u64, T>,
    edit: &VersionEdit,
    mut open: impl FnMut(&BlobMeta) -> Result<T>,
    parts: impl Fn(&mut T) -> (&BlobMeta, &mut Garbage),
) -> Result<Vec<T>> {
    for meta in &edit.added_blobs {
        blobs.insert(meta.number, open(meta)?);
    }
    let mut dead = Vec::new();
    for (number, more) in &edit.blob_garbage {
        // Garbage of a file already gone (its last records dropped by an
        // earlier edit) has nothing left to count against.
        let Some(entry) = blobs.get_mut(number) else {
            continue;
        };
        let (meta, garbage) = parts(entry);
        garbage.add(*more);
        if garbage.covers(meta) {
            dead.extend(blobs.remove(number));
        }
    }
    Ok(dead)
}

impl VersionSet {
    /// The cache that this set's tables keep decompressed blocks in.
    pub(crate) fn block_cache(&self) -> Option<&Arc<BlockCache>> {
        self.block_cache.as_ref()
    }

    /// Starts a fresh MANIFEST in `dir` holding one edit that describes
    /// `version` and the counters, syncs it, and only then points `CURRENT`
    /// at it. Older MANIFESTs are left for the caller to remove once the
    /// open has succeeded. `next_file_number` must be above the number of
    /// every file in `dir`: a crash can leave files (a new WAL, a
    /// half-written table or manifest) that no manifest heard of, and their
    /// numbers must not be reused.
    pub(crate) fn create(
        dir: &Dir,
        version: Version,
        log_number: u64,
        last_sequence: u64,
        next_file_number: u64,
        block_cache: Option<Arc<BlockCache>>,
    ) -> Result<Self> {
        let manifest_number = next_file_number;
        let mut set = VersionSet {
            dir: dir.clone(),
            manifest: LogWriter::create(&**dir.fs(), &dir.join(manifest_name(manifest_number)))?,
            manifest_number,
            next_file_number: manifest_number + 1,
            log_number,
            last_sequence,
            current: Arc::new(version),
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            manifest_broken: false,
            block_cache,
            deleted: Vec::new(),
        };
        let snapshot = set.snapshot_edit();
        set.manifest.add_record(&snapshot.encode())?;
        set.manifest.sync()?;
        file_name::set_current(dir, manifest_number)?;
        Ok(set)
    }

    /// What a checkpoint copies: the current version, held so that none of
    /// its tables is deleted meanwhile, and the one edit that describes it.
    pub(crate) fn checkpoint_state(&self) -> (Arc<Version>, VersionEdit) {
        (self.current.clone(), self.snapshot_edit())
    }

    /// One edit describing the whole current state.
    fn snapshot_edit(&self) -> VersionEdit {
        let mut edit = VersionEdit {
            log_number: Some(self.log_number),
            next_file_number: Some(self.next_file_number),
            last_sequence: Some(self.last_sequence),
            ..VersionEdit::default()
        };
        for (level, files) in self.current.levels.iter().enumerate() {
            edit.added
                .extend(files.iter().map(|f| (level, f.meta.clone())));
        }
        for (number, live) in &self.current.blobs {
            edit.added_blobs.push(live.file.meta);
            if live.garbage != Garbage::default() {
                edit.blob_garbage.push((*number, live.garbage));
            }
        }
        edit.deleted.clone_from(&self.deleted);
        edit
    }

    /// Forgets the deleted tables whose files are gone.
    fn prune_deleted(&mut self) {
        let dir = &self.dir;
        self.deleted
            .retain(|&(_, number)| dir.fs().exists(&file_name::table_path(dir, number)));
    }

    /// Starts a new MANIFEST holding the current state and points `CURRENT`
    /// at it. On failure the old MANIFEST stays in use and nothing changes.
    fn roll_manifest(&mut self) -> Result<()> {
        self.prune_deleted();
        let number = self.new_file_number();
        let manifest = write_manifest(&self.dir, number, &self.snapshot_edit())?;
        let old = self.dir.join(manifest_name(self.manifest_number));
        self.manifest = manifest;
        self.manifest_number = number;
        // Garbage once CURRENT moved on; the next open deletes it if this fails.
        let _ = self.dir.fs().remove_file(&old);
        Ok(())
    }

    /// The number the next new file gets: every file numbered at or above
    /// it was created later.
    pub(crate) fn next_file_number(&self) -> u64 {
        self.next_file_number
    }

    pub(crate) fn new_file_number(&mut self) -> u64 {
        let n = self.next_file_number;
        self.next_file_number += 1;
        n
    }

    pub(crate) fn manifest_number(&self) -> u64 {
        self.manifest_number
    }

    /// Opens the edit's new tables, logs the edit durably, then installs the
    /// resulting version. On error nothing is installed.
    /// REQUIRES: every table the edit adds is written and fsynced.
    pub(crate) fn log_and_apply(&mut self, mut edit: VersionEdit) -> Result<Arc<Version>> {
        if self.manifest_broken {
            // The new MANIFEST describes the current state without the failed
            // edit, which was never installed; the broken one is deleted.
            self.roll_manifest()?;
            self.manifest_broken = false;
        }
        edit.next_file_number = Some(self.next_file_number);
        let mut levels = self.current.levels.clone();
        // Tables the edit deletes; a trivial move re-adds one at a deeper level.
        let mut removed: HashMap<u64, Arc<TableFile>> = HashMap::new();
        for &(level, number) in &edit.deleted {
            if let Some(l) = levels.get_mut(level) {
                if let Some(pos) = l.iter().position(|f| f.meta.number == number) {
                    removed.insert(number, l.remove(pos));
                }
            }
        }
        for (level, meta) in &edit.added {
            let file = match removed.remove(&meta.number) {
                Some(moved) => moved,
                None => open_table(&self.dir, meta.clone(), self.block_cache.as_ref())?,
            };
            if let Some(l) = levels.get_mut(*level) {
                l.push(file);
            }
        }
        let mut blobs = self.current.blobs.clone();
        let dead_blobs = apply_blob_changes(
            &mut blobs,
            &edit,
            |meta| {
                let file = Arc::new(BlobFile::open(&self.dir, *meta)?);
                let garbage = Garbage::default();
                Ok(LiveBlob { file, garbage })
            },
            |live| (&live.file.meta, &mut live.garbage),
        )?;
        file_name::sync_dir(&self.dir)?;
        let logged = self
            .manifest
            .add_record(&edit.encode())
            .and_then(|()| self.manifest.sync());
        if let Err(e) = logged {
            self.manifest_broken = true;
            return Err(e);
        }
        if let Some(n) = edit.log_number {
            self.log_number = n;
        }
        if let Some(n) = edit.last_sequence {
            self.last_sequence = n;
        }
        let mut version = Version { levels, blobs };
        sort_levels(&mut version);
        self.current = Arc::new(version);
        for (&number, gone) in &removed {
            gone.mark_obsolete();
            if let Some(level) = edit
                .deleted
                .iter()
                .find_map(|&(level, n)| (n == number).then_some(level))
            {
                self.deleted.push((level, number));
            }
        }
        if self.deleted.len() > MAX_REMEMBERED_DELETIONS {
            self.prune_deleted();
        }
        for gone in &dead_blobs {
            gone.file.mark_obsolete();
        }
        if self.manifest.len() > self.max_manifest_bytes {
            // The edit is durable already; a failed roll only means the old
            // MANIFEST keeps growing until the next attempt.
            let _ = self.roll_manifest();
        }
        Ok(self.current.clone())
    }
}

const MISSING_TABLE: &str = "table named by the manifest is missing";

/// Opens a table and checks it holds what the manifest says it does.
/// Writes `MANIFEST-<number>` in `dir` holding `edit`, syncs it and points
/// `CURRENT` at it. On failure the new file is removed and `CURRENT` is
/// unchanged.
pub(crate) fn write_manifest(dir: &Dir, number: u64, edit: &VersionEdit) -> Result<LogWriter> {
    let path = dir.join(manifest_name(number));
    let written = LogWriter::create(&**dir.fs(), &path).and_then(|mut manifest| {
        manifest.add_record(&edit.encode())?;
        manifest.sync()?;
        file_name::set_current(dir, number)?;
        Ok(manifest)
    });
    if written.is_err() {
        let _ = dir.fs().remove_file(&path);
    }
    written
}

fn open_table(
    dir: &Dir,
    meta: FileMeta,
    block_cache: Option<&Arc<BlockCache>>,
) -> Result<Arc<TableFile>> {
    let path = file_name::table_path(dir, meta.number);
    let table =
        Table::open_with_cache(dir.fs(), &path, block_cache.cloned()).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::corruption(&path, 0, MISSING_TABLE)
            }
            other => other,
        })?;
    let (smallest, largest) = table.key_range();
    if smallest != meta.smallest.as_slice() || largest != meta.largest.as_slice() {
        return Err(Error::corruption(
            &path,
            0,
            "table key range disagrees with the manifest",
        ));
    }
    Ok(Arc::new(TableFile::new(meta, Arc::new(table))))
}

/// L0 newest (highest file number) first; deeper levels by smallest key.
fn sort_levels(version: &mut Version) {
    for (level, files) in version.levels.iter_mut().enumerate() {
        if level == 0 {
            files.sort_by_key(|f| std::cmp::Reverse(f.meta.number));
        } else {
            files.sort_by(|a, b| compare_internal(&a.meta.smallest, &b.meta.smallest));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Logs `edits` edits, enough to roll a manifest of 256 bytes.
    fn roll_by_edits(set: &mut VersionSet, edits: u64) {
        let first = set.manifest_number();
        for seq in 1..=edits {
            set.log_and_apply(VersionEdit {
                last_sequence: Some(seq),
                ..VersionEdit::default()
            })
            .unwrap();
        }
        assert_ne!(
            set.manifest_number(),
            first,
            "the manifest was never rolled"
        );
    }

    #[test]
    fn a_long_manifest_is_replaced_and_recovers_the_same_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::fs::os_dir(tmp.path());
        let mut set = VersionSet::create(&dir, Version::default(), 0, 0, 2, None).unwrap();
        set.max_manifest_bytes = 256;
        roll_by_edits(&mut set, 50);
        let manifests = std::fs::read_dir(&*dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("MANIFEST-")
            })
            .count();
        assert_eq!(manifests, 1, "old manifests are deleted");
        let next = set.new_file_number();
        drop(set);
        let state = ManifestState::read(&dir, false).unwrap();
        assert!(state.torn_tail.is_none());
        assert_eq!(state.last_sequence(), 50);
        // `next` was handed out after the last edit, so the manifest cannot
        // know it; the open's scan of the directory protects the file it
        // names. Every number the manifest saw stays used.
        assert!(
            state.next_file_number() >= next,
            "file numbers never go back"
        );
    }

    #[test]
    fn a_rolled_manifest_still_knows_the_tables_deleted_before_it() {
        use crate::key::{internal_key, ValueKind};
        use crate::sstable::TableBuilder;
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::fs::os_dir(tmp.path());
        let mut set = VersionSet::create(&dir, Version::default(), 0, 0, 2, None).unwrap();
        set.max_manifest_bytes = 256;
        let mut table = |key: &[u8]| {
            let number = set.new_file_number();
            let path = file_name::table_path(&dir, number);
            let mut b = TableBuilder::create(&**dir.fs(), &path, 4096, 10).unwrap();
            b.add(&internal_key(key, 1, ValueKind::Value), b"v")
                .unwrap();
            let built = b.finish().unwrap();
            FileMeta {
                number,
                size: built.file_size,
                smallest: built.smallest,
                largest: built.largest,
            }
        };
        let (a, b) = (table(b"a"), table(b"b"));
        let (gone, kept) = (a.number, b.number);
        set.log_and_apply(VersionEdit {
            added: vec![(1, a), (1, b)],
            ..VersionEdit::default()
        })
        .unwrap();
        // A reader holds the version with both tables across the deletion.
        let reader = set.log_and_apply(VersionEdit::default()).unwrap();
        set.log_and_apply(VersionEdit {
            deleted: vec![(1, gone)],
            ..VersionEdit::default()
        })
        .unwrap();
        roll_by_edits(&mut set, 20);
        drop(set);
        assert!(
            dir.fs().exists(&file_name::table_path(&dir, gone)),
            "the reader holds it"
        );
        let state = ManifestState::read(&dir, false).unwrap();
        assert!(state.deleted_by_edit(gone), "the roll forgot the deletion");
        assert!(!state.deleted_by_edit(kept));
        drop(reader);
    }
}
