//! The write path: group commit into the WAL and the memtable, and the
//! back-pressure that keeps writers from outrunning the background.
//!
//! # Group commit
//!
//! Writers queue up; the writer at the head of the queue is the *leader*. It
//! takes the batches of the writers queued behind it (up to
//! [`MAX_GROUP_BYTES`]), gives them consecutive sequence numbers, appends them
//! to the WAL as one record, fsyncs once if any of them asked for `sync`,
//! inserts them into the memtable, publishes the new last sequence to readers,
//! and wakes the group. The next writer in the queue then leads. So N
//! concurrent sync writers cost one `write` and one `fsync`, not N.
//!
//! # Back-pressure
//!
//! When L0 reaches `level0_slowdown_trigger` tables, each write group waits
//! 1 ms, handing the disk to compaction gradually; at `level0_stop_trigger`
//! tables, or when `max_immutable_memtables` frozen memtables wait for their
//! flush, writers stop until the background catches up. Both are counted in
//! [`Stats`](crate::Stats).
//!
//! A full memtable is frozen (*rotated*) under the WAL lock: the old WAL is
//! synced first, so that only the newest WAL can ever end torn, and writes
//! go on into a new memtable and a new WAL while the flush thread writes the
//! frozen one to a table.
//!
//! # Large values
//!
//! With `blob_threshold` set, the leader appends each value of at least the
//! threshold to the WAL's own blob file and logs a pointer in its place, so
//! the value is written once: not to the WAL and again to a blob file at
//! the flush. The blob file is synced whenever the WAL is, first; its bytes
//! count towards the memtable's size, so a memtable of pointers still
//! rotates and recovery replays a bounded amount.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::recovery::Job;
use super::{Core, LogState, SuperVersion};
use crate::batch::{BatchRecords, Record, WriteBatch};
use crate::blob::{BlobFile, BlobMeta, BlobWriter};
use crate::error::{Error, Result};
use crate::file_name;
use crate::key::{ValueKind, MAX_SEQUENCE};
use crate::memtable::Memtable;
use crate::stats::Counters;
use crate::wal::LogWriter;

/// A leader stops adding followers' batches to its group past this size, so
/// that one huge group does not delay the writers at its head for long.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// How long a write group waits once L0 reaches the slowdown trigger.
const SLOWDOWN_DELAY: Duration = Duration::from_millis(1);

/// One writer waiting in the commit queue.
pub(super) struct Waiter {
    batch: Mutex<Option<WriteBatch>>,
    sync: bool,
    size: usize,
    state: Mutex<WaiterState>,
    cv: Condvar,
}

pub(super) enum WaiterState {
    Waiting,
    /// This writer is now at the head of the queue and must lead a group.
    Lead,
    Done(Result<()>),
}

