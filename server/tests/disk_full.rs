//! A node of a live 3-node cluster runs out of disk: its engine refuses
//! writes, `/ready` turns 503 with the reason, its peers see it degraded and
//! QUORUM writes go on through the others; once space returns it takes
//! writes again by itself, and a kill -9 afterwards loses nothing it
//! acknowledged.
//!
//! Uses a real tmpfs (root only); skips with a message where mounting is
//! not permitted.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;
#[path = "../../engine/tests/common/tmpfs.rs"]
mod tmpfs;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;
use tmpfs::{Ballast, Tmpfs};

/// What node `observer` says of node `target`'s health in `/v1/cluster`.
async fn degraded_in_view(cluster: &Cluster, observer: usize, target: usize) -> Option<String> {
    let r = cluster
        .client
        .get(cluster.nodes[observer].url("/v1/cluster"))
        .send()
        .await
        .ok()?;
    let v: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == cluster.nodes[target].id.as_str())?["degraded"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_a_node_read_only_and_it_recovers_when_space_returns() {
    let test = "a_full_disk_turns_a_node_read_only_and_it_recovers_when_space_returns";
    let Some(disk) = Tmpfs::mount(test, "64m") else {
        return;
    };
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    for k in 0..200 {
        assert_eq!(
            cluster
                .put(k % 3, &format!("before-{k}"), b"v", "all")
                .await
                .status(),
            204
        );
    }
    // node3 moves onto the small disk, data and all.
    cluster.nodes[2].terminate();
    let moved = disk.path().join("node3");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&cluster.nodes[2].data_dir)
        .arg(&moved)
        .status()
        .unwrap();
    assert!(copied.success());
    cluster.nodes[2].data_dir = moved;
    cluster.nodes[2].restart();
    cluster.wait_until_sees(2, 3, Duration::from_secs(30)).await;

    let ballast = Ballast::fill(disk.path());
    // Writes that reach node3 fail there; QUORUM still succeeds on the others.
    let mut acknowledged = Vec::new();
    for k in 0..50 {
        let key = format!("full-{k}");
        let r = cluster.put(k % 2, &key, &[7u8; 4096], "quorum").await;
        assert_eq!(r.status(), 204, "QUORUM write while node3's disk is full");
        acknowledged.push(key);
    }
    wait_until(
        "node3's /ready turns 503",
        Duration::from_secs(10),
        || async { !cluster.is_ready(2).await },
    )
    .await;
    let r = cluster
        .client
        .get(cluster.nodes[2].url("/ready"))
        .send()
        .await
        .unwrap();
    common::assert_json_error(r, 503, "degraded").await;
    wait_until(
        "node1 sees node3 degraded",
        Duration::from_secs(10),
        || async { degraded_in_view(&cluster, 0, 2).await.is_some() },
    )
    .await;
    // An ALL write cannot succeed while a replica refuses writes.
    assert_eq!(cluster.put(0, "needs-all", b"v", "all").await.status(), 503);

    ballast.delete();
    let freed = Instant::now();
    wait_until("node3 ready again", Duration::from_secs(10), || async {
        cluster.is_ready(2).await
    })
    .await;
    wait_until(
        "ALL writes succeed again",
        Duration::from_secs(10),
        || async { cluster.put(0, "after", b"v", "all").await.status() == 204 },
    )
    .await;
    let resumed = freed.elapsed();
    eprintln!(
        "space freed -> ALL writes resume: {:.0} ms",
        resumed.as_secs_f64() * 1e3
    );
    wait_until(
        "node1 sees node3 healthy",
        Duration::from_secs(10),
        || async { degraded_in_view(&cluster, 0, 2).await.is_none() },
    )
    .await;

    // Everything node3 acknowledged survives a kill -9: checked on its own
    // engine, before any read could repair it.
    for k in 0..100 {
        assert_eq!(
            cluster
                .put(2, &format!("after-{k}"), b"w", "all")
                .await
                .status(),
            204
        );
    }
    cluster.nodes[2].kill();
    cluster.nodes[2].restart();
    cluster.wait_ready(2, Duration::from_secs(30)).await;
    for key in (0..200)
        .map(|k| format!("before-{k}"))
        .chain((0..100).map(|k| format!("after-{k}")))
        .chain(["after".to_owned()])
    {
        assert!(
            cluster.local_record(2, &key).await.is_some(),
            "node3 lost {key}"
        );
    }
    // The QUORUM writes of the episode are on at least two nodes each.
    for key in &acknowledged {
        let mut holders = 0;
        for i in 0..3 {
            holders += usize::from(cluster.local_record(i, key).await.is_some());
        }
        assert!(holders >= 2, "{key} is on {holders} nodes");
    }
    cluster.nodes[2].kill();
    drop(disk);
}
