//! Old owners drop the ranges they no longer replicate.
//!
//! Once a ring has held still (no member BOOTSTRAPPING or LEAVING, the same
//! members and tokens) for the configured grace period, an AVAILABLE node
//! deletes every item it is not a replica of in that ring. The grace period
//! covers the gossip of the new node's AVAILABLE state reaching everyone,
//! and gives an operator time to notice a bad join before data goes.
//!
//! A ring missing a member only makes this node replicate *more*, so a view
//! that lags behind gossip deletes less, never more.

use std::sync::Arc;
use std::time::Instant;

use strata_ring::Ring;

use crate::config::Config;
use crate::membership::{Membership, NodeState};
use crate::metrics::Metrics;
use crate::storage::Storage;

/// How often the ring is looked at, in gossip rounds.
const CHECK_ROUNDS: u32 = 5;

/// Runs clean-up passes for as long as the node lives.
pub async fn run(
    membership: Arc<Membership>,
    storage: Storage,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
) {
    let mut stable: Option<(Ring, Instant)> = None;
    let mut cleaned: Option<Ring> = None;
    loop {
        tokio::time::sleep(config.gossip_interval * CHECK_ROUNDS).await;
        let view = membership.view();
        let (Some(ring), None) = (view.ring.clone(), &view.future_ring) else {
            stable = None;
            continue;
        };
        if membership.state() != NodeState::Available {
            continue;
        }
        let since = match &stable {
            Some((r, since)) if *r == ring => *since,
            _ => {
                stable = Some((ring, Instant::now()));
                continue;
            }
        };
        if since.elapsed() < config.cleanup_grace || cleaned.as_ref() == Some(&ring) {
            continue;
        }
        let me = membership.self_id().clone();
        let rf = config.replication_factor;
        let (storage, pass_ring) = (storage.clone(), ring.clone());
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            storage.retain(|t| pass_ring.token_replicas(t, rf).any(|id| *id == me))
        })
        .await;
        match result {
            Ok(Ok(deleted)) => {
                metrics.cleanup_deleted(deleted);
                if deleted > 0 {
                    tracing::info!(
                        deleted,
                        seconds = started.elapsed().as_secs_f64(),
                        "clean-up: dropped items of ranges this node no longer replicates"
                    );
                }
                cleaned = Some(ring);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "clean-up failed"),
            Err(e) => tracing::error!(error = %e, "clean-up task failed"),
        }
    }
}
