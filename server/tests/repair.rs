//! Read repair, seen on the replicas' own engines: a read that finds a
//! replica older than the newest answer (or without the key) sends it the
//! newest record, tombstones included; a replica that holds a newer record
//! than the others is never downgraded by it.
//!
//! Each replica is set up through `POST /internal/v1/apply` on that node
//! alone, so the test decides who is stale; each outcome is read from the
//! node's own engine (`POST /internal/v1/read`), not through a coordinator.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Cluster;
use strata_server::storage::Record;

/// How long a background repair may take to land.
const REPAIR_WAIT: Duration = Duration::from_secs(5);

/// A version as the nodes' clocks stamp them now (ms << 16), plus `offset`.
fn version(offset: u64) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    (u64::try_from(ms).unwrap() << 16) + offset
}

/// Waits until node `i`'s own record of `key` is `want`; fails with what
/// it holds after [`REPAIR_WAIT`].
async fn wait_for_record(cluster: &Cluster, i: usize, key: &str, want: &Record) {
    let deadline = Instant::now() + REPAIR_WAIT;
    loop {
        let got = cluster.local_record(i, key).await;
        if got.as_ref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} on node{}: {got:?}, not repaired to {want:?}",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `key` at `cl` through node `via`; its status, version and body.
async fn read(cluster: &Cluster, via: usize, key: &str, cl: &str) -> (u16, Option<u64>, Vec<u8>) {
    let r = cluster.get(via, key, cl).await;
    let status = r.status().as_u16();
    let version = r
        .headers()
        .get("x-kvnode-version")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, version, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_fixes_stale_and_missing_replicas_and_never_downgrades_a_newer_one() {
    let _serial = common::SERIAL.lock().await;
    // RF 3 on 3 nodes: every node is a replica of every key.
    let cluster = Cluster::start(3).await;
    let old = Record::value(version(0), b"old".to_vec());
    let new = Record::value(version(1_000), b"new".to_vec());
    let newer = Record::value(version(2_000), b"newer".to_vec());

    // Stale at ALL: node3 holds an older value than nodes 1 and 2.
    cluster.apply_local(0, "stale-all", &new).await;
    cluster.apply_local(1, "stale-all", &new).await;
    cluster.apply_local(2, "stale-all", &old).await;
    let (status, v, body) = read(&cluster, 0, "stale-all", "all").await;
    assert_eq!((status, v, body), (200, Some(new.version), b"new".to_vec()));
    wait_for_record(&cluster, 2, "stale-all", &new).await;

    // Stale at QUORUM, through the stale node itself: it reads itself first,
    // then one other replica, and repairs its own copy.
    cluster.apply_local(0, "stale-quorum", &new).await;
    cluster.apply_local(1, "stale-quorum", &new).await;
    cluster.apply_local(2, "stale-quorum", &old).await;
    let (status, v, body) = read(&cluster, 2, "stale-quorum", "quorum").await;
    assert_eq!((status, v, body), (200, Some(new.version), b"new".to_vec()));
    wait_for_record(&cluster, 2, "stale-quorum", &new).await;

    // Missing: node3 has never heard of the key.
    cluster.apply_local(0, "missing", &new).await;
    cluster.apply_local(1, "missing", &new).await;
    assert_eq!(cluster.local_record(2, "missing").await, None);
    let (status, ..) = read(&cluster, 1, "missing", "all").await;
    assert_eq!(status, 200);
    wait_for_record(&cluster, 2, "missing", &new).await;

    // A delete the stale replica missed: the read answers 404 and the
    // replica gets the tombstone, so the old value cannot come back.
    let deleted = Record::tombstone(version(1_000));
    cluster.apply_local(0, "deleted", &deleted).await;
    cluster.apply_local(1, "deleted", &deleted).await;
    cluster.apply_local(2, "deleted", &old).await;
    let (status, ..) = read(&cluster, 0, "deleted", "all").await;
    assert_eq!(status, 404);
    wait_for_record(&cluster, 2, "deleted", &deleted).await;

    // The reverse: node3 holds a newer record than the others. A read at
    // ALL answers it and repairs nodes 1 and 2 up to it...
    for key in ["newer-all", "newer-quorum"] {
        cluster.apply_local(0, key, &old).await;
        cluster.apply_local(1, key, &old).await;
        cluster.apply_local(2, key, &newer).await;
    }
    let (status, v, body) = read(&cluster, 0, "newer-all", "all").await;
    assert_eq!(
        (status, v, body),
        (200, Some(newer.version), b"newer".to_vec())
    );
    wait_for_record(&cluster, 0, "newer-all", &newer).await;
    wait_for_record(&cluster, 1, "newer-all", &newer).await;
    assert_eq!(
        cluster.local_record(2, "newer-all").await,
        Some(newer.clone())
    );

    // ...and QUORUM reads through nodes 1 and 2, which may not ask node3 and
    // then answer the older record, repair nothing down: node3 keeps its
    // newer record, and a later read at ALL still finds it.
    for via in [0, 1] {
        let (status, v, _) = read(&cluster, via, "newer-quorum", "quorum").await;
        assert_eq!(status, 200);
        assert!(v == Some(old.version) || v == Some(newer.version), "{v:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cluster.local_record(2, "newer-quorum").await,
        Some(newer.clone())
    );
    let (status, v, body) = read(&cluster, 1, "newer-quorum", "all").await;
    assert_eq!(
        (status, v, body),
        (200, Some(newer.version), b"newer".to_vec())
    );
    for i in 0..3 {
        wait_for_record(&cluster, i, "newer-quorum", &newer).await;
    }
}
