//! Early writeback of files being appended (RocksDB's `bytes_per_sync` and
//! `wal_bytes_per_sync`).
//!
//! Without it, the kernel leaves a growing WAL, blob file or table dirty in
//! the page cache until the fsync that makes it durable (a flush, a memtable
//! rotation) writes all of it at once: the disk idles while the file grows,
//! then the caller of the fsync (a writer, at rotation) waits for the whole
//! file. Asking for writeback of every whole megabyte behind the end as the
//! file grows keeps the disk busy in step with the writes, and leaves the
//! fsync little to do.
//!
//! Only whole pages behind the end are handed over, so no later append
//! writes into a page that is under writeback (which would wait for it).
//! The request is advice: durability still comes from the fsync alone, and
//! a failed request changes nothing, so its error is ignored.

use std::fs::File;

/// How much a file grows between two writeback requests.
const EVERY: u64 = 1 << 20;
/// Requests cover whole pages of this size.
const PAGE: u64 = 4096;

/// Tracks how much of one file has been handed to writeback.
#[derive(Debug, Default)]
pub(crate) struct Writeback {
    started: u64,
}

impl Writeback {
    /// Call after appending, with the file's length now.
    pub(crate) fn appended(&mut self, file: &File, len: u64) {
        let end = len - len % PAGE;
        if end < self.started + EVERY {
            return;
        }
        start_writeback(file, self.started, end - self.started);
        self.started = end;
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor this `File` owns; it
    // reads no memory of ours.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_whole_pages_once_a_megabyte_has_grown() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::default();
        wb.appended(&file, EVERY - 1);
        assert_eq!(wb.started, 0, "less than a megabyte: nothing yet");
        wb.appended(&file, EVERY + PAGE + 7);
        assert_eq!(wb.started, EVERY + PAGE, "up to the last whole page");
        wb.appended(&file, 2 * EVERY);
        assert_eq!(wb.started, EVERY + PAGE);
        wb.appended(&file, 3 * EVERY);
        assert_eq!(wb.started, 3 * EVERY);
    }
}
