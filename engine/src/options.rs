//! Tuning knobs, with the reason for each default.

use std::sync::Arc;

use crate::compaction::CompactionFilter;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, OsFs};

/// Largest key any configuration may allow: keys live in memory whole and in
/// every index entry of the blocks they end.
pub const MAX_KEY_SIZE_LIMIT: usize = 1 << 20;
/// Largest value any configuration may allow: block entries store lengths as u32.
pub const MAX_VALUE_SIZE_LIMIT: usize = 1 << 30;

/// How a database is opened and tuned.
///
/// Built from [`Options::default`] with one setter per field, so that new
/// fields (it is `#[non_exhaustive]`) break no caller:
///
/// ```
/// let opts = strata_engine::Options::default()
///     .write_buffer_size(8 << 20)
///     .bloom_bits_per_key(12);
/// # let dir = tempfile::tempdir()?;
/// let db = strata_engine::Db::open(dir.path(), opts)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Create the directory and an empty database if none exists.
    pub create_if_missing: bool,
    /// Memtable size at which it is frozen and flushed to an L0 table. Larger
    /// means fewer, bigger L0 tables and a longer WAL replay after a crash.
    pub write_buffer_size: usize,
    /// Frozen memtables allowed to wait for their flush; once this many wait,
    /// writers stop until one is flushed, which bounds memory.
    pub max_immutable_memtables: usize,
    /// Target size of a data block before it is closed (the read unit of a lookup).
    pub block_size: usize,
    /// Bloom filter bits per key: 10 gives about 1% false positives.
    pub bloom_bits_per_key: u32,
    /// Writes with a longer key are refused with [`Error::InvalidArgument`].
    pub max_key_size: usize,
    /// Writes with a longer value are refused with [`Error::InvalidArgument`].
    pub max_value_size: usize,
    /// L0 tables that start a compaction into L1. Every L0 table is read by
    /// lookups that miss the memtables, so more of them means slower reads.
    pub level0_compaction_trigger: usize,
    /// L0 tables at which each write group is delayed by 1 ms, so compaction
    /// catches up gradually instead of writers hitting a hard stop.
    pub level0_slowdown_trigger: usize,
    /// L0 tables at which writers stop until compaction brings the count down.
    pub level0_stop_trigger: usize,
    /// Target size of L1; each deeper level targets ten times the one above.
    pub level1_target_size: u64,
    /// Compaction outputs are cut into tables of about this size.
    pub target_table_size: u64,
    /// What `open` does with a damaged write-ahead log; see [`RecoveryMode`].
    pub recovery_mode: RecoveryMode,
    /// Asked about the newest value of each key a compaction writes; see
    /// [`CompactionFilter`] for what it may do and when it runs. The same
    /// filter must be set at every open: entries it removed stay removed,
    /// and entries it has not seen yet are only filtered if it is set.
    pub compaction_filter: Option<Arc<dyn CompactionFilter>>,
    /// Data block compression by output level: entry `i` applies to tables
    /// written to level `i`, the last entry to every deeper level, and an
    /// empty list means none. Flushes write level 0. Tables written with
    /// other settings stay readable: each block records its own compression.
    /// Default: none everywhere, so that every read stays zero-copy from
    /// the mmap until a measurement says otherwise for a workload.
    pub compression_per_level: Vec<Compression>,
    /// Bytes of decompressed data blocks kept in memory, shared by all tables
    /// of the database (each block counted as its buffer, rounded up to 128
    /// bytes below 1 MiB). Only compressed blocks go through it: uncompressed
    /// ones are read in place from the mmap. Besides, each thread that reads
    /// keeps one evicted buffer of up to 64 KiB for its next decompression,
    /// 8 KiB of key buffers and, with zstd, a decompression context.
    /// Default: 32 MiB, as fjall's and RocksDB's block
    /// caches.
    pub block_cache_capacity: usize,
    /// Values of at least this many bytes go at commit to the blob file of
    /// the current WAL, which logs a pointer in their place; the memtable
    /// and the tables hold that pointer, and compaction moves 20 bytes
    /// instead of the value (value separation, as WiscKey, RocksDB's BlobDB
    /// and fjall's blob files): a large value is written once instead of
    /// once per level it passes, at the cost of one more read (`pread`) to
    /// fetch it. Default: `None` (every
    /// value stays in its table), as in RocksDB and fjall; 4-64 KiB suits
    /// a workload of large values.
    pub blob_threshold: Option<usize>,
    /// Append to write-ahead logs through a shared memory mapping of the
    /// file, space reserved ahead with `fallocate` (see `fs/mapped_log.rs`),
    /// instead of one `write` system call per write group: the same
    /// guarantee (a write survives the process's death once acknowledged,
    /// and a power loss once synced) at a fraction of the cost. The file
    /// system must make `fallocate` a real reservation, as ext4, XFS and
    /// tmpfs do; where it cannot reserve at all the WAL falls back to
    /// `write`. Turn it off on file systems whose `fallocate` does not
    /// guarantee the space (copy-on-write ones), where a full disk could
    /// otherwise end the process with `SIGBUS`. Default: true. Only
    /// [`FileSystem`]s that implement
    /// [`create_log`](crate::fs::FileSystem::create_log) differently from
    /// `create_new` (as [`OsFs`](crate::fs::OsFs) does) are affected.
    pub mapped_wal: bool,
    /// Where the database's files live: [`OsFs`](crate::fs::OsFs) by
    /// default; [`MemFs`](crate::fs::MemFs) keeps them in memory and can
    /// simulate a power loss.
    pub file_system: Arc<dyn FileSystem>,
}

