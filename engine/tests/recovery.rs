//! Recovery from a full disk without a reopen: on a small tmpfs filled with
//! a ballast file, a WAL append, a flush and a background compaction each
//! fail with ENOSPC; writes are refused (reads go on) until the ballast is
//! deleted, then resume by themselves, with every acknowledged write
//! readable and a reopen afterwards replaying cleanly.
//!
//! Mounting needs root (CAP_SYS_ADMIN); where it is not permitted each test
//! prints why and passes without checking anything.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_engine::{Db, Error, Health, Options};

mod common;
use common::tmpfs::{Ballast, Tmpfs};

/// How long recovery may take once space is back: the retry backoff tops
/// out at 1 s, plus a flush of a small memtable.
const RESUME_DEADLINE: Duration = Duration::from_secs(5);

fn key(i: u32) -> Vec<u8> {
    format!("key{:08}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    let mut v = format!("{i}:{round}:").into_bytes();
    v.resize(200, b'x');
    v
}

/// Flushes and compactions only when the test asks (besides the L0 trigger).
fn options() -> Options {
    Options::default().write_buffer_size(4 << 20)
}

/// Asserts that writes are refused as retryable and reads still served.
fn assert_suspended(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    assert!(
        matches!(db.health(), Health::Retrying { .. }),
        "{:?}",
        db.health()
    );
    let err = db.put(b"while-full", b"x").unwrap_err();
    assert!(matches!(err, Error::Retrying(_)), "{err}");
    assert!(err.is_retryable());
    assert!(matches!(db.background_error(), Some(Error::Retrying(_))));
    assert!(db.stats().background_error.is_some());
    for (k, v) in model.iter().step_by(17) {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "reads go on");
    }
}

