//! Measures the ring against its goals and prints one line per figure:
//!
//! - keys moved when a node joins an N-node ring, against the ideal 1/(N+1);
//! - max/mean ownership of 10 nodes, allocated against random tokens;
//! - the cost of `replicas(key, 3)` on 100 nodes x 256 vnodes.
//!
//! Run with `cargo run --release -p strata-ring --example ring_report`.

use std::hint::black_box;
use std::time::Instant;

use strata_ring::{Member, NodeId, ReplicationFactor, Ring, RingError};

const KEYS: usize = 1_000_000;
const VNODES: u32 = 16;

fn ids(n: usize) -> impl Iterator<Item = NodeId> {
    (0..n).map(|i| NodeId::from(format!("node-{i}")))
}

fn derived(n: usize, vnodes: u32) -> Result<Ring, RingError> {
    Ring::new(ids(n).map(|id| Member::derived(id, vnodes)))
}

/// The fraction of `keys` whose replica set differs between the rings.
fn moved(before: &Ring, after: &Ring, keys: &[Vec<u8>], rf: ReplicationFactor) -> f64 {
    let changed = keys
        .iter()
        .filter(|key| {
            let old = before.replicas(key, rf);
            let new = after.replicas(key, rf);
            old.len() != new.len() || !new.clone().all(|n| old.clone().any(|o| o == n))
        })
        .count();
    changed as f64 / keys.len() as f64
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn main() -> Result<(), RingError> {
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| format!("key-{i}").into_bytes()).collect();
    let one = ReplicationFactor::ONE;
    let three = ReplicationFactor::new(3)?;
    let mut all_ok = true;

    println!("keys moved when a node joins ({KEYS} keys, {VNODES} allocated vnodes per node)");
    for n in [3, 10, 50] {
        let ring = Ring::allocated(ids(n), VNODES, three)?;
        let joiner = NodeId::from("joiner");
        let after = ring.add(ring.allocate(&joiner, VNODES, three)?)?;
        let ideal = 1.0 / (n as f64 + 1.0);
        let got = moved(&ring, &after, &keys, one);
        let off = (got - ideal) / ideal;
        let ok = off.abs() <= 0.05;
        all_ok &= ok;
        let rf3 = moved(&ring, &after, &keys, three);
        println!(
            "  N={n:>2}: rf=1 moved {got:.4} ideal {ideal:.4} ({:+.2}%) {}; rf=3 moved {rf3:.4} ideal {:.4}",
            off * 100.0,
            verdict(ok),
            3.0 * ideal,
        );
    }

    println!("max/mean ownership, 10 nodes (rf=1 / rf=3)");
    let allocated = Ring::allocated(ids(10), VNODES, three)?;
    let ratio = allocated.ownership(one).max_over_mean();
    let ok = ratio <= 1.05;
    all_ok &= ok;
    println!(
        "  allocated, {VNODES:>3} vnodes: {ratio:.4} / {:.4} {}",
        allocated.ownership(three).max_over_mean(),
        verdict(ok)
    );
    for vnodes in [16, 256] {
        let ring = derived(10, vnodes)?;
        println!(
            "  random,    {vnodes:>3} vnodes: {:.4} / {:.4}",
            ring.ownership(one).max_over_mean(),
            ring.ownership(three).max_over_mean()
        );
    }
    let hundred = Ring::allocated(ids(100), VNODES, three)?;
    println!(
        "  (100 nodes, allocated, {VNODES} vnodes: {:.4} / {:.4})",
        hundred.ownership(one).max_over_mean(),
        hundred.ownership(three).max_over_mean()
    );

    let ring = derived(100, 256)?;
    let lookups = 10 * KEYS;
    let start = Instant::now();
    let mut sink = 0usize;
    for key in keys.iter().cycle().take(lookups) {
        sink += black_box(ring.replicas(black_box(key), three)).count();
    }
    let ns = start.elapsed().as_nanos() as f64 / lookups as f64;
    black_box(sink);
    let ok = ns < 100.0;
    all_ok &= ok;
    println!(
        "replicas(key, 3), 100 nodes x 256 vnodes: {ns:.1} ns {}",
        verdict(ok)
    );

    println!("goals: {}", if all_ok { "all met" } else { "NOT all met" });
    Ok(())
}
