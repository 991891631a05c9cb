//! Background errors and the recovery from transient ones, after RocksDB's
//! `ErrorHandler`: a failure that [`Error::is_retryable`] classifies as
//! transient (a full disk, no file descriptors) suspends writes while the
//! `strata-recover` thread retries the failed work with a backoff; once a
//! retry succeeds the error clears and writes resume. Any other failure is
//! sticky until the database is reopened. The flush and compaction threads
//! pause while an error is set, so the retry is the only background work.
//!
//! # What a retry does
//!
//! 0. It writes, syncs and deletes a [`SPACE_PROBE_BYTES`] file. Without
//!    this, a retry that needs no space (a WAL append failed with nothing
//!    yet to flush) would succeed on a disk that is still full, and writes
//!    would come back only to fail again.
//! 1. If a WAL append or sync failed, the log may end in part of the failed
//!    record (and after a failed sync the kernel may have dropped unsynced
//!    pages), so it takes no more records. The retry cuts the log back to
//!    its last whole record, then moves writes to a fresh WAL and freezes
//!    the memtable, so that the flush below makes the damaged log obsolete.
//! 2. It flushes every frozen memtable. A flush deletes its memtable's WAL
//!    only after the manifest edit that replaces it is synced.
//! 3. If a background compaction failed, it runs the most overdue
//!    compaction, if one is still due.
//!
//! Each step either completes or leaves things as they were, so a failed
//! retry is simply tried again.
//!
//! # Why a crash at any point replays cleanly
//!
//! Open accepts a torn record only at the end of the *newest* WAL (what a
//! crash mid-append leaves); anywhere else it is corruption. Until step 1
//! the damaged log is still the newest (writes are refused, so nothing
//! follows the torn record), and replay stops at the tear. The cut is made
//! durable before the fresh WAL is created, so by the time the damaged log
//! is no longer the newest it ends at a record boundary. The failed record
//! is gone either way once step 1 ran; before that, a crash may replay a
//! record whose sync failed, whole (a batch is one record): its writers got
//! an error, which promises nothing about a crash.
//!
//! Nothing acknowledged is lost: an acknowledged write is in the memtable
//! (flushed by step 2 before writes resume), or in a table.

use std::time::{Duration, Instant};

use super::Core;
use crate::compaction::picker;
use crate::error::{Error, Result};
use crate::file_name;
use crate::health::Health;
use crate::stats::Counters;

/// Wait before the first retry: long enough not to spin on a disk that is
/// still full, short enough that writes come back soon after space does.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The backoff doubles up to this: a retry of a large flush writes a lot
/// before it fails again, and a second is still a short outage.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Room a retry must find before it runs: two WAL blocks. Less than that
/// and the next write would fail again at once.
pub(crate) const SPACE_PROBE_BYTES: usize = 64 * 1024;

/// The background job that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    /// A WAL append or sync of the write path.
    Write,
    Flush,
    Compaction,
    /// A retry by the recovery thread.
    Retry,
}

/// The database's background error: why writes are refused.
pub(super) struct BgError {
    /// The latest failure (for a fatal error, the first fatal one).
    cause: Error,
    retryable: bool,
    /// A background compaction failed: a retry must run one too.
    redo_compaction: bool,
    /// Failures recorded while this error was set; a retry clears the error
    /// only if none came in while it ran.
    failures: u64,
}

impl BgError {
    /// What a write fails with while this error is set.
    pub(super) fn write_error(&self) -> Error {
        if self.retryable {
            Error::Retrying(self.cause.to_string())
        } else {
            Error::Background(self.cause.to_string())
        }
    }

    pub(super) fn health(&self) -> Health {
        let reason = self.cause.to_string();
        if self.retryable {
            Health::Retrying { reason }
        } else {
            Health::Fatal { reason }
        }
    }
}

