//! Value separation (`Options::blob_threshold`): large values live in blob
//! files, read back through every read path, survive reopen, repair and
//! checkpoint, and their files go once no table points into them.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use strata_engine::{CompactionFilter, Db, FilterDecision, Options};

const BIG: usize = 8 << 10;

fn options() -> Options {
    Options::default()
        .write_buffer_size(256 << 10)
        .blob_threshold(Some(1 << 10))
}

fn big(i: u32, round: u8) -> Vec<u8> {
    let mut v = vec![round; BIG];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn blob_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".blob"))
        .collect();
    names.sort();
    names
}

fn check(db: &Db, n: u32, round: u8) {
    for i in 0..n {
        let got = db.get(key(i)).unwrap();
        let want = if i % 3 == 0 {
            b"small".to_vec()
        } else {
            big(i, round)
        };
        assert_eq!(got.as_deref(), Some(&want[..]), "key {i}");
    }
    let forward: Vec<(Vec<u8>, Vec<u8>)> = db.iter().map(Result::unwrap).collect();
    assert_eq!(forward.len(), n as usize);
    let backward: Vec<(Vec<u8>, Vec<u8>)> = db.iter().rev().map(Result::unwrap).collect();
    assert!(forward.iter().eq(backward.iter().rev()));
    for (k, v) in &forward {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
}

fn load(db: &Db, n: u32, round: u8) {
    for i in 0..n {
        if i % 3 == 0 {
            db.put(key(i), b"small").unwrap();
        } else {
            db.put(key(i), big(i, round)).unwrap();
        }
    }
}

#[test]
fn large_values_live_in_blob_files_and_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    load(&db, 300, 1);
    let snap = db.snapshot();
    db.flush().unwrap();
    check(&db, 300, 1);
    let stats = db.stats();
    assert!(stats.blob_files >= 1, "{stats}");
    assert_eq!(stats.blob_bytes, 200 * BIG as u64, "{stats}");
    // Tables hold pointers, not the 1.6 MB of values.
    assert!(stats.table_bytes() < 64 << 10, "{stats}");
    assert_eq!(snap.get(key(1)).unwrap(), Some(big(1, 1)));
    drop(snap);
    db.close().unwrap();

    let db = Db::open(dir.path(), options()).unwrap();
    check(&db, 300, 1);
    // Read without the threshold: the files are still found.
    db.close().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    check(&db, 300, 1);
}

#[test]
fn blob_files_go_once_every_record_is_overwritten_and_snapshots_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    load(&db, 300, 1);
    db.flush().unwrap();
    let first = blob_files(dir.path());
    assert!(!first.is_empty());
    let snap = db.snapshot();
    load(&db, 300, 2);
    db.compact_range::<&[u8]>(..).unwrap();
    check(&db, 300, 2);
    // The snapshot still reads the overwritten values from the old files.
    assert_eq!(snap.get(key(2)).unwrap(), Some(big(2, 1)));
    for name in &first {
        assert!(dir.path().join(name).exists(), "{name} held by a snapshot");
    }
    let stats = db.stats();
    assert_eq!(stats.blob_bytes, 200 * BIG as u64, "{stats}");
    assert_eq!(stats.blob_garbage_bytes, 0, "{stats}");
    drop(snap);
    for name in &first {
        assert!(
            !dir.path().join(name).exists(),
            "{name} outlived its last pointer"
        );
    }
    // Deleting keys makes their records garbage; a file stays while most
    // of its records are live, and the accounting survives a reopen.
    for i in (1..300).filter(|i| i % 3 != 0).step_by(4) {
        db.delete(key(i)).unwrap();
    }
    db.compact_range::<&[u8]>(..).unwrap();
    let stats = db.stats();
    assert_eq!(stats.blob_garbage_bytes, 50 * BIG as u64, "{stats}");
    db.close().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let stats = db.stats();
    assert_eq!(stats.blob_garbage_bytes, 50 * BIG as u64, "{stats}");
    for i in 0..300 {
        db.delete(key(i)).unwrap();
    }
    db.compact_range::<&[u8]>(..).unwrap();
    assert_eq!(blob_files(dir.path()), Vec::<String>::new());
    assert_eq!(db.stats().blob_files, 0);
}

