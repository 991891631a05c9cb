//! The background: the flush thread (frozen memtables into L0 tables and
//! blob files), the compaction thread, manual compaction, and installing
//! what they wrote as a new version.
//!
//! A flush or compaction writes its files without holding any lock a
//! writer or reader needs, then installs them with one MANIFEST edit
//! ([`Core::install`]): the new version and the super version are swapped
//! under their locks for the length of a pointer store. Files written but
//! never installed (the edit failed) are removed at once, and the next open
//! would remove them too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recovery::Job;
use super::{Core, SuperVersion};
use crate::blob::{self, BlobMeta, BlobRef, BlobWriter};
use crate::compaction::{self, picker, Compaction};
use crate::error::{Error, Result};
use crate::file_name;
use crate::fs::Dir;
use crate::iter::KeyBounds;
use crate::key::{append_internal_key, ParsedKey, ValueKind};
use crate::memtable::Memtable;
use crate::options::Options;
use crate::sstable::TableBuilder;
use crate::stats::{as_micros, LevelWork};
use crate::version::{FileMeta, VersionEdit, NUM_LEVELS};

impl Core {
    /// Logs `edit` to the manifest and swaps the resulting version in for
    /// readers, dropping `flushed` (the frozen memtable the edit's new table
    /// replaces) from the super version in the same swap. The versions lock
    /// is held across both steps so that versions reach readers in order.
    fn install(&self, edit: VersionEdit, flushed: Option<&Arc<Memtable>>) -> Result<()> {
        let mut versions = self.versions.lock();
        let version = versions.log_and_apply(edit)?;
        {
            let mut sv = self.super_version.write();
            let imms = sv
                .imms
                .iter()
                .filter(|m| flushed.is_none_or(|f| !Arc::ptr_eq(m, f)))
                .cloned()
                .collect();
            *sv = Arc::new(SuperVersion {
                mem: sv.mem.clone(),
                imms,
                version,
                counters: self.counters.clone(),
            });
        }
        drop(versions);
        let mut bg = self.bg.lock();
        bg.version_changes += 1;
        self.bg_cv.notify_all();
        Ok(())
    }

    pub(super) fn flush(&self) -> Result<()> {
        {
            let mut log = self.log.lock();
            self.make_room(&mut log, true)?;
        }
        let mut bg = self.bg.lock();
        loop {
            if let Some(e) = &bg.error {
                return Err(e.write_error());
            }
            if self.super_version.read().imms.is_empty() && !bg.flushing {
                return Ok(());
            }
            self.bg_cv.wait(&mut bg);
        }
    }

    /// The body of the `strata-flush` thread: flushes frozen memtables, oldest
    /// first, until shutdown. A failure is recorded and pauses the thread's
    /// work (the recovery thread retries it); the frozen memtable's WAL still
    /// holds its writes.
    pub(super) fn flush_loop(&self) {
        loop {
            let imm = {
                let mut bg = self.bg.lock();
                loop {
                    if bg.shutdown {
                        return;
                    }
                    if bg.error.is_none() {
                        if let Some(imm) = self.super_version.read().imms.last().cloned() {
                            bg.flushing = true;
                            break imm;
                        }
                    }
                    self.bg_cv.wait(&mut bg);
                }
            };
            if let Err(e) = self.run_flush(imm) {
                self.set_background_error(e, Job::Flush);
            }
        }
    }

    /// Flushes `imm`, which the caller took under the `bg` lock, setting
    /// `flushing`; clears `flushing` when done, success or not.
    pub(super) fn run_flush(&self, imm: Arc<Memtable>) -> Result<()> {
        let result = self.flush_memtable(&imm);
        // Usually the last reference: freeing a memtable's million
        // entries takes a while, and is part of the flush.
        drop(imm);
        let mut bg = self.bg.lock();
        bg.flushing = false;
        self.bg_cv.notify_all();
        result
    }

