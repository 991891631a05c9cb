//! Decommission: the bootstrap in reverse. The leaving node publishes
//! LEAVING; the nodes that gain its ranges pull them (the same
//! [`Receiver`]); then it publishes LEFT and stops.
//!
//! 1. The leaver publishes LEAVING. The future ring no longer holds it, so
//!    coordinators send each write to the key's new replicas as pending
//!    replicas, counted as for a join.
//! 2. Every AVAILABLE node watches for LEAVING members ([`take_over`]).
//!    One that gains ranges waits, as a joining node does, until every
//!    member routes by the LEAVING state with no older write in flight,
//!    then pulls each range it gains, from the leaver first (it holds
//!    every write the others might lack), and publishes the leaver's
//!    incarnation under `pulled`.
//! 3. The leaver ([`leave`]) waits until every node that gains a range
//!    lists it under `pulled`, publishes LEFT, lets gossip carry it for a
//!    few rounds and asks the process to stop.
//!
//! The argument of [`stream`](super) holds with the leaver in the role of
//! the replica that gives ranges up.
//!
//! [`take_over`] also takes over the ranges of a member removed for good
//! ([`removal`](crate::view::removal)): the same pulls, gated the same way on
//! `seen`, with the removed member never a source.
//!
//! A decommission needs every member up: a DOWN member cannot take its
//! share or serve as a source, and it would block the leave for ever. It
//! is refused, naming `kvnode removenode`, until the member is back or
//! removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_ring::{NodeId, Ring};
use tokio::sync::Notify;

use super::plan::{plan_pulls, waiting_for};
use super::receiver::Receiver;
use super::{Progress, RETRY_PAUSE, SAY_EVERY};
use crate::config::Config;
use crate::marker::{write_marker, NodeMarker};
use crate::membership::{ClusterView, Membership, NodeState};

/// Gossip rounds the leaver keeps gossiping after publishing LEFT, so that
/// every member drops it from the ring before it goes silent.
const LEFT_ROUNDS: u32 = 10;

/// Why a decommission cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecommissionError {
    /// Only an AVAILABLE node can leave.
    #[error("node is {0}, not AVAILABLE")]
    NotAvailable(&'static str),
    /// Another node is joining or leaving.
    #[error("{0} is {1}: one transition at a time")]
    Busy(NodeId, &'static str),
    /// The ring would be empty.
    #[error("the last node of the ring cannot leave it")]
    LastNode,
    /// A member is DOWN: it can neither take ranges nor give them.
    #[error(
        "{0} is DOWN ({1}): bring it back, or remove it for good with `kvnode removenode {0}`, \
         then decommission"
    )]
    MemberDown(NodeId, &'static str),
}

/// Checks that this node may leave now and, if so, claims the leave: this
/// node's state turns LEAVING at once, so that a second request racing this
/// one is refused as not AVAILABLE instead of starting a second leave.
/// [`leave`] then publishes the state.
pub fn begin(membership: &Membership) -> Result<(), DecommissionError> {
    check(membership)?;
    if !membership.swap_state(NodeState::Available, NodeState::Leaving) {
        return Err(DecommissionError::NotAvailable(membership.state().as_str()));
    }
    Ok(())
}

/// Checks that this node may leave now.
fn check(membership: &Membership) -> Result<(), DecommissionError> {
    let state = membership.state();
    if state != NodeState::Available {
        return Err(DecommissionError::NotAvailable(state.as_str()));
    }
    let view = membership.view();
    if let Some(m) = view
        .members
        .values()
        .find(|m| !m.live && m.state != NodeState::Left)
    {
        return Err(DecommissionError::MemberDown(
            m.id.clone(),
            m.state.as_str(),
        ));
    }
    if let Some(m) = view
        .members
        .values()
        .find(|m| m.live && m.state.in_transition())
    {
        return Err(DecommissionError::Busy(m.id.clone(), m.state.as_str()));
    }
    let others = view.ring.as_ref().map_or(0, |r| {
        r.members().iter().filter(|m| m.id != view.self_id).count()
    });
    if others == 0 {
        return Err(DecommissionError::LastNode);
    }
    Ok(())
}

