//! Leveled compaction: merging tables of one level into the next level down,
//! keeping each key's visible versions and dropping the rest.
//!
//! # What a compaction keeps
//!
//! Inputs are merged in internal-key order (user key, then newest first).
//! `smallest_snapshot` is the sequence every future reader of the output
//! will read at or above: readers that started earlier read through the
//! version they pinned, whose tables a compaction never changes, so the
//! output only has to be right for reads at `smallest_snapshot` and later.
//! An entry is dropped when
//!
//! - a newer entry of the same key is itself at or below `smallest_snapshot`
//!   (every reader sees that newer entry instead), or
//! - it is a tombstone at or below `smallest_snapshot` and no level below
//!   the output holds the key (there is nothing left for it to hide), or
//! - a range tombstone of the inputs at or below `smallest_snapshot` is
//!   newer than it and covers its key (see `range_del`).
//!
//! The inputs' range tombstones go to the outputs, except those at or
//! below `smallest_snapshot` whose range no level below the output holds.
//!
//! # Sequence zeroing
//!
//! A value (or blob pointer) at or below `smallest_snapshot`, whose key no
//! level below the output holds and no tombstone the output keeps covers,
//! is written with sequence 0 (RocksDB does the same at the bottommost
//! level). Every reader sees it; an older version of its key was dropped
//! here or does not exist; newer ones, and the tombstones that may hide
//! it, sit above the output (a key's versions only ever move down in
//! order, and a table's range covers its tombstones), so comparing them
//! with 0 gives what comparing with the old sequence did. Why: a sequence
//! is 7 bytes of every entry that compression cannot shrink, and the
//! zeros of the base level compress to almost nothing (with LZ4, a
//! million-key base level of 16-byte keys and 100-byte values shrinks
//! from 14.2 to about 8 MiB).
//!
//! A [`CompactionFilter`] set in the options then decides about the newest
//! value of each key; see `filter` for its rules. A value it rewrites keeps
//! its sequence.
//!
//! # Outputs
//!
//! The merged stream is cut into tables of about `target_table_size`, and
//! earlier where a table would overlap more than ten target tables of the
//! level below its own (which would make the next compaction down huge).
//! A cut never falls between two versions of one user key, so no user key
//! spans two tables of a level, nor inside a range tombstone an output
//! holds (a table's key range covers its tombstones, up to and including
//! the end key), so tables of a level never overlap.
//!
//! A *trivial move* needs no merge: when the inputs overlap nothing one level
//! down (and not too much two levels down), the manifest just records them at
//! the next level.
//!
//! # Blob garbage
//!
//! A dropped `BlobIndex` entry makes its blob record garbage (see `blob`),
//! recorded in the compaction's edit. A blob file is deleted only once all
//! its records are garbage, so a few live values would keep a mostly dead
//! file: a compaction that keeps an entry pointing into a file that is at
//! least half garbage reads the value and writes it to a blob file of its
//! own, and the old record becomes garbage too (RocksDB's blob garbage
//! collection during compaction). A manual compaction that leaves such a
//! file rewrites the deepest level in its range (a bottom rewrite, below)
//! to move the rest, so `compact_range` over the whole key space leaves no
//! file half garbage.
//!
//! A *bottom rewrite* merges tables of the deepest level in use into that
//! same level: manual compaction runs one when a filter is set, so that the
//! filter reaches entries that no compaction would otherwise rewrite
//! (RocksDB's `BottommostLevelCompaction::kIfHaveCompactionFilter`).

pub(crate) mod filter;
pub(crate) mod picker;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::blob::{blob_path, BlobMeta, BlobRef, BlobWriter, Garbage};
use crate::error::Result;
use crate::file_name;
use crate::fs::Dir;
use crate::iter::merge::MergingSource;
use crate::iter::{Direction, Entry, KeyBounds, Source};
use crate::key::{append_tagged, compare_internal, pack_tag, ValueKind, MAX_SEQUENCE};
use crate::options::Options;
use crate::range_del::{Fragments, RangeTombstone};
use crate::sstable::{TableBuilder, TableSource};
use crate::version::{FileMeta, LiveBlob, TableFile, Version, VersionEdit, NUM_LEVELS};

pub(crate) use filter::FilterCounts;
pub use filter::{CompactionFilter, FilterDecision};

