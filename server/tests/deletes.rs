//! Deleted keys stay deleted: deletes made with a replica down, during a
//! join and during a decommission survive the down replica's restart, the
//! join's streams, the old owners' clean-up, a node's flush and restart, and
//! the leave. Checked on each node's own engine before anything reads
//! through a coordinator, then through QUORUM and ALL reads from every node,
//! and on each engine again once those reads have repaired the replicas.
//!
//! Hinted handoff is off here (a zero window): a replica that was down when
//! a key was deleted keeps its old value until a read repairs it, which is
//! the case this test is about (with hints it would be fixed moments after
//! its restart; `hints.rs` tests that). What must hold is that a quorum of
//! the key's replicas hold the tombstone, so no QUORUM or ALL read ever
//! returns the value, and that nothing (a stream from the stale replica, a
//! clean-up, a restart) lets the value win over the tombstone.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{retry_503, signed, Cluster};
use strata_server::storage::Record;

/// Keys written before anything else, at ALL.
const KEYS: usize = 300;
/// Tries of one request (`retry_503`).
const TRIES: u32 = 50;

/// Deletes keys `range` at QUORUM through `via` in turn, recording each
/// tombstone in `latest`.
async fn delete_keys(
    cluster: &Cluster,
    via: &[usize],
    range: std::ops::Range<usize>,
    latest: &mut HashMap<String, Record>,
) {
    for k in range {
        let key = format!("d-{k}");
        let version = cluster
            .write_retrying(via[k % via.len()], &key, None, "quorum", TRIES)
            .await;
        latest.insert(key, Record::tombstone(version));
    }
}

/// Every key reads as `latest` says at QUORUM and at ALL through each of
/// `nodes`: 404 for a deleted key, its value otherwise.
async fn assert_reads(cluster: &Cluster, nodes: &[usize], latest: &HashMap<String, Record>) {
    for (key, want) in latest {
        for &via in nodes {
            for cl in ["quorum", "all"] {
                let url = cluster.nodes[via].url(&format!("/v1/kv/{key}?consistency={cl}"));
                let (r, _) = retry_503(TRIES, || cluster.client.get(&url)).await;
                let r = r.unwrap();
                match &want.value {
                    None => {
                        assert_eq!(r.status(), 404, "deleted {key} at {cl} via node{}", via + 1)
                    }
                    Some(v) => {
                        assert_eq!(r.status(), 200, "{key} at {cl} via node{}", via + 1);
                        assert_eq!(&r.bytes().await.unwrap()[..], &v[..], "{key}");
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_stay_deleted_through_a_down_replica_a_join_a_restart_and_a_leave() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start_with(3, 3, &[("KVNODE_MAX_HINT_WINDOW_MS", "0")]).await;
    let mut latest = HashMap::new();
    for k in 0..KEYS {
        let key = format!("d-{k}");
        let value = format!("v{k}").into_bytes();
        let version = cluster
            .write_retrying(k % 3, &key, Some(&value), "all", TRIES)
            .await;
        latest.insert(key, Record::value(version, value));
    }

    // Deletes while node3 is down: it keeps the old values.
    cluster.nodes[2].kill();
    cluster.wait_for_status(0, 2, "DOWN").await;
    cluster.wait_for_status(1, 2, "DOWN").await;
    delete_keys(&cluster, &[0, 1], 0..100, &mut latest).await;
    cluster.nodes[2].restart();
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    for k in 0..100 {
        let record = cluster.local_record(2, &format!("d-{k}")).await.unwrap();
        assert!(
            record.value.is_some(),
            "node3 was down, yet holds {record:?}"
        );
    }

    // Deletes during a join: node4 may stream a range from node3, which
    // still holds the old values.
    let joiner = cluster.add_node();
    let mut during = 0;
    for k in 100..150 {
        delete_keys(&cluster, &[0, 1, 2], k..k + 1, &mut latest).await;
        during += usize::from(!cluster.is_ready(joiner).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.wait_ready(joiner, Duration::from_secs(60)).await;
    for i in 0..4 {
        cluster.wait_until_sees(i, 4, Duration::from_secs(20)).await;
    }
    eprintln!("{during} of 50 deletes went in before node4 was AVAILABLE");
    let stale = cluster.assert_holdings(&[0, 1, 2, 3], &latest, false).await;
    eprintln!("after the join: {stale} replicas hold an older record than the newest write");
    let held = cluster
        .local_records(joiner, &latest.keys().cloned().collect::<Vec<_>>())
        .await
        .iter()
        .filter(|r| r.is_some())
        .count();
    cluster.wait_cleaned_up(&[0, 1, 2], held).await;

    // A flush (SIGTERM flushes the engine) and a reopen of node1.
    assert!(cluster.nodes[0].terminate().success());
    cluster.nodes[0].restart();
    for i in 0..4 {
        cluster.wait_until_sees(i, 4, Duration::from_secs(30)).await;
    }
    cluster.assert_holdings(&[0, 1, 2, 3], &latest, true).await;

    // Deletes during a decommission of node2.
    let r = signed(
        cluster
            .client
            .post(cluster.nodes[1].url("/admin/v1/decommission")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    delete_keys(&cluster, &[0, 2, 3], 150..200, &mut latest).await;
    assert!(cluster.nodes[1]
        .wait_exit(Duration::from_secs(60))
        .success());
    for i in [0, 2, 3] {
        cluster.wait_until_sees(i, 3, Duration::from_secs(20)).await;
    }
    cluster.assert_holdings(&[0, 2, 3], &latest, true).await;

    // Through coordinators: no deleted key reads back, every other does.
    assert_reads(&cluster, &[0, 2, 3], &latest).await;
    // The ALL reads repaired every replica: each engine holds each
    // tombstone itself now, node3's stale values included.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keys: Vec<String> = (0..200).map(|k| format!("d-{k}")).collect();
    for i in [0, 2, 3] {
        let records = cluster.local_records(i, &keys).await;
        for (key, record) in keys.iter().zip(records) {
            assert_eq!(
                record.as_ref(),
                Some(&latest[key]),
                "{key} on node{}",
                i + 1
            );
        }
    }
}
