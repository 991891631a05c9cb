//! `GET /internal/v1/stream?start=S&end=E[&after=HEX]`: the token range
//! `(S, E]` of this node's engine as [`frames`](crate::peer::frames), read
//! from one snapshot by [`crate::stream::sender`]; `after` (an
//! engine key, hex) resumes a cut stream past the last key applied.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use strata_ring::TokenRange;
use tokio::sync::mpsc;

use super::{ApiError, AppState};
use crate::stream::sender;

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
            Some(hex::decode(hex).map_err(|_| ApiError::bad_request("bad_after", "not hex"))?)
        }
        None => None,
    };
    // Debug, not info: a join asks each source for a few hundred ranges.
    tracing::debug!(
        start = q.start,
        end = q.end,
        resume = after.is_some(),
        "streaming a range"
    );
    let frames = sender::frames_of(
        state.storage.snapshot(),
        TokenRange::new(q.start, q.end),
        after,
        state.metrics.clone(),
    );
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::new(ChannelBody(frames)),
    )
        .into_response())
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
