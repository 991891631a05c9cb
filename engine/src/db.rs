//! The database: its handle, the state its threads share, and reads. The
//! parts are in `db/`: `write` (group commit and back-pressure),
//! `background` (flush and compaction), `open` (recovery at open),
//! `recovery` (recovery from background errors), `repair` and `checkpoint`.
//!
//! # Reads
//!
//! A read loads the last published sequence and the current
//! [`SuperVersion`] (memtable, frozen memtables, table version) under the
//! super version's read lock, which only a swap holds for writing (for the
//! length of a pointer store). So every write up to that sequence is in that
//! super version, and a compaction that dropped versions below the sequence
//! published when it started is either not yet in the super version or
//! started before the read's sequence (see `compaction`). No read waits for
//! a writer.
//!
//! # Background errors
//!
//! A failed WAL append or sync, flush or background compaction is recorded
//! as the database's background error: every later write fails fast,
//! [`Db::health`], [`Db::background_error`] and [`Db::stats`] show it. Reads
//! go on: every acknowledged write is still in a memtable, a table, or a WAL
//! that the next open replays. What happens next depends on the failure
//! ([`Error::is_retryable`] is the one classification):
//!
//! - *Retryable* (a full disk or quota, no file descriptors): writes fail
//!   with [`Error::Retrying`] while the `strata-recover` thread retries the
//!   failed work with a backoff from 100 ms to 1 s. Once a retry succeeds
//!   the error clears and writes resume, with no reopen. The retry is in
//!   `db/recovery.rs`, with why it is safe.
//! - *Fatal* (anything else: `EIO`, corruption): writes fail with
//!   [`Error::Background`] until the database is reopened, which replays
//!   what is really on disk.
//!
//! A write whose WAL append failed returns the error and is never applied to
//! the memtable, so no reader sees it; recovery cuts its bytes off the log.
//!
//! # Recovery
//!
//! `open` replays the MANIFEST (tables), then every WAL at or after the
//! manifest's log number into memtables, writes what it recovered to L0
//! tables, and starts a new WAL. Only the newest WAL and the MANIFEST may
//! end in a torn record; what counts as damage, what each
//! [`RecoveryMode`](crate::RecoveryMode) does with it, and why an open never
//! deletes what it cannot prove obsolete are in `db/open.rs`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::WriteBatch;
use crate::blob::BlobWriter;
use crate::compaction::picker;
use crate::error::{Error, Result};
use crate::file_name;
use crate::fs::Dir;
use crate::health::Health;
use crate::iter::KeyBounds;
use crate::iterator::{Iter, ReadView};
use crate::memtable::{ChunkPool, Memtable};
use crate::options::{Options, WriteOptions};
use crate::recovery_report::RecoveryReport;
use crate::snapshot::Snapshot;
use crate::stats::{Counters, LevelStats, Stats, TableInfo};
use crate::version::{Version, VersionSet, NUM_LEVELS};
use crate::wal::LogWriter;

mod background;
mod checkpoint;
mod open;
mod recovery;
mod repair;
mod write;

pub use repair::RepairReport;

use background::build_table;
use recovery::BgError;
use write::Waiter;

/// The body of a background thread.
type BackgroundLoop = fn(&Core);

/// Everything a read needs, swapped as a unit when a memtable is frozen or flushed.
pub(crate) struct SuperVersion {
    pub(crate) mem: Arc<Memtable>,
    /// Frozen memtables waiting for their flush, newest first.
    pub(crate) imms: Vec<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
    pub(crate) counters: Arc<Counters>,
}

/// An open database. Cheap to clone; every clone is the same database, and it
/// closes (joining its background thread and syncing the WAL) when the last
/// clone is dropped. Snapshots and iterators hold their own view and keep
/// working after that.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// use strata_engine::{Db, Options};
/// let db = Db::open(dir.path(), Options::default())?;
/// db.put(b"k", b"v1")?;
/// let snap = db.snapshot();
/// db.put(b"k", b"v2")?;
/// assert_eq!(snap.get(b"k")?.as_deref(), Some(&b"v1"[..]));
/// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"v2"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Db {
    inner: Arc<Owner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.core.dir)
            .finish()
    }
}

