//! Test harness: real `kvnode` processes on 127.0.0.1, on ports the test
//! picks, with data in a temp dir. Every process is killed when its
//! [`NodeProc`] drops, also when a test panics; a panicking test prints the
//! tail of each node's log.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::expect_used,
    dead_code
)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tries of one local read before a test fails: enough to ride out a
/// node that is briefly too busy to answer.
const LOCAL_READ_TRIES: usize = 20;

/// The secret every test cluster shares.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// `request`, signed under [`SECRET`] as a node signs its calls to another
/// (`strata_server::auth::request`): what internal and admin routes take.
pub fn signed(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let (client, request) = request.build_split();
    let mut request = request.expect("a valid request");
    strata_server::auth::request::RequestSigner::new(
        &strata_server::auth::ClusterSecret::new(SECRET.into()),
        "test-harness",
    )
    .sign(&mut request)
    .expect("a body that can be signed");
    reqwest::RequestBuilder::from_parts(client, request)
}

/// Held by each test that runs a cluster under load: several such clusters
/// side by side on 2 cores make the failure detector flap. One at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One kvnode process.
pub struct NodeProc {
    pub id: String,
    pub http: SocketAddr,
    pub gossip: SocketAddr,
    pub data_dir: PathBuf,
    seeds: String,
    /// Replication factor the node is started with.
    rf: u8,
    /// Extra `KVNODE_*` settings.
    env: Vec<(String, String)>,
    /// `http`, or `https` for a node started with a certificate.
    scheme: &'static str,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // KVNODE_TEST_BIN runs another build (an older one, to compare).
        let bin = std::env::var_os("KVNODE_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_kvnode").into());
        let child = Command::new(bin)
            .args(["--node-id", &self.id])
            .args(["--listen", &self.http.to_string()])
            .args(["--gossip-listen", &self.gossip.to_string()])
            .args(["--seeds", &self.seeds])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("KVNODE_CLUSTER_SECRET", SECRET)
            .env("KVNODE_REPLICATION_FACTOR", self.rf.to_string())
            // Short, so that tests see old owners drop what they gave away.
            .env("KVNODE_CLEANUP_GRACE_MS", "1500")
            .env("KVNODE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn kvnode");
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays alive, holds its sockets and answers
    /// nothing, as a node stuck in a long pause does.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`NodeProc::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGHUP: a node with TLS reloads its certificate and key.
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = i32::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) on our own unreaped child with a valid signal.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own unreaped child with a valid signal.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        // A hung shutdown must fail the test, not hang the suite.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < timeout, "{} still running", self.id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again: same id, ports and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    /// The process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the node has logged, across its restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.http)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last log lines of {} ----", self.id);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A cluster of kvnode processes that all seed from the first.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub client: reqwest::Client,
    // Dropped after the nodes (fields drop in order), so they die first.
    dir: tempfile::TempDir,
}

/// Free ports: bound to 0, read, released. Held together so that one call
/// never returns the same port twice.
fn free_ports(n: usize) -> Vec<(SocketAddr, SocketAddr)> {
    let held: Vec<(TcpListener, UdpSocket)> = (0..n)
        .map(|_| {
            (
                TcpListener::bind("127.0.0.1:0").unwrap(),
                UdpSocket::bind("127.0.0.1:0").unwrap(),
            )
        })
        .collect();
    held.iter()
        .map(|(t, u)| (t.local_addr().unwrap(), u.local_addr().unwrap()))
        .collect()
}

