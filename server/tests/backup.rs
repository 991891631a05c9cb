//! Backups of a real cluster: `kvnode snapshot save` on each node of a
//! running 3-node cluster, the whole cluster killed, `kvnode snapshot
//! restore` of each snapshot into a fresh data dir, and every acknowledged
//! key found on each node's own engine before anything (hints, repair,
//! read repair) could have brought it back from another node.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, SECRET, SERIAL};

/// Runs `kvnode ARGS` with the cluster secret; its exit code and output.
async fn kvnode(args: &[&str]) -> (i32, String) {
    common::kvnode_with(&[("KVNODE_CLUSTER_SECRET", SECRET)], args).await
}

const KEYS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_its_snapshots_holds_every_acknowledged_key_on_each_node() {
    let _serial = SERIAL.lock().await;
    // No repair pass, so nothing but the snapshot can put a key back.
    // Saves are confined to `backups`.
    let backups = tempfile::tempdir().unwrap();
    let root = backups.path().to_str().unwrap();
    let mut c = Cluster::start_with(
        3,
        3,
        &[
            ("KVNODE_REPAIR_INTERVAL", "0"),
            ("KVNODE_SNAPSHOT_ROOT", root),
        ],
    )
    .await;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("backup-{i:05}")).collect();
    // At ALL: each write is acknowledged by every node's own engine, so
    // every node's snapshot must hold every key.
    for (i, key) in keys.iter().enumerate() {
        c.write_retrying(i % 3, key, Some(key.as_bytes()), "all", 20)
            .await;
    }

    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out) = kvnode(&[
        "snapshot",
        "save",
        elsewhere.path().join("snap").to_str().unwrap(),
        "--node",
        &c.nodes[0].http.to_string(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not inside --snapshot-root"), "{out}");
    for i in 0..3 {
        let dir = backups.path().join(format!("snap-{}", c.nodes[i].id));
        let (code, out) = kvnode(&[
            "snapshot",
            "save",
            dir.to_str().unwrap(),
            "--node",
            &c.nodes[i].http.to_string(),
        ])
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("snapshot saved"), "{out}");
        let manifest = strata_server::snapshot::verify(&dir).unwrap();
        assert_eq!(manifest.origin.node_id, c.nodes[i].id);
        assert_eq!(manifest.origin.ring_members.len(), 3, "{manifest:?}");
        // A second save into the same directory is refused.
        let (code, out) = kvnode(&[
            "snapshot",
            "save",
            dir.to_str().unwrap(),
            "--node",
            &c.nodes[i].http.to_string(),
        ])
        .await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("already exists"), "{out}");
    }

    for node in &mut c.nodes {
        node.kill();
    }

    // A data dir that holds anything is refused, and left as it was.
    let busy = backups.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("mine"), b"x").unwrap();
    let snap1 = backups.path().join("snap-node1");
    let (code, out) = kvnode(&[
        "snapshot",
        "restore",
        snap1.to_str().unwrap(),
        busy.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not empty"), "{out}");
    assert_eq!(std::fs::read(busy.join("mine")).unwrap(), b"x");

    for i in 0..3 {
        let id = c.nodes[i].id.clone();
        let fresh = backups.path().join(format!("restored-{id}"));
        let snap = backups.path().join(format!("snap-{id}"));
        let (code, out) = kvnode(&[
            "snapshot",
            "restore",
            snap.to_str().unwrap(),
            fresh.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("every checksum verified"), "{out}");
        c.nodes[i].data_dir = fresh;
        c.nodes[i].restart();
    }
    for i in 0..3 {
        c.wait_until_sees(i, 3, Duration::from_secs(60)).await;
    }
    for i in 0..3 {
        let records = c.local_records(i, &keys).await;
        let missing: Vec<&String> = keys
            .iter()
            .zip(&records)
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty(),
            "{} lacks {} of {KEYS} keys after the restore, e.g. {:?}",
            c.nodes[i].id,
            missing.len(),
            missing.first()
        );
        for (key, record) in keys.iter().zip(&records) {
            let record = record.as_ref().unwrap();
            assert_eq!(record.value.as_deref(), Some(key.as_bytes()), "{key}");
        }
    }
}
