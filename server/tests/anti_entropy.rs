//! Anti-entropy repair between real nodes: a replica that missed writes
//! converges through `kvnode repair` with no client read (checked on its own
//! engine), identical replicas cost a few hundred bytes, a 1 % divergence
//! costs less than twice the divergent bytes, and a healed partition
//! (writes at ONE on both sides) ends with the newest value everywhere.
//!
//! Traffic is read from the `kvnode_repair_*_bytes` metrics of every node
//! (each counts the bodies of the calls it made and the stream bytes it
//! received): body bytes, not HTTP headers.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{retry_503, version_of, Cluster, SECRET, SERIAL};

/// Tries of one request (`retry_503`).
const TRIES: u32 = 50;
/// Background repair off, so that only `kvnode repair` moves data; few
/// vnodes, so that the three nodes start fast.
const ENV: &[(&str, &str)] = &[("KVNODE_REPAIR_INTERVAL", "0"), ("KVNODE_VNODES", "8")];

/// Writes `keys` (value `value(i)`) at `cl` through `via`, 32 at a time,
/// riding out a flapping failure detector; the acknowledged version of each.
async fn write_all(
    cluster: &Cluster,
    via: usize,
    keys: &[String],
    value: impl Fn(usize) -> Vec<u8>,
    cl: &str,
) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (c, chunk) in keys.chunks(32).enumerate() {
        let mut set = tokio::task::JoinSet::new();
        for (j, key) in chunk.iter().enumerate() {
            let url = cluster.nodes[via].url(&format!("/v1/kv/{key}?consistency={cl}"));
            let (client, key, v) = (cluster.client.clone(), key.clone(), value(c * 32 + j));
            set.spawn(async move {
                let (answer, _) = retry_503(TRIES, || client.put(&url).body(v.clone())).await;
                let r = answer.unwrap();
                assert_eq!(r.status(), 204, "{key}");
                (key, version_of(&r).unwrap())
            });
        }
        while let Some(done) = set.join_next().await {
            let (key, version) = done.unwrap();
            out.insert(key, version);
        }
    }
    out
}

/// Runs `kvnode repair --node <node i>` to its end; its output.
async fn kvnode_repair(cluster: &Cluster, i: usize) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["repair", "--node", &cluster.nodes[i].http.to_string()])
        .args(["--timeout-secs", "300"])
        .env("KVNODE_CLUSTER_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kvnode repair failed: {text}");
    assert!(text.contains("repair done"), "{text}");
    text
}

/// Repair traffic of the whole cluster: (digest bytes, item bytes).
async fn traffic(cluster: &Cluster) -> (f64, f64) {
    let (mut digest, mut items) = (0.0, 0.0);
    for i in 0..cluster.nodes.len() {
        digest += cluster.metric(i, "kvnode_repair_digest_bytes_total").await;
        items += cluster.metric(i, "kvnode_repair_item_bytes_total").await;
    }
    (digest, items)
}