#[test]
fn a_damaged_blob_record_is_corruption_and_other_values_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    load(&db, 30, 1);
    db.flush().unwrap();
    db.close().unwrap();
    let files = blob_files(dir.path());
    let path = dir.path().join(&files[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    // Inside the first record's value: key 1's.
    bytes[8 + 8 + 100] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let err = db.get(key(1)).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert_eq!(db.get(key(2)).unwrap(), Some(big(2, 1)));
    let scanned: Vec<_> = db.iter().collect();
    assert!(scanned
        .iter()
        .any(|r| r.as_ref().is_err_and(|e| e.is_corruption())));
}

#[test]
fn a_missing_blob_file_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    load(&db, 30, 1);
    db.flush().unwrap();
    db.close().unwrap();
    for name in blob_files(dir.path()) {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn checkpoint_and_repair_keep_blob_values() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let db = Db::open(&live, options()).unwrap();
    load(&db, 300, 1);
    db.flush().unwrap();
    load(&db, 150, 2);
    db.checkpoint(dir.path().join("copy")).unwrap();
    db.close().unwrap();
    let want = |i: u32| -> Vec<u8> {
        match (i % 3, i < 150) {
            (0, _) => b"small".to_vec(),
            (_, true) => big(i, 2),
            (_, false) => big(i, 1),
        }
    };
    let copy = Db::open(dir.path().join("copy"), options()).unwrap();
    for i in 0..300 {
        assert_eq!(copy.get(key(i)).unwrap(), Some(want(i)), "copy, key {i}");
    }
    drop(copy);

    // A repair rebuilds the manifest: blob files are scanned and what no
    // table points to is counted as garbage, so overwriting the rest
    // still frees the files.
    let current = live.join("CURRENT");
    std::fs::remove_file(&current).unwrap();
    let report = Db::repair(&live).unwrap();
    assert!(report.lost_nothing(), "{report:?}");
    let db = Db::open(&live, options()).unwrap();
    for i in 0..300 {
        assert_eq!(db.get(key(i)).unwrap(), Some(want(i)), "repaired, key {i}");
    }
    for i in 0..300 {
        db.delete(key(i)).unwrap();
    }
    db.compact_range::<&[u8]>(..).unwrap();
    assert_eq!(blob_files(&live), Vec::<String>::new(), "{}", db.stats());
}

/// Removes values whose first byte is 7 (and only offered small values
/// when `blobs` is false).
struct DropSevens {
    blobs: bool,
}

impl CompactionFilter for DropSevens {
    fn filter(&self, _level: usize, _key: &[u8], value: &[u8]) -> FilterDecision {
        if value.first() == Some(&7) {
            FilterDecision::Remove
        } else {
            FilterDecision::Keep
        }
    }

    fn filters_blob_values(&self) -> bool {
        self.blobs
    }
}

#[test]
fn compaction_filters_see_blob_values_unless_they_decline_them() {
    for blobs in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let opts = options().compaction_filter(Arc::new(DropSevens { blobs }));
        let db = Db::open(dir.path(), opts).unwrap();
        db.put(b"big-seven", vec![7u8; BIG]).unwrap();
        db.put(b"big-other", vec![8u8; BIG]).unwrap();
        db.put(b"small-seven", [7u8; 10]).unwrap();
        db.compact_range::<&[u8]>(..).unwrap();
        assert_eq!(db.get(b"small-seven").unwrap(), None);
        assert_eq!(db.get(b"big-other").unwrap(), Some(vec![8u8; BIG]));
        let big_seven = db.get(b"big-seven").unwrap();
        let stats = db.stats();
        let live_blob_bytes = stats.blob_bytes - stats.blob_garbage_bytes;
        if blobs {
            assert_eq!(big_seven, None);
            assert_eq!(live_blob_bytes, BIG as u64, "{stats}");
        } else {
            assert_eq!(big_seven, Some(vec![7u8; BIG]));
            assert_eq!(live_blob_bytes, 2 * BIG as u64, "{stats}");
        }
    }
}