/// What [`Db::open`](crate::Db::open) does when a write-ahead log is damaged
/// (after RocksDB's `WALRecoveryMode`). Every mode drops a torn tail of the
/// newest log (an interrupted append, which no synced write was
/// acknowledged for) and reports it in the
/// [`RecoveryReport`](crate::RecoveryReport). Damage to the MANIFEST fails
/// the open in every mode (see `version/set.rs` for why); use
/// [`Db::repair`](crate::Db::repair) then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Any damage but a torn tail fails the open with
    /// [`Error::Corruption`] naming the file and offset. Nothing is lost
    /// without the caller knowing. What a power cut can leave at the end of
    /// the newest WAL counts as its torn tail, a page of zeros followed by
    /// later records included; the report names it and the WAL is kept in
    /// `lost/`.
    #[default]
    AbsoluteConsistency,
    /// Replay stops at the first damage: the database opens holding every
    /// write before it and none after it (later logs are not replayed), a
    /// consistent point in time. The stop is reported.
    PointInTime,
    /// Damaged records are skipped and replay goes on after them: the most
    /// data back, but a write after a skipped one may survive while the
    /// skipped one does not. Each skip is reported with its bytes.
    SkipCorrupted,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: true,
            write_buffer_size: 32 << 20,
            max_immutable_memtables: 2,
            block_size: 4096,
            bloom_bits_per_key: 10,
            max_key_size: 64 << 10,
            max_value_size: 16 << 20,
            level0_compaction_trigger: 4,
            level0_slowdown_trigger: 8,
            level0_stop_trigger: 12,
            level1_target_size: 256 << 20,
            target_table_size: 64 << 20,
            recovery_mode: RecoveryMode::AbsoluteConsistency,
            compaction_filter: None,
            compression_per_level: Vec::new(),
            block_cache_capacity: 32 << 20,
            blob_threshold: None,
            mapped_wal: true,
            file_system: Arc::new(OsFs),
        }
    }
}

