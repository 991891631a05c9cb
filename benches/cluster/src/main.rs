//! The cluster benchmark: kvnode processes on 127.0.0.1 under a closed-loop
//! HTTP load, and the same load against a 3-member etcd or a bare axum
//! server in the same run.
//!
//! ```text
//! cd benches/cluster
//! cargo run --release -- --nodes 3 --workload put --consistency quorum --peer etcd
//! cargo run --release -- --suite            # the table of issue 15, kvnode against etcd and axum
//! cargo run --release -- --suite --json     # the same, as one JSON document
//! cargo run --release -- --nodes 3 --workload put --tls   # TLS and mTLS against plain
//! ```
//!
//! Every measurement starts its servers fresh (data under `--data-dir`,
//! tmpfs by default), preloads the keys if it reads them, warms up, then
//! counts `--duration` of answers, and stops and removes everything, also
//! on an error or Ctrl-C. Modules: `process` (children, CPU time), `nodes`
//! (a kvnode cluster), `peers` (etcd, axum), `load` (the generator),
//! `report` (tables, JSON).

#![deny(clippy::unwrap_used)]

mod load;
mod nodes;
mod peers;
mod process;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};

use load::{Load, Workload};
use nodes::{Consistency, KvnodeApi, Kvnodes};
use peers::axum::{AxumApi, AxumPeer};
use peers::etcd::{Etcd, EtcdApi};
use report::{Case, Conditions, Row};

#[derive(Parser, Debug)]
#[command(
    about = "kvnode on 127.0.0.1 under load, against etcd and bare axum in the same run",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    hidden: Option<Hidden>,
    #[command(flatten)]
    args: Args,
}

