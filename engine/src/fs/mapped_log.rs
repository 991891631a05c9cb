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
//! (see `wal::reader`). Where the file system cannot reserve space, or a
//! reservation does not keep a later store from needing space (copy-on-write
//! file systems), appends are plain `write`s.
//!
//! # Order of the bytes
//!
//! Each append is copied front to back ([`copy_front_to_back`]), so that a
//! process killed mid-copy leaves what `write` would: a prefix of the
//! append. A power cut may leave more: pages of the mapping reach the disk
//! independently, so a page dirtied after the last `sync` may read back
//! with zeros from where its last writeback left it to its end, while a
//! later page holds data. The reader takes such zeros in the newest WAL for
//! its end (see `wal::reader`).

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
    /// The file system cannot reserve space, a reservation there does not
    /// keep a store from needing space ([`reservation_holds`]), or the file
    /// cannot be mapped: appends are `write`s.
    plain: bool,
}

impl MappedLog {
    /// Takes over a new, empty file opened for reading and writing. Nothing
    /// is reserved before the first append.
    pub(crate) fn new(file: File) -> Self {
        MappedLog {
            plain: !reservation_holds(&file),
            file,
            map: None,
            map_start: 0,
            len: 0,
        }
    }

    /// Replaces the mapping with one from `len` on, reserved on disk first:
    /// a whole [`WINDOW`], or the `need` bytes of the append where the disk
    /// cannot hold a window any more.
    fn map_next(&mut self, need: u64) -> io::Result<()> {
        self.map = None;
        let window = match reserve(&self.file, self.len, WINDOW) {
            Ok(()) => WINDOW,
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                    && need < WINDOW =>
            {
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

/// Whether space `fallocate` reserved in `file` is still there when a
/// mapped page is first written back. True on the file systems that write
/// a file's blocks in place (ext4, XFS: a new file shares no blocks), in
/// memory (tmpfs), and through overlayfs (whose writable layer is one of
/// those in practice; an overlay on a copy-on-write layer is not told
/// apart). Copy-on-write file systems (btrfs, bcachefs, ZFS)
/// need new space at every write, so a full disk could raise `SIGBUS` at
/// a store: there, and wherever the answer is unknown, appends are
/// `write`s.
#[cfg(target_os = "linux")]
fn reservation_holds(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const IN_PLACE: [u32; 4] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // XFS
        0x0102_1994, // tmpfs
        0x794C_7630, // overlayfs
    ];
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fstatfs` fills the buffer it is given on success, and it is
    // read only then.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialized by the successful call above.
    let kind = unsafe { st.assume_init() }.f_type;
    // Magic numbers are 32-bit; `f_type`'s width varies by target.
    #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
    let kind = kind as u32;
    IN_PLACE.contains(&kind)
}

#[cfg(not(target_os = "linux"))]
fn reservation_holds(_: &File) -> bool {
    false
}

/// Elsewhere a zero-filled extension is not a reservation, and a mapped
/// page might fail to find space when first written: refused.
#[cfg(not(target_os = "linux"))]
fn reserve(_: &File, _: u64, _: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Copies `src` into the mapped `dst` (of the same length) front to back,
/// so that a process killed mid-copy leaves a prefix of `src` in the file,
/// then the zeros that were there: the shape the log reader takes for an
/// append cut short.
///
/// `copy_from_slice` would not: `memcpy` stores in whatever order is
/// fastest (glibc's stores a small copy's first 32 bytes, a fragment's
/// header, last), and a kill at a page fault halfway leaves a zero header
/// before written bytes, or the end of a record written and its middle
/// not: damage the reader must report, for a record that was never
/// acknowledged. Volatile stores are kept in program order by the
/// compiler, and a kill interrupts the store sequence between two of its
/// instructions, every earlier store already in the page cache.
fn copy_front_to_back(dst: &mut [u8], src: &[u8]) {
    const WORD: usize = std::mem::size_of::<usize>();
    let n = dst.len().min(src.len());
    let out = dst.as_mut_ptr();
    // Single bytes up to a word boundary of the destination, aligned
    // machine words (one store instruction each), then the last bytes.
    let head = out.align_offset(WORD).min(n);
    let words = (n - head) / WORD;
    let (first, rest) = src.split_at(head);
    let (middle, last) = rest.split_at(words * WORD);
    // SAFETY: every store is to `dst[i]` for some `i < n <= dst.len()`, and
    // the word stores are to `dst[head + WORD * k..][..WORD]`, aligned by
    // the choice of `head`.
    unsafe {
        for (i, &b) in first.iter().enumerate() {
            std::ptr::write_volatile(out.add(i), b);
        }
        for (k, chunk) in middle.chunks_exact(WORD).enumerate() {
            let mut word = [0u8; WORD];
            word.copy_from_slice(chunk);
            let to = out.add(head + WORD * k).cast::<usize>();
            std::ptr::write_volatile(to, usize::from_ne_bytes(word));
        }
        for (i, &b) in last.iter().enumerate() {
            std::ptr::write_volatile(out.add(head + WORD * words + i), b);
        }
    }
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
            copy_front_to_back(into, now);
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
    use std::path::PathBuf;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// A new log in a fresh directory, as `OsFs::create_log` makes it; says
    /// so where this file system makes it a plain one.
    fn new_log() -> (tempfile::TempDir, PathBuf, MappedLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.log");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let log = MappedLog::new(file);
        if log.plain {
            eprintln!("the temporary directory's file system is not mapped: testing plain writes");
        }
        (dir, path, log)
    }

    #[test]
    fn appends_across_windows_read_back_and_drop_cuts_the_reserved_zeros() {
        let (_dir, path, mut log) = new_log();
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
        if !log.plain {
            assert!(on_disk.len() > expect.len(), "the window is reserved ahead");
        }
        assert_eq!(&on_disk[..expect.len()], &expect[..]);
        assert!(on_disk[expect.len()..].iter().all(|&b| b == 0));
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }

    #[test]
    fn truncate_then_append_continues_at_the_cut() {
        let (_dir, path, mut log) = new_log();
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
        let (_dir, path, mut log) = new_log();
        let plain = log.plain;
        log.append(b"acknowledged").unwrap();
        // As a killed process leaves it: mapped, unsynced, not cut.
        std::mem::forget(log);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, if plain { 12 } else { WINDOW });
        assert_eq!(&on_disk[..12], b"acknowledged");
    }

    #[test]
    fn where_nothing_can_be_reserved_appends_are_writes() {
        let (_dir, path, mut log) = new_log();
        log.plain = true;
        log.append(b"one ").unwrap();
        log.append(b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one two");
        log.truncate(3).unwrap();
        log.append(b"!").unwrap();
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), b"one!");
    }

    #[test]
    fn the_ordered_copy_copies_every_length_at_every_alignment() {
        let src = pattern(100, 7);
        for at in 0..16 {
            for n in 0..=src.len() - 16 {
                let mut dst = [0u8; 100];
                copy_front_to_back(&mut dst[at..at + n], &src[..n]);
                assert_eq!(&dst[at..at + n], &src[..n], "at {at}, {n} bytes");
                assert!(dst[..at].iter().chain(&dst[at + n..]).all(|&b| b == 0));
            }
        }
    }
}
