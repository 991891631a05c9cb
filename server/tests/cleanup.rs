//! `kvnode cleanup`, the operator's clean-up: it refuses while a ring member
//! is down, and otherwise deletes exactly the items outside the node's
//! ranges, nothing else.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, SECRET};
use strata_server::storage::Record;

/// Runs `kvnode cleanup` against node `i`; its exit status and output.
async fn cleanup_cli(cluster: &Cluster, i: usize) -> std::process::Output {
    let http = cluster.nodes[i].http.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .args(["cleanup", "--node", &http, "--timeout-secs", "60"])
            .env("KVNODE_CLUSTER_SECRET", SECRET)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cleanup_deletes_exactly_the_items_outside_the_nodes_ranges() {
    let _serial = common::SERIAL.lock().await;
    // The operator's pass alone: an automatic one after the forming
    // cluster's joins could take the strays below before it is refused.
    let mut cluster = Cluster::start_with(3, 2, &[("KVNODE_AUTO_CLEANUP", "false")]).await;
    let keys = 300usize;
    // holders[k]: which nodes replicate key k (RF 2: two of three).
    let mut holders = vec![[false; 3]; keys];
    for (k, held) in holders.iter_mut().enumerate() {
        let key = format!("k{k}");
        assert_eq!(cluster.put(k % 3, &key, b"v", "all").await.status(), 204);
        for (i, h) in held.iter_mut().enumerate() {
            *h = cluster.local_record(i, &key).await.is_some();
        }
        assert_eq!(held.iter().filter(|h| **h).count(), 2, "{key}");
    }
    // A stray copy of every key on the node that does not replicate it, as
    // a ring change leaves behind.
    let mut strays = [0usize; 3];
    for (k, held) in holders.iter().enumerate() {
        let outsider = held.iter().position(|h| !h).unwrap();
        cluster
            .apply_local(
                outsider,
                &format!("k{k}"),
                &Record::value(1, b"stray".to_vec()),
            )
            .await;
        strays[outsider] += 1;
    }

    // With a member down, nothing proves the data lives on elsewhere.
    cluster.nodes[2].kill();
    cluster.wait_for_status(0, 2, "DOWN").await;
    let refused = cleanup_cli(&cluster, 0).await;
    assert!(!refused.status.success(), "clean-up ran with node3 down");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("409") && said.contains("node3"), "{said}");
    assert_eq!(
        cluster
            .metric(0, "kvnode_cleanup_deleted_items_total")
            .await,
        0.0
    );

    cluster.nodes[2].restart();
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    // Views must agree (ring digests travel in gossip): retry until they do.
    for (i, strays) in strays.into_iter().enumerate() {
        let mut out = cleanup_cli(&cluster, i).await;
        for _ in 0..20 {
            if out.status.success() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            out = cleanup_cli(&cluster, i).await;
        }
        assert!(
            out.status.success(),
            "node{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        let deleted = cluster
            .metric(i, "kvnode_cleanup_deleted_items_total")
            .await;
        assert_eq!(deleted as usize, strays, "node{}", i + 1);
    }
    // Each node's own engine now holds exactly the keys it replicates.
    for (k, held) in holders.iter().enumerate() {
        for (i, h) in held.iter().enumerate() {
            let record = cluster.local_record(i, &format!("k{k}")).await;
            assert_eq!(record.is_some(), *h, "k{k} on node{}", i + 1);
            if let Some(record) = record {
                assert_eq!(record.value.as_deref(), Some(&b"v"[..]));
            }
        }
    }
}
