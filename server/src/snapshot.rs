//! Backups of one node: a snapshot directory that [`save`] writes from a
//! running node and [`restore`] turns into a fresh data dir, checking every
//! byte against the checksums [`save`] recorded.
//!
//! ```text
//! <dir>/snapshot.json   the manifest below, written last (a dir without it is no snapshot)
//! <dir>/node.json       the node's marker: its id, tokens, AVAILABLE (crate::marker)
//! <dir>/removals.json   the removals it knows, if any
//! <dir>/engine/         Db::checkpoint of its engine: tables, MANIFEST, CURRENT, no WAL
//! ```
//!
//! `snapshot.json` (format 1):
//!
//! ```text
//! {"format": 1, "node_id": "..", "cluster_id": "..", "created_unix_ms": u64,
//!  "generation": u64,            the node's gossip incarnation when saved
//!  "state": "AVAILABLE", "ring_digest": "..", "ring_members": ["id", ..], "tokens": n,
//!  "files": [{"path": "engine/000012.sst", "bytes": u64, "sha256": "<64 hex>"}, ..]}
//! ```
//!
//! `files` lists every other file of the snapshot, by a relative path with
//! `/` separators and only plain components: a manifest naming `..` or an
//! absolute path is refused, so a doctored snapshot cannot make a restore
//! write outside its data dir.
//!
//! The engine part is as consistent as [`strata_engine::Db::checkpoint`]
//! makes it: every write the node acknowledged before the save began. Hints
//! (`<data_dir>/hints/`) are left out: they are other nodes' writes in
//! transit, and a restored node's peers get theirs through repair.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::Storage;

/// The manifest's file name.
pub const MANIFEST: &str = "snapshot.json";
/// The layout version this build writes and reads.
pub const FORMAT: u32 = 1;
/// Files of the data dir, beside the engine, that a snapshot carries.
const MARKERS: [&str; 2] = ["node.json", "removals.json"];

/// Why a snapshot could not be saved, verified or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file could not be read, written or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The engine could not make its checkpoint.
    #[error("engine checkpoint: {0}")]
    Engine(#[from] crate::storage::StorageError),
    /// The target of a save exists, or the target of a restore holds files.
    #[error("{} {why}", path.display())]
    Target {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `snapshot.json` does not parse, is of another format, or names a
    /// path outside the snapshot.
    #[error("{}: {why}", path.display())]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file's size or SHA-256 is not the one the manifest recorded.
    #[error("{}: {what} is {found}, the snapshot recorded {expected}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// `size` or `sha256`.
        what: &'static str,
        /// What the manifest says.
        expected: String,
        /// What the file holds.
        found: String,
    },
}

/// Who a snapshot is of, as the node saw itself when saving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The node's id.
    pub node_id: String,
    /// Its cluster id.
    pub cluster_id: String,
    /// Its gossip incarnation.
    pub generation: u64,
    /// Its state (AVAILABLE).
    pub state: String,
    /// The digest of the ring it routed by.
    pub ring_digest: String,
    /// The ring's members.
    pub ring_members: Vec<String>,
    /// How many tokens the node holds.
    pub tokens: usize,
}

/// One file of a snapshot and its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Relative path, `/`-separated (module doc).
    pub path: String,
    /// Its length.
    pub bytes: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// `snapshot.json` (module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Who the snapshot is of.
    #[serde(flatten)]
    pub origin: Origin,
    /// When it was saved, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Every file but the manifest.
    pub files: Vec<FileSum>,
}