    /// Writes the oldest frozen memtable to an L0 table, records it in the
    /// manifest, swaps it out of the super version and deletes its WAL. An
    /// empty memtable (frozen by recovery after the first append to its WAL
    /// failed) needs no table: its edit only moves the log number on.
    fn flush_memtable(&self, imm: &Arc<Memtable>) -> Result<()> {
        let newer_log = {
            let sv = self.super_version.read();
            let pos = sv.imms.iter().position(|m| Arc::ptr_eq(m, imm));
            match pos.and_then(|p| p.checked_sub(1)) {
                Some(p) => sv
                    .imms
                    .get(p)
                    .map_or(sv.mem.log_number(), |m| m.log_number()),
                None => sv.mem.log_number(),
            }
        };
        let start = Instant::now();
        let flushed = if imm.is_empty() {
            None
        } else {
            // The versions lock is not held while the table is written: rotation needs it.
            let (number, blob_number) = {
                let mut versions = self.versions.lock();
                (versions.new_file_number(), versions.new_file_number())
            };
            Some(build_table(
                &self.dir,
                &self.options,
                number,
                blob_number,
                imm,
            )?)
        };
        let written = flushed
            .as_ref()
            .map(|f| f.table.size + f.blob.map_or(0, |b| b.bytes));
        let created: Vec<PathBuf> = flushed.as_ref().map_or_else(Vec::new, |f| {
            std::iter::once(file_name::table_path(&self.dir, f.table.number))
                .chain(f.blob.map(|b| blob::blob_path(&self.dir, b.number)))
                .collect()
        });
        let installed = self.install(
            VersionEdit {
                log_number: Some(newer_log),
                last_sequence: Some(self.visible_seq.load(Ordering::Acquire)),
                ..flushed.map(Flushed::edit).unwrap_or_default()
            },
            Some(imm),
        );
        if let Err(e) = installed {
            for path in created {
                // Never installed, so garbage: on a full disk, a retry needs
                // the space. The next open would delete it too.
                let _ = self.dir.fs().remove_file(&path);
            }
            return Err(e);
        }
        if let Some(written) = written {
            self.counters.record_compaction(
                0,
                LevelWork {
                    written,
                    compactions: 1,
                    micros: as_micros(start.elapsed()),
                    ..LevelWork::default()
                },
            );
        }
        let old_log = file_name::log_path(&self.dir, imm.log_number());
        match self.dir.fs().remove_file(&old_log) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&old_log, e)),
        }
    }

    /// The body of the `strata-compact` thread: runs the most overdue
    /// compaction until none is due, then sleeps until the version changes.
    /// Pauses while a background error is set (the recovery thread retries a
    /// compaction that failed).
    pub(super) fn compaction_loop(&self) {
        loop {
            let (seen, paused) = {
                let bg = self.bg.lock();
                if bg.shutdown {
                    return;
                }
                (bg.version_changes, bg.error.is_some())
            };
            let ran = if paused {
                Ok(false)
            } else {
                let mut pointers = self.compaction.lock();
                let version = self.super_version.read().version.clone();
                match picker::pick(&version, &self.options, &mut pointers) {
                    Some(c) => self.run_compaction(&c, true).map(|()| true),
                    None => Ok(false),
                }
            };
            match ran {
                Ok(true) => {}
                Ok(false) => {
                    let mut bg = self.bg.lock();
                    // Also awake when the error cleared since `paused` was
                    // read: that notification has come and gone.
                    if !bg.shutdown && bg.version_changes == seen && bg.error.is_some() == paused {
                        self.bg_cv.wait(&mut bg);
                    }
                }
                Err(e) => self.set_background_error(e, Job::Compaction),
            }
        }
    }

    /// Runs `c` and installs its result. Without `allow_move` the inputs are
    /// always rewritten, which is what drops their dead versions and tombstones.
    /// REQUIRES: the caller holds `self.compaction`.
    pub(super) fn run_compaction(&self, c: &Compaction, allow_move: bool) -> Result<()> {
        let start = Instant::now();
        let (read_upper, read_lower) = c.input_bytes();
        if allow_move && c.is_trivial_move() {
            self.install(c.trivial_move_edit(), None)?;
            self.counters.record_compaction(
                c.output_level(),
                LevelWork {
                    trivial_moves: 1,
                    ..LevelWork::default()
                },
            );
            return Ok(());
        }
        let next_number = || self.versions.lock().new_file_number();
        let env = compaction::Env {
            dir: &self.dir,
            options: &self.options,
            smallest_snapshot: self.visible_seq.load(Ordering::Acquire),
            new_file_number: &next_number,
            cancel: &self.cancel,
        };
        let Some(output) = compaction::run(c, &env)? else {
            return Ok(());
        };
        let written =
            output.tables.iter().map(|m| m.size).sum::<u64>() + output.blob.map_or(0, |b| b.bytes);
        let created: Vec<PathBuf> = output
            .tables
            .iter()
            .map(|m| file_name::table_path(&self.dir, m.number))
            .chain(output.blob.map(|b| blob::blob_path(&self.dir, b.number)))
            .collect();
        let filtered = output.filtered;
        if let Err(e) = self.install(c.edit(output), None) {
            for path in created {
                // Never installed, so garbage; the next open would delete it too.
                let _ = self.dir.fs().remove_file(&path);
            }
            return Err(e);
        }
        self.counters.record_filtered(filtered);
        self.counters.record_compaction(
            c.output_level(),
            LevelWork {
                read_upper,
                read_lower,
                written,
                compactions: 1,
                micros: as_micros(start.elapsed()),
                ..LevelWork::default()
            },
        );
        Ok(())
    }

    pub(super) fn compact_range(&self, bounds: &KeyBounds) -> Result<()> {
        self.flush()?;
        let mut _pointers = self.compaction.lock();
        let written_from = self.versions.lock().next_file_number();
        let deepest = {
            let version = self.super_version.read().version.clone();
            (1..NUM_LEVELS)
                .rev()
                .find(|&l| !version.files(l).is_empty())
                .unwrap_or(1)
        };
        for level in 0..deepest {
            let version = self.super_version.read().version.clone();
            if let Some(c) = picker::pick_range(&version, &self.options, level, bounds) {
                self.run_manual_compaction(&c)?;
            }
        }
        let version = self.super_version.read().version.clone();
        let relocate = compaction::has_blob_files_to_relocate(&version);
        if self.options.compaction_filter.is_some() || relocate {
            // See "bottom rewrite" in `compaction`: without it, tables that
            // reached the deepest level by trivial moves, or were there
            // before, would never meet the filter. Moving blob values out of
            // a file rewrites every table, those just written included: any
            // of them may point into the file.
            let rewrites = picker::pick_bottom_rewrites(
                &version,
                &self.options,
                deepest,
                bounds,
                if relocate { u64::MAX } else { written_from },
            );
            for c in &rewrites {
                self.run_manual_compaction(c)?;
            }
        }
        Ok(())
    }

    /// Runs one step of a manual compaction, always rewriting its inputs.
    /// REQUIRES: the caller holds `self.compaction`.
    fn run_manual_compaction(&self, c: &Compaction) -> Result<()> {
        if let Some(e) = self.background_error() {
            return Err(e);
        }
        self.run_compaction(c, false).inspect_err(|e| {
            // A table that cannot be written for a reason that will not
            // pass means a failing disk, whoever asked for the compaction.
            // A transient failure only fails this call: a failed compaction
            // installs nothing and leaves nothing to redo, and if the disk
            // really is full, the next WAL append or flush finds out and
            // suspends writes itself.
            if !e.is_retryable() {
                self.set_background_error(e.clone(), Job::Compaction);
            }
        })
    }

    pub(super) fn wait_for_compactions(&self) -> Result<()> {
        let mut bg = self.bg.lock();
        loop {
            if let Some(e) = &bg.error {
                return Err(e.write_error());
            }
            let version = self.super_version.read().version.clone();
            let due = (0..NUM_LEVELS).any(|l| picker::score(&version, &self.options, l) >= 1.0);
            // A running compaction holds the lock; it notifies when it installs.
            if !due && self.compaction.try_lock().is_some() {
                return Ok(());
            }
            self.bg_cv.wait_for(&mut bg, Duration::from_millis(50));
        }
    }
}

