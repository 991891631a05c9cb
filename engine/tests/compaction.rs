//! Compaction at scale: data stays right through many memtables of
//! overwrites and deletes, levels keep their shape, deleted data gives its
//! space back, writers held back by L0 resume, and a background I/O error
//! stops writes without losing any.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strata_engine::{Db, Health, Options, WriteBatch, WriteOptions};

fn small_tree() -> Options {
    Options::default()
        .write_buffer_size(256 << 10)
        .target_table_size(64 << 10)
        .level1_target_size(512 << 10)
}

/// L1 and deeper: tables disjoint and in key order.
fn assert_level_shape(db: &Db) {
    let tables = db.live_tables();
    for pair in tables.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.level == b.level && a.level > 0 {
            assert!(a.largest_key < b.smallest_key, "overlap in L{}", a.level);
        }
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{:08}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    let mut v = format!("{i}:{round}:").into_bytes();
    v.resize(200, b'x');
    v
}

#[test]
fn overwrites_and_deletes_across_many_memtables_stay_correct_and_give_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_tree()).unwrap();
    let mut model = BTreeMap::new();
    const N: u32 = 20_000;
    // ~12 MiB of writes through a 256 KiB memtable: dozens of flushes and
    // compactions several levels deep.
    for round in 0..3 {
        for i in 0..N {
            db.put(key(i), value(i, round)).unwrap();
            model.insert(key(i), value(i, round));
        }
        for i in (round..N).step_by(7) {
            db.delete(key(i)).unwrap();
            model.remove(&key(i));
        }
    }
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
    let scanned: Vec<_> = db.range::<&[u8]>(..).map(Result::unwrap).collect();
    assert_eq!(scanned.len(), model.len());
    assert!(scanned
        .iter()
        .zip(&model)
        .all(|((k, v), (mk, mv))| k == mk && v == mv));
    let stats = db.stats();
    assert!(stats.compactions > 0, "{stats}");
    assert!(db.live_tables().iter().any(|t| t.level >= 2), "{stats}");
    assert_level_shape(&db);

    // Compacted fully, the tree holds about one version of each live key.
    db.compact_range::<&[u8]>(..).unwrap();
    assert_level_shape(&db);
    let full = db.stats().table_bytes();
    let live_bytes: u64 = model.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    assert!(
        full < live_bytes * 3 / 2,
        "{full} bytes of tables for {live_bytes} live"
    );

    // Delete half, compact: about half the space comes back.
    let doomed: Vec<Vec<u8>> = model.keys().step_by(2).cloned().collect();
    for k in &doomed {
        db.delete(k).unwrap();
        model.remove(k);
    }
    db.compact_range::<&[u8]>(..).unwrap();
    let half = db.stats().table_bytes();
    assert!(
        half < full * 6 / 10,
        "{half} bytes after deleting half of {full}"
    );
    for k in doomed.iter().take(500) {
        assert_eq!(db.get(k).unwrap(), None);
    }

    // Delete the rest: nothing is left, not even tombstones.
    let mut batch = WriteBatch::new();
    for k in model.keys() {
        batch.delete(k);
    }
    db.write(batch, &WriteOptions::default()).unwrap();
    db.compact_range::<&[u8]>(..).unwrap();
    assert_eq!(db.stats().table_bytes(), 0, "{}", db.stats());
    assert_eq!(db.range::<&[u8]>(..).count(), 0);

    // Replaced tables are gone from the directory, not just from the manifest.
    drop(db);
    let ssts = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sst")
        })
        .count();
    assert_eq!(ssts, 0);
}

#[test]
fn snapshots_keep_their_view_while_compaction_rewrites_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_tree()).unwrap();
    for i in 0..5_000 {
        db.put(key(i), value(i, 0)).unwrap();
    }
    let snap = db.snapshot();
    for i in 0..5_000 {
        if i % 2 == 0 {
            db.delete(key(i)).unwrap();
        } else {
            db.put(key(i), value(i, 1)).unwrap();
        }
    }
    db.compact_range::<&[u8]>(..).unwrap();
    for i in (0..5_000).step_by(37) {
        assert_eq!(snap.get(key(i)).unwrap(), Some(value(i, 0)));
        let now = (i % 2 == 1).then(|| value(i, 1));
        assert_eq!(db.get(key(i)).unwrap(), now);
    }
    assert_eq!(snap.range::<&[u8]>(..).count(), 5_000);
    assert_eq!(db.range::<&[u8]>(..).count(), 2_500);
}

