//! The file-system seam: every file the engine creates, reads, syncs, renames
//! or deletes goes through a [`FileSystem`] (leveldb's `Env`, RocksDB's
//! `FileSystem`), so that tests can run the engine on a file system that
//! remembers what was made durable and loses the rest.
//!
//! - [`OsFs`], the default: the operating system's files, tables mapped
//!   with `mmap`, write-ahead logs appended through a shared mapping
//!   (`mapped_log`), appends written back early (`sync_file_range`).
//! - [`MemFs`]: files in memory that model a power loss. Each file keeps
//!   what its last sync made durable, each directory what its last
//!   directory sync made durable; [`MemFs::cut_power_after`] makes every
//!   operation after the given count fail as if the machine had stopped,
//!   and [`MemFs::after_power_loss`] is the disk that machine boots with:
//!   synced bytes, durable names, and of each file's unsynced tail a random
//!   part (a torn write).
//!
//! ```
//! use std::sync::Arc;
//! use strata_engine::{fs::MemFs, Db, Options};
//!
//! let fs = MemFs::new();
//! let db = Db::open("/db", Options::default().file_system(Arc::new(fs.clone())))?;
//! db.put(b"k", b"v")?;
//! drop(db);
//! let db = Db::open("/db", Options::default().file_system(Arc::new(fs)))?;
//! assert_eq!(db.get(b"k")?.as_deref(), Some(&b"v"[..]));
//! # Ok::<(), strata_engine::Error>(())
//! ```

mod appender;
mod mapped_log;
mod mem;
mod os;

use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use appender::Appender;

/// The unit of the page cache's writeback: a log page dirtied after a
/// sync reaches the disk whole or not at all, independently of the others
/// (written into reserved space, a page not written back reads as zeros).
/// Larger pages only make the unit a multiple of this one; a drive that
/// tears a page into sectors is not modelled.
pub(crate) const PAGE: usize = 4096;
pub use mem::MemFs;
pub use os::OsFs;

/// The operations the engine needs from a file system. Paths are absolute
/// or relative to the process's working directory, as the caller gave the
/// database's directory. Errors are plain [`io::Error`]s; the engine adds
/// the path.
pub trait FileSystem: fmt::Debug + Send + Sync {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new, empty file for appending; fails if `path` exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Creates a new write-ahead log, failing if the file exists. As with
    /// [`create_new`](Self::create_new), each append must be in the
    /// operating system's hands when it returns (it survives the process's
    /// death). Unlike it, the file may hold zeros past the last append (space
    /// reserved ahead) until the writer is dropped: the WAL reader takes a
    /// zero-filled tail for the end of the log. Default: `create_new`.
    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.create_new(path)
    }
    /// Opens a file for reads at any offset.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>>;
    /// The whole of a file that no longer changes (a finished table), as
    /// bytes that stay valid after the file is unlinked.
    fn map(&self, path: &Path) -> io::Result<FileBytes>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The entries of `dir` (files and directories), as full paths.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// A file's length in bytes.
    fn file_size(&self, path: &Path) -> io::Result<u64>;
    /// Makes the creations, renames and deletions of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes `to` a second name of the file `from`.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing), held until
    /// the returned guard is dropped. A lock another holder has fails with
    /// [`io::ErrorKind::WouldBlock`].
    fn lock(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>>;
}

/// A file being written, by appends only.
pub trait WritableFile: Send + Sync {
    /// Appends `data` at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (used to remove a failed append).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Advice: the `len` bytes at `offset` will not change again and may
    /// be written to the disk now, ahead of the next [`sync`](Self::sync).
    /// Durability still comes from `sync` alone.
    fn start_writeback(&mut self, _offset: u64, _len: u64) {}
}