/// How often (in entries) a running compaction checks whether to give up.
const CANCEL_CHECK_INTERVAL: u64 = 4096;

/// A blob file at least this much garbage (by bytes) has the live values a
/// compaction meets moved to the compaction's own blob file.
const RELOCATE_GARBAGE_RATIO: f64 = 0.5;

/// One planned compaction: tables of `level` and what they overlap below.
pub(crate) struct Compaction {
    /// The version the inputs were chosen from; it answers "does any deeper
    /// level hold this key?" for tombstones.
    version: Arc<Version>,
    level: usize,
    /// `level + 1`, or `level` itself for a bottom rewrite.
    output_level: usize,
    /// Tables of `level` to push down.
    inputs: Vec<Arc<TableFile>>,
    /// Tables of the output level overlapping the inputs, rewritten with
    /// them (none for a bottom rewrite, whose inputs are that level's).
    lower: Vec<Arc<TableFile>>,
    /// Tables of the level below the output overlapping the whole compaction.
    grandparents: Vec<Arc<TableFile>>,
    max_grandparent_overlap: u64,
}

impl Compaction {
    pub(crate) fn new(
        version: Arc<Version>,
        level: usize,
        inputs: Vec<Arc<TableFile>>,
        options: &Options,
    ) -> Self {
        let (lower, grandparents) = match user_range(&inputs) {
            Some((lo, hi)) => {
                let lower = version.overlapping(level + 1, &lo, &hi);
                let (lo, hi) = user_range(inputs.iter().chain(&lower)).unwrap_or((lo, hi));
                let grandparents = version.overlapping(level + 2, &lo, &hi);
                (lower, grandparents)
            }
            None => (Vec::new(), Vec::new()),
        };
        Compaction {
            version,
            level,
            output_level: level + 1,
            inputs,
            lower,
            grandparents,
            max_grandparent_overlap: picker::max_grandparent_overlap(options),
        }
    }

    /// Rewrites `inputs`, tables of `level`, into `level` itself.
    /// REQUIRES: no level below `level` holds a table (so nothing below can
    /// overlap the outputs and no output needs cutting for it).
    pub(crate) fn bottom_rewrite(
        version: Arc<Version>,
        level: usize,
        inputs: Vec<Arc<TableFile>>,
        options: &Options,
    ) -> Self {
        Compaction {
            version,
            level,
            output_level: level,
            inputs,
            lower: Vec::new(),
            grandparents: Vec::new(),
            max_grandparent_overlap: picker::max_grandparent_overlap(options),
        }
    }

    pub(crate) fn output_level(&self) -> usize {
        self.output_level
    }

    /// The largest internal key among the tables of `level`.
    pub(crate) fn largest_input_key(&self) -> Option<Vec<u8>> {
        self.inputs
            .iter()
            .map(|f| &f.meta.largest)
            .max_by(|a, b| compare_internal(a, b))
            .cloned()
    }

    /// Bytes read from `level` and from `level + 1`.
    pub(crate) fn input_bytes(&self) -> (u64, u64) {
        let sum = |files: &[Arc<TableFile>]| files.iter().map(|f| f.meta.size).sum();
        (sum(&self.inputs), sum(&self.lower))
    }

    /// True when the inputs can move down without being rewritten.
    pub(crate) fn is_trivial_move(&self) -> bool {
        if !self.lower.is_empty() || self.inputs.is_empty() {
            return false;
        }
        let grandparent_bytes: u64 = self.grandparents.iter().map(|f| f.meta.size).sum();
        if grandparent_bytes > self.max_grandparent_overlap {
            return false;
        }
        // Several L0 tables can move together only if they are disjoint.
        let mut sorted: Vec<&Arc<TableFile>> = self.inputs.iter().collect();
        sorted.sort_by(|a, b| a.smallest_user_key().cmp(b.smallest_user_key()));
        sorted
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.largest_user_key() < b.smallest_user_key()))
    }

    /// The manifest edit that moves the inputs down unchanged.
    pub(crate) fn trivial_move_edit(&self) -> VersionEdit {
        VersionEdit {
            deleted: self.deleted(),
            added: self
                .inputs
                .iter()
                .map(|f| (self.output_level(), f.meta.clone()))
                .collect(),
            ..VersionEdit::default()
        }
    }

    /// The manifest edit that replaces every input with `outputs`.
    pub(crate) fn edit(&self, outputs: Output) -> VersionEdit {
        VersionEdit {
            deleted: self.deleted(),
            added: outputs
                .tables
                .into_iter()
                .map(|m| (self.output_level(), m))
                .collect(),
            added_blobs: outputs.blob.into_iter().collect(),
            blob_garbage: outputs.garbage.into_iter().collect(),
            ..VersionEdit::default()
        }
    }

    fn deleted(&self) -> Vec<(usize, u64)> {
        self.inputs
            .iter()
            .map(|f| (self.level, f.meta.number))
            .chain(
                self.lower
                    .iter()
                    .map(|f| (self.output_level, f.meta.number)),
            )
            .collect()
    }
}

