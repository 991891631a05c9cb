//! The manifests this node holds, by name, so that files can be listed
//! without reading the engine.
//!
//! Engine keys are ordered by token, not by name, and chunks (values of a
//! megabyte each) sit between the manifests: a listing that scanned the
//! engine would read every chunk. [`ManifestIndex`] keeps, for every
//! manifest key the engine holds, its version, whether it is a tombstone,
//! and the file's size and creation time. [`crate::storage::Storage`]
//! builds it with one scan when it opens and keeps it current on every
//! write and clean-up of a manifest key; it costs about 100 bytes of memory
//! per file.
//!
//! A listing across the cluster asks every node for a page of its index
//! and merges them ([`merge`]): a name's newest record wins, tombstones
//! drop out, and a page stops where the shortest full page stopped, so
//! that no name is skipped.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Manifest, FILE_PREFIX};
use crate::storage::Record;

/// Path of the internal route a node lists its manifests on.
pub const LIST_PATH: &str = "/internal/v1/files";

/// The most names one page may ask for.
pub const MAX_PAGE: u32 = 1000;

/// A page of names asked of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Only names that start with this.
    pub prefix: String,
    /// Only names after this one (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many entries ([`MAX_PAGE`] at most).
    pub limit: u32,
}

/// One manifest record of a listing; tombstones included, so that a
/// deletion one node saw wins over an older manifest another still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The file's name.
    pub name: String,
    /// The version of the manifest's write (or deletion).
    pub version: u64,
    /// Whether the file exists (the record is not a tombstone).
    pub live: bool,
    /// The file's size in bytes (0 for a tombstone).
    pub size: u64,
    /// When its upload finished, in Unix milliseconds (0 for a tombstone).
    pub created_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    version: u64,
    live: bool,
    size: u64,
    created_ms: u64,
}

/// The index of this node's manifests; see the module doc.
#[derive(Debug, Default)]
pub struct ManifestIndex {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl ManifestIndex {
    /// Notes that the engine now stores `record` under the user key `key`;
    /// keys other than manifests are ignored.
    pub fn stored(&self, key: &[u8], record: &Record) {
        let Some(name) = name_of(key) else {
            return;
        };
        // A manifest that does not decode is still a file the node holds:
        // it is listed (size 0), and reading it says what is wrong.
        let (size, created_ms) = record
            .value
            .as_deref()
            .and_then(|v| Manifest::decode(v).ok())
            .map_or((0, 0), |m| (m.size, m.created_ms));
        let entry = Entry {
            version: record.version,
            live: record.value.is_some(),
            size,
            created_ms,
        };
        let mut entries = self.entries.lock();
        match entries.get_mut(name) {
            Some(held) if held.version >= entry.version => {}
            Some(held) => *held = entry,
            None => {
                entries.insert(name.to_owned(), entry);
            }
        }
    }

    /// Notes that the engine no longer holds the user key `key`.
    pub fn removed(&self, key: &[u8]) {
        if let Some(name) = name_of(key) {
            self.entries.lock().remove(name);
        }
    }

