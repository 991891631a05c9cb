//! One real kvnode process: the client API, the compatibility routes, the
//! introspection routes, the guard on internal routes, refusals of bad
//! requests, and a graceful stop that keeps acknowledged writes.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use common::{assert_json_error, signed, Cluster, SECRET};
use serde_json::Value;
use strata_server::peer::wire::RecordDigest;
use strata_server::storage::Record;

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn kv_compat_and_introspection_routes_work() {
    let c = Cluster::start(1).await;
    let node = &c.nodes[0];
    // Keys are percent-decoded bytes: "a/b\0" is one key.
    let r = c.put(0, "a%2Fb%00", b"\x00\xffbinary", "one").await;
    assert_eq!(r.status(), 204);
    assert!(r.headers().contains_key("x-kvnode-version"));
    let r = c.get(0, "a%2Fb%00", "all").await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x00\xffbinary");
    assert_eq!(
        c.client
            .delete(node.url("/v1/kv/a%2Fb%00"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_json_error(c.get(0, "a%2Fb%00", "quorum").await, 404, "not_found").await;

    let r = c
        .client
        .post(node.url("/v1/data"))
        .body(r#"{"key":"greeting","value":"hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .client
        .get(node.url("/v1/data/greeting"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(r).await,
        serde_json::json!({"key": "greeting", "value": "hello"})
    );
    // Stored as its JSON text, quotes and all.
    assert_eq!(
        c.get(0, "greeting", "quorum").await.bytes().await.unwrap(),
        r#""hello""#
    );

    let r = c
        .client
        .put(node.url("/block/blk1"))
        .body("blockdata")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c.client.get(node.url("/block/blk1")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), "blockdata");
    assert_eq!(
        c.client
            .delete(node.url("/block/blk1"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.client
            .get(node.url("/block/blk1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let cluster = json(c.client.get(node.url("/v1/cluster")).send().await.unwrap()).await;
    assert_eq!(cluster["members"][0]["id"], "node1");
    assert_eq!(cluster["members"][0]["state"], "AVAILABLE");
    assert_eq!(cluster["members"][0]["tokens"], 64);
    assert_eq!(cluster["members"][0]["ownership"], 1.0);
    let me = json(c.client.get(node.url("/v1/node")).send().await.unwrap()).await;
    assert_eq!(me["id"], "node1");
    assert_eq!(me["state"], "AVAILABLE");
    let engine = &me["engine"];
    assert_eq!(engine["levels"].as_array().unwrap().len(), 7, "{engine}");
    assert!(
        engine["user_bytes_written"].as_u64().unwrap() > 0,
        "{engine}"
    );
    assert_eq!(
        c.client
            .get(node.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.client
            .get(node.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = c
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "kvnode_requests_total{op=\"put\",status=\"204\"}",
        "kvnode_request_duration_seconds_bucket",
        "kvnode_errors_total{kind=\"not_found\"}",
        "kvnode_replica_calls_total{op=\"apply\",target=\"local\",outcome=\"ok\"}",
        "strata_engine_level_tables{level=\"0\"}",
        "strata_engine_user_written_bytes_total",
        "strata_engine_stall_stops_total",
    ] {
        assert!(metrics.contains(family), "{family} missing from\n{metrics}");
    }
    assert!(
        metrics.ends_with("# EOF\n"),
        "exposition must end with its EOF marker"
    );
}

#[tokio::test]
async fn internal_routes_refuse_requests_without_the_cluster_secret() {
    let c = Cluster::start(1).await;
    let node = &c.nodes[0];
    assert_eq!(c.put(0, "k", b"v", "one").await.status(), 204);
    let read = |auth: Option<&str>| {
        let mut req = c.client.post(node.url("/internal/v1/read")).body("k");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send()
    };
    assert_json_error(read(None).await.unwrap(), 401, "unauthorized").await;
    assert_json_error(
        read(Some("Bearer wrong-secret-0123456789")).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert_json_error(read(Some(SECRET)).await.unwrap(), 401, "unauthorized").await;
    assert_json_error(
        read(Some(&format!("Basic {SECRET}"))).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    // Headers a proxy or a client could set make no difference.
    let r = c
        .client
        .post(node.url("/internal/v1/apply"))
        .header("x-forwarded-for", "127.0.0.1")
        .header("x-kvnode-node", "node1")
        .body(vec![0u8; 16])
        .send()
        .await
        .unwrap();
    assert_json_error(r, 401, "unauthorized").await;

    // The old format, the secret itself as a bearer token, is refused.
    assert_json_error(
        read(Some(&format!("Bearer {SECRET}"))).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let r = signed(c.client.post(node.url("/internal/v1/read")).body("k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let record = Record::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(record.value.as_deref(), Some(&b"v"[..]));
    // Its digest, and none for a key the node does not hold.
    let digest = |key: &'static str| {
        signed(
            c.client
                .post(node.url("/internal/v1/read-digest"))
                .body(key),
        )
        .send()
    };
    let r = digest("k").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        RecordDigest::decode(&r.bytes().await.unwrap()),
        Ok(RecordDigest::of(&record))
    );
    assert_eq!(digest("absent").await.unwrap().status(), 404);
    // With the secret, a malformed apply is a 400, not a crash.
    let r = signed(
        c.client
            .post(node.url("/internal/v1/apply"))
            .body(vec![0, 0, 0, 9, 1]),
    )
    .send()
    .await
    .unwrap();
    assert_json_error(r, 400, "bad_apply").await;
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_json_4xx() {
    let c = Cluster::start(1).await;
    let node = &c.nodes[0];
    assert_json_error(c.get(0, "k", "two").await, 400, "bad_consistency").await;
    assert_json_error(c.put(0, "k", b"v", "").await, 400, "bad_consistency").await;
    let post = |body: &'static str| c.client.post(node.url("/v1/data")).body(body).send();
    assert_json_error(post("{not json").await.unwrap(), 400, "bad_json").await;
    assert_json_error(post(r#"{"key":"k"}"#).await.unwrap(), 400, "bad_json").await;
    assert_json_error(
        post(r#"{"key":"","value":"v"}"#).await.unwrap(),
        400,
        "bad_key",
    )
    .await;

    let long_key = "k".repeat(4097);
    assert_json_error(c.put(0, &long_key, b"v", "one").await, 413, "key_too_large").await;
    assert_json_error(c.get(0, &long_key, "one").await, 413, "key_too_large").await;
    let big = vec![7u8; 1024 * 1024 + 1];
    assert_json_error(c.put(0, "k", &big, "one").await, 413, "value_too_large").await;
    let r = c
        .client
        .post(node.url("/v1/data"))
        .body(vec![b'x'; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_json_error(r, 413, "body_too_large").await;
    // The limit is inclusive: a value of exactly max_value_size is stored.
    assert_eq!(c.put(0, "k", &big[1..], "one").await.status(), 204);

    assert_json_error(
        c.client.get(node.url("/nope")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_json_error(
        c.client.post(node.url("/v1/kv/k")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn sigterm_drains_and_a_restart_keeps_acknowledged_writes() {
    let mut c = Cluster::start(1).await;
    for k in 0..100 {
        assert_eq!(
            c.put(0, &format!("k{k}"), b"v", "quorum").await.status(),
            204
        );
    }
    let status = c.nodes[0].terminate();
    assert!(status.success(), "kvnode exited with {status}");
    c.nodes[0].restart();
    c.wait_until_sees(0, 1, std::time::Duration::from_secs(20))
        .await;
    for k in 0..100 {
        assert_eq!(c.get(0, &format!("k{k}"), "quorum").await.status(), 200);
    }
}

#[tokio::test]
async fn an_apply_batch_merges_every_entry_or_refuses_the_whole_body() {
    use strata_server::peer::wire::{ApplyBatch, APPLY_BATCH_PATH};
    let c = Cluster::start(1).await;
    // A newer local copy of "k0" that the batch's older one must not undo.
    c.apply_local(0, "k0", &Record::value(1_000, b"newer".to_vec()))
        .await;
    let post = |body: bytes::Bytes, auth: bool| {
        let req = c.client.post(c.nodes[0].url(APPLY_BATCH_PATH)).body(body);
        if auth {
            signed(req).send()
        } else {
            req.send()
        }
    };
    let mut batch = ApplyBatch::default();
    for i in 0..500u64 {
        let record = if i == 7 {
            Record::tombstone(50 + i)
        } else {
            Record::value(50 + i, vec![b'v'; 200])
        };
        batch.push(format!("k{i}").as_bytes(), &record.encode());
    }
    let body = batch.finish();
    assert_json_error(
        post(body.clone(), false).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let mut corrupt = body.to_vec();
    let last = corrupt.len() - 20;
    corrupt[last] ^= 0x40;
    assert_json_error(post(corrupt.into(), true).await.unwrap(), 400, "bad_apply").await;
    assert_eq!(
        c.local_record(0, "k1").await,
        None,
        "a refused batch applied"
    );

    assert_eq!(post(body, true).await.unwrap().status(), 204);
    for i in 0..500u64 {
        let got = c.local_record(0, &format!("k{i}")).await;
        let want = match i {
            0 => Record::value(1_000, b"newer".to_vec()),
            7 => Record::tombstone(57),
            _ => Record::value(50 + i, vec![b'v'; 200]),
        };
        assert_eq!(got, Some(want), "k{i}");
    }
}
