//! One byte-rate budget that every kind of background work draws from (hint replay, repair, ...), so that together
//! they never take more than the configured rate and foreground requests keep their latency.
//!
//! A token bucket that may go into debt: a spender takes its bytes at once
//! and then waits until the bucket has refilled past zero. So a spend larger
//! than the burst is never refused (a 1 MiB item still gets through a small
//! budget, just slowly), concurrent spenders queue up behind each other's
//! debt in arrival order, and over any long stretch the rate holds.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A token bucket of bytes per second, shared by clones.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    inner: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    bytes_per_sec: f64,
    /// Bytes that may be spent now; negative while spenders wait.
    level: Mutex<(f64, Instant)>,
}

impl Throttle {
    /// A budget of `bytes_per_sec` (0 = unlimited), with a burst of one second's worth.
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        let inner = (bytes_per_sec > 0).then(|| {
            let rate = bytes_per_sec as f64;
            Arc::new(Bucket {
                bytes_per_sec: rate,
                level: Mutex::new((rate, Instant::now())),
            })
        });
        Self { inner }
    }

    /// Waits until `bytes` may be spent, then spends them. Never waits for unlimited.
    pub(crate) async fn spend(&self, bytes: u64) {
        let Some(bucket) = &self.inner else {
            return;
        };
        let wait = {
            let mut level = bucket.level.lock();
            let now = Instant::now();
            let refill = now.duration_since(level.1).as_secs_f64() * bucket.bytes_per_sec;
            // The burst: at most one second's worth saved up.
            level.0 = (level.0 + refill).min(bucket.bytes_per_sec) - bytes as f64;
            level.1 = now;
            (level.0 < 0.0).then(|| Duration::from_secs_f64(-level.0 / bucket.bytes_per_sec))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spending_past_the_burst_waits_for_the_rate() {
        let t = Throttle::new(1000);
        let start = Instant::now();
        // The first second's worth is the burst: no wait.
        t.spend(1000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The next 500 bytes wait half a second, then 2000 more two seconds.
        t.spend(500).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        t.spend(2000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget_and_idle_time_refills_only_the_burst() {
        let a = Throttle::new(100);
        let b = a.clone();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        // A minute idle saves up one second, not sixty.
        a.spend(100).await;
        b.spend(100).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let (x, y) = tokio::join!(a.spend(100), b.spend(100));
        let _ = (x, y);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let t = Throttle::new(0);
        let start = Instant::now();
        t.spend(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
