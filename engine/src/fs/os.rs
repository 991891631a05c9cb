//! [`OsFs`]: the operating system's file system.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mapped_log::MappedLog;
use super::{FileBytes, FileSystem, RandomAccessFile, WritableFile};

/// The operating system's files: what [`Options`](crate::Options) uses
/// unless told otherwise.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl FileSystem for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(Box::new(OsWritable { file }))
    }

    /// Appends through a mapping (`fs/mapped_log.rs`) where the file system can
    /// reserve space ahead; elsewhere with `write`, as a file of
    /// [`create_new`](Self::create_new) does.
    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(MappedLog::new(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        Ok(Arc::new(OsReadable {
            file: File::open(path)?,
        }))
    }

    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        let file = File::open(path)?;
        // SAFETY: the engine maps only tables, which are written once,
        // synced and never modified or truncated afterwards, only unlinked
        // (which leaves a mapping valid). Repair renames tables, but only
        // while the database is closed.
        unsafe { FileBytes::map(&file) }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

struct OsWritable {
    file: File,
}

impl WritableFile for OsWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        start_writeback(&self.file, offset, len);
    }
}

/// [`WritableFile::start_writeback`] for a file of the OS.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a plain syscall on a file descriptor this `File` owns; it
        // reads no memory of ours. Advice only: its error changes nothing.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[derive(Debug)]
struct OsReadable {
    file: File,
}

impl RandomAccessFile for OsReadable {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    #[cfg(unix)]
    fn read_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset
                .checked_add(buf.len() as u64)
                .and_then(|at| libc::off_t::try_from(at).ok())
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            let spare = buf.spare_capacity_mut();
            // SAFETY: pread writes at most `spare.len()` bytes into `spare`,
            // memory this Vec owns and nothing else refers to; it needs no
            // initialised bytes there.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    at,
                )
            };
            match usize::try_from(n) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                // SAFETY: the kernel initialised the `n` bytes after the
                // Vec's length, and `n <= spare.len()` keeps it in capacity.
                Ok(n) => unsafe { buf.set_len(buf.len() + n) },
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_vec_at_reads_exactly_the_bytes_asked_or_says_the_file_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = OsFs.open(&path).unwrap();
        assert_eq!(file.read_vec_at(50_000, 7).unwrap(), bytes[7..50_007]);
        assert_eq!(file.read_vec_at(0, 100_000).unwrap(), Vec::<u8>::new());
        assert_eq!(file.read_vec_at(100, 99_900).unwrap(), bytes[99_900..]);
        let past = file.read_vec_at(101, 99_900).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }
}
