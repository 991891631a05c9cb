//! The first-run traps of joining a cluster, on real `kvnode` processes:
//! a seed given as a peer's HTTP address or URL joins all the same, and a
//! seed that cannot work (nothing answers, another replication factor,
//! another cluster) ends in a clear message and a non-zero exit within a
//! bounded time, never a node that stays JOINING in silence.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{signed, Cluster};

/// What a refused node must do: exit non-zero within `within`, its log
/// saying `says`.
fn assert_refused(c: &mut Cluster, i: usize, within: Duration, says: &str) {
    let started = Instant::now();
    let status = c.nodes[i].wait_exit(within);
    assert!(!status.success(), "{} exited with {status}", c.nodes[i].id);
    let log = c.nodes[i].log_text();
    assert!(log.contains(says), "log lacks {says:?}:\n{log}");
    eprintln!("{} refused after {:?}", c.nodes[i].id, started.elapsed());
}

#[tokio::test]
async fn a_seed_given_as_an_http_address_or_url_is_resolved_and_joins() {
    let _serial = common::SERIAL.lock().await;
    let mut c = Cluster::start_with_rf(1, 1).await;
    let http = c.nodes[0].http.to_string();
    // The peer's HTTP port, as the storage service's nodes were seeded.
    let by_port = c.add_node_seeded(&http, &[]);
    c.wait_ready(by_port, Duration::from_secs(60)).await;
    // Its URL, as the block store's were.
    let by_url = c.add_node_seeded(&format!("http://{http}/"), &[]);
    c.wait_ready(by_url, Duration::from_secs(60)).await;
    for i in [by_port, by_url] {
        let log = c.nodes[i].log_text();
        assert!(log.contains("seed is an HTTP address"), "{log}");
        c.wait_until_sees(i, 3, Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn a_node_that_hears_no_seed_says_so_and_exits_non_zero() {
    let _serial = common::SERIAL.lock().await;
    let mut c = Cluster::start_with_rf(1, 1).await;
    // A UDP port that takes datagrams and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let seed = silent.local_addr().unwrap().to_string();
    let i = c.add_node_seeded(&seed, &[("KVNODE_JOIN_TIMEOUT_SECS", "8")]);

    // While it waits, /ready and /v1/node say what for.
    let deadline = Instant::now() + Duration::from_secs(6);
    let (ready, node) = loop {
        let ready = c.client.get(c.nodes[i].url("/ready")).send().await;
        let node = c.node_info(i).await;
        if let (Ok(ready), Some(node)) = (ready, node) {
            break (ready, node);
        }
        assert!(Instant::now() < deadline, "the node never answered HTTP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = serde_json::from_slice(&ready.bytes().await.unwrap()).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("no seed heard from"), "{body}");
    assert!(message.contains(&seed), "{body}");
    assert_eq!(node["state"], "JOINING");
    assert_eq!(node["join"]["heard_from_cluster"], false, "{node}");
    assert_eq!(node["join"]["limit_secs"], 8, "{node}");

    assert_refused(
        &mut c,
        i,
        Duration::from_secs(30),
        "heard from no seed within 8 s",
    );
    // And it said so while it waited, not only at the end.
    let log = c.nodes[i].log_text();
    assert!(log.matches("no seed heard from for").count() >= 1, "{log}");
}

#[tokio::test]
async fn a_node_with_another_replication_factor_is_refused() {
    let _serial = common::SERIAL.lock().await;
    let mut c = Cluster::start_with_rf(1, 1).await;
    let rf2 = [("KVNODE_REPLICATION_FACTOR", "2")];
    // Seeded by gossip: refused once gossip brings the cluster.
    let gossip = c.nodes[0].gossip.to_string();
    let i = c.add_node_seeded(&gossip, &rf2);
    assert_refused(
        &mut c,
        i,
        Duration::from_secs(30),
        "runs with replication factor 1, this node with 2",
    );
    // Seeded by HTTP: refused at start.
    let http = c.nodes[0].http.to_string();
    let j = c.add_node_seeded(&http, &rf2);
    assert_refused(
        &mut c,
        j,
        Duration::from_secs(10),
        "runs with replication factor 1, this node with 2",
    );
    // The cluster never saw either as a member.
    let r = signed(c.client.get(c.nodes[0].url("/v1/cluster")))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] != "AVAILABLE" || m["id"] == "node1"),
        "{v}"
    );
}

#[tokio::test]
async fn a_seed_of_another_cluster_is_refused_at_start() {
    let _serial = common::SERIAL.lock().await;
    let mut c = Cluster::start_with_rf(1, 1).await;
    let http = format!("http://{}", c.nodes[0].http);
    let i = c.add_node_seeded(&http, &[("KVNODE_CLUSTER_ID", "elsewhere")]);
    assert_refused(
        &mut c,
        i,
        Duration::from_secs(10),
        "runs with cluster id strata, this node with elsewhere",
    );
}