impl Manifest {
    /// Bytes of all the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Saves a snapshot of the node whose engine is `storage` and whose data
/// dir is `data_dir` into `dir`, which must not exist (its parent must).
/// Blocks for the checkpoint and for reading every file once to checksum
/// it: call it from a blocking context. `progress` hears the bytes
/// checksummed so far and the total, as the checksums advance. A failed
/// save removes `dir`.
pub fn save(
    storage: &Storage,
    data_dir: &Path,
    dir: &Path,
    origin: Origin,
    created_unix_ms: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Target {
            path: dir.to_owned(),
            why: "already exists",
        });
    }
    std::fs::create_dir(dir).map_err(io(dir))?;
    let saved = (|| {
        storage.checkpoint(&dir.join("engine"))?;
        for name in MARKERS {
            let from = data_dir.join(name);
            if from.exists() {
                copy_synced(&from, &dir.join(name), None)?;
            }
        }
        let paths = files_under(dir)?;
        let mut total = 0u64;
        for path in &paths {
            total += std::fs::metadata(path).map_err(io(path))?.len();
        }
        let mut done = 0u64;
        let mut files = Vec::new();
        for path in paths {
            let relative = relative_name(dir, &path)?;
            let (bytes, sha256) = checksum(&path, &mut |n| {
                done += n;
                progress(done, total);
            })?;
            files.push(FileSum {
                path: relative,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            origin,
            created_unix_ms,
            files,
        };
        write_manifest(dir, &manifest)?;
        Ok(manifest)
    })();
    if saved.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    saved
}

/// Reads `src`'s manifest and checks every file it lists, size and
/// SHA-256; the manifest if all match.
pub fn verify(src: &Path) -> Result<Manifest, SnapshotError> {
    let manifest = read_manifest(src)?;
    for file in &manifest.files {
        let path = src.join(checked_relative(src, &file.path)?);
        let (bytes, sha256) = checksum(&path, &mut |_| {})?;
        expect_same(&path, file, bytes, &sha256)?;
    }
    Ok(manifest)
}

/// Restores the snapshot `src` into `data_dir`, which must be absent or
/// empty: every file is checked against the manifest before anything is
/// written, then copied, checked again as it is written, and synced. A
/// failed restore leaves `data_dir` as it found it.
pub fn restore(src: &Path, data_dir: &Path) -> Result<Manifest, SnapshotError> {
    let manifest = verify(src)?;
    let created = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SnapshotError::Target {
                    path: data_dir.to_owned(),
                    why: "is not empty: restore only into an empty or absent data dir",
                });
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
            true
        }
        Err(e) => return Err(io(data_dir)(e)),
    };
    let copied = (|| {
        let mut dirs = vec![data_dir.to_owned()];
        for file in &manifest.files {
            let relative = checked_relative(src, &file.path)?;
            let to = data_dir.join(&relative);
            if let Some(parent) = to.parent() {
                if !dirs.iter().any(|d| d == parent) {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                    dirs.push(parent.to_owned());
                }
            }
            copy_synced(&src.join(&relative), &to, Some(file))?;
        }
        // Deepest first, so each directory's entry in its parent is synced
        // after the directory itself.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if let Err(e) = copied {
        if created {
            let _ = std::fs::remove_dir_all(data_dir);
        } else if let Ok(entries) = std::fs::read_dir(data_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        return Err(e);
    }
    Ok(manifest)
}

/// Reads and checks `snapshot.json` of `src`.
pub fn read_manifest(src: &Path) -> Result<Manifest, SnapshotError> {
    let path = src.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::BadManifest {
            path: path.clone(),
            why: e.to_string(),
        })?;
    if manifest.format != FORMAT {
        return Err(SnapshotError::BadManifest {
            path,
            why: format!("format {} (this build reads {FORMAT})", manifest.format),
        });
    }
    for file in &manifest.files {
        checked_relative(src, &file.path)?;
    }
    Ok(manifest)
}

/// `name` as a relative path of plain components, or the refusal.
fn checked_relative(src: &Path, name: &str) -> Result<PathBuf, SnapshotError> {
    let path = PathBuf::from(name);
    let plain = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || name == MANIFEST {
        return Err(SnapshotError::BadManifest {
            path: src.join(MANIFEST),
            why: format!("file {name:?} is not a plain relative path in the snapshot"),
        });
    }
    Ok(path)
}

fn expect_same(path: &Path, file: &FileSum, bytes: u64, sha256: &str) -> Result<(), SnapshotError> {
    if bytes != file.bytes {
        return Err(SnapshotError::Mismatch {
            path: path.to_owned(),
            what: "size",
            expected: file.bytes.to_string(),
            found: bytes.to_string(),
        });
    }
    if sha256 != file.sha256 {
        return Err(SnapshotError::Mismatch {
            path: path.to_owned(),
            what: "sha256",
            expected: file.sha256.clone(),
            found: sha256.to_owned(),
        });
    }
    Ok(())
}

/// Every file under `dir` but the manifest, sorted, at any depth.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).map_err(io(&next))? {
            let entry = entry.map_err(io(&next))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if path != dir.join(MANIFEST) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `path` relative to `dir`, `/`-separated.
fn relative_name(dir: &Path, path: &Path) -> Result<String, SnapshotError> {
    let parts: Option<Vec<&str>> = path
        .strip_prefix(dir)
        .ok()
        .map(|r| r.components().map(|c| c.as_os_str().to_str()).collect())
        .and_then(|parts: Option<Vec<&str>>| parts);
    parts
        .map(|p| p.join("/"))
        .ok_or_else(|| SnapshotError::BadManifest {
            path: path.to_owned(),
            why: "a file name that is not UTF-8".into(),
        })
}

/// The length and SHA-256 of a file; `read` hears each chunk's length.
fn checksum(path: &Path, read: &mut dyn FnMut(u64)) -> Result<(u64, String), SnapshotError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        bytes += n as u64;
        read(n as u64);
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Bytes read or copied at a time.
const COPY_CHUNK: usize = 256 * 1024;

/// Copies `from` to the new file `to` and syncs it; with `expect`, checks
/// the bytes written against it (a file changed since `verify` is caught).
fn copy_synced(from: &Path, to: &Path, expect: Option<&FileSum>) -> Result<(), SnapshotError> {
    let mut input = File::open(from).map_err(io(from))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io(from))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        output.write_all(chunk).map_err(io(to))?;
        bytes += n as u64;
    }
    output.sync_all().map_err(io(to))?;
    if let Some(file) = expect {
        expect_same(to, file, bytes, &hex::encode(hasher.finalize()))?;
    }
    Ok(())
}

