//! [`MappedLog`]: a write-ahead log appended by copying into a shared
//! memory mapping of the file instead of one `write(2)` per record (RocksDB's
//! `allow_mmap_writes`, for the log).
//!
//! # Why
//!
//! Without a per-write fsync, a WAL append only has to put the record in
//! the kernel's hands, so that it survives the process's death. A `write(2)`
//! of a 130-byte record costs ~1.3 us here, most of a put's time; a copy
//! into a `MAP_SHARED` mapping costs ~0.17 us, page faults included. The
//! guarantee is the same: the copied bytes are in the page cache the moment
//! they are copied (a `kill -9` right after keeps them), reach the disk with
//! the kernel's writeback, and are made durable by `sync` (`fdatasync`,
//! which on Linux writes back pages dirtied through a mapping as it does
//! written ones).
//!
//! # Layout on disk
//!
//! The file grows in windows of [`WINDOW`] bytes. Each window is reserved
//! with `fallocate(2)` (which also extends the file) before it is mapped, so
//! a full disk is an error from [`append`](WritableFile::append), never a
//! `SIGBUS` when a page is first touched. Where a whole window does not fit
//! any more, just the append's bytes are reserved: an append fails for lack
//! of space only when `write` would have. Past the last appended byte the
//! file holds zeros up to the window's end; dropping the log cuts the file
//! to what was appended. After a crash the zeros stay: the log reader takes
//! a zero-filled tail that starts where a fragment would as the end of a WAL
//! (see `wal::reader`). Where the file system cannot reserve space at all,
//! appends are plain `write`s.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use memmap2::{MmapMut, MmapOptions};

use super::WritableFile;

/// How much the file grows, and how much of it is mapped, at a time.
pub(crate) const WINDOW: u64 = 1 << 20;

/// A log file appended through a mapping of its last [`WINDOW`] bytes.
pub(crate) struct MappedLog {
    file: File,
    /// The window the next append copies into, starting at `map_start`.
    map: Option<MmapMut>,
    map_start: u64,
    /// Bytes appended: the offset of the next one.
    len: u64,
    /// The file system cannot reserve space, or the file cannot be mapped:
    /// appends are `write`s.
    plain: bool,
}

impl MappedLog {
    /// Takes over a new, empty file opened for reading and writing. Nothing
    /// is reserved before the first append.
    pub(crate) fn new(file: File) -> Self {
        MappedLog {
            file,
            map: None,
            map_start: 0,
            len: 0,
            plain: false,
        }
    }

    /// Replaces the mapping with one from `len` on, reserved on disk first:
    /// a whole [`WINDOW`], or the `need` bytes of the append where the disk
    /// cannot hold a window any more.
    fn map_next(&mut self, need: u64) -> io::Result<()> {
        self.map = None;
        let window = match reserve(&self.file, self.len, WINDOW) {
            Ok(()) => WINDOW,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && need < WINDOW => {
                reserve(&self.file, self.len, need)?;
                need
            }
            Err(e) => return Err(e),
        };
        let len = usize::try_from(window).map_err(|_| io::ErrorKind::InvalidInput)?;
        // A file that cannot be mapped for writing is appended to with
        // `write` instead (`Unsupported`); the reserved zeros are harmless.
        // SAFETY: the mapped range lies inside the file (`reserve` extended
        // it), and nothing truncates the file below it while it is mapped:
        // the engine owns the file, and `truncate` and `drop` unmap first.
        // Other processes changing a database's files are outside the
        // engine's contract, as for every file it maps.
        let map = unsafe {
            MmapOptions::new()
                .offset(self.len)
                .len(len)
                .map_mut(&self.file)
                .map_err(|_| io::ErrorKind::Unsupported)?
        };
        self.map = Some(map);
        self.map_start = self.len;
        Ok(())
    }
}

/// Reserves `len` bytes at `offset` and extends the file over them;
/// `Unsupported` where the file system cannot.
#[cfg(target_os = "linux")]
fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    loop {
        // SAFETY: a plain syscall on a descriptor this `File` owns; it reads
        // no memory of ours.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Err(io::ErrorKind::Unsupported.into()),
            _ => return Err(e),
        }
    }
}

/// Elsewhere a zero-filled extension is not a reservation, and a mapped
/// page might fail to find space when first written: refused.
#[cfg(not(target_os = "linux"))]
fn reserve(_: &File, _: u64, _: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

impl WritableFile for MappedLog {
    fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.plain {
                self.file.write_all_at(data, self.len)?;
                self.len += data.len() as u64;
                return Ok(());
            }
            let at = usize::try_from(self.len - self.map_start).unwrap_or(usize::MAX);
            let room = match self.map.as_mut().and_then(|m| m.get_mut(at..)) {
                Some(room) if !room.is_empty() => room,
                _ => {
                    match self.map_next(data.len() as u64) {
                        Err(e) if e.kind() == io::ErrorKind::Unsupported => self.plain = true,
                        mapped => mapped?,
                    }
                    continue;
                }
            };
            let n = room.len().min(data.len());
            let (now, rest) = data.split_at(n);
            let (into, _) = room.split_at_mut(n);
            into.copy_from_slice(now);
            self.len += n as u64;
            data = rest;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        // Covers the mapped pages too (module docs), and the file's size.
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // Unmapped first: a page past the new end would fault (`SIGBUS`).
        self.map = None;
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        super::os::start_writeback(&self.file, offset, len);
    }
}

impl Drop for MappedLog {
    /// Cuts off the reserved zeros. Not synced: if the cut is lost, the
    /// reader still takes the zeros for the end.
    fn drop(&mut self) {
        self.map = None;
        let _ = self.file.set_len(self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, OsFs};

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn appends_across_windows_read_back_and_drop_cuts_the_reserved_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.log");
        let mut log = OsFs.create_log(&path).unwrap();
        let mut expect = Vec::new();
        // Records of odd sizes, one larger than a window.
        for (i, size) in [130usize, 4093, 1, WINDOW as usize + 17, 70_000]
            .into_iter()
            .enumerate()
        {
            let record = pattern(size, i as u8);
            log.append(&record).unwrap();
            expect.extend_from_slice(&record);
        }
        log.sync().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk.len() > expect.len(), "the window is reserved ahead");
        assert_eq!(&on_disk[..expect.len()], &expect[..]);
        assert!(on_disk[expect.len()..].iter().all(|&b| b == 0));
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }

    #[test]
    fn truncate_then_append_continues_at_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.log");
        let mut log = OsFs.create_log(&path).unwrap();
        log.append(&pattern(10_000, 1)).unwrap();
        log.truncate(4_000).unwrap();
        log.append(b"tail").unwrap();
        drop(log);
        let mut expect = pattern(10_000, 1);
        expect.truncate(4_000);
        expect.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }

    #[test]
    fn appended_bytes_are_in_the_file_without_a_sync_or_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.log");
        let mut log = OsFs.create_log(&path).unwrap();
        log.append(b"acknowledged").unwrap();
        // As a killed process leaves it: mapped, unsynced, not cut.
        std::mem::forget(log);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, WINDOW);
        assert_eq!(&on_disk[..12], b"acknowledged");
    }

    #[test]
    fn where_nothing_can_be_reserved_appends_are_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.log");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let mut log = MappedLog::new(file);
        log.plain = true;
        log.append(b"one ").unwrap();
        log.append(b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one two");
        log.truncate(3).unwrap();
        log.append(b"!").unwrap();
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), b"one!");
    }
}