/// One consuming setter per field, named as the field.
macro_rules! setters {
    ($($field:ident: $ty:ty),* $(,)?) => {
        impl Options {
            $(
                #[doc = concat!("Sets [`Options::", stringify!($field), "`].")]
                #[must_use]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    create_if_missing: bool,
    write_buffer_size: usize,
    max_immutable_memtables: usize,
    block_size: usize,
    bloom_bits_per_key: u32,
    max_key_size: usize,
    max_value_size: usize,
    level0_compaction_trigger: usize,
    level0_slowdown_trigger: usize,
    level0_stop_trigger: usize,
    level1_target_size: u64,
    target_table_size: u64,
    recovery_mode: RecoveryMode,
    compression_per_level: Vec<Compression>,
    block_cache_capacity: usize,
    blob_threshold: Option<usize>,
    mapped_wal: bool,
}

/// How the data blocks of a table are compressed.
///
/// ```
/// use strata_engine::{Compression, Db, Options};
///
/// // Level 0 and 1 stay uncompressed (they are rewritten soon); LZ4 below.
/// let opts = Options::default().compression_per_level(vec![
///     Compression::None,
///     Compression::None,
///     Compression::Lz4,
/// ]);
/// # let dir = tempfile::tempdir()?;
/// let db = Db::open(dir.path(), opts)?;
/// db.put(b"k", b"v")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Stored as is and read in place from the mmap.
    #[default]
    None,
    /// LZ4 block format (`lz4_flex`, pure Rust): fast to decompress, a
    /// block is kept only when it saves at least 1/8 of its bytes.
    Lz4,
    /// Zstandard at `level` (1..=22; 3 is zstd's own default): smaller
    /// tables than LZ4 for more CPU on writes and cache misses. Needs the
    /// crate's `zstd` feature, which builds the C library; without it a
    /// zstd level is refused at open. Kept per block under the same 1/8 rule.
    Zstd {
        /// The zstd compression level.
        level: i32,
    },
}

impl Options {
    /// Sets [`Options::compaction_filter`].
    #[must_use]
    pub fn compaction_filter(mut self, filter: Arc<dyn CompactionFilter>) -> Self {
        self.compaction_filter = Some(filter);
        self
    }

    /// Sets [`Options::file_system`].
    #[must_use]
    pub fn file_system(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.file_system = fs;
        self
    }

    /// The compression of tables written to `level`.
    pub(crate) fn compression_for_level(&self, level: usize) -> Compression {
        self.compression_per_level
            .get(level)
            .or(self.compression_per_level.last())
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!("option {what}")))
            }
        };
        check(
            self.write_buffer_size >= 64 << 10,
            "write_buffer_size must be at least 64 KiB",
        )?;
        check(
            self.max_immutable_memtables >= 1,
            "max_immutable_memtables must be at least 1",
        )?;
        check(
            (256..=(4 << 20)).contains(&self.block_size),
            "block_size must be between 256 bytes and 4 MiB",
        )?;
        check(
            (1..=30).contains(&self.bloom_bits_per_key),
            "bloom_bits_per_key must be between 1 and 30",
        )?;
        check(
            (1..=MAX_KEY_SIZE_LIMIT).contains(&self.max_key_size),
            "max_key_size must be between 1 byte and 1 MiB",
        )?;
        check(
            self.max_value_size <= MAX_VALUE_SIZE_LIMIT,
            "max_value_size must be at most 1 GiB",
        )?;
        check(
            1 <= self.level0_compaction_trigger
                && self.level0_compaction_trigger <= self.level0_slowdown_trigger
                && self.level0_slowdown_trigger <= self.level0_stop_trigger,
            "level0 triggers must satisfy 1 <= compaction <= slowdown <= stop",
        )?;
        check(
            self.target_table_size >= 4 << 10,
            "target_table_size must be at least 4 KiB",
        )?;
        check(
            self.level1_target_size >= self.target_table_size,
            "level1_target_size must be at least target_table_size",
        )?;
        for c in &self.compression_per_level {
            if let Compression::Zstd { level } = *c {
                check(
                    cfg!(feature = "zstd"),
                    "compression_per_level: Zstd needs the `zstd` feature of strata-engine",
                )?;
                check(
                    (1..=22).contains(&level),
                    "compression_per_level: a Zstd level must be 1..=22",
                )?;
            }
        }
        Ok(())
    }
}

/// Per-write settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Wait for the write-ahead log to reach stable storage (fsync) before
    /// returning. Without it a write survives a process crash but may be lost
    /// if the machine loses power.
    pub sync: bool,
}