/// Roles of this binary that the benchmark itself starts.
#[derive(Subcommand, Debug)]
enum Hidden {
    /// The bare axum peer, as a child process.
    #[command(hide = true)]
    ServeAxum {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        body_size: usize,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// kvnode processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The kvnode binary [default: a release build of this repository].
    #[arg(long)]
    kvnode: Option<PathBuf>,
    /// Where data directories go (tmpfs, as the issue's figures were taken).
    #[arg(long, default_value = "/dev/shm")]
    data_dir: PathBuf,
    /// kvnode's --replication-factor.
    #[arg(long, default_value_t = 3)]
    replication_factor: usize,
    /// Keep-alive connections, each with one request in flight, spread over
    /// every node.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The timed window, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the window, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    #[arg(long, value_enum, default_value_t = Consistency::Quorum)]
    consistency: Consistency,
    /// Bytes per value (and per bare axum answer).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Size of the key space; reads preload every key first, untimed.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Also measure this system under the same load.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// The table of issue 15: 1-node GET and PUT, 3-node RF 3 QUORUM PUT
    /// and GET, with axum and etcd where they apply. Ignores --nodes,
    /// --replication-factor, --workload, --consistency and --peer.
    #[arg(long)]
    suite: bool,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Threads of the load generator, each with its own event loop (wrk's -t).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// kvnode with TLS throughout (HTTPS for clients, who must present a
    /// certificate, and mutual TLS between nodes; a throw-away CA), against
    /// the same cluster plain in the peer's columns. Takes no --peer.
    #[arg(long, conflicts_with_all = ["peer", "suite"])]
    tls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Peer {
    /// A 3-member etcd cluster (Debian's etcd-server, installed if missing).
    Etcd,
    /// A bare axum server answering GET / (the ceiling of one node's GET).
    Axum,
}

/// One line of the report: a kvnode cluster, a workload and a peer.
#[derive(Debug)]
struct Scenario {
    nodes: usize,
    rf: usize,
    workload: Workload,
    consistency: Consistency,
    peer: Option<Peer>,
}

impl Scenario {
    fn label(&self) -> String {
        let workload = format!("{:?}", self.workload).to_uppercase();
        match self.nodes {
            1 => format!("1 node {workload}"),
            n => format!(
                "{n} nodes RF {} {} {workload}",
                self.rf,
                self.consistency.as_str().to_uppercase()
            ),
        }
    }
}

fn scenarios(args: &Args) -> Vec<Scenario> {
    if !args.suite {
        return vec![Scenario {
            nodes: args.nodes,
            rf: args.replication_factor,
            workload: args.workload,
            consistency: args.consistency,
            peer: args.peer,
        }];
    }
    let case = |nodes, workload, peer| Scenario {
        nodes,
        rf: 3,
        workload,
        consistency: Consistency::Quorum,
        peer,
    };
    vec![
        case(1, Workload::Get, Some(Peer::Axum)),
        case(1, Workload::Put, None),
        case(3, Workload::Put, Some(Peer::Etcd)),
        case(3, Workload::Get, Some(Peer::Etcd)),
    ]
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.hidden {
        Some(Hidden::ServeAxum { listen, body_size }) => {
            peers::axum::serve(listen, body_size).map(|()| ExitCode::SUCCESS)
        }
        None => bench(&cli.args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn bench(args: &Args) -> Result<ExitCode> {
    if args.nodes == 0 || args.connections == 0 || args.keys == 0 || args.client_threads == 0 {
        bail!("--nodes, --connections, --keys and --client-threads must be at least 1");
    }
    if !args.data_dir.is_dir() {
        bail!("--data-dir {}: not a directory", args.data_dir.display());
    }
    // The load runs on threads of its own (`load`); this one only starts
    // and watches processes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load_average_start = process::load_average();
    // An interrupt drops the run, whose servers stop and remove their data
    // as they drop.
    let cases = runtime.block_on(async {
        tokio::select! {
            cases = run(args) => cases,
            signal = interrupted() => Err(anyhow!("{signal}: servers stopped, data removed")),
        }
    })?;
    let conditions = Conditions {
        connections: args.connections,
        client_threads: args.client_threads,
        warmup_secs: args.warmup.as_secs_f64(),
        duration_secs: args.duration.as_secs_f64(),
        value_size: args.value_size,
        keys: args.keys,
        load_average_start,
        load_average_end: process::load_average(),
    };
    if args.json {
        println!("{}", report::json(&conditions, &cases)?);
    } else {
        println!("{}", report::conditions(&conditions));
        println!("{}", report::summary(&cases));
        println!("{}", report::details(&cases));
    }
    let failures: Vec<String> = cases.iter().flat_map(Case::failures).collect();
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("\n!!!!!!!! REQUESTS FAILED: these figures are not clean !!!!!!!!");
    for failure in failures {
        eprintln!("!!! {failure}");
    }
    Ok(ExitCode::from(2))
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

async fn run(args: &Args) -> Result<Vec<Case>> {
    let scenarios = scenarios(args);
    let kvnode = nodes::kvnode_binary(args.kvnode.clone())?;
    let etcd = if scenarios.iter().any(|s| s.peer == Some(Peer::Etcd)) {
        peers::etcd::binary().inspect_err(|why| eprintln!("etcd peer skipped: {why}"))
    } else {
        Err("not asked for".to_owned())
    };
    let mut cases = Vec::new();
    for scenario in &scenarios {
        let case = measure(args, scenario, &kvnode, etcd.as_deref()).await?;
        eprint!("{}", report::summary(std::slice::from_ref(&case)));
        cases.push(case);
    }
    Ok(cases)
}

/// kvnode, then its peer, each started fresh and stopped after its run.
async fn measure(
    args: &Args,
    s: &Scenario,
    kvnode: &Path,
    etcd: Result<&Path, &String>,
) -> Result<Case> {
    let label = s.label();
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let load = Load {
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        keys: args.keys,
        workload: s.workload,
        threads: args.client_threads,
    };

    let system = if args.tls { "kvnode TLS" } else { "kvnode" };
    eprintln!("{label}: {system}");
    let outcome = run_kvnode(args, s, kvnode, &value, &load, args.tls).await?;
    let kvnode_row = Row::new(system, &outcome);

    let (peer, note) = match (s.peer, etcd) {
        (None, _) if args.tls => {
            eprintln!("{label}: kvnode plain");
            let outcome = run_kvnode(args, s, kvnode, &value, &load, false).await?;
            (Some(Row::new("kvnode plain", &outcome)), None)
        }
        (None, _) => (None, None),
        (Some(Peer::Etcd), Err(why)) => (None, Some(format!("etcd skipped: {why}"))),
        (Some(Peer::Etcd), Ok(bin)) => {
            eprintln!("{label}: etcd");
            let etcd = Etcd::start(bin, &args.data_dir).await?;
            let preload = EtcdApi::new(etcd.gateway, false, &value);
            preload_if_read(&load, Arc::new(preload), &etcd.addrs).await?;
            let serializable = s.consistency == Consistency::One;
            let api = Arc::new(EtcdApi::new(etcd.gateway, serializable, &value));
            let outcome = load::run(api, &etcd.addrs, &load, etcd.processes()).await?;
            (Some(Row::new("etcd", &outcome)), None)
        }
        (Some(Peer::Axum), _) => {
            eprintln!("{label}: bare axum");
            let axum = AxumPeer::start(&args.data_dir, args.value_size).await?;
            let get = Load {
                workload: Workload::Get,
                ..load.clone()
            };
            let outcome =
                load::run(Arc::new(AxumApi), &[axum.addr], &get, axum.processes()).await?;
            let note = (s.workload != Workload::Get).then(|| "GET only".to_owned());
            (Some(Row::new("bare axum", &outcome)), note)
        }
    };
    Ok(Case::new(label, kvnode_row, peer, note))
}

/// One run of `load` against a fresh kvnode cluster of `s`, TLS
/// throughout if `tls`.
async fn run_kvnode(
    args: &Args,
    s: &Scenario,
    kvnode: &Path,
    value: &Bytes,
    load: &Load,
    tls: bool,
) -> Result<load::Outcome> {
    let cluster = Kvnodes::start(kvnode, s.nodes, s.rf, &args.data_dir, tls).await?;
    // Preloaded at ALL, so that no read of the window meets a replica that
    // missed the write and pays for a read repair.
    let preload = KvnodeApi::new(Consistency::All, value.clone(), cluster.tls.clone());
    preload_if_read(load, Arc::new(preload), &cluster.addrs).await?;
    let api = Arc::new(KvnodeApi::new(
        s.consistency,
        value.clone(),
        cluster.tls.clone(),
    ));
    load::run(api, &cluster.addrs, load, cluster.processes()).await
}

/// Writes every key first if `load` reads them.
async fn preload_if_read(load: &Load, api: Arc<dyn load::Api>, addrs: &[SocketAddr]) -> Result<()> {
    if load.workload.reads() {
        let took = load::preload(api, addrs, load).await?;
        eprintln!("  preloaded {} keys in {took:.1?}", load.keys);
    }
    Ok(())
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |at| s.split_at(at));
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_suite_is_the_issues_table() {
        let cli = Cli::parse_from(["cluster-bench", "--suite", "--nodes", "5"]);
        let labels: Vec<String> = scenarios(&cli.args).iter().map(Scenario::label).collect();
        assert_eq!(
            labels,
            [
                "1 node GET",
                "1 node PUT",
                "3 nodes RF 3 QUORUM PUT",
                "3 nodes RF 3 QUORUM GET"
            ]
        );
    }

    #[test]
    fn the_hidden_server_is_a_subcommand() {
        let cli = Cli::parse_from([
            "cluster-bench",
            "serve-axum",
            "--listen",
            "127.0.0.1:9",
            "--body-size",
            "100",
        ]);
        assert!(matches!(
            cli.hidden,
            Some(Hidden::ServeAxum { body_size: 100, .. })
        ));
    }
}