/// Owns the background threads; dropping it shuts the database down.
struct Owner {
    core: Arc<Core>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Core {
    dir: Dir,
    options: Options,
    super_version: RwLock<Arc<SuperVersion>>,
    /// Highest sequence whose write is wholly in the memtable: the read horizon.
    visible_seq: AtomicU64,
    /// Writers waiting to commit; the front one leads.
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    /// The WAL; held by the leader for its whole group and by memtable rotation.
    log: Mutex<LogState>,
    versions: Mutex<VersionSet>,
    bg: Mutex<BgState>,
    /// Signalled when a memtable is frozen (work for the flusher), when the
    /// table version changes (work for the compactor, room for stalled
    /// writers), on a background error and on shutdown.
    bg_cv: Condvar,
    /// Held for the whole of a compaction, background or manual, so that two
    /// never pick the same tables. Holds the per-level rotation pointers.
    compaction: Mutex<[Vec<u8>; NUM_LEVELS]>,
    /// Set on shutdown so that a running compaction gives up early.
    cancel: AtomicBool,
    /// A flushed memtable's memory, kept for the next memtable (see
    /// `memtable::arena`): up to `write_buffer_size`.
    chunks: Arc<ChunkPool>,
    counters: Arc<Counters>,
    /// What the open that started this database recovered past.
    recovery_report: RecoveryReport,
    /// Holds the flock on `LOCK` for as long as the database is open.
    _lock: Box<dyn std::fmt::Debug + Send + Sync>,
}

struct LogState {
    wal: LogWriter,
    /// The WAL's blob file, created at the first value of at least
    /// `blob_threshold` (see `db/write`): it holds those values, the WAL
    /// their pointers.
    vlog: Option<BlobWriter>,
    /// Sequence of the last write appended to the WAL.
    last_seq: u64,
    /// Set when an append to or a sync of `wal` failed: the length up to
    /// which it holds whole records. Recovery cuts the rest off and moves
    /// writes to a fresh WAL (see `recovery`).
    damaged: Option<u64>,
}

impl LogState {
    /// Makes every appended record durable: the blob file first, so that a
    /// synced WAL record never points at a value that is not.
    fn sync(&mut self) -> Result<()> {
        if let Some(vlog) = &mut self.vlog {
            vlog.sync()?;
        }
        self.wal.sync()
    }
}

#[derive(Default)]
struct BgState {
    /// Set once a background job fails; writes are refused while it is.
    error: Option<BgError>,
    shutdown: bool,
    /// Bumped whenever the table version changes, so that the compactor
    /// never sleeps through the change that gave it work.
    version_changes: u64,
    /// A flush job is running (until its memtable is freed).
    flushing: bool,
}

impl Db {
    /// Opens (or, with `create_if_missing`, creates) the database in `path`
    /// and recovers every write acknowledged before the last close or crash.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        options.validate()?;
        let dir = Dir::new(options.file_system.clone(), path.as_ref().to_path_buf());
        if options.create_if_missing {
            crate::fs::create_dir_durably(&**dir.fs(), &dir).map_err(|e| Error::io(&dir, e))?;
        }
        let lock = lock_dir(&dir)?;
        let open::Recovered {
            versions,
            version,
            wal,
            log_number,
            last_seq,
            report,
        } = open::recover(&dir, &options)?;

