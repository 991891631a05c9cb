//! The file API on real kvnode processes: round trips of sizes around the
//! chunk size through different nodes, ranges, an upload cut off half-way,
//! a chunk corrupted on one replica, a read with one node killed, nodes
//! killed during an upload and a download, listings merged from every
//! node, and the chunk GC.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use common::{assert_json_error, kvnode, status_and_json, Cluster};
use serde_json::Value;
use sha2::{Digest, Sha256};
use strata_server::storage::Record;
use tokio::io::AsyncWriteExt;

/// The nodes' default `max_value_size`, which is the chunk size.
const CHUNK: usize = 1 << 20;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

async fn put_file(c: &Cluster, i: usize, name: &str, body: Vec<u8>) -> reqwest::Response {
    c.client
        .put(c.nodes[i].url(&format!("/v1/files/{name}")))
        .header("content-type", "video/mp4")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get_file(c: &Cluster, i: usize, name: &str, range: Option<&str>) -> reqwest::Response {
    let mut r = c.client.get(c.nodes[i].url(&format!("/v1/files/{name}")));
    if let Some(range) = range {
        r = r.header("range", range);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn files_round_trip_through_other_nodes_and_serve_ranges() {
    let c = Cluster::start(3).await;
    for (n, len) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 20_000_000]
        .into_iter()
        .enumerate()
    {
        let body = data(len, n as u8);
        let name = format!("dir/f{len}");
        let r = put_file(&c, n % 3, &name, body.clone()).await;
        let status = r.status();
        let answer = r.bytes().await.unwrap();
        assert_eq!(status, 201, "{len}: {}", String::from_utf8_lossy(&answer));
        let manifest: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(manifest["size"], len);
        assert_eq!(manifest["sha256"], hex::encode(Sha256::digest(&body)));
        assert_eq!(
            manifest["chunks"].as_array().unwrap().len(),
            len.div_ceil(CHUNK)
        );
        let r = get_file(&c, (n + 1) % 3, &name, None).await;
        assert_eq!(r.status(), 200, "{len}");
        assert_eq!(r.headers()["content-type"], "video/mp4");
        assert_eq!(r.bytes().await.unwrap().len(), len);
        let got = get_file(&c, (n + 2) % 3, &name, None)
            .await
            .bytes()
            .await
            .unwrap();
        assert!(got[..] == body[..], "{len} bytes came back different");
    }

    // HEAD: size, ETag, content type, no body.
    let body = data(CHUNK + 1, 4);
    let h = c
        .client
        .head(c.nodes[1].url("/v1/files/dir/f1048577"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.headers()["content-length"], (CHUNK + 1).to_string());
    assert_eq!(
        h.headers()["etag"],
        format!("\"{}\"", hex::encode(Sha256::digest(&body)))
    );

    // Ranges: first byte, last byte, across the chunk boundary, a suffix,
    // an open end, and out of range.
    let name = "dir/f1048577";
    for (range, from, to) in [
        ("bytes=0-0", 0, 1),
        (&format!("bytes={CHUNK}-{CHUNK}")[..], CHUNK, CHUNK + 1),
        ("bytes=1048570-1048576", CHUNK - 6, CHUNK + 1),
        ("bytes=-3", CHUNK - 2, CHUNK + 1),
        ("bytes=1000-", 1000, CHUNK + 1),
    ] {
        let r = get_file(&c, 2, name, Some(range)).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {from}-{}/{}", to - 1, CHUNK + 1)
        );
        assert!(r.bytes().await.unwrap()[..] == body[from..to], "{range}");
    }
    let r = get_file(&c, 0, name, Some("bytes=1048577-")).await;
    assert_json_error(r, 416, "range_not_satisfiable").await;

    // DELETE removes the file; client keys cannot reach the chunks.
    let r = c
        .client
        .delete(c.nodes[0].url("/v1/files/dir/f1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_json_error(get_file(&c, 1, "dir/f1", None).await, 404, "not_found").await;
    let chunk = hex::encode(Sha256::digest(&body[..CHUNK]));
    let r = c.put(0, &format!("%00chunk/{chunk}"), b"x", "one").await;
    assert_json_error(r, 400, "reserved_key").await;

    // A checksum that does not match leaves no file.
    let r = c
        .client
        .put(c.nodes[0].url("/v1/files/checked"))
        .header("x-checksum-sha256", hex::encode([0u8; 32]))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, "checksum_mismatch").await;
    assert_json_error(get_file(&c, 0, "checked", None).await, 404, "not_found").await;
    let r = c
        .client
        .put(c.nodes[0].url("/v1/files/checked"))
        .header("x-checksum-sha256", hex::encode(Sha256::digest(b"abc")))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn a_cut_off_upload_leaves_no_file() {
    let c = Cluster::start(3).await;
    let mut conn = tokio::net::TcpStream::connect(c.nodes[0].http)
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/files/cut HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        4 * CHUNK
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&data(2 * CHUNK + 10, 1)).await.unwrap();
    conn.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(conn);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for i in 0..3 {
        assert_json_error(get_file(&c, i, "cut", None).await, 404, "not_found").await;
    }
}

/// `kvnode put-file` and `get-file`: a file up through one node and down
/// through another is the same bytes; an existing target is not overwritten
/// and a missing file leaves nothing behind.
#[tokio::test]
async fn the_cli_puts_and_gets_files_whole_and_checked() {
    let c = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let body = data(2 * CHUNK + 7, 5);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();
    let node = |i: usize| c.nodes[i].http.to_string();
    let (code, out) = kvnode(&[
        "put-file",
        src.to_str().unwrap(),
        "dir/a b.bin",
        "--node",
        &node(0),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in 3 chunks"), "{out}");
    let dst = dir.path().join("dst.bin");
    let get = |to: &std::path::Path, name: &str| {
        let (to, name, n) = (to.to_str().unwrap().to_owned(), name.to_owned(), node(1));
        async move { kvnode(&["get-file", &name, &to, "--node", &n]).await }
    };
    let (code, out) = get(&dst, "dir/a b.bin").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified"), "{out}");
    assert!(std::fs::read(&dst).unwrap() == body);
    let (code, out) = get(&dst, "dir/a b.bin").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exists"), "{out}");
    let missing = dir.path().join("missing.bin");
    let (code, out) = get(&missing, "nothing").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");
    assert!(!missing.exists());
    assert!(!dir.path().join("missing.bin.kvnode-part").exists());
}

/// A body that stops coming is cut after the request timeout with a 408, and
/// leaves no file; the node goes on serving.
#[tokio::test]
async fn a_stalled_upload_is_cut_and_leaves_no_file() {
    let c = Cluster::start_with(1, 1, &[("KVNODE_REQUEST_TIMEOUT_MS", "1000")]).await;
    let mut conn = tokio::net::TcpStream::connect(c.nodes[0].http)
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/files/stalled HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        2 * CHUNK
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&data(CHUNK / 2, 3)).await.unwrap();
    conn.flush().await.unwrap();
    let start = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer),
    )
    .await
    .expect("the node answers a stalled upload")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_stalled"), "{answer}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(900));
    assert_json_error(get_file(&c, 0, "stalled", None).await, 404, "not_found").await;
    let r = c.put(0, "after", b"fine", "one").await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn a_corrupt_chunk_is_never_served_and_a_dead_node_does_not_stop_reads() {
    let mut c = Cluster::start(3).await;
    let body = data(3 * CHUNK + 7, 9);
    assert_eq!(put_file(&c, 0, "v", body.clone()).await.status(), 201);
    // Rot one replica's copy of the middle chunk: other bytes, and a newer
    // version, so that newest-wins at any level would pick it.
    let key = format!(
        "\0chunk/{}",
        hex::encode(Sha256::digest(&body[CHUNK..2 * CHUNK]))
    );
    let stored = c
        .local_record(1, &key)
        .await
        .expect("node 2 holds the chunk");
    let rotten = Record {
        version: stored.version + 1,
        value: Some(vec![0xffu8; CHUNK].into()),
    };
    c.apply_local(1, &key, &rotten).await;
    let r = c
        .client
        .get(c.nodes[1].url("/v1/files/v?consistency=one"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap()[..] == body[..],
        "the rotten chunk was served"
    );
    // The good copy was written back over the rotten one under a newer
    // version: every replica's own engine comes to hold the right bytes
    // (the write-back waits for one replica; the others follow, or, when
    // a busy test machine makes one miss the replica timeout, get it from
    // a hint, hence the long wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for i in 0..3 {
        loop {
            // A node that held a good copy all along holds it until the
            // write-back reaches it, under the older version.
            let held = c.local_record(i, &key).await.expect("each node holds it");
            if held.value.as_deref() == Some(&body[CHUNK..2 * CHUNK])
                && held.version > rotten.version
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} still holds {} copy at version {} (the rotten one is {})",
                i + 1,
                if held.value.as_deref() == Some(&body[CHUNK..2 * CHUNK]) {
                    "a good"
                } else {
                    "a bad"
                },
                held.version,
                rotten.version
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    c.nodes[2].kill();
    let got = get_file(&c, 0, "v", None).await.bytes().await.unwrap();
    assert!(got[..] == body[..]);
}

/// A chunk copy that is only missing (its replica was down through the
/// upload, with hints and repair off) is served from another replica and
/// not written back: the good copies keep their version, so the chunk's GC
/// grace does not start again.
#[tokio::test]
async fn a_missing_chunk_copy_is_served_without_a_fresh_version() {
    let c = Cluster::start_with(
        3,
        3,
        &[
            ("KVNODE_MAX_HINT_WINDOW_MS", "0"),
            ("KVNODE_REPAIR_INTERVAL", "0"),
        ],
    )
    .await;
    c.nodes[2].pause();
    c.wait_for_status(0, 2, "DOWN").await;
    let body = data(CHUNK + 3, 21);
    assert_eq!(put_file(&c, 0, "m", body.clone()).await.status(), 201);
    c.nodes[2].resume();
    for (observer, target) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        c.wait_for_status(observer, target, "UP").await;
    }
    let key = format!("\0chunk/{}", hex::encode(Sha256::digest(&body[..CHUNK])));
    assert!(
        c.local_record(2, &key).await.is_none(),
        "node 3 got the chunk while it was down"
    );
    let versions = [
        c.local_record(0, &key)
            .await
            .expect("node 1 holds it")
            .version,
        c.local_record(1, &key)
            .await
            .expect("node 2 holds it")
            .version,
    ];
    let got = get_file(&c, 2, "m", None).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap()[..] == body[..]);
    // A write-back would reach node 3's own engine first (and the others
    // within moments); left to hints and repair, it stays missing.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        c.local_record(2, &key).await.is_none(),
        "the missing copy was written back"
    );
    for (i, version) in versions.into_iter().enumerate() {
        let held = c.local_record(i, &key).await.expect("still held");
        assert_eq!(held.version, version, "node {} got a fresh version", i + 1);
    }
}

