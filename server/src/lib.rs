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
//! # Module map
//!
//! Layers, top to bottom; each module imports only modules below it (no
//! import loops):
//!
//! ```text
//! bin/kvnode/   main, demo, admin: the binary and its subcommands
//! node          a node's life: open the data dir, start, serve, stop; owns the tasks
//! api/          the HTTP adapter: kv, compat, files, cluster (admin), internal, stream, repair, snapshot, console (/ui), budget
//! coordinator/  replication and consistency; its bounded background set; in-process tests
//! repair/       anti-entropy: digest trees, the walk, the row step, the scheduler
//! hints/        hinted handoff: the store and its replay
//! stream/       join (bootstrap), leave (handoff), removal take-over, clean-up, plan_pulls
//! join          a joining node's checks: seeds resolved, the cluster's settings, a bounded wait
//! membership    gossip (chitchat) turned into views, published through routing
//! readiness     when /ready says 200: settled membership, a quorum of replicas
//! routing       the view requests route by (a watch) and the write gate
//! view/         ClusterView, MemberInfo, NodeState; removal (members removed for good)
//! peer/         the Peer trait, http, sim (tests), wire, frames, repair bodies
//! snapshot      a node's backup: save a checkpoint with checksums, verify, restore
//! certs         a cluster CA, node and client certificates (rcgen), PEM files
//! tls           rustls configurations from PEM files; the listener's, reloaded on SIGHUP
//! vitals        what members publish for operators (version, load), when last heard
//! marker, listener, gossip_transport, config, storage, tasks, throttle, metrics, process, auth, hlc
//! ```
//!
//! [`api`], [`auth`], [`certs`], [`config`], [`gossip_transport`], [`join`], [`peer`],
//! [`storage`], [`stream`] and [`tls`] are public for the binary, the integration tests and the
//! fuzz targets; the rest is private to the crate.

pub mod api;
mod applier;
pub mod auth;
pub mod certs;
pub mod config;
mod conn;
mod coordinator;
pub mod files;
pub mod gossip_transport;
mod hints;
mod hlc;
pub mod join;
mod listener;
mod marker;
mod membership;
mod metrics;
mod node;
pub mod peer;
mod process;
mod readiness;
mod repair;
mod routing;
pub mod snapshot;
pub mod storage;
pub mod stream;
mod tasks;
mod throttle;
pub mod tls;
mod view;
mod vitals;

pub use api::cluster::{CLEANUP_PATH, DECOMMISSION_PATH, REMOVENODE_PATH};
pub use api::repair::REPAIR_PATH;
pub use api::router;
pub use api::snapshot::SNAPSHOT_PATH;
pub use marker::{mark_for_restream, MarkerError};
pub use node::{run, NodeError};
