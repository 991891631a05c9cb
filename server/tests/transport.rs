//! The multiplexed peer transport with real kvnode processes: no
//! acknowledged write is lost when a replica is killed and restarted under
//! load, and a node that speaks only HTTP works with nodes that prefer the
//! multiplexed transport. Every check reads each node's own engine
//! (`/internal/v1/read`), which repairs nothing.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{version_of, Cluster};
use tokio::sync::Mutex;

/// Writers running at once.
const WRITERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_quorum_writes_survive_a_replica_killed_and_restarted_mid_load() {
    let _serial = common::SERIAL.lock().await;
    let cluster = Arc::new(Mutex::new(Cluster::start(3).await));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (cluster, acked) = (cluster.clone(), acked.clone());
        // Through the two nodes that stay up: the load never stops.
        let (client, url) = {
            let c = cluster.lock().await;
            (c.client.clone(), c.nodes[w % 2].url(""))
        };
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                let key = format!("w{w}-{n}");
                n += 1;
                let sent = client
                    .put(format!("{url}/v1/kv/{key}?consistency=quorum"))
                    .body(format!("value of {key}"))
                    .send()
                    .await;
                if let Ok(r) = sent {
                    if r.status() == 204 {
                        acked.lock().await.push((key, version_of(&r).unwrap()));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.lock().await.nodes[2].kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.lock().await.nodes[2].restart();
    for w in writers {
        w.await.unwrap();
    }
    let cluster = cluster.lock().await;
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    let keys: Vec<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    let mut holders = vec![0usize; keys.len()];
    for i in 0..3 {
        let records = cluster.local_records(i, &keys).await;
        for (j, record) in records.iter().enumerate() {
            if record.as_ref().is_some_and(|r| r.version == acked[j].1) {
                holders[j] += 1;
            }
        }
    }
    let lost: Vec<_> = keys
        .iter()
        .zip(&holders)
        .filter(|(_, h)| **h < 2)
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged QUORUM writes are on fewer than 2 replicas, e.g. {lost:?}",
        holders.iter().filter(|h| **h < 2).count(),
        keys.len()
    );
    for node in &cluster.nodes {
        let log = node.log_text();
        assert!(
            !log.contains("does not speak the multiplexed transport"),
            "{} fell back to HTTP:\n{log}",
            node.id
        );
        assert!(!log.contains("malformed"), "{}:\n{log}", node.id);
    }
    eprintln!(
        "{} acknowledged writes, every one on 2 or 3 replicas",
        keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_http_only_works_with_nodes_that_prefer_the_multiplexed_transport() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(2).await;
    let old = cluster.add_node_with(&[("KVNODE_PEER_TRANSPORT", "http")]);
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    cluster.wait_ready(old, Duration::from_secs(60)).await;
    let keys: Vec<String> = (0..150).map(|k| format!("mixed-{k}")).collect();
    for (k, key) in keys.iter().enumerate() {
        // ALL: every replica, whichever transport its caller uses, must take it.
        let version = cluster
            .write_retrying(k % 3, key, Some(key.as_bytes()), "all", 20)
            .await;
        assert!(version > 0);
    }
    for i in 0..3 {
        let records = cluster.local_records(i, &keys).await;
        for (key, record) in keys.iter().zip(records) {
            let record = record.unwrap_or_else(|| panic!("{key} missing on node{}", i + 1));
            assert_eq!(record.value.as_deref(), Some(key.as_bytes()));
        }
    }
    // QUORUM reads through each node, including the one that reads its
    // peers over HTTP and the two that fell back to HTTP for it.
    for (k, key) in keys.iter().enumerate() {
        let r = cluster.get(k % 3, key, "quorum").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), key.as_bytes());
    }
    for i in 0..2 {
        let log = cluster.nodes[i].log_text();
        assert!(
            log.contains("does not speak the multiplexed transport"),
            "node{} never noticed the HTTP-only node:\n{log}",
            i + 1
        );
    }
}
