//! Model test: random operation sequences against a `BTreeMap`, including
//! batches, range deletes, snapshots, flushes and reopening the database.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use strata_engine::{Compression, Db, Options, Snapshot, WriteBatch, WriteOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    /// Deletes the keys from the first to the second, excluded, in either order.
    DeleteRange(u8, u8),
    Batch(Vec<(u8, Option<Vec<u8>>)>),
    Get(u8),
    Range(Option<u8>, Option<u8>, bool),
    Prefix(u8),
    /// Alternate next() and next_back() over the whole range.
    Zigzag,
    TakeSnapshot,
    CheckSnapshot(usize),
    DropSnapshot(usize),
    Flush,
    /// Manual compaction of a key range.
    Compact(Option<u8>, Option<u8>),
    Reopen,
}

/// Keys from a small space so that operations collide; two-byte keys share prefixes.
fn key(k: u8) -> Vec<u8> {
    vec![b'k', k / 16, k % 16]
}

fn op() -> impl Strategy<Value = Op> {
    let value = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        30 => (any::<u8>(), value.clone()).prop_map(|(k, v)| Op::Put(k, v)),
        10 => any::<u8>().prop_map(Op::Delete),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        8 => proptest::collection::vec((any::<u8>(), proptest::option::of(value)), 1..8).prop_map(Op::Batch),
        10 => any::<u8>().prop_map(Op::Get),
        6 => (proptest::option::of(any::<u8>()), proptest::option::of(any::<u8>()), any::<bool>())
            .prop_map(|(a, b, rev)| Op::Range(a, b, rev)),
        3 => (0u8..16).prop_map(Op::Prefix),
        2 => Just(Op::Zigzag),
        4 => Just(Op::TakeSnapshot),
        5 => any::<usize>().prop_map(Op::CheckSnapshot),
        2 => any::<usize>().prop_map(Op::DropSnapshot),
        3 => Just(Op::Flush),
        2 => (proptest::option::of(any::<u8>()), proptest::option::of(any::<u8>()))
            .prop_map(|(a, b)| Op::Compact(a, b)),
        2 => Just(Op::Reopen),
    ]
}

fn options() -> Options {
    // A tiny memtable and tiny levels so that sequences rotate, flush and
    // compact often, down to deep levels. Level 0 uncompressed and LZ4
    // below, with a cache of a few blocks, so that runs mix both kinds of
    // table and evict decompressed blocks.
    Options::default()
        .compression_per_level(vec![Compression::None, Compression::Lz4])
        .block_cache_capacity(4 << 10)
        .write_buffer_size(64 << 10)
        .block_size(256)
        .level0_compaction_trigger(2)
        .level0_slowdown_trigger(3)
        .level0_stop_trigger(4)
        .target_table_size(4 << 10)
        .level1_target_size(8 << 10)
}

fn collect(
    iter: impl Iterator<Item = strata_engine::Result<(Vec<u8>, Vec<u8>)>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    iter.collect::<Result<_, _>>().expect("scan failed")
}

/// Checks a full scan both ways against the model.
fn check_all(iter: &dyn Fn() -> strata_engine::Iter, model: &Model) {
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(collect(iter()), want);
    let mut got_rev = collect(iter().rev());
    got_rev.reverse();
    assert_eq!(got_rev, want);
}

/// Levels 1 and deeper hold disjoint tables in key order.
fn check_levels(db: &Db) {
    let tables = db.live_tables();
    for pair in tables.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.level == b.level && a.level > 0 {
            assert!(
                a.largest_key < b.smallest_key,
                "overlap in L{}: {a:?} {b:?}",
                a.level
            );
        }
    }
}

/// Runs `ops` against a fresh database and the model; returns the database
/// with its directory, which must outlive it.
fn run(ops: Vec<Op>) -> (Db, tempfile::TempDir) {
    run_with(ops, &options())
}

