//! Behaviour of the public API: limits, concurrency, snapshot isolation
//! across flushes, sequence numbers across reopen, stalls that resume.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::sync::Arc;

use strata_engine::{Compression, Db, Error, Options, WriteBatch, WriteOptions};

fn small() -> Options {
    Options::default().write_buffer_size(64 << 10)
}

#[test]
fn oversized_keys_and_values_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small().max_key_size(16).max_value_size(100);
    let db = Db::open(dir.path(), opts).unwrap();
    assert!(matches!(
        db.put([b'k'; 17], "v"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        db.put("k", [0u8; 101]),
        Err(Error::InvalidArgument(_))
    ));
    let mut batch = WriteBatch::new();
    batch.put("ok", "fine");
    batch.put("big", [0u8; 101]);
    let err = db.write(batch, &WriteOptions::default()).unwrap_err();
    assert!(err.to_string().contains("max_value_size"), "{err}");
    // Atomic: the valid half of the refused batch is not there either.
    assert_eq!(db.get("ok").unwrap(), None);
    db.put([b'k'; 16], [0u8; 100]).unwrap();
}

#[test]
fn zstd_levels_are_checked_and_need_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let with = |level| Options::default().compression_per_level(vec![Compression::Zstd { level }]);
    for level in [0, 23, -1] {
        let err = Db::open(dir.path(), with(level)).unwrap_err();
        assert!(err.to_string().contains("Zstd"), "{level}: {err}");
    }
    let opened = Db::open(dir.path(), with(3));
    if cfg!(feature = "zstd") {
        let db = opened.unwrap();
        db.put("k", "v".repeat(1000)).unwrap();
        db.flush().unwrap();
        assert_eq!(db.get("k").unwrap(), Some("v".repeat(1000).into_bytes()));
    } else {
        let err = opened.unwrap_err();
        assert!(err.to_string().contains("`zstd` feature"), "{err}");
    }
}

/// Reads of compressed blocks go through the cache: the first read of a
/// key's blocks misses, a second read of the same key only hits, and the
/// bytes stay in bounds.
#[test]
fn block_cache_counts_hits_and_misses_of_compressed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small()
        .compression_per_level(vec![Compression::Lz4])
        .block_cache_capacity(1 << 20);
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..2000u32 {
        db.put(format!("key{i:05}"), "compressible ".repeat(8))
            .unwrap();
    }
    db.flush().unwrap();
    let before = db.stats();
    assert_eq!(before.block_cache_capacity, 1 << 20);
    assert!(db.get("key00042").unwrap().is_some());
    let first = db.stats();
    assert!(first.block_cache_misses > before.block_cache_misses);
    assert!(db.get("key00042").unwrap().is_some());
    let second = db.stats();
    assert!(second.block_cache_hits > first.block_cache_hits);
    assert_eq!(second.block_cache_misses, first.block_cache_misses);
    assert!(second.block_cache_bytes > 0 && second.block_cache_bytes <= 1 << 20);
    assert!(second.to_string().contains("Block cache: "), "{second}");
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Options::default().block_size(10);
    assert!(matches!(
        Db::open(dir.path(), bad),
        Err(Error::InvalidArgument(_))
    ));
    let missing = Options::default().create_if_missing(false);
    assert!(Db::open(dir.path().join("nope"), missing).is_err());
}

#[test]
fn concurrent_writers_all_land_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..1500 {
                    let mut batch = WriteBatch::new();
                    batch.put(format!("t{t}-{i:05}"), format!("{t}:{i}"));
                    batch.put(format!("last-{t}"), format!("{i}"));
                    db.write(batch, &WriteOptions { sync: i % 100 == 0 })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(db);
    let db = Db::open(dir.path(), small()).unwrap();
    for t in 0..8 {
        assert_eq!(db.get(format!("last-{t}")).unwrap().unwrap(), b"1499");
        let n = db.prefix(format!("t{t}-")).count();
        assert_eq!(n, 1500);
    }
}

#[test]
fn snapshot_and_iterator_keep_their_view_across_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    for i in 0..1000 {
        db.put(format!("k{i:04}"), "old").unwrap();
    }
    let snap = db.snapshot();
    let mut iter = db.range::<&[u8]>(..);
    let first = iter.next().unwrap().unwrap();
    for i in 0..1000 {
        db.put(format!("k{i:04}"), "new").unwrap();
        if i % 2 == 0 {
            db.delete(format!("k{i:04}")).unwrap();
        }
    }
    db.flush().unwrap();
    assert_eq!(first.1, b"old");
    let rest: Vec<_> = iter.map(|kv| kv.unwrap().1).collect();
    assert_eq!(rest.len(), 999);
    assert!(rest.iter().all(|v| v == b"old"));
    assert_eq!(snap.range::<&[u8]>(..).count(), 1000);
    assert_eq!(snap.get("k0000").unwrap().unwrap(), b"old");
    assert_eq!(db.get("k0000").unwrap(), None);
    assert_eq!(db.get("k0001").unwrap().unwrap(), b"new");
    // The snapshot outlives the database handle.
    drop(db);
    assert_eq!(snap.prefix("k00").rev().count(), 100);
}

#[test]
fn newer_writes_win_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for (round, flush) in [(0, true), (1, false), (2, true), (3, false)] {
        let db = Db::open(dir.path(), small()).unwrap();
        if round > 0 {
            assert_eq!(
                db.get("k").unwrap().unwrap(),
                format!("v{}", round - 1).as_bytes()
            );
        }
        db.put("k", format!("v{round}")).unwrap();
        if flush {
            db.flush().unwrap();
        }
    }
    let db = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.get("k").unwrap().unwrap(), b"v3");
}

#[test]
fn writers_stalled_on_frozen_memtables_resume() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .write_buffer_size(64 << 10)
        .max_immutable_memtables(1);
    let db = Arc::new(Db::open(dir.path(), opts).unwrap());
    let value = vec![7u8; 1000];
    // ~10 MiB through a 64 KiB memtable with one frozen slot: writers must
    // repeatedly wait for the flusher, and every one must finish.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            let value = value.clone();
            std::thread::spawn(move || {
                for i in 0..2500 {
                    db.put(format!("{t}-{i}"), &value).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(db.range::<&[u8]>(..).count(), 10_000);
    let stats = db.stats();
    assert!(stats.flushes > 10, "expected many flushes: {stats}");
    assert!(stats.stall_stops > 0, "expected writers to stall: {stats}");
    assert!(stats.stall_stop_time > std::time::Duration::ZERO);
}

#[test]
fn close_waits_for_the_last_handle_and_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let clone = db.clone();
    db.put(b"a", b"1").unwrap();
    // Not the last handle: refused, and the clone still serves.
    assert!(matches!(db.close(), Err(Error::InvalidArgument(_))));
    clone.put(b"b", b"2").unwrap();
    assert_eq!(clone.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    clone.sync_wal().unwrap();
    clone.close().unwrap();
    // Closed for good once close returns: the directory's lock is free at
    // once, and every write (none of them synced by itself) is there.
    let reopened = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(reopened.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(reopened.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
}