/// Writes the manifest as `snapshot.json.tmp`, syncs it, renames it into
/// place and syncs the directory: a snapshot is whole once it is there.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| SnapshotError::BadManifest {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&text).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::time::Duration;

    use super::*;
    use crate::storage::Record;

    const GRACE: Duration = Duration::from_secs(3600);

    fn origin() -> Origin {
        Origin {
            node_id: "n1".into(),
            cluster_id: "strata".into(),
            generation: 7,
            state: "AVAILABLE".into(),
            ring_digest: "abc".into(),
            ring_members: vec!["n1".into()],
            tokens: 4,
        }
    }

    /// A data dir with a marker and an engine of `n` keys, and a snapshot
    /// of it in `<tmp>/snap`.
    fn saved(n: u64) -> (tempfile::TempDir, Storage, Manifest) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("node.json"), br#"{"node_id":"n1"}"#).unwrap();
        let storage = Storage::open(&data.join("engine"), GRACE).unwrap();
        for i in 0..n {
            storage
                .apply(
                    format!("k{i}").as_bytes(),
                    &Record::value(i + 1, vec![7u8; 100]),
                )
                .unwrap();
        }
        let mut last = (0, 0);
        let manifest = save(
            &storage,
            &data,
            &tmp.path().join("snap"),
            origin(),
            42,
            &mut |done, total| last = (done, total),
        )
        .unwrap();
        // The last report is the whole.
        assert_eq!(last, (manifest.total_bytes(), manifest.total_bytes()));
        (tmp, storage, manifest)
    }

    #[test]
    fn a_restored_snapshot_holds_every_key_written_before_the_save() {
        let (tmp, storage, manifest) = saved(2000);
        // Writes after the save are not in it.
        storage
            .apply(b"late", &Record::value(1, b"x".to_vec()))
            .unwrap();
        assert_eq!(manifest.origin, origin());
        assert!(manifest.files.iter().any(|f| f.path == "node.json"));
        assert!(manifest.files.iter().any(|f| f.path.starts_with("engine/")));
        assert_eq!(read_manifest(&tmp.path().join("snap")).unwrap(), manifest);

        let restored = tmp.path().join("restored");
        restore(&tmp.path().join("snap"), &restored).unwrap();
        assert_eq!(
            std::fs::read(restored.join("node.json")).unwrap(),
            br#"{"node_id":"n1"}"#
        );
        let copy = Storage::open(&restored.join("engine"), GRACE).unwrap();
        for i in 0..2000u64 {
            let record = copy.read(format!("k{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(record, Record::value(i + 1, vec![7u8; 100]));
        }
        assert_eq!(copy.read(b"late").unwrap(), None);
    }

    #[test]
    fn a_save_refuses_an_existing_target_and_leaves_it_alone() {
        let (tmp, storage, _) = saved(10);
        let err = save(
            &storage,
            &tmp.path().join("data"),
            &tmp.path().join("snap"),
            origin(),
            1,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, SnapshotError::Target { .. }), "{err}");
        assert!(tmp.path().join("snap").join(MANIFEST).exists());
    }

    #[test]
    fn a_restore_refuses_a_non_empty_data_dir() {
        let (tmp, _, _) = saved(10);
        let target = tmp.path().join("busy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"mine").unwrap();
        let err = restore(&tmp.path().join("snap"), &target).unwrap_err();
        assert!(matches!(err, SnapshotError::Target { .. }), "{err}");
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"mine");
        // An empty one is taken.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        restore(&tmp.path().join("snap"), &empty).unwrap();
    }

    #[test]
    fn a_flipped_byte_or_a_missing_file_is_refused_and_nothing_is_left_behind() {
        let (tmp, _, manifest) = saved(500);
        let snap = tmp.path().join("snap");
        let table = manifest
            .files
            .iter()
            .find(|f| f.path.ends_with(".sst"))
            .unwrap();
        let path = snap.join(&table.path);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = restore(&snap, &tmp.path().join("r1")).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Mismatch { what: "sha256", .. }),
            "{err}"
        );
        assert!(!tmp.path().join("r1").exists());

        std::fs::remove_file(&path).unwrap();
        let err = verify(&snap).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
    }

    #[test]
    fn a_manifest_naming_a_path_outside_the_snapshot_is_refused() {
        let (tmp, _, mut manifest) = saved(10);
        let snap = tmp.path().join("snap");
        for bad in ["../escape", "/etc/passwd", "", "engine/../../x", MANIFEST] {
            manifest.files[0].path = bad.into();
            std::fs::write(snap.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
            let err = restore(&snap, &tmp.path().join("r")).unwrap_err();
            assert!(
                matches!(err, SnapshotError::BadManifest { .. }),
                "{bad}: {err}"
            );
        }
        manifest.format = 2;
        std::fs::write(snap.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert!(matches!(
            read_manifest(&snap).unwrap_err(),
            SnapshotError::BadManifest { .. }
        ));
    }
}