    /// This node's entries for `request`, in name order.
    pub fn page(&self, request: &ListRequest) -> Vec<Listed> {
        let after = match &request.after {
            Some(a) if a.as_str() >= request.prefix.as_str() => Bound::Excluded(a.as_str()),
            _ => Bound::Included(request.prefix.as_str()),
        };
        let limit = request.limit.min(MAX_PAGE) as usize;
        self.entries
            .lock()
            .range::<str, _>((after, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(&request.prefix))
            .take(limit)
            .map(|(name, e)| Listed {
                name: name.clone(),
                version: e.version,
                live: e.live,
                size: e.size,
                created_ms: e.created_ms,
            })
            .collect()
    }

    /// How many manifests (tombstones included) this node holds.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether this node holds no manifest.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The file name of a manifest key, `None` for any other key.
fn name_of(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(FILE_PREFIX)?).ok()
}

/// A page of the cluster's files, merged from the nodes' pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merged {
    /// Existing files, in name order.
    pub files: Vec<Listed>,
    /// Where the next page starts (its `after`); `None` after the last page.
    pub next: Option<String>,
}

/// Merges the nodes' answers to one [`ListRequest`] with `limit`.
///
/// A node whose page is full may hold more names past its last one, so
/// only names up to the smallest such last name are certain to be
/// complete; the merged page stops there (and may then hold fewer than
/// `limit` files, or none, with a `next` to go on from).
pub fn merge(pages: Vec<Vec<Listed>>, limit: u32) -> Merged {
    let limit = limit.clamp(1, MAX_PAGE) as usize;
    let cutoff = pages
        .iter()
        .filter(|p| p.len() >= limit)
        .filter_map(|p| p.last().map(|l| l.name.clone()))
        .min();
    let mut newest: HashMap<String, Listed> = HashMap::new();
    for listed in pages.into_iter().flatten() {
        if cutoff.as_ref().is_some_and(|c| listed.name > *c) {
            continue;
        }
        match newest.get(&listed.name) {
            Some(held) if held.version >= listed.version => {}
            _ => {
                newest.insert(listed.name.clone(), listed);
            }
        }
    }
    let mut files: Vec<Listed> = newest.into_values().filter(|l| l.live).collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if files.len() > limit {
        files.truncate(limit);
        let next = files.last().map(|l| l.name.clone());
        return Merged { files, next };
    }
    Merged {
        files,
        next: cutoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{manifest_key, FORMAT};

    fn manifest_record(version: u64, size: u64) -> Record {
        let m = Manifest {
            format: FORMAT,
            size,
            chunk_size: 1 << 20,
            chunks: vec![hex::encode([3u8; 32]); size.div_ceil(1 << 20) as usize],
            sha256: hex::encode([1u8; 32]),
            content_type: "text/plain".into(),
            created_ms: 7,
            version: 0,
        };
        Record::value(version, m.encode())
    }

    fn request(prefix: &str, after: Option<&str>, limit: u32) -> ListRequest {
        ListRequest {
            prefix: prefix.into(),
            after: after.map(Into::into),
            limit,
        }
    }

    fn names(listed: &[Listed]) -> Vec<&str> {
        listed.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn the_index_keeps_the_newest_record_of_manifest_keys_only() {
        let index = ManifestIndex::default();
        index.stored(&manifest_key("b"), &manifest_record(5, 10));
        index.stored(&manifest_key("b"), &manifest_record(4, 99));
        index.stored(&manifest_key("a"), &Record::tombstone(3));
        index.stored(b"plain-key", &Record::value(9, "v"));
        index.stored(&crate::files::chunk_key(&[0; 32]), &Record::value(9, "c"));
        let page = index.page(&request("", None, 10));
        assert_eq!(names(&page), ["a", "b"]);
        assert!(!page[0].live);
        assert_eq!(
            (page[1].version, page[1].size, page[1].created_ms),
            (5, 10, 7)
        );
        index.removed(&manifest_key("a"));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn pages_follow_the_prefix_and_the_cursor() {
        let index = ManifestIndex::default();
        for name in ["logs/1", "logs/2", "logs/3", "media/a", "l"] {
            index.stored(&manifest_key(name), &manifest_record(1, 1));
        }
        assert_eq!(
            names(&index.page(&request("logs/", None, 2))),
            ["logs/1", "logs/2"]
        );
        assert_eq!(
            names(&index.page(&request("logs/", Some("logs/2"), 2))),
            ["logs/3"]
        );
        // A cursor before the prefix starts at the prefix.
        assert_eq!(
            names(&index.page(&request("media/", Some("a"), 5))),
            ["media/a"]
        );
        assert!(index.page(&request("zzz", None, 5)).is_empty());
    }

    fn listed(name: &str, version: u64, live: bool) -> Listed {
        Listed {
            name: name.into(),
            version,
            live,
            size: 1,
            created_ms: 1,
        }
    }

    #[test]
    fn a_merge_takes_the_newest_record_of_each_name_and_drops_deletions() {
        let merged = merge(
            vec![
                vec![listed("a", 1, true), listed("b", 2, true)],
                vec![listed("a", 3, false), listed("b", 1, false)],
                vec![listed("c", 1, true)],
            ],
            10,
        );
        assert_eq!(names(&merged.files), ["b", "c"]);
        assert_eq!(merged.next, None);
    }

    #[test]
    fn a_merge_stops_where_the_shortest_full_page_stopped() {
        // Node 1's page is full at "c": it may hold "d" as a tombstone, so
        // node 2's "e" cannot be listed before node 1 is asked past "c".
        let merged = merge(
            vec![
                vec![listed("a", 1, true), listed("c", 1, false)],
                vec![listed("b", 1, true), listed("e", 1, true)],
            ],
            2,
        );
        assert_eq!(names(&merged.files), ["a", "b"]);
        assert_eq!(merged.next.as_deref(), Some("c"));
        let merged = merge(
            vec![
                vec![listed("a", 1, false), listed("c", 1, false)],
                vec![listed("e", 1, true)],
            ],
            2,
        );
        assert!(merged.files.is_empty());
        assert_eq!(merged.next.as_deref(), Some("c"));
    }
}
