//! `node.json`: whose data a data dir holds, with which tokens, and whether
//! the node finished joining; and `removals.json`: the members this node
//! knows were removed from the cluster for good.
//!
//! ```text
//! <data_dir>/node.json       {"node_id": "..", "tokens": [..], "available": bool, "removed": bool}
//! <data_dir>/removals.json   {"removed": ["id:generation:tokens", ..]}
//! ```
//!
//! `removed` (absent: false) says that the cluster removed this node for
//! good (`kvnode removenode`): its data is stale, and the node refuses to
//! start from the dir again.
//!
//! A marker without `tokens` (written before bootstrapping existed) means
//! an AVAILABLE node with derived tokens.
//!
//! `removals.json` holds what the node publishes under the gossip key
//! `removed` ([`removal`](crate::view::removal)), in the same text form. A
//! removal must outlive every restart: if the whole cluster restarted and
//! the removals lived only in gossip, a removed node started again from
//! its old data dir would be taken back with its stale data. An entry that
//! does not parse refuses the start rather than forgetting a removal.
//!
//! Both decide what a restarted node does, so each is replaced atomically
//! and durably: written to `<name>.tmp`, fsynced, renamed over the file,
//! and the directory fsynced so the rename itself survives a power cut.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::view::removal::Removal;

/// Why `node.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarkerError {
    /// Reading, writing, syncing or renaming failed.
    #[error("data dir {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The file does not hold a marker.
    #[error("data dir {path}: bad node.json: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What does not parse.
        source: serde_json::Error,
    },
    /// An entry of `removals.json` that does not parse.
    #[error("data dir {path}: bad removal entry {entry:?} in removals.json")]
    BadRemoval {
        /// The file.
        path: PathBuf,
        /// The entry.
        entry: String,
    },
    /// The dir belongs to another node id: its data sits under that node's
    /// tokens.
    #[error("data dir {path}: belongs to node {owner:?}, not {node_id:?}")]
    OtherNode {
        /// The file.
        path: PathBuf,
        /// The id the marker names.
        owner: String,
        /// The id of the node that opened it.
        node_id: String,
    },
}

/// What `node.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeMarker {
    /// Whose data this is.
    pub(crate) node_id: String,
    /// The node's tokens; absent in markers of derived-token nodes.
    #[serde(default)]
    pub(crate) tokens: Option<Vec<u64>>,
    /// Whether the node finished joining (false: bootstrap interrupted).
    #[serde(default = "yes")]
    pub(crate) available: bool,
    /// Whether the cluster removed this node for good (module doc).
    #[serde(default)]
    pub(crate) removed: bool,
}

fn yes() -> bool {
    true
}

/// Where `node.json` lives.
pub(crate) fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// The node id `data_dir` recorded, if it has a `node.json`: the id of a
/// node started without `--node-id` is the one it first served under.
pub(crate) fn recorded_node_id(data_dir: &Path) -> Result<Option<String>, MarkerError> {
    Ok(load::<NodeMarker>(&marker_path(data_dir))?.map(|m| m.node_id))
}

/// This data dir's marker, if it has one. A dir that belongs to another
/// node id is refused.
pub(crate) fn read_marker(path: &Path, node_id: &str) -> Result<Option<NodeMarker>, MarkerError> {
    let Some(marker) = load::<NodeMarker>(path)? else {
        return Ok(None);
    };
    if marker.node_id != node_id {
        return Err(MarkerError::OtherNode {
            path: path.to_owned(),
            owner: marker.node_id,
            node_id: node_id.to_owned(),
        });
    }
    Ok(Some(marker))
}

/// Marks the node of `data_dir` to stream its ranges again from their
/// replicas when it next starts (its engine lost data in a repair). Returns
/// false if the dir has no `node.json`: a node that never served has
/// nothing to stream back.
pub fn mark_for_restream(data_dir: &Path) -> Result<bool, MarkerError> {
    let path = data_dir.join("node.json");
    let Some(marker) = load::<NodeMarker>(&path)? else {
        return Ok(false);
    };
    write_marker(
        &path,
        &NodeMarker {
            available: false,
            ..marker
        },
    )?;
    Ok(true)
}

/// Records `marker` in `node.json`, atomically and durably (module doc).
/// The temporary file never remains, whether the write succeeds or not.
pub(crate) fn write_marker(path: &Path, marker: &NodeMarker) -> Result<(), MarkerError> {
    write_json(path, marker)
}

/// What `removals.json` records.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemovalsFile {
    removed: Vec<String>,
}

/// Where `removals.json` lives.
pub(crate) fn removals_path(data_dir: &Path) -> PathBuf {
    data_dir.join("removals.json")
}

