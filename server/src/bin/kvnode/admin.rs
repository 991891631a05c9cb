//! Operator commands: `kvnode decommission`, `kvnode removenode`,
//! `kvnode cleanup` and `kvnode repair` talk to a running node; `kvnode repair-engine` works on
//! a stopped node's data dir.
//!
//! Each request to a node is signed under the cluster secret
//! ([`strata_server::auth::request`]), as a node signs its calls to another:
//! the secret is never sent, and no client token is needed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_server::auth::request::{RequestSigner, SignError};
use strata_server::auth::{ClusterSecret, SecretFileError};
use strata_server::tls::TlsError;
use strata_server::{CLEANUP_PATH, DECOMMISSION_PATH, REMOVENODE_PATH, REPAIR_PATH};

use crate::tls_args::TlsArgs;

/// The sender id the CLI signs its requests with.
const CLI_SENDER: &str = "kvnode-cli";

/// Flags of `kvnode decommission` and `kvnode cleanup`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// HTTP address of the node to act on.
    #[arg(long)]
    pub node: SocketAddr,
    /// Where the cluster secret comes from.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Give up waiting for the node after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// HTTPS to the node.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The cluster secret, given or in a file: exactly one of them.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct SecretArgs {
    /// The cluster secret. Prefer --cluster-secret-file: a flag shows in
    /// `ps`, a variable in `/proc/<pid>/environ`.
    #[arg(long, env = "KVNODE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret (chmod 600).
    #[arg(long, env = "KVNODE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
}

impl SecretArgs {
    fn secret(&self) -> Result<ClusterSecret, AdminError> {
        match (&self.cluster_secret, &self.cluster_secret_file) {
            (_, Some(path)) => Ok(ClusterSecret::from_file(path)?),
            (Some(secret), None) => Ok(ClusterSecret::new(secret.clone())),
            // clap's group requires one of them.
            (None, None) => Err(AdminError::NoSecret),
        }
    }
}

