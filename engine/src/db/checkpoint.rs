//! [`Db::checkpoint`]: a consistent copy of an open database in another
//! directory, openable as a database of its own (RocksDB's `Checkpoint`).
//!
//! 1. The memtable is flushed, so every write acknowledged before the call
//!    is in a table and the copy needs no WAL.
//! 2. Under the versions lock, the current version is taken (held, so that
//!    no compaction deletes one of its tables while they are copied) with
//!    the one edit that describes it and the counters.
//! 3. Each table and blob file is hard-linked into the new directory (tables never change
//!    once written, so both databases can share the file), or copied and
//!    synced where a link cannot be made (another file system).
//! 4. A MANIFEST holding that edit is written and synced, `CURRENT` is
//!    pointed at it, and the directory is synced.
//!
//! The copy holds every write acknowledged before the call, and perhaps
//! some made during it (those that reached the flushed memtable), never a
//! torn write batch: a batch is applied to one memtable whole. A failed
//! checkpoint removes the directory it created.

use std::io::ErrorKind;
use std::path::Path;

use super::Db;
use crate::blob::blob_path;
use crate::error::{Error, Result};
use crate::file_name::{self, table_path};
use crate::fs::{Appender, FileSystem};
use crate::version::set::write_manifest;

impl Db {
    /// Writes a consistent copy of the database into `dir`, which must not
    /// exist, as of this call (module doc); open it with [`Db::open`].
    /// Writers are not blocked, apart from the flush that makes room in the
    /// memtable.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use strata_engine::{Db, Options};
    /// let db = Db::open(dir.path().join("live"), Options::default())?;
    /// db.put(b"k", b"v")?;
    /// db.checkpoint(dir.path().join("backup"))?;
    /// db.put(b"k", b"newer")?;
    /// let copy = Db::open(dir.path().join("backup"), Options::default())?;
    /// assert_eq!(copy.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let core = &self.inner.core;
        let dir = core.dir.with_path(dir.as_ref().to_path_buf());
        let fs = dir.fs();
        if fs.exists(&dir) {
            return Err(Error::InvalidArgument(format!(
                "checkpoint directory {} already exists",
                dir.display()
            )));
        }
        core.flush()?;
        let (version, mut edit) = core.versions.lock().checkpoint_state();
        crate::fs::create_dir_durably(&**fs, &dir).map_err(|e| Error::io(&dir, e))?;
        let written = (|| {
            for file in version.levels.iter().flatten() {
                let number = file.meta.number;
                link_or_copy(
                    &**fs,
                    &table_path(&core.dir, number),
                    &table_path(&dir, number),
                )?;
            }
            for &number in version.blobs.keys() {
                link_or_copy(
                    &**fs,
                    &blob_path(&core.dir, number),
                    &blob_path(&dir, number),
                )?;
            }
            // Every table of the copy is numbered below the live database's
            // next file number, so the manifest takes that number.
            let manifest_number = edit.next_file_number.unwrap_or(1);
            edit.next_file_number = Some(manifest_number + 1);
            write_manifest(&dir, manifest_number, &edit)?;
            file_name::sync_dir(&dir)
        })();
        if written.is_err() {
            let _ = fs.remove_dir_all(&dir);
        }
        written
    }
}

/// Hard-links `from` at `to`, or copies it (and syncs the copy) where the
/// file system cannot link it there.
fn link_or_copy(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<()> {
    match fs.hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::CrossesDevices | ErrorKind::Unsupported) => {
            copy(fs, from, to)
        }
        Err(e) => Err(Error::io(to, e)),
    }
}

/// Copies `from` to a new file `to`, a megabyte at a time, and syncs the copy.
fn copy(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<()> {
    let src = fs.open(from).map_err(|e| Error::io(from, e))?;
    let mut out = Appender::create(fs, to, 0)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read_at(&mut buf, out.len())
            .map_err(|e| Error::io(from, e))?;
        if n == 0 {
            return out.sync();
        }
        out.write(buf.get(..n).unwrap_or_default())?;
    }
}
