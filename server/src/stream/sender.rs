//! The source side: `GET /internal/v1/stream?start=S&end=E[&after=HEX]`
//! streams the token range `(S, E]` of this node's engine, read from one
//! snapshot, in engine-key order, as [`wire`](super::wire) frames; `after`
//! (an engine key, hex) resumes a cut stream past the last key applied.
//!
//! A blocking task walks the snapshot and hands frames to the response body
//! through a channel of [`CHANNEL_FRAMES`] frames: when the receiver reads
//! slowly, TCP fills, the body stops polling, the channel fills and the
//! walk waits. Memory stays at a few frames whatever the range's size, and
//! the node keeps serving: the snapshot never blocks writers.

use std::ops::Bound;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use strata_ring::TokenRange;
use tokio::sync::mpsc;

use super::wire::{end_frame, FrameBuilder};
use crate::api::{ApiError, AppState};

/// Path of the stream route.
pub const STREAM_PATH: &str = "/internal/v1/stream";
/// Frames queued between the snapshot walk and the socket.
const CHANNEL_FRAMES: usize = 4;

/// The stream route's query.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Range start (exclusive).
    pub start: u64,
    /// Range end (inclusive); equal to `start` for the whole ring.
    pub end: u64,
    /// Resume after this engine key, hex.
    pub after: Option<String>,
}

/// `GET /internal/v1/stream`.
pub async fn stream(
    State(state): State<AppState>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let after = match &q.after {
        Some(hex) => {
            Some(decode_hex(hex).ok_or_else(|| ApiError::bad_request("bad_after", "not hex"))?)
        }
        None => None,
    };
    let range = TokenRange::new(q.start, q.end);
    let snapshot = state.storage.snapshot();
    let metrics = state.metrics.clone();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_FRAMES);
    // Debug, not info: a join asks each source for a few hundred ranges.
    tracing::debug!(
        start = q.start,
        end = q.end,
        resume = after.is_some(),
        "streaming a range"
    );
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
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::new(ChannelBody(rx)),
    )
        .into_response())
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

/// A response body fed by a channel: polled by hyper only when the socket
/// can take more, which is the flow control.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(http_body::Frame::data)))
    }
}

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes of a hex string; `None` if it is not hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
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

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let bytes = vec![0, 1, 0xab, 0xff];
        assert_eq!(decode_hex(&encode_hex(&bytes)).unwrap(), bytes);
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
    }
}