/// Flags of `kvnode removenode`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoveArgs {
    /// Id of the DOWN member to remove.
    pub id: String,
    /// The node to ask (any live member) and how long to follow it.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The node could not be reached or answered garbage.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The TLS files given do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node refused.
    #[error("node refused ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
    /// The node had not finished (stopped, re-replicated) at the deadline.
    #[error("not done after {0:?}")]
    Timeout(Duration),
    /// The cluster secret's file is refused.
    #[error(transparent)]
    SecretFile(#[from] SecretFileError),
    /// Neither the secret nor its file was given.
    #[error("give --cluster-secret-file (or --cluster-secret)")]
    NoSecret,
    /// A request could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The engine could not be repaired (it is open elsewhere, say).
    #[error("repair: {0}")]
    Repair(#[from] strata_engine::Error),
    /// The data dir's `node.json` could not be updated.
    #[error(transparent)]
    Marker(#[from] strata_server::MarkerError),
    /// A snapshot could not be saved, checked or restored.
    #[error(transparent)]
    Snapshot(#[from] strata_server::snapshot::SnapshotError),
    /// A path could not be made absolute.
    #[error("{path}: {source}")]
    Path {
        /// The path as given.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Asks the node to leave, then follows it until its process stops.
pub async fn decommission(args: AdminArgs) -> Result<(), AdminError> {
    let node = Node::new(&args)?;
    node.post(DECOMMISSION_PATH, None).await?;
    println!(
        "{} is LEAVING: its ranges stream to their new owners",
        args.node
    );
    let deadline = Duration::from_secs(args.timeout_secs);
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let state = match node.get("/v1/node").await {
            Ok(r) => match r
                .bytes()
                .await
                .map(|b| serde_json::from_slice::<serde_json::Value>(&b))
            {
                Ok(Ok(v)) => v
                    .get("state")
                    .and_then(|s| s.as_str())
                    .unwrap_or("?")
                    .to_owned(),
                _ => continue,
            },
            Err(_) => {
                println!(
                    "{} left the ring and stopped after {:.1} s",
                    args.node,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        };
        if state != last {
            println!("{:>6.1} s  {}", start.elapsed().as_secs_f64(), state);
            last = state;
        }
    }
    Err(AdminError::Timeout(deadline))
}

/// Asks a live node to remove a DOWN member for good, then follows the
/// surviving replicas until every range the member held is re-replicated.
pub async fn removenode(args: RemoveArgs) -> Result<(), AdminError> {
    let node = Node::new(&args.admin)?;
    node.post(&format!("{REMOVENODE_PATH}/{}", args.id), None)
        .await?;
    println!(
        "{} is removed; its ranges re-replicate from the survivors",
        args.id
    );
    let deadline = Duration::from_secs(args.admin.timeout_secs);
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < deadline {
        let body = node.get("/v1/cluster").await?.bytes().await?;
        let waiting = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|cluster| {
                cluster
                    .get("removed")?
                    .as_array()?
                    .iter()
                    .find(|r| r.get("id").and_then(|i| i.as_str()) == Some(args.id.as_str()))?
                    .get("waiting_for")
                    .cloned()
            });
        if let Some(waiting) = waiting {
            if waiting.as_array().is_some_and(Vec::is_empty) {
                println!(
                    "{}: every range re-replicated after {:.1} s",
                    args.id,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if last.as_ref() != Some(&waiting) {
                println!(
                    "{:>6.1} s  waiting for {waiting}",
                    start.elapsed().as_secs_f64()
                );
                last = Some(waiting);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(AdminError::Timeout(deadline))
}

/// Asks the node to drop the items it does not replicate, then follows the
/// pass until it ends.
pub async fn cleanup(args: AdminArgs) -> Result<(), AdminError> {
    let node = Node::new(&args)?;
    node.post(CLEANUP_PATH, None).await?;
    println!("{}: clean-up started", args.node);
    let deadline = Duration::from_secs(args.timeout_secs);
    let start = Instant::now();
    while start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = node.get("/v1/node").await?.bytes().await?;
        let Ok(report) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let status = report.get("cleanup").cloned().unwrap_or_default();
        if status.get("running").and_then(serde_json::Value::as_bool) == Some(false) {
            return match status.get("last_refusal").and_then(|r| r.as_str()) {
                Some(reason) => Err(AdminError::Refused {
                    status: 409,
                    body: format!("the pass stopped: {reason}"),
                }),
                None => {
                    let deleted = status.get("last_deleted").cloned().unwrap_or_default();
                    println!(
                        "{}: clean-up done in {:.1} s, {deleted} items deleted",
                        args.node,
                        start.elapsed().as_secs_f64()
                    );
                    Ok(())
                }
            };
        }
    }
    Err(AdminError::Timeout(deadline))
}

/// Flags of `kvnode repair`.
#[derive(Debug, Clone, clap::Args)]
pub struct AntiEntropyArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Repair only the node's ranges that overlap this token range
    /// `START:END` (start exclusive); repeatable. Default: all its ranges.
    #[arg(long = "range", value_parser = parse_range)]
    pub ranges: Vec<(u64, u64)>,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (start, end) = text
        .split_once(':')
        .ok_or_else(|| format!("{text}: expected START:END"))?;
    let token = |t: &str| t.trim().parse::<u64>().map_err(|e| format!("{t}: {e}"));
    Ok((token(start)?, token(end)?))
}

/// Asks the node to repair its ranges with their other replicas, then
/// follows the pass until it ends, printing its progress.
pub async fn repair(args: AntiEntropyArgs) -> Result<(), AdminError> {
    let body = serde_json::json!({ "ranges": args.ranges });
    let node = Node::new(&args.admin)?;
    let passes_before = repair_status(&node)
        .await
        .and_then(|s| s.get("passes")?.as_u64())
        .unwrap_or(0);
    node.post(REPAIR_PATH, Some(body)).await?;
    println!("{}: repair started", args.admin.node);
    let deadline = Duration::from_secs(args.admin.timeout_secs);
    let start = Instant::now();
    let mut last = (usize::MAX, 0);
    while start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(status) = repair_status(&node).await else {
            continue;
        };
        let count = |k: &str| {
            status
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let progress = (
            usize::try_from(count("ranges_done")).unwrap_or(0),
            usize::try_from(count("ranges_total")).unwrap_or(0),
        );
        if progress != last {
            println!(
                "{:>6.1} s  {}/{} ranges",
                start.elapsed().as_secs_f64(),
                progress.0,
                progress.1
            );
            last = progress;
        }
        if count("passes") > passes_before
            && status.get("running").and_then(serde_json::Value::as_bool) == Some(false)
        {
            let ranges = status
                .get("ranges")
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default();
            let sum = |k: &str| -> u64 { ranges.iter().filter_map(|r| r.get(k)?.as_u64()).sum() };
            println!(
                "{}: repair done in {:.1} s: {} ranges, {} differing leaves, {} keys pulled, {} pushed",
                args.admin.node,
                start.elapsed().as_secs_f64(),
                ranges.len(),
                sum("differing_leaves"),
                sum("keys_pulled"),
                sum("keys_pushed"),
            );
            let failed = count("last_pass_failed_ranges");
            if failed > 0 {
                let reasons: Vec<&str> = ranges
                    .iter()
                    .filter_map(|r| r.get("error")?.as_str())
                    .collect();
                return Err(AdminError::Refused {
                    status: 500,
                    body: format!("{failed} ranges not repaired: {}", reasons.join("; ")),
                });
            }
            return Ok(());
        }
    }
    Err(AdminError::Timeout(deadline))
}

/// The node's `"repair"` status, if it answers.
async fn repair_status(node: &Node) -> Option<serde_json::Value> {
    let body = node.get("/v1/node").await.ok()?.bytes().await.ok()?;
    let report: serde_json::Value = serde_json::from_slice(&body).ok()?;
    report.get("repair").cloned()
}

/// A node the CLI talks to, every request signed.
pub(crate) struct Node {
    client: reqwest::Client,
    base: String,
    signer: RequestSigner,
}

impl Node {
    pub(crate) fn new(args: &AdminArgs) -> Result<Self, AdminError> {
        let (builder, scheme) = args
            .tls
            .apply(reqwest::Client::builder().timeout(Duration::from_secs(10)))?;
        Ok(Self {
            client: builder.build()?,
            base: format!("{scheme}://{}", args.node),
            signer: RequestSigner::new(&args.secret.secret()?, CLI_SENDER),
        })
    }

    /// Signs and sends a request.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AdminError> {
        let mut request = request.build()?;
        self.signer.sign(&mut request)?;
        Ok(self.client.execute(request).await?)
    }

    /// A signed `GET` of `path`.
    pub(crate) async fn get(&self, path: &str) -> Result<reqwest::Response, AdminError> {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// A signed `POST` of `path`, with a JSON body if given; an error unless
    /// the node accepts.
    pub(crate) async fn post(
        &self,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> Result<(), AdminError> {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(body) = json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let r = self.send(request).await?;
        if !r.status().is_success() {
            return Err(AdminError::Refused {
                status: r.status().as_u16(),
                body: r.text().await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// Flags of `kvnode repair-engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct RepairArgs {
    /// The stopped node's data dir (holding `node.json` and `engine/`).
    #[arg(long, env = "KVNODE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Keep the node AVAILABLE at its next start even if the repair lost
    /// data (for a node that has no replicas to stream from).
    #[arg(long)]
    pub keep_available: bool,
}

/// Salvages every readable table and log record of a stopped node's engine
/// into a fresh manifest and prints what was lost. If anything was, the node
/// is marked to stream its ranges again from their replicas when it next
/// starts, so it never serves with data silently missing.
pub fn repair_engine(args: &RepairArgs) -> Result<(), AdminError> {
    let engine = args.data_dir.join("engine");
    let report = strata_engine::Db::repair(&engine)?;
    println!(
        "{}: {} tables kept and {} WAL records recovered, merged into {} tables",
        engine.display(),
        report.tables_kept.len(),
        report.wal_records_recovered,
        report.tables_written.len()
    );
    for damage in &report.tables_set_aside {
        println!(
            "  table set aside: {} at offset {}: {}",
            damage.file.display(),
            damage.offset,
            damage.reason
        );
    }
    for damage in &report.wal_damage {
        println!(
            "  log bytes lost: {} bytes of {} from offset {}: {}",
            damage.bytes,
            damage.file.display(),
            damage.offset,
            damage.reason
        );
    }
    for file in &report.set_aside {
        println!("  kept aside: {}", file.display());
    }
    if report.lost_nothing() {
        println!("nothing was lost");
    } else if args.keep_available {
        println!("data was lost; --keep-available: the node will serve without it");
    } else if strata_server::mark_for_restream(&args.data_dir)? {
        println!(
            "data was lost: the node will stream its ranges again from their replicas when it next starts, and serves only once it has"
        );
    } else {
        println!("data was lost; this data dir never served, so there is nothing to stream back");
    }
    Ok(())
}
