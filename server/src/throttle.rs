//! One byte-rate budget that every kind of background work draws from (hint
//! replay, repair, ...), so that together they never take more than the
//! configured rate and foreground requests keep their latency.
//!
//! A token bucket that may go into debt: a spend larger than what the bucket
//! holds is granted at once and its excess is waited off afterwards, by this
//! spender only. So one item larger than a second's budget (a 1 MiB value at
//! a low rate) still passes, and the average over any long stretch stays at
//! the rate. Time is tokio's, so tests run it paused.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A token bucket of bytes per second, shared by clones.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    /// `None` for unlimited.
    inner: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes per second; also the burst.
    rate: f64,
    state: Mutex<Level>,
}

#[derive(Debug)]
struct Level {
    /// Bytes that may be spent now; negative while in debt.
    available: f64,
    /// When `available` was last brought up to date.
    at: Instant,
}

impl Throttle {
    /// A budget of `bytes_per_sec` (0 = unlimited), with a burst of one
    /// second's worth.
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            return Self { inner: None };
        }
        // Exact for any rate below 2^53 bytes per second.
        let rate = bytes_per_sec as f64;
        Self {
            inner: Some(Arc::new(Bucket {
                rate,
                state: Mutex::new(Level {
                    available: rate,
                    at: Instant::now(),
                }),
            })),
        }
    }

    /// Waits until `bytes` may be spent, then spends them. Never waits for
    /// unlimited.
    pub(crate) async fn spend(&self, bytes: u64) {
        let Some(bucket) = &self.inner else { return };
        let wait = {
            let mut level = bucket.state.lock();
            let now = Instant::now();
            let refill = now.duration_since(level.at).as_secs_f64() * bucket.rate;
            level.available = (level.available + refill).min(bucket.rate);
            level.at = now;
            level.available -= bytes as f64;
            if level.available >= 0.0 {
                return;
            }
            // The debt, including what earlier spenders still owe: each
            // waits until the bucket would be back at zero, so concurrent
            // spenders queue rather than all passing at once.
            Duration::from_secs_f64(-level.available / bucket.rate)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time `spend(bytes)` takes on `t`, in paused time.
    async fn took(t: &Throttle, bytes: u64) -> Duration {
        let start = Instant::now();
        t.spend(bytes).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_one_second_passes_then_the_rate_holds() {
        let t = Throttle::new(1000);
        assert_eq!(took(&t, 1000).await, Duration::ZERO);
        // The bucket is empty: half the rate takes half a second.
        assert_eq!(took(&t, 500).await, Duration::from_millis(500));
        // Ten seconds of budget spent piecemeal take ten seconds.
        let start = Instant::now();
        for _ in 0..100 {
            t.spend(100).await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_only_up_to_the_burst() {
        let t = Throttle::new(1000);
        t.spend(1000).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        // A minute idle buys one second's worth, not sixty.
        assert_eq!(took(&t, 1000).await, Duration::ZERO);
        assert_eq!(took(&t, 1000).await, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spend_larger_than_the_burst_passes_and_is_waited_off() {
        let t = Throttle::new(1000);
        assert_eq!(took(&t, 3000).await, Duration::from_secs(2));
        assert_eq!(took(&t, 1000).await, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let a = Throttle::new(1000);
        let b = a.clone();
        a.spend(1000).await;
        assert_eq!(took(&b, 1000).await, Duration::from_secs(1));
        // Two spenders at once queue: the second waits for the first's debt.
        let start = Instant::now();
        let (x, y) = tokio::join!(a.spend(1000), b.spend(1000));
        let ((), ()) = (x, y);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let t = Throttle::new(0);
        for _ in 0..1000 {
            assert_eq!(took(&t, u64::MAX).await, Duration::ZERO);
        }
    }
}
