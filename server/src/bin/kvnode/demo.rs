//! `kvnode demo`: a local cluster in one command. It starts N child
//! `kvnode` processes (this same binary) on loopback ports with a shared
//! random secret, waits until every one is ready and sees the whole cluster,
//! prints how to talk to it, and on Ctrl-C or SIGTERM stops them all
//! gracefully.
//!
//! With `--join-after SECS` it then shows a live bootstrap: it writes
//! `--keys` keys, waits, starts one more node into the running cluster and
//! draws its streaming progress until it is AVAILABLE.
//!
//! With `--secure` the cluster runs as a production one would: a throw-away
//! CA in `DATA_DIR/pki` (made afresh each run), one node certificate for
//! the loopback address that every node serves, mutual TLS between nodes,
//! an `admin` client certificate that clients must present, and a tokens
//! file holding one admin token; it prints how to use them with curl and
//! the CLI.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use strata_server::auth::tokens::{self, Role};
use strata_server::auth::ClusterSecret;
use strata_server::certs::{self, Leaf};

/// Flags of `kvnode demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// HTTP port of the first node; node i uses base + 2i, gossip base + 2i + 1.
    #[arg(long, default_value_t = 7700)]
    pub base_port: u16,
    /// Where the nodes' data dirs and logs go.
    #[arg(long, default_value = "demo-data")]
    pub data_dir: PathBuf,
    /// Seconds after the cluster forms to add one more node to it, showing
    /// its bootstrap.
    #[arg(long)]
    pub join_after: Option<u64>,
    /// Keys written before the join, so that there is data to stream.
    #[arg(long, default_value_t = 20_000)]
    pub keys: u32,
    /// Every node's --tombstone-grace-ms [default: the node's, 10 days].
    #[arg(long)]
    pub tombstone_grace_ms: Option<u64>,
    /// TLS with client certificates, mutual TLS between nodes and an admin
    /// token, all made for this run in DATA_DIR/pki.
    #[arg(long)]
    pub secure: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Bad flags.
    #[error("{0}")]
    Args(String),
    /// Starting or stopping a child failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The certificates or the token of `--secure` could not be made.
    #[error("--secure: {0}")]
    Secure(String),
    /// A node did not become ready in time.
    #[error("node {0} did not become ready; see its log in the data dir")]
    NotReady(String),
}

/// How long the cluster may take to form.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--secure` made for this run.
struct Secure {
    /// The directory of the CA, the certificates and the tokens file.
    pki: PathBuf,
    /// The admin client token.
    token: String,
}

