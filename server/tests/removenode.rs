//! `kvnode removenode`: a dead member taken out of the ring for good.
//!
//! - A joiner killed mid-bootstrap stays a pending replica: every write at
//!   ALL to a key of its future ranges fails until it is removed, then
//!   every write at ALL succeeds.
//! - A member killed under QUORUM writes and removed: its ranges come back
//!   to RF copies from the survivors, checked on each node's own engine
//!   before anything reads through a coordinator (which would repair), with
//!   no acknowledged write lost.
//! - The removed member restarted from its data dir, after every survivor
//!   restarted too, refuses to serve, stops, and refuses to start again;
//!   wiped, it joins as a new node.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{retry_503, signed, version_of, Cluster, SECRET};
use parking_lot::Mutex;
use serde_json::Value;
use strata_server::storage::Record;

/// Runs `kvnode removenode ID` against node `via`; its exit status and output.
async fn removenode_cli(cluster: &Cluster, via: usize, id: &str) -> std::process::Output {
    let http = cluster.nodes[via].http.to_string();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .args(["removenode", &id, "--node", &http, "--timeout-secs", "90"])
            .env("KVNODE_CLUSTER_SECRET", SECRET)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Tries of one write at ALL that must succeed: ALL needs every replica up
/// at once, so it rides out a failure detector flapping on a busy machine.
const ALL_TRIES: u32 = 50;

/// PUTs `value` for `key` at ALL through node `via`, retried on a 503.
async fn put_all(cluster: &Cluster, via: usize, key: &str, value: &[u8]) -> reqwest::Response {
    let url = cluster.nodes[via].url(&format!("/v1/kv/{key}?consistency=all"));
    let (r, _) = retry_503(ALL_TRIES, || cluster.client.put(&url).body(value.to_vec())).await;
    r.unwrap()
}

/// Writes `count` new keys at ALL through the nodes `via` in turn, once
/// each, or `retried` on a 503; how many were acknowledged.
async fn put_many(
    cluster: &Cluster,
    via: &[usize],
    prefix: &str,
    count: usize,
    retried: bool,
) -> usize {
    let mut ok = 0;
    for k in 0..count {
        let (i, key) = (via[k % via.len()], format!("{prefix}-{k}"));
        let r = if retried {
            put_all(cluster, i, &key, b"v").await
        } else {
            cluster.put(i, &key, b"v", "all").await
        };
        ok += usize::from(r.status() == 204);
    }
    ok
}

/// Waits until every node of `nodes` lists `id` as removed in `/v1/cluster`.
async fn wait_removed_everywhere(cluster: &Cluster, nodes: &[usize], id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for &i in nodes {
        loop {
            let r = cluster
                .client
                .get(cluster.nodes[i].url("/v1/cluster"))
                .send()
                .await;
            if let Ok(r) = r {
                let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                let removed = v["removed"].as_array().cloned().unwrap_or_default();
                let members = v["members"].as_array().cloned().unwrap_or_default();
                if removed.iter().any(|r| r["id"] == id) && !members.iter().any(|m| m["id"] == id) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node{} never removed {id}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_joiner_blocks_writes_at_all_until_it_is_removed() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    // Enough data that the joiner is still streaming when it is killed.
    for k in 0..1500 {
        let key = format!("pre-{k}");
        let r = put_all(&cluster, k % 3, &key, &[b'x'; 2048]).await;
        assert_eq!(r.status(), 204, "{key}");
    }
    let joiner = cluster.add_node();
    // Killed once every member routes to it as a pending replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_by = 0;
    while seen_by < 3 {
        seen_by = 0;
        for i in 0..3 {
            let view = cluster.view(i).await.unwrap_or_default();
            let state = view
                .iter()
                .find(|(id, _, _)| id == "node4")
                .map(|m| m.1.as_str());
            assert_ne!(
                state,
                Some("AVAILABLE"),
                "node4 joined before it could be killed"
            );
            seen_by += usize::from(state == Some("BOOTSTRAPPING"));
        }
        assert!(Instant::now() < deadline, "node4 never bootstrapped");
    }
    cluster.nodes[joiner].kill();
    for i in 0..3 {
        cluster.wait_for_status(i, joiner, "DOWN").await;
    }

    // A pending replica that never answers: a write at ALL of any key in
    // the ranges it was to receive (about 3/4 of them, RF 3 of 4) fails.
    let before = put_many(&cluster, &[0, 1, 2], "blocked", 60, false).await;
    eprintln!("{before} of 60 ALL writes succeeded with a dead pending replica");
    assert!(before <= 25, "{before} of 60 ALL writes succeeded");

    // Refusals: a live member, an unknown one, the node asked itself.
    for (via, id, why) in [
        (0, "node2", "is up"),
        (0, "nobody", "no member nobody"),
        (0, "node1", "is this node"),
    ] {
        let (status, body) = cluster
            .admin_post(via, &format!("/admin/v1/removenode/{id}"))
            .await;
        assert_eq!(status, 409, "{id}: {body}");
        assert_eq!(body["error"], "cannot_remove", "{body}");
        assert!(body.to_string().contains(why), "{id}: {body}");
    }
    // Without the secret the route is not there for a client.
    let r = cluster
        .client
        .post(cluster.nodes[0].url("/admin/v1/removenode/node4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let out = removenode_cli(&cluster, 1, "node4").await;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "removenode failed: {text}");
    eprintln!("{text}");
    wait_removed_everywhere(&cluster, &[0, 1, 2], "node4").await;
    let after = put_many(&cluster, &[0, 1, 2], "freed", 60, true).await;
    assert_eq!(
        after, 60,
        "only {after} of 60 ALL writes succeeded after the removal"
    );
    // A second removal is refused, naming the first.
    let (status, body) = cluster.admin_post(2, "/admin/v1/removenode/node4").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("removed already"), "{body}");
}

/// Keys written at ALL before the member dies, then overwritten at QUORUM.
const KEYS: usize = 1200;

/// Records `record` for `key` if it wins last-writer-wins over the one
/// recorded, as `storage` orders them.
fn newest(latest: &mut HashMap<String, Record>, key: String, record: Record) {
    match latest.get(&key) {
        Some(old) if !record.supersedes(old) => {}
        _ => {
            latest.insert(key, record);
        }
    }
}

/// Concurrent writers overwriting the preloaded keys at QUORUM through
/// `bases`, recording the newest acknowledged write of each, until stopped.
/// Overwrites, not fresh keys: a replica that a coordinator skipped while
/// the busy machine made it look DOWN keeps an older copy (counted as
/// stale), while a key missing from a replica is a range the removal did
/// not re-replicate.
struct Writer {
    stop: Arc<AtomicBool>,
    /// Acknowledged writes.
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    acked: Arc<Mutex<HashMap<String, Record>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writer {
    fn start(client: &reqwest::Client, bases: Vec<String>, writers: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let tasks = (0..writers)
            .map(|w| {
                let (client, bases) = (client.clone(), bases.clone());
                let (stop, failed, acked) = (stop.clone(), failed.clone(), acked.clone());
                let done = done.clone();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("pre-{}", rand::random::<usize>() % KEYS);
                        let value = format!("{w}:{n}").into_bytes();
                        let base = &bases[n % bases.len()];
                        let r = client
                            .put(format!("{base}/v1/kv/{key}?consistency=quorum"))
                            .body(value.clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 204 => {
                                let version = version_of(&r).unwrap();
                                newest(&mut acked.lock(), key, Record::value(version, value));
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Writer {
            stop,
            done,
            failed,
            acked,
            tasks,
        }
    }

    fn acked(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The newest acknowledged write of each key, how many were
    /// acknowledged, and how many failed.
    async fn stop(self) -> (HashMap<String, Record>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().clone();
        (
            acked,
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_removed_under_load_is_re_replicated_and_fenced() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(4).await;
    let victim = 3;
    let survivors = [0, 1, 2];
    let mut latest: HashMap<String, Record> = HashMap::new();
    for k in 0..KEYS {
        let key = format!("pre-{k}");
        let r = put_all(&cluster, k % 4, &key, b"pre").await;
        assert_eq!(r.status(), 204, "{key}");
        latest.insert(key, Record::value(version_of(&r).unwrap(), b"pre".to_vec()));
    }
    // The writer goes through the survivors only: a write the victim
    // coordinated and acknowledged just before it died may sit on one
    // other replica alone, which no removal can bring back to RF copies.
    let bases: Vec<String> = survivors
        .iter()
        .map(|&i| cluster.nodes[i].url(""))
        .collect();
    let writer = Writer::start(&cluster.client, bases, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[victim].kill();
    for i in survivors {
        cluster.wait_for_status(i, victim, "DOWN").await;
    }
    // While it is DOWN a decommission is refused, naming removenode.
    let r = signed(
        cluster
            .client
            .post(cluster.nodes[0].url("/admin/v1/decommission")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    let body = r.text().await.unwrap();
    assert!(body.contains("removenode node4"), "{body}");

    let acked_at_removal = writer.acked();
    let started = Instant::now();
    let out = removenode_cli(&cluster, 0, "node4").await;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "removenode failed: {text}");
    let took = started.elapsed();
    // Keep writing a little in the ring without it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, count, failed) = writer.stop().await;
    eprintln!(
        "{text}removenode returned after {took:?}; {count} QUORUM writes acknowledged \
         ({acked_at_removal} before the removal), {failed} failed"
    );
    assert!(
        count > acked_at_removal,
        "no write acknowledged during the removal"
    );
    wait_removed_everywhere(&cluster, &survivors, "node4").await;
    // Re-replication shows where bootstrap progress does.
    let mut streamed = 0;
    for i in survivors {
        let info = cluster.node_info(i).await.unwrap();
        streamed += info["streaming"]["items"].as_u64().unwrap_or(0);
    }
    assert!(streamed > 0, "no survivor streamed anything");

    // Every acknowledged key on every replica of the ring without node4,
    // read from each node's own engine before any read repairs it.
    for (key, record) in acked {
        newest(&mut latest, key, record);
    }
    let stale = cluster.assert_holdings(&survivors, &latest, false).await;
    eprintln!(
        "{} keys checked on their replicas; {stale} copies older than the newest \
         acknowledged write (a replica skipped while it looked DOWN)",
        latest.len()
    );

    // Every survivor restarts, so the removal lives on only in their data
    // dirs: gossip alone would forget it, and take the removed node back.
    for i in survivors {
        cluster.nodes[i].kill();
    }
    for i in survivors {
        cluster.nodes[i].restart();
    }
    for i in survivors {
        cluster.wait_ready(i, Duration::from_secs(60)).await;
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    // The removed node restarted from its data dir: it learns it was
    // removed, says so, and stops; no coordinator routes to it meanwhile.
    cluster.nodes[victim].restart();
    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the removed node exited with {status}");
    let log = cluster.nodes[victim].log_text();
    assert!(
        log.contains("THIS NODE WAS REMOVED FROM THE CLUSTER"),
        "{log}"
    );
    assert_eq!(put_many(&cluster, &survivors, "after", 30, true).await, 30);
    // And it refuses to start from that data dir at all.
    cluster.nodes[victim].restart();
    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let log = cluster.nodes[victim].log_text();
    assert!(
        log.contains("was removed from the cluster for good"),
        "{log}"
    );

    // Wiped, the same id joins again as a new node: a newer run with other
    // tokens, which no removal fences.
    std::fs::remove_dir_all(&cluster.nodes[victim].data_dir).unwrap();
    cluster.nodes[victim].restart();
    cluster.wait_ready(victim, Duration::from_secs(60)).await;
    for i in 0..4 {
        cluster.wait_until_sees(i, 4, Duration::from_secs(30)).await;
    }
    assert_eq!(
        put_many(&cluster, &[0, 1, 2, 3], "rejoined", 30, true).await,
        30
    );
}
