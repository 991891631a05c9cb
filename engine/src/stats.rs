//! What the engine counts about itself, and the [`Stats`] report built from
//! those counters and the current shape of the tree.
//!
//! Counters are relaxed atomics bumped where the work happens (the write
//! path, the flush and compaction threads, table lookups); a report reads
//! them without stopping anything, so its numbers are each exact but not
//! taken at one single instant.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::compaction::FilterCounts;
use crate::version::NUM_LEVELS;

/// Per-level compaction totals, by the level a compaction wrote to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LevelWork {
    /// Bytes read from the level above (the level the compaction started at).
    pub(crate) read_upper: u64,
    /// Bytes read from this level (the overlapping tables rewritten).
    pub(crate) read_lower: u64,
    pub(crate) written: u64,
    pub(crate) compactions: u64,
    pub(crate) trivial_moves: u64,
    pub(crate) micros: u64,
}

/// The live counters. One per database, shared by every thread. Flushes
/// count as level 0's compactions.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) user_bytes: AtomicU64,
    pub(crate) wal_bytes: AtomicU64,
    pub(crate) stops: AtomicU64,
    pub(crate) stop_micros: AtomicU64,
    pub(crate) slowdowns: AtomicU64,
    pub(crate) slowdown_micros: AtomicU64,
    pub(crate) bloom_checks: AtomicU64,
    pub(crate) bloom_negatives: AtomicU64,
    pub(crate) bloom_false_positives: AtomicU64,
    pub(crate) background_errors: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) filter_removed: AtomicU64,
    pub(crate) filter_changed: AtomicU64,
    pub(crate) filter_panics: AtomicU64,
    pub(crate) levels: Mutex<[LevelWork; NUM_LEVELS]>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_time(count: &AtomicU64, micros: &AtomicU64, elapsed: Duration) {
        count.fetch_add(1, Ordering::Relaxed);
        micros.fetch_add(as_micros(elapsed), Ordering::Relaxed);
    }

    pub(crate) fn record_filtered(&self, counts: FilterCounts) {
        Self::add(&self.filter_removed, counts.removed);
        Self::add(&self.filter_changed, counts.changed);
        Self::add(&self.filter_panics, counts.panics);
    }

    pub(crate) fn record_compaction(&self, output_level: usize, work: LevelWork) {
        if let Some(l) = self.levels.lock().get_mut(output_level) {
            l.read_upper += work.read_upper;
            l.read_lower += work.read_lower;
            l.written += work.written;
            l.compactions += work.compactions;
            l.trivial_moves += work.trivial_moves;
            l.micros += work.micros;
        }
    }
}

/// One level of the tree, as [`Db::stats`](crate::Db::stats) reports it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LevelStats {
    /// Live tables in the level.
    pub tables: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// How urgently the level needs compacting; at 1.0 or more it is due.
    pub score: f64,
    /// Bytes compactions into this level read from the level above.
    pub read_upper_bytes: u64,
    /// Bytes compactions into this level read from this level.
    pub read_lower_bytes: u64,
    /// Bytes written to this level (by flushes, for L0).
    pub written_bytes: u64,
    /// Compactions (flushes, for L0) that wrote to this level.
    pub compactions: u64,
    /// Tables moved down into this level without being rewritten.
    pub trivial_moves: u64,
    /// Time spent writing to this level.
    pub busy: Duration,
}

/// One live table, as [`Db::live_tables`](crate::Db::live_tables) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableInfo {
    /// The level the table is in.
    pub level: usize,
    /// The table's file number (its file is `<number>.sst`).
    pub number: u64,
    /// File size in bytes.
    pub size: u64,
    /// Smallest user key in the table.
    pub smallest_key: Vec<u8>,
    /// Largest user key in the table.
    pub largest_key: Vec<u8>,
}