/// A file read at any offset (`pread`).
pub trait RandomAccessFile: fmt::Debug + Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The `len` bytes at `offset`, or [`io::ErrorKind::UnexpectedEof`] if
    /// the file ends first. An implementation may read into memory it never
    /// zeroed: a large value read on every request should not be written
    /// twice, once with zeroes and once with its bytes.
    fn read_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Fills `buf` from `offset`, or fails with
    /// [`io::ErrorKind::UnexpectedEof`] if the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = buf.get_mut(n..).unwrap_or_default();
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A whole file's bytes, from [`FileSystem::map`]: a read-only mapping of
/// the file, or a copy in memory.
pub struct FileBytes(Bytes);

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Box<[u8]>),
}

impl FileBytes {
    /// Bytes held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        FileBytes(Bytes::Owned(bytes.into_boxed_slice()))
    }

    /// Maps `file` read-only.
    ///
    /// # Safety
    ///
    /// The file must not be modified or truncated while the mapping lives
    /// (unlinking it is fine): the engine maps only finished tables.
    pub unsafe fn map(file: &std::fs::File) -> io::Result<Self> {
        // SAFETY: the caller promises the file does not change.
        Ok(FileBytes(Bytes::Mapped(unsafe {
            memmap2::Mmap::map(file)?
        })))
    }

    /// Tells the kernel that `start..end` will not be read again soon, so a
    /// mapping may drop its pages (they stay in the page cache).
    pub(crate) fn release(&self, start: usize, end: usize) {
        if let Bytes::Mapped(mmap) = &self.0 {
            // SAFETY: DontNeed on a private read-only file mapping only
            // drops pages; the next read maps them again from the file.
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Bytes::Mapped(m) => m,
            Bytes::Owned(b) => b,
        }
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.len())
    }
}

/// A database's directory on its file system. Derefs to the path, so that
/// file names are built from it as from a path.
#[derive(Clone, Debug)]
pub(crate) struct Dir {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
}

impl Dir {
    pub(crate) fn new(fs: Arc<dyn FileSystem>, path: PathBuf) -> Self {
        Dir { fs, path }
    }

    /// The same file system at another directory.
    pub(crate) fn with_path(&self, path: PathBuf) -> Self {
        Dir {
            fs: self.fs.clone(),
            path,
        }
    }

    pub(crate) fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }
}

/// The operating system's file system, for unit tests.
#[cfg(test)]
pub(crate) fn os() -> Arc<dyn FileSystem> {
    Arc::new(OsFs)
}

/// `path` on the operating system's file system, for unit tests.
#[cfg(test)]
pub(crate) fn os_dir(path: &Path) -> Dir {
    Dir::new(os(), path.to_path_buf())
}

impl Deref for Dir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl From<&Dir> for PathBuf {
    fn from(dir: &Dir) -> PathBuf {
        dir.path.clone()
    }
}

/// Reads a file front to back through a [`RandomAccessFile`] (log replay).
pub(crate) struct SequentialReader {
    file: Arc<dyn RandomAccessFile>,
    offset: u64,
}

impl SequentialReader {
    pub(crate) fn new(file: Arc<dyn RandomAccessFile>) -> Self {
        SequentialReader { file, offset: 0 }
    }
}

impl io::Read for SequentialReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Creates `dir` and its missing parents, and makes each new directory's
/// name durable in its parent: without that a power loss may take a new
/// database, or a finished checkpoint, with it.
pub(crate) fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .filter(|d| !d.as_os_str().is_empty())
        .take_while(|d| !fs.exists(d))
        .collect();
    fs.create_dir_all(dir)?;
    // Outermost first: a name is durable only under a durable parent.
    for parent in missing.iter().rev().filter_map(|d| d.parent()) {
        // A relative path's first directory is named in the working one.
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        fs.sync_dir(parent)?;
    }
    Ok(())
}

/// Reads a whole file.
pub(crate) fn read_all(fs: &dyn FileSystem, path: &Path) -> io::Result<Vec<u8>> {
    let len = usize::try_from(fs.file_size(path)?).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    fs.open(path)?.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}
