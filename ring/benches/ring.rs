//! Lookup and build costs on a 100-node ring with 256 vnodes per node, and
//! the cost of allocating tokens for a join into 100 nodes with 16 each.
//!
//! `replicas` runs beside `token` alone, the hash every lookup pays, so the
//! ring's own share of a lookup reads off the same run.

#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata_ring::{token, Member, NodeId, ReplicationFactor, Ring};

const NODES: usize = 100;
const VNODES: u32 = 256;
/// Distinct keys per iteration, so the lookups spread over the whole ring
/// instead of hitting one cached position.
const KEYS: usize = 4096;

fn members() -> Vec<Member> {
    (0..NODES)
        .map(|i| Member::derived(format!("node-{i}"), VNODES))
        .collect()
}

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("user:{i}").into_bytes())
        .collect()
}

fn lookups(c: &mut Criterion) {
    let Ok(ring) = Ring::new(members()) else {
        return;
    };
    let Ok(rf) = ReplicationFactor::new(3) else {
        return;
    };
    let keys = keys();
    let mut group = c.benchmark_group("lookup_100x256");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("token", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| token(black_box(k)))
                .fold(0, u64::wrapping_add)
        })
    });
    group.bench_function("replicas_rf3", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| ring.replicas(black_box(k), rf).count())
                .sum::<usize>()
        })
    });
    group.bench_function("owner", |b| {
        b.iter(|| {
            keys.iter()
                .filter(|k| ring.owner(black_box(k)).as_str().len() > 6)
                .count()
        })
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_100x256");
    group.throughput(Throughput::Elements(NODES as u64 * u64::from(VNODES)));
    group.sample_size(20);
    group.bench_function("new_derived", |b| {
        b.iter_batched(members, Ring::new, BatchSize::LargeInput)
    });
    group.finish();
}

fn allocate(c: &mut Criterion) {
    let Ok(rf) = ReplicationFactor::new(3) else {
        return;
    };
    let ids = (0..NODES).map(|i| NodeId::from(format!("node-{i}")));
    let Ok(ring) = Ring::allocated(ids, 16, rf) else {
        return;
    };
    let joiner = NodeId::from("joiner");
    let mut group = c.benchmark_group("allocate_100x16");
    group.throughput(Throughput::Elements(16));
    group.sample_size(20);
    group.bench_function("join_rf3", |b| b.iter(|| ring.allocate(&joiner, 16, rf)));
    group.finish();
}

criterion_group!(benches, lookups, build, allocate);
criterion_main!(benches);
