//! The hybrid logical clock that stamps every write with its version.
//!
//! A timestamp is one `u64`: wall-clock milliseconds since the Unix epoch in
//! the high 48 bits and a logical counter in the low 16 bits. Timestamps from
//! one clock strictly increase, and [`Hlc::update`] folds in every version a
//! node receives, so a write that causally follows another (read it here,
//! overwrite it there) gets a larger version even if the second node's wall
//! clock runs behind. Last-writer-wins in `storage` compares these numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the logical counter; 65,536 timestamps per millisecond before the
/// clock borrows from the next millisecond (harmless: it stays monotonic).
const LOGICAL_BITS: u32 = 16;

/// A thread-safe hybrid logical clock.
#[derive(Debug, Default)]
pub struct Hlc {
    /// The last timestamp handed out or observed.
    last: AtomicU64,
}

impl Hlc {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh timestamp, larger than every one this clock returned or saw.
    pub fn now(&self) -> u64 {
        self.advance()
    }

    /// Folds in a timestamp received from another node: the next
    /// [`Hlc::now`] is larger than it. An older timestamp changes nothing
    /// (folding one in used to tick the counter, spending a timestamp per
    /// replicated write received).
    pub fn update(&self, remote: u64) {
        self.last.fetch_max(remote, Ordering::AcqRel);
    }

    fn advance(&self) -> u64 {
        let wall = wall_ms() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

/// The wall-clock milliseconds of a timestamp (its high 48 bits).
pub(crate) fn physical_ms(timestamp: u64) -> u64 {
    timestamp >> LOGICAL_BITS
}

/// Milliseconds since the Unix epoch by this host's clock.
pub(crate) fn wall_ms() -> u64 {
    // A clock before 1970 is a broken host; counting from zero keeps the HLC
    // monotonic (the logical part carries it) instead of failing writes.
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from(ms).unwrap_or(u64::MAX >> LOGICAL_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase() {
        let clock = Hlc::new();
        let mut prev = clock.now();
        for _ in 0..100_000 {
            let next = clock.now();
            assert!(next > prev);
            prev = next;
        }
    }

    #[test]
    fn physical_part_tracks_the_wall_clock() {
        let clock = Hlc::new();
        let ms = clock.now() >> LOGICAL_BITS;
        assert!(ms.abs_diff(wall_ms()) < 5_000);
    }

    #[test]
    fn update_moves_past_a_clock_that_runs_ahead() {
        let clock = Hlc::new();
        let ahead = (wall_ms() + 60_000) << LOGICAL_BITS;
        clock.update(ahead);
        assert!(clock.now() > ahead);
    }

    #[test]
    fn update_with_an_old_timestamp_changes_nothing_visible() {
        // Run the clock ahead of the wall clock, so that each timestamp is
        // exactly the previous one plus one: any effect an old timestamp
        // had (pulling the clock back, or pushing it on) would show.
        let clock = Hlc::new();
        clock.update((wall_ms() + 60_000) << LOGICAL_BITS);
        let a = clock.now();
        clock.update(1);
        clock.update(a - 1);
        clock.update(a);
        assert_eq!(clock.now(), a + 1);
    }

    #[test]
    fn concurrent_callers_never_share_a_timestamp() {
        let clock = std::sync::Arc::new(Hlc::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| clock.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 40_000);
    }
}