/// The smallest and largest user keys of `files`.
fn user_range<'a>(
    files: impl IntoIterator<Item = &'a Arc<TableFile>>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut range: Option<(&[u8], &[u8])> = None;
    for f in files {
        let (lo, hi) = (f.smallest_user_key(), f.largest_user_key());
        range = Some(match range {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }
    range.map(|(lo, hi)| (lo.to_vec(), hi.to_vec()))
}

/// What running a compaction needs from the database.
pub(crate) struct Env<'a> {
    pub(crate) dir: &'a Dir,
    pub(crate) options: &'a Options,
    /// See the module docs: no reader of the output reads below this.
    pub(crate) smallest_snapshot: u64,
    pub(crate) new_file_number: &'a dyn Fn() -> u64,
    /// Set on shutdown: the compaction stops and leaves the tree as it was.
    pub(crate) cancel: &'a AtomicBool,
}

/// What a finished compaction wrote.
pub(crate) struct Output {
    pub(crate) tables: Vec<FileMeta>,
    /// The blob file of relocated values, if any were.
    pub(crate) blob: Option<BlobMeta>,
    /// What the options' filter decided, if one is set.
    pub(crate) filtered: FilterCounts,
    /// Blob records whose pointers the compaction dropped, per blob file.
    pub(crate) garbage: BTreeMap<u64, Garbage>,
}

/// Merges the compaction's inputs into new tables of its output level and
/// returns them, or `None` if it was cancelled. On error or cancellation the
/// partial outputs are deleted.
pub(crate) fn run(c: &Compaction, env: &Env<'_>) -> Result<Option<Output>> {
    let tombstones: Vec<RangeTombstone> = c
        .inputs
        .iter()
        .chain(&c.lower)
        .flat_map(|f| f.table.range_tombstones().iter().cloned())
        .collect();
    let mut pending: Vec<RangeTombstone> = tombstones
        .iter()
        .filter(|t| {
            t.seq > env.smallest_snapshot
                || (c.output_level() + 1..NUM_LEVELS).any(|level| {
                    c.version
                        .files(level)
                        .iter()
                        .any(|f| t.overlaps(f.smallest_user_key(), f.largest_user_key()))
                })
        })
        .cloned()
        .collect();
    pending.sort_by(|a, b| a.start.cmp(&b.start));
    let kept = Fragments::new(&pending, MAX_SEQUENCE);
    let mut out = Outputs {
        env,
        tombstones: pending.into(),
        max_tombstone_end: None,
        builder: None,
        metas: Vec::new(),
        created: Vec::new(),
        last_user_key: Vec::new(),
        key_buf: Vec::new(),
        grandparents: &c.grandparents,
        grandparent_index: 0,
        overlapped_bytes: 0,
        max_overlap: c.max_grandparent_overlap,
        compression: env.options.compression_for_level(c.output_level),
        blob: None,
    };
    let mut filtered = FilterCounts::default();
    let mut garbage = BTreeMap::new();
    // What every reader of the output sees deleted.
    let deleted = Fragments::new(&tombstones, env.smallest_snapshot);
    let tombstones = Tombstones {
        deleted: &deleted,
        kept: &kept,
    };
    let result = merge(c, env, &tombstones, &mut out, &mut filtered, &mut garbage);
    match result {
        Ok(true) => out.finish().map(|(tables, blob)| {
            Some(Output {
                tables,
                blob,
                filtered,
                garbage,
            })
        }),
        Ok(false) => {
            out.abandon();
            Ok(None)
        }
        Err(e) => {
            out.abandon();
            Err(e)
        }
    }
}

