//! The files of a database directory, their names, and the atomic switch of `CURRENT`.
//!
//! ```text
//! LOCK              held (flock) while a Db is open
//! CURRENT           one line: the name of the live MANIFEST
//! MANIFEST-000005   version edits (log format)
//! 000007.log        write-ahead log
//! 000008.sst        table
//! CURRENT.tmp       a CURRENT being written; never read
//! SPACE.probe       written and deleted by a recovery retry to prove the disk has room
//! lost/             files an open or a repair would not delete (see below)
//! ```
//!
//! `lost/` holds the tables, logs and manifests that recovery no longer
//! needs but could not prove worthless: an open that met damage moves what
//! it would otherwise delete there, and [`Db::repair`](crate::Db::repair)
//! moves the files it could not read there. Nothing reads `lost/` again; it
//! is evidence for an operator, who may delete it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs::{self, Dir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Log(u64),
    Table(u64),
    Blob(u64),
    Manifest(u64),
    Current,
    Lock,
    Temp,
}

pub(crate) fn log_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.log"))
}

pub(crate) fn table_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

pub(crate) fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

pub(crate) fn current_path(dir: &Path) -> PathBuf {
    dir.join("CURRENT")
}

/// The file a recovery retry writes to prove the disk has room again.
const SPACE_PROBE: &str = "SPACE.probe";

/// Writes `bytes` to a fresh file in `dir`, syncs it and deletes it: an
/// error (`ENOSPC`, `EMFILE`) says the disk or the process has no room yet.
pub(crate) fn probe_space(dir: &Dir, bytes: usize) -> Result<()> {
    let path = dir.join(SPACE_PROBE);
    let written = write_synced(dir, &path, &vec![0u8; bytes]);
    // Removed whatever happened: it holds nothing, and space is what is short.
    let removed = dir.fs().remove_file(&path);
    written?;
    removed.map_err(|e| Error::io(&path, e))
}

/// Writes `bytes` to `path` (replacing a leftover file of that name) and
/// syncs the file.
fn write_synced(dir: &Dir, path: &Path, bytes: &[u8]) -> Result<()> {
    match dir.fs().remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(path, e)),
        _ => {}
    }
    let mut file = fs::Appender::create(&**dir.fs(), path, 0)?;
    file.write(bytes)?;
    file.sync()
}

pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    dir.join("LOCK")
}

