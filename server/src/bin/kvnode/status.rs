//! Read-only operator views of a running cluster: `kvnode status` (one
//! line per member, like `nodetool status`), `kvnode ring` (tokens and
//! owners), `kvnode info` (one node in depth) and `kvnode version`.
//!
//! Each asks one node (`--node`, default the default listen address) and
//! shows the cluster as that node sees it. `--json` prints the node's
//! document instead of a table.
//!
//! # Exit codes
//!
//! | code | `status`                          | `info`             | others |
//! |------|-----------------------------------|--------------------|--------|
//! | 0    | every member UN and healthy       | the node is ready  | done   |
//! | 1    | the node could not be asked, or a usage error | same   | same   |
//! | 2    | some member is not UN, or degraded | the node is not ready | -   |
//!
//! Every request goes through [`get_json`], so that authenticating the CLI
//! is one change.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use strata_server::api::report::{ClusterReport, MemberReport, RingReport};
use strata_server::tls::TlsError;

use crate::tls_args::TlsArgs;

/// Exit code: every member UN and healthy, or the node ready.
pub const EXIT_OK: u8 = 0;
/// Exit code: the node could not be asked, or answered nonsense.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: some member is not UN (or is degraded), or the node is not ready.
pub const EXIT_NOT_HEALTHY: u8 = 2;

