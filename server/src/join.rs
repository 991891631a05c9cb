//! A joining node's checks, so that a wrong seed or a wrong setting ends in
//! a clear message instead of a node that stays JOINING forever.
//!
//! - **Seeds are gossip (UDP) addresses.** The systems this project grew
//!   from take a peer's HTTP address there. Before gossip starts,
//!   `resolve_seeds` turns a seed given as a URL (`http://host:port`) into
//!   its node's gossip address by asking `GET /v1/metadata/node` (signed
//!   under the cluster secret, so it passes a node with a tokens file); a
//!   bare `host:port` that accepts a TCP connection is asked the same, since
//!   gossip listens on UDP only. A seed that answers HTTP but not as a node
//!   of this cluster is refused at start, naming the gossip port.
//! - **One cluster, one replication factor.** Every seed resolved over HTTP
//!   and, once gossip has brought the cluster, a member that answers, must
//!   have this node's cluster id and replication factor (`check_cluster`):
//!   a node that coordinated at another factor would quietly place and count
//!   replicas differently from the rest.
//! - **A bounded wait.** [`JoinWatch`] tracks how long the bootstrap has
//!   waited to hear from a seed: `/ready` and `/v1/node` show it, the log
//!   says so every few seconds, and after `--join-timeout-secs` the node
//!   stops with the reason and a non-zero exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::request::RequestSigner;
use crate::config::Config;
use crate::hlc::WallClock;

/// How long one probe of a seed may take: connecting, then asking its
/// metadata. A live node answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between tries of a seed given as a URL that does not answer yet.
const URL_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How often a seed that does not answer yet is said again in the log.
const SAY_EVERY: Duration = Duration::from_secs(5);

/// Path of the node metadata route (`api::metadata` serves it; a joining
/// node asks its seeds').
pub const NODE_PATH: &str = "/v1/metadata/node";

/// `GET /v1/metadata/node`: who this node is and how its cluster places
/// keys. A joining node reads `gossip_addr`, `cluster_id` and
/// `replication_factor` from its seed's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeMetadata {
    /// Node id.
    pub id: String,
    /// Advertised HTTP address.
    pub http_addr: SocketAddr,
    /// Advertised gossip (UDP) address: what `--seeds` takes.
    pub gossip_addr: SocketAddr,
    /// Lifecycle state (`JOINING`, `AVAILABLE`, ...).
    pub state: String,
    /// Nodes gossip only with nodes of the same cluster id.
    pub cluster_id: String,
    /// Replicas per key; every node of a cluster must agree on it.
    pub replication_factor: usize,
    /// Tokens per node.
    pub vnodes: u32,
    /// The `kvnode` version.
    pub version: String,
}

/// Why a node refuses to join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// A seed answers HTTP, but not as a node of this cluster.
    #[error(
        "seed {seed} answers HTTP but is not a kvnode of this cluster ({reason}). --seeds takes \
         gossip addresses: UDP, by default a node's HTTP port + 1 (its `gossip_addr` in \
         GET /v1/metadata/node)"
    )]
    NotASeed {
        /// The seed as given.
        seed: String,
        /// What it answered.
        reason: String,
    },
    /// A seed given as a URL never answered.
    #[error(
        "seed {seed} did not answer within {secs} s: {reason}. Give a running node's HTTP URL, \
         or its gossip address (host:port, UDP)"
    )]
    Unreachable {
        /// The seed as given.
        seed: String,
        /// How long it was tried.
        secs: u64,
        /// The last error.
        reason: String,
    },
    /// A node of the cluster runs with another setting.
    #[error(
        "{node} runs with {setting} {theirs}, this node with {ours}: every node of a \
         cluster must agree on it. Start this node with --{flag} {theirs}, or seed it from the \
         cluster it belongs to"
    )]
    Mismatch {
        /// The other node: its id and HTTP address.
        node: String,
        /// The setting.
        setting: &'static str,
        /// Its flag.
        flag: &'static str,
        /// The other node's value.
        theirs: String,
        /// This node's.
        ours: String,
    },
    /// The HTTP client of the checks could not be built.
    #[error("http client: {0}")]
    Client(String),
    /// No seed was heard from within the limit.
    #[error(
        "heard from no seed within {secs} s (--join-timeout-secs); seeds: {seeds}. Each must be \
         a running node's gossip address (UDP, by default its HTTP port + 1) or its HTTP URL \
         (http://host:port), with the same --cluster-id and --cluster-secret as this node"
    )]
    NoSeed {
        /// The limit.
        secs: u64,
        /// The seeds, as resolved.
        seeds: String,
    },
}