/// What a directory entry is, if it belongs to the database.
/// The highest file number among `files` (0 if none): new files are
/// numbered above it.
pub(crate) fn highest_number(files: &[(PathBuf, FileKind)]) -> u64 {
    files
        .iter()
        .filter_map(|(_, kind)| match kind {
            FileKind::Log(n) | FileKind::Table(n) | FileKind::Blob(n) | FileKind::Manifest(n) => {
                Some(*n)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

pub(crate) fn parse(name: &str) -> Option<FileKind> {
    let number = |s: &str| s.parse::<u64>().ok();
    match name {
        "CURRENT" => Some(FileKind::Current),
        "LOCK" => Some(FileKind::Lock),
        "CURRENT.tmp" | SPACE_PROBE => Some(FileKind::Temp),
        _ => {
            if let Some(n) = name.strip_prefix("MANIFEST-") {
                number(n).map(FileKind::Manifest)
            } else if let Some(n) = name.strip_suffix(".log") {
                number(n).map(FileKind::Log)
            } else if let Some(n) = name.strip_suffix(".sst") {
                number(n).map(FileKind::Table)
            } else if let Some(n) = name.strip_suffix(".blob") {
                number(n).map(FileKind::Blob)
            } else {
                None
            }
        }
    }
}

pub(crate) fn lost_dir(dir: &Path) -> PathBuf {
    dir.join("lost")
}

/// Moves `path` (a file in `dir`) into `dir/lost/`, under its own name or,
/// if that is taken by an earlier set-aside, with a `.N` suffix. Returns
/// where it went. The caller syncs `dir` afterwards.
pub(crate) fn set_aside(dir: &Dir, path: &Path) -> Result<PathBuf> {
    let fs = dir.fs();
    let lost = lost_dir(dir);
    fs.create_dir_all(&lost).map_err(|e| Error::io(&lost, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = lost.join(&name);
    let mut n = 1u32;
    while fs.exists(&target) {
        target = lost.join(format!("{name}.{n}"));
        n += 1;
    }
    fs.rename(path, &target).map_err(|e| Error::io(path, e))?;
    sync_dir(&dir.with_path(lost))?;
    Ok(target)
}

/// The database's files in `dir`, with what each is.
pub(crate) fn list(dir: &Dir) -> Result<Vec<(PathBuf, FileKind)>> {
    let entries = dir.fs().read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries
        .into_iter()
        .filter_map(|path| {
            let kind = path.file_name()?.to_str().and_then(parse)?;
            Some((path, kind))
        })
        .collect())
}

/// Makes directory entries (creations, renames, deletions) durable.
pub(crate) fn sync_dir(dir: &Dir) -> Result<()> {
    dir.fs().sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Points `CURRENT` at `MANIFEST-<number>` atomically: write a temporary
/// file, fsync it, rename it over `CURRENT`, fsync the directory. A crash
/// leaves either the old or the new `CURRENT`, never a torn one.
pub(crate) fn set_current(dir: &Dir, manifest_number: u64) -> Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let contents = format!("{}\n", manifest_name(manifest_number));
    write_synced(dir, &tmp, contents.as_bytes())?;
    let current = current_path(dir);
    dir.fs()
        .rename(&tmp, &current)
        .map_err(|e| Error::io(&current, e))?;
    sync_dir(dir)
}

/// The path of the MANIFEST that `CURRENT` names.
pub(crate) fn current_manifest(dir: &Dir) -> Result<PathBuf> {
    Ok(dir.join(manifest_name(read_current(dir)?)))
}

/// The manifest number named by `CURRENT`.
pub(crate) fn read_current(dir: &Dir) -> Result<u64> {
    let path = current_path(dir);
    let contents = fs::read_all(&**dir.fs(), &path).map_err(|e| Error::io(&path, e))?;
    std::str::from_utf8(&contents)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(|s| s.strip_prefix("MANIFEST-"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::corruption(&path, 0, "CURRENT does not name a manifest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/db");
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(parse(&name(log_path(dir, 7))), Some(FileKind::Log(7)));
        assert_eq!(
            parse(&name(table_path(dir, 1234567))),
            Some(FileKind::Table(1234567))
        );
        assert_eq!(parse(&manifest_name(3)), Some(FileKind::Manifest(3)));
        assert_eq!(parse("CURRENT"), Some(FileKind::Current));
        assert_eq!(parse("notes.txt"), None);
        assert_eq!(parse("x.log"), None);
    }

    #[test]
    fn current_switch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::os_dir(tmp.path());
        set_current(&dir, 5).unwrap();
        assert_eq!(read_current(&dir).unwrap(), 5);
        set_current(&dir, 9).unwrap();
        assert_eq!(read_current(&dir).unwrap(), 9);
        std::fs::write(current_path(&dir), "garbage").unwrap();
        assert!(read_current(&dir).unwrap_err().is_corruption());
        assert!(
            !dir.join("CURRENT.tmp").exists(),
            "the temporary file is renamed, not left behind"
        );
    }

    #[test]
    fn set_aside_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::os_dir(tmp.path());
        let first = dir.join("000007.log");
        std::fs::write(&first, "one").unwrap();
        let a = set_aside(&dir, &first).unwrap();
        std::fs::write(&first, "two").unwrap();
        let b = set_aside(&dir, &first).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        assert!(!first.exists());
        assert_eq!(parse("lost"), None, "the directory is not a database file");
    }
}