impl Core {
    /// Records that `job` failed with `e`, which stops writes. A fatal error
    /// is never replaced: it is what the operator must see.
    pub(super) fn set_background_error(&self, e: Error, job: Job) {
        Counters::add(&self.counters.background_errors, 1);
        let retryable = e.is_retryable();
        let redo_compaction = job == Job::Compaction;
        let mut bg = self.bg.lock();
        match &mut bg.error {
            Some(current) if !current.retryable => {}
            Some(current) => {
                current.cause = e;
                current.retryable = retryable;
                current.redo_compaction |= redo_compaction;
                current.failures += 1;
            }
            None => {
                bg.error = Some(BgError {
                    cause: e,
                    retryable,
                    redo_compaction,
                    failures: 0,
                });
            }
        }
        self.bg_cv.notify_all();
    }

    /// The body of the `strata-recover` thread: sleeps until a retryable
    /// background error is set, then retries the failed work with a backoff
    /// until it succeeds, the error turns fatal, or the database closes.
    pub(super) fn recovery_loop(&self) {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let (failures, redo_compaction) = {
                let mut bg = self.bg.lock();
                loop {
                    if bg.shutdown {
                        return;
                    }
                    if bg.error.as_ref().is_some_and(|e| e.retryable) {
                        break;
                    }
                    delay = FIRST_RETRY_DELAY;
                    self.bg_cv.wait(&mut bg);
                }
                let deadline = Instant::now() + delay;
                // Woken by every version change too; only the deadline and
                // shutdown end the wait.
                while !bg.shutdown && !self.bg_cv.wait_until(&mut bg, deadline).timed_out() {}
                match &bg.error {
                    _ if bg.shutdown => return,
                    Some(e) if e.retryable => (e.failures, e.redo_compaction),
                    _ => continue,
                }
            };
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            match self.retry_failed_work(redo_compaction) {
                Ok(()) => self.clear_background_error(failures),
                Err(e) => self.set_background_error(e, Job::Retry),
            }
        }
    }

    /// The steps in the module docs.
    fn retry_failed_work(&self, redo_compaction: bool) -> Result<()> {
        file_name::probe_space(&self.dir, SPACE_PROBE_BYTES)?;
        self.replace_damaged_wal()?;
        self.flush_frozen_memtables()?;
        if redo_compaction {
            let mut pointers = self.compaction.lock();
            let version = self.super_version.read().version.clone();
            if let Some(c) = picker::pick(&version, &self.options, &mut pointers) {
                self.run_compaction(&c, true)?;
            }
        }
        Ok(())
    }

    /// Step 1: if the WAL is damaged, cuts it back to its last whole record
    /// and moves writes to a fresh WAL, freezing the memtable.
    fn replace_damaged_wal(&self) -> Result<()> {
        let mut log = self.log.lock();
        let Some(whole_len) = log.damaged else {
            return Ok(());
        };
        // First, and durably: see "Why a crash at any point replays cleanly".
        log.wal.truncate(whole_len)?;
        // The frozen memtable's pointers into the WAL's blob file must be
        // durable before its flush installs the file.
        if let Some(vlog) = &mut log.vlog {
            vlog.sync()?;
        }
        let (number, wal) = self.create_wal()?;
        self.switch_wal(&mut log, number, wal);
        log.damaged = None;
        Ok(())
    }

    /// Step 2: flushes every frozen memtable, oldest first, in this thread.
    fn flush_frozen_memtables(&self) -> Result<()> {
        loop {
            let imm = {
                let mut bg = self.bg.lock();
                // The flush thread may still be finishing a job it took
                // before the error was set.
                while bg.flushing {
                    self.bg_cv.wait(&mut bg);
                }
                let Some(imm) = self.super_version.read().imms.last().cloned() else {
                    return Ok(());
                };
                bg.flushing = true;
                imm
            };
            self.run_flush(imm)?;
        }
    }

    /// Clears the error after a successful retry, unless it turned fatal or
    /// another failure came in meanwhile (that failed work was not retried),
    /// or the database is closing (a compaction may have given up early).
    fn clear_background_error(&self, failures_before_retry: u64) {
        let mut bg = self.bg.lock();
        let retried_all = bg
            .error
            .as_ref()
            .is_some_and(|e| e.retryable && e.failures == failures_before_retry);
        if retried_all && !bg.shutdown {
            bg.error = None;
            Counters::add(&self.counters.recoveries, 1);
            self.bg_cv.notify_all();
        }
    }
}