/// Asks the node at `base` (`http://host:port`) who it is.
async fn metadata(
    client: &reqwest::Client,
    signer: &RequestSigner,
    base: &str,
) -> Result<NodeMetadata, String> {
    let url = format!("{}{NODE_PATH}", base.trim_end_matches('/'));
    let mut request = client.get(&url).build().map_err(|e| e.to_string())?;
    signer.sign(&mut request).map_err(|e| e.to_string())?;
    let response = client
        .execute(request)
        .await
        .map_err(|e| crate::tls::error_chain(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{status} {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a kvnode answer: {e}"))
}

/// The client and signer of the checks.
fn client_and_signer(config: &Config) -> Result<(reqwest::Client, RequestSigner), JoinError> {
    let mut builder = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT);
    if let Some(files) = &config.tls {
        let tls = crate::tls::peer_config(files).map_err(|e| JoinError::Client(e.to_string()))?;
        builder = builder.use_preconfigured_tls(tls);
    }
    let client = builder
        .build()
        .map_err(|e| JoinError::Client(e.to_string()))?;
    let signer = RequestSigner::new(&config.secret, &config.node_id)
        .with_clock(WallClock::skewed(config.clock_skew_ms));
    Ok((client, signer))
}

/// `config`'s seeds with each HTTP one replaced by its node's gossip
/// address (see the module doc); checks the cluster id and replication
/// factor of every node it asks. A node that has `served` before (a
/// restart) must not hang on one seed that is down: a URL it cannot reach
/// at once is left out with a warning, and gossip finds the cluster
/// through the others or through the members it knew.
pub(crate) async fn resolve_seeds(config: &Config, served: bool) -> Result<Vec<String>, JoinError> {
    let (client, signer) = client_and_signer(config)?;
    let mut resolved = Vec::with_capacity(config.seeds.len());
    for seed in &config.seeds {
        if is_own_http(seed, config) {
            // A seed list shared by every node names this one too.
            resolved.push(config.gossip_advertise.to_string());
            continue;
        }
        let other = config.other_seeds().any(|s| s == seed);
        let found = if !other {
            None
        } else if seed.starts_with("http://") || seed.starts_with("https://") {
            let limit = if served {
                Some(Duration::ZERO)
            } else {
                config.join_timeout
            };
            match ask_url(limit, &client, &signer, seed).await {
                Ok(node) => Some(node),
                Err(e) if served => {
                    tracing::warn!("{e}; left out of the seeds of this restart");
                    continue;
                }
                Err(e) => return Err(e),
            }
        } else {
            ask_if_tcp(&client, &signer, config.scheme(), seed).await?
        };
        match found {
            Some(node) => {
                check(config, &node)?;
                tracing::info!(
                    seed,
                    gossip = %node.gossip_addr,
                    node = node.id,
                    "seed is an HTTP address: gossiping with its node's gossip address"
                );
                resolved.push(node.gossip_addr.to_string());
            }
            None => resolved.push(seed.clone()),
        }
    }
    Ok(resolved)
}

/// Whether `seed` is this node's own HTTP address, bare or as a URL: its
/// listener is bound but not yet serving, so asking it would hang.
fn is_own_http(seed: &str, config: &Config) -> bool {
    let bare = seed
        .strip_prefix("http://")
        .or_else(|| seed.strip_prefix("https://"))
        .unwrap_or(seed)
        .trim_end_matches('/');
    let Ok(addr) = bare.parse::<SocketAddr>() else {
        return false;
    };
    let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
    addr == config.advertise
        || addr == config.listen
        || (addr.port() == config.listen.port()
            && addr.ip().is_loopback()
            && local(config.listen.ip()))
}

/// Asks a seed given as a URL until it answers or `limit` passes (`None`:
/// for ever).
async fn ask_url(
    limit: Option<Duration>,
    client: &reqwest::Client,
    signer: &RequestSigner,
    seed: &str,
) -> Result<NodeMetadata, JoinError> {
    let started = Instant::now();
    let mut said = started;
    loop {
        let error = match metadata(client, signer, seed).await {
            Ok(node) => return Ok(node),
            Err(e) => e,
        };
        if limit.is_some_and(|limit| started.elapsed() >= limit) {
            return Err(JoinError::Unreachable {
                seed: seed.to_owned(),
                secs: started.elapsed().as_secs(),
                reason: error,
            });
        }
        if said.elapsed() >= SAY_EVERY {
            said = Instant::now();
            tracing::warn!(seed, %error, "seed does not answer yet");
        }
        tokio::time::sleep(URL_RETRY_PAUSE).await;
    }
}

/// A `host:port` seed's node, if a TCP service listens there: gossip is
/// UDP only, so that is a node's HTTP address given as a seed. A port with
/// nothing on TCP is taken for the gossip address it should be.
async fn ask_if_tcp(
    client: &reqwest::Client,
    signer: &RequestSigner,
    scheme: &str,
    seed: &str,
) -> Result<Option<NodeMetadata>, JoinError> {
    let connect = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(seed)).await;
    if !matches!(connect, Ok(Ok(_))) {
        return Ok(None);
    }
    metadata(client, signer, &format!("{scheme}://{seed}"))
        .await
        .map(Some)
        .map_err(|reason| JoinError::NotASeed {
            seed: seed.to_owned(),
            reason,
        })
}

/// Refuses a node whose cluster id or replication factor is not this
/// node's.
fn check(config: &Config, node: &NodeMetadata) -> Result<(), JoinError> {
    let mismatch = |setting, flag, theirs: String, ours: String| JoinError::Mismatch {
        node: format!("{} ({})", node.id, node.http_addr),
        setting,
        flag,
        theirs,
        ours,
    };
    if node.cluster_id != config.cluster_id {
        return Err(mismatch(
            "cluster id",
            "cluster-id",
            node.cluster_id.clone(),
            config.cluster_id.clone(),
        ));
    }
    let ours = config.replication_factor.get();
    if node.replication_factor != ours {
        return Err(mismatch(
            "replication factor",
            "replication-factor",
            node.replication_factor.to_string(),
            ours.to_string(),
        ));
    }
    Ok(())
}

/// Checks this node's settings against a member gossip brought: the first
/// of `members` (HTTP addresses, other nodes) that answers. None answering
/// is warned about and let through: gossip already checked the cluster id
/// and the secret, and the replication factor is checked again on the next
/// join through a node that answers.
pub(crate) async fn check_cluster(
    config: &Config,
    members: &[SocketAddr],
) -> Result<(), JoinError> {
    let (client, signer) = client_and_signer(config)?;
    for addr in members {
        let url = format!("{}://{addr}", config.scheme());
        match metadata(&client, &signer, &url).await {
            Ok(node) => return check(config, &node),
            Err(error) => tracing::debug!(%addr, %error, "member did not answer the join check"),
        }
    }
    tracing::warn!(
        "no member answered GET {NODE_PATH}: the replication factor of the cluster is not checked"
    );
    Ok(())
}

/// How this run's join is going: what `/ready` and `/v1/node` show while
/// the bootstrap waits to hear from a seed, and why it gave up.
#[derive(Debug)]
pub struct JoinWatch {
    /// Whether this run joins at all (a restarted or lone node does not).
    joining: bool,
    started: Instant,
    limit: Option<Duration>,
    seeds: String,
    /// Set once the bootstrap heard from the cluster.
    heard: AtomicBool,
    /// Why the join gave up; the node then stops and exits with it.
    failed: Mutex<Option<JoinError>>,
    stop: Arc<Notify>,
}

impl JoinWatch {
    /// The watch of a run starting now, `joining` or not; `stop` stops the
    /// node.
    pub(crate) fn new(config: &Config, joining: bool, stop: Arc<Notify>) -> Self {
        Self {
            joining,
            started: Instant::now(),
            limit: config.join_timeout,
            seeds: config.seeds.join(", "),
            heard: AtomicBool::new(false),
            failed: Mutex::new(None),
            stop,
        }
    }

    /// How long it may still wait; `None` without a limit.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.limit
            .map(|limit| limit.saturating_sub(self.started.elapsed()))
    }

    /// The error of a wait past the limit.
    pub(crate) fn no_seed(&self) -> JoinError {
        JoinError::NoSeed {
            secs: self.limit.unwrap_or_default().as_secs(),
            seeds: self.seeds.clone(),
        }
    }

    /// Says, in the log, that no seed has been heard from yet.
    pub(crate) fn say_waiting(&self) {
        tracing::warn!(
            "{}",
            self.waiting()
                .unwrap_or_else(|| "waiting for a seed".into())
        );
    }

    /// The bootstrap heard from the cluster.
    pub(crate) fn heard(&self) {
        self.heard.store(true, Ordering::Release);
    }

    /// The join gave up: record why and stop the node.
    pub(crate) fn fail(&self, error: JoinError) {
        tracing::error!("{error}");
        *self.failed.lock() = Some(error);
        self.stop.notify_one();
    }

    /// Why the join gave up, if it did.
    pub(crate) fn failure(&self) -> Option<JoinError> {
        self.failed.lock().clone()
    }

    /// While no seed has been heard from: for how long, and the seeds.
    pub(crate) fn waiting(&self) -> Option<String> {
        if !self.joining || self.heard.load(Ordering::Acquire) {
            return None;
        }
        let waited = self.started.elapsed().as_secs();
        let limit = match self.limit {
            Some(l) => format!("gives up after {} s", l.as_secs()),
            None => "no limit".to_owned(),
        };
        Some(format!(
            "no seed heard from for {waited} s ({limit}); seeds: {}. A seed is a node's gossip \
             address (UDP, by default its HTTP port + 1) or its HTTP URL",
            self.seeds
        ))
    }

    /// What `/v1/node` shows under `"join"`.
    pub(crate) fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "joining": self.joining,
            "seeds": self.seeds,
            "heard_from_cluster": self.heard.load(Ordering::Acquire),
            "waited_secs": self.started.elapsed().as_secs(),
            "limit_secs": self.limit.map(|l| l.as_secs()),
            "waiting": self.waiting(),
            "failed": self.failure().map(|e| e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(argv: &[&str]) -> Config {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            node: crate::config::Settings,
        }
        let cli =
            Cli::try_parse_from(std::iter::once("kvnode").chain(argv.iter().copied())).unwrap();
        Config::load(cli.node).unwrap()
    }

    fn node(cluster_id: &str, rf: usize) -> NodeMetadata {
        NodeMetadata {
            id: "n9".into(),
            http_addr: "127.0.0.1:9".parse().unwrap(),
            gossip_addr: "127.0.0.1:10".parse().unwrap(),
            state: "AVAILABLE".into(),
            cluster_id: cluster_id.into(),
            replication_factor: rf,
            vnodes: 64,
            version: "0".into(),
        }
    }

    #[test]
    fn another_cluster_or_replication_factor_is_refused_naming_both() {
        let c = config(&["--replication-factor", "2"]);
        assert!(check(&c, &node("strata", 2)).is_ok());
        let e = check(&c, &node("strata", 3)).unwrap_err().to_string();
        assert!(e.contains("replication factor 3, this node with 2"), "{e}");
        assert!(e.contains("--replication-factor 3"), "{e}");
        let e = check(&c, &node("other", 2)).unwrap_err().to_string();
        assert!(e.contains("cluster id other"), "{e}");
    }

    #[tokio::test]
    async fn its_own_http_address_is_its_own_gossip_address() {
        let c = config(&[
            "--listen",
            "127.0.0.1:7800",
            "--seeds",
            "127.0.0.1:7800,http://127.0.0.1:7800/",
            "--cluster-secret",
            "0123456789abcdef",
        ]);
        assert_eq!(
            resolve_seeds(&c, false).await.unwrap(),
            vec!["127.0.0.1:7801".to_owned(), "127.0.0.1:7801".to_owned()]
        );
    }

    #[tokio::test]
    async fn a_port_without_tcp_is_kept_as_a_gossip_address() {
        // A UDP socket's port: nothing listens on TCP there.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let seed = udp.local_addr().unwrap().to_string();
        let c = config(&["--seeds", &seed, "--cluster-secret", "0123456789abcdef"]);
        assert_eq!(resolve_seeds(&c, false).await.unwrap(), vec![seed]);
    }

    #[tokio::test]
    async fn a_tcp_port_that_is_not_kvnode_is_refused_naming_the_gossip_port() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let seed = tcp.local_addr().unwrap().to_string();
        // Accepts and closes at once: no HTTP answer.
        tokio::spawn(async move {
            while let Ok((conn, _)) = tcp.accept().await {
                drop(conn);
            }
        });
        let c = config(&["--seeds", &seed, "--cluster-secret", "0123456789abcdef"]);
        let e = resolve_seeds(&c, false).await.unwrap_err();
        assert!(matches!(e, JoinError::NotASeed { .. }), "{e}");
        assert!(e.to_string().contains("HTTP port + 1"), "{e}");
    }

    #[tokio::test]
    async fn a_url_that_never_answers_gives_up_at_the_join_timeout() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        drop(tcp);
        let seed = format!("http://127.0.0.1:{port}");
        let c = config(&[
            "--seeds",
            &seed,
            "--cluster-secret",
            "0123456789abcdef",
            "--join-timeout-secs",
            "1",
        ]);
        let e = resolve_seeds(&c, false).await.unwrap_err();
        assert!(matches!(e, JoinError::Unreachable { .. }), "{e}");
        // A restart does not wait on it: the seed is left out.
        let started = Instant::now();
        assert_eq!(resolve_seeds(&c, true).await.unwrap(), Vec::<String>::new());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn the_watch_says_what_it_waits_for_until_it_hears() {
        let c = config(&["--join-timeout-secs", "30"]);
        let watch = JoinWatch::new(&c, true, Arc::new(Notify::new()));
        let text = watch.waiting().unwrap();
        assert!(text.contains("gives up after 30 s"), "{text}");
        assert!(watch.remaining().unwrap() <= Duration::from_secs(30));
        watch.heard();
        assert_eq!(watch.waiting(), None);
        watch.fail(watch.no_seed());
        assert!(matches!(
            watch.failure(),
            Some(JoinError::NoSeed { secs: 30, .. })
        ));
        // A node that does not join waits for nothing.
        let restart = JoinWatch::new(&c, false, Arc::new(Notify::new()));
        assert_eq!(restart.waiting(), None);
    }
}