/// How long one request may take: a node that answers slower than this is
/// not one an operator can rely on either.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of the read-only views.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewArgs {
    /// HTTP address of the node to ask (any member).
    #[arg(long, default_value = strata_server::config::defaults::LISTEN)]
    pub node: SocketAddr,
    /// Print the node's JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// An admin client token, for a node started with --auth-tokens-file.
    #[arg(long, env = "KVNODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// HTTPS to the node.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Why a view could not be shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The node could not be reached.
    #[error("asking {node}: {source}")]
    Http {
        /// The node asked.
        node: SocketAddr,
        /// What failed.
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{node}{path} answered {status}: {body}")]
    Status {
        /// The node asked.
        node: SocketAddr,
        /// The path asked.
        path: String,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
    /// The TLS files given do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node's answer is not the document expected.
    #[error("{node}{path}: not the expected document: {source}")]
    Json {
        /// The node asked.
        node: SocketAddr,
        /// The path asked.
        path: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// GETs `path` from `node`, with `token` and over `tls`, and parses the
/// JSON answer. Every request of these views goes through here.
pub async fn get_json<T: DeserializeOwned>(
    node: SocketAddr,
    path: &str,
    token: Option<&str>,
    tls: &TlsArgs,
) -> Result<T, ViewError> {
    let http = |source| ViewError::Http { node, source };
    let (builder, scheme) = tls.apply(reqwest::Client::builder().timeout(REQUEST_TIMEOUT))?;
    let client = builder.build().map_err(http)?;
    let mut request = client.get(format!("{scheme}://{node}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(http)?;
    let status = response.status();
    let body = response.bytes().await.map_err(http)?;
    if !status.is_success() {
        return Err(ViewError::Status {
            node,
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| ViewError::Json {
        node,
        path: path.to_owned(),
        source,
    })
}

/// `kvnode status`.
pub async fn status(args: ViewArgs) -> Result<ExitCode, ViewError> {
    let cluster: ClusterReport =
        get_json(args.node, "/v1/cluster", args.token.as_deref(), &args.tls).await?;
    if args.json {
        println!("{}", pretty(&cluster));
    } else {
        print!("{}", status_table(&cluster));
    }
    let healthy = cluster.members.iter().all(healthy);
    Ok(ExitCode::from(if healthy {
        EXIT_OK
    } else {
        EXIT_NOT_HEALTHY
    }))
}

/// `kvnode ring`.
pub async fn ring(args: ViewArgs) -> Result<ExitCode, ViewError> {
    let ring: RingReport =
        get_json(args.node, "/v1/ring", args.token.as_deref(), &args.tls).await?;
    if args.json {
        println!("{}", pretty(&ring));
    } else {
        let cluster: ClusterReport =
            get_json(args.node, "/v1/cluster", args.token.as_deref(), &args.tls).await?;
        print!("{}", ring_table(&ring, &cluster));
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `kvnode info`.
pub async fn info(args: ViewArgs) -> Result<ExitCode, ViewError> {
    let node: Value = get_json(args.node, "/v1/node", args.token.as_deref(), &args.tls).await?;
    if args.json {
        println!("{}", pretty(&node));
    } else {
        print!("{}", info_text(&node));
    }
    let ready = node.get("not_ready").is_some_and(Value::is_null);
    Ok(ExitCode::from(if ready {
        EXIT_OK
    } else {
        EXIT_NOT_HEALTHY
    }))
}

/// Flags of `kvnode version`.
#[derive(Debug, Clone, clap::Args)]
pub struct VersionArgs {
    /// Also ask this node which version it runs.
    #[arg(long)]
    pub node: Option<SocketAddr>,
    /// An admin client token, for a node started with --auth-tokens-file.
    #[arg(long, env = "KVNODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// HTTPS to the node.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `kvnode version`.
pub async fn version(args: VersionArgs) -> Result<ExitCode, ViewError> {
    println!("kvnode {}", env!("CARGO_PKG_VERSION"));
    if let Some(addr) = args.node {
        let node: Value = get_json(addr, "/v1/node", args.token.as_deref(), &args.tls).await?;
        println!(
            "{} at {addr}: kvnode {}",
            text(&node, "id"),
            text(&node, "version")
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `nodetool`'s two letters: U(p) or D(own), then N(ormal), J(oining),
/// L(eaving) or ? for a state this build does not know.
fn state_code(m: &MemberReport) -> String {
    let status = if m.status == "UP" { 'U' } else { 'D' };
    let state = match m.state.as_str() {
        "AVAILABLE" => 'N',
        "JOINING" | "BOOTSTRAPPING" => 'J',
        "LEAVING" | "LEFT" => 'L',
        _ => '?',
    };
    format!("{status}{state}")
}

/// Whether a member counts as healthy for the exit code.
fn healthy(m: &MemberReport) -> bool {
    state_code(m) == "UN" && m.degraded.is_none()
}

/// The table of `kvnode status`.
fn status_table(cluster: &ClusterReport) -> String {
    let mut rows = vec![[
        "--", "ID", "Address", "Load", "Owns", "Version", "Uptime", "Heard",
    ]
    .map(str::to_owned)
    .to_vec()];
    for m in &cluster.members {
        rows.push(vec![
            state_code(m),
            m.id.clone(),
            m.http_addr.clone(),
            m.load_bytes.map_or_else(dash, bytes),
            m.ownership
                .map_or_else(dash, |o| format!("{:.1}%", o * 100.0)),
            m.version.clone().unwrap_or_else(dash),
            m.uptime_secs
                .map_or_else(dash, |s| duration(Duration::from_secs(s))),
            m.last_heard_ms.map_or_else(dash, |ms| {
                format!("{} ago", duration(Duration::from_millis(ms)))
            }),
        ]);
    }
    for r in &cluster.removed {
        let waiting = if r.waiting_for.is_empty() {
            "re-replicated".to_owned()
        } else {
            format!("waiting for {}", r.waiting_for.join(","))
        };
        rows.push(vec![
            "removed".into(),
            r.id.clone(),
            waiting,
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ]);
    }
    let mut out = format!(
        "Cluster {} (replication factor {}), as {} sees it\n\
         Status=Up/Down, State=Normal/Joining/Leaving\n",
        cluster.cluster_id, cluster.replication_factor, cluster.coordinator
    );
    out.push_str(&columns(&rows));
    for m in cluster.members.iter().filter(|m| m.degraded.is_some()) {
        let _ = writeln!(
            out,
            "{} is degraded: {}",
            m.id,
            m.degraded.as_deref().unwrap_or_default()
        );
    }
    out
}

/// The table of `kvnode ring`.
fn ring_table(ring: &RingReport, cluster: &ClusterReport) -> String {
    let member = |id: &str| cluster.members.iter().find(|m| m.id == id);
    let mut rows = vec![["Token", "Owner", "Address", "--"]
        .map(str::to_owned)
        .to_vec()];
    for t in &ring.tokens {
        let m = member(&t.owner);
        rows.push(vec![
            t.token.to_string(),
            t.owner.clone(),
            m.map_or_else(dash, |m| m.http_addr.clone()),
            m.map_or_else(dash, state_code),
        ]);
    }
    format!(
        "Ring of {} (digest {}, replication factor {}): {} tokens\n{}",
        cluster.coordinator,
        ring.ring_digest,
        ring.replication_factor,
        ring.tokens.len(),
        columns(&rows)
    )
}

/// The text of `kvnode info`: the node's identity, disk, engine and
/// background work.
fn info_text(node: &Value) -> String {
    let u = |path: &[&str]| -> Option<u64> { at(node, path).and_then(Value::as_u64) };
    let readiness = match node.get("not_ready") {
        Some(Value::Null) => "ready".to_owned(),
        Some(reason) => format!("not ready: {}", reason.as_str().unwrap_or("?")),
        None => "readiness unknown".to_owned(),
    };
    let mut rows: Vec<Vec<String>> = vec![
        row("ID", text(node, "id")),
        row("State", format!("{} ({readiness})", text(node, "state"))),
        row("Address", text(node, "http_addr")),
        row("Gossip", text(node, "gossip_addr")),
        row("Data dir", text(node, "data_dir")),
        row("Version", text(node, "version")),
        row(
            "Uptime",
            u(&["uptime_secs"]).map_or_else(dash, |s| duration(Duration::from_secs(s))),
        ),
        row(
            "Load",
            match (u(&["disk", "tables"]), u(&["disk", "wal"])) {
                (Some(t), Some(w)) => format!(
                    "{} (tables {}, WAL {})",
                    bytes(t.saturating_add(w)),
                    bytes(t),
                    bytes(w)
                ),
                _ => dash(),
            },
        ),
        row(
            "Owns",
            format!(
                "{} of the token space, {} tokens",
                at(node, &["ownership"])
                    .and_then(Value::as_f64)
                    .map_or_else(dash, |o| format!("{:.1}%", o * 100.0)),
                u(&["tokens"]).map_or_else(dash, |t| t.to_string()),
            ),
        ),
        row(
            "Degraded",
            node.get("degraded")
                .and_then(Value::as_str)
                .unwrap_or("no")
                .to_owned(),
        ),
        row(
            "Memtables",
            format!(
                "{} active, {} immutable waiting for a flush",
                u(&["engine", "memtable_bytes"]).map_or_else(dash, bytes),
                u(&["engine", "immutable_memtables"]).map_or_else(dash, |n| n.to_string()),
            ),
        ),
        row(
            "Engine",
            format!(
                "{} flushes, {} compactions, write amplification {:.2}, {} write stalls",
                u(&["engine", "flushes"]).unwrap_or(0),
                u(&["engine", "compactions"]).unwrap_or(0),
                at(node, &["engine", "write_amplification"])
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                u(&["engine", "stall_stops"]).unwrap_or(0),
            ),
        ),
    ];
    let levels = at(node, &["engine", "levels"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut backlog = Vec::new();
    for level in &levels {
        let n = level.get("level").and_then(Value::as_u64).unwrap_or(0);
        let score = level.get("score").and_then(Value::as_f64).unwrap_or(0.0);
        let tables = level.get("tables").and_then(Value::as_u64).unwrap_or(0);
        if tables == 0 {
            continue;
        }
        rows.push(row(
            &format!("L{n}"),
            format!(
                "{tables} tables, {}, score {score:.2}",
                level
                    .get("bytes")
                    .and_then(Value::as_u64)
                    .map_or_else(dash, bytes)
            ),
        ));
        // A level is due for compaction at score 1.
        if score >= 1.0 {
            backlog.push(format!("L{n} ({score:.2})"));
        }
    }
    rows.push(row(
        "Compaction due",
        if backlog.is_empty() {
            "none".to_owned()
        } else {
            backlog.join(", ")
        },
    ));
    for (label, key) in [
        ("Hints", "hints"),
        ("Repair", "repair"),
        ("Streaming", "streaming"),
        ("Clean-up", "cleanup"),
    ] {
        if let Some(value) = node.get(key) {
            rows.push(row(label, value.to_string()));
        }
    }
    columns(&rows)
}

fn row(label: &str, value: String) -> Vec<String> {
    vec![label.to_owned(), value]
}

/// The value at `path` of a JSON document.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// A string field, or `-`.
fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .map_or_else(dash, str::to_owned)
}

fn dash() -> String {
    "-".to_owned()
}

/// Rows as left-aligned columns two spaces apart, without trailing blanks.
fn columns(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, width) in r.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Bytes in binary units, three significant digits at most.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{n} B")
    } else if value < 10.0 {
        format!("{value:.2} {name}")
    } else if value < 100.0 {
        format!("{value:.1} {name}")
    } else {
        format!("{value:.0} {name}")
    }
}

/// A duration in its two largest units: `3d 4h`, `2h 5m`, `4m 7s`, `12.3s`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {}s", secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use strata_server::api::report::{RemovedReport, RingToken};

    fn member(id: &str, state: &str, status: &str) -> MemberReport {
        MemberReport {
            id: id.into(),
            state: state.into(),
            status: status.into(),
            http_addr: format!("127.0.0.1:77{}", id.len()),
            tokens: 64,
            ownership: Some(1.0),
            degraded: None,
            version: Some("0.1.0".into()),
            load_bytes: Some(3 * 1024 * 1024 + 512 * 1024),
            uptime_secs: Some(7 * 3600 + 5 * 60),
            last_heard_ms: Some(120),
        }
    }

    fn cluster(members: Vec<MemberReport>) -> ClusterReport {
        ClusterReport {
            cluster_id: "strata".into(),
            coordinator: "node1".into(),
            replication_factor: 3,
            members,
            removed: Vec::new(),
        }
    }

    #[test]
    fn status_codes_follow_nodetool() {
        assert_eq!(state_code(&member("a", "AVAILABLE", "UP")), "UN");
        assert_eq!(state_code(&member("a", "AVAILABLE", "DOWN")), "DN");
        assert_eq!(state_code(&member("a", "BOOTSTRAPPING", "UP")), "UJ");
        assert_eq!(state_code(&member("a", "JOINING", "DOWN")), "DJ");
        assert_eq!(state_code(&member("a", "LEAVING", "UP")), "UL");
        assert_eq!(state_code(&member("a", "NEWSTATE", "UP")), "U?");
        let mut degraded = member("a", "AVAILABLE", "UP");
        assert!(healthy(&degraded));
        degraded.degraded = Some("retrying: disk full".into());
        assert!(!healthy(&degraded));
        assert!(!healthy(&member("a", "LEAVING", "UP")));
    }

    #[test]
    fn the_status_table_aligns_its_columns_and_shows_unknowns_as_dashes() {
        let mut down = member("node3", "AVAILABLE", "DOWN");
        down.uptime_secs = None;
        down.last_heard_ms = Some(12_300);
        let mut fresh = member("node22", "BOOTSTRAPPING", "UP");
        fresh.load_bytes = None;
        fresh.ownership = None;
        let mut c = cluster(vec![member("node1", "AVAILABLE", "UP"), down, fresh]);
        c.removed.push(RemovedReport {
            id: "node4".into(),
            removal: "node4:1:abcd".into(),
            state: "AVAILABLE".into(),
            status: "DOWN".into(),
            waiting_for: vec!["node1".into()],
        });
        let table = status_table(&c);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "Cluster strata (replication factor 3), as node1 sees it"
        );
        assert_eq!(
            lines[2],
            "--       ID      Address            Load      Owns    Version  Uptime  Heard"
        );
        assert_eq!(
            lines[3],
            "UN       node1   127.0.0.1:775      3.50 MiB  100.0%  0.1.0    7h 5m   0.1s ago"
        );
        assert_eq!(
            lines[4],
            "DN       node3   127.0.0.1:775      3.50 MiB  100.0%  0.1.0    -       12.3s ago"
        );
        assert_eq!(
            lines[5],
            "UJ       node22  127.0.0.1:776      -         -       0.1.0    7h 5m   0.1s ago"
        );
        assert_eq!(
            lines[6],
            "removed  node4   waiting for node1  -         -       -        -       -"
        );
        assert!(table.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn the_ring_table_names_each_tokens_owner_and_its_state() {
        let ring = RingReport {
            ring_digest: "00ff".into(),
            replication_factor: 3,
            tokens: vec![
                RingToken {
                    token: 5,
                    owner: "node1".into(),
                },
                RingToken {
                    token: 18_000_000_000_000_000_000,
                    owner: "ghost".into(),
                },
            ],
        };
        let table = ring_table(&ring, &cluster(vec![member("node1", "AVAILABLE", "DOWN")]));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "Ring of node1 (digest 00ff, replication factor 3): 2 tokens"
        );
        assert_eq!(lines[2], "5                     node1  127.0.0.1:775  DN");
        assert_eq!(lines[3], "18000000000000000000  ghost  -              -");
    }

    #[test]
    fn info_shows_readiness_load_and_the_compaction_backlog() {
        let node = serde_json::json!({
            "id": "node2",
            "state": "AVAILABLE",
            "not_ready": "range (1, 2]: 1 of 3 replicas serving, QUORUM needs 2",
            "version": "0.1.0",
            "uptime_secs": 90,
            "disk": { "tables": 2048, "wal": 1024 },
            "ownership": 0.5,
            "tokens": 64,
            "degraded": null,
            "engine": {
                "memtable_bytes": 100,
                "immutable_memtables": 1,
                "levels": [
                    { "level": 0, "tables": 5, "bytes": 5000, "score": 1.25 },
                    { "level": 1, "tables": 0, "bytes": 0, "score": 0.0 },
                    { "level": 2, "tables": 3, "bytes": 3_000_000, "score": 0.3 }
                ]
            },
            "hints": {}
        });
        let text = info_text(&node);
        for needle in [
            "State           AVAILABLE (not ready: range (1, 2]: 1 of 3 replicas serving, QUORUM needs 2)",
            "Uptime          1m 30s",
            "Load            3.00 KiB (tables 2.00 KiB, WAL 1.00 KiB)",
            "Owns            50.0% of the token space, 64 tokens",
            "Degraded        no",
            "L0              5 tables, 4.88 KiB, score 1.25",
            "L2              3 tables, 2.86 MiB, score 0.30",
            "Compaction due  L0 (1.25)",
            "Hints           {}",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
        assert!(!text.contains("L1 "), "{text}");
    }

    #[test]
    fn sizes_and_durations_read_like_a_person_wrote_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(50 * 1024 * 1024), "50.0 MiB");
        assert_eq!(bytes(300 * 1024 * 1024 * 1024), "300 GiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
        assert_eq!(duration(Duration::from_millis(120)), "0.1s");
        assert_eq!(duration(Duration::from_secs(247)), "4m 7s");
        assert_eq!(duration(Duration::from_secs(2 * 3600 + 300)), "2h 5m");
        assert_eq!(
            duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
    }
}
