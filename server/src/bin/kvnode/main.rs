//! `kvnode`: parses arguments, sets up logging and hands over to the library
//! or to a subcommand: [`demo`] (a local cluster), [`admin`] (operator
//! commands against a node or its data dir), [`status`] (read-only views of
//! a running cluster), [`snapshot`] (backups), [`token`] (client tokens),
//! [`cert`] (TLS certificates),
//! or shell completions.
//!
//! Exit codes: 0 on success, 1 on any error (a usage error too); `status`
//! and `info` also exit with 2 when the cluster or node is not healthy
//! ([`status`] says when).

mod admin;
mod cert;
mod demo;
mod files;
mod snapshot;
mod status;
mod telemetry;
mod tls_args;
mod token;

use std::process::ExitCode;

use admin::{AdminArgs, AntiEntropyArgs, RemoveArgs, RepairArgs};
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use demo::DemoArgs;
use status::{VersionArgs, ViewArgs};
use strata_server::config::{Config, Settings};
use telemetry::LogFormat;

/// mimalloc rather than glibc's malloc: a file's chunks pass through fresh
/// 1 MiB buffers (the body, the apply body, the engine batch) that glibc
/// returns to the kernel on free and faults in, zeroed, on the next chunk;
/// that was a third of a node's CPU during an upload. mimalloc keeps them
/// for reuse, and purges what stays unused.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A ring-routed, replicated HTTP key-value node.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: Settings,
    /// Log lines on stdout: `text` (for people) or `json` (one object a
    /// line, with the request's span and id, for log shippers)
    /// [default: text].
    #[arg(long, env = "KVNODE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Export every span to this OpenTelemetry collector's OTLP/HTTP traces
    /// URL, e.g. `http://127.0.0.1:4318/v1/traces` (needs kvnode built
    /// with `--features otel`).
    #[arg(long, env = "KVNODE_OTEL_ENDPOINT", value_name = "URL")]
    otel_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster of child kvnode processes on loopback ports.
    Demo(DemoArgs),
    /// Make a running node hand its ranges over, leave the ring and stop.
    Decommission(AdminArgs),
    /// Remove a DOWN member (or a dead joiner) from the ring for good, through
    /// any live node; its surviving replicas re-replicate its ranges.
    Removenode(RemoveArgs),
    /// Make a running node drop the items of ranges it no longer replicates
    /// (after checking that every view agrees and every replica is up).
    Cleanup(AdminArgs),
    /// Make a running node compare its ranges with their other replicas
    /// (hash trees) and exchange only what differs, newest version winning.
    Repair(AntiEntropyArgs),
    /// Salvage a stopped node's damaged engine: every readable table and log
    /// record into a fresh manifest, the damaged files kept aside.
    RepairEngine(RepairArgs),
    /// Back a node up (`save`, asked of the running node) or make a data
    /// dir from a backup (`restore`, offline).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Client tokens for --auth-tokens-file.
    Token(token::TokenArgs),
    /// TLS certificates: a cluster CA, node and client certificates (PEM
    /// files; keys mode 0600).
    Cert(cert::CertArgs),
    /// Upload a local file to the cluster's file API, streamed, its SHA-256
    /// checked by the node.
    PutFile(files::PutFileArgs),
    /// Download a file from the cluster into a local path, its SHA-256
    /// checked before the path appears.
    GetFile(files::GetFileArgs),
    /// One line per member as a node sees it: state (UN, DN, UJ, UL),
    /// address, load, ownership, version, uptime, last heard. Exits 2 if
    /// some member is not UN or is degraded.
    Status(ViewArgs),
    /// The ring's tokens and their owners.
    Ring(ViewArgs),
    /// One node in depth: readiness, disk, engine levels, compaction
    /// backlog, hints, repair, streaming. Exits 2 if the node is not ready.
    Info(ViewArgs),
    /// This build's version, and a node's.
    Version(VersionArgs),
    /// Print a shell completion script (e.g. `kvnode completions bash >
    /// /etc/bash_completion.d/kvnode`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    fixed_mmap_threshold();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::from(status::EXIT_ERROR)
        }
    }
}

