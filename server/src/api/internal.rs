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

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::kv::check_key;
use super::{read_body, ApiError, AppState, BodyLimit};
use crate::applier::Applier;
use crate::config::Limits;
use crate::hlc::Hlc;
use crate::peer::wire::{decode_apply, decode_apply_batch, RecordDigest};
use crate::storage::{EncodedRecord, Storage};

/// Path of the tokens route.
pub const TOKENS_PATH: &str = "/internal/v1/tokens";

/// This node's side of the replica calls (apply, apply-batch, read and
/// read-digest): what their HTTP routes and the multiplexed transport
/// (`api::mux`) do with them, on this node's engine only.
/// It holds nothing else of the node, so a test can serve replica calls
/// over the real transports without a whole node around it.
pub struct Replica {
    storage: Storage,
    applier: Applier,
    hlc: Arc<Hlc>,
    limits: Limits,
}

impl Replica {
    /// The replica side of the node whose engine is `storage`, whose
    /// replica writes go through `applier` and whose clock is `hlc`.
    pub(crate) fn new(storage: Storage, applier: Applier, hlc: Arc<Hlc>, limits: Limits) -> Self {
        Self {
            storage,
            applier,
            hlc,
            limits,
        }
    }

    /// The size limits its calls are held to.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Merges an apply body into the engine.
    pub(crate) async fn apply_one(&self, body: Bytes) -> Result<(), ApiError> {
        let (key, record) =
            decode_apply(body).map_err(|e| ApiError::bad_request("bad_apply", e.to_string()))?;
        check_key(&self.limits, &key)?;
        self.hlc.update(record.record().version);
        self.applier
            .apply(vec![(key, record)])
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Merges an apply-batch body, every entry or none.
    pub(crate) async fn apply_many(&self, body: &[u8]) -> Result<(), ApiError> {
        let entries = decode_apply_batch(body)
            .map_err(|e| ApiError::bad_request("bad_apply", e.to_string()))?;
        for e in &entries {
            check_key(&self.limits, e.user_key())?;
        }
        if let Some(v) = entries.iter().map(|e| e.record.version).max() {
            self.hlc.update(v);
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
        self.applier
            .apply(items)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The record held for `key`, tombstones included.
    pub(crate) fn read_one(&self, key: &[u8]) -> Result<Option<EncodedRecord>, ApiError> {
        check_key(&self.limits, key)?;
        self.storage
            .read_encoded(key)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The digest of the record held for `key`. Read and hashed in place,
    /// as `read_one` reads: the engine's read path does not wait on
    /// writers, and a hand-off to the blocking pool would cost more than
    /// the read.
    pub(crate) fn digest_one(&self, key: &[u8]) -> Result<Option<RecordDigest>, ApiError> {
        check_key(&self.limits, key)?;
        self.storage
            .read(key)
            .map(|record| record.as_ref().map(RecordDigest::of))
            .map_err(|e| ApiError::internal(e.to_string()))
    }
}

impl FromRef<AppState> for Arc<Replica> {
    fn from_ref(state: &AppState) -> Self {
        state.replica.clone()
    }
}

/// `POST /internal/v1/apply`.
pub async fn apply(State(replica): State<Arc<Replica>>, body: Body) -> Result<Response, ApiError> {
    let limit = replica.limits.apply_body_size();
    replica
        .apply_one(read_body(body, BodyLimit::Body(limit)).await?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /internal/v1/apply-batch`: every entry or none (a body that does
/// not decode whole applies nothing).
pub async fn apply_batch(
    State(replica): State<Arc<Replica>>,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = replica.limits.apply_batch_body_size();
    let body = read_body(body, BodyLimit::Body(limit)).await?;
    replica.apply_many(&body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /internal/v1/read`.
pub async fn read(State(replica): State<Arc<Replica>>, body: Body) -> Result<Response, ApiError> {
    let key = read_body(body, BodyLimit::Body(replica.limits.max_key_size)).await?;
    match replica.read_one(&key)? {
        Some(record) => Ok(octets(record.bytes().clone())),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// `POST /internal/v1/read-digest`.
pub async fn read_digest(
    State(replica): State<Arc<Replica>>,
    body: Body,
) -> Result<Response, ApiError> {
    let key = read_body(body, BodyLimit::Body(replica.limits.max_key_size)).await?;
    match replica.digest_one(&key)? {
        Some(digest) => Ok(octets(Bytes::copy_from_slice(&digest.encode()))),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

fn octets(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

/// `GET /internal/v1/tokens`.
pub async fn tokens(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": state.membership.self_id().as_str(),
        "tokens": state.membership.tokens(),
    }))
}