/// Writes `mem` to table `number` and returns its manifest entry.
/// What a flush wrote: a table, and the blob file of its separated values
/// if it had any (see `blob`).
pub(crate) struct Flushed {
    pub(crate) table: FileMeta,
    pub(crate) blob: Option<BlobMeta>,
    /// The WALs' blob files the table points into (see `db/write`), each
    /// with the records and bytes its pointers cover: they join the version
    /// with the table.
    pub(crate) pointed: Vec<BlobMeta>,
}

impl Flushed {
    /// The edit that adds the table and the blob files to L0.
    fn edit(self) -> VersionEdit {
        VersionEdit {
            added: vec![(0, self.table)],
            added_blobs: self.blob.into_iter().chain(self.pointed).collect(),
            ..VersionEdit::default()
        }
    }
}

/// Writes `mem` to table `number`; values of at least the blob threshold go
/// to blob file `blob_number`, which is created only if one does.
pub(super) fn build_table(
    dir: &Dir,
    options: &Options,
    number: u64,
    blob_number: u64,
    mem: &Memtable,
) -> Result<Flushed> {
    let path = file_name::table_path(dir, number);
    let mut blobs: Option<BlobWriter> = None;
    let mut pointed: BTreeMap<u64, BlobMeta> = BTreeMap::new();
    let built = (|| {
        let mut builder = TableBuilder::create(
            &**dir.fs(),
            &path,
            options.block_size,
            options.bloom_bits_per_key,
        )?
        .with_compression(options.compression_for_level(0));
        let mut separated_key = Vec::new();
        mem.for_each(|ikey, value| {
            let separable = ParsedKey::parse(ikey).ok().filter(|k| {
                k.kind == ValueKind::Value
                    && options.blob_threshold.is_some_and(|t| value.len() >= t)
            });
            let Some(k) = separable else {
                if ParsedKey::parse(ikey).is_ok_and(|k| k.kind == ValueKind::BlobIndex) {
                    let r = BlobRef::from_entry(value)?;
                    let meta = pointed.entry(r.file).or_insert(BlobMeta {
                        number: r.file,
                        ..BlobMeta::default()
                    });
                    meta.count += 1;
                    meta.bytes += r.len;
                }
                return builder.add(ikey, value);
            };
            let writer = match &mut blobs {
                Some(w) => w,
                None => blobs.insert(BlobWriter::create(dir, blob_number)?),
            };
            let pointer = writer.add(value)?;
            separated_key.clear();
            append_internal_key(&mut separated_key, k.user_key, k.seq, ValueKind::BlobIndex);
            builder.add(&separated_key, &pointer.encode())
        })?;
        for t in mem.range_tombstones() {
            builder.add_range_tombstone(t);
        }
        let blob = blobs.take().map(BlobWriter::finish).transpose()?;
        Ok((builder.finish()?, blob))
    })();
    match built {
        Ok((built, blob)) => Ok(Flushed {
            table: FileMeta {
                number,
                size: built.file_size,
                smallest: built.smallest,
                largest: built.largest,
            },
            blob,
            pointed: pointed.into_values().collect(),
        }),
        Err(e) => {
            // Partial files are garbage; left behind, the next open would set them aside in lost/.
            let _ = dir.fs().remove_file(&path);
            let _ = dir.fs().remove_file(&blob::blob_path(dir, blob_number));
            Err(e)
        }
    }
}
