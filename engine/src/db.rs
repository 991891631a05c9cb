//! The database: open and recovery, the group-commit write path, reads,
//! back-pressure, and the background flush and compaction threads; the
//! recovery from background errors is in `db/recovery.rs`.
//!
//! # Write path
//!
//! Writers queue up; the writer at the head of the queue is the *leader*. It
//! takes the batches of the writers queued behind it (up to
//! [`MAX_GROUP_BYTES`]), gives them consecutive sequence numbers, appends them
//! to the WAL as one record, fsyncs once if any of them asked for `sync`,
//! inserts them into the memtable, publishes the new last sequence to readers,
//! and wakes the group. The next writer in the queue then leads. So N
//! concurrent sync writers cost one `write` and one `fsync`, not N.
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
//! # Back-pressure
//!
//! When L0 reaches `level0_slowdown_trigger` tables, each write group waits
//! 1 ms, handing the disk to compaction gradually; at `level0_stop_trigger`
//! tables, or when `max_immutable_memtables` frozen memtables wait for their
//! flush, writers stop until the background catches up. Both are counted in
//! [`Stats`].
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
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{BatchRecords, WriteBatch};
use crate::blob::{self, BlobMeta, BlobWriter};
use crate::compaction::{self, picker, Compaction};
use crate::error::{Error, Result};
use crate::file_name;
use crate::health::Health;
use crate::iter::KeyBounds;
use crate::iterator::{Iter, ReadView};
use crate::key::{append_internal_key, ParsedKey, ValueKind, MAX_SEQUENCE};
use crate::memtable::{ChunkPool, Memtable};
use crate::options::{Options, WriteOptions};
use crate::recovery_report::RecoveryReport;
use crate::snapshot::Snapshot;
use crate::sstable::TableBuilder;
use crate::stats::{as_micros, Counters, LevelStats, LevelWork, Stats, TableInfo};
use crate::version::{FileMeta, Version, VersionEdit, VersionSet, NUM_LEVELS};
use crate::wal::LogWriter;

mod checkpoint;
mod open;
mod recovery;
mod repair;

pub use repair::RepairReport;

use recovery::{BgError, Job};

/// A leader stops adding followers' batches to its group past this size, so
/// that one huge group does not delay the writers at its head for long.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// The body of a background thread.
type BackgroundLoop = fn(&Core);

/// How long a write group waits once L0 reaches the slowdown trigger.
const SLOWDOWN_DELAY: Duration = Duration::from_millis(1);

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
    dir: PathBuf,
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
    _lock: File,
}

