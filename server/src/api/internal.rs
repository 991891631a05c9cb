//! Node-to-node routes under `/internal/`, and their wire format. They act on
//! this node's engine only (never re-routed) and require
//! `Authorization: Bearer <cluster secret>`; anything else gets a 401.
//!
//! # `POST /internal/v1/apply`
//!
//! ```text
//! +------------------+-----------+-------------------------------+
//! | key length u32 BE| key bytes | record (storage's layout)     |
//! +------------------+-----------+-------------------------------+
//! ```
//!
//! Merged by last-writer-wins: 204 whether it was newer or stale. The
//! record part is stored as it arrives (no decode-and-re-encode), and a
//! coordinator encodes one body per write for all its replicas, its own
//! included.
//!
//! # `POST /internal/v1/read`
//!
//! Body: the key bytes. 200 with the record (storage's layout, tombstones
//! included), or 404 if this node holds nothing for the key.
//!
//! # `GET /internal/v1/tokens`
//!
//! This node's id and the tokens it publishes, as JSON:
//! `{"id": "n1", "tokens": [u64, ...]}`. No node calls it; it lets an
//! operator or a test build the ring (`strata_ring::Ring::new`) from each
//! member's own word and check which node should hold which key, without
//! trusting any node's view. Behind the secret because gossip hides the
//! membership from onlookers too.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::kv::check_key;
use super::{read_body, ApiError, AppState, BodyLimit};
use crate::storage::{CodecError, EncodedRecord, Record};

/// Path of the apply route.
pub const APPLY_PATH: &str = "/internal/v1/apply";
/// Path of the read route.
pub const READ_PATH: &str = "/internal/v1/read";
/// Path of the tokens route.
pub const TOKENS_PATH: &str = "/internal/v1/tokens";

/// Why an apply body does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than its key length says.
    #[error("apply body truncated: {len} bytes")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The record part is bad.
    #[error("apply record: {0}")]
    Record(#[from] CodecError),
}

/// Encodes an apply body: the one copy of the value a write makes on its
/// way from the client's body to the replicas. Cloning the result shares it.
pub fn encode_apply(key: &[u8], record: &Record) -> Bytes {
    let mut out = Vec::with_capacity(4 + key.len() + record.encoded_len());
    // Keys are bounded by max_key_size (checked on entry, far below 4 GiB).
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    record.encode_into(&mut out);
    Bytes::from(out)
}

/// Decodes an apply body into key and record, both slices of `body`.
pub fn decode_apply(body: Bytes) -> Result<(Bytes, EncodedRecord), WireError> {
    let truncated = WireError::Truncated { len: body.len() };
    let (len, rest) = body.split_first_chunk::<4>().ok_or(truncated.clone())?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| truncated.clone())?;
    if rest.len() < len {
        return Err(truncated);
    }
    let key = body.slice(4..4 + len);
    let record = EncodedRecord::decode(body.slice(4 + len..))?;
    Ok((key, record))
}

/// Refuses a request without the cluster secret.
pub async fn require_secret(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| state.config.secret.verify_bearer(v.as_bytes()));
    if !authorized {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "internal routes need the cluster secret",
        )
        .into_response();
    }
    next.run(req).await
}

/// `POST /internal/v1/apply`.
pub async fn apply(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, BodyLimit::Body(state.config.limits.apply_body_size())).await?;
    let (key, record) =
        decode_apply(body).map_err(|e| ApiError::bad_request("bad_apply", e.to_string()))?;
    check_key(&state, &key)?;
    state.hlc.update(record.record().version);
    let storage = state.storage.clone();
    tokio::task::spawn_blocking(move || storage.apply_encoded(&key, &record))
        .await
        .map_err(|e| ApiError::internal(format!("apply task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /internal/v1/read`.
pub async fn read(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let key = read_body(body, BodyLimit::Body(state.config.limits.max_key_size)).await?;
    check_key(&state, &key)?;
    match state.storage.read_encoded(&key) {
        Ok(Some(record)) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            record.bytes().clone(),
        )
            .into_response()),
        Ok(None) => Ok(StatusCode::NOT_FOUND.into_response()),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// `GET /internal/v1/tokens`.
pub async fn tokens(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": state.membership.self_id().as_str(),
        "tokens": state.membership.tokens(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn apply_bodies_round_trip() {
        let record = Record::value(42, b"v".to_vec());
        let body = encode_apply(b"key", &record);
        let (key, decoded) = decode_apply(body.clone()).unwrap();
        assert_eq!((&key[..], decoded.record()), (&b"key"[..], &record));
        // The stored bytes are the tail of the body, not a copy of it.
        assert_eq!(decoded.bytes().as_ref(), &body[4 + 3..]);
        assert_eq!(decoded.bytes().as_ptr(), body[4 + 3..].as_ptr());
    }

    #[test]
    fn bad_apply_bodies_are_errors() {
        let body = encode_apply(b"key", &Record::tombstone(1));
        for len in 0..body.len() {
            assert!(decode_apply(body.slice(..len)).is_err(), "len {len}");
        }
        let mut huge = body.to_vec();
        huge.splice(0..4, u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_apply(huge.into()),
            Err(WireError::Truncated { .. })
        ));
    }
}