/// Node `i` holds exactly `want` (key -> version) in its own engine.
async fn assert_holds(cluster: &Cluster, i: usize, want: &HashMap<String, u64>) {
    let keys: Vec<String> = want.keys().cloned().collect();
    let records = cluster.local_records(i, &keys).await;
    let wrong: Vec<(&String, Option<u64>)> = keys
        .iter()
        .zip(&records)
        .filter(|(k, r)| r.as_ref().map(|r| r.version) != Some(want[*k]))
        .map(|(k, r)| (k, r.as_ref().map(|r| r.version)))
        .collect();
    assert!(
        wrong.is_empty(),
        "node{} has {} of {} keys wrong, e.g. {:?}",
        i + 1,
        wrong.len(),
        keys.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// Waits until every node sees every other one UP again.
async fn wait_all_up(cluster: &Cluster) {
    for observer in 0..cluster.nodes.len() {
        for target in 0..cluster.nodes.len() {
            if observer != target {
                cluster.wait_for_status(observer, target, "UP").await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_missed_writes_converges_through_repair_without_reads() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(3, 3, ENV).await;
    let keys: Vec<String> = (0..1500).map(|i| format!("missed-{i}")).collect();
    cluster.nodes[2].pause();
    let written = write_all(
        &cluster,
        0,
        &keys,
        |i| format!("v{i}").into_bytes(),
        "quorum",
    )
    .await;
    cluster.nodes[2].resume();
    wait_all_up(&cluster).await;
    let held = cluster.local_records(2, &keys).await;
    let missing = held.iter().filter(|r| r.is_none()).count();
    assert!(missing > 1000, "node3 missed only {missing} of 1500 writes");

    let out = kvnode_repair(&cluster, 2).await;
    println!("{out}");
    assert_holds(&cluster, 2, &written).await;
    let node = cluster.node_info(2).await.unwrap();
    let ranges = node["repair"]["ranges"].as_array().unwrap().clone();
    assert!(!ranges.is_empty());
    assert!(
        ranges
            .iter()
            .all(|r| r["last_completed_unix_ms"].as_u64().is_some()),
        "{ranges:?}"
    );
    assert!(cluster.metric(2, "kvnode_repair_keys_streamed_total").await >= missing as f64);
    assert_eq!(
        cluster.metric(2, "kvnode_repair_ranges_total").await,
        ranges.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_replicas_cost_a_few_hundred_bytes_and_one_percent_less_than_twice_the_difference(
) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(3, 3, ENV).await;
    const N: usize = 20_000;
    const VALUE: usize = 1000;
    let keys: Vec<String> = (0..N).map(|i| format!("item-{i:06}")).collect();
    let value = |i: usize| {
        let mut v = format!("{i}-").into_bytes();
        v.resize(VALUE, b'x');
        v
    };
    let written = write_all(&cluster, 0, &keys, value, "all").await;

    // Identical replicas: one root question per other replica.
    kvnode_repair(&cluster, 1).await;
    let (digest, items) = traffic(&cluster).await;
    println!("identical: {digest} digest bytes, {items} item bytes");
    assert_eq!(items, 0.0);
    assert!(digest > 0.0 && digest < 1024.0, "{digest} digest bytes");

    // 1 %: node3 misses newer versions of 200 keys that the others hold.
    let newer = |i: usize| {
        let mut v = format!("{i}-newer-").into_bytes();
        v.resize(VALUE, b'y');
        v
    };
    let mut want = HashMap::new();
    let mut divergent_bytes = 0usize;
    for i in (0..N).step_by(100) {
        let record = strata_server::storage::Record::value(written[&keys[i]] + 1, newer(i));
        cluster.apply_local(0, &keys[i], &record).await;
        cluster.apply_local(1, &keys[i], &record).await;
        want.insert(keys[i].clone(), record.version);
        // What a replica stores for it: token, key, record.
        divergent_bytes += 8 + keys[i].len() + record.encoded_len();
    }
    kvnode_repair(&cluster, 2).await;
    let (digest2, items2) = traffic(&cluster).await;
    let spent = (digest2 - digest) + (items2 - items);
    println!(
        "1 %: {} digest bytes, {} item bytes, {divergent_bytes} divergent bytes: {:.2}x",
        digest2 - digest,
        items2 - items,
        spent / divergent_bytes as f64
    );
    assert_holds(&cluster, 2, &want).await;
    assert!(
        spent < 2.0 * divergent_bytes as f64,
        "{spent} bytes for {divergent_bytes} divergent bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healed_partition_ends_with_the_newest_value_everywhere() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(3, 3, ENV).await;
    let keys: Vec<String> = (0..400).map(|i| format!("split-{i}")).collect();
    // One side: node3 is cut off while nodes 1 and 2 take every key at ONE.
    cluster.nodes[2].pause();
    let mut newest = write_all(&cluster, 0, &keys, |i| format!("a{i}").into_bytes(), "one").await;
    cluster.nodes[2].resume();
    wait_all_up(&cluster).await;
    // The other side: nodes 1 and 2 are cut off while node3 takes half of
    // the same keys, and some new ones, at ONE: later, so newer.
    cluster.nodes[0].pause();
    cluster.nodes[1].pause();
    let other: Vec<String> = keys
        .iter()
        .step_by(2)
        .cloned()
        .chain((0..100).map(|i| format!("split-new-{i}")))
        .collect();
    let later = write_all(&cluster, 2, &other, |i| format!("b{i}").into_bytes(), "one").await;
    cluster.nodes[0].resume();
    cluster.nodes[1].resume();
    for (key, version) in later {
        let v = newest.entry(key).or_insert(0);
        *v = (*v).max(version);
    }
    wait_all_up(&cluster).await;

    kvnode_repair(&cluster, 2).await;
    for i in 0..3 {
        assert_holds(&cluster, i, &newest).await;
    }
}
