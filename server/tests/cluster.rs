//! Three real kvnode processes: routing and replication across them, a node
//! killed with SIGKILL routed around, and its restart with its data.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_json_error, signed, Cluster};
use strata_server::storage::Record;
use tokio::sync::Semaphore;

/// Concurrent requests in flight from a test.
const CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_written_through_any_node_are_read_through_another() {
    let _serial = common::SERIAL.lock().await;
    let cluster = Arc::new(Cluster::start(3).await);
    let n = 10_000usize;
    let start = Instant::now();
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let (cluster, permit) = (
            cluster.clone(),
            limit.clone().acquire_owned().await.unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let writer = rand::random::<usize>() % 3;
            let r = cluster
                .put(
                    writer,
                    &format!("key-{k}"),
                    format!("value-{k}").as_bytes(),
                    "quorum",
                )
                .await;
            assert_eq!(r.status(), 204, "put key-{k} via node{}", writer + 1);
            drop(permit);
            writer
        }));
    }
    let mut writers = Vec::with_capacity(n);
    for t in tasks {
        writers.push(t.await.unwrap());
    }
    let wrote = start.elapsed();
    let mut tasks = Vec::with_capacity(n);
    for (k, writer) in writers.into_iter().enumerate() {
        let (cluster, permit) = (
            cluster.clone(),
            limit.clone().acquire_owned().await.unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let reader = (writer + 1 + rand::random::<usize>() % 2) % 3;
            let r = cluster.get(reader, &format!("key-{k}"), "quorum").await;
            assert_eq!(r.status(), 200, "get key-{k} via node{}", reader + 1);
            assert_eq!(r.bytes().await.unwrap(), format!("value-{k}").as_bytes());
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "10,000 QUORUM puts in {wrote:?}, 10,000 QUORUM gets in {:?}",
        start.elapsed() - wrote
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_routed_around_and_rejoins_with_its_data() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    for k in 0..200 {
        let r = cluster
            .put(
                k % 3,
                &format!("old-{k}"),
                format!("v{k}").as_bytes(),
                "all",
            )
            .await;
        assert_eq!(r.status(), 204);
    }

    cluster.nodes[2].kill();
    let took = cluster.wait_for_status(0, 2, "DOWN").await;
    cluster.wait_for_status(1, 2, "DOWN").await;
    eprintln!("SIGKILLed node3 marked DOWN after {took:?}");

    for k in 0..100 {
        let r = cluster
            .put(
                k % 2,
                &format!("new-{k}"),
                format!("n{k}").as_bytes(),
                "quorum",
            )
            .await;
        assert_eq!(r.status(), 204, "quorum put with a node down");
    }
    for k in 0..200 {
        let r = cluster.get(k % 2, &format!("old-{k}"), "quorum").await;
        assert_eq!(r.status(), 200, "quorum get with a node down");
        assert_eq!(r.bytes().await.unwrap(), format!("v{k}").as_bytes());
    }
    assert_json_error(cluster.put(0, "x", b"x", "all").await, 503, "unavailable").await;
    assert_json_error(cluster.get(1, "old-1", "all").await, 503, "unavailable").await;
    assert_eq!(cluster.get(0, "old-1", "one").await.status(), 200);

    cluster.nodes[2].restart();
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    // Its own engine still holds everything it acknowledged before the kill.
    for k in 0..200 {
        let r = signed(
            cluster
                .client
                .post(cluster.nodes[2].url("/internal/v1/read"))
                .body(format!("old-{k}")),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "old-{k} on the restarted node");
        let record = Record::decode(r.bytes().await.unwrap()).unwrap();
        assert_eq!(record.value.as_deref(), Some(format!("v{k}").as_bytes()));
    }
    // ALL works again; reads through the restarted node see what it missed.
    assert_eq!(cluster.put(2, "after", b"a", "all").await.status(), 204);
    for k in 0..100 {
        let r = cluster.get(2, &format!("new-{k}"), "all").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), format!("n{k}").as_bytes());
    }

    // With two of three replicas down, QUORUM (2 of the 3 in the preference
    // list, not 1 of the 1 alive) is unreachable; ONE still works.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    cluster.wait_for_status(0, 1, "DOWN").await;
    cluster.wait_for_status(0, 2, "DOWN").await;
    assert_json_error(
        cluster.put(0, "y", b"y", "quorum").await,
        503,
        "unavailable",
    )
    .await;
    assert_json_error(cluster.get(0, "old-1", "quorum").await, 503, "unavailable").await;
    assert_eq!(cluster.put(0, "y", b"y", "one").await.status(), 204);
    let r = cluster.get(0, "old-1", "one").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), b"v1".as_slice());
}

/// With RF 3 on 3 nodes every node holds every key, so routing mistakes
/// would go unseen; with RF 2 each key must land on exactly two nodes, and
/// any node must find it, replica or not.
#[tokio::test]
async fn with_rf_2_each_key_lives_on_exactly_two_nodes_and_reads_from_any() {
    let _serial = common::SERIAL.lock().await;
    let cluster = Cluster::start_with_rf(3, 2).await;
    for k in 0..300usize {
        let r = cluster
            .put(
                k % 3,
                &format!("rf2-{k}"),
                format!("v{k}").as_bytes(),
                "all",
            )
            .await;
        assert_eq!(r.status(), 204);
    }
    let mut holders_per_node = [0usize; 3];
    for k in 0..300usize {
        let key = format!("rf2-{k}");
        let mut holders = 0;
        for (i, held) in holders_per_node.iter_mut().enumerate() {
            if cluster.local_record(i, &key).await.is_some() {
                holders += 1;
                *held += 1;
            }
        }
        assert_eq!(
            holders, 2,
            "{key} is on {holders} nodes, not its 2 replicas"
        );
        for i in 0..3 {
            let r = cluster.get(i, &key, "quorum").await;
            assert_eq!(r.status(), 200, "{key} through node{}", i + 1);
            assert_eq!(r.bytes().await.unwrap(), format!("v{k}").as_bytes());
        }
    }
    // Every node is a replica of some keys and not of others.
    assert!(
        holders_per_node.iter().all(|&n| n > 0 && n < 300),
        "{holders_per_node:?}"
    );
}