        let counters = Arc::new(Counters::default());
        let chunks = ChunkPool::new(options.write_buffer_size);
        let core = Arc::new(Core {
            super_version: RwLock::new(Arc::new(SuperVersion {
                mem: Arc::new(Memtable::with_pool(log_number, &chunks)),
                imms: Vec::new(),
                version,
                counters: counters.clone(),
            })),
            visible_seq: AtomicU64::new(last_seq),
            queue: Mutex::new(VecDeque::new()),
            log: Mutex::new(LogState {
                wal,
                vlog: None,
                last_seq,
                damaged: None,
            }),
            versions: Mutex::new(versions),
            bg: Mutex::new(BgState::default()),
            bg_cv: Condvar::new(),
            compaction: Mutex::new(Default::default()),
            cancel: AtomicBool::new(false),
            chunks,
            counters,
            recovery_report: report,
            _lock: lock,
            dir,
            options,
        });
        // From here on, dropping `owner` stops whatever threads were started.
        let owner = Owner {
            core: core.clone(),
            threads: Mutex::new(Vec::new()),
        };
        let loops: [(&str, BackgroundLoop); 3] = [
            ("strata-flush", Core::flush_loop),
            ("strata-compact", Core::compaction_loop),
            ("strata-recover", Core::recovery_loop),
        ];
        for (name, body) in loops {
            let core = core.clone();
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&core))
                .map_err(|e| Error::io(&owner.core.dir, e))?;
            owner.threads.lock().push(handle);
        }
        Ok(Db {
            inner: Arc::new(owner),
        })
    }

    /// Sets `key` to `value` (without fsync; see [`Db::write`] for durability).
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        // Kind byte and two varint lengths of at most 5 bytes each.
        let mut batch = WriteBatch::with_capacity(11 + key.len() + value.len());
        batch.put(key, value);
        self.write(batch, &WriteOptions::default())
    }

    /// Removes `key` (a no-op if it is absent).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch, &WriteOptions::default())
    }

    /// Removes every key in `start..end` (`start` included, `end` not) with
    /// one record, however many keys the range holds: reads, scans and
    /// snapshots taken after it no longer see them, and compaction drops
    /// them (see `range_del`). `start > end` is refused; `start == end`
    /// deletes nothing.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
    /// for k in ["a", "b", "c", "d"] {
    ///     db.put(k, "x")?;
    /// }
    /// db.delete_range("b", "d")?;
    /// let keys: Vec<Vec<u8>> = db.iter().map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, [b"a", b"d"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete_range(&self, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete_range(start, end);
        self.write(batch, &WriteOptions::default())
    }

    /// Applies every operation of `batch` atomically: a reader or a recovery
    /// sees all of them or none. With `sync`, returns only once the batch is
    /// on stable storage.
    pub fn write(&self, batch: WriteBatch, options: &WriteOptions) -> Result<()> {
        self.inner.core.write(batch, options.sync)
    }

    /// The newest value of `key`, if it has one.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.core.read_view().get(key.as_ref())
    }

    /// Entries with keys in `range`, in key order (or reversed, with
    /// `.rev()`), as of the moment of the call.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
    /// for k in ["a", "b", "c", "d"] {
    ///     db.put(k, "x")?;
    /// }
    /// let keys: Vec<Vec<u8>> = db.range(&b"b"[..]..).rev().map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, [b"d", b"c", b"b"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range<K: AsRef<[u8]>>(&self, range: impl std::ops::RangeBounds<K>) -> Iter {
        self.inner.core.read_view().range(range)
    }

    /// Entries whose keys start with `prefix`, in key order (double-ended).
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        self.inner.core.read_view().prefix(prefix.as_ref())
    }

    /// Every entry, in key order (double-ended), as of the moment of the
    /// call.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
    /// db.put("b", "2")?;
    /// db.put("a", "1")?;
    /// let all: Vec<(Vec<u8>, Vec<u8>)> = db.iter().collect::<Result<_, _>>()?;
    /// assert_eq!(all, [(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter(&self) -> Iter {
        self.range::<&[u8]>(..)
    }

    /// A consistent, read-only view of the database as of now. O(1); it
    /// never blocks writers, and it keeps the memtables and tables it needs
    /// alive until it is dropped.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.inner.core.read_view())
    }

    /// Writes the memtable to a table and waits until every frozen memtable
    /// is flushed, so that nothing needs the WAL for recovery.
    pub fn flush(&self) -> Result<()> {
        self.inner.core.flush()
    }

    /// Compacts every table holding keys in `range` down to the deepest
    /// level in use, after flushing the memtable, dropping overwritten
    /// versions and tombstones that no reader needs. Runs in the caller's
    /// thread; background compaction waits meanwhile.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"a", b"1")?;
    /// db.delete(b"a")?;
    /// db.compact_range::<&[u8]>(..)?;
    /// assert_eq!(db.stats().table_bytes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact_range<K: AsRef<[u8]>>(
        &self,
        range: impl std::ops::RangeBounds<K>,
    ) -> Result<()> {
        self.inner
            .core
            .compact_range(&KeyBounds::from_range(&range))
    }

    /// Flushes the memtable, then waits until no level is due for
    /// compaction and no compaction is running: the tree as reads will find
    /// it once writes stop.
    pub fn wait_for_compactions(&self) -> Result<()> {
        self.inner.core.flush()?;
        self.inner.core.wait_for_compactions()
    }

    /// A report on the tree's shape, the I/O done so far and the writers held
    /// back (counted since this open); see [`Stats`].
    pub fn stats(&self) -> Stats {
        self.inner.core.stats()
    }

    /// Every live table, level by level (L0 newest first, deeper levels in
    /// key order).
    pub fn live_tables(&self) -> Vec<TableInfo> {
        let version = self.inner.core.super_version.read().version.clone();
        (0..NUM_LEVELS)
            .flat_map(|level| {
                version.files(level).iter().map(move |f| TableInfo {
                    level,
                    number: f.meta.number,
                    size: f.meta.size,
                    smallest_key: f.smallest_user_key().to_vec(),
                    largest_key: f.largest_user_key().to_vec(),
                })
            })
            .collect()
    }

    /// Syncs the WAL: every write made so far, with or without
    /// [`WriteOptions::sync`], survives a power cut once this returns `Ok`.
    /// Fails with the background error while writes are refused (a write
    /// that failed may have left the WAL short of it).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"k", b"v")?; // not synced by itself
    /// db.sync_wal()?; // now it is
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_wal(&self) -> Result<()> {
        self.inner.core.sync_wal()
    }

    /// Closes the database, reporting what dropping it cannot: waits for
    /// the background threads, syncs the WAL, and answers the first error
    /// of either (or a background error that stopped writes). Only the last
    /// handle can close it: while clones are open this fails with
    /// [`Error::InvalidArgument`], and the database stays open through
    /// them.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use strata_engine::{Db, Options};
    /// let db = Db::open(dir.path(), Options::default())?;
    /// let other = db.clone();
    /// assert!(other.close().is_err()); // `db` still holds it open
    /// db.put(b"k", b"v")?;
    /// db.close()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.inner) {
            Ok(mut owner) => owner.shut_down(),
            Err(_) => Err(Error::InvalidArgument(
                "other handles to the database are open".into(),
            )),
        }
    }

    /// The error every write fails with while background work is stopped:
    /// [`Error::Retrying`] while the database retries a transient failure by
    /// itself, [`Error::Background`] after a fatal one (reopening the
    /// database then retries the work). Reads are served either way.
    pub fn background_error(&self) -> Option<Error> {
        self.inner.core.background_error()
    }

    /// Whether writes are accepted now, and if not, whether they will come
    /// back by themselves; see [`Health`] for an example.
    pub fn health(&self) -> Health {
        self.inner.core.health()
    }

    /// What this open found damaged on disk and got past (a torn tail, or
    /// what the [`RecoveryMode`](crate::RecoveryMode) let it skip), and the
    /// files it moved into `lost/` instead of deleting. Empty after a clean
    /// open; see [`RecoveryReport`].
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.core.recovery_report
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.core.dir
    }
}

