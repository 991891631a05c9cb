//! Operator tools against real clusters: `kvnode status`, `ring`, `info`
//! and `completions` run as an operator runs them (the binary, its output,
//! its exit code), `/ready` on a restarted node, which must not say
//! ready before the node can take a QUORUM write, and request ids in the
//! JSON logs of the coordinator and of the replicas.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{kvnode, Cluster, SERIAL};
use strata_server::api::report::ClusterReport;

/// The `kvnode status` line of member `id`.
fn line_of<'a>(table: &'a str, id: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(id))
        .unwrap_or_else(|| panic!("no line for {id} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_killed_node_down_and_exits_2() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let node1 = cluster.nodes[0].http.to_string();
    for i in 0..3 {
        cluster
            .write_retrying(i, &format!("k{i}"), Some(b"v"), "all", 50)
            .await;
    }

    let (code, table) = kvnode(&["status", "--node", &node1]).await;
    assert_eq!(code, 0, "{table}");
    for node in &cluster.nodes {
        let line = line_of(&table, &node.id);
        assert!(line.starts_with("UN "), "{line}");
        assert!(line.contains(&node.http.to_string()), "{line}");
        assert!(line.contains("100.0%"), "rf 3 of 3 nodes: {line}");
        assert!(line.contains(env!("CARGO_PKG_VERSION")), "{line}");
    }

    // Every member's load, version and uptime reach node1 by gossip.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (code, json) = kvnode(&["status", "--node", &node1, "--json"]).await;
        assert_eq!(code, 0, "{json}");
        let report: ClusterReport = serde_json::from_str(&json).expect("--json parses");
        // Republished every 5 s: the writes above show within that.
        if report
            .members
            .iter()
            .all(|m| m.load_bytes.is_some_and(|b| b > 0))
        {
            break report;
        }
        assert!(Instant::now() < deadline, "loads never arrived: {json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report.members.len(), 3);
    assert_eq!(report.coordinator, "node1");
    for m in &report.members {
        assert_eq!(m.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert!(
            m.uptime_secs.is_some() && m.last_heard_ms.is_some(),
            "{m:?}"
        );
    }

    cluster.nodes[2].kill();
    cluster.wait_for_status(0, 2, "DOWN").await;
    let (code, table) = kvnode(&["status", "--node", &node1]).await;
    assert_eq!(code, 2, "a member is down: {table}");
    let down = line_of(&table, "node3");
    assert!(down.starts_with("DN "), "{down}");
    assert!(line_of(&table, "node2").starts_with("UN "), "{table}");
    eprintln!("kvnode status with node3 killed:\n{table}");

    let (code, ring) = kvnode(&["ring", "--node", &node1]).await;
    assert_eq!(code, 0, "{ring}");
    let tokens: usize = ring
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|t| t.parse::<u64>().is_ok())
        })
        .count();
    assert!(tokens >= 3, "{ring}");
    assert!(
        ring.lines()
            .any(|l| l.contains("node3") && l.ends_with("DN")),
        "{ring}"
    );

    // node1 still has a quorum (2 of 3) for every range: ready, exit 0.
    let (code, info) = kvnode(&["info", "--node", &node1]).await;
    assert_eq!(code, 0, "{info}");
    assert!(info.contains("AVAILABLE (ready)"), "{info}");
    assert!(info.contains("Compaction due"), "{info}");

    // A node that does not answer is an error: exit 1.
    let gone = cluster.nodes[2].http.to_string();
    let (code, text) = kvnode(&["status", "--node", &gone]).await;
    assert_eq!(code, 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_generate_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kvnode"),
        ("fish", "complete -c kvnode"),
    ] {
        let (code, script) = kvnode(&["completions", shell]).await;
        assert_eq!(code, 0, "{script}");
        assert!(script.contains(marker), "{shell}: {script}");
        for sub in ["status", "ring", "info", "decommission"] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
    }
    let (code, text) = kvnode(&["completions", "tcsh"]).await;
    // A usage error is an error (1), never "not healthy" (2).
    assert_eq!(code, 1, "{text}");
}

/// A restarted node answers `/ready` 200 only once a QUORUM write through
/// it succeeds: the first write after the first 200 must not be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_ready_only_when_it_can_serve_quorum() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    for round in 0..3 {
        cluster.nodes[2].kill();
        let restarted = Instant::now();
        cluster.nodes[2].restart();
        let mut not_ready = 0;
        let ready_after = loop {
            if cluster.is_ready(2).await {
                break restarted.elapsed();
            }
            not_ready += 1;
            assert!(
                restarted.elapsed() < Duration::from_secs(30),
                "node3 never ready after its restart"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let key = format!("after-restart-{round}");
        let written = Instant::now();
        let r = cluster.put(2, &key, b"v", "quorum").await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(
            status, 204,
            "round {round}: the first QUORUM write after /ready said 200: {body}"
        );
        eprintln!(
            "round {round}: ready {ready_after:?} after the restart ({not_ready} polls said 503), \
             first QUORUM write took {:?}",
            written.elapsed()
        );
        let r = cluster.get(0, &key, "quorum").await;
        assert_eq!(r.status(), 200, "round {round}: {key} reads back");
    }
    let log = cluster.nodes[2].log_text();
    assert!(log.contains("membership settled"), "{log}");
}

