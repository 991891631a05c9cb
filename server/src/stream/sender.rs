//! The source side of a range stream: walks one engine snapshot of a token
//! range `(S, E]`, in engine-key order, and hands it out as
//! [`frames`](crate::peer::frames), resuming past an engine key when asked.
//! The route that serves it is `api::stream`.
//!
//! A blocking task walks the snapshot and hands frames on through a channel
//! of [`CHANNEL_FRAMES`] frames: when the receiver reads slowly, TCP fills,
//! the body stops polling, the channel fills and the walk waits. Memory
//! stays at a few frames whatever the range's size, and the node keeps
//! serving: the snapshot never blocks writers.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use strata_engine::Snapshot;
use strata_ring::TokenRange;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::peer::frames::{end_frame, FrameBuilder};

/// Frames queued between the snapshot walk and the socket.
const CHANNEL_FRAMES: usize = 4;

/// The frames of `range` in `snapshot`, past the engine key `after` when
/// given, ending with an end frame; an error item (and no end frame) if the
/// snapshot cannot be read, so that the receiver sees a cut stream.
pub fn frames_of(
    snapshot: Snapshot,
    range: TokenRange,
    after: Option<Vec<u8>>,
    metrics: Arc<Metrics>,
) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_FRAMES);
    tokio::task::spawn_blocking(move || {
        let mut builder = FrameBuilder::default();
        let mut sent = 0u64;
        let send = |frame: Vec<u8>, entries: u64| {
            metrics.stream_sent(frame.len(), entries);
            // Fails only when the receiver hung up: stop walking.
            tx.blocking_send(Ok(Bytes::from(frame))).is_ok()
        };
        for (lo, hi) in engine_bounds(range, after.as_deref()) {
            for item in snapshot.range::<Vec<u8>>((lo, hi)) {
                match item {
                    Ok((key, value)) => {
                        builder.push(&key, &value);
                        sent += 1;
                        if builder.is_full() {
                            let n = builder.entries();
                            if !send(builder.take(), n) {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // No end frame: the receiver sees a cut stream and
                        // tries again, or another replica.
                        tracing::error!(error = %e, "stream source read failed");
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                }
            }
        }
        let n = builder.entries();
        if n > 0 && !send(builder.take(), n) {
            return;
        }
        send(end_frame(sent), 0);
    });
    rx
}

/// Lower and upper bounds of an engine key range.
pub type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The engine key bounds of `range`, in ascending order (a wrapping range is
/// two spans: low tokens first), each starting past `after` when given.
pub fn engine_bounds(range: TokenRange, after: Option<&[u8]>) -> Vec<KeyBounds> {
    range
        .spans()
        .filter_map(|span| {
            let lo_key = span.start().to_be_bytes().to_vec();
            let hi = match span.end().checked_add(1) {
                Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
                None => Bound::Unbounded,
            };
            let lo = match after {
                Some(a) if a >= lo_key.as_slice() => {
                    if let Bound::Excluded(h) = &hi {
                        if a >= h.as_slice() {
                            return None;
                        }
                    }
                    Bound::Excluded(a.to_vec())
                }
                _ => Bound::Included(lo_key),
            };
            Some((lo, hi))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn be(t: u64) -> Vec<u8> {
        t.to_be_bytes().to_vec()
    }

    #[test]
    fn a_plain_range_is_one_span_from_past_its_start() {
        let b = engine_bounds(TokenRange::new(10, 20), None);
        assert_eq!(b, [(Bound::Included(be(11)), Bound::Excluded(be(21)))]);
    }

    #[test]
    fn a_wrapping_range_is_low_tokens_then_high_tokens() {
        let b = engine_bounds(TokenRange::new(u64::MAX - 5, 3), None);
        assert_eq!(
            b,
            [
                (Bound::Included(be(0)), Bound::Excluded(be(4))),
                (Bound::Included(be(u64::MAX - 4)), Bound::Unbounded),
            ]
        );
    }

    #[test]
    fn resuming_skips_what_was_sent() {
        let range = TokenRange::new(u64::MAX - 5, 3);
        let mut after = be(u64::MAX - 1);
        after.extend_from_slice(b"k");
        let b = engine_bounds(range, Some(&after));
        assert_eq!(b, [(Bound::Excluded(after), Bound::Unbounded)]);
        let mid = be(2);
        let b = engine_bounds(range, Some(&mid));
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, Bound::Excluded(mid));
    }
}