/// A report on the engine: the tree's shape, the I/O it did, and the
/// writers it held back. From [`Db::stats`](crate::Db::stats); prints as a
/// table like RocksDB's compaction stats.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
/// db.put(b"k", b"v")?;
/// db.flush()?;
/// let stats = db.stats();
/// assert_eq!(stats.levels[0].tables, 1);
/// println!("{stats}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per level, L0 first.
    pub levels: Vec<LevelStats>,
    /// Key and value bytes of every accepted write: the denominator of write amplification.
    pub user_bytes_written: u64,
    /// Bytes appended to write-ahead logs (fragment headers and padding
    /// included) and, with `blob_threshold`, the values written to their
    /// blob files.
    pub wal_bytes_written: u64,
    /// Bytes of L0 tables written by flushes.
    pub bytes_flushed: u64,
    /// Bytes compactions read.
    pub bytes_compacted_read: u64,
    /// Bytes compactions wrote.
    pub bytes_compacted_written: u64,
    /// Memtables flushed.
    pub flushes: u64,
    /// Compactions run (not counting trivial moves).
    pub compactions: u64,
    /// Write groups that stopped because L0 or the frozen memtables were full.
    pub stall_stops: u64,
    /// Total time writers spent stopped.
    pub stall_stop_time: Duration,
    /// Write groups delayed because L0 reached the slowdown trigger.
    pub stall_slowdowns: u64,
    /// Total delay of slowed-down write groups.
    pub stall_slowdown_time: Duration,
    /// Table lookups that consulted a bloom filter.
    pub bloom_checks: u64,
    /// Lookups the filter answered "absent", sparing a block read.
    pub bloom_negatives: u64,
    /// Lookups the filter let through to a table that had no visible version.
    pub bloom_false_positives: u64,
    /// Bytes held by the active memtable.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting to be flushed.
    pub immutable_memtables: usize,
    /// The error that stopped background work, if any; writes fail while it
    /// is set ([`Db::health`](crate::Db::health) tells whether for good).
    pub background_error: Option<String>,
    /// Background jobs that failed, counting each failed retry.
    pub background_errors: u64,
    /// Times a retryable background error cleared because a retry
    /// succeeded, each ending one spell of refused writes.
    pub recoveries: u64,
    /// Entries the compaction filter removed, in installed compactions.
    pub compaction_filter_removed: u64,
    /// Entries whose value the compaction filter changed.
    pub compaction_filter_changed: u64,
    /// Calls of the compaction filter that panicked (the entry was kept).
    pub compaction_filter_panics: u64,
    /// Reads of a compressed block found decompressed in the block cache.
    pub block_cache_hits: u64,
    /// Reads of a compressed block that had to decompress it.
    pub block_cache_misses: u64,
    /// Bytes the cache's blocks take now: each block's buffer, its length
    /// rounded up to 128 bytes (below 1 MiB).
    pub block_cache_bytes: u64,
    /// The cache's capacity in bytes (`Options::block_cache_capacity`).
    pub block_cache_capacity: u64,
    /// Blob files live now (see `Options::blob_threshold`).
    pub blob_files: u64,
    /// Bytes of values in live blob files, garbage included.
    pub blob_bytes: u64,
    /// Bytes of values in live blob files that no table points to any more:
    /// reclaimed when the rest of their file is.
    pub blob_garbage_bytes: u64,
}

impl Stats {
    /// Bytes written to tables (flushes and compactions) per byte of user
    /// data written. The WAL is not included, as in RocksDB's figure.
    pub fn write_amplification(&self) -> f64 {
        ratio(
            self.bytes_flushed + self.bytes_compacted_written,
            self.user_bytes_written,
        )
    }

    /// Total bytes of live tables.
    pub fn table_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.bytes).sum()
    }

    pub(crate) fn from_counters(c: &Counters, levels: Vec<LevelStats>) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let micros = |a: &AtomicU64| Duration::from_micros(get(a));
        let bytes_compacted_read = levels
            .iter()
            .map(|l| l.read_upper_bytes + l.read_lower_bytes)
            .sum();
        Stats {
            user_bytes_written: get(&c.user_bytes),
            wal_bytes_written: get(&c.wal_bytes),
            bytes_flushed: levels.first().map_or(0, |l| l.written_bytes),
            bytes_compacted_read,
            bytes_compacted_written: levels.iter().skip(1).map(|l| l.written_bytes).sum(),
            flushes: levels.first().map_or(0, |l| l.compactions),
            compactions: levels.iter().skip(1).map(|l| l.compactions).sum(),
            stall_stops: get(&c.stops),
            stall_stop_time: micros(&c.stop_micros),
            stall_slowdowns: get(&c.slowdowns),
            stall_slowdown_time: micros(&c.slowdown_micros),
            bloom_checks: get(&c.bloom_checks),
            bloom_negatives: get(&c.bloom_negatives),
            bloom_false_positives: get(&c.bloom_false_positives),
            background_errors: get(&c.background_errors),
            recoveries: get(&c.recoveries),
            compaction_filter_removed: get(&c.filter_removed),
            compaction_filter_changed: get(&c.filter_changed),
            compaction_filter_panics: get(&c.filter_panics),
            levels,
            ..Stats::default()
        }
    }
}