/// The range tombstones a compaction applies and writes.
struct Tombstones<'a> {
    /// What every reader of the output sees deleted.
    deleted: &'a Fragments,
    /// Those the outputs keep, at every sequence.
    kept: &'a Fragments,
}

/// Streams the merged inputs into `out`, through the options' filter;
/// false if cancelled.
fn merge(
    c: &Compaction,
    env: &Env<'_>,
    tombstones: &Tombstones<'_>,
    out: &mut Outputs<'_>,
    filtered: &mut FilterCounts,
    garbage: &mut BTreeMap<u64, Garbage>,
) -> Result<bool> {
    // Every dropped or rewritten pointer makes its blob record garbage
    // (see "Lifetime" in `blob`).
    let mut drop_pointer = |entry: &Entry| -> Result<()> {
        if entry.is_blob_index() {
            let r = BlobRef::from_entry(&entry.value)?;
            garbage.entry(r.file).or_default().add(Garbage {
                count: 1,
                bytes: r.len,
            });
        }
        Ok(())
    };
    let everything = KeyBounds {
        lower: std::ops::Bound::Unbounded,
        upper: std::ops::Bound::Unbounded,
    };
    let sources = c
        .inputs
        .iter()
        .chain(&c.lower)
        .map(|f| {
            Box::new(TableSource::new(
                f.table.clone(),
                &everything,
                Direction::Forward,
            )) as Box<dyn Source>
        })
        .collect();
    let mut merged = MergingSource::new(sources, Direction::Forward);
    let mut base = BaseLevelCheck::new(&c.version, c.output_level());
    let mut current_key: Option<Vec<u8>> = None;
    let mut last_seq_for_key = u64::MAX;
    let mut seen = 0u64;
    while let Some(mut entry) = merged.next_entry()? {
        seen += 1;
        if seen.is_multiple_of(CANCEL_CHECK_INTERVAL) && env.cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let newest = current_key.as_deref() != Some(entry.user_key.as_slice());
        if newest {
            current_key = Some(entry.user_key.clone());
            last_seq_for_key = u64::MAX;
        }
        let shadowed = last_seq_for_key <= env.smallest_snapshot
            || (!tombstones.deleted.is_empty()
                && tombstones.deleted.newest_covering(&entry.user_key) > entry.seq());
        let dead_tombstone = entry.is_deletion()
            && entry.seq() <= env.smallest_snapshot
            && base.is_base_level_for(&entry.user_key);
        last_seq_for_key = entry.seq();
        if shadowed || dead_tombstone {
            drop_pointer(&entry)?;
            continue;
        }
        let mut rewritten = false;
        let offered = newest
            && !entry.is_deletion()
            && entry.seq() <= env.smallest_snapshot
            && env
                .options
                .compaction_filter
                .as_deref()
                .is_some_and(|f| !entry.is_blob_index() || f.filters_blob_values());
        if let (true, Some(filter)) = (offered, env.options.compaction_filter.as_deref()) {
            let separated;
            let value = if entry.is_blob_index() {
                separated = c.version.read_blob(&entry.value)?;
                &separated
            } else {
                &entry.value
            };
            match filtered.decide(filter, c.output_level(), &entry.user_key, value) {
                FilterDecision::Keep => {}
                FilterDecision::ChangeValue(value) => {
                    drop_pointer(&entry)?;
                    entry.tag = pack_tag(entry.seq(), ValueKind::Value);
                    entry.value = value;
                    rewritten = true;
                }
                // Older versions of the key in this compaction are shadowed
                // by this entry's sequence all the same (`last_seq_for_key`).
                FilterDecision::Remove if base.is_base_level_for(&entry.user_key) => {
                    drop_pointer(&entry)?;
                    continue;
                }
                FilterDecision::Remove => {
                    drop_pointer(&entry)?;
                    entry.tag = pack_tag(entry.seq(), ValueKind::Deletion);
                    entry.value.clear();
                }
            }
        }
        if entry.is_blob_index() && worth_relocating(&c.version, &entry.value) {
            let value = c.version.read_blob(&entry.value)?;
            drop_pointer(&entry)?;
            entry.value = out.relocate(&value)?.encode();
        }
        // A rewritten value keeps its sequence: recovery knows an output
        // that crashed before its edit as the filter's rewrite of the write
        // it still holds at that sequence (`db::open`), which sequence 0
        // would hide.
        let base_version = !entry.is_deletion()
            && !rewritten
            && entry.seq() != 0
            && entry.seq() <= env.smallest_snapshot
            && tombstones.kept.newest_covering(&entry.user_key) == 0
            && base.is_base_level_for(&entry.user_key);
        if base_version {
            // Sequence 0, same kind: every reader sees this version, and
            // nothing it could be ordered against is left (see "Sequence
            // zeroing").
            entry.tag &= 0xff;
        }
        out.add(&entry)?;
    }
    Ok(true)
}

