//! Tables of format version 1 (an index of fixed 12-byte handles, stored
//! uncompressed) stay readable after the switch to version 2: a database
//! written by the engine before it (`tests/fixtures/format-v1`, one LZ4
//! table and one uncompressed one, made by a build of 2026-12-04) opens,
//! reads back every key, and compacts into version-2 tables that read the
//! same.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::path::Path;

use strata_engine::{Db, Options};

/// What the fixture's writer put: `key{i}` for i in 0..2000, every third
/// one overwritten in the second table, `key00001` deleted there.
fn expected(i: u32) -> Option<Vec<u8>> {
    let value = |n: u32| format!("value-{n:05}-{}", "abcdefgh".repeat(8)).into_bytes();
    match i {
        1 => None,
        i if i % 3 == 0 => Some(value(i + 1_000_000)),
        i => Some(value(i)),
    }
}

fn check(db: &Db) {
    for i in 0..2000u32 {
        assert_eq!(
            db.get(format!("key{i:05}")).unwrap(),
            expected(i),
            "key {i}"
        );
    }
    assert_eq!(db.range::<&[u8]>(..).count(), 1999);
}

#[test]
fn a_database_of_version_1_tables_reads_and_compacts_into_version_2() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let before: Vec<u64> = {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        assert!(
            db.recovery_report().is_clean(),
            "{:?}",
            db.recovery_report()
        );
        check(&db);
        let tables = db.live_tables().iter().map(|t| t.number).collect();
        db.compact_range::<&[u8]>(..).unwrap();
        check(&db);
        tables
    };
    let db = Db::open(dir.path(), Options::default()).unwrap();
    check(&db);
    let after: Vec<u64> = db.live_tables().iter().map(|t| t.number).collect();
    assert_eq!(before.len(), 2, "the fixture has two tables");
    assert!(
        after.iter().all(|t| !before.contains(t)),
        "compaction rewrote every table: {before:?} -> {after:?}"
    );
}
