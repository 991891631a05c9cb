//! Request ids: every client request gets one, answers with it in
//! `x-request-id`, and runs inside a `request` span that records it, so
//! every log line the request causes carries it (`--log-format json` puts
//! it under `"span": {"id": ..}`).
//!
//! An incoming `x-request-id` is kept if it is sane: 1 to 128 characters of
//! `A-Z a-z 0-9 - _ . :` (a UUID, a trace id, a load balancer's id). Any
//! other is replaced by a fresh id, 32 hex digits of a random 128-bit
//! number, rather than echoed: a client must not write arbitrary bytes
//! into the logs or the answer's headers.
//!
//! The id goes with the replica calls the request causes
//! ([`peer::trace`](crate::peer::trace)): an internal call (`/internal/*`)
//! that carries a sane one runs in a `request` span with it, so the lines it
//! logs on the replica carry the client's id too; one that carries none gets
//! no span and no fresh id (it is not a client request). With
//! `KVNODE_LOG=...,strata_server::api::request_id=debug` every request logs
//! one `answered` line with its status in its span, so one id finds a
//! write on its coordinator and on each replica (over the HTTP transport:
//! the multiplexed one does not carry the id yet).
//!
//! Cost, measured on a 1-node GET at ONE (the cheapest request, release
//! build, `wrk -c64`, a shared 2-core machine): the node's CPU per request
//! went from 10.6-11.7 µs to 12.2-13.9 µs, and to 11.5-12.2 µs with the
//! span turned off by `KVNODE_LOG=info,strata_server::api::request_id=off`
//! (the id and its header stay).

use std::future::Future;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use tracing::Instrument;

use crate::peer::trace;
pub use crate::peer::trace::REQUEST_ID;

/// Longest id taken from a client.
const MAX_LEN: usize = 128;

/// A request's id.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id if it is sane (module doc), else a fresh one.
    fn of(req: &Request) -> Self {
        match req.headers().get(&REQUEST_ID) {
            Some(given) if is_sane(given.as_bytes()) => Self(given.clone()),
            _ => Self::fresh(),
        }
    }

    fn fresh() -> Self {
        let mut id = [0u8; 32];
        // 16 bytes always fit 32 hex digits, and hex digits are always a
        // valid header value: neither fallback is ever taken.
        let _ = hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut id);
        Self(HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0")))
    }

    /// The id as text (it is ASCII by construction).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Runs `serve` on `req` within the request's span, as the current
/// request of its task ([`trace`]), and puts its id on the answer; an
/// internal call only gets the span of the id it carries. Called by the
/// router's one middleware, `edge`, rather than as a layer of its own.
pub(crate) async fn within<F, Fut>(req: Request, serve: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if req.uri().path().starts_with("/internal/") {
        let carried = req
            .headers()
            .get(&REQUEST_ID)
            .filter(|id| is_sane(id.as_bytes()))
            .map(|id| RequestId(id.clone()));
        return match carried {
            Some(id) => answered(serve(req)).instrument(span(&id)).await,
            None => serve(req).await,
        };
    }
    let id = RequestId::of(&req);
    let mut response = trace::scope(id.0.clone(), answered(serve(req)))
        .instrument(span(&id))
        .await;
    response.headers_mut().insert(REQUEST_ID.clone(), id.0);
    response
}

fn span(id: &RequestId) -> tracing::Span {
    tracing::info_span!("request", id = id.as_str())
}

/// `response`, with a debug line of its status in the request's span.
async fn answered(response: impl Future<Output = Response>) -> Response {
    let response = response.await;
    tracing::debug!(status = response.status().as_u16(), "answered");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        assert!(is_sane(b"3f2c9a1e-7b4d-4c1a-9e8f-0123456789ab"));
        assert!(is_sane(b"lb:1.2_x"));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane("é".as_bytes()));
        assert!(!is_sane(b"a\"b"));
        assert!(is_sane(&[b'a'; MAX_LEN]));
        assert!(!is_sane(&[b'a'; MAX_LEN + 1]));
        let fresh = RequestId::fresh();
        assert_eq!(fresh.as_str().len(), 32);
        assert!(is_sane(fresh.as_str().as_bytes()));
        assert_ne!(fresh.as_str(), RequestId::fresh().as_str());
    }
}
