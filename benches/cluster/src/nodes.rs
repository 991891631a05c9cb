//! A kvnode cluster on 127.0.0.1 and the client API the load speaks to it.
//!
//! Nodes are started as the process tests start them
//! (`server/tests/common/mod.rs`): all at once, each on a free HTTP port
//! and a free gossip (UDP) port, all seeded from the first node's gossip
//! address, sharing one cluster secret. The cluster is ready when every
//! node answers `/ready` and its `/v1/cluster` shows every node AVAILABLE
//! and UP: a node that still missed a peer would coordinate with a smaller
//! preference list than the others and measure something else.
//!
//! With TLS, a throw-away CA (`kvnode cert`) signs a certificate for each
//! node and one for the load: nodes serve HTTPS, require a client
//! certificate of that CA, and present theirs to each other (mutual TLS on
//! every replica call), as a secure deployment runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{http, Method, Request};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio_rustls::TlsConnector;

use crate::load::{self, key, Api, Op};
use crate::process::{free_tcp_ports, free_udp_ports, Processes};

/// The secret of every benchmark cluster (at least 16 characters). It is
/// passed in the environment, which only this user can read.
const SECRET: &str = "cluster-bench-secret-0123456789";

/// A cluster that is not up after this long will not come up: 3 nodes
/// converge in 2-5 s on a quiet machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Between two readiness polls.
const POLL: Duration = Duration::from_millis(200);

/// The consistency level of the client requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// One replica answers.
    One,
    /// A majority of the replicas answers.
    Quorum,
    /// Every replica answers.
    All,
}

impl Consistency {
    /// As kvnode's `?consistency=` parameter spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

/// Running kvnode processes that see each other.
pub struct Kvnodes {
    procs: Processes,
    /// The nodes' client (HTTP) addresses.
    pub addrs: Vec<SocketAddr>,
    /// How to reach them when they serve HTTPS: the CA's roots and the
    /// load's own certificate.
    pub tls: Option<TlsConnector>,
}

impl Kvnodes {
    /// Starts `nodes` nodes of `bin` with replication factor `rf`, data
    /// under `data_root`, with TLS throughout if `tls`, and waits until they
    /// all see each other up.
    pub async fn start(
        bin: &Path,
        nodes: usize,
        rf: usize,
        data_root: &Path,
        tls: bool,
    ) -> Result<Self> {
        let mut procs = Processes::new(data_root, "kvnode")?;
        let pki = procs.dir().join("pki");
        let addrs = free_tcp_ports(nodes)?;
        let gossip = free_udp_ports(nodes)?;
        let seed = gossip.first().context("at least one node")?.to_string();
        if tls {
            cert(bin, &pki, &["create-ca"])?;
            cert(bin, &pki, &["create-client", "load"])?;
        }
        for (i, (http, gossip)) in addrs.iter().zip(&gossip).enumerate() {
            let id = format!("n{}", i + 1);
            let mut command = Command::new(bin);
            command
                .args(["--node-id", &id])
                .args(["--listen", &http.to_string()])
                .args(["--gossip-listen", &gossip.to_string()])
                .args(["--seeds", &seed])
                .args(["--replication-factor", &rf.to_string()])
                .arg("--data-dir")
                .arg(procs.dir().join(&id))
                .env("KVNODE_CLUSTER_SECRET", SECRET)
                .env("KVNODE_LOG", "warn");
            if tls {
                cert(
                    bin,
                    &pki,
                    &["create-node", &id, "--host", &http.ip().to_string()],
                )?;
                command
                    .arg("--tls-cert")
                    .arg(pki.join(format!("{id}.crt")))
                    .arg("--tls-key")
                    .arg(pki.join(format!("{id}.key")))
                    .arg("--tls-client-ca")
                    .arg(pki.join("ca.crt"));
            }
            procs.spawn(&id, command)?;
        }
        let tls = if tls {
            Some(connector(&pki, "load")?)
        } else {
            None
        };
        let mut cluster = Self { procs, addrs, tls };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// The node processes, for their CPU time.
    pub fn processes(&self) -> &Processes {
        &self.procs
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.procs.check_running()?;
            let mut waiting_for = None;
            for addr in &self.addrs {
                if !self.sees_all(*addr).await {
                    waiting_for = Some(*addr);
                    break;
                }
            }
            let Some(addr) = waiting_for else {
                return Ok(());
            };
            if Instant::now() > deadline {
                bail!(
                    "the node at {addr} did not see {} nodes AVAILABLE and UP within {READY_TIMEOUT:?}; \
                     logs in {}",
                    self.addrs.len(),
                    self.procs.dir().display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the node at `addr` is ready and sees every node up.
    async fn sees_all(&self, addr: SocketAddr) -> bool {
        let ready = async {
            let tls = self.tls.as_ref();
            let (status, _) = load::fetch(addr, tls, load::get("/ready")?).await?;
            let (_, body) = load::fetch(addr, tls, load::get("/v1/cluster")?).await?;
            anyhow::Ok((status, serde_json::from_slice::<Value>(&body)?))
        };
        let Ok((status, cluster)) = ready.await else {
            return false;
        };
        let up = cluster["members"].as_array().map_or(0, |members| {
            members
                .iter()
                .filter(|m| m["state"] == "AVAILABLE" && m["status"] == "UP")
                .count()
        });
        status.is_success() && up == self.addrs.len()
    }
}

/// `kvnode cert ARGS --dir PKI`: a certificate (and key) of the
/// throw-away CA in `pki`.
fn cert(bin: &Path, pki: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new(bin)
        .arg("cert")
        .args(args)
        .arg("--dir")
        .arg(pki)
        .output()
        .context("running kvnode cert")?;
    if !output.status.success() {
        bail!(
            "kvnode cert {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A TLS client that trusts only `pki`'s CA and presents `name`'s
/// certificate.
fn connector(pki: &Path, name: &str) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(pki.join(format!("{name}.crt")))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("{name}.key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `PUT` and `GET /v1/kv/{key}?consistency=…` with raw bodies.
pub struct KvnodeApi {
    consistency: Consistency,
    value: Bytes,
    tls: Option<TlsConnector>,
}

impl KvnodeApi {
    /// Requests at `consistency`, over `tls` if given; PUTs write `value`.
    pub fn new(consistency: Consistency, value: Bytes, tls: Option<TlsConnector>) -> Self {
        Self {
            consistency,
            value,
            tls,
        }
    }
}

impl Api for KvnodeApi {
    fn request(&self, op: Op, key_number: u64) -> http::Result<Request<Full<Bytes>>> {
        let (method, body) = match op {
            Op::Put => (Method::PUT, self.value.clone()),
            Op::Get => (Method::GET, Bytes::new()),
        };
        Request::builder()
            .method(method)
            .uri(format!(
                "/v1/kv/{}?consistency={}",
                key(key_number),
                self.consistency.as_str()
            ))
            .body(Full::new(body))
    }

    fn tls(&self) -> Option<&TlsConnector> {
        self.tls.as_ref()
    }
}

/// `given`, or the kvnode that a release build of this repository makes
/// (`cargo build --release -p strata-server --bin kvnode` in its root; the
/// path comes from cargo's own report, so a `CARGO_TARGET_DIR` is honoured).
pub fn kvnode_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--kvnode {}: no such file", path.display());
        }
        return Ok(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    eprintln!("building kvnode: cargo build --release -p strata-server --bin kvnode");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "strata-server",
            "--bin",
            "kvnode",
        ])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("building kvnode failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kvnode")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no kvnode executable")
}
