//! Buffered appends to a [`WritableFile`], with early writeback (RocksDB's
//! `bytes_per_sync` and `wal_bytes_per_sync`).
//!
//! Without early writeback, the kernel leaves a growing WAL, blob file or
//! table dirty in the page cache until the fsync that makes it durable (a
//! flush, a memtable rotation) writes all of it at once: the disk idles
//! while the file grows, then the caller of the fsync (a writer, at
//! rotation) waits for the whole file. Asking for writeback of every whole
//! megabyte behind the end as the file grows keeps the disk busy in step
//! with the writes, and leaves the fsync little to do.
//!
//! Only whole pages behind the end are handed over, so no later append
//! writes into a page that is under writeback (which would wait for it).

use std::path::{Path, PathBuf};

use super::{FileSystem, WritableFile};
use crate::error::{Error, Result};

/// How much a file grows between two writeback requests.
const EVERY: u64 = 1 << 20;
/// Requests cover whole pages of this size.
const PAGE: u64 = 4096;

/// A new file being appended to, through a buffer of `capacity` bytes (0:
/// every [`write`](Self::write) is one append, as the WAL wants).
pub(crate) struct Appender {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    buf: Vec<u8>,
    capacity: usize,
    /// Bytes handed to the file (the buffer not included).
    in_file: u64,
    /// Bytes handed to writeback so far.
    written_back: u64,
}

impl Appender {
    /// Creates the file; fails if it exists (files are never reused).
    pub(crate) fn create(fs: &dyn FileSystem, path: &Path, capacity: usize) -> Result<Self> {
        let file = fs.create_new(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::over(file, path, capacity))
    }

    /// Creates a write-ahead log through [`FileSystem::create_log`],
    /// unbuffered.
    pub(crate) fn create_log(fs: &dyn FileSystem, path: &Path) -> Result<Self> {
        let file = fs.create_log(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::over(file, path, 0))
    }

    fn over(file: Box<dyn WritableFile>, path: &Path, capacity: usize) -> Self {
        Appender {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(capacity),
            capacity,
            in_file: 0,
            written_back: 0,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far, buffered ones included: the offset of the next.
    pub(crate) fn len(&self) -> u64 {
        self.in_file + self.buf.len() as u64
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.buf.len() + bytes.len() <= self.capacity {
            self.buf.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush()?;
        if bytes.len() <= self.capacity {
            self.buf.extend_from_slice(bytes);
            Ok(())
        } else {
            self.append(bytes)
        }
    }

    /// Hands the buffer to the file.
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let appended = self.append(&buf);
        self.buf = buf;
        self.buf.clear();
        appended
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .append(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.in_file += bytes.len() as u64;
        let end = self.in_file - self.in_file % PAGE;
        if end >= self.written_back + EVERY {
            self.file
                .start_writeback(self.written_back, end - self.written_back);
            self.written_back = end;
        }
        Ok(())
    }

    /// Writes out the buffer and makes the whole file durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync().map_err(|e| Error::io(&self.path, e))
    }

    /// Cuts the file back to `len` bytes and makes the cut durable.
    /// REQUIRES: nothing is buffered (an unbuffered appender).
    pub(crate) fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .truncate(len)
            .and_then(|()| self.file.sync())
            .map_err(|e| Error::io(&self.path, e))?;
        self.in_file = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the writeback requests it is given.
    struct Recorder(Arc<Mutex<Vec<(u64, u64)>>>);

    impl WritableFile for Recorder {
        fn append(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn truncate(&mut self, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn start_writeback(&mut self, offset: u64, len: u64) {
            self.0.lock().unwrap().push((offset, len));
        }
    }

    #[test]
    fn writes_back_whole_pages_once_a_megabyte_has_grown() {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mut a = Appender {
            file: Box::new(Recorder(requests.clone())),
            path: PathBuf::from("f"),
            buf: Vec::new(),
            capacity: 0,
            in_file: 0,
            written_back: 0,
        };
        a.write(&vec![0; EVERY as usize - 1]).unwrap();
        assert!(requests.lock().unwrap().is_empty(), "less than a megabyte");
        a.write(&vec![0; PAGE as usize + 8]).unwrap();
        assert_eq!(*requests.lock().unwrap(), [(0, EVERY + PAGE)]);
        a.write(&vec![0; EVERY as usize - PAGE as usize]).unwrap();
        assert_eq!(requests.lock().unwrap().len(), 1, "not a megabyte more yet");
        a.write(&vec![0; EVERY as usize]).unwrap();
        assert_eq!(
            requests.lock().unwrap()[1],
            (EVERY + PAGE, 2 * EVERY - PAGE)
        );
    }

    #[test]
    fn buffers_small_writes_and_counts_them() {
        let fs = super::super::MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut a = Appender::create(&fs, Path::new("/d/f"), 8).unwrap();
        a.write(b"abc").unwrap();
        a.write(b"defgh").unwrap();
        a.write(b"0123456789").unwrap();
        a.write(b"z").unwrap();
        assert_eq!(a.len(), 19);
        a.sync().unwrap();
        assert_eq!(
            super::super::read_all(&fs, Path::new("/d/f")).unwrap(),
            b"abcdefgh0123456789z"
        );
    }
}
