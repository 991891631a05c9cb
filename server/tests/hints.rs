//! Hinted handoff, seen on the replica's own engine: a replica that misses
//! QUORUM writes while they go on (killed with SIGKILL, or paused with
//! SIGSTOP) holds every acknowledged one within 10 s of coming back, with
//! no client read in between (a read would repair it): the coordinators
//! kept hints for it and delivered them. Every key is checked on the
//! replica's own engine (`POST /internal/v1/read`), never through a
//! coordinator.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{retry_503, Cluster};

/// Keys written at QUORUM while the replica is away.
const KEYS: usize = 5_000;
/// Writers at once.
const WRITERS: usize = 32;
/// Keys acknowledged before the fault, so that it strikes mid-stream.
const BEFORE_FAULT: usize = 500;
/// How long after it is back the replica must hold every key.
const CONVERGE: Duration = Duration::from_secs(10);
/// Tries of one write (`retry_503`): the failure detector may flap on a
/// busy machine.
const TRIES: u32 = 50;

/// Writes [`KEYS`] keys at QUORUM through nodes 1 and 2 (node 3 is the one
/// that goes away), [`WRITERS`] at a time, counting acknowledgements in
/// `acked`; the keys acknowledged, with their values.
fn write_keys(
    cluster: &Cluster,
    acked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let via = [cluster.nodes[0].url(""), cluster.nodes[1].url("")];
    let client = cluster.client.clone();
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..WRITERS {
            let (next, acked, via, client) =
                (next.clone(), acked.clone(), via.clone(), client.clone());
            set.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= KEYS {
                        return mine;
                    }
                    let (key, value) = (format!("hint-{i}"), format!("value-{i}"));
                    let url = format!("{}/v1/kv/{key}?consistency=quorum", via[i % 2]);
                    let (r, _) = retry_503(TRIES, || client.put(&url).body(value.clone())).await;
                    if r.is_ok_and(|r| r.status() == 204) {
                        acked.fetch_add(1, Ordering::Relaxed);
                        mine.push((key, value));
                    }
                }
            });
        }
        let mut all = Vec::with_capacity(KEYS);
        while let Some(mine) = set.join_next().await {
            all.extend(mine.unwrap());
        }
        all
    })
}

/// Waits until `acked` reaches `n`.
async fn wait_acked(acked: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "writes stalled before the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hints the coordinators (nodes 1 and 2) still hold for node 3.
async fn pending_for_node3(cluster: &Cluster) -> u64 {
    let mut pending = 0;
    for i in 0..2 {
        let info = cluster.node_info(i).await.expect("/v1/node");
        pending += info["hints"]["node3"]["hints"].as_u64().unwrap_or(0);
    }
    pending
}

/// Waits until the coordinators hold no hints for node 3 (all delivered),
/// failing after [`CONVERGE`] from `since`, then checks that node 3's own
/// engine holds every one of `keys` with its value; how long the hints
/// took. Reading 5,000 records back from a debug build takes longer than
/// the delivery itself, so that read is not counted against the deadline:
/// nothing else writes to node 3 meanwhile (no client reads, no writes), so
/// what it finds is what the hints delivered.
async fn wait_converged(cluster: &Cluster, keys: &[(String, String)], since: Instant) -> Duration {
    while pending_for_node3(cluster).await > 0 {
        assert!(
            since.elapsed() < CONVERGE,
            "{} hints still pending for node3 {:?} after it came back",
            pending_for_node3(cluster).await,
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = since.elapsed();
    assert!(took < CONVERGE, "hints took {took:?}");
    let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let records = cluster.local_records(2, &names).await;
    let missing: Vec<&String> = keys
        .iter()
        .zip(records)
        .filter(|((_, v), r)| r.as_ref().and_then(|r| r.value.as_deref()) != Some(v.as_bytes()))
        .map(|((k, _), _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys missing on node3 once no hints were pending, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(3)]
    );
    took
}

/// Hints stored and delivered by the coordinators.
async fn hint_counts(cluster: &Cluster) -> (f64, f64) {
    let mut counts = (0.0, 0.0);
    for i in 0..2 {
        counts.0 += cluster.metric(i, "kvnode_hints_stored_total").await;
        counts.1 += cluster.metric(i, "kvnode_hints_delivered_total").await;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_quorum_writes_holds_them_all_soon_after_its_restart() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let writes = write_keys(&cluster, acked.clone());
    wait_acked(&acked, BEFORE_FAULT).await;
    cluster.nodes[2].kill();
    let keys = writes.await.unwrap();
    assert!(
        keys.len() > KEYS * 9 / 10,
        "only {} writes acknowledged",
        keys.len()
    );

    cluster.nodes[2].restart();
    let back = Instant::now();
    let took = wait_converged(&cluster, &keys, back).await;
    let (stored, delivered) = hint_counts(&cluster).await;
    eprintln!(
        "SIGKILL: {} acknowledged keys all on node3 {took:?} after its restart \
         ({stored} hints stored, {delivered} delivered)",
        keys.len()
    );
    // The keys it missed came by hints, not by anything else.
    assert!(
        delivered >= 1.0 && delivered <= stored,
        "{stored} stored, {delivered} delivered"
    );
    assert_eq!(pending_for_node3(&cluster).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_during_quorum_writes_holds_them_all_soon_after_it_resumes() {
    let _serial = common::SERIAL.lock().await;
    let cluster = Cluster::start(3).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let writes = write_keys(&cluster, acked.clone());
    wait_acked(&acked, BEFORE_FAULT).await;
    cluster.nodes[2].pause();
    let paused = Instant::now();
    let keys = writes.await.unwrap();
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed())).await;
    cluster.nodes[2].resume();
    let back = Instant::now();
    assert!(
        keys.len() > KEYS * 9 / 10,
        "only {} writes acknowledged",
        keys.len()
    );

    let took = wait_converged(&cluster, &keys, back).await;
    let (stored, delivered) = hint_counts(&cluster).await;
    eprintln!(
        "SIGSTOP {:?}: {} acknowledged keys all on node3 {took:?} after it resumed \
         ({stored} hints stored, {delivered} delivered)",
        back - paused,
        keys.len()
    );
    assert!(stored >= 1.0, "no hints stored while node3 was paused");
}