impl Secure {
    /// A fresh CA, node and `admin` client certificates, and an admin
    /// token, in `pki` (whatever an earlier run left there is removed).
    fn create(pki: &Path) -> Result<Self, DemoError> {
        let fail = |e: &dyn std::fmt::Display| DemoError::Secure(e.to_string());
        if pki.exists() {
            std::fs::remove_dir_all(pki).map_err(|e| fail(&e))?;
        }
        let ca = certs::create_ca("kvnode demo CA", 1).map_err(|e| fail(&e))?;
        certs::write(pki, "ca", &ca).map_err(|e| fail(&e))?;
        let node = Leaf::Node {
            names: vec!["127.0.0.1".into(), "localhost".into()],
        };
        for (name, leaf) in [("node", node), ("admin", Leaf::Client)] {
            let issued = certs::create_leaf(&ca, name, &leaf, 1).map_err(|e| fail(&e))?;
            certs::write(pki, name, &issued).map_err(|e| fail(&e))?;
        }
        let (token, line) = tokens::create("admin", Role::Admin).map_err(|e| fail(&e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(pki.join("tokens"))
            .map_err(|e| fail(&e))?;
        std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())
            .map_err(|e| fail(&e))?;
        Ok(Self {
            pki: pki.to_owned(),
            token,
        })
    }

    /// The settings every node starts with.
    fn node_env(&self) -> [(&'static str, PathBuf); 4] {
        [
            ("KVNODE_TLS_CERT", self.pki.join("node.crt")),
            ("KVNODE_TLS_KEY", self.pki.join("node.key")),
            ("KVNODE_TLS_CLIENT_CA", self.pki.join("ca.crt")),
            ("KVNODE_AUTH_TOKENS_FILE", self.pki.join("tokens")),
        ]
    }

    /// `builder` trusting the CA, presenting the admin certificate and
    /// sending the admin token.
    fn client(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, DemoError> {
        let fail = |e: &dyn std::fmt::Display| DemoError::Secure(e.to_string());
        let (cert, key) = (self.pki.join("admin.crt"), self.pki.join("admin.key"));
        let tls = strata_server::tls::client_config(&self.pki.join("ca.crt"), Some((&cert, &key)))
            .map_err(|e| fail(&e))?;
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|e| fail(&e))?;
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        Ok(builder.use_preconfigured_tls(tls).default_headers(headers))
    }

    /// How to talk to the cluster, for the banner.
    fn usage(&self, first: SocketAddr) -> String {
        let pki = self.pki.display();
        format!(
            "secure: CA, certificates and the admin token are in {pki}. In a shell:\n\n  \
             TLS='--cacert {pki}/ca.crt --cert {pki}/admin.crt --key {pki}/admin.key'\n  \
             TOKEN='{token}'\n  \
             curl $TLS -H \"Authorization: Bearer $TOKEN\" https://{first}/v1/cluster\n  \
             kvnode status --node {first} --ca {pki}/ca.crt --cert {pki}/admin.crt \
             --key {pki}/admin.key --token $TOKEN\n\n\
             Without the client certificate the handshake is refused; without the token \
             the answer is 401. More tokens: kvnode token create NAME read|write|admin, \
             appended to {pki}/tokens.\n",
            token = self.token
        )
    }
}

struct DemoNode {
    id: String,
    http: SocketAddr,
    child: Child,
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let total = args.nodes + u16::from(args.join_after.is_some());
    let last_port = u32::from(args.base_port) + 2 * u32::from(total);
    if args.nodes == 0 || args.nodes > 16 || last_port > u32::from(u16::MAX) {
        return Err(DemoError::Args(
            "--nodes must be 1..=16 and the ports must fit".into(),
        ));
    }
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| DemoError::Io { what, source }
    };
    let exe = std::env::current_exe().map_err(io("finding the kvnode binary"))?;
    std::fs::create_dir_all(&args.data_dir).map_err(io("creating the data dir"))?;
    let secret = ClusterSecret::random();
    let secure = if args.secure {
        Some(Secure::create(&args.data_dir.join("pki"))?)
    } else {
        None
    };
    let scheme = if secure.is_some() { "https" } else { "http" };
    let client = http_client(secure.as_ref())?;
    let addr = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let seed = addr(args.base_port + 1);
    let spawn = |i: u16| -> Result<DemoNode, DemoError> {
        let id = format!("node{}", i + 1);
        let http = addr(args.base_port + 2 * i);
        let gossip = addr(args.base_port + 2 * i + 1);
        let log_path = args.data_dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path).map_err(io("creating a log file"))?;
        let err_log = log.try_clone().map_err(io("opening a log file"))?;
        let child = Command::new(&exe)
            .args(["--node-id", &id])
            .args(["--listen", &http.to_string()])
            .args(["--gossip-listen", &gossip.to_string()])
            .args(["--seeds", &seed.to_string()])
            .arg("--data-dir")
            .arg(args.data_dir.join(&id))
            // The secret goes through the environment: flags show in `ps`.
            .env("KVNODE_CLUSTER_SECRET", secret.expose())
            .envs(
                args.tombstone_grace_ms
                    .map(|ms| ("KVNODE_TOMBSTONE_GRACE_MS", ms.to_string())),
            )
            .envs(secure.iter().flat_map(Secure::node_env))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting a node"))?;
        println!(
            "started {id}: {scheme}://{http}  (gossip {gossip}, log {})",
            log_path.display()
        );
        Ok(DemoNode { id, http, child })
    };
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        nodes.push(spawn(i)?);
    }
    let formed = wait_until_formed(&client, scheme, &nodes).await;
    if let Err(e) = formed {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    let first = nodes.first().map(|n| n.http).unwrap_or(seed);
    let last = nodes.last().map(|n| n.http).unwrap_or(first);
    if let Some(secure) = &secure {
        println!(
            "\ncluster of {} ready.\n\n{}",
            nodes.len(),
            secure.usage(first)
        );
    } else {
        println!(
        "\ncluster of {} ready. Try:\n\n  \
         curl -X PUT --data-binary 'hello' http://{first}/v1/kv/greeting\n  \
         curl http://{last}/v1/kv/greeting\n  \
         curl 'http://{last}/v1/kv/greeting?consistency=all'\n  \
         curl -X DELETE http://{first}/v1/kv/greeting\n  \
         curl -X POST -H 'content-type: application/json' -d '{{\"key\":\"k\",\"value\":\"v\"}}' http://{first}/v1/data\n  \
         curl http://{first}/v1/cluster\n  \
         curl http://{first}/metrics\n\n\
         Ctrl-C stops every node.",
        nodes.len()
    );
    }
    if let Some(after) = args.join_after {
        let joined = tokio::select! {
            r = show_join(&args, &client, scheme, after, || spawn(args.nodes), &mut nodes) => r,
            () = wait_for_signal() => {
                println!("stopping...");
                stop_all(&mut nodes).await;
                return Ok(());
            }
        };
        if let Err(e) = joined {
            stop_all(&mut nodes).await;
            return Err(e);
        }
    }
    wait_for_signal().await;
    println!("stopping...");
    stop_all(&mut nodes).await;
    Ok(())
}

