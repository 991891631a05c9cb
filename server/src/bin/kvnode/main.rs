//! `kvnode`: parses arguments, sets up logging and hands over to the library
//! or to a subcommand: [`demo`] (a local cluster), [`admin`] (operator
//! commands against a node or its data dir), [`token`] (client tokens).

mod admin;
mod demo;
mod token;

use admin::{AdminArgs, AntiEntropyArgs, RemoveArgs, RepairArgs};
use anyhow::Context;
use clap::{Parser, Subcommand};
use demo::DemoArgs;
use strata_server::config::{Config, Settings};

/// A ring-routed, replicated HTTP key-value node.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: Settings,
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
    /// Client tokens for --auth-tokens-file.
    Token(token::TokenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVNODE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvnode")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Some(Command::Demo(args)) => Ok(demo::run(args).await?),
            Some(Command::Decommission(args)) => Ok(admin::decommission(args).await?),
            Some(Command::Removenode(args)) => Ok(admin::removenode(args).await?),
            Some(Command::Cleanup(args)) => Ok(admin::cleanup(args).await?),
            Some(Command::Repair(args)) => Ok(admin::repair(args).await?),
            Some(Command::RepairEngine(args)) => Ok(admin::repair_engine(&args)?),
            Some(Command::Token(args)) => token::run(args).map_err(anyhow::Error::msg),
            None => {
                let config = Config::load(cli.node)?;
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?;
                strata_server::run(config, listener, shutdown_signal()).await?;
                Ok(())
            }
        }
    })
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