impl Cluster {
    /// Starts `n` nodes and waits until each is ready and sees all `n` up.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with_rf(n, 3).await
    }

    /// [`Cluster::start`] with replication factor `rf`.
    pub async fn start_with_rf(n: usize, rf: u8) -> Cluster {
        Cluster::start_with(n, rf, &[]).await
    }

    /// [`Cluster::start_with_rf`] with extra `KVNODE_*` settings.
    pub async fn start_with(n: usize, rf: u8, env: &[(&str, &str)]) -> Cluster {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        Cluster::start_over(n, rf, env, "http", client).await
    }

    /// [`Cluster::start_with`] for nodes that serve `scheme` (`env` names
    /// their TLS files), asked through `client`.
    pub async fn start_over(
        n: usize,
        rf: u8,
        env: &[(&str, &str)],
        scheme: &'static str,
        client: reqwest::Client,
    ) -> Cluster {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(n);
        let seeds = ports[0].1.to_string();
        let nodes = ports
            .into_iter()
            .enumerate()
            .map(|(i, (http, gossip))| {
                let id = format!("node{}", i + 1);
                let mut node = NodeProc {
                    data_dir: dir.path().join(&id),
                    log: dir.path().join(format!("{id}.log")),
                    id,
                    http,
                    gossip,
                    seeds: seeds.clone(),
                    rf,
                    env: env.clone(),
                    scheme,
                    child: None,
                };
                node.spawn();
                node
            })
            .collect();
        let cluster = Cluster { nodes, client, dir };
        for i in 0..n {
            cluster.wait_until_sees(i, n, Duration::from_secs(30)).await;
        }
        cluster
    }

    /// Starts one more node, seeded by the first, with an empty data dir;
    /// does not wait for it. Returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(&[])
    }

    /// [`Cluster::add_node`] with extra `KVNODE_*` settings on top of the
    /// first node's.
    pub fn add_node_with(&mut self, env: &[(&str, &str)]) -> usize {
        let seeds = self.nodes[0].gossip.to_string();
        self.add_node_seeded(&seeds, env)
    }

    /// [`Cluster::add_node_with`], seeded by `seeds` as given (an HTTP
    /// address, a URL, anything `--seeds` may be handed).
    pub fn add_node_seeded(&mut self, seeds: &str, env: &[(&str, &str)]) -> usize {
        let (http, gossip) = free_ports(1)[0];
        let id = format!("node{}", self.nodes.len() + 1);
        let mut node = NodeProc {
            data_dir: self.dir.path().join(&id),
            log: self.dir.path().join(format!("{id}.log")),
            id,
            http,
            gossip,
            seeds: seeds.to_owned(),
            rf: self.nodes[0].rf,
            env: self.nodes[0]
                .env
                .iter()
                .cloned()
                .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                .collect(),
            scheme: self.nodes[0].scheme,
            child: None,
        };
        node.spawn();
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// `POST` of an admin `path` on node `i`, with the cluster secret: the
    /// status and the JSON body.
    pub async fn admin_post(&self, i: usize, path: &str) -> (u16, Value) {
        status_and_json(
            signed(self.client.post(self.nodes[i].url(path)))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Writes `value` (`None` deletes) under `key` at `cl` through node
    /// `via`, riding out a flapping failure detector (`tries` tries); the
    /// version.
    pub async fn write_retrying(
        &self,
        via: usize,
        key: &str,
        value: Option<&[u8]>,
        cl: &str,
        tries: u32,
    ) -> u64 {
        let url = self.nodes[via].url(&format!("/v1/kv/{key}?consistency={cl}"));
        let (answer, _) = retry_503(tries, || match value {
            Some(v) => self.client.put(&url).body(v.to_vec()),
            None => self.client.delete(&url),
        })
        .await;
        let r = answer.unwrap();
        assert_eq!(r.status(), 204, "{key} at {cl} via node{}", via + 1);
        version_of(&r).unwrap()
    }

    /// Runs `kvnode repair` against node `i` to the end; its output.
    pub async fn kvnode_repair(&self, i: usize) -> String {
        let node = self.nodes[i].http.to_string();
        let args = ["repair", "--node", &node, "--timeout-secs", "300"];
        let (code, text) = kvnode_with(&[("KVNODE_CLUSTER_SECRET", SECRET)], &args).await;
        assert_eq!(code, 0, "kvnode repair failed: {text}");
        assert!(text.contains("repair done"), "{text}");
        text
    }

    /// Node `i`'s `/v1/node` document.
    pub async fn node_info(&self, i: usize) -> Option<Value> {
        let r = signed(self.client.get(self.nodes[i].url("/v1/node")))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&r.bytes().await.ok()?).ok()
    }

    /// A counter's value in node `i`'s `/metrics` (0 if absent).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let Ok(r) = signed(self.client.get(self.nodes[i].url("/metrics")))
            .send()
            .await
        else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The record node `i` itself stores for `key` (no routing): `None`
    /// only on a 404. Anything else (a refused connection, a 5xx, bytes that
    /// do not decode) is asked again a few times and then fails the test: an
    /// error must never pass for "this node does not hold the key".
    pub async fn local_record(
        &self,
        i: usize,
        key: &str,
    ) -> Option<strata_server::storage::Record> {
        read_local(self.client.clone(), self.nodes[i].http, key.to_owned()).await
    }

    /// [`Cluster::local_record`] of each of `keys` on node `i`, 32 at a time.
    pub async fn local_records(
        &self,
        i: usize,
        keys: &[String],
    ) -> Vec<Option<strata_server::storage::Record>> {
        let mut out = vec![None; keys.len()];
        for (c, chunk) in keys.chunks(32).enumerate() {
            let mut set = tokio::task::JoinSet::new();
            for (j, key) in chunk.iter().enumerate() {
                let (client, http, key) = (self.client.clone(), self.nodes[i].http, key.clone());
                set.spawn(async move { (j, read_local(client, http, key).await) });
            }
            while let Some(done) = set.join_next().await {
                let (j, record) = done.unwrap();
                out[c * 32 + j] = record;
            }
        }
        out
    }

    /// The ring that the given nodes' own published tokens make
    /// (`GET /internal/v1/tokens` on each), independent of any node's view.
    pub async fn ring_of(&self, nodes: &[usize]) -> strata_ring::Ring {
        let mut members = Vec::new();
        for &i in nodes {
            let r = signed(self.client.get(self.nodes[i].url("/internal/v1/tokens")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(v["id"], self.nodes[i].id.as_str());
            let tokens: Vec<u64> = v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect();
            assert!(
                !tokens.is_empty(),
                "{} publishes no tokens",
                self.nodes[i].id
            );
            members.push(strata_ring::Member::new(self.nodes[i].id.as_str(), tokens));
        }
        strata_ring::Ring::new(members).unwrap()
    }

    /// Node indices of the replicas of `key` in `ring`.
    pub fn replicas_of(&self, ring: &strata_ring::Ring, key: &str) -> Vec<usize> {
        let rf = strata_ring::ReplicationFactor::new(usize::from(self.nodes[0].rf)).unwrap();
        ring.replicas(key.as_bytes(), rf)
            .map(|id| self.nodes.iter().position(|n| n.id == id.as_str()).unwrap())
            .collect()
    }

    /// What each of `nodes` holds itself of `keys`, checked against the ring
    /// their published tokens make, before anything reads through a
    /// coordinator (a QUORUM or ALL read would repair the replicas it asks,
    /// and hide a copy that a join or leave lost):
    ///
    /// - every replica of every key holds a record of it (the keys were all
    ///   written at ALL before the change, so a missing copy is a range a
    ///   stream skipped or a clean-up dropped);
    /// - for each key, at least a quorum of its replicas hold a record at
    ///   least as new as `latest` (the newest acknowledged), so a QUORUM read
    ///   finds it;
    /// - with `cleaned`, no node holds a key it does not replicate: clean-up
    ///   deleted exactly the keys outside its ranges.
    ///
    /// Returns the copies that are older than `latest` (a replica a
    /// coordinator skipped while it looked down), for the test to report.
    pub async fn assert_holdings(
        &self,
        nodes: &[usize],
        latest: &std::collections::HashMap<String, strata_server::storage::Record>,
        cleaned: bool,
    ) -> usize {
        let ring = self.ring_of(nodes).await;
        let mut keys: Vec<String> = latest.keys().cloned().collect();
        keys.sort();
        let mut held = Vec::new();
        for &i in nodes {
            held.push((i, self.local_records(i, &keys).await));
        }
        let mut stale = 0;
        for (k, key) in keys.iter().enumerate() {
            let want = &latest[key];
            let replicas = self.replicas_of(&ring, key);
            let mut current = 0;
            for (i, records) in &held {
                let record = records[k].as_ref();
                let id = &self.nodes[*i].id;
                if replicas.contains(i) {
                    let record =
                        record.unwrap_or_else(|| panic!("{id} replicates {key} and has no copy"));
                    if want.supersedes(record) {
                        stale += 1;
                    } else {
                        current += 1;
                    }
                } else if cleaned {
                    assert!(
                        record.is_none(),
                        "{id} does not replicate {key}, clean-up left {record:?}"
                    );
                }
            }
            let quorum = replicas.len() / 2 + 1;
            assert!(
                current >= quorum,
                "{key}: {current} of its replicas {replicas:?} hold {want:?} or newer"
            );
        }
        stale
    }

    /// Waits until `nodes` have deleted `items` items in all in clean-up
    /// passes (`kvnode_cleanup_deleted_items_total`), and fails if they
    /// have not within 20 s.
    pub async fn wait_cleaned_up(&self, nodes: &[usize], items: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut deleted = 0.0;
            for &i in nodes {
                deleted += self.metric(i, "kvnode_cleanup_deleted_items_total").await;
            }
            if deleted as usize == items {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clean-up deleted {deleted} items, not {items}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether node `i` answers `/ready` with 200.
    pub async fn is_ready(&self, i: usize) -> bool {
        self.client
            .get(self.nodes[i].url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// Waits until node `i` answers `/ready`; returns how long it took.
    pub async fn wait_ready(&self, i: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let ready = self.is_ready(i).await;
            if ready {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{} not ready in {timeout:?}",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The members of node `i`'s view: (id, state, status).
    pub async fn view(&self, i: usize) -> Option<Vec<(String, String, String)>> {
        // Signed, so that it also reads a node that requires client tokens.
        let r = signed(self.client.get(self.nodes[i].url("/v1/cluster")))
            .send()
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["id"].as_str().unwrap_or_default().to_owned(),
                        m["state"].as_str().unwrap_or_default().to_owned(),
                        m["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        )
    }

    /// Waits until node `i` is ready and sees `n` AVAILABLE members up.
    pub async fn wait_until_sees(&self, i: usize, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.is_ready(i).await;
            if ready {
                if let Some(view) = self.view(i).await {
                    let up = view
                        .iter()
                        .filter(|(_, s, st)| s == "AVAILABLE" && st == "UP")
                        .count();
                    if up == n {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not see {n} members up in time",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `observer` reports node `target` with `status`;
    /// returns how long it took.
    pub async fn wait_for_status(&self, observer: usize, target: usize, status: &str) -> Duration {
        let start = Instant::now();
        let id = &self.nodes[target].id;
        loop {
            if let Some(view) = self.view(observer).await {
                if view.iter().any(|(i, _, st)| i == id && st == status) {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} never saw {id} {status}",
                self.nodes[observer].id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn put(&self, i: usize, key: &str, value: &[u8], cl: &str) -> reqwest::Response {
        self.client
            .put(self.nodes[i].url(&format!("/v1/kv/{key}?consistency={cl}")))
            .body(value.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, i: usize, key: &str, cl: &str) -> reqwest::Response {
        self.client
            .delete(self.nodes[i].url(&format!("/v1/kv/{key}?consistency={cl}")))
            .send()
            .await
            .unwrap()
    }

    /// Stores `record` for `key` on node `i` alone, merged by
    /// last-writer-wins (`POST /internal/v1/apply`), as a replication call
    /// does: a way to make one replica stale, newer, or hold a stray copy.
    pub async fn apply_local(&self, i: usize, key: &str, record: &strata_server::storage::Record) {
        let body = strata_server::peer::wire::encode_apply(key.as_bytes(), record);
        let r = signed(
            self.client
                .post(self.nodes[i].url(strata_server::peer::wire::APPLY_PATH))
                .body(body),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 204, "apply {key} on {}", self.nodes[i].id);
    }

    pub async fn get(&self, i: usize, key: &str, cl: &str) -> reqwest::Response {
        self.client
            .get(self.nodes[i].url(&format!("/v1/kv/{key}?consistency={cl}")))
            .send()
            .await
            .unwrap()
    }
}

/// Sends the request `build` makes until the answer is not a 503, at most
/// `tries` times, 100 ms apart: on a busy machine the failure detector can
/// mark a replica DOWN for a moment, and a coordinator then refuses the
/// level it needs. That is unavailability, not loss, so tests ride it out
/// for a bounded time and count it, never more. A connection error is
/// retried too. Returns the last answer (or error) and the retries.
pub async fn retry_503(
    tries: u32,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> (Result<reqwest::Response, reqwest::Error>, u32) {
    let mut retries = 0;
    loop {
        let answer = build().send().await;
        let unavailable = answer.as_ref().map_or(true, |r| r.status() == 503);
        if !unavailable || retries + 1 >= tries {
            return (answer, retries);
        }
        retries += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version header of a write or read answer.
pub fn version_of(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-kvnode-version")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The record the node at `http` stores for `key` (`POST /internal/v1/read`):
/// see [`Cluster::local_record`].
async fn read_local(
    client: reqwest::Client,
    http: SocketAddr,
    key: String,
) -> Option<strata_server::storage::Record> {
    let mut last = String::new();
    for _ in 0..LOCAL_READ_TRIES {
        let r = signed(
            client
                .post(format!("http://{http}/internal/v1/read"))
                .body(key.clone()),
        )
        .send()
        .await;
        match r {
            Ok(r) if r.status() == 404 => return None,
            Ok(r) if r.status() == 200 => {
                let bytes = r.bytes().await.expect("record body");
                return Some(
                    strata_server::storage::Record::decode(bytes).expect("a stored record"),
                );
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{http} cannot say whether it holds {key}: {last}");
}

/// `field` (kB) of /proc/<pid>/status, in bytes (`VmRSS`, `RssAnon`, ...).
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .expect(field)
        * 1024
}

/// Asserts a JSON error body with `status` and `kind`.
pub async fn assert_json_error(response: reqwest::Response, status: u16, kind: &str) {
    assert_eq!(response.status(), status);
    let body: Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("JSON error body");
    assert_eq!(body["error"], kind, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Runs the `kvnode` command line with `args` and nothing but the test's own
/// environment; its exit code and stdout with stderr appended.
pub async fn kvnode(args: &[&str]) -> (i32, String) {
    kvnode_with(&[], args).await
}

/// [`kvnode`] with extra environment variables (the cluster secret, say).
pub async fn kvnode_with(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The status of an answer and its body parsed as JSON.
pub async fn status_and_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}
