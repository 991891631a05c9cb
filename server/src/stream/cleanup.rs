//! Old owners drop the ranges they no longer replicate, and only with proof
//! that the data lives on elsewhere.
//!
//! Deleting is the one thing gossip can make this node do that loses data,
//! so a pass needs more than silence. Every pass, automatic or asked for by
//! an operator (`kvnode cleanup`, `POST /admin/v1/cleanup`), checks before it
//! starts and again before each batch of [`BATCH`] deletes ([`Cleaner::guard`]):
//!
//! - this node is AVAILABLE, its engine healthy, and its own entry in the
//!   view is the record it published, tokens included, inside the ring;
//! - no member is BOOTSTRAPPING or LEAVING;
//! - every member of the ring is up, AVAILABLE, healthy, and publishes the
//!   same ring digest as this node (`membership::ring_digest`): every view
//!   agrees on who owns what.
//!
//! A pass deletes an item only if this node is not among its replicas in
//! that ring. The automatic pass further needs a **completed ring change
//! that this node watched**: it saw a member BOOTSTRAPPING (or LEAVING) with
//! the tokens that make the new ring, then saw that ring settle, and a
//! joiner counts as having its ranges only once it published AVAILABLE in
//! the same incarnation (which it does only after streaming them). It then
//! deletes only the items this node replicated in the ring before the
//! change and not after, and whose new replicas all either held them before
//! or are such acknowledged joiners; and only after the ring has held still
//! for the grace period, which also gives an operator time to stop a bad
//! join. A ring that changes without a watched transition (a member gone
//! from gossip, a restart mid-change) deletes nothing by itself; the
//! operator's `kvnode cleanup` is the way then. `--auto-cleanup false` turns
//! the automatic pass off.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use strata_ring::{NodeId, ReplicationFactor, Ring};

use crate::config::Config;
use crate::membership::{ring_digest, ClusterView, Membership, NodeState};
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::tasks::Tasks;
use crate::throttle::Throttle;

/// How often the ring is looked at, in gossip rounds.
const CHECK_ROUNDS: u32 = 5;
/// Items examined between two checks of the guard: small enough that a
/// ring change stops a pass within a fraction of a second.
pub const BATCH: usize = 1_000;

/// What the last clean-up passes did, for `/v1/node`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupStatus {
    /// Whether a pass is running.
    pub running: bool,
    /// Passes finished.
    pub passes: u64,
    /// Items the last finished pass deleted.
    pub last_deleted: u64,
    /// Why the last pass stopped or was refused, if it did not finish.
    pub last_refusal: Option<String>,
}

/// Which items a pass may delete.
#[derive(Debug, Clone)]
enum Scope {
    /// The operator's: everything this node does not replicate in `ring`.
    NotReplicated,
    /// The automatic one after a watched change from `from`: items this
    /// node replicated in `from` whose new replicas each held them in
    /// `from` or are in `acked` (joiners that finished streaming).
    Moved { from: Ring, acked: BTreeSet<NodeId> },
}

/// Runs clean-up passes and reports on them.
#[derive(Debug)]
pub struct Cleaner {
    membership: Arc<Membership>,
    storage: Storage,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// The node's background budget: a pass reads the whole engine.
    throttle: Throttle,
    status: Mutex<CleanupStatus>,
}

impl Cleaner {
    /// A cleaner for this node.
    pub fn new(
        membership: Arc<Membership>,
        storage: Storage,
        config: Arc<Config>,
        (metrics, throttle): (Arc<Metrics>, Throttle),
    ) -> Arc<Self> {
        Arc::new(Self {
            membership,
            storage,
            config,
            metrics,
            throttle,
            status: Mutex::new(CleanupStatus::default()),
        })
    }

    /// The passes' status.
    pub fn status(&self) -> CleanupStatus {
        self.status.lock().clone()
    }

