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
//! Merged by last-writer-wins: 204 whether it was newer or stale.
//!
//! # `POST /internal/v1/read`
//!
//! Body: the key bytes. 200 with the record (storage's layout, tombstones
//! included), or 404 if this node holds nothing for the key.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::kv::check_key;
use super::{read_body, ApiError, AppState};
use crate::storage::{CodecError, Record, RECORD_HEADER_LEN};

/// Path of the apply route.
pub const APPLY_PATH: &str = "/internal/v1/apply";
/// Path of the read route.
pub const READ_PATH: &str = "/internal/v1/read";

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

/// Encodes an apply body.
pub fn encode_apply(key: &[u8], record: &Record) -> Vec<u8> {
    let record = record.encode();
    let mut out = Vec::with_capacity(4 + key.len() + record.len());
    // Keys are bounded by max_key_size (checked on entry, far below 4 GiB).
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&record);
    out
}

/// Decodes an apply body into key and record.
pub fn decode_apply(body: &[u8]) -> Result<(&[u8], Record), WireError> {
    let truncated = WireError::Truncated { len: body.len() };
    let (len, rest) = body.split_first_chunk::<4>().ok_or(truncated.clone())?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| truncated.clone())?;
    if rest.len() < len {
        return Err(truncated);
    }
    let (key, record) = rest.split_at(len);
    Ok((key, Record::decode(record)?))
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
    let limits = state.config.limits;
    let body = read_body(
        body,
        4 + limits.max_key_size + RECORD_HEADER_LEN + limits.max_value_size,
    )
    .await?;
    let (key, record) =
        decode_apply(&body).map_err(|e| ApiError::bad_request("bad_apply", e.to_string()))?;
    check_key(&state, key)?;
    state.hlc.update(record.version);
    let (storage, key) = (state.storage.clone(), key.to_vec());
    tokio::task::spawn_blocking(move || storage.apply(&key, &record))
        .await
        .map_err(|e| ApiError::internal(format!("apply task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /internal/v1/read`.
pub async fn read(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let key = read_body(body, state.config.limits.max_key_size).await?;
    check_key(&state, &key)?;
    match state.storage.read(&key) {
        Ok(Some(record)) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            record.encode(),
        )
            .into_response()),
        Ok(None) => Ok(StatusCode::NOT_FOUND.into_response()),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn apply_bodies_round_trip() {
        let record = Record::value(42, b"v".to_vec());
        let body = encode_apply(b"key", &record);
        let (key, decoded) = decode_apply(&body).unwrap();
        assert_eq!((key, decoded), (&b"key"[..], record));
    }

    #[test]
    fn bad_apply_bodies_are_errors() {
        let body = encode_apply(b"key", &Record::tombstone(1));
        for len in 0..body.len() {
            assert!(decode_apply(body.get(..len).unwrap()).is_err(), "len {len}");
        }
        let mut huge = body.clone();
        huge.splice(0..4, u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_apply(&huge),
            Err(WireError::Truncated { .. })
        ));
    }
}