/// Allocations of at least this many bytes are mapped on their own and
/// unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Pins glibc's mmap threshold. Left dynamic, glibc raises it to the size
/// of any mapped block freed (up to 32 MiB), after which the 1 MiB buffers
/// of file chunks and big values come from the heap arenas and stay there
/// when freed (in `scripts/files-throughput.sh 1024`, a replica's heap
/// peaked at 134-147 MiB before, 82-85 MiB after). Small allocations are
/// untouched.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, and runs here
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse_from(std::env::args_os().map(block_store_flag)) {
        Ok(cli) => cli,
        // A usage error exits 1 like any other, not clap's 2: 2 says "not
        // healthy" to scripts (see `status`). Help and --version exit 0.
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(if e.use_stderr() {
                status::EXIT_ERROR
            } else {
                status::EXIT_OK
            }));
        }
    };
    let _telemetry = telemetry::init(
        cli.log_format.unwrap_or_default(),
        cli.otel_endpoint.as_deref(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvnode")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let done = ExitCode::SUCCESS;
        match cli.command {
            Some(Command::Demo(args)) => Ok(demo::run(args).await.map(|()| done)?),
            Some(Command::Decommission(args)) => {
                Ok(admin::decommission(args).await.map(|()| done)?)
            }
            Some(Command::Removenode(args)) => Ok(admin::removenode(args).await.map(|()| done)?),
            Some(Command::Cleanup(args)) => Ok(admin::cleanup(args).await.map(|()| done)?),
            Some(Command::Repair(args)) => Ok(admin::repair(args).await.map(|()| done)?),
            Some(Command::RepairEngine(args)) => Ok(admin::repair_engine(&args).map(|()| done)?),
            Some(Command::Snapshot(command)) => Ok(snapshot::run(command).await.map(|()| done)?),
            Some(Command::Token(args)) => {
                token::run(args).map(|()| done).map_err(anyhow::Error::msg)
            }
            Some(Command::Cert(args)) => cert::run(args).map(|()| done),
            Some(Command::PutFile(args)) => files::put(args).await.map(|()| done),
            Some(Command::GetFile(args)) => files::get(args).await.map(|()| done),
            Some(Command::Status(args)) => Ok(status::status(args).await?),
            Some(Command::Ring(args)) => Ok(status::ring(args).await?),
            Some(Command::Info(args)) => Ok(status::info(args).await?),
            Some(Command::Version(args)) => Ok(status::version(args).await?),
            Some(Command::Completions { shell }) => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "kvnode",
                    &mut std::io::stdout(),
                );
                Ok(done)
            }
            None => {
                warn_foreign_env();
                let named = cli.node.node_id.is_some();
                let config = Config::load(cli.node)?;
                if !named {
                    tracing::info!(
                        node = config.node_id,
                        data_dir = %config.data_dir.display(),
                        "no --node-id: this node's id is the one its data dir recorded, or \
                         <host name>-<HTTP port> on a first start"
                    );
                }
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?;
                strata_server::run(config, listener, shutdown_signal()).await?;
                Ok(done)
            }
        }
    })
}

/// The block store's single-dash `-port` (clap knows only `--port`), so its
/// start-up lines work; any other argument is left as it is.
fn block_store_flag(arg: std::ffi::OsString) -> std::ffi::OsString {
    match arg.to_str() {
        Some("-port") => "--port".into(),
        Some(a) if a.starts_with("-port=") => format!("-{a}").into(),
        _ => arg,
    }
}

/// Settings of the block store kvnode grew from, with what kvnode reads
/// instead. Its nodes took these from the environment; kvnode ignores them,
/// and says so rather than run with other values than the ones set.
const FOREIGN_ENV: [(&str, &str); 3] = [
    (
        "ReplicationFactor",
        "--replication-factor (KVNODE_REPLICATION_FACTOR)",
    ),
    ("ReplicaName", "--node-id (KVNODE_NODE_ID)"),
    (
        "ReplicaAddress",
        "--listen and --advertise (KVNODE_LISTEN, KVNODE_ADVERTISE)",
    ),
];

fn warn_foreign_env() {
    for (name, ours) in FOREIGN_ENV {
        if let Some(value) = std::env::var_os(name) {
            tracing::warn!(
                "{name}={} is the block store's setting and kvnode ignores it: use {ours}",
                value.to_string_lossy()
            );
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
