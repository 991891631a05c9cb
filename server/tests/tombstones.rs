//! Tombstone GC without resurrection, on real processes: keys deleted at
//! QUORUM while one replica is paused (so it keeps the old values) stay
//! deleted after that replica is brought up to date, the grace passes and
//! every node's compaction purges the tombstones; and the tombstones are
//! really gone from each engine, not just hidden.
//!
//! The stale replica is brought up to date by anti-entropy repair
//! (`kvnode repair`), with hinted handoff off so that repair is what does
//! it, and no client read before the purge, so read repair does not either.
//! What must hold is what the grace promises: the repair completes within
//! it.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{retry_503, signed, Cluster};
use serde_json::Value;
use strata_server::storage::Record;

/// Keys written, then deleted.
const KEYS: usize = 100;
/// The nodes' tombstone grace: long enough for the deletes and the repair
/// on a loaded 2-core machine, short enough for a test.
const GRACE: Duration = Duration::from_secs(15);
/// Tries of one request (`retry_503`).
const TRIES: u32 = 50;
/// The paused replica.
const STALE: usize = 2;

fn key(k: usize) -> String {
    format!("gc-{k}")
}

/// `POST /admin/v1/compact` on node `i`; the tombstones its engine has
/// purged since it started.
async fn compact(cluster: &Cluster, i: usize) -> u64 {
    let r = signed(
        cluster
            .client
            .post(cluster.nodes[i].url("/admin/v1/compact"))
            .timeout(Duration::from_secs(60)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "compact on node{}", i + 1);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    body["tombstones_purged"].as_u64().unwrap()
}

/// Every key reads 404 at ALL through node `via`.
async fn assert_deleted_at_all(cluster: &Cluster, via: usize, keys: &[String]) {
    for key in keys {
        let url = cluster.nodes[via].url(&format!("/v1/kv/{key}?consistency=all"));
        let (r, _) = retry_503(TRIES, || cluster.client.get(&url)).await;
        assert_eq!(
            r.unwrap().status(),
            404,
            "deleted {key} read at ALL via node{}",
            via + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_past_the_grace_are_purged_and_the_deleted_keys_stay_deleted() {
    let _serial = common::SERIAL.lock().await;
    let grace_ms = GRACE.as_millis().to_string();
    let mut cluster = Cluster::start_with(
        3,
        3,
        &[
            ("KVNODE_TOMBSTONE_GRACE_MS", &grace_ms),
            ("KVNODE_ALLOW_SHORT_TOMBSTONE_GRACE", "true"),
            ("KVNODE_MAX_HINT_WINDOW_MS", "0"),
            ("KVNODE_REPAIR_INTERVAL", "0"),
        ],
    )
    .await;
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    for (k, key) in keys.iter().enumerate() {
        cluster
            .write_retrying(k % 3, key, Some(format!("v{k}").as_bytes()), "all", TRIES)
            .await;
    }
    // The values sink into tables, below the tombstones to come.
    for i in 0..3 {
        assert_eq!(compact(&cluster, i).await, 0);
    }

    // Deletes while node3 is paused: it keeps the old values.
    cluster.nodes[STALE].pause();
    cluster.wait_for_status(0, STALE, "DOWN").await;
    cluster.wait_for_status(1, STALE, "DOWN").await;
    let deleted_at = Instant::now();
    let mut newest = 0;
    for (k, key) in keys.iter().enumerate() {
        newest = newest.max(
            cluster
                .write_retrying(k % 2, key, None, "quorum", TRIES)
                .await,
        );
    }
    cluster.nodes[STALE].resume();
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    for (key, record) in keys.iter().zip(cluster.local_records(STALE, &keys).await) {
        let record = record.unwrap_or_else(|| panic!("node3 lost {key}"));
        assert!(
            record.value.is_some(),
            "node3 was paused, yet holds {record:?}"
        );
    }

    // Repair brings node3 the tombstones (see the module docs), inside the
    // grace.
    cluster.kvnode_repair(STALE).await;
    let repaired = loop {
        let records = cluster.local_records(STALE, &keys).await;
        if records
            .iter()
            .all(|r| r.as_ref().is_some_and(|r| r.value.is_none()))
        {
            break deleted_at.elapsed();
        }
        assert!(
            deleted_at.elapsed() < GRACE,
            "node3 not repaired within the grace: the test proves nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("node3 repaired {repaired:?} after the deletes");
    for i in 0..3 {
        for (key, record) in keys.iter().zip(cluster.local_records(i, &keys).await) {
            assert!(
                matches!(record, Some(Record { value: None, .. })),
                "{key} on node{}: {record:?}",
                i + 1
            );
        }
    }
    // Within the grace, a compaction keeps the tombstones (and takes them
    // down to the values they hide, so that the purge below has to reach
    // the deepest level).
    assert_eq!(compact(&cluster, 0).await, 0);
    assert!(deleted_at.elapsed() < GRACE, "the grace ran out too early");
    assert!(cluster.local_record(0, &keys[0]).await.is_some());

    // Past the grace (measured on the tombstones' own clock), every node's
    // compaction purges every tombstone.
    let newest_ms = newest >> 16;
    loop {
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        if now_ms > newest_ms + u64::try_from(GRACE.as_millis()).unwrap() + 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        assert_eq!(compact(&cluster, i).await, KEYS as u64, "node{}", i + 1);
        assert_eq!(
            cluster
                .metric(i, "strata_engine_compaction_filter_removed_total")
                .await,
            KEYS as f64
        );
        // No record at all: not the value, and not the tombstone either.
        for (key, record) in keys.iter().zip(cluster.local_records(i, &keys).await) {
            assert_eq!(record, None, "{key} on node{}", i + 1);
        }
    }
    for via in 0..3 {
        assert_deleted_at_all(&cluster, via, &keys).await;
    }

    // The formerly stale replica restarts on its compacted engine: still
    // nothing there.
    assert!(cluster.nodes[STALE].terminate().success());
    cluster.nodes[STALE].restart();
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    for (key, record) in keys.iter().zip(cluster.local_records(STALE, &keys).await) {
        assert_eq!(record, None, "{key} on node3 after its restart");
    }
    assert_deleted_at_all(&cluster, STALE, &keys).await;
}