/// [`run`] under other options, kept across its reopens.
fn run_with(ops: Vec<Op>, opts: &Options) -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(dir.path(), opts.clone()).unwrap();
    let mut model = Model::new();
    let mut snapshots: Vec<(Snapshot, Model)> = Vec::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                db.put(key(k), &v).unwrap();
                model.insert(key(k), v);
            }
            Op::Delete(k) => {
                db.delete(key(k)).unwrap();
                model.remove(&key(k));
            }
            Op::DeleteRange(a, b) => {
                let (start, end) = (key(a.min(b)), key(a.max(b)));
                db.delete_range(&start, &end).unwrap();
                model.retain(|k, _| *k < start || *k >= end);
            }
            Op::Batch(items) => {
                let mut batch = WriteBatch::new();
                for (k, v) in items {
                    match v {
                        Some(v) => {
                            batch.put(key(k), &v);
                            model.insert(key(k), v);
                        }
                        None => {
                            batch.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                db.write(batch, &WriteOptions { sync: false }).unwrap();
            }
            Op::Get(k) => assert_eq!(db.get(key(k)).unwrap(), model.get(&key(k)).cloned()),
            Op::Range(a, b, rev) => {
                let lo = a.map_or(Bound::Unbounded, |a| Bound::Included(key(a)));
                let hi = b.map_or(Bound::Unbounded, |b| Bound::Excluded(key(b)));
                if let (Bound::Included(l), Bound::Excluded(h)) = (&lo, &hi) {
                    if l > h {
                        continue;
                    }
                }
                let mut want: Vec<_> = model
                    .range((lo.clone(), hi.clone()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let got = if rev {
                    want.reverse();
                    collect(db.range((lo, hi)).rev())
                } else {
                    collect(db.range((lo, hi)))
                };
                assert_eq!(got, want);
            }
            Op::Prefix(p) => {
                let prefix = vec![b'k', p];
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(collect(db.prefix(&prefix)), want);
            }
            Op::Zigzag => {
                let mut it = db.range::<Vec<u8>>(..);
                let mut front = Vec::new();
                let mut back = Vec::new();
                let mut toggle = false;
                loop {
                    toggle = !toggle;
                    let item = if toggle { it.next() } else { it.next_back() };
                    match item {
                        Some(kv) => {
                            if toggle {
                                front.push(kv.unwrap())
                            } else {
                                back.push(kv.unwrap())
                            }
                        }
                        None => break,
                    }
                }
                back.reverse();
                front.extend(back);
                let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(front, want);
            }
            Op::TakeSnapshot => snapshots.push((db.snapshot(), model.clone())),
            Op::CheckSnapshot(i) => {
                if !snapshots.is_empty() {
                    let (snap, at) = &snapshots[i % snapshots.len()];
                    check_all(&|| snap.iter(), at);
                    for k in [0u8, 17, 100, 255] {
                        assert_eq!(snap.get(key(k)).unwrap(), at.get(&key(k)).cloned());
                    }
                }
            }
            Op::DropSnapshot(i) => {
                if !snapshots.is_empty() {
                    let n = snapshots.len();
                    snapshots.remove(i % n);
                }
            }
            Op::Flush => db.flush().unwrap(),
            Op::Compact(a, b) => {
                let lo = a.map_or(Bound::Unbounded, |a| Bound::Included(key(a)));
                let hi = b.map_or(Bound::Unbounded, |b| Bound::Included(key(b)));
                db.compact_range((lo, hi)).unwrap();
                check_levels(&db);
            }
            Op::Reopen => {
                // Snapshots outlive their database handle; they still read their view.
                drop(db);
                db = Db::open(dir.path(), opts.clone()).unwrap();
            }
        }
    }
    check_all(&|| db.iter(), &model);
    check_levels(&db);
    for (snap, at) in &snapshots {
        check_all(&|| snap.iter(), at);
    }
    (db, dir)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matches_btreemap(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops);
    }

    /// Values of 20 bytes and more (about half) live in blob files.
    #[test]
    fn matches_btreemap_with_blob_values(ops in proptest::collection::vec(op(), 1..300)) {
        run_with(ops, &options().blob_threshold(Some(20)));
    }
}

/// Enough data to rotate many memtables between checks, with overwrites.
#[test]
fn large_overwrite_workload_matches_model() {
    let mut ops = Vec::new();
    for round in 0..6u8 {
        for k in 0..=255u8 {
            ops.push(Op::Put(k, vec![round; 300]));
        }
        for k in (0..=255u8).step_by(3) {
            ops.push(Op::Delete(k.wrapping_add(round)));
        }
        ops.push(Op::TakeSnapshot);
        ops.push(Op::Range(Some(10), Some(200), round % 2 == 0));
    }
    ops.push(Op::Reopen);
    ops.push(Op::Zigzag);
    for i in 0..6 {
        ops.push(Op::CheckSnapshot(i));
    }
    let (db, _dir) = run(ops);
    db.wait_for_compactions().unwrap();
    // Counters restart at the reopen; the tree's shape shows the compactions.
    assert!(
        db.live_tables().iter().any(|t| t.level >= 2),
        "expected data below L1: {}",
        db.stats()
    );
}

/// A database written under one compression setting reads back under
/// another, and tables of both kinds coexist after further writes.
#[test]
fn mixed_compression_database_reopens_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    let mut settings = vec![
        vec![Compression::None],
        vec![Compression::Lz4],
        vec![Compression::Lz4, Compression::None],
        vec![Compression::None],
    ];
    if cfg!(feature = "zstd") {
        settings.insert(2, vec![Compression::Zstd { level: 3 }]);
        settings.insert(3, vec![Compression::None, Compression::Zstd { level: 1 }]);
    }
    for (round, compression) in settings.into_iter().enumerate() {
        let opts = options().compression_per_level(compression);
        let db = Db::open(dir.path(), opts).unwrap();
        for (k, v) in &model {
            assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "round {round}");
        }
        for i in 0..800u32 {
            let k = format!("key{:05}", (i * 7 + round as u32 * 13) % 1500).into_bytes();
            let v = format!("value {round} {i} {}", "x".repeat(40)).into_bytes();
            db.put(&k, &v).unwrap();
            model.insert(k, v);
        }
        db.flush().unwrap();
        if round % 2 == 1 {
            db.compact_range::<&[u8]>(..).unwrap();
        }
        let all = collect(db.range::<&[u8]>(..));
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(all, want, "round {round}");
    }
}