/// The names of every page of `GET /v1/files?prefix=` through node `i`,
/// `limit` at a time, following `next`; also each file's size.
async fn list_all(c: &Cluster, i: usize, prefix: &str, limit: u32) -> Vec<(String, u64)> {
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut query = vec![("prefix", prefix.to_owned()), ("limit", limit.to_string())];
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let r = c
            .client
            .get(c.nodes[i].url("/v1/files"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let files = page["files"].as_array().unwrap();
        assert!(files.len() <= limit as usize);
        for f in files {
            names.push((
                f["name"].as_str().unwrap().to_owned(),
                f["size"].as_u64().unwrap(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return names,
        }
    }
    panic!("a listing of {prefix:?} did not end within 100 pages");
}

/// Files are listed by prefix, in pages, from the nodes' own indexes of
/// their manifests: 4 nodes with RF 2, so no node holds every file and the
/// pages of several must be merged; a deleted file drops out; one node down
/// (fewer than RF) still lists everything, two are refused.
#[tokio::test]
async fn files_are_listed_in_pages_merged_from_every_node() {
    let mut c = Cluster::start_with_rf(4, 2).await;
    let mut expected = Vec::new();
    for n in 0..20usize {
        let name = format!("logs/{n:02}");
        assert_eq!(
            put_file(&c, n % 4, &name, data(n * 10, n as u8))
                .await
                .status(),
            201
        );
        expected.push((name, n as u64 * 10));
    }
    for name in ["media/a", "media/b", "logs"] {
        assert_eq!(put_file(&c, 1, name, data(3, 1)).await.status(), 201);
    }
    let r = c
        .client
        .delete(c.nodes[2].url("/v1/files/logs/05"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expected.remove(5);

    for limit in [1, 7, 100] {
        assert_eq!(
            list_all(&c, limit as usize % 4, "logs/", limit).await,
            expected,
            "pages of {limit}"
        );
    }
    let media: Vec<String> = list_all(&c, 3, "media/", 10)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(media, ["media/a", "media/b"]);
    assert_eq!(list_all(&c, 0, "", 1000).await.len(), 22);
    for bad in ["limit=0", "limit=1001", "limit=x"] {
        let r = c
            .client
            .get(c.nodes[0].url(&format!("/v1/files?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    c.nodes[3].kill();
    assert_eq!(list_all(&c, 0, "logs/", 6).await, expected, "one node down");
    c.nodes[2].kill();
    let r = c
        .client
        .get(c.nodes[0].url("/v1/files"))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 503, "unavailable").await;
}

/// The chunk GC deletes the chunks no file names once they are older than
/// the grace, on every replica, and keeps the chunks a live file shares
/// with a deleted one; a chunk written again after the GC comes back; a
/// pass with a node down is skipped. The background throttle makes each
/// pass outlast the request deadline, which must not cut it off.
#[tokio::test]
async fn the_chunk_gc_collects_orphans_and_keeps_shared_chunks() {
    let grace = std::time::Duration::from_millis(10_000);
    let mut c = Cluster::start_with(
        3,
        3,
        &[
            ("KVNODE_FILE_GC_INTERVAL", "0"),
            ("KVNODE_FILE_GC_GRACE_MS", "10000"),
            ("KVNODE_REPLICA_TIMEOUT_MS", "1000"),
            ("KVNODE_REQUEST_TIMEOUT_MS", "2000"),
            ("KVNODE_BACKGROUND_BYTES_PER_SEC", "1048576"),
        ],
    )
    .await;
    let shared = data(CHUNK, 1);
    let only_a = data(CHUNK, 2);
    let a = [&shared[..], &only_a[..], b"tail of a"].concat();
    let b = [&shared[..], &data(CHUNK, 3)[..]].concat();
    let gone = data(CHUNK + 5, 4);
    for (name, body) in [("a", &a), ("b", &b), ("gone", &gone)] {
        assert_eq!(put_file(&c, 0, name, body.clone()).await.status(), 201);
    }
    let written = std::time::Instant::now();
    for name in ["a", "gone"] {
        let r = c
            .client
            .delete(c.nodes[1].url(&format!("/v1/files/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let key = |bytes: &[u8]| format!("\0chunk/{}", hex::encode(Sha256::digest(bytes)));
    let orphans = [
        key(&only_a),
        key(b"tail of a"),
        key(&gone[..CHUNK]),
        key(&gone[CHUNK..]),
    ];
    let kept = [key(&shared), key(&b[CHUNK..])];

    // Within the grace nothing goes, referenced or not.
    let (status, report) = c.admin_post(0, "/admin/v1/files/gc").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["files"], 1, "{report}");
    assert_eq!(report["referenced_chunks"], 2, "{report}");
    assert_eq!(report["deleted_chunks"], 0, "{report}");
    assert!(
        report["seconds"].as_f64().unwrap() > 2.0,
        "the pass did not outlast the request deadline: {report}"
    );

    tokio::time::sleep(grace.saturating_sub(written.elapsed()) + grace / 5).await;
    for i in 0..3 {
        let (status, report) = c.admin_post(i, "/admin/v1/files/gc").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["deleted_chunks"], 4, "node {}: {report}", i + 1);
        assert!(report["deleted_bytes"].as_u64().unwrap() > 2 * CHUNK as u64);
        assert_eq!(
            c.metric(i, "kvnode_file_gc_deleted_chunks_total").await,
            4.0
        );
        for k in &orphans {
            let held = c.local_record(i, k).await.expect("a tombstone at least");
            assert!(held.value.is_none(), "node {} kept an orphan", i + 1);
        }
        for k in &kept {
            let held = c.local_record(i, k).await.expect("a shared chunk");
            assert!(held.value.is_some(), "node {} lost a live chunk", i + 1);
        }
    }
    let got = get_file(&c, 2, "b", None).await.bytes().await.unwrap();
    assert!(got[..] == b[..], "b changed");
    // The same bytes uploaded again are written anew, over the tombstones.
    assert_eq!(put_file(&c, 1, "again", a.clone()).await.status(), 201);
    let got = get_file(&c, 0, "again", None).await.bytes().await.unwrap();
    assert!(
        got[..] == a[..],
        "a chunk written after the GC did not come back"
    );

    c.nodes[2].kill();
    let (status, report) = c.admin_post(0, "/admin/v1/files/gc").await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["error"], "gc_skipped", "{report}");
    assert_eq!(
        c.metric(0, "kvnode_file_gc_skipped_passes_total").await,
        1.0
    );
}

/// A node killed while a file goes up through another, and another killed
/// while it comes down: the upload is acknowledged with every chunk on
/// both surviving nodes' own engines, and the download is whole.
#[tokio::test]
async fn a_node_killed_during_an_upload_or_a_download_loses_nothing() {
    let mut c = Cluster::start(3).await;
    let slow = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap();
    let body = data(16 * CHUNK + 3, 7);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let upload = tokio::spawn(
        slow.put(c.nodes[0].url("/v1/files/big"))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    for (n, piece) in body.chunks(CHUNK / 2).enumerate() {
        if n == 10 {
            c.nodes[2].kill();
        }
        tx.send(Ok(piece.to_vec())).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(tx);
    let r = upload.await.unwrap().unwrap();
    assert_eq!(r.status(), 201);
    let keys: Vec<String> = body
        .chunks(CHUNK)
        .map(|chunk| format!("\0chunk/{}", hex::encode(Sha256::digest(chunk))))
        .collect();
    // QUORUM with node 3 dead: each chunk acknowledged by nodes 1 and 2,
    // or by one of them and node 3 before it died, the other's write then
    // still on its way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for i in 0..2 {
        loop {
            let held = c.local_records(i, &keys).await;
            if held
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.value.is_some()))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} lacks acknowledged chunks",
                i + 1
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    c.nodes[2].restart();
    c.wait_ready(2, std::time::Duration::from_secs(30)).await;
    let mut download = slow
        .get(c.nodes[0].url("/v1/files/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let mut got = Vec::new();
    let mut killed = false;
    while let Some(piece) = download.chunk().await.unwrap() {
        got.extend_from_slice(&piece);
        if !killed && got.len() > 4 * CHUNK {
            c.nodes[1].kill();
            killed = true;
        }
    }
    assert!(killed);
    assert!(got[..] == body[..], "the download came back different");
}

/// The SHA-256 of `bytes` in hex.
fn hex_sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn post_json(c: &Cluster, i: usize, path: &str, body: &Value) -> (u16, Value) {
    status_and_json(
        c.client
            .post(c.nodes[i].url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A resumable upload: the cluster names the chunks it lacks, a chunk whose
/// bytes do not hash to its name is refused, a commit names the chunks still
/// missing and checks the whole file; `kvnode put-file` then sends only the
/// missing chunks, and a second upload of the same bytes sends none.
#[tokio::test]
async fn uploads_resume_and_send_only_the_chunks_the_cluster_lacks() {
    let c = Cluster::start(3).await;
    // `data` repeats itself every chunk: a seed per chunk makes them differ.
    let body: Vec<u8> = (0..6)
        .flat_map(|i| data(if i < 5 { CHUNK } else { 100 }, 20 + i as u8))
        .collect();
    let hashes: Vec<String> = body.chunks(CHUNK).map(hex_sha).collect();
    let ask = serde_json::json!({ "chunks": hashes });
    let (status, answer) = post_json(&c, 0, "/v1/chunks/missing", &ask).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["chunk_size"], CHUNK);
    assert_eq!(answer["missing"].as_array().unwrap().len(), 6);

    // Half the file was sent before an interruption.
    for (hash, chunk) in hashes.iter().zip(body.chunks(CHUNK)).take(3) {
        let r = c
            .client
            .put(c.nodes[1].url(&format!("/v1/chunks/{hash}")))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let wrong = c
        .client
        .put(c.nodes[1].url(&format!("/v1/chunks/{}", hashes[3])))
        .body(b"other bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_json_error(wrong, 400, "checksum_mismatch").await;
    let bad = c
        .client
        .put(c.nodes[1].url("/v1/chunks/not-a-hash"))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_json_error(bad, 400, "bad_hash").await;
    let (_, answer) = post_json(&c, 2, "/v1/chunks/missing", &ask).await;
    assert_eq!(answer["missing"], serde_json::json!(hashes[3..]));

    let commit = |sha: &str| {
        serde_json::json!({
            "size": body.len(), "chunk_size": CHUNK, "chunks": hashes,
            "sha256": sha, "content_type": "video/mp4",
        })
    };
    let (status, answer) = post_json(&c, 0, "/v1/files/movie", &commit(&hex_sha(&body))).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "chunks_missing");
    let mut expected: Vec<&String> = hashes[3..].iter().collect();
    expected.sort();
    assert_eq!(answer["missing"], serde_json::json!(expected));
    assert_eq!(get_file(&c, 0, "movie", None).await.status(), 404);

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("movie.mp4");
    std::fs::write(&src, &body).unwrap();
    let put = |name: &'static str, i: usize| {
        let (src, node) = (
            src.to_str().unwrap().to_owned(),
            c.nodes[i].http.to_string(),
        );
        async move { kvnode(&["put-file", &src, name, "--node", &node]).await }
    };
    let (code, out) = put("movie", 2).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "sent 3 chunks ({} bytes), 3 already stored",
            2 * CHUNK + 100
        )),
        "{out}"
    );
    let got = get_file(&c, 1, "movie", None).await.bytes().await.unwrap();
    assert!(got[..] == body[..]);
    let (code, out) = put("copy of movie", 0).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sent 0 chunks (0 bytes), 6 already stored"),
        "{out}"
    );
    let got = get_file(&c, 2, "copy%20of%20movie", None)
        .await
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == body[..]);

    // Every chunk stored, but the whole is not what the commit says.
    let (status, answer) = post_json(&c, 1, "/v1/files/liar", &commit(&hex_sha(b"x"))).await;
    assert_eq!(
        (status, &answer["error"]),
        (400, &serde_json::json!("checksum_mismatch"))
    );
    let mut oversized = commit(&hex_sha(&body));
    oversized["chunk_size"] = serde_json::json!(2 * CHUNK);
    let (status, answer) = post_json(&c, 1, "/v1/files/liar", &oversized).await;
    assert_eq!(
        (status, &answer["error"]),
        (400, &serde_json::json!("bad_manifest"))
    );
    assert_eq!(get_file(&c, 0, "liar", None).await.status(), 404);
}
