//! `Db::delete_range`: range tombstones through memtables, flushes,
//! compactions, snapshots and reopening.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use strata_engine::{Db, Error, Options, WriteBatch, WriteOptions};

fn key(i: u32) -> String {
    format!("key-{i:05}")
}

fn options() -> Options {
    // Small tables: a range spans many of them at every level.
    Options::default()
        .write_buffer_size(64 << 10)
        .target_table_size(8 << 10)
        .level1_target_size(32 << 10)
        .level0_compaction_trigger(2)
}

fn fill(db: &Db, n: u32) {
    for i in 0..n {
        db.put(key(i), format!("value-{i}-{}", "x".repeat(50)))
            .unwrap();
    }
}

fn keys(db: &Db) -> Vec<String> {
    db.iter()
        .map(|kv| String::from_utf8(kv.unwrap().0).unwrap())
        .collect()
}

fn table_bytes(db: &Db) -> u64 {
    db.live_tables().iter().map(|t| t.size).sum()
}

/// Levels 1 and deeper hold disjoint tables.
fn assert_levels_disjoint(db: &Db) {
    let tables = db.live_tables();
    for pair in tables.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.level == b.level && a.level > 0 {
            assert!(a.largest_key < b.smallest_key, "overlap in L{}", a.level);
        }
    }
}

#[test]
fn deleted_range_is_gone_from_every_read_path_and_compaction_reclaims_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    fill(&db, 2000);
    db.compact_range::<&[u8]>(..).unwrap();
    let before = table_bytes(&db);

    db.delete_range(key(500), key(1500)).unwrap();
    let want: Vec<String> = (0..500).chain(1500..2000).map(key).collect();
    let check = |db: &Db| {
        assert_eq!(keys(db), want);
        let mut back: Vec<String> = db
            .iter()
            .rev()
            .map(|kv| String::from_utf8(kv.unwrap().0).unwrap())
            .collect();
        back.reverse();
        assert_eq!(back, want);
        assert!(db.get(key(500)).unwrap().is_none());
        assert!(db.get(key(1499)).unwrap().is_none());
        assert!(db.get(key(499)).unwrap().is_some());
        assert!(db.get(key(1500)).unwrap().is_some(), "the end is excluded");
        assert_eq!(db.range(key(400)..key(600)).count(), 100);
    };
    check(&db);
    db.flush().unwrap();
    check(&db);
    // Written after the tombstone: visible.
    db.put(key(1000), "back").unwrap();
    assert_eq!(db.get(key(1000)).unwrap().as_deref(), Some(&b"back"[..]));
    db.delete(key(1000)).unwrap();

    db.compact_range::<&[u8]>(..).unwrap();
    check(&db);
    assert_levels_disjoint(&db);
    let after = table_bytes(&db);
    assert!(
        after < before * 6 / 10,
        "compaction kept the deleted half: {after} bytes of {before}"
    );
    drop(db);
    let db = Db::open(dir.path(), options()).unwrap();
    check(&db);
}

#[test]
fn a_snapshot_keeps_what_a_later_range_delete_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    fill(&db, 1000);
    let snap = db.snapshot();
    db.delete_range(key(0), key(1000)).unwrap();
    db.flush().unwrap();
    db.compact_range::<&[u8]>(..).unwrap();
    assert!(keys(&db).is_empty());
    assert_eq!(snap.iter().count(), 1000);
    assert!(snap.get(key(7)).unwrap().is_some());
    drop(snap);
    db.compact_range::<&[u8]>(..).unwrap();
    assert!(keys(&db).is_empty());
    assert!(
        table_bytes(&db) < 4096,
        "nothing left to keep once the snapshot is gone: {} bytes",
        table_bytes(&db)
    );
}

#[test]
fn range_deletes_survive_a_reopen_from_the_wal_and_from_tables() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        fill(&db, 300);
        db.flush().unwrap();
        db.delete_range(key(0), key(100)).unwrap();
        db.flush().unwrap();
        let mut batch = WriteBatch::new();
        batch.delete_range(key(200), key(250));
        batch.put(key(210), "kept");
        db.write(batch, &WriteOptions { sync: true }).unwrap();
    }
    let db = Db::open(dir.path(), options()).unwrap();
    let want: Vec<String> = (100..200)
        .chain(std::iter::once(210))
        .chain(250..300)
        .map(key)
        .collect();
    assert_eq!(
        keys(&db),
        want,
        "a batch's later put wins over its range delete"
    );
    assert_eq!(db.get(key(210)).unwrap().as_deref(), Some(&b"kept"[..]));
}

#[test]
fn a_reversed_range_is_refused_and_an_empty_one_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    fill(&db, 10);
    assert!(matches!(
        db.delete_range(key(5), key(2)),
        Err(Error::InvalidArgument(_))
    ));
    db.delete_range(key(5), key(5)).unwrap();
    assert_eq!(keys(&db).len(), 10);
}

#[test]
fn a_range_delete_under_newer_writes_and_a_snapshot_keeps_levels_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    fill(&db, 2000);
    // The snapshot reads through the version it pinned; the compactions
    // below merge the tombstone with the newer writes over its range
    // (compaction/tests.rs checks outputs around tombstones that are kept).
    let snap = db.snapshot();
    db.delete_range(key(100), key(1900)).unwrap();
    for i in (0..2000).step_by(3) {
        db.put(key(i), "newer").unwrap();
    }
    db.flush().unwrap();
    db.compact_range::<&[u8]>(..).unwrap();
    assert_levels_disjoint(&db);
    let want: Vec<String> = (0..2000)
        .filter(|i| !(100..1900).contains(i) || i % 3 == 0)
        .map(key)
        .collect();
    assert_eq!(keys(&db), want);
    assert_eq!(snap.iter().count(), 2000);
    drop(snap);
    db.compact_range::<&[u8]>(..).unwrap();
    assert_levels_disjoint(&db);
    assert_eq!(keys(&db), want);
}