struct LogState {
    wal: LogWriter,
    /// Sequence of the last write appended to the WAL.
    last_seq: u64,
    /// Set when an append to or a sync of `wal` failed: the length up to
    /// which it holds whole records. Recovery cuts the rest off and moves
    /// writes to a fresh WAL (see `recovery`).
    damaged: Option<u64>,
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

/// One writer waiting in the commit queue.
struct Waiter {
    batch: Mutex<Option<WriteBatch>>,
    sync: bool,
    size: usize,
    state: Mutex<WaiterState>,
    cv: Condvar,
}

enum WaiterState {
    Waiting,
    /// This writer is now at the head of the queue and must lead a group.
    Lead,
    Done(Result<()>),
}

impl Db {
    /// Opens (or, with `create_if_missing`, creates) the database in `path`
    /// and recovers every write acknowledged before the last close or crash.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        options.validate()?;
        let dir = path.as_ref().to_path_buf();
        if options.create_if_missing {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
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

    /// Checks every record of `batch` against the limits and returns the
    /// batch's key and value bytes.
    fn check_batch(&self, batch: &WriteBatch) -> Result<u64> {
        let mut bytes = 0u64;
        for record in batch
            .records()
            .map_err(|e| Error::InvalidArgument(e.0.into()))?
        {
            let record = record.map_err(|e| Error::InvalidArgument(e.0.into()))?;
            if record.key.len() > self.options.max_key_size {
                return Err(Error::InvalidArgument(format!(
                    "key of {} bytes exceeds max_key_size ({})",
                    record.key.len(),
                    self.options.max_key_size
                )));
            }
            if record.value.len() > self.options.max_value_size {
                return Err(Error::InvalidArgument(format!(
                    "value of {} bytes exceeds max_value_size ({})",
                    record.value.len(),
                    self.options.max_value_size
                )));
            }
            bytes += (record.key.len() + record.value.len()) as u64;
        }
        Ok(bytes)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let user_bytes = self.check_batch(&batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        let me = Arc::new(Waiter {
            size: batch.approximate_size(),
            batch: Mutex::new(Some(batch)),
            sync,
            state: Mutex::new(WaiterState::Waiting),
            cv: Condvar::new(),
        });
        let leader = {
            let mut queue = self.queue.lock();
            queue.push_back(me.clone());
            queue.len() == 1
        };
        let result = if leader {
            self.lead_group(&me)
        } else {
            let mut state = me.state.lock();
            loop {
                match std::mem::replace(&mut *state, WaiterState::Waiting) {
                    WaiterState::Waiting => me.cv.wait(&mut state),
                    WaiterState::Done(result) => break result,
                    WaiterState::Lead => {
                        drop(state);
                        break self.lead_group(&me);
                    }
                }
            }
        };
        if result.is_ok() {
            Counters::add(&self.counters.user_bytes, user_bytes);
        }
        result
    }

    /// Commits the group at the head of the queue (`me` is its first member).
    fn lead_group(&self, me: &Arc<Waiter>) -> Result<()> {
        let mut log = self.log.lock();
        let result = self.make_room(&mut log, false).map(|()| {
            let group: Vec<Arc<Waiter>> = {
                let queue = self.queue.lock();
                let mut bytes = 0;
                queue
                    .iter()
                    .take_while(|w| {
                        bytes += w.size;
                        bytes <= MAX_GROUP_BYTES || Arc::ptr_eq(w, me)
                    })
                    .cloned()
                    .collect()
            };
            let committed = self.commit(&mut log, &group);
            (group.len(), committed)
        });
        drop(log);
        let (group_len, result) = match result {
            Ok((n, committed)) => (n, committed),
            // Could not make room: only the leader's own write fails; the
            // next writer leads and will meet the same error itself.
            Err(e) => (1, Err(e)),
        };
        let mut queue = self.queue.lock();
        for _ in 0..group_len {
            if let Some(w) = queue.pop_front() {
                if !Arc::ptr_eq(&w, me) {
                    *w.state.lock() = WaiterState::Done(result.clone());
                    w.cv.notify_one();
                }
            }
        }
        if let Some(next) = queue.front() {
            *next.state.lock() = WaiterState::Lead;
            next.cv.notify_one();
        }
        result
    }

    /// Appends the group's batches to the WAL as one record, syncs if asked,
    /// applies them to the memtable and publishes them to readers.
    fn commit(&self, log: &mut LogState, group: &[Arc<Waiter>]) -> Result<()> {
        let mut merged: Option<WriteBatch> = None;
        let mut sync = false;
        for w in group {
            if let Some(batch) = w.batch.lock().take() {
                match merged.as_mut() {
                    // A group of one (the common case without contention) is not copied.
                    None => merged = Some(batch),
                    Some(m) => m.append(&batch),
                }
            }
            sync |= w.sync;
        }
        let mut merged = merged.unwrap_or_default();
        let first = log.last_seq + 1;
        let last = log.last_seq + u64::from(merged.count());
        if last > MAX_SEQUENCE {
            return Err(Error::InvalidArgument("sequence numbers exhausted".into()));
        }
        merged.set_sequence(first);
        Counters::add(&self.counters.wal_bytes, merged.encoded().len() as u64);
        let whole_len = log.wal.len();
        let appended = log.wal.add_record(merged.encoded()).and_then(|()| {
            if sync {
                log.wal.sync()
            } else {
                Ok(())
            }
        });
        if let Err(e) = appended {
            // The WAL may now end in part of this record, and after a failed
            // sync the kernel may have dropped earlier unsynced pages: nothing
            // more may go into this log. The group is not applied (its
            // writers get the error), and writes stop until recovery has cut
            // the record off and moved to a fresh WAL. Its sequence numbers
            // are reused by later writes: the record that held them is gone.
            log.damaged = Some(whole_len);
            self.set_background_error(e.clone(), Job::Write);
            return Err(e);
        }
        let mem = self.super_version.read().mem.clone();
        // The batch was encoded here a moment ago, so a decoding error is a
        // bug, not damage; it is still reported as where the record went.
        let wal = log.wal.path().to_owned();
        let at = |e: crate::error::DecodeError| e.at(&wal, whole_len);
        for record in BatchRecords::decode(merged.encoded()).map_err(at)? {
            mem.insert(&record.map_err(at)?)?;
        }
        log.last_seq = last;
        self.visible_seq.store(last, Ordering::Release);
        Ok(())
    }

    fn background_error(&self) -> Option<Error> {
        self.bg.lock().error.as_ref().map(BgError::write_error)
    }

    /// Syncs the WAL whatever the state, then reports a background error
    /// first: while one stands, a failed write may have left the WAL short
    /// of what was asked of it.
    fn sync_wal(&self) -> Result<()> {
        let synced = self.log.lock().wal.sync();
        match self.background_error() {
            Some(e) => Err(e),
            None => synced,
        }
    }

    fn health(&self) -> Health {
        self.bg
            .lock()
            .error
            .as_ref()
            .map_or(Health::Ok, BgError::health)
    }

    /// Ensures the memtable can take the next group (see "Back-pressure" in
    /// the module docs): delays the group once L0 reaches the slowdown
    /// trigger, stops while the memtable is full and no room can be made, and
    /// freezes the memtable once full (or, with `force`, whenever it holds
    /// anything).
    fn make_room(&self, log: &mut LogState, force: bool) -> Result<()> {
        let mut slowed = force;
        let mut stopped_at: Option<Instant> = None;
        let result = loop {
            if let Some(e) = self.background_error() {
                break Err(e);
            }
            let sv = self.super_version.read().clone();
            let l0 = sv.version.files(0).len();
            if !slowed && l0 >= self.options.level0_slowdown_trigger {
                slowed = true;
                let start = Instant::now();
                std::thread::sleep(SLOWDOWN_DELAY);
                Counters::add_time(
                    &self.counters.slowdowns,
                    &self.counters.slowdown_micros,
                    start.elapsed(),
                );
                continue;
            }
            let full = sv.mem.approximate_size() >= self.options.write_buffer_size;
            if !(full || force && !sv.mem.is_empty()) {
                break Ok(());
            }
            if self.must_stop(&sv) {
                stopped_at.get_or_insert_with(Instant::now);
                let mut bg = self.bg.lock();
                // Checked again under the lock that every notifier takes.
                let still = self.must_stop(&self.super_version.read());
                if still && bg.error.is_none() && !bg.shutdown {
                    self.bg_cv.wait(&mut bg);
                }
                continue;
            }
            break self.rotate(log);
        };
        if let Some(start) = stopped_at {
            Counters::add_time(
                &self.counters.stops,
                &self.counters.stop_micros,
                start.elapsed(),
            );
        }
        result
    }

    /// True when a full memtable cannot be frozen yet: too many frozen ones
    /// wait for the flusher, or L0 is at its stop trigger.
    fn must_stop(&self, sv: &SuperVersion) -> bool {
        sv.imms.len() >= self.options.max_immutable_memtables
            || sv.version.files(0).len() >= self.options.level0_stop_trigger
    }

    /// Freezes the memtable and starts a new one with its own WAL.
    /// REQUIRES: `log` is the locked log state (so the memtable cannot change).
    fn rotate(&self, log: &mut LogState) -> Result<()> {
        let (number, wal) = self.create_wal()?;
        // The frozen memtable's log must be durable before a later log can be,
        // or a power loss could keep newer writes and lose older ones.
        if let Err(e) = log.wal.sync() {
            // Unused and empty; a reopen would delete it too.
            let _ = std::fs::remove_file(file_name::log_path(&self.dir, number));
            // After a failed sync the log may have lost unsynced writes that
            // the memtable still holds: recovery must flush them.
            log.damaged = Some(log.wal.len());
            self.set_background_error(e.clone(), Job::Write);
            return Err(e);
        }
        self.switch_wal(log, number, wal);
        Ok(())
    }

    /// Creates the next WAL file, durably named in the directory.
    fn create_wal(&self) -> Result<(u64, LogWriter)> {
        let number = self.versions.lock().new_file_number();
        let path = file_name::log_path(&self.dir, number);
        let wal = LogWriter::create(&path)?;
        if let Err(e) = file_name::sync_dir(&self.dir) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok((number, wal))
    }

    /// Makes `wal` (numbered `number`) the WAL, moves the memtable to the
    /// frozen ones (where the flusher finds it) and starts an empty one whose
    /// writes go to the new WAL.
    fn switch_wal(&self, log: &mut LogState, number: u64, wal: LogWriter) {
        log.wal = wal;
        {
            // Built from the super version under the write lock: a flush or
            // compaction may have swapped in a new table version meanwhile.
            let mut sv = self.super_version.write();
            let mut imms = Vec::with_capacity(sv.imms.len() + 1);
            imms.push(sv.mem.clone());
            imms.extend(sv.imms.iter().cloned());
            *sv = Arc::new(SuperVersion {
                mem: Arc::new(Memtable::with_pool(number, &self.chunks)),
                imms,
                version: sv.version.clone(),
                counters: self.counters.clone(),
            });
        }
        let _bg = self.bg.lock();
        self.bg_cv.notify_all();
    }

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

    fn flush(&self) -> Result<()> {
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
    fn flush_loop(&self) {
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
    fn run_flush(&self, imm: Arc<Memtable>) -> Result<()> {
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
                let _ = std::fs::remove_file(path);
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
        match std::fs::remove_file(&old_log) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&old_log, e)),
        }
    }

    /// The body of the `strata-compact` thread: runs the most overdue
    /// compaction until none is due, then sleeps until the version changes.
    /// Pauses while a background error is set (the recovery thread retries a
    /// compaction that failed).
    fn compaction_loop(&self) {
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
    fn run_compaction(&self, c: &Compaction, allow_move: bool) -> Result<()> {
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
                let _ = std::fs::remove_file(path);
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

    fn compact_range(&self, bounds: &KeyBounds) -> Result<()> {
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

    fn wait_for_compactions(&self) -> Result<()> {
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

/// Writes `mem` to table `number` and returns its manifest entry.
/// What a flush wrote: a table, and the blob file of its separated values
/// if it had any (see `blob`).
pub(crate) struct Flushed {
    pub(crate) table: FileMeta,
    pub(crate) blob: Option<BlobMeta>,
}

impl Flushed {
    /// The edit that adds both files to L0.
    fn edit(self) -> VersionEdit {
        VersionEdit {
            added: vec![(0, self.table)],
            added_blobs: self.blob.into_iter().collect(),
            ..VersionEdit::default()
        }
    }
}

/// Writes `mem` to table `number`; values of at least the blob threshold go
/// to blob file `blob_number`, which is created only if one does.
fn build_table(
    dir: &Path,
    options: &Options,
    number: u64,
    blob_number: u64,
    mem: &Memtable,
) -> Result<Flushed> {
    let path = file_name::table_path(dir, number);
    let mut blobs: Option<BlobWriter> = None;
    let built = (|| {
        let mut builder =
            TableBuilder::create(&path, options.block_size, options.bloom_bits_per_key)?
                .with_compression(options.compression_for_level(0));
        let mut separated_key = Vec::new();
        mem.for_each(|ikey, value| {
            let separable = ParsedKey::parse(ikey).ok().filter(|k| {
                k.kind == ValueKind::Value
                    && options.blob_threshold.is_some_and(|t| value.len() >= t)
            });
            let Some(k) = separable else {
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
        }),
        Err(e) => {
            // Partial files are garbage; left behind, the next open would set them aside in lost/.
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(blob::blob_path(dir, blob_number));
            Err(e)
        }
    }
}

/// Takes the directory's `LOCK` so that two openers never share the files.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = file_name::lock_path(dir);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}
