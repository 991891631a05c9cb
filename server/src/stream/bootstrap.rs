//! A new node's way in: JOINING (learn the ring) -> BOOTSTRAPPING (announce
//! tokens, receive ranges) -> AVAILABLE. See the module doc of
//! [`stream`](super) for why nothing acknowledged is missing at the end.
//!
//! 1. Wait to hear from the cluster, then a few gossip rounds so every
//!    member's record has arrived.
//! 2. Wait for the turn: joins are serialized (no other member
//!    BOOTSTRAPPING or LEAVING, no live JOINING member with a smaller id),
//!    because two nodes allocating tokens against the same ring would pick
//!    nearly the same places.
//! 3. With no ring yet (the cluster is forming), turn AVAILABLE with
//!    derived tokens: there is nothing to stream.
//! 4. Otherwise allocate balanced tokens against the ring, record them in
//!    the data dir (a restart re-announces the same ones) and publish
//!    BOOTSTRAPPING with them.
//! 5. Wait until every live member routes by a view holding the
//!    announcement, with no older write in flight (`seen`).
//! 6. Stream each range gained by the plan, preferring the replica that
//!    gives it up, then the others ([`plan_pulls`]).
//! 7. Record the completion in the data dir and publish AVAILABLE.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use strata_ring::{Member, NodeId};

use super::plan::plan_pulls;
use super::receiver::Receiver;
use super::{Progress, RETRY_PAUSE, SAY_EVERY};
use crate::config::Config;
use crate::join::{check_cluster, JoinError, JoinWatch};
use crate::marker::{write_marker, MarkerError, NodeMarker};
use crate::membership::{ClusterView, Membership, NodeState};

/// Gossip rounds a joining node waits after first hearing from the cluster,
/// so that every member's record has reached it.
const SETTLE_ROUNDS: u32 = 5;

