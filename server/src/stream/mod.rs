//! Live bootstrap streaming: a node joins a running cluster, takes its
//! share of the ring and turns AVAILABLE without an acknowledged write
//! missing, while clients keep writing.
//!
//! - The frames a range travels in are [`peer::frames`](crate::peer::frames).
//! - `sender`: the source's `/internal/v1/stream` route, reading an engine
//!   snapshot of a token range.
//! - `receiver`: pulls a range, resumes a cut stream, switches source.
//! - `bootstrap`: the joining node's sequence, and its proof below.
//! - `cleanup`: old owners drop what they no longer replicate.
//! - `handoff`: decommission, the same streams in reverse.
//! - `plan`: which ranges a node pulls and from whom, for all of them.
//!
//! # Why nothing acknowledged is missing when a node turns AVAILABLE
//!
//! Let `B` join with tokens `T`. Take a write `W` of a key in a range `B`
//! gains, acknowledged at some level.
//!
//! 1. `B` publishes BOOTSTRAPPING with `T`. A coordinator that routes by a
//!    view holding it sends `W` to `B` as a pending replica and counts `B`'s
//!    ack among one more than the level needs (`coordinator`).
//! 2. `B` takes no snapshot until every live member publishes that it
//!    routes by such a view *and* that no write routed by an older view is
//!    still in flight on it (`membership`: `seen`, `begin_write`). From
//!    then on, every write is either sent to `B` or was acknowledged
//!    before that point.
//! 3. A write acknowledged before that point was applied, before its
//!    acknowledgement, on the level's count of the range's current
//!    replicas. `B` reads a snapshot taken after that point, from the
//!    replica that gives the range up when there is one (Cassandra's
//!    "consistent range movement"): if it holds `W`, `B` gets `W`; if it
//!    does not, the replicas that keep the range hold `W` on as many nodes
//!    as the level asked for.
//! 4. A write sent to `B` but that `B` failed to apply was still
//!    acknowledged by the level's count plus one of the old and new
//!    replicas together, so as many nodes of the ring after the move hold
//!    it as the level asked for.
//!
//! So the snapshot pass plus the pending writes cover everything: there is
//! no separate catch-up pass, because there is no window between "the
//! snapshot was taken" and "writes flow to `B`" for it to cover. Applying
//! is last-writer-wins (`storage`), so a write received both ways, or a
//! range streamed twice after a resume, lands once.

pub(crate) mod bootstrap;
pub(crate) mod cleanup;
pub(crate) mod handoff;
pub(crate) mod plan;
pub(crate) mod receiver;
pub(crate) mod sender;

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_ring::TokenRange;

/// How often a join, leave or take-over that waits for the cluster says
/// what it waits for.
pub(crate) const SAY_EVERY: Duration = Duration::from_secs(5);
/// Pause before pulling again the ranges a join or take-over could not
/// receive from any source.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Where a range's transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeState {
    /// Planned, not started.
    Pending,
    /// Receiving.
    Streaming,
    /// Received whole.
    Done,
    /// Every source failed; the bootstrap will try again.
    Failed,
}

impl RangeState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Streaming => "streaming",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
struct RangeProgress {
    range: TokenRange,
    source: String,
    state: RangeState,
    bytes: u64,
    items: u64,
    started: Option<Instant>,
    elapsed: Duration,
    last_token: Option<u64>,
}

/// Per-range progress of this node's incoming streams, for `/v1/node`.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    ranges: Mutex<Vec<RangeProgress>>,
}

impl Progress {
    /// Replaces the plan with `ranges`, all pending.
    pub fn plan(&self, ranges: impl IntoIterator<Item = TokenRange>) {
        *self.ranges.lock() = ranges
            .into_iter()
            .map(|range| RangeProgress {
                range,
                source: String::new(),
                state: RangeState::Pending,
                bytes: 0,
                items: 0,
                started: None,
                elapsed: Duration::ZERO,
                last_token: None,
            })
            .collect();
    }

    fn with(&self, range: TokenRange, f: impl FnOnce(&mut RangeProgress)) {
        if let Some(p) = self.ranges.lock().iter_mut().find(|p| p.range == range) {
            f(p);
        }
    }

    pub(crate) fn started(&self, range: TokenRange, source: &str) {
        self.with(range, |p| {
            p.state = RangeState::Streaming;
            p.source = source.to_owned();
            p.started.get_or_insert_with(Instant::now);
        });
    }

    pub(crate) fn advanced(&self, range: TokenRange, bytes: u64, items: u64, token: u64) {
        self.with(range, |p| {
            p.bytes += bytes;
            p.items += items;
            p.last_token = Some(token);
            if let Some(s) = p.started {
                p.elapsed = s.elapsed();
            }
        });
    }

    pub(crate) fn finished(&self, range: TokenRange) {
        self.with(range, |p| {
            p.state = RangeState::Done;
            if let Some(s) = p.started {
                p.elapsed = s.elapsed();
            }
        });
    }

    pub(crate) fn failed(&self, range: TokenRange) {
        self.with(range, |p| p.state = RangeState::Failed);
    }

    /// Ranges in each state, by the state's name.
    pub fn counts(&self) -> [(&'static str, usize); 4] {
        let ranges = self.ranges.lock();
        let count = |s| ranges.iter().filter(|p| p.state == s).count();
        [
            RangeState::Pending,
            RangeState::Streaming,
            RangeState::Done,
            RangeState::Failed,
        ]
        .map(|s| (s.as_str(), count(s)))
    }

    /// The progress report: per range bytes, items, state, rate and ETA.
    /// The ETA extrapolates from the share of the range's token width
    /// covered so far: keys are spread uniformly over tokens by the hash.
    pub fn report(&self) -> serde_json::Value {
        let ranges = self.ranges.lock();
        let items: Vec<serde_json::Value> = ranges
            .iter()
            .map(|p| {
                let secs = p.elapsed.as_secs_f64();
                let rate = if secs > 0.0 {
                    p.bytes as f64 / secs
                } else {
                    0.0
                };
                let done_share = match (p.state, p.last_token) {
                    (RangeState::Done, _) => 1.0,
                    (_, Some(t)) => {
                        let covered = t.wrapping_sub(p.range.start()) as f64;
                        (covered / p.range.width() as f64).clamp(0.0, 1.0)
                    }
                    _ => 0.0,
                };
                let eta = if done_share > 0.0 && done_share < 1.0 {
                    Some(secs * (1.0 - done_share) / done_share)
                } else {
                    None
                };
                serde_json::json!({
                    "start": p.range.start(),
                    "end": p.range.end(),
                    "source": p.source,
                    "state": p.state.as_str(),
                    "bytes": p.bytes,
                    "items": p.items,
                    "seconds": secs,
                    "bytes_per_second": rate,
                    "done_share": done_share,
                    "eta_seconds": eta,
                })
            })
            .collect();
        let bytes: u64 = ranges.iter().map(|p| p.bytes).sum();
        let items_total: u64 = ranges.iter().map(|p| p.items).sum();
        serde_json::json!({
            "ranges": items,
            "bytes": bytes,
            "items": items_total,
        })
    }
}