    /// Starts an operator's pass over the current ring in the background;
    /// refuses at once, with the reason, if one is running or the guard
    /// does not hold.
    pub fn start_manual(self: &Arc<Self>, tasks: &Tasks) -> Result<(), String> {
        let view = self.membership.view();
        let ring = self.guard(&view)?;
        self.begin()?;
        let me = Arc::clone(self);
        tasks.spawn("cleanup_pass", async move {
            me.pass(ring, Scope::NotReplicated).await;
        });
        Ok(())
    }

    /// Watches the ring for completed changes and cleans up after each, for
    /// as long as the node lives.
    pub async fn run_auto(self: Arc<Self>) {
        let mut tracker = Tracker::default();
        loop {
            tokio::time::sleep(self.config.gossip_interval * CHECK_ROUNDS).await;
            let view = self.membership.view();
            tracker.observe(&view);
            let Some(change) = &tracker.completed else {
                continue;
            };
            if !self.config.auto_cleanup || change.at.elapsed() < self.config.cleanup_grace {
                continue;
            }
            if let Err(reason) = self.guard(&view) {
                tracing::debug!(%reason, "clean-up waits");
                self.status.lock().last_refusal = Some(reason);
                continue;
            }
            if self.begin().is_err() {
                continue;
            }
            let scope = Scope::Moved {
                from: change.from.clone(),
                acked: change.acked.clone(),
            };
            if self.pass(change.to.clone(), scope).await {
                tracker.completed = None;
            }
        }
    }

    /// Marks a pass as running, unless one is.
    fn begin(&self) -> Result<(), String> {
        let mut status = self.status.lock();
        if status.running {
            return Err("a clean-up pass is already running".into());
        }
        status.running = true;
        Ok(())
    }

    /// The ring a pass may use now, or why none may run.
    fn guard(&self, view: &ClusterView) -> Result<Ring, String> {
        let me = self.membership.self_id();
        if self.membership.state() != NodeState::Available {
            return Err("this node is not AVAILABLE".into());
        }
        let Some(own) = view.members.get(me) else {
            return Err("this node's own record is missing from its view".into());
        };
        if own.state != NodeState::Available
            || own.tokens != self.membership.tokens()
            || own.degraded.is_some()
        {
            return Err("this node's own record differs from what it published".into());
        }
        if view.future_ring.is_some() {
            return Err("a join or leave is in progress".into());
        }
        let Some(ring) = view.ring.clone() else {
            return Err("there is no ring".into());
        };
        if !ring.members().iter().any(|m| m.id == *me) {
            return Err("this node is not in the ring".into());
        }
        let digest = ring_digest(Some(&ring));
        for member in ring.members() {
            let Some(m) = view.members.get(&member.id) else {
                return Err(format!("ring member {} has no record", member.id));
            };
            if !m.live || m.state != NodeState::Available || m.degraded.is_some() {
                return Err(format!("ring member {} is down, degraded or moving", m.id));
            }
            if m.ring != digest {
                return Err(format!("member {} routes by another ring", m.id));
            }
        }
        Ok(ring)
    }

