//! The two small systems kvnode grew from, spoken to a real 3-node cluster:
//! their documented curl lines and client calls, replayed, with the status
//! codes and body shapes their clients expect.
//!
//! - the Cassandra-style storage service: `/v1/data?key=`, `POST /v1/data`
//!   with any JSON value, `readquorum`/`writequorum`;
//! - the Dynamo-style block store: `/block/{id}`.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use common::{assert_json_error, Cluster};
use serde_json::{json, Value};

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

#[tokio::test]
async fn the_storage_services_data_routes() {
    let _serial = common::SERIAL.lock().await;
    let c = Cluster::start(3).await;
    let url = |i: usize, path: &str| c.nodes[i].url(path);

    // Any JSON value, written through one node, read through the others.
    let values = [
        ("text", json!("hello")),
        ("number", json!(42)),
        ("float", json!(2.5)),
        (
            "object",
            json!({"name": "ada", "tags": ["x", "y"], "n": null}),
        ),
        ("array", json!([1, "two", {"three": 3}])),
        ("bool", json!(true)),
    ];
    for (i, (key, value)) in values.iter().enumerate() {
        // curl -X POST host/v1/data -d '{"key":..,"value":..}' (their
        // clients add fields of their own: ignored).
        let body = json!({"key": key, "value": value, "client": "py-1.0"});
        let r = c
            .client
            .post(url(i % 3, "/v1/data?writequorum=-1"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let (status, posted) = json_of(r).await;
        assert_eq!(status, 201, "{posted}");
        assert_eq!(posted["status"], true);
        assert_eq!(posted["key"], *key);
        assert_eq!(posted["value"], *value);
        assert!(posted["version"].as_u64().unwrap() > 0, "{posted}");

        // curl 'host/v1/data?key=K&readquorum=N'
        for (reader, quorum) in [(0, "1"), (1, "2"), (2, "3"), (0, "-1")] {
            let path = format!("/v1/data?key={key}&readquorum={quorum}&include=metadata");
            let (status, read) =
                json_of(c.client.get(url(reader, &path)).send().await.unwrap()).await;
            assert_eq!(status, 200, "{read}");
            assert_eq!(read["status"], true);
            assert_eq!(read["message"], "OK");
            assert_eq!(read["value"], *value, "{read}");
            assert_eq!(read["version"], posted["version"], "{read}");
            assert_eq!(read["metadata"]["key"], *key);
        }
        // The same bytes through the raw API: the value's JSON text.
        let raw = c.get(0, key, "quorum").await.bytes().await.unwrap();
        let text: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(text, *value);
    }

    // The level each quorum number names.
    for (quorum, level) in [("1", "ONE"), ("2", "QUORUM"), ("3", "ALL"), ("-1", "ALL")] {
        let path = format!("/v1/data?key=number&readquorum={quorum}");
        let (_, read) = json_of(c.client.get(url(0, &path)).send().await.unwrap()).await;
        assert_eq!(read["metadata"]["consistency"], level, "{read}");
    }
    // No quorum asked for is QUORUM.
    let (_, read) = json_of(
        c.client
            .get(url(1, "/v1/data?key=number"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["metadata"]["consistency"], "QUORUM");

    // A missing key: 200, value null, version 0, on this route only.
    let (status, read) = json_of(
        c.client
            .get(url(1, "/v1/data?key=nobody"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(read["status"], true);
    assert_eq!(read["value"], Value::Null);
    assert_eq!(read["version"], 0);
    assert_json_error(
        c.client
            .get(url(1, "/v1/data/nobody"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(c.get(1, "nobody", "quorum").await.status(), 404);
    // A deleted key reads as missing.
    assert_eq!(c.delete(0, "bool", "all").await.status(), 204);
    let (_, read) = json_of(
        c.client
            .get(url(2, "/v1/data?key=bool"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (read["value"].clone(), read["version"].clone()),
        (Value::Null, json!(0))
    );

    // The old item route keeps its shape: the string's text.
    let (status, item) = json_of(c.client.get(url(2, "/v1/data/text")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(item, json!({"key": "text", "value": "hello"}));
    // A raw value reads back as a JSON string.
    assert_eq!(c.put(0, "raw", b"plain bytes", "all").await.status(), 204);
    let (_, read) = json_of(
        c.client
            .get(url(1, "/v1/data?key=raw"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["value"], "plain bytes");

    // Quorum numbers that name no level are refused, never a silent QUORUM.
    for bad in ["0", "4", "-2", "most", "1&consistency=all"] {
        let r = c
            .client
            .get(url(0, &format!("/v1/data?key=number&readquorum={bad}")))
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, "bad_consistency").await;
        let r = c
            .client
            .post(url(0, &format!("/v1/data?writequorum={bad}")))
            .body(json!({"key": "k", "value": 1}).to_string())
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, "bad_consistency").await;
    }
    assert_json_error(
        c.client.get(url(0, "/v1/data")).send().await.unwrap(),
        400,
        "bad_key",
    )
    .await;
    let r = c
        .client
        .post(url(0, "/v1/data"))
        .body(json!({"key": "k"}).to_string())
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, "bad_json").await;
}

#[tokio::test]
async fn the_storage_services_metadata_routes() {
    let _serial = common::SERIAL.lock().await;
    let c = Cluster::start(3).await;
    let url = |i: usize, path: &str| c.nodes[i].url(path);

    // curl host/ping
    let (status, pong) = json_of(c.client.get(url(0, "/ping")).send().await.unwrap()).await;
    assert_eq!((status, pong), (200, json!({"message": "pong"})));

    // curl host/v1/metadata/node
    let (status, me) = json_of(
        c.client
            .get(url(1, "/v1/metadata/node"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], "node2");
    assert_eq!(me["http_addr"], c.nodes[1].http.to_string());
    assert_eq!(me["gossip_addr"], c.nodes[1].gossip.to_string());
    assert_eq!(me["state"], "AVAILABLE");
    assert_eq!(me["replication_factor"], 3);
    assert_eq!(me["cluster_id"], "strata");

    // curl host/v1/gossip: every member, with where it gossips.
    let (status, gossip) = json_of(c.client.get(url(2, "/v1/gossip")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{gossip}");
    assert_eq!(gossip["self"], "node3");
    let members = gossip["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{gossip}");
    for (m, node) in members.iter().zip(&c.nodes) {
        assert_eq!(m["id"], node.id.as_str(), "{gossip}");
        assert_eq!(m["http_addr"], node.http.to_string());
        assert_eq!(m["gossip_addr"], node.gossip.to_string());
        assert_eq!(m["state"], "AVAILABLE");
        assert_eq!(m["status"], "UP");
        assert_eq!(m["tokens"], 64);
        // All three replicate every key at RF 3.
        assert!((m["ownership"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{m}");
        assert!(m["last_update_ms"].as_u64().unwrap() < 10_000, "{m}");
        assert!(m["generation"].as_u64().unwrap() > 0);
    }

    // curl 'host/v1/metadata/key?key=K': the replicas in ring order, the
    // same from every node, and the ones the ring itself names.
    let ring = c.ring_of(&[0, 1, 2]).await;
    for key in ["user:1", "user:2", "ünïcode key"] {
        let want: Vec<&str> = c
            .replicas_of(&ring, key)
            .into_iter()
            .map(|i| c.nodes[i].id.as_str())
            .collect();
        for i in 0..3 {
            let path = format!("/v1/metadata/key?key={}", urlencode(key));
            let (status, placement) =
                json_of(c.client.get(url(i, &path)).send().await.unwrap()).await;
            assert_eq!(status, 200, "{placement}");
            assert_eq!(placement["key"], key);
            assert_eq!(placement["token"], strata_ring::token(key.as_bytes()));
            let got: Vec<&str> = placement["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap())
                .collect();
            assert_eq!(got, want, "{placement}");
            assert!(placement["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["state"] == "AVAILABLE"
                    && r["status"] == "UP"
                    && r["readable"] == true));
            assert_eq!(placement["pending"], json!([]));
        }
    }
    assert_json_error(
        c.client
            .get(url(0, "/v1/metadata/key"))
            .send()
            .await
            .unwrap(),
        400,
        "bad_key",
    )
    .await;

    // A node that is down shows as such, in the gossip view and in the
    // placement of a key it replicates.
    let mut c = c;
    c.nodes[2].kill();
    c.wait_for_status(0, 2, "DOWN").await;
    let (_, gossip) = json_of(
        c.client
            .get(c.nodes[0].url("/v1/gossip"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(gossip["members"][2]["status"], "DOWN", "{gossip}");
    let (_, placement) = json_of(
        c.client
            .get(c.nodes[0].url("/v1/metadata/key?key=user:1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let node3 = placement["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "node3")
        .unwrap();
    assert_eq!(
        (node3["status"].clone(), node3["readable"].clone()),
        (json!("DOWN"), json!(false))
    );
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn the_block_stores_block_routes() {
    let _serial = common::SERIAL.lock().await;
    let c = Cluster::start_with(3, 3, &[("KVNODE_BLOCK_SIZE", "4096")]).await;
    let url = |i: usize, path: &str| c.nodes[i].url(path);
    let block = |fill: u8| vec![fill; 4096];

    // curl -X PUT --data-binary @block host/block/ID: 201, create or not.
    for (i, fill) in [(0, 1u8), (1, 2)] {
        let r = c
            .client
            .put(url(i, "/block/blk-1"))
            .body(block(fill))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().contains_key("x-kvnode-version"));
    }
    // curl host/block/ID from any node: the last block written.
    for i in 0..3 {
        let r = c.client.get(url(i, "/block/blk-1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().to_vec(), block(2));
    }
    // Any other size is refused whole, never truncated or padded.
    for size in [0, 1, 4095, 4097, 8192] {
        let r = c
            .client
            .put(url(2, "/block/blk-1"))
            .body(vec![9u8; size])
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, "bad_block_size").await;
    }
    let r = c.client.get(url(2, "/block/blk-1")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), block(2));
    // The raw key space takes any size still: the size is the block's.
    assert_eq!(c.put(0, "not-a-block", b"short", "all").await.status(), 204);

    // curl -X DELETE host/block/ID: gone from every replica, not only
    // from the one that answered.
    let r = c
        .client
        .delete(url(1, "/block/blk-1?consistency=all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for i in 0..3 {
        assert_json_error(
            c.client
                .get(url(i, "/block/blk-1?consistency=one"))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await;
        let record = c.local_record(i, "blk-1").await.expect("a tombstone");
        assert!(
            record.value.is_none(),
            "node{} still holds the block",
            i + 1
        );
    }
}

/// A `kvnode` started the way the block store's nodes were: `--port`, no
/// id, the block store's variables set. Killed on drop.
struct Unnamed(std::process::Child);

impl Unnamed {
    fn start(cwd: &std::path::Path, port: u16, gossip: u16, log: &std::path::Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .current_dir(cwd)
            // The block store's own single-dash flag.
            .args(["-port", &port.to_string()])
            .args(["--gossip-listen", &format!("127.0.0.1:{gossip}")])
            .env("ReplicaName", "replica-a")
            .env("ReplicationFactor", "1")
            .env("KVNODE_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Its `/v1/metadata/node`, once it answers.
async fn metadata_of(client: &reqwest::Client, port: u16) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let url = format!("http://127.0.0.1:{port}/v1/metadata/node");
        if let Ok(r) = client.get(&url).send().await {
            return json_of(r).await.1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_unnamed_nodes_on_one_machine_get_distinct_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..2)
        .map(|_| {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            (
                t.local_addr().unwrap().port(),
                u.local_addr().unwrap().port(),
            )
        })
        .collect();
    let client = reqwest::Client::new();
    let log = |i: usize| dir.path().join(format!("unnamed{i}.log"));
    let nodes: Vec<Unnamed> = ports
        .iter()
        .enumerate()
        .map(|(i, (http, gossip))| Unnamed::start(dir.path(), *http, *gossip, &log(i)))
        .collect();
    let mut ids = Vec::new();
    for (http, _) in &ports {
        let me = metadata_of(&client, *http).await;
        let id = me["id"].as_str().unwrap().to_owned();
        assert!(id.ends_with(&format!("-{http}")), "{me}");
        assert_eq!(me["http_addr"], format!("127.0.0.1:{http}"));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    // Each its own data dir, named for its id.
    for id in &ids {
        assert!(dir
            .path()
            .join("kvnode-data")
            .join(id)
            .join("node.json")
            .exists());
    }
    // The block store's variables are said to be ignored, with kvnode's.
    let text = std::fs::read_to_string(log(0)).unwrap();
    assert!(
        text.contains("ReplicaName=replica-a is the block store's setting"),
        "{text}"
    );
    assert!(text.contains("--replication-factor"), "{text}");
    // A restart keeps the id.
    drop(nodes);
    let (http, gossip) = ports[0];
    let _again = Unnamed::start(dir.path(), http, gossip, &log(2));
    assert_eq!(metadata_of(&client, http).await["id"], ids[0].as_str());
}
