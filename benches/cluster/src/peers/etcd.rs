//! The etcd peer: a 3-member etcd cluster on 127.0.0.1, data on the same
//! file system as kvnode's, driven through its HTTP/JSON gateway.
//!
//! etcd comes from the Debian package `etcd-server` (3.4 on bookworm),
//! installed with apt-get when `etcd` is not on the PATH. Requests:
//!
//! ```text
//! POST <gateway>kv/put    {"key": base64, "value": base64}
//! POST <gateway>kv/range  {"key": base64}                       linearizable
//! POST <gateway>kv/range  {"key": base64, "serializable": true}  local read
//! ```
//!
//! The gateway prefix is `/v3/` from etcd 3.4 on and `/v3beta/` before;
//! which one answers is asked once the cluster is up. A linearizable range
//! (a read through the Raft leader's read index) is the peer of a QUORUM
//! GET, a serializable one (any member's local state) of a ONE GET, and a
//! put (committed by a majority) of a QUORUM PUT. A range that finds
//! nothing still answers 200, without `kvs`: it counts as an error here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{http, Method, Request};

use crate::load::{self, key, Api, Op};
use crate::process::{free_tcp_ports, Processes};

/// Members of the etcd cluster: as many as the kvnode nodes it is set
/// against, and the size the issue's figures used.
const MEMBERS: usize = 3;

/// A leader is elected within a few seconds; past this, something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Gateway prefixes, newest first.
const GATEWAYS: [&str; 2] = ["/v3/", "/v3beta/"];

/// The `etcd` binary, installed from Debian's `etcd-server` if missing; an
/// `Err` says why there is none, for the caller to print and skip the peer.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = on_path("etcd") {
        return Ok(path);
    }
    eprintln!("etcd is not installed: apt-get install -y etcd-server");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        eprintln!("apt-get install failed; trying apt-get update first");
        let updated = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !updated || !install() {
            return Err(
                "etcd is not on the PATH and `apt-get install -y etcd-server` failed \
                        (no root, no network or not Debian): install etcd 3.4+ by hand"
                    .to_owned(),
            );
        }
    }
    on_path("etcd").ok_or_else(|| "etcd-server installed, but no etcd on the PATH".to_owned())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A running 3-member etcd cluster.
pub struct Etcd {
    procs: Processes,
    /// The members' client addresses.
    pub addrs: Vec<SocketAddr>,
    /// The gateway prefix this version answers on.
    pub gateway: &'static str,
}

