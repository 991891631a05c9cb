//! What sealing costs gossip: one message sealed into its datagrams and
//! opened again by a receiver (AEAD both ways, replay window, reassembly),
//! reported as messages per second for the sizes chitchat sends: a
//! heartbeat-only SYN of a small cluster, a delta carrying a few member
//! records, and a near-full 64 KiB reply (two fragments).
//!
//!     cargo bench -p strata-server --bench gossip

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_server::auth::ClusterSecret;
use strata_server::gossip_transport::{seal_message, GossipKey, Receiver};

/// Sender's and receiver's wall clock, ms: checking it costs the same at any value.
const NOW: u64 = 1_800_000_000_000;

fn seal_and_open(c: &mut Criterion) {
    let key = GossipKey::derive(
        &ClusterSecret::new("bench-secret-0123456789".into()),
        "strata",
    );
    let mut group = c.benchmark_group("gossip");
    for size in [200usize, 4 * 1024, 65_000] {
        let message = vec![0x5au8; size];
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("seal_open", size), &message, |b, m| {
            let mut receiver = Receiver::new(key.clone(), 16, Duration::from_millis(500));
            let mut counter = 0;
            b.iter(|| {
                let datagrams = seal_message(&key, 1, 1, &mut counter, NOW, m).unwrap();
                let mut whole = None;
                for d in &datagrams {
                    whole = receiver.receive(d, NOW).unwrap().or(whole);
                }
                assert_eq!(whole.map(|w| w.len()), Some(m.len()));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