/// `d` in whole microseconds, saturating.
pub(crate) fn as_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

const MIB: f64 = 1024.0 * 1024.0;

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Level  Tables  Size(MiB)  Score  Read(MiB)  Rn+1(MiB)  Write(MiB)  W-Amp  Comp(s)  Comp(n)  Moves"
        )?;
        let mut sum = LevelStats::default();
        for (i, l) in self.levels.iter().enumerate() {
            if l.tables == 0 && l.compactions == 0 && l.trivial_moves == 0 {
                continue;
            }
            write_level(
                f,
                &format!("L{i}"),
                l,
                ratio(l.written_bytes, l.read_upper_bytes),
            )?;
            sum.tables += l.tables;
            sum.bytes += l.bytes;
            sum.read_upper_bytes += l.read_upper_bytes;
            sum.read_lower_bytes += l.read_lower_bytes;
            sum.written_bytes += l.written_bytes;
            sum.compactions += l.compactions;
            sum.trivial_moves += l.trivial_moves;
            sum.busy += l.busy;
        }
        write_level(f, "Sum", &sum, self.write_amplification())?;
        writeln!(
            f,
            "User writes: {:.1} MiB, WAL {:.1} MiB, flushed {:.1} MiB in {} flushes; write amplification {:.2}",
            self.user_bytes_written as f64 / MIB,
            self.wal_bytes_written as f64 / MIB,
            self.bytes_flushed as f64 / MIB,
            self.flushes,
            self.write_amplification(),
        )?;
        writeln!(
            f,
            "Stalls: {} stops ({:.3} s), {} slowdowns ({:.3} s); memtable {:.1} MiB, {} frozen",
            self.stall_stops,
            self.stall_stop_time.as_secs_f64(),
            self.stall_slowdowns,
            self.stall_slowdown_time.as_secs_f64(),
            self.memtable_bytes as f64 / MIB,
            self.immutable_memtables,
        )?;
        write!(
            f,
            "Bloom: {} checks, {} negatives, {} false positives ({:.2}%)",
            self.bloom_checks,
            self.bloom_negatives,
            self.bloom_false_positives,
            // Lookups of absent keys are the negatives plus the false positives.
            100.0
                * ratio(
                    self.bloom_false_positives,
                    self.bloom_negatives + self.bloom_false_positives,
                ),
        )?;
        write!(
            f,
            "\nBackground errors: {} failed jobs, {} recoveries",
            self.background_errors, self.recoveries
        )?;
        if let Some(e) = &self.background_error {
            write!(f, "; now: {e}")?;
        }
        write!(
            f,
            "\nBlock cache: {} hits, {} misses ({:.2}% hits), {:.1} of {:.1} MiB",
            self.block_cache_hits,
            self.block_cache_misses,
            100.0
                * ratio(
                    self.block_cache_hits,
                    self.block_cache_hits + self.block_cache_misses
                ),
            self.block_cache_bytes as f64 / MIB,
            self.block_cache_capacity as f64 / MIB,
        )?;
        write!(
            f,
            "\nBlob files: {}, {:.1} MiB of values, {:.1} MiB of it garbage",
            self.blob_files,
            self.blob_bytes as f64 / MIB,
            self.blob_garbage_bytes as f64 / MIB,
        )?;
        write!(
            f,
            "\nCompaction filter: {} removed, {} changed, {} panics",
            self.compaction_filter_removed,
            self.compaction_filter_changed,
            self.compaction_filter_panics
        )
    }
}

fn write_level(f: &mut fmt::Formatter<'_>, name: &str, l: &LevelStats, w_amp: f64) -> fmt::Result {
    writeln!(
        f,
        "{name:>5}  {:>6}  {:>9.1}  {:>5.2}  {:>9.1}  {:>9.1}  {:>10.1}  {:>5.1}  {:>7.1}  {:>7}  {:>5}",
        l.tables,
        l.bytes as f64 / MIB,
        l.score,
        l.read_upper_bytes as f64 / MIB,
        l.read_lower_bytes as f64 / MIB,
        l.written_bytes as f64 / MIB,
        w_amp,
        l.busy.as_secs_f64(),
        l.compactions,
        l.trivial_moves,
    )
}