    /// One pass: deletes, in batches, what `scope` allows in `ring` while
    /// the guard holds with the same ring. Returns whether it finished.
    async fn pass(self: &Arc<Self>, ring: Ring, scope: Scope) -> bool {
        let me = self.membership.self_id().clone();
        let rf = self.config.replication_factor;
        let digest = ring_digest(Some(&ring));
        let scope_name = match &scope {
            Scope::NotReplicated => "operator",
            Scope::Moved { .. } => "after a ring change",
        };
        let started = Instant::now();
        tracing::info!(?scope_name, "clean-up: pass starts");
        let this = Arc::clone(self);
        let runtime = tokio::runtime::Handle::current();
        let result = tokio::task::spawn_blocking(move || {
            let delete = |token: u64| deletable(&scope, &ring, rf, &me, token);
            this.storage.retain(
                |token| !delete(token),
                BATCH,
                |batch| {
                    this.metrics.cleanup_deleted(batch.deleted);
                    // Paid after the batch: the pass holds no lock while it
                    // waits, and its snapshot keeps it consistent.
                    runtime.block_on(this.throttle.spend(batch.bytes));
                    tracing::debug!(deleted = batch.total, "clean-up: batch done");
                    match this.guard(&this.membership.view()) {
                        Ok(now) if ring_digest(Some(&now)) == digest => Ok(()),
                        Ok(_) => Err("the ring changed".to_owned()),
                        Err(reason) => Err(reason),
                    }
                },
            )
        })
        .await;
        let mut status = self.status.lock();
        status.running = false;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(Ok(deleted)) => {
                status.passes += 1;
                status.last_deleted = deleted;
                status.last_refusal = None;
                tracing::info!(
                    deleted,
                    seconds,
                    "clean-up: dropped items of ranges this node no longer replicates"
                );
                true
            }
            Ok(Err(stop)) => {
                tracing::warn!(deleted = stop.deleted, reason = %stop.reason, seconds, "clean-up stopped");
                status.last_refusal = Some(stop.reason);
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "clean-up task failed");
                status.last_refusal = Some(format!("the task failed: {e}"));
                false
            }
        }
    }
}

fn deletable(scope: &Scope, ring: &Ring, rf: ReplicationFactor, me: &NodeId, token: u64) -> bool {
    if ring.token_replicas(token, rf).any(|id| id == me) {
        return false;
    }
    match scope {
        Scope::NotReplicated => true,
        Scope::Moved { from, acked } => {
            let before: Vec<&NodeId> = from.token_replicas(token, rf).collect();
            before.contains(&me)
                && ring
                    .token_replicas(token, rf)
                    .all(|id| before.contains(&id) || acked.contains(id))
        }
    }
}

/// A ring change this node watched from start to end.
#[derive(Debug, Clone)]
struct Completed {
    from: Ring,
    to: Ring,
    acked: BTreeSet<NodeId>,
    at: Instant,
}

/// A transition in progress: the ring before it and the movers.
#[derive(Debug, Clone)]
struct Watching {
    from: Ring,
    to: Ring,
    /// Joiners, with the generation they bootstrapped in.
    joiners: Vec<(NodeId, u64)>,
}

/// Follows the views and recognises completed changes.
#[derive(Debug, Default)]
struct Tracker {
    settled: Option<Ring>,
    watching: Option<Watching>,
    completed: Option<Completed>,
}