/// The leaver's side: LEAVING, wait for the new owners, LEFT, stop.
pub async fn leave(
    membership: Arc<Membership>,
    config: Arc<Config>,
    marker_path: PathBuf,
    stop: Arc<Notify>,
) {
    let me = membership.self_id().clone();
    membership.set_state(NodeState::Leaving).await;
    let started = Instant::now();
    // The new owners that have not taken the ranges over yet; `None` while
    // the view does not yet show this node's departure.
    let waiting = |view: &ClusterView| {
        let ring = view.ring.as_ref()?;
        let shrunk = ring.remove(&me).ok()?;
        let incarnation = view.members.get(&me).map(|m| m.incarnation())?;
        Some(waiting_for(
            &view.members,
            ring,
            &shrunk,
            config.replication_factor,
            &incarnation,
        ))
    };
    membership
        .routing()
        .wait_for(
            |view| waiting(view).is_some_and(|w| w.is_empty()).then_some(()),
            SAY_EVERY,
            |view| {
                tracing::info!(
                    waiting = ?waiting(view),
                    "waiting for the new owners to take the ranges over"
                );
            },
        )
        .await;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "every new owner holds its ranges; leaving the ring"
    );
    // A later start of this data dir must join anew: its tokens are gone
    // from the ring and its data is stale.
    let marker = NodeMarker {
        node_id: me.to_string(),
        tokens: None,
        available: false,
        removed: false,
    };
    if let Err(e) = write_marker(&marker_path, &marker) {
        tracing::error!(error = %e, "cannot record the departure in the data dir");
    }
    membership.set_state(NodeState::Left).await;
    tokio::time::sleep(config.gossip_interval * LEFT_ROUNDS).await;
    tracing::info!("LEFT; stopping");
    stop.notify_one();
}

/// Every node's side: takes over the ranges of LEAVING and removed
/// members, once each.
pub async fn take_over(
    membership: Arc<Membership>,
    config: Arc<Config>,
    receiver: Receiver,
    progress: Arc<Progress>,
) {
    let me = membership.self_id().clone();
    let routing = membership.routing();
    loop {
        let (view, departure) = routing
            .wait_for(
                |view| {
                    if membership.state() != NodeState::Available {
                        return None;
                    }
                    next_departure(view, &me).map(|d| (Arc::clone(view), d))
                },
                // Nothing to say while no one departs.
                Duration::MAX,
                |_| {},
            )
            .await;
        let jobs = plan_pulls(
            &view.members,
            &departure.before,
            &departure.after,
            config.replication_factor,
            &me,
            departure.excluded.as_ref(),
        );
        progress.plan(jobs.iter().map(|(range, _)| *range));
        tracing::info!(
            node = %departure.incarnation,
            why = departure.why,
            ranges = jobs.len(),
            "taking over a departing node's ranges"
        );
        let (entries, failed) = receiver.pull_all(jobs).await;
        if failed == 0 {
            // Publishes the view that no longer names this departure.
            membership.mark_pulled(departure.incarnation.clone()).await;
            tracing::info!(node = %departure.incarnation, entries, "took over the departing node's ranges");
        } else {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// A member whose ranges move to the others without it joining in.
struct Departure {
    /// Its run, as listed under `pulled` once its ranges are taken over.
    incarnation: String,
    /// The ring with it.
    before: Ring,
    /// The ring without it.
    after: Ring,
    /// Never a source: a removed member.
    excluded: Option<NodeId>,
    /// For the log.
    why: &'static str,
}

/// The first LEAVING or removed member whose ranges this node has not
/// taken over yet, once every live member routes by its departure (the
/// gate of [`stream`](super) on `seen`).
fn next_departure(view: &ClusterView, me: &NodeId) -> Option<Departure> {
    let ring = view.ring.as_ref()?;
    let pulled = |incarnation: &str| {
        view.members
            .get(me)
            .is_some_and(|m| m.pulled.iter().any(|p| p == incarnation))
    };
    let leaving = view
        .members
        .values()
        .filter(|m| m.live && m.state == NodeState::Leaving && m.id != *me)
        .filter(|m| !pulled(&m.incarnation()))
        .filter(|m| view.all_route_with(&m.id, NodeState::Leaving))
        .find_map(|m| {
            Some(Departure {
                incarnation: m.incarnation(),
                before: ring.clone(),
                after: ring.remove(&m.id).ok()?,
                excluded: None,
                why: "leaving",
            })
        });
    let removed = || {
        view.removed
            .values()
            .filter(|r| r.removal.id != *me && !pulled(&r.removal.incarnation()))
            .filter(|r| view.all_route_without(&r.removal))
            .find_map(|r| {
                let (before, after) = r.rings(Some(ring))?;
                Some(Departure {
                    incarnation: r.removal.incarnation(),
                    before,
                    after,
                    excluded: Some(r.removal.id.clone()),
                    why: "removed",
                })
            })
    };
    leaving.or_else(removed)
}
