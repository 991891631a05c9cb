//! Corruption tests: damage each kind of file on purpose and check that the
//! database reports `Error::Corruption` naming the file (or, for a torn WAL
//! tail, recovers cleanly up to the tear), and never panics.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::path::{Path, PathBuf};

use strata_engine::{Db, Error, Options, WriteOptions};

fn options() -> Options {
    Options::default().write_buffer_size(64 << 10)
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| pred(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    v.sort();
    v
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(50)).into_bytes()
}

/// Writes `n` keys and returns a copy of the directory taken while the
/// database was still open: what a crash (kill -9) at that moment leaves, the
/// writes in the WAL only.
fn crash_copy(n: u32) -> tempfile::TempDir {
    let live = tempfile::tempdir().unwrap();
    let db = Db::open(live.path(), Options::default()).unwrap();
    for i in 0..n {
        db.put(format!("key{i:05}"), value(i)).unwrap();
    }
    let copy = tempfile::tempdir().unwrap();
    for path in files_with(live.path(), |n| n != "LOCK") {
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    drop(db);
    copy
}

/// The bytes of a WAL up to its last record: a WAL appended through a
/// mapping holds reserved zeros behind it until it is closed.
fn written_len(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// How a crash tears the last record of a WAL: with a `write` cut short
/// (the file ends early), or with a copy into a mapping cut short (zeros
/// where the rest of the record would be).
const TEARS: [fn(&Path, usize); 2] = [
    |log, end| {
        let f = std::fs::OpenOptions::new().write(true).open(log).unwrap();
        f.set_len(end as u64).unwrap();
    },
    |log, end| {
        let mut bytes = std::fs::read(log).unwrap();
        bytes[end..].fill(0);
        std::fs::write(log, bytes).unwrap();
    },
];

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn expect_corruption(result: Result<Db, Error>, file_part: &str) {
    match result {
        Err(Error::Corruption { file, .. }) => {
            assert!(
                file.to_string_lossy().contains(file_part),
                "corruption names {file:?}, expected {file_part}"
            )
        }
        Err(other) => panic!("expected corruption in {file_part}, got {other}"),
        Ok(_) => panic!("expected corruption in {file_part}, the database opened"),
    }
}

#[test]
fn wal_byte_flip_in_the_middle_is_corruption() {
    let dir = crash_copy(500);
    let log = files_with(dir.path(), |n| n.ends_with(".log"))
        .pop()
        .unwrap();
    flip(&log, 1000);
    expect_corruption(Db::open(dir.path(), Options::default()), ".log");
}

#[test]
fn wal_torn_tail_recovers_up_to_the_tear() {
    for tear in TEARS {
        let dir = crash_copy(500);
        let log = files_with(dir.path(), |n| n.ends_with(".log"))
            .pop()
            .unwrap();
        // Cut the last record in half, as a crash during its write would.
        tear(&log, written_len(&log) - 20);
        let db = Db::open(dir.path(), Options::default()).unwrap();
        for i in 0..499 {
            assert_eq!(
                db.get(format!("key{i:05}")).unwrap(),
                Some(value(i)),
                "key {i}"
            );
        }
        assert_eq!(db.get("key00499").unwrap(), None);
        // The recovered state is durable: a second reopen sees the same.
        drop(db);
        let db = Db::open(dir.path(), Options::default()).unwrap();
        assert_eq!(db.range::<&[u8]>(..).count(), 499);
    }
}

#[test]
fn older_wal_damage_is_corruption_even_at_its_tail() {
    for tear in TEARS {
        let dir = crash_copy(500);
        // Give the log a successor, as a memtable rotation would: the first log
        // is then no longer the newest and was complete when it was closed.
        let log = files_with(dir.path(), |n| n.ends_with(".log"))
            .pop()
            .unwrap();
        let number: u64 = log.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        std::fs::write(dir.path().join(format!("{:06}.log", number + 1)), b"").unwrap();
        tear(&log, written_len(&log) - 20);
        expect_corruption(Db::open(dir.path(), options()), ".log");
    }
}

#[test]
fn table_byte_flips_are_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        for i in 0..300 {
            db.put(format!("key{i:05}"), value(i)).unwrap();
        }
        db.flush().unwrap();
    }
    let table = files_with(dir.path(), |n| n.ends_with(".sst"))
        .pop()
        .unwrap();
    let good = std::fs::read(&table).unwrap();
    for offset in (0..good.len()).step_by(good.len() / 40) {
        std::fs::write(&table, &good).unwrap();
        flip(&table, offset);
        // Damage shows either at open (footer, index, filter, properties) or on read (data blocks).
        match Db::open(dir.path(), options()) {
            Err(e) => assert!(e.is_corruption(), "flip at {offset}: {e}"),
            Ok(db) => {
                let scan: Result<Vec<_>, _> = db.range::<&[u8]>(..).collect();
                let err = scan.expect_err("a flipped data byte must not scan cleanly");
                assert!(err.is_corruption(), "flip at {offset}: {err}");
                match &err {
                    Error::Corruption { file, .. } => assert_eq!(file, &table),
                    _ => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn missing_table_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        db.put("k", "v").unwrap();
        db.flush().unwrap();
    }
    let table = files_with(dir.path(), |n| n.ends_with(".sst"))
        .pop()
        .unwrap();
    std::fs::remove_file(&table).unwrap();
    expect_corruption(Db::open(dir.path(), options()), ".sst");
}

#[test]
fn manifest_damage_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        for i in 0..50 {
            db.put(format!("key{i}"), "v").unwrap();
            db.flush().unwrap();
        }
    }
    let manifest = files_with(dir.path(), |n| n.starts_with("MANIFEST-"))
        .pop()
        .unwrap();
    let good = std::fs::read(&manifest).unwrap();
    flip(&manifest, 10);
    expect_corruption(Db::open(dir.path(), options()), "MANIFEST-");
    std::fs::write(&manifest, &good).unwrap();
    std::fs::write(dir.path().join("CURRENT"), "MANIFEST-nonsense\n").unwrap();
    expect_corruption(Db::open(dir.path(), options()), "CURRENT");
}

#[test]
fn second_open_of_a_live_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    db.write(
        strata_engine::WriteBatch::new(),
        &WriteOptions { sync: true },
    )
    .unwrap();
    assert!(matches!(
        Db::open(dir.path(), options()),
        Err(Error::Locked(_))
    ));
    drop(db);
    Db::open(dir.path(), options()).unwrap();
}