/// The `[engine]` knobs reach the node's engine from the environment (a
/// 64 KiB memtable flushes where the default 32 MiB would not), and a
/// nonsense value stops the node at start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_settings_reach_the_engine_and_nonsense_is_refused() {
    let (code, out) = kvnode(&[
        "--engine-l0-compaction-trigger",
        "9",
        "--engine-l0-slowdown-trigger",
        "3",
        "--listen",
        "127.0.0.1:1",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid engine.l0_*_trigger"), "{out}");
    let (code, out) = kvnode(&["--engine-wal-sync", "sometimes"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("always"), "{out}");
    let (code, out) = kvnode(&["--engine-compression", "zstd:30"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("engine.compression"), "{out}");
    if !cfg!(feature = "otel") {
        let (code, out) = kvnode(&["--otel-endpoint", "http://127.0.0.1:9/v1/traces"]).await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("--features otel"), "{out}");
    }

    let c = Cluster::start_with(
        1,
        1,
        &[
            ("KVNODE_ENGINE_MEMTABLE_BYTES", "65536"),
            ("KVNODE_ENGINE_WAL_SYNC", "always"),
            ("KVNODE_ENGINE_COMPRESSION", "zstd"),
        ],
    )
    .await;
    let value = vec![b'v'; 1024];
    for i in 0..400 {
        let r = c.put(0, &format!("k{i}"), &value, "one").await;
        assert_eq!(r.status(), 204);
    }
    let info = c.node_info(0).await.unwrap();
    let flushes = info["engine"]["flushes"].as_u64().unwrap();
    assert!(flushes >= 2, "400 KiB through a 64 KiB memtable: {info}");
    // Only compressed blocks pass through the block cache: reads of flushed
    // keys going through it show the tables are compressed.
    for i in 0..20 {
        let r = c.get(0, &format!("k{i}"), "one").await;
        assert_eq!(r.status(), 200);
    }
    let info = c.node_info(0).await.unwrap();
    let cached = info["engine"]["block_cache_misses"].as_u64().unwrap();
    assert!(cached > 0, "reads of zstd tables decompress: {info}");
}

/// `--log-format json`: every line the node logs is one JSON object, and a
/// client request's log lines carry its id, which the answer returns in
/// `x-request-id` (the client's if sane, else a fresh one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_the_request_id() {
    let c = Cluster::start_with(1, 1, &[("KVNODE_LOG_FORMAT", "json")]).await;
    let node = &c.nodes[0];
    let r = common::signed(
        c.client
            .post(node.url("/admin/v1/compact"))
            .header("x-request-id", "ops-test-4242"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "ops-test-4242");
    // An id that is not sane is replaced, not echoed.
    let r = c
        .client
        .get(node.url("/v1/kv/missing?consistency=one"))
        .header("x-request-id", "not sane")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let fresh = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert!(fresh.chars().all(|c| c.is_ascii_hexdigit()), "{fresh}");

    let log = node.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"].is_object(), "{line}");
    }
    let compaction = lines
        .iter()
        .find(|l| l["fields"]["message"] == "compaction requested")
        .unwrap_or_else(|| panic!("no compaction line in {log}"));
    assert_eq!(compaction["span"]["name"], "request", "{compaction}");
    assert_eq!(compaction["span"]["id"], "ops-test-4242", "{compaction}");
}

/// The JSON log lines of `log` whose `request` span carries `id`.
fn lines_with_id(log: &str, id: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["span"]["id"] == id
                || l["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["id"] == id))
        })
        .collect()
}

/// A client's request id reaches the replicas (over the HTTP transport):
/// the write's `answered` line on the coordinator and the replica write's
/// on the other node carry the one id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_logged_by_the_coordinator_and_the_replica() {
    let c = Cluster::start_with(
        2,
        2,
        &[
            ("KVNODE_LOG_FORMAT", "json"),
            ("KVNODE_PEER_TRANSPORT", "http"),
            ("KVNODE_LOG", "info,strata_server::api::request_id=debug"),
        ],
    )
    .await;
    let id = "carried-to-replicas-7";
    let r = c
        .client
        .put(c.nodes[0].url("/v1/kv/traced?consistency=all"))
        .header("x-request-id", id)
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-request-id"], id);

    let coordinator = lines_with_id(&c.nodes[0].log_text(), id);
    assert!(
        coordinator
            .iter()
            .any(|l| l["fields"]["message"] == "answered" && l["fields"]["status"] == 204),
        "{coordinator:?}"
    );
    // ALL waited for the replica's answer, which it logs before sending.
    let replica = lines_with_id(&c.nodes[1].log_text(), id);
    assert!(
        replica
            .iter()
            .any(|l| l["fields"]["message"] == "answered" && l["fields"]["status"] == 204),
        "the replica logged no line with the id: {}",
        c.nodes[1].log_text()
    );
}
