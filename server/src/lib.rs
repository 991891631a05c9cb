//! strata-server: `kvnode`, the replicated HTTP key-value node built on
//! `strata-engine` and `strata-ring`.
//!
//! Every node runs one engine, learns the cluster by gossip, places keys on
//! the consistent-hash ring and coordinates any request: it sends it to the
//! key's replicas in parallel and answers at the requested consistency level.
//!
//! The smallest complete use, a node of one (what `kvnode` with no argument
//! does):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use strata_server::config::{Config, Settings};
//!
//! let config = Config::load(Settings::default())?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! strata_server::run(config, listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Then `curl -X PUT --data-binary v http://127.0.0.1:7700/v1/kv/k` and
//! `curl http://127.0.0.1:7700/v1/kv/k`.
//!
//! Modules, one role each: [`api`] (routes), `coordinator` (replication and
//! consistency), `routing` (the view requests route by, which `membership`
//! publishes), `membership` (gossip and the ring), [`storage`] (the
//! engine behind the node's key layout), `hlc` (versions), [`auth`] (the
//! cluster secret), [`config`], `metrics`, `node` (startup and
//! shutdown), `listener` (the accept loop and its connection limits), [`peer`]
//! (calls to other nodes and their wire formats), `marker` (`node.json`),
//! `removal` (members removed for good, and fencing them),
//! `hints` (hinted handoff), `repair` (anti-entropy between replicas),
//! `throttle` (the byte rate background work shares),
//! [`stream`] (bootstrap streaming, decommission and clean-up). The `kvnode`
//! binary's subcommands (`demo`, `decommission`, `removenode`, `cleanup`,
//! `repair`, `repair-engine`)
//! live with it, in `src/bin/kvnode/`.

pub mod api;
pub mod auth;
pub mod config;
mod coordinator;
pub mod gossip_transport;
mod hints;
mod hlc;
mod listener;
mod marker;
mod membership;
mod metrics;
mod node;
pub mod peer;
mod repair;
mod routing;
pub mod storage;
pub mod stream;
mod tasks;
mod throttle;
mod view;

pub use api::cluster::{CLEANUP_PATH, DECOMMISSION_PATH, REMOVENODE_PATH};
pub use api::repair::REPAIR_PATH;
pub use api::router;
pub use marker::{mark_for_restream, MarkerError};
pub use node::{run, NodeError};