/// The removals recorded at `path`; none if there is no file.
pub(crate) fn read_removals(path: &Path) -> Result<Vec<Removal>, MarkerError> {
    let Some(file) = load::<RemovalsFile>(path)? else {
        return Ok(Vec::new());
    };
    file.removed
        .into_iter()
        .map(|entry| {
            Removal::parse(&entry).ok_or_else(|| MarkerError::BadRemoval {
                path: path.to_owned(),
                entry,
            })
        })
        .collect()
}

/// Records `removals` in `removals.json`, atomically and durably.
pub(crate) fn write_removals(path: &Path, removals: &[Removal]) -> Result<(), MarkerError> {
    let file = RemovalsFile {
        removed: removals.iter().map(Removal::to_string).collect(),
    };
    write_json(path, &file)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), MarkerError> {
    // Strings and integers: serializing cannot fail, and if it did, it
    // would be as an I/O error of this file.
    let bytes = serde_json::to_vec(value).map_err(|e| MarkerError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let tmp = path.with_extension("json.tmp");
    let replaced = replace(&tmp, path, &bytes);
    if replaced.is_err() {
        // The rename did not happen: the temporary file is only litter, and
        // may not even exist.
        let _ = std::fs::remove_file(&tmp);
    }
    replaced
}

/// Writes `bytes` to `tmp`, syncs it, renames it over `path` and syncs the
/// directory.
fn replace(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), MarkerError> {
    let io = |at: &Path| {
        let at = at.to_owned();
        move |source| MarkerError::Io { path: at, source }
    };
    let mut file = File::create(tmp).map_err(io(tmp))?;
    file.write_all(bytes).map_err(io(tmp))?;
    file.sync_all().map_err(io(tmp))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(io(path))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The file at `path` (the marker: whoever it belongs to); `None` if there
/// is none.
fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, MarkerError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| MarkerError::Malformed {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MarkerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn marker(node_id: &str, available: bool) -> NodeMarker {
        NodeMarker {
            node_id: node_id.into(),
            tokens: Some(vec![1, 2]),
            available,
            removed: false,
        }
    }

    #[test]
    fn a_data_dir_belongs_to_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert!(read_marker(&path, "a").unwrap().is_none());
        let written = marker("a", false);
        write_marker(&path, &written).unwrap();
        assert_eq!(read_marker(&path, "a").unwrap(), Some(written));
        // A marker from before bootstrapping: available, derived tokens.
        std::fs::write(&path, br#"{"node_id":"a"}"#).unwrap();
        let old = read_marker(&path, "a").unwrap().unwrap();
        assert!(old.available && old.tokens.is_none() && !old.removed);
        assert!(matches!(
            read_marker(&path, "b"),
            Err(MarkerError::OtherNode { .. })
        ));
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            read_marker(&path, "a"),
            Err(MarkerError::Malformed { .. })
        ));
    }

    #[test]
    fn the_temporary_file_never_remains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        let tmp = dir.path().join("node.json.tmp");
        write_marker(&path, &marker("a", true)).unwrap();
        assert!(!tmp.exists());
        // A rename that fails (a directory sits where node.json goes)
        // leaves neither the temporary file nor a changed marker behind.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("node.json")).unwrap();
        let err = write_marker(&blocked.join("node.json"), &marker("a", true)).unwrap_err();
        assert!(matches!(err, MarkerError::Io { .. }), "{err}");
        assert!(!blocked.join("node.json.tmp").exists());
        assert!(blocked.join("node.json").is_dir());
    }

    #[test]
    fn a_restream_mark_keeps_the_tokens_and_clears_available() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!mark_for_restream(dir.path()).unwrap());
        let path = dir.path().join("node.json");
        write_marker(&path, &marker("a", true)).unwrap();
        assert!(mark_for_restream(dir.path()).unwrap());
        assert_eq!(read_marker(&path, "a").unwrap(), Some(marker("a", false)));
    }

    #[test]
    fn removals_survive_a_restart_and_a_bad_entry_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = removals_path(dir.path());
        assert!(read_removals(&path).unwrap().is_empty());
        let removals: Vec<Removal> = ["n4:17:00000000000000ff", "host:9000:5:0123456789abcdef"]
            .into_iter()
            .map(|e| Removal::parse(e).unwrap())
            .collect();
        write_removals(&path, &removals).unwrap();
        assert_eq!(read_removals(&path).unwrap(), removals);
        assert!(!path.with_extension("json.tmp").exists());

        std::fs::write(
            &path,
            r#"{"removed": ["n4:17:00000000000000ff", "n5:x:1"]}"#,
        )
        .unwrap();
        let err = read_removals(&path).unwrap_err();
        assert!(
            matches!(&err, MarkerError::BadRemoval { entry, .. } if entry == "n5:x:1"),
            "{err}"
        );
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            read_removals(&path),
            Err(MarkerError::Malformed { .. })
        ));
    }
}
