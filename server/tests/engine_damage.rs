//! A node whose engine is damaged refuses to start and says what to run;
//! `kvnode repair-engine` salvages what is readable, and a node that lost
//! data streams its ranges back from their replicas before it serves again.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Cluster;

/// The engine's newest write-ahead log (the highest-numbered `.log`).
fn newest_log(engine: &Path) -> PathBuf {
    std::fs::read_dir(engine)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a WAL")
}

fn repair_engine(data_dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .arg("repair-engine")
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_wal_stops_the_node_and_repair_then_restream_brings_every_key_back() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let keys: Vec<String> = (0..300).map(|k| format!("k{k}")).collect();
    for (k, key) in keys.iter().enumerate() {
        assert_eq!(cluster.put(k % 3, key, b"v", "all").await.status(), 204);
    }
    // Killed before any flush: node3's copies live only in its WAL. A byte
    // flipped in the middle of its records is damage, not a torn tail. (The
    // WAL is appended through a mapping: after the records come the zeros
    // reserved ahead, which are not records.)
    cluster.nodes[2].kill();
    let engine = cluster.nodes[2].data_dir.join("engine");
    let log = newest_log(&engine);
    let mut bytes = std::fs::read(&log).unwrap();
    let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(written > 1_000, "the WAL holds the writes");
    let middle = written / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();

    cluster.nodes[2].restart();
    let status = cluster.nodes[2].wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "node3 started on a damaged engine");
    let said = cluster.nodes[2].log_text();
    assert!(
        said.contains("is damaged")
            && said.contains(".log")
            && said.contains("kvnode repair-engine"),
        "{said}"
    );
    assert!(log.exists(), "the damaged WAL was deleted");

    let repaired = repair_engine(&cluster.nodes[2].data_dir);
    let out = String::from_utf8_lossy(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(
        out.contains("log bytes lost") && out.contains("stream its ranges again"),
        "{out}"
    );

    // It comes back through a bootstrap: streaming from node1 and node2
    // before it is ready.
    cluster.nodes[2].restart();
    cluster.wait_ready(2, Duration::from_secs(60)).await;
    let info = cluster.node_info(2).await.unwrap();
    assert!(info["streaming"]["items"].as_u64().unwrap() > 0, "{info}");
    // Every key is on node3's own engine again, checked before any read
    // could repair it.
    let held = cluster.local_records(2, &keys).await;
    let missing: Vec<&String> = keys
        .iter()
        .zip(&held)
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "node3 lacks {} keys: {missing:?}",
        missing.len()
    );
}