impl Etcd {
    /// Starts the members of `bin` with data under `data_root`, and waits
    /// until each is healthy (the cluster has a leader).
    pub async fn start(bin: &Path, data_root: &Path) -> Result<Self> {
        let mut procs = Processes::new(data_root, "etcd")?;
        let ports = free_tcp_ports(2 * MEMBERS)?;
        let (addrs, peers) = ports.split_at(MEMBERS);
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(i, peer)| format!("m{}=http://{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        for (i, (client, peer)) in addrs.iter().zip(peers).enumerate() {
            let name = format!("m{}", i + 1);
            let mut command = Command::new(bin);
            command
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(procs.dir().join(&name))
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", &format!("http://{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", "strata-cluster-bench"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            procs.spawn(&name, command)?;
        }
        let addrs = addrs.to_vec();
        let deadline = Instant::now() + READY_TIMEOUT;
        for addr in &addrs {
            loop {
                procs.check_running()?;
                if healthy(*addr).await {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd at {addr} not healthy within {READY_TIMEOUT:?}; logs in {}",
                        procs.dir().display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let first = *addrs.first().context("a member")?;
        let gateway = gateway(first).await?;
        Ok(Self {
            procs,
            addrs,
            gateway,
        })
    }

    /// The member processes, for their CPU time.
    pub fn processes(&self) -> &Processes {
        &self.procs
    }
}

async fn healthy(addr: SocketAddr) -> bool {
    let Ok(request) = load::get("/health") else {
        return false;
    };
    match load::fetch(addr, None, request).await {
        Ok((status, body)) => {
            status.is_success() && String::from_utf8_lossy(&body).contains("\"true\"")
        }
        Err(_) => false,
    }
}

/// The first gateway prefix under which a range answers 2xx.
async fn gateway(addr: SocketAddr) -> Result<&'static str> {
    for prefix in GATEWAYS {
        let request = json_post(&format!("{prefix}kv/range"), r#"{"key":"AA=="}"#.to_owned())?;
        let (status, _) = load::fetch(addr, None, request).await?;
        if status.is_success() {
            return Ok(prefix);
        }
    }
    bail!("etcd at {addr} answers on none of the gateways {GATEWAYS:?}")
}

fn json_post(path: &str, body: String) -> http::Result<Request<Full<Bytes>>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
}

/// Puts and ranges through the gateway.
pub struct EtcdApi {
    put: String,
    range: String,
    serializable: bool,
    value: String,
}

impl EtcdApi {
    /// Requests through `gateway`; ranges serializable (ONE) or
    /// linearizable; puts write `value`.
    pub fn new(gateway: &str, serializable: bool, value: &[u8]) -> Self {
        Self {
            put: format!("{gateway}kv/put"),
            range: format!("{gateway}kv/range"),
            serializable,
            value: BASE64.encode(value),
        }
    }
}

impl Api for EtcdApi {
    fn request(&self, op: Op, key_number: u64) -> http::Result<Request<Full<Bytes>>> {
        // Base64 needs no JSON escaping.
        let key = BASE64.encode(key(key_number));
        match op {
            Op::Put => json_post(
                &self.put,
                format!(r#"{{"key":"{key}","value":"{}"}}"#, self.value),
            ),
            Op::Get if self.serializable => json_post(
                &self.range,
                format!(r#"{{"key":"{key}","serializable":true}}"#),
            ),
            Op::Get => json_post(&self.range, format!(r#"{{"key":"{key}"}}"#)),
        }
    }

    fn answered(&self, op: Op, body: &[u8]) -> bool {
        op == Op::Put || body.windows(5).any(|w| w == b"\"kvs\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(request: Request<Full<Bytes>>) -> serde_json::Value {
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("a full body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn requests_are_the_gateway_json_with_base64_keys_and_values() {
        let api = EtcdApi::new("/v3/", false, b"vv");
        let put = api.request(Op::Put, 7).expect("put");
        assert_eq!(put.uri(), "/v3/kv/put");
        assert_eq!(put.method(), Method::POST);
        let body = body_of(put).await;
        assert_eq!(body["key"], BASE64.encode("bench-0000000007"));
        assert_eq!(body["value"], BASE64.encode("vv"));

        let range = api.request(Op::Get, 7).expect("range");
        assert_eq!(range.uri(), "/v3/kv/range");
        let body = body_of(range).await;
        assert_eq!(body["key"], BASE64.encode("bench-0000000007"));
        assert!(
            body.get("serializable").is_none(),
            "linearizable by default"
        );

        let one = EtcdApi::new("/v3beta/", true, b"vv");
        let range = one.request(Op::Get, 7).expect("range");
        assert_eq!(range.uri(), "/v3beta/kv/range");
        assert_eq!(body_of(range).await["serializable"], true);
    }

    #[test]
    fn a_range_without_kvs_is_a_miss() {
        let api = EtcdApi::new("/v3/", false, b"v");
        let header = br#"{"header":{"cluster_id":"1","revision":"9"}"#;
        assert!(!api.answered(Op::Get, header));
        assert!(api.answered(
            Op::Get,
            br#"{"header":{},"kvs":[{"key":"YQ==","value":"dg=="}],"count":"1"}"#
        ));
        assert!(api.answered(Op::Put, header));
    }
}
