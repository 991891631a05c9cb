//! The replica calls that may outlive their request, in one bounded set
//! that the coordinator owns and the node drains when it stops.
//!
//! Two kinds of call end up here:
//!
//! - **A write's replica calls.** Any of them may turn out to be a tail (a
//!   call past the acks the level needs, still running when the client has
//!   its answer), and which ones is only known once the acks are in. So
//!   every call of a write is started with a permit it holds to its end, and
//!   a write that finds the set full waits for room ([`Background::reserve`])
//!   before it sends. A tail is never dropped: a replica skipped here
//!   would stay behind until a hint, a read or a repair pass reaches it, and
//!   a slow replica would make every write skip it. Waiting instead slows writes to
//!   the pace the slow replica's calls end at (each within the replica
//!   timeout), within the request's own deadline, and bounds the memory the
//!   tails hold (each holds its write's apply body).
//! - **Read repairs.** A repair is an optimisation the next read can redo,
//!   so it never waits: with no room ([`Background::try_reserve`]) it is
//!   skipped and counted (`kvnode_read_repairs_skipped_total`).
//!
//! [`Background::shutdown`] is called once HTTP has drained: no request can
//! start a call any more, so it waits for the ones in flight (a tail must
//! reach the local engine before its last flush, and the remote ones
//! before the node calls itself stopped), up to a deadline past which it
//! cancels them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Room for one call in the set.
pub(crate) type Permit = OwnedSemaphorePermit;

/// The bounded set of replica calls that may outlive their request.
///
/// The permits are the set's bookkeeping as well as its bound: a call holds
/// one until it ends, so once every permit is back no call is running, and
/// [`Background::shutdown`] waits for exactly that. Nothing else is kept per
/// call, so starting one takes no lock shared by every write.
#[derive(Debug)]
pub(crate) struct Background {
    /// One permit per call that may be in flight.
    permits: Arc<Semaphore>,
    /// How many permits there are.
    limit: u32,
    /// Set once shutdown begins: repairs stop starting.
    closing: AtomicBool,
    /// Ends the calls still running at the shutdown deadline.
    cancel: CancellationToken,
}

impl Background {
    /// A set of at most `limit` calls in flight (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            closing: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        }
    }

    /// Room for a call that must not be dropped: waits until there is some.
    pub(crate) async fn reserve(&self) -> Permit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            // Acquiring fails only on a closed semaphore.
            .expect("the set never closes its semaphore")
    }

    /// Room for a call that may be skipped, if there is some now and the
    /// set is not shutting down.
    pub(crate) fn try_reserve(&self) -> Option<Permit> {
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Runs `call` in the set, with the id of the request it serves
    /// ([`trace`](crate::peer::trace)); `permit` is released when it ends,
    /// panics included.
    pub(crate) fn spawn(&self, permit: Permit, call: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        let call = crate::peer::trace::carried(call);
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = cancel.cancelled() => {}
                () = call => {}
            }
        });
    }

    /// Calls in flight, or with room taken and about to start.
    pub(crate) fn in_flight(&self) -> usize {
        (self.limit as usize).saturating_sub(self.permits.available_permits())
    }

    /// Stops starting repairs, waits up to `deadline` for every call in
    /// flight to end and cancels the rest; how many were cancelled.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
        let all_back = self.permits.acquire_many(self.limit);
        if tokio::time::timeout(deadline, all_back).await.is_ok() {
            return 0;
        }
        let cancelled = self.in_flight();
        tracing::warn!(
            cancelled,
            "replica calls still in flight at the shutdown deadline"
        );
        self.cancel.cancel();
        // A cancelled call ends at its next poll and gives its permit back.
        let _ = self.permits.acquire_many(self.limit).await;
        cancelled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_set_makes_reserve_wait_and_try_reserve_refuse() {
        let set = Arc::new(Background::new(2));
        let ended = Arc::new(AtomicUsize::new(0));
        for ms in [100, 300] {
            let ended = ended.clone();
            let permit = set.try_reserve().unwrap();
            set.spawn(permit, async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(set.in_flight(), 2);
        assert!(set.try_reserve().is_none(), "the set is full");
        let start = tokio::time::Instant::now();
        let permit = set.reserve().await;
        // Room came when the shorter call ended, not before.
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        assert_eq!(set.in_flight(), 2, "the longer call, and this room");
        drop(permit);
        assert!(set.try_reserve().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_panics_gives_its_room_back() {
        let set = Background::new(1);
        set.spawn(set.reserve().await, async { panic!("boom") });
        let start = tokio::time::Instant::now();
        drop(set.reserve().await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(set.in_flight(), 0);
        assert_eq!(set.shutdown(Duration::from_secs(1)).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_calls_within_the_deadline_and_cancels_the_rest() {
        let set = Background::new(8);
        let ended = Arc::new(AtomicUsize::new(0));
        for ms in [100, 200, 5_000] {
            let ended = ended.clone();
            set.spawn(set.reserve().await, async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        let cancelled = set.shutdown(Duration::from_secs(1)).await;
        assert_eq!(cancelled, 1);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        // Cancelled means it never ends, and its permit is back.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        assert_eq!(set.permits.available_permits(), 8);
        // A closing set starts no more repairs.
        assert!(set.try_reserve().is_none());
    }
}
