//! Criterion benchmarks of the engine's hot operations, each reported as a
//! throughput (elements per second) so runs compare at a glance:
//! `cargo bench --bench engine`.
//!
//! Every read benchmark runs against a database of `KEYS` 16-byte keys with
//! 100-byte values, flushed and compacted, so reads go through tables and
//! bloom filters rather than the memtable alone.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use strata_kv::engine::{Db, Options, WriteBatch, WriteOptions};

const KEYS: u64 = 200_000;
const VALUE: [u8; 100] = [b'v'; 100];

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{i:016}").as_bytes());
    k
}

fn loaded_db(dir: &std::path::Path) -> Db {
    let db = Db::open(dir, Options::default()).unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..KEYS {
        batch.put(key(i), VALUE);
        if batch.len() == 1000 {
            db.write(std::mem::take(&mut batch), &WriteOptions::default())
                .unwrap();
        }
    }
    db.write(batch, &WriteOptions::default()).unwrap();
    db.compact_range::<&[u8]>(..).unwrap();
    db
}

fn writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Elements(1));
    g.bench_function("put", |b| {
        b.iter(|| db.put(key(rng.gen_range(0..KEYS)), VALUE).unwrap())
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_put_100", |b| {
        b.iter_batched(
            || {
                let mut batch = WriteBatch::new();
                for _ in 0..100 {
                    batch.put(key(rng.gen_range(0..KEYS)), VALUE);
                }
                batch
            },
            |batch| db.write(batch, &WriteOptions::default()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = loaded_db(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            let v = db.get(key(rng.gen_range(0..KEYS))).unwrap();
            assert!(v.is_some());
        })
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            let v = db.get(key(KEYS + rng.gen_range(0..KEYS))).unwrap();
            assert!(v.is_none());
        })
    });
    g.bench_function("snapshot_create", |b| b.iter(|| db.snapshot()));
    const SCAN: u64 = 1000;
    g.throughput(Throughput::Elements(SCAN));
    g.bench_function("range_scan_1000", |b| {
        b.iter(|| {
            let start = key(rng.gen_range(0..KEYS - SCAN));
            let n = db.range(&start[..]..).take(SCAN as usize).count();
            assert_eq!(n, SCAN as usize);
        })
    });
    g.finish();
}

criterion_group!(benches, writes, reads);
criterion_main!(benches);