/// Polls until a write is accepted; returns how long that took.
fn wait_for_writes(db: &Db) -> Duration {
    let start = Instant::now();
    loop {
        match db.put(b"probe", b"p") {
            Ok(()) => return start.elapsed(),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    start.elapsed() < RESUME_DEADLINE,
                    "writes did not resume: {e}; {}",
                    db.stats()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn assert_holds(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (k, v) in model {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
    assert_eq!(db.get(b"while-full").unwrap(), None);
}

#[test]
fn a_full_disk_with_nothing_to_flush_stays_read_only_until_space_returns() {
    let test = "a_full_disk_with_nothing_to_flush_stays_read_only_until_space_returns";
    let Some(fs) = Tmpfs::mount(test, "8m") else {
        return;
    };
    let dir = fs.path().join("db");
    let db = Db::open(&dir, options()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..500 {
        db.put(key(i), value(i, 0)).unwrap();
        model.insert(key(i), value(i, 0));
    }
    // An empty memtable: a retry has nothing to flush, so only a check for
    // room can tell that the disk is still full.
    db.flush().unwrap();
    let ballast = Ballast::fill(fs.path());
    let failed = db.put(key(9_999), value(9_999, 0)).unwrap_err();
    assert!(failed.is_retryable(), "{failed}");
    // Several retries (100, 200, 400, 800 ms apart): writes stay refused
    // the whole time, never back on for a moment.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1_700) {
        assert!(
            matches!(db.health(), Health::Retrying { .. }),
            "health {:?} while the disk is full",
            db.health()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_suspended(&db, &model);
    assert_eq!(db.stats().recoveries, 0);
    ballast.delete();
    let resumed = wait_for_writes(&db);
    eprintln!("{test}: writes resumed {resumed:?} after the space was freed");
    assert_holds(&db, &model);
}

#[test]
fn a_failed_wal_append_on_a_full_disk_suspends_writes_until_space_returns() {
    let test = "a_failed_wal_append_on_a_full_disk_suspends_writes_until_space_returns";
    let Some(fs) = Tmpfs::mount(test, "8m") else {
        return;
    };
    let dir = fs.path().join("db");
    let db = Db::open(&dir, options()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..2000 {
        db.put(key(i), value(i, 0)).unwrap();
        model.insert(key(i), value(i, 0));
    }
    db.flush().unwrap();
    // ~200 KiB in the memtable: flushing it needs more room than the torn
    // record gives back, so recovery cannot succeed while the disk is full.
    for i in 0..1000 {
        db.put(key(i), value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }

    let ballast = Ballast::fill(fs.path());
    // Keys never written before, so that the failed one must read as absent.
    let mut i = 10_000;
    let failed = loop {
        match db.put(key(i), value(i, 1)) {
            Ok(()) => {
                model.insert(key(i), value(i, 1));
                i += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(failed.is_retryable(), "{failed}");
    assert_eq!(
        db.get(key(i)).unwrap(),
        None,
        "a failed write is not applied"
    );
    assert_suspended(&db, &model);
    // Retries go on failing while the disk is full.
    std::thread::sleep(Duration::from_millis(400));
    assert_suspended(&db, &model);
    let stats = db.stats();
    assert!(stats.background_errors >= 2, "{stats}");
    assert_eq!(stats.recoveries, 0, "{stats}");

    ballast.delete();
    let resumed = wait_for_writes(&db);
    eprintln!("{test}: writes resumed {resumed:?} after the space was freed");
    assert_eq!(db.health(), Health::Ok);
    assert!(db.background_error().is_none());
    let stats = db.stats();
    assert!(stats.recoveries >= 1, "{stats}");
    assert!(stats.to_string().contains("recoveries"), "{stats}");
    assert_holds(&db, &model);
    for i in 20_000..20_500 {
        db.put(key(i), value(i, 2)).unwrap();
        model.insert(key(i), value(i, 2));
    }
    assert_eq!(db.get(key(i)).unwrap(), None);

    drop(db);
    let db = Db::open(&dir, options()).expect("a reopen after recovery replays cleanly");
    assert_holds(&db, &model);
    assert_eq!(db.get(key(i)).unwrap(), None, "the failed write stays gone");
}

#[test]
fn a_failed_flush_on_a_full_disk_is_retried_until_space_returns() {
    let test = "a_failed_flush_on_a_full_disk_is_retried_until_space_returns";
    let Some(fs) = Tmpfs::mount(test, "8m") else {
        return;
    };
    let dir = fs.path().join("db");
    let db = Db::open(&dir, options()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..3000 {
        db.put(key(i), value(i, 0)).unwrap();
        model.insert(key(i), value(i, 0));
    }

    let ballast = Ballast::fill(fs.path());
    let err = db.flush().unwrap_err();
    assert!(matches!(err, Error::Retrying(_)), "{err}");
    assert_suspended(&db, &model);

    ballast.delete();
    let resumed = wait_for_writes(&db);
    eprintln!("{test}: writes resumed {resumed:?} after the space was freed");
    db.flush().unwrap();
    let stats = db.stats();
    assert!(stats.flushes >= 1 && stats.recoveries >= 1, "{stats}");
    assert_holds(&db, &model);

    drop(db);
    let db = Db::open(&dir, options()).unwrap();
    assert_holds(&db, &model);
}

#[test]
fn a_failed_background_compaction_on_a_full_disk_is_retried_until_space_returns() {
    let test = "a_failed_background_compaction_on_a_full_disk_is_retried_until_space_returns";
    let Some(fs) = Tmpfs::mount(test, "16m") else {
        return;
    };
    let dir = fs.path().join("db");
    let opts = options().level0_compaction_trigger(2);
    let db = Db::open(&dir, opts.clone()).unwrap();
    let mut model = BTreeMap::new();
    // One big L0 table, then a small one over the same key range: their
    // compaction rewrites ~2 MiB, the flush of the second needs ~100 KiB.
    for i in 0..10_000 {
        db.put(key(i), value(i, 0)).unwrap();
        model.insert(key(i), value(i, 0));
    }
    db.flush().unwrap();
    for i in (0..10_000).step_by(20) {
        db.put(key(i), value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    let ballast = Ballast::fill(fs.path());
    ballast.shrink_by(512 << 10);
    // The flush fits; the compaction it triggers does not (and may fail
    // before the flush call returns).
    match db.flush() {
        Ok(()) | Err(Error::Retrying(_)) => {}
        Err(e) => panic!("{e}"),
    }
    let start = Instant::now();
    while db.health() == Health::Ok {
        assert!(
            start.elapsed() < RESUME_DEADLINE,
            "the compaction did not fail: {}",
            db.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_suspended(&db, &model);
    assert_eq!(db.stats().compactions, 0);

    ballast.delete();
    let resumed = wait_for_writes(&db);
    eprintln!("{test}: writes resumed {resumed:?} after the space was freed");
    let stats = db.stats();
    assert!(stats.compactions >= 1 && stats.recoveries >= 1, "{stats}");
    assert_eq!(stats.levels[0].tables, 0, "{stats}");
    assert_holds(&db, &model);

    drop(db);
    let db = Db::open(&dir, opts).unwrap();
    assert_holds(&db, &model);
}

#[test]
fn closing_while_suspended_by_a_torn_wal_append_reopens_cleanly() {
    let test = "closing_while_suspended_by_a_torn_wal_append_reopens_cleanly";
    let Some(fs) = Tmpfs::mount(test, "8m") else {
        return;
    };
    let dir = fs.path().join("db");
    let db = Db::open(&dir, options()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..1000 {
        db.put(key(i), value(i, 0)).unwrap();
        model.insert(key(i), value(i, 0));
    }
    let ballast = Ballast::fill(fs.path());
    // The log's last page has room for part of a record: the append that
    // fails leaves a torn record behind.
    let mut i = 10_000;
    while db.put(key(i), value(i, 0)).is_ok() {
        model.insert(key(i), value(i, 0));
        i += 1;
    }
    // Long enough for retries to have cut the damaged log and moved writes
    // to a fresh one, whose memtable flush then fails: the damaged log is
    // no longer the newest when the database closes.
    std::thread::sleep(Duration::from_millis(400));
    assert_suspended(&db, &model);
    drop(db);

    ballast.delete();
    let db = Db::open(&dir, options()).expect("no corruption from the failed append");
    assert_holds(&db, &model);
    assert_eq!(db.get(key(i)).unwrap(), None, "the failed write stays gone");
}