impl Core {
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
            if record.kind == ValueKind::BlobIndex {
                return Err(Error::InvalidArgument(
                    "a blob pointer in a write batch".into(),
                ));
            }
            if record.kind == ValueKind::RangeDeletion {
                if record.value.len() > self.options.max_key_size {
                    return Err(Error::InvalidArgument(format!(
                        "range end of {} bytes exceeds max_key_size ({})",
                        record.value.len(),
                        self.options.max_key_size
                    )));
                }
                if record.key > record.value {
                    return Err(Error::InvalidArgument(
                        "delete_range: the start is after the end".into(),
                    ));
                }
            } else if record.value.len() > self.options.max_value_size {
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

    pub(super) fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
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
        let whole_len = log.wal.len();
        let appended = self.separate_values(log, &mut merged).and_then(|()| {
            merged.set_sequence(first);
            log.wal.add_record(merged.encoded())?;
            // The record as it lies in the file, fragment headers included.
            Counters::add(&self.counters.wal_bytes, log.wal.len() - whole_len);
            if sync {
                log.sync()?;
            }
            Ok(())
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

    /// Moves the values of at least `blob_threshold` out of `batch` into
    /// the WAL's blob file, leaving pointers (kind `BlobIndex`) in their
    /// place: a large value is then written once before its flush (here)
    /// instead of twice (WAL, then blob file). The blob file is created at
    /// the first such value of a WAL, and its name made durable then.
    fn separate_values(&self, log: &mut LogState, batch: &mut WriteBatch) -> Result<()> {
        let Some(threshold) = self.options.blob_threshold else {
            return Ok(());
        };
        let records = || BatchRecords::decode(batch.encoded());
        let large = |r: &Record<'_>| r.kind == ValueKind::Value && r.value.len() >= threshold;
        let any_large = records()
            .map_err(|e| Error::InvalidArgument(e.0.into()))?
            .any(|r| r.is_ok_and(|r| large(&r)));
        if !any_large {
            return Ok(());
        }
        let vlog = match &mut log.vlog {
            Some(vlog) => vlog,
            None => {
                let number = self.versions.lock().new_file_number();
                let writer = BlobWriter::create_unbuffered(&self.dir, number)?;
                file_name::sync_dir(&self.dir)?;
                let reader = BlobFile::open(
                    &self.dir,
                    BlobMeta {
                        number,
                        ..BlobMeta::default()
                    },
                )?;
                self.super_version.read().mem.set_vlog(Arc::new(reader));
                log.vlog.insert(writer)
            }
        };
        let mut separated = WriteBatch::with_capacity(batch.approximate_size());
        for record in records().map_err(|e| Error::InvalidArgument(e.0.into()))? {
            let record = record.map_err(|e| Error::InvalidArgument(e.0.into()))?;
            if large(&record) {
                let pointer = vlog.add(record.value)?.encode();
                // Log bytes: written once, before any flush.
                Counters::add(&self.counters.wal_bytes, record.value.len() as u64);
                separated.push_record(&Record {
                    kind: ValueKind::BlobIndex,
                    value: &pointer,
                    ..record
                });
            } else {
                separated.push_record(&record);
            }
        }
        *batch = separated;
        Ok(())
    }

    /// Syncs the WAL whatever the state, then reports a background error
    /// first: while one stands, a failed write may have left the WAL short
    /// of what was asked of it.
    pub(super) fn sync_wal(&self) -> Result<()> {
        let synced = self.log.lock().sync();
        match self.background_error() {
            Some(e) => Err(e),
            None => synced,
        }
    }

    /// Ensures the memtable can take the next group (see "Back-pressure" in
    /// the module docs): delays the group once L0 reaches the slowdown
    /// trigger, stops while the memtable is full and no room can be made, and
    /// freezes the memtable once full (or, with `force`, whenever it holds
    /// anything).
    pub(super) fn make_room(&self, log: &mut LogState, force: bool) -> Result<()> {
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
        // The frozen memtable's log must be durable before a later log
        // exists: recovery accepts a torn tail only in the newest log, and a
        // power loss must not keep newer writes while losing older ones.
        if let Err(e) = log.sync() {
            // After a failed sync the log may have lost unsynced writes that
            // the memtable still holds: recovery must flush them.
            log.damaged = Some(log.wal.len());
            self.set_background_error(e.clone(), Job::Write);
            return Err(e);
        }
        let (number, wal) = self.create_wal()?;
        self.switch_wal(log, number, wal);
        Ok(())
    }

    /// Creates the next WAL file, durably named in the directory.
    pub(super) fn create_wal(&self) -> Result<(u64, LogWriter)> {
        let number = self.versions.lock().new_file_number();
        let path = file_name::log_path(&self.dir, number);
        let wal = LogWriter::create_wal(&**self.dir.fs(), &path, self.options.mapped_wal)?;
        if let Err(e) = file_name::sync_dir(&self.dir) {
            let _ = self.dir.fs().remove_file(&path);
            return Err(e);
        }
        Ok((number, wal))
    }

    /// Makes `wal` (numbered `number`) the WAL, moves the memtable to the
    /// frozen ones (where the flusher finds it) and starts an empty one whose
    /// writes go to the new WAL.
    pub(super) fn switch_wal(&self, log: &mut LogState, number: u64, wal: LogWriter) {
        log.wal = wal;
        // Synced with the old WAL (every caller did): the frozen memtable
        // keeps its reader.
        log.vlog = None;
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
}