/// Answers "does any level below the output hold this user key?" for keys
/// asked in ascending order, walking each level once.
/// Whether the blob record `pointer` names sits in a file whose live
/// values are to be moved (see "Blob garbage").
fn worth_relocating(version: &Version, pointer: &[u8]) -> bool {
    let Ok(r) = BlobRef::decode(pointer) else {
        return false;
    };
    version.blobs.get(&r.file).is_some_and(mostly_garbage)
}

/// Whether some blob file of `version` is mostly garbage: a manual
/// compaction then rewrites its deepest level to move the live values out.
pub(crate) fn has_blob_files_to_relocate(version: &Version) -> bool {
    version.blobs.values().any(mostly_garbage)
}

fn mostly_garbage(live: &LiveBlob) -> bool {
    live.garbage.bytes as f64 >= RELOCATE_GARBAGE_RATIO * live.file.meta.bytes as f64
}

struct BaseLevelCheck<'a> {
    version: &'a Version,
    output_level: usize,
    /// Per level: index of the first table whose largest key may still
    /// reach the keys asked from now on.
    positions: [usize; NUM_LEVELS],
}

impl<'a> BaseLevelCheck<'a> {
    fn new(version: &'a Version, output_level: usize) -> Self {
        BaseLevelCheck {
            version,
            output_level,
            positions: [0; NUM_LEVELS],
        }
    }

    fn is_base_level_for(&mut self, key: &[u8]) -> bool {
        for level in self.output_level + 1..NUM_LEVELS {
            let files = self.version.files(level);
            let Some(pos) = self.positions.get_mut(level) else {
                continue;
            };
            while files.get(*pos).is_some_and(|f| f.largest_user_key() < key) {
                *pos += 1;
            }
            if files
                .get(*pos)
                .is_some_and(|f| f.smallest_user_key() <= key)
            {
                return false;
            }
        }
        true
    }
}

/// The output tables being written.
struct Outputs<'a> {
    env: &'a Env<'a>,
    /// Range tombstones still to be written, by start: each goes to the
    /// output being written when the merge reaches its start.
    tombstones: VecDeque<RangeTombstone>,
    /// The furthest end of the current output's tombstones: no cut before it.
    max_tombstone_end: Option<Vec<u8>>,
    builder: Option<(u64, TableBuilder)>,
    metas: Vec<FileMeta>,
    /// Every file created so far, for clean-up on failure.
    created: Vec<PathBuf>,
    last_user_key: Vec<u8>,
    key_buf: Vec<u8>,
    grandparents: &'a [Arc<TableFile>],
    grandparent_index: usize,
    /// Bytes of grandparent tables the current output overlaps.
    overlapped_bytes: u64,
    /// Past this overlap, the current output is cut.
    max_overlap: u64,
    /// Of the output level.
    compression: crate::options::Compression,
    /// Where relocated blob values go (see "Blob garbage" above), created
    /// at the first one.
    blob: Option<BlobWriter>,
}

