//! The byte budget of request bodies in flight: what bounds this node's
//! memory under a burst of large writes, whoever sends them.
//!
//! A request that will read a body reserves its declared `Content-Length`
//! (or its route's limit, for a chunked body) before a byte of it is read,
//! and keeps the reservation until its answer is ready. A request that does
//! not fit is refused at once (503 with `Retry-After`), never queued: a
//! queued request holds its connection and would hold its coordinator's
//! reservation while waiting on replicas that wait on budget in turn.
//!
//! A quarter of the budget is kept for node-to-node traffic. Without it a
//! burst of client writes on every node fills every budget, the replicas
//! refuse the applies of the writes already admitted, and every write fails
//! (and is retried) until the burst ends; with it, admitted writes finish.
//!
//! Not counted: replica calls a coordinator finishes in the background after
//! it has answered (bounded by the replica timeout), and responses.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bodies in flight, in bytes. See the module doc.
#[derive(Debug)]
pub struct BodyBudget {
    /// Every body, client and internal.
    all: Semaphore,
    /// Client bodies: three quarters of `all`, so that internal requests
    /// always find the last quarter free of client bodies.
    client: Semaphore,
}

/// A reservation; returned to the budget on drop.
#[derive(Debug)]
pub struct BodyPermit<'a> {
    _all: SemaphorePermit<'a>,
    _client: Option<SemaphorePermit<'a>>,
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Self {
            all: Semaphore::new(bytes),
            client: Semaphore::new(bytes - bytes / 4),
        }
    }

    /// Reserves `bytes` for a client (`internal` false) or node-to-node
    /// request, or `None` if they do not fit now.
    pub fn try_reserve(&self, bytes: usize, internal: bool) -> Option<BodyPermit<'_>> {
        // Reservations are at most a route's body limit, which the config
        // keeps far below 4 GiB; one that is not cannot fit anyway.
        let n = u32::try_from(bytes).ok()?;
        let client = if internal {
            None
        } else {
            Some(self.client.try_acquire_many(n).ok()?)
        };
        let all = self.all.try_acquire_many(n).ok()?;
        Some(BodyPermit {
            _all: all,
            _client: client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_leave_a_quarter_to_internal_requests() {
        let budget = BodyBudget::new(100);
        let a = budget.try_reserve(60, false);
        assert!(a.is_some());
        // 40 bytes are free, but only 15 of them to clients.
        assert!(budget.try_reserve(16, false).is_none());
        let b = budget.try_reserve(15, false);
        assert!(b.is_some());
        assert!(budget.try_reserve(26, true).is_none());
        let c = budget.try_reserve(25, true);
        assert!(c.is_some());
        assert!(budget.try_reserve(1, true).is_none());
        drop((a, c));
        // Internal requests may use the whole budget.
        assert!(budget.try_reserve(85, true).is_some());
    }

    #[test]
    fn a_refused_client_reservation_takes_nothing() {
        let budget = BodyBudget::new(100);
        let internal = budget.try_reserve(90, true);
        assert!(internal.is_some());
        // Fits the client share but not the whole: refused, and the client
        // share it took for a moment is back.
        assert!(budget.try_reserve(20, false).is_none());
        drop(internal);
        assert!(budget.try_reserve(75, false).is_some());
        assert!(budget.try_reserve(u32::MAX as usize + 1, true).is_none());
    }
}
