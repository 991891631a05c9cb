//! What a node must refuse: a decommission it cannot do safely (the last
//! node, a node already leaving, while another node leaves) answers 409 with
//! the reason; and a write or read whose replicas do not answer in time
//! answers 503, never an acknowledgement, also while the failure detector
//! still counts the silent replica as up (a process stopped with SIGSTOP
//! keeps its sockets open and just does not answer).

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{version_of, Cluster};
use serde_json::Value;
use strata_server::storage::Record;

/// Asserts a 409 `cannot_decommission` whose message says `reason`.
fn assert_refused((status, body): &(u16, Value), reason: &str) {
    assert_eq!(*status, 409, "{body}");
    assert_eq!(body["error"], "cannot_decommission", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "{message:?} does not say {reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_is_refused_for_the_last_node_a_leaving_node_and_while_another_leaves() {
    let _serial = common::SERIAL.lock().await;
    {
        let alone = Cluster::start(1).await;
        assert_refused(
            &alone.admin_post(0, "/admin/v1/decommission").await,
            "last node",
        );
        assert!(
            alone.is_ready(0).await,
            "the refused node must keep serving"
        );
    }

    let mut cluster = Cluster::start(4).await;
    let mut latest = HashMap::new();
    for k in 0..200 {
        let key = format!("r-{k}");
        let r = cluster.put(k % 4, &key, b"v", "all").await;
        assert_eq!(r.status(), 204);
        latest.insert(key, Record::value(version_of(&r).unwrap(), b"v".to_vec()));
    }
    // node4 stops answering, so node1's leave cannot finish: node4 gains
    // ranges from it and never pulls them. That holds node1 in LEAVING.
    cluster.nodes[3].pause();
    // Two requests at once to the same node: one leave, one refusal.
    let (a, b) = tokio::join!(
        cluster.admin_post(0, "/admin/v1/decommission"),
        cluster.admin_post(0, "/admin/v1/decommission")
    );
    let (accepted, refused) = if a.0 == 202 { (a, b) } else { (b, a) };
    assert_eq!(accepted.0, 202, "{accepted:?}");
    assert_refused(&refused, "not AVAILABLE");

    // Once node2 sees node1 LEAVING, it refuses to leave too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = cluster.view(1).await.unwrap();
        if view
            .iter()
            .any(|(id, s, _)| id == "node1" && s == "LEAVING")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 never saw node1 LEAVING: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_refused(
        &cluster.admin_post(1, "/admin/v1/decommission").await,
        "node1 is LEAVING",
    );
    assert_refused(
        &cluster.admin_post(0, "/admin/v1/decommission").await,
        "not AVAILABLE",
    );
    let info = cluster.node_info(0).await.unwrap();
    assert_eq!(info["state"], "LEAVING", "node1 left with node4 silent");

    // node4 answers again, pulls its ranges, and node1's leave completes.
    cluster.nodes[3].resume();
    assert!(cluster.nodes[0]
        .wait_exit(Duration::from_secs(60))
        .success());
    for i in 1..4 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    cluster.assert_holdings(&[1, 2, 3], &latest, true).await;
}

/// Runs `attempt` (which pauses nodes, makes a request and resumes them)
/// until the coordinator refused while it still counted the paused nodes
/// as up, at most 5 times: if the failure detector marked them DOWN first,
/// the refusal came up front and the timeout path was not exercised, so
/// the test waits for them to be up again and tries anew. Every answer
/// must be a 503 either way; never an acknowledgement.
async fn refused_while_counted_up(
    cluster: &Cluster,
    paused: &[usize],
    request: impl Fn() -> reqwest::RequestBuilder,
) {
    for _ in 0..5 {
        for &i in paused {
            cluster.nodes[i].pause();
        }
        let r = request().send().await.unwrap();
        for &i in paused {
            cluster.nodes[i].resume();
        }
        assert_eq!(r.status(), 503, "a paused replica was acknowledged");
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "unavailable", "{body}");
        let message = body["message"].as_str().unwrap();
        // `CoordinatorError::Failed`: tried, and too few answered in time.
        if message.contains("answered") {
            return;
        }
        eprintln!("refused up front ({message}); the detector was quicker, trying again");
        for i in 0..cluster.nodes.len() {
            cluster
                .wait_until_sees(i, cluster.nodes.len(), Duration::from_secs(30))
                .await;
        }
    }
    panic!("the failure detector marked the paused replicas DOWN before every try");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_still_counted_up_gets_a_503_never_a_false_ack() {
    let _serial = common::SERIAL.lock().await;
    // A replica call gives up after 300 ms, well before the failure
    // detector (gossip every 100 ms) marks a silent node DOWN.
    let cluster = Cluster::start_with(3, 3, &[("KVNODE_REPLICA_TIMEOUT_MS", "300")]).await;
    let timeouts = "kvnode_replica_calls_total{op=\"apply\",target=\"remote\",outcome=\"timeout\"}";
    let before = cluster.metric(0, timeouts).await;
    let url = |path: &str| cluster.nodes[0].url(path);

    // One of three paused: ALL cannot be met.
    let put_all = url("/v1/kv/paused-all?consistency=all");
    refused_while_counted_up(&cluster, &[2], || cluster.client.put(&put_all).body("v")).await;
    assert!(cluster.metric(0, timeouts).await > before);
    let get_all = url("/v1/kv/paused-all?consistency=all");
    refused_while_counted_up(&cluster, &[2], || cluster.client.get(&get_all)).await;

    // Two of three paused: QUORUM cannot be met.
    let put_quorum = url("/v1/kv/paused-quorum?consistency=quorum");
    refused_while_counted_up(&cluster, &[1, 2], || {
        cluster.client.put(&put_quorum).body("v")
    })
    .await;
    let get_quorum = url("/v1/kv/paused-all?consistency=quorum");
    refused_while_counted_up(&cluster, &[1, 2], || cluster.client.get(&get_quorum)).await;

    // Everyone answers again: the same writes succeed.
    for i in 0..3 {
        cluster.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
    assert_eq!(
        cluster.put(0, "paused-all", b"w", "all").await.status(),
        204
    );
    assert_eq!(
        cluster
            .put(0, "paused-quorum", b"w", "quorum")
            .await
            .status(),
        204
    );
}