/// Why a bootstrap stopped short of AVAILABLE; the node stays JOINING and
/// the error is its task's (`GET /v1/node`, `"tasks"`).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No tokens could be allocated against the ring.
    #[error("token allocation failed: {0}")]
    Allocate(#[from] strata_ring::RingError),
    /// The tokens or the completion could not be recorded in the data dir.
    #[error("cannot record the bootstrap in the data dir: {0}")]
    Marker(#[from] MarkerError),
    /// No seed was heard from in time, or the cluster's settings are not
    /// this node's: the node stops.
    #[error(transparent)]
    Join(#[from] JoinError),
}

/// What the bootstrap works with.
pub struct Bootstrap {
    /// This node's membership.
    pub membership: Arc<Membership>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Pulls ranges.
    pub receiver: Receiver,
    /// Progress of the pulls.
    pub progress: Arc<Progress>,
    /// `node.json`.
    pub marker_path: PathBuf,
    /// Tokens recorded by an interrupted bootstrap, to announce again.
    pub recorded_tokens: Option<Vec<u64>>,
    /// The wait for a seed, shown to operators and bounded.
    pub join: Arc<JoinWatch>,
}

impl Bootstrap {
    /// Runs the sequence of the module doc to AVAILABLE.
    pub async fn run(self) -> Result<(), BootstrapError> {
        let me = self.membership.self_id().clone();
        if let Err(e) = self.wait_for_cluster().await {
            self.join.fail(e.clone());
            return Err(e.into());
        }
        self.wait_for_turn(&me).await;
        let view = self.membership.view();
        let Some(ring) = view.ring.clone() else {
            tracing::info!("no ring yet: forming the cluster with derived tokens");
            return self.finish(self.membership.tokens()).await;
        };
        let tokens = match self.recorded_tokens.clone() {
            Some(t) => t,
            // Allocated under the id and this run's generation: a wiped node
            // rejoining under a removed id must not land on the removed
            // tokens, which stay fenced (`removal`), even against the same ring.
            None => {
                ring.allocate(
                    &NodeId::from(format!("{me}@{}", self.membership.generation())),
                    self.config.vnodes,
                    self.config.replication_factor,
                )?
                .tokens
            }
        };
        let marker = NodeMarker {
            node_id: me.to_string(),
            tokens: Some(tokens.clone()),
            available: false,
            removed: false,
        };
        write_marker(&self.marker_path, &marker)?;
        self.membership
            .set_state_and_tokens(NodeState::Bootstrapping, tokens.clone())
            .await;
        let announced = Instant::now();
        self.wait_until_routed(&me).await;
        tracing::info!(
            after_ms = announced.elapsed().as_millis() as u64,
            "every member routes writes to this node; streaming"
        );
        loop {
            match self.stream_all(&me, &tokens).await {
                Ok(()) => break,
                Err(missing) => {
                    tracing::error!(missing, "ranges not received; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        self.finish(tokens).await
    }

    /// Waits, within the join timeout, to hear from the cluster, then
    /// checks that its settings are this node's.
    async fn wait_for_cluster(&self) -> Result<(), JoinError> {
        let me = self.membership.self_id();
        let routing = self.membership.routing();
        let heard = routing.wait_for(
            |view| view.members.keys().any(|id| id != me).then_some(()),
            SAY_EVERY,
            |_| self.join.say_waiting(),
        );
        match self.join.remaining() {
            Some(left) => tokio::time::timeout(left, heard)
                .await
                .map_err(|_| self.join.no_seed())?,
            None => heard.await,
        }
        self.join.heard();
        tokio::time::sleep(self.config.gossip_interval * SETTLE_ROUNDS).await;
        let view = self.membership.view();
        let others: Vec<_> = view
            .members
            .values()
            .filter(|m| m.id != *me && m.live)
            .map(|m| m.http_addr)
            .collect();
        check_cluster(&self.config, &others).await
    }

    async fn wait_for_turn(&self, me: &NodeId) {
        let blocker = |view: &ClusterView| {
            view.members
                .values()
                .find(|m| {
                    m.id != *me
                        && m.live
                        && (m.state.in_transition()
                            || (m.state == NodeState::Joining && m.id < *me))
                })
                .map(|m| (m.id.clone(), m.state.as_str()))
        };
        self.membership
            .routing()
            .wait_for(
                |view| blocker(view).is_none().then_some(()),
                SAY_EVERY,
                |view| {
                    if let Some((node, state)) = blocker(view) {
                        tracing::info!(%node, state, "waiting for its join to finish");
                    }
                },
            )
            .await;
    }

    async fn wait_until_routed(&self, me: &NodeId) {
        self.membership
            .routing()
            .wait_for(
                |view| {
                    view.all_route_with(me, NodeState::Bootstrapping)
                        .then_some(())
                },
                SAY_EVERY,
                |_| tracing::warn!("waiting for every member to route by the announcement"),
            )
            .await;
    }

    /// Streams every range this node gains; `Err(n)` if `n` failed. A
    /// retry pulls every range again, received ones included: applying is
    /// last-writer-wins, so that costs only time, and a plan recomputed from
    /// a newer view (a source gone DOWN) needs no bookkeeping.
    async fn stream_all(&self, me: &NodeId, tokens: &[u64]) -> Result<(), usize> {
        let view = self.membership.view();
        let Some(ring) = view.ring.clone() else {
            return Err(1);
        };
        let grown = match ring.add(Member::new(me.clone(), tokens.to_vec())) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot add this node to the ring");
                return Err(1);
            }
        };
        let jobs = plan_pulls(
            &view.members,
            &ring,
            &grown,
            self.config.replication_factor,
            me,
            None,
        );
        self.progress.plan(jobs.iter().map(|(range, _)| *range));
        tracing::info!(ranges = jobs.len(), "bootstrap plan");
        let started = Instant::now();
        let (entries, failed) = self.receiver.pull_all(jobs).await;
        let report = self.progress.report();
        tracing::info!(
            entries,
            bytes = report
                .get("bytes")
                .and_then(|b| b.as_u64())
                .unwrap_or_default(),
            seconds = started.elapsed().as_secs_f64(),
            "bootstrap streams finished"
        );
        if failed == 0 {
            Ok(())
        } else {
            Err(failed)
        }
    }

    async fn finish(&self, tokens: Vec<u64>) -> Result<(), BootstrapError> {
        let marker = NodeMarker {
            node_id: self.membership.self_id().to_string(),
            tokens: Some(tokens.clone()),
            available: true,
            removed: false,
        };
        write_marker(&self.marker_path, &marker)?;
        self.membership
            .set_state_and_tokens(NodeState::Available, tokens)
            .await;
        Ok(())
    }
}
