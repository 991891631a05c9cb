//! Node-to-node routes under `/internal/`: a thin adapter over
//! [`peer::wire`](crate::peer::wire), which holds their bodies' format. They
//! act on this node's engine only (never re-routed) and require a request
//! signed under the cluster secret ([`auth::request`](crate::auth::request),
//! checked by [`access`](super::access)); anything else gets a 401.
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
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::kv::check_key;
use super::{read_body, ApiError, AppState, BodyLimit};
use crate::peer::wire::{decode_apply, decode_apply_batch, RecordDigest};
use crate::storage::EncodedRecord;

/// Path of the tokens route.
pub const TOKENS_PATH: &str = "/internal/v1/tokens";

/// `POST /internal/v1/apply`.
pub async fn apply(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, BodyLimit::Body(state.config.limits.apply_body_size())).await?;
    apply_one(&state, body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /internal/v1/apply-batch`: every entry or none (a body that does
/// not decode whole applies nothing).
pub async fn apply_batch(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(
        body,
        BodyLimit::Body(state.config.limits.apply_batch_body_size()),
    )
    .await?;
    apply_many(&state, &body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /internal/v1/read`.
pub async fn read(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let key = read_body(body, BodyLimit::Body(state.config.limits.max_key_size)).await?;
    match read_one(&state, &key)? {
        Some(record) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            record.bytes().clone(),
        )
            .into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// `POST /internal/v1/read-digest`.
pub async fn read_digest(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let key = read_body(body, BodyLimit::Body(state.config.limits.max_key_size)).await?;
    match digest_one(&state, &key)? {
        Some(digest) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            digest.encode().to_vec(),
        )
            .into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// Merges an apply body into this node's engine: the apply route's work,
/// and the multiplexed transport's (`api::mux`).
pub(crate) async fn apply_one(state: &AppState, body: Bytes) -> Result<(), ApiError> {
    let (key, record) =
        decode_apply(body).map_err(|e| ApiError::bad_request("bad_apply", e.to_string()))?;
    check_key(state, &key)?;
    state.hlc.update(record.record().version);
    state
        .applier
        .apply(vec![(key, record)])
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Merges an apply-batch body, every entry or none: the apply-batch route's
/// work, and the multiplexed transport's.
pub(crate) async fn apply_many(state: &AppState, body: &[u8]) -> Result<(), ApiError> {
    let entries =
        decode_apply_batch(body).map_err(|e| ApiError::bad_request("bad_apply", e.to_string()))?;
    for e in &entries {
        check_key(state, e.user_key())?;
    }
    if let Some(v) = entries.iter().map(|e| e.record.version).max() {
        state.hlc.update(v);
    }
    let items = entries
        .iter()
        .map(|e| {
            (
                Bytes::copy_from_slice(e.user_key()),
                EncodedRecord::from(&e.record),
            )
        })
        .collect();
    state
        .applier
        .apply(items)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The record this node holds for `key`, tombstones included: the read
/// route's work, and the multiplexed transport's.
pub(crate) fn read_one(state: &AppState, key: &[u8]) -> Result<Option<EncodedRecord>, ApiError> {
    check_key(state, key)?;
    state
        .storage
        .read_encoded(key)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The digest of the record this node holds for `key`: the read-digest
/// route's work, and the multiplexed transport's. Read and hashed in place,
/// as `read_one` reads: the engine's read path does not wait on writers,
/// and a hand-off to the blocking pool would cost more than the read.
pub(crate) fn digest_one(state: &AppState, key: &[u8]) -> Result<Option<RecordDigest>, ApiError> {
    check_key(state, key)?;
    state
        .storage
        .read(key)
        .map(|record| record.as_ref().map(RecordDigest::of))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /internal/v1/tokens`.
pub async fn tokens(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": state.membership.self_id().as_str(),
        "tokens": state.membership.tokens(),
    }))
}