/// Writes the demo keys, waits `after` seconds, adds a node and draws its
/// bootstrap until it is AVAILABLE.
async fn show_join(
    args: &DemoArgs,
    client: &reqwest::Client,
    scheme: &'static str,
    after: u64,
    spawn: impl FnOnce() -> Result<DemoNode, DemoError>,
    nodes: &mut Vec<DemoNode>,
) -> Result<(), DemoError> {
    let Some(first) = nodes.first().map(|n| n.http) else {
        return Ok(());
    };
    println!("\nwriting {} keys through {first} ...", args.keys);
    let started = Instant::now();
    let value = vec![b'v'; 512];
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for k in 0..args.keys {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (client, value) = (client.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let _ = client
                .put(format!("{scheme}://{first}/v1/kv/demo-{k}"))
                .body(value)
                .send()
                .await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!("wrote them in {:.1} s", started.elapsed().as_secs_f64());
    println!("adding a node in {after} s ...");
    tokio::time::sleep(Duration::from_secs(after)).await;
    let node = spawn()?;
    let (id, http) = (node.id.clone(), node.http);
    nodes.push(node);
    let started = Instant::now();
    // Per mille of the token width the joiner gains.
    let bar = indicatif::ProgressBar::new(1000).with_style(
        indicatif::ProgressStyle::with_template("{prefix} {bar:30} {percent:>3}%  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(id.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(r) = client
            .get(format!("{scheme}://{http}/v1/node"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(info) = r
            .bytes()
            .await
            .map(|b| serde_json::from_slice::<serde_json::Value>(&b))
        else {
            continue;
        };
        let Ok(info) = info else { continue };
        let state = info.get("state").and_then(|s| s.as_str()).unwrap_or("?");
        let streaming = info.get("streaming");
        let num = |k: &str| {
            streaming
                .and_then(|s| s.get(k))
                .and_then(serde_json::Value::as_u64)
        };
        let (items, bytes) = (num("items").unwrap_or(0), num("bytes").unwrap_or(0));
        let share = done_share(streaming);
        let secs = started.elapsed().as_secs_f64();
        bar.set_position((share * 1000.0).round() as u64);
        bar.set_message(format!(
            "{state:<13} {items} items  {:.2} MB/s",
            bytes as f64 / 1e6 / secs.max(0.001)
        ));
        if state == "AVAILABLE" {
            bar.finish_and_clear();
            println!(
                "{id} joined in {secs:.1} s: see {scheme}://{http}/v1/node and {scheme}://{first}/v1/cluster"
            );
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT * 4 {
            bar.abandon();
            return Err(DemoError::NotReady(id));
        }
    }
}

/// The share of the planned token width streamed so far.
fn done_share(streaming: Option<&serde_json::Value>) -> f64 {
    let Some(ranges) = streaming
        .and_then(|s| s.get("ranges"))
        .and_then(serde_json::Value::as_array)
    else {
        return 0.0;
    };
    let (mut total, mut done) = (0.0, 0.0);
    for r in ranges {
        let get = |k: &str| r.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let width = match get("end").wrapping_sub(get("start")) {
            0 => u64::MAX as f64,
            w => w as f64,
        };
        let share = r
            .get("done_share")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        total += width;
        done += width * share;
    }
    if total > 0.0 {
        done / total
    } else {
        0.0
    }
}

/// The demo's own client: plain, or what `secure` says.
fn http_client(secure: Option<&Secure>) -> Result<reqwest::Client, DemoError> {
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(2));
    let builder = match secure {
        Some(secure) => secure.client(builder)?,
        None => builder,
    };
    builder.build().map_err(|e| DemoError::Io {
        what: "building an HTTP client".into(),
        source: std::io::Error::other(e),
    })
}

async fn wait_until_formed(
    client: &reqwest::Client,
    scheme: &str,
    nodes: &[DemoNode],
) -> Result<(), DemoError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for node in nodes {
        loop {
            if sees_whole_cluster(client, scheme, node.http, nodes.len()).await {
                break;
            }
            if Instant::now() > deadline {
                return Err(DemoError::NotReady(node.id.clone()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Whether the node is ready and sees `n` AVAILABLE members that are up.
async fn sees_whole_cluster(
    client: &reqwest::Client,
    scheme: &str,
    http: SocketAddr,
    n: usize,
) -> bool {
    let ready = client.get(format!("{scheme}://{http}/ready")).send().await;
    if !ready.is_ok_and(|r| r.status().is_success()) {
        return false;
    }
    let Ok(response) = client
        .get(format!("{scheme}://{http}/v1/cluster"))
        .send()
        .await
    else {
        return false;
    };
    let Ok(body) = response.bytes().await else {
        return false;
    };
    let Ok(cluster) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return false;
    };
    let up = cluster
        .get("members")
        .and_then(serde_json::Value::as_array)
        .map(|members| {
            members
                .iter()
                .filter(|m| {
                    m.get("state").and_then(serde_json::Value::as_str) == Some("AVAILABLE")
                        && m.get("status").and_then(serde_json::Value::as_str) == Some("UP")
                })
                .count()
        })
        .unwrap_or(0);
    up == n
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// SIGTERM to every node, then SIGKILL to any still running after the
/// stop timeout.
async fn stop_all(nodes: &mut [DemoNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid this process spawned and has not yet
            // reaped, and a valid signal number; it touches no memory.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    for node in nodes.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, node.child.wait()).await {
            Ok(Ok(status)) => println!("{} stopped ({status})", node.id),
            _ => {
                let _ = node.child.kill().await;
                println!("{} killed", node.id);
            }
        }
    }
}
