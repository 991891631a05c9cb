//! `Db::checkpoint`: a consistent copy taken while a writer runs, that
//! opens as a database of its own and outlives what the source does next.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_engine::{Db, Error, Options};

fn small() -> Options {
    // Small memtables, so the source has tables in several levels and
    // compacts while the checkpoint is taken.
    Options::default().write_buffer_size(64 << 10)
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat((i % 100) as usize)).into_bytes()
}

#[test]
fn a_checkpoint_under_writes_holds_a_prefix_of_them_and_outlives_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("live"), small()).unwrap();
    // Deleted before the checkpoint: must stay deleted in the copy.
    for i in 0..500 {
        db.put(format!("gone-{i}"), b"v").unwrap();
        db.delete(format!("gone-{i}")).unwrap();
    }
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, acked) = (db.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..60_000u64 {
                db.put(key(i), value(i)).unwrap();
                acked.store(i + 1, Ordering::Release);
            }
        })
    };
    while acked.load(Ordering::Acquire) < 20_000 {
        std::thread::yield_now();
    }
    let before = acked.load(Ordering::Acquire);
    let copy_dir = dir.path().join("copy");
    db.checkpoint(&copy_dir).unwrap();
    let after = acked.load(Ordering::Acquire);
    writer.join().unwrap();

    // The source moves on: everything compacted (the copy's tables are
    // unlinked from its directory) and overwritten.
    db.compact_range::<&[u8]>(..).unwrap();
    for i in 0..1_000 {
        db.put(key(i), b"after").unwrap();
    }
    drop(db);

    let copy = Db::open(&copy_dir, small()).unwrap();
    // One writer, one key after another: the copy holds keys 0..n for one
    // n, with every write acknowledged before the call among them.
    let held: Vec<u64> = copy
        .range::<&[u8]>(..)
        .map(|item| item.unwrap())
        .filter(|(k, _)| k.starts_with(b"key-"))
        .map(|(k, v)| {
            let i: u64 = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
            assert_eq!(v, value(i), "key {i}");
            i
        })
        .collect();
    let n = held.len() as u64;
    assert_eq!(held, (0..n).collect::<Vec<_>>());
    assert!(
        n >= before,
        "{n} keys, {before} acknowledged before the checkpoint"
    );
    assert!(
        n <= after.max(before),
        "{n} keys, {after} acknowledged after it"
    );
    for i in 0..500 {
        assert_eq!(copy.get(format!("gone-{i}")).unwrap(), None);
    }
    // The copy is a database of its own: it takes writes and survives a
    // reopen, and the source's later writes are not in it.
    copy.put(b"only-in-copy", b"1").unwrap();
    drop(copy);
    let copy = Db::open(&copy_dir, small()).unwrap();
    assert_eq!(
        copy.get(b"only-in-copy").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(copy.get(key(0)).unwrap(), Some(value(0)));
    let live = Db::open(dir.path().join("live"), small()).unwrap();
    assert_eq!(live.get(b"only-in-copy").unwrap(), None);
    assert_eq!(live.get(key(0)).unwrap().as_deref(), Some(&b"after"[..]));
}

#[test]
fn a_checkpoint_refuses_an_existing_directory_and_copies_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("live"), Options::default()).unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    assert!(matches!(
        db.checkpoint(dir.path().join("taken")),
        Err(Error::InvalidArgument(_))
    ));
    // Nothing was written into the directory that was refused.
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        0
    );
    db.checkpoint(dir.path().join("empty")).unwrap();
    let copy = Db::open(dir.path().join("empty"), Options::default()).unwrap();
    assert_eq!(copy.range::<&[u8]>(..).count(), 0);
}