impl Owner {
    /// Stops the background threads and syncs the WAL, so that writes made
    /// without `sync` reach the disk; the first error, if any. Doing it
    /// again does nothing more.
    fn shut_down(&mut self) -> Result<()> {
        self.core.bg.lock().shutdown = true;
        self.core.cancel.store(true, Ordering::Relaxed);
        self.core.bg_cv.notify_all();
        for handle in self.threads.lock().drain(..) {
            // A panicked thread has nothing left to clean up: the WAL and
            // the manifest still describe every acknowledged write.
            let _ = handle.join();
        }
        self.core.sync_wal()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // A failure cannot be reported from drop (`Db::close` can), and
        // unsynced data is still in the OS page cache.
        let _ = self.shut_down();
    }
}

impl Core {
    fn read_view(&self) -> ReadView {
        // Both under the lock: see the module docs.
        let sv = self.super_version.read();
        let seq = self.visible_seq.load(Ordering::Acquire);
        ReadView::new(sv.clone(), seq)
    }

    fn background_error(&self) -> Option<Error> {
        self.bg.lock().error.as_ref().map(BgError::write_error)
    }

    fn health(&self) -> Health {
        self.bg
            .lock()
            .error
            .as_ref()
            .map_or(Health::Ok, BgError::health)
    }

    fn stats(&self) -> Stats {
        let sv = self.super_version.read().clone();
        let work = *self.counters.levels.lock();
        let levels = (0..NUM_LEVELS)
            .map(|level| {
                let w = work.get(level).copied().unwrap_or_default();
                LevelStats {
                    tables: sv.version.files(level).len(),
                    bytes: sv.version.level_bytes(level),
                    score: picker::score(&sv.version, &self.options, level),
                    read_upper_bytes: w.read_upper,
                    read_lower_bytes: w.read_lower,
                    written_bytes: w.written,
                    compactions: w.compactions,
                    trivial_moves: w.trivial_moves,
                    busy: Duration::from_micros(w.micros),
                }
            })
            .collect();
        let mut stats = Stats::from_counters(&self.counters, levels);
        stats.memtable_bytes = sv.mem.approximate_size() as u64;
        stats.immutable_memtables = sv.imms.len();
        for live in sv.version.blobs.values() {
            stats.blob_files += 1;
            stats.blob_bytes += live.file.meta.bytes;
            stats.blob_garbage_bytes += live.garbage.bytes;
        }
        stats.background_error = self.background_error().map(|e| e.to_string());
        if let Some(cache) = self.versions.lock().block_cache() {
            (stats.block_cache_hits, stats.block_cache_misses) = cache.hits_and_misses();
            stats.block_cache_bytes = cache.bytes();
            stats.block_cache_capacity = cache.capacity();
        }
        stats
    }
}

/// Takes the directory's `LOCK` so that two openers never share the files.
fn lock_dir(dir: &Dir) -> Result<Box<dyn std::fmt::Debug + Send + Sync>> {
    let path = file_name::lock_path(dir);
    dir.fs().lock(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked(dir.to_path_buf()),
        _ => Error::io(&path, e),
    })
}