impl Outputs<'_> {
    /// Writes `value` to the compaction's blob file and returns its new pointer.
    fn relocate(&mut self, value: &[u8]) -> Result<BlobRef> {
        let writer = match &mut self.blob {
            Some(w) => w,
            None => {
                let number = (self.env.new_file_number)();
                self.created.push(blob_path(self.env.dir, number));
                self.blob.insert(BlobWriter::create(self.env.dir, number)?)
            }
        };
        writer.add(value)
    }

    fn add(&mut self, entry: &Entry) -> Result<()> {
        let new_user_key = self.builder.is_none() || self.last_user_key != entry.user_key;
        if new_user_key {
            // Tombstones starting at or before this key join the current
            // output before the cut is decided, so that no later output
            // starts inside one (two outputs of a level would then share a
            // user key).
            if self.builder.is_some() {
                self.take_tombstones_to(&entry.user_key);
            }
            let overlap_full = self.advance_grandparents(&entry.user_key);
            let size_full = self
                .builder
                .as_ref()
                .is_some_and(|(_, b)| b.estimated_size() >= self.env.options.target_table_size);
            let inside_tombstone = self
                .max_tombstone_end
                .as_deref()
                .is_some_and(|end| end >= entry.user_key.as_slice());
            if (overlap_full || size_full) && !inside_tombstone {
                self.finish_current()?;
            }
            self.last_user_key.clear();
            self.last_user_key.extend_from_slice(&entry.user_key);
        }
        self.open_builder()?;
        self.take_tombstones_to(&entry.user_key);
        self.key_buf.clear();
        append_tagged(&mut self.key_buf, &entry.user_key, entry.tag);
        if let Some((_, b)) = self.builder.as_mut() {
            b.add(&self.key_buf, &entry.value)?;
        }
        Ok(())
    }

    fn open_builder(&mut self) -> Result<()> {
        if self.builder.is_none() {
            let number = (self.env.new_file_number)();
            let path = file_name::table_path(self.env.dir, number);
            let builder = TableBuilder::create(
                &**self.env.dir.fs(),
                &path,
                self.env.options.block_size,
                self.env.options.bloom_bits_per_key,
            )?
            .with_compression(self.compression);
            self.created.push(path);
            self.builder = Some((number, builder));
        }
        Ok(())
    }

    /// Moves the pending tombstones that start at or before `key` into the
    /// current output.
    fn take_tombstones_to(&mut self, key: &[u8]) {
        while let Some(t) = self.tombstones.pop_front() {
            if t.start.as_slice() > key {
                self.tombstones.push_front(t);
                break;
            }
            self.add_tombstone(t);
        }
    }

    /// Adds a range tombstone to the current output, which then cannot be
    /// cut before its end.
    fn add_tombstone(&mut self, t: RangeTombstone) {
        if self
            .max_tombstone_end
            .as_ref()
            .is_none_or(|end| *end < t.end)
        {
            self.max_tombstone_end = Some(t.end.clone());
        }
        if let Some((_, b)) = self.builder.as_mut() {
            b.add_range_tombstone(t);
        }
    }

    /// Counts the grandparent tables wholly before `key`; true once the
    /// current output overlaps too many of them.
    fn advance_grandparents(&mut self, key: &[u8]) -> bool {
        while let Some(g) = self.grandparents.get(self.grandparent_index) {
            if g.largest_user_key() >= key {
                break;
            }
            if self.builder.is_some() {
                self.overlapped_bytes += g.meta.size;
            }
            self.grandparent_index += 1;
        }
        // Reset by the cut, which a tombstone may put off.
        self.overlapped_bytes > self.max_overlap
    }

    fn finish_current(&mut self) -> Result<()> {
        self.max_tombstone_end = None;
        self.overlapped_bytes = 0;
        if let Some((number, builder)) = self.builder.take() {
            // The values a table points to are durable before the table is:
            // a crash then never leaves a whole table pointing into nothing.
            if let Some(blob) = &mut self.blob {
                blob.sync()?;
            }
            let built = builder.finish()?;
            self.metas.push(FileMeta {
                number,
                size: built.file_size,
                smallest: built.smallest,
                largest: built.largest,
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<FileMeta>, Option<BlobMeta>)> {
        // Tombstones past the last entry go to the last output.
        let rest = (|| {
            if !self.tombstones.is_empty() {
                self.open_builder()?;
            }
            while let Some(t) = self.tombstones.pop_front() {
                self.add_tombstone(t);
            }
            Ok(())
        })();
        let finished = rest.and_then(|()| self.finish_current()).and_then(|()| {
            let blob = self.blob.take().map(BlobWriter::finish).transpose()?;
            Ok((std::mem::take(&mut self.metas), blob))
        });
        if finished.is_err() {
            self.abandon();
        }
        finished
    }

    fn abandon(&mut self) {
        self.builder = None;
        self.blob = None;
        for path in self.created.drain(..) {
            // Left behind, the file is garbage the next open deletes.
            let _ = self.env.dir.fs().remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests;