impl Tracker {
    fn observe(&mut self, view: &ClusterView) {
        if let Some(future) = &view.future_ring {
            let Some(from) = self.settled.clone() else {
                return;
            };
            let joiners = view
                .members
                .values()
                .filter(|m| m.state == NodeState::Bootstrapping)
                .map(|m| (m.id.clone(), m.generation))
                .collect();
            self.watching = Some(Watching {
                from,
                to: future.clone(),
                joiners,
            });
            return;
        }
        let Some(ring) = view.ring.clone() else {
            return;
        };
        if self.settled.as_ref() == Some(&ring) {
            return;
        }
        match self.watching.take() {
            Some(w) if w.to == ring => {
                let acked = w
                    .joiners
                    .into_iter()
                    .filter(|(id, generation)| {
                        view.members.get(id).is_some_and(|m| {
                            m.state == NodeState::Available && m.generation == *generation
                        })
                    })
                    .map(|(id, _)| id)
                    .collect();
                self.completed = Some(Completed {
                    from: w.from,
                    to: ring.clone(),
                    acked,
                    at: Instant::now(),
                });
            }
            _ => {
                if self.settled.is_some() {
                    tracing::info!(
                        "the ring changed without a transition this node watched; \
                         automatic clean-up skips it (kvnode cleanup does it on request)"
                    );
                }
                self.completed = None;
            }
        }
        self.settled = Some(ring);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use strata_ring::Member;

    use super::*;
    use crate::membership::MemberInfo;

    fn info(id: &str, state: NodeState, generation: u64) -> MemberInfo {
        MemberInfo::for_test(id, state, generation)
    }

    fn view(members: &[MemberInfo], epoch: u64) -> ClusterView {
        let members: BTreeMap<_, _> = members.iter().map(|m| (m.id.clone(), m.clone())).collect();
        ClusterView::build(NodeId::from("a"), members, epoch)
    }

    #[test]
    fn only_a_watched_join_that_completed_in_the_same_incarnation_counts() {
        let (a, b) = (
            info("a", NodeState::Available, 1),
            info("b", NodeState::Available, 1),
        );
        let mut t = Tracker::default();
        t.observe(&view(&[a.clone(), b.clone()], 1));
        assert!(t.completed.is_none());
        t.observe(&view(
            &[a.clone(), b.clone(), info("c", NodeState::Bootstrapping, 7)],
            2,
        ));
        assert!(t.completed.is_none());
        t.observe(&view(
            &[a.clone(), b.clone(), info("c", NodeState::Available, 7)],
            3,
        ));
        let done = t.completed.clone().unwrap();
        assert_eq!(done.acked, BTreeSet::from([NodeId::from("c")]));
        assert_eq!(done.from.members().len(), 2);
        assert_eq!(done.to.members().len(), 3);

        // c restarted and joined anew under another generation: not acked.
        let mut t = Tracker::default();
        t.observe(&view(&[a.clone(), b.clone()], 1));
        t.observe(&view(
            &[a.clone(), b.clone(), info("c", NodeState::Bootstrapping, 7)],
            2,
        ));
        t.observe(&view(
            &[a.clone(), b.clone(), info("c", NodeState::Available, 8)],
            3,
        ));
        assert!(t.completed.unwrap().acked.is_empty());
    }

    #[test]
    fn a_ring_that_changes_unwatched_schedules_nothing() {
        let (a, b, c) = (
            info("a", NodeState::Available, 1),
            info("b", NodeState::Available, 1),
            info("c", NodeState::Available, 1),
        );
        let mut t = Tracker::default();
        t.observe(&view(&[a.clone(), b.clone(), c.clone()], 1));
        // b and c vanish from the view (forged, or garbage-collected).
        t.observe(&view(std::slice::from_ref(&a), 2));
        assert!(t.completed.is_none());
        // And a node appears AVAILABLE without a watched bootstrap.
        t.observe(&view(&[a, b, c, info("d", NodeState::Available, 1)], 3));
        assert!(t.completed.is_none());
    }

    #[test]
    fn a_moved_item_is_deletable_only_where_its_new_replicas_hold_it() {
        let rf = ReplicationFactor::new(2).unwrap();
        let ids = ["a", "b", "c"];
        let from = Ring::new(ids.iter().map(|id| Member::derived(*id, 16))).unwrap();
        let to = Ring::new(ids.iter().chain(&["d"]).map(|id| Member::derived(*id, 16))).unwrap();
        let me = NodeId::from("a");
        let acked = Scope::Moved {
            from: from.clone(),
            acked: BTreeSet::from([NodeId::from("d")]),
        };
        let unacked = Scope::Moved {
            from: from.clone(),
            acked: BTreeSet::new(),
        };
        let mut moved = 0;
        for t in (0..4096u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            let was = from.token_replicas(t, rf).any(|id| *id == me);
            let is = to.token_replicas(t, rf).any(|id| *id == me);
            let yes = deletable(&acked, &to, rf, &me, t);
            assert_eq!(yes, was && !is, "token {t}");
            assert!(
                !deletable(&unacked, &to, rf, &me, t)
                    || !to.token_replicas(t, rf).any(|id| id.as_str() == "d")
            );
            moved += u32::from(yes);
            // The operator's scope deletes whatever a does not replicate now.
            assert_eq!(deletable(&Scope::NotReplicated, &to, rf, &me, t), !is);
        }
        assert!(moved > 0);
    }
}
