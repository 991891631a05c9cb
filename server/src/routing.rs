//! What routing a request needs of the cluster, apart from how the cluster
//! is learnt: the current [`ClusterView`], this node's id, and the gate that
//! counts writes in flight by the view they route by.
//!
//! `membership` (gossip) owns one [`Routing`] and publishes a new view into
//! it on every change; the coordinator reads from it and knows nothing of
//! gossip, so a test can hand it views built by hand. Views travel through a
//! [`tokio::sync::watch`]: [`Routing::subscribe`] gives a receiver whose
//! `changed().await` wakes on the next view, for code that would otherwise
//! poll on a sleep loop.
//!
//! # The write gate
//!
//! A node must not tell the cluster it routes by a view (membership's
//! `seen`) while a write routed by an older view is still waiting for its
//! acks: that write may skip a pending replica the newer view names.
//! [`Routing::begin_write`] counts a write under its view's epoch until its
//! guard drops, and [`Routing::writes_before`] is what membership checks
//! before it publishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_ring::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::view::ClusterView;

/// The view requests route by, and the writes in flight under each view.
#[derive(Debug)]
pub(crate) struct Routing {
    self_id: NodeId,
    view: watch::Sender<Arc<ClusterView>>,
    /// Writes in flight, by the epoch of the view they route by.
    writes: Mutex<BTreeMap<u64, usize>>,
}

impl Routing {
    /// Routing for `self_id` by `view` (epoch 0 for a node that knows no
    /// one yet).
    pub(crate) fn new(view: ClusterView) -> Self {
        Self {
            self_id: view.self_id.clone(),
            view: watch::Sender::new(Arc::new(view)),
            writes: Mutex::new(BTreeMap::new()),
        }
    }

    /// The current view. Cheap: an `Arc` clone.
    pub(crate) fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// A receiver of every view published from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    /// The first view, the current one included, of which `ready` makes
    /// something: waits on the watch, not on a sleep. `still_waiting` is
    /// called with the current view each time `every` passes without one
    /// (for a progress log; `Duration::MAX`: never).
    pub(crate) async fn wait_for<T>(
        &self,
        mut ready: impl FnMut(&Arc<ClusterView>) -> Option<T>,
        every: Duration,
        mut still_waiting: impl FnMut(&Arc<ClusterView>),
    ) -> T {
        let mut views = self.subscribe();
        let mut said = Instant::now();
        loop {
            let view = views.borrow_and_update().clone();
            if let Some(found) = ready(&view) {
                return found;
            }
            let next = views.changed();
            let woke = match said.checked_add(every) {
                Some(deadline) => tokio::time::timeout_at(deadline, next).await,
                None => Ok(next.await),
            };
            match woke {
                Ok(Ok(())) => {}
                // The sender lives in `self`, which this borrow keeps alive.
                Ok(Err(_)) => std::future::pending::<()>().await,
                Err(_) => {
                    still_waiting(&view);
                    said = Instant::now();
                }
            }
        }
    }

    /// This node's id.
    pub(crate) fn self_id(&self) -> &NodeId {
        &self.self_id
    }

    /// Publishes the view that `next` makes of the current one, if it makes
    /// one; whether it did. Read and replaced in one step, so concurrent
    /// publishers never number two views with the same epoch.
    pub(crate) fn publish_with(
        &self,
        next: impl FnOnce(&ClusterView) -> Option<ClusterView>,
    ) -> bool {
        // `send_if_modified`, unlike `send`, publishes with no receiver.
        self.view.send_if_modified(|current| match next(current) {
            Some(view) => {
                *current = Arc::new(view);
                true
            }
            None => false,
        })
    }

    /// Counts a write routed by the view of `epoch` as in flight until the
    /// guard drops (see the module doc).
    pub(crate) fn begin_write(&self, epoch: u64) -> WriteGuard<'_> {
        *self.writes.lock().entry(epoch).or_default() += 1;
        WriteGuard {
            routing: self,
            epoch,
        }
    }

    /// Whether a write routed by a view older than `epoch` is in flight.
    pub(crate) fn writes_before(&self, epoch: u64) -> bool {
        self.writes
            .lock()
            .first_key_value()
            .is_some_and(|(&oldest, _)| oldest < epoch)
    }
}

/// A write in flight under a view's epoch; see [`Routing::begin_write`].
#[must_use = "the write counts as in flight while the guard lives"]
#[derive(Debug)]
pub(crate) struct WriteGuard<'a> {
    routing: &'a Routing,
    epoch: u64,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut writes = self.routing.writes.lock();
        if let Some(count) = writes.get_mut(&self.epoch) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                writes.remove(&self.epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn empty(epoch: u64) -> ClusterView {
        ClusterView::build(NodeId::from("a"), BTreeMap::new(), epoch)
    }

    #[test]
    fn the_gate_counts_writes_by_epoch_until_their_guards_drop() {
        let routing = Routing::new(empty(0));
        assert!(!routing.writes_before(5));
        let old = routing.begin_write(3);
        let old_too = routing.begin_write(3);
        let new = routing.begin_write(5);
        assert!(routing.writes_before(5));
        assert!(!routing.writes_before(3));
        drop(old);
        assert!(routing.writes_before(5), "one write of epoch 3 is left");
        drop(old_too);
        assert!(!routing.writes_before(5));
        assert!(routing.writes_before(6));
        drop(new);
        assert!(!routing.writes_before(u64::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_wakes_on_the_view_it_wants_and_reports_while_it_waits() {
        let routing = Arc::new(Routing::new(empty(0)));
        let publisher = routing.clone();
        tokio::spawn(async move {
            for epoch in 1..=5 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                publisher.publish_with(|_| Some(empty(epoch)));
            }
        });
        let mut reports = Vec::new();
        let started = Instant::now();
        let found = routing
            .wait_for(
                |v| (v.epoch >= 4).then_some(v.epoch),
                Duration::from_secs(5),
                |v| reports.push(v.epoch),
            )
            .await;
        assert_eq!(found, 4);
        // Woken by the view published at 12 s, not by a poll after it.
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        // Reported at 5 s (epoch 1 current) and at 10 s (epoch 3).
        assert_eq!(reports, vec![1, 3]);
        // A view that already satisfies returns at once.
        assert_eq!(
            routing
                .wait_for(|v| Some(v.epoch), Duration::from_secs(5), |_| {})
                .await,
            4
        );
    }

    #[tokio::test]
    async fn subscribers_wake_on_a_published_view_and_not_on_a_refused_one() {
        let routing = Routing::new(empty(0));
        let mut rx = routing.subscribe();
        assert!(!routing.publish_with(|_| None));
        assert!(!rx.has_changed().unwrap());
        assert!(routing.publish_with(|current| Some(empty(current.epoch + 1))));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().epoch, 1);
        assert_eq!(routing.view().epoch, 1);
        assert_eq!(routing.self_id().as_str(), "a");
    }
}
