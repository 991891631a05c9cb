//! A node's life: open the engine, check the data dir belongs to this node,
//! start gossip, join, serve HTTP until told to stop, then drain and flush.
//!
//! # Joining
//!
//! A node whose data dir has never served (no `node.json`) starts JOINING
//! and turns AVAILABLE once it has heard from another verified member and
//! let a few gossip rounds pass, so that it routes with the whole ring, not
//! with a ring of one. A node alone (no seeds but itself) is AVAILABLE at
//! once. A restarted node (same id, its `node.json` present) is AVAILABLE at
//! once: it already owns its ranges and holds their data. Streaming data to a
//! node that joins a populated ring is the bootstrap work (BOOTSTRAPPING)
//! that comes next; here a new node is expected to own nothing yet.
//!
//! # Data dir
//!
//! ```text
//! <data_dir>/node.json   {"node_id": ".."}: whose data this is; written when first AVAILABLE
//! <data_dir>/engine/     the strata-engine database
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::coordinator::{Coordinator, CoordinatorParts};
use crate::hlc::Hlc;
use crate::membership::{Membership, MembershipError, NodeState};
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};

/// Gossip rounds a joining node waits after first hearing from the cluster,
/// so that every member's record has reached it.
const SETTLE_ROUNDS: u32 = 5;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data dir could not be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The engine failed to open or flush.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Gossip failed to start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The HTTP client for replica calls could not be built.
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeMarker {
    node_id: String,
}

/// Runs a node on `listener` until `shutdown` resolves, then stops accepting,
/// drains in-flight requests, leaves gossip and flushes the engine.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::DataDir {
        path: config.data_dir.clone(),
        reason: e.to_string(),
    })?;
    let marker_path = config.data_dir.join("node.json");
    let served_before = read_marker(&marker_path, &config.node_id)?;
    let storage = Storage::open(&config.data_dir.join("engine"))?;
    let alone = config.other_seeds().next().is_none();
    let initial = if served_before || alone {
        NodeState::Available
    } else {
        NodeState::Joining
    };
    let membership = Membership::start(&config, initial).await?;
    if initial == NodeState::Available {
        write_marker(&marker_path, &config.node_id)?;
    } else {
        tokio::spawn(join(membership.clone(), config.clone(), marker_path));
    }
    let metrics = Arc::new(Metrics::new());
    let hlc = Arc::new(Hlc::new());
    let coordinator = Coordinator::new(CoordinatorParts {
        storage: storage.clone(),
        membership: membership.clone(),
        hlc: hlc.clone(),
        rf: config.replication_factor,
        secret: config.secret.clone(),
        metrics: metrics.clone(),
        replica_timeout: config.replica_timeout,
    })?;
    let state = AppState {
        coordinator,
        membership: membership.clone(),
        storage: storage.clone(),
        hlc,
        metrics,
        in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        config: config.clone(),
    };
    tracing::info!(
        node = %config.node_id,
        http = %config.advertise,
        gossip = %config.gossip_advertise,
        data_dir = %config.data_dir.display(),
        state = initial.as_str(),
        "kvnode serving"
    );
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("http drained; leaving gossip and flushing the engine");
    membership.shutdown().await;
    let flushed = tokio::task::spawn_blocking(move || storage.flush())
        .await
        .map_err(|e| NodeError::Serve(std::io::Error::other(e)))?;
    served?;
    flushed?;
    tracing::info!("stopped");
    Ok(())
}

/// JOINING -> AVAILABLE once the cluster has been heard from and has settled.
async fn join(membership: Arc<Membership>, config: Arc<Config>, marker_path: PathBuf) {
    let mut waited = 0u32;
    loop {
        tokio::time::sleep(config.gossip_interval).await;
        let view = membership.view();
        if view.members.keys().any(|id| id != membership.self_id()) {
            break;
        }
        waited += 1;
        if waited.is_multiple_of(100) {
            tracing::warn!(seeds = ?config.seeds, "still waiting to hear from a seed");
        }
    }
    tokio::time::sleep(config.gossip_interval * SETTLE_ROUNDS).await;
    if let Err(e) = write_marker(&marker_path, &config.node_id) {
        tracing::error!(error = %e, "cannot record the node id in the data dir; staying JOINING");
        return;
    }
    membership.set_state(NodeState::Available).await;
}

/// Whether this data dir has served as `node_id` before. A dir that belongs
/// to another node id is refused: its data sits under another node's tokens.
fn read_marker(path: &Path, node_id: &str) -> Result<bool, NodeError> {
    let err = |reason: String| NodeError::DataDir {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let marker: NodeMarker =
                serde_json::from_slice(&bytes).map_err(|e| err(format!("bad node.json: {e}")))?;
            if marker.node_id != node_id {
                return Err(err(format!(
                    "belongs to node {:?}, not {node_id:?}",
                    marker.node_id
                )));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_marker(path: &Path, node_id: &str) -> Result<(), NodeError> {
    let err = |reason: String| NodeError::DataDir {
        path: path.to_owned(),
        reason,
    };
    let marker = serde_json::to_vec(&NodeMarker {
        node_id: node_id.to_owned(),
    })
    .map_err(|e| err(e.to_string()))?;
    // Write then rename, so a crash never leaves a torn marker.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, marker).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_data_dir_belongs_to_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert!(!read_marker(&path, "a").unwrap());
        write_marker(&path, "a").unwrap();
        assert!(read_marker(&path, "a").unwrap());
        assert!(matches!(
            read_marker(&path, "b"),
            Err(NodeError::DataDir { .. })
        ));
        std::fs::write(&path, b"{").unwrap();
        assert!(read_marker(&path, "a").is_err());
    }
}