#[test]
fn writers_held_back_by_level0_resume() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .write_buffer_size(64 << 10)
        .level0_compaction_trigger(2)
        .level0_slowdown_trigger(3)
        .level0_stop_trigger(4)
        .target_table_size(64 << 10)
        .level1_target_size(256 << 10);
    let db = Arc::new(Db::open(dir.path(), opts).unwrap());
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..3000u32 {
                    db.put(key(t * 10_000 + i), value(i, t)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = db.stats();
    assert!(stats.compactions > 0, "{stats}");
    assert!(stats.stall_slowdowns + stats.stall_stops > 0, "{stats}");
    // Rotation stops at 4 L0 tables, but memtables frozen just before (two
    // at most) still land there.
    assert!(stats.levels[0].tables <= 4 + 2, "{stats}");
    for t in 0..4u32 {
        for i in (0..3000u32).step_by(101) {
            assert_eq!(db.get(key(t * 10_000 + i)).unwrap(), Some(value(i, t)));
        }
    }
}

/// Numbers the database will give its next files: every name in `dir` is
/// `<number>.<ext>` or `MANIFEST-<number>`.
fn next_file_numbers(dir: &Path) -> std::ops::Range<u64> {
    let max = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let digits: String = name.chars().filter(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    max + 1..max + 500
}

/// Puts a directory where each of the next tables would go, so creating
/// them fails as on a full or broken disk. Returns what to remove after.
fn block_next_tables(dir: &Path) -> Vec<std::path::PathBuf> {
    let blockers: Vec<_> = next_file_numbers(dir)
        .map(|n| dir.join(format!("{n:06}.sst")))
        .collect();
    for b in &blockers {
        std::fs::create_dir(b).unwrap();
    }
    blockers
}

fn unblock(blockers: &[std::path::PathBuf]) {
    for b in blockers {
        std::fs::remove_dir(b).unwrap();
    }
}

#[test]
fn a_failed_flush_stops_writes_keeps_reads_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_tree()).unwrap();
    for i in 0..1000 {
        db.put(key(i), value(i, 0)).unwrap();
    }
    let blockers = block_next_tables(dir.path());
    let err = db.flush().unwrap_err();
    assert!(matches!(err, strata_engine::Error::Background(_)), "{err}");
    assert!(db.put(b"after", b"x").is_err(), "writes must stop");
    assert!(db.background_error().is_some());
    assert!(db.stats().background_error.is_some());
    assert_eq!(db.get(key(7)).unwrap(), Some(value(7, 0)), "reads go on");
    // Not a transient error (a directory where the table goes): no retry
    // clears it, however long the recovery thread's backoff runs.
    assert!(
        matches!(db.health(), Health::Fatal { .. }),
        "{:?}",
        db.health()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = db.put(b"after", b"x").unwrap_err();
    assert!(matches!(err, strata_engine::Error::Background(_)), "{err}");
    assert!(!err.is_retryable());
    assert!(
        matches!(db.health(), Health::Fatal { .. }),
        "{:?}",
        db.health()
    );
    assert_eq!(db.stats().recoveries, 0);

    drop(db);
    unblock(&blockers);
    let db = Db::open(dir.path(), small_tree()).unwrap();
    for i in 0..1000 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i, 0)));
    }
    assert_eq!(db.get(b"after").unwrap(), None);
}

#[test]
fn a_failed_compaction_stops_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_tree()).unwrap();
    for i in 0..3000 {
        db.put(key(i), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    for i in (0..3000).step_by(2) {
        db.put(key(i), value(i, 1)).unwrap();
    }
    // Settled, so that no background job creates a file while we block names.
    db.wait_for_compactions().unwrap();
    let blockers = block_next_tables(dir.path());
    assert!(db.compact_range::<&[u8]>(..).is_err());
    assert!(db.put(b"after", b"x").is_err(), "writes must stop");
    assert!(db.stats().background_error.is_some());
    assert_eq!(db.get(key(2)).unwrap(), Some(value(2, 1)), "reads go on");

    drop(db);
    unblock(&blockers);
    let db = Db::open(dir.path(), small_tree()).unwrap();
    for i in 0..3000 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i, 1 - i % 2)));
    }
    db.compact_range::<&[u8]>(..).unwrap();
    assert_eq!(db.range::<&[u8]>(..).count(), 3000);
}
