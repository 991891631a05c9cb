//! The anti-entropy routes (`repair`): two internal ones that another
//! replica's repair calls, with the bodies of
//! [`peer::repair`](crate::peer::repair), and the operator's
//! `POST /admin/v1/repair`. The internal ones take a request signed under
//! the cluster secret; the operator's also an admin token
//! ([`access`](super::access)).
//!
//! # `POST /admin/v1/repair`
//!
//! Starts one repair pass of this node's ranges; an optional JSON body
//! `{"ranges": [[start, end], ...]}` limits it to the ranges that overlap
//! those. 202, or 409 with the reason (a pass is running, the node is not
//! AVAILABLE). The pass shows under `"repair"` in `GET /v1/node`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use strata_ring::TokenRange;

use super::{read_body, ApiError, AppState, BodyLimit};
use crate::peer::repair::{DigestRequest, RowsRequest, MAX_DIGEST_REQUEST, MAX_ROWS_REQUEST};

/// Path of the admin repair route.
pub const REPAIR_PATH: &str = "/admin/v1/repair";
/// Largest admin repair body: a few thousand ranges.
pub(crate) const MAX_REPAIR_REQUEST: usize = 256 * 1024;

/// `POST /internal/v1/digest`.
pub(crate) async fn digest(
    State(state): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, BodyLimit::Body(MAX_DIGEST_REQUEST)).await?;
    let request = DigestRequest::decode(&body)
        .map_err(|e| ApiError::bad_request("bad_digest", e.to_string()))?;
    let answer = state
        .repairer
        .digest(request)
        .await
        .map_err(|e| ApiError::bad_request("bad_digest", e))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        answer.encode(),
    )
        .into_response())
}

/// `POST /internal/v1/repair-rows`.
pub(crate) async fn repair_rows(
    State(state): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, BodyLimit::Body(MAX_ROWS_REQUEST)).await?;
    let request = RowsRequest::decode(&body)
        .map_err(|e| ApiError::bad_request("bad_repair_rows", e.to_string()))?;
    let answer = state
        .repairer
        .rows(request)
        .await
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response())
}

/// The admin repair body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepairBody {
    #[serde(default)]
    ranges: Vec<(u64, u64)>,
}

/// `POST /admin/v1/repair`.
pub(crate) async fn start(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, BodyLimit::Body(MAX_REPAIR_REQUEST)).await?;
    let parsed: RepairBody = if body.is_empty() {
        RepairBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_repair", e.to_string()))?
    };
    let only = (!parsed.ranges.is_empty()).then(|| {
        parsed
            .ranges
            .iter()
            .map(|&(s, e)| TokenRange::new(s, e))
            .collect::<Vec<_>>()
    });
    state
        .repairer
        .begin()
        .map_err(|reason| ApiError::new(StatusCode::CONFLICT, "cannot_repair", reason))?;
    tracing::info!(ranges = ?only, "repair requested");
    let repairer = state.repairer.clone();
    state
        .tasks
        .spawn("repair", async move { repairer.pass(only).await });
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "repairing" })),
    )
        .into_response())
}