#[test]
fn a_mostly_dead_blob_file_has_its_live_values_moved_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    load(&db, 300, 1);
    db.flush().unwrap();
    let first = blob_files(dir.path());
    // 150 of the 200 big values are overwritten: their first file is 75% garbage.
    let overwritten = |i: u32| !i.is_multiple_of(3) && !i.is_multiple_of(4);
    for i in (0..300).filter(|&i| overwritten(i)) {
        db.put(key(i), big(i, 2)).unwrap();
    }
    db.compact_range::<&[u8]>(..).unwrap();
    for name in &first {
        assert!(
            !dir.path().join(name).exists(),
            "{name} kept for its last live values"
        );
    }
    for i in 0..300 {
        let want = match (i % 3, overwritten(i)) {
            (0, _) => b"small".to_vec(),
            (_, true) => big(i, 2),
            (_, false) => big(i, 1),
        };
        assert_eq!(db.get(key(i)).unwrap(), Some(want), "key {i}");
    }
    let stats = db.stats();
    assert_eq!(stats.blob_bytes, 200 * BIG as u64, "{stats}");
    assert_eq!(stats.blob_garbage_bytes, 0, "{stats}");
}

/// Keys `0..n` hold `big(i, 1)`, and nothing else is there.
fn all_big(db: &Db, n: u32) {
    for i in 0..n {
        let got = db.get(key(i)).unwrap();
        assert!(got == Some(big(i, 1)), "key {i}");
    }
    assert_eq!(db.iter().count(), n as usize);
}

#[test]
fn a_large_value_is_written_once_to_the_wal_blob_file_and_replayed_from_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        for i in 0..20 {
            db.put(key(i), big(i, 1)).unwrap();
        }
        assert_eq!(
            blob_files(dir.path()).len(),
            1,
            "the WAL's blob file holds the values before any flush"
        );
        all_big(&db, 20);
        let stats = db.stats();
        assert!(
            stats.wal_bytes_written >= 20 * BIG as u64,
            "the values count as log bytes: {}",
            stats.wal_bytes_written
        );
        assert_eq!(stats.bytes_flushed, 0);
    }
    // Reopened without a flush: the WAL's pointers are replayed and their
    // blob file joins the version with the recovered table.
    let db = Db::open(dir.path(), options()).unwrap();
    all_big(&db, 20);
    assert_eq!(blob_files(dir.path()).len(), 1, "no value was copied");
    let stats = db.stats();
    assert_eq!(stats.blob_files, 1);
    assert_eq!(stats.blob_bytes, 20 * BIG as u64);
    db.flush().unwrap();
    assert!(
        db.stats().bytes_flushed < 4 * BIG as u64,
        "a flush writes pointers, not values: {}",
        db.stats().bytes_flushed
    );
}

#[test]
fn a_torn_wal_blob_file_ends_the_replay_where_its_values_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        for i in 0..10 {
            db.put(key(i), big(i, 1)).unwrap();
        }
    }
    // The last value's record lost its end, as an unsynced append can.
    let vlog = dir.path().join(&blob_files(dir.path())[0]);
    let len = std::fs::metadata(&vlog).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vlog)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    all_big(&db, 9);
    assert_eq!(db.get(key(9)).unwrap(), None);
    let report = db.recovery_report();
    assert_eq!(report.torn_tails.len(), 1, "{report:?}");
    assert!(
        report.torn_tails[0].reason.contains("blob file"),
        "{report:?}"
    );
}
