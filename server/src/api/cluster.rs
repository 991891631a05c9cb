//! Cluster and node introspection: `GET /v1/cluster`, `GET /v1/node`,
//! `GET /health` (the process answers), `GET /ready` (this node is
//! AVAILABLE), `GET /metrics` (Prometheus text), and
//! the operator's routes, each taking an admin token or a request signed
//! under the cluster secret ([`access`](super::access)):
//! `POST /admin/v1/decommission` (this node hands its ranges over and
//! leaves; 202, or 409 with the reason),
//! `POST /admin/v1/cleanup` (this node drops the items it does not
//! replicate; 202, or 409 with the reason),
//! `POST /admin/v1/compact` (this node compacts its whole engine, purging
//! the tombstones past the grace; 200 once done) and
//! `POST /admin/v1/removenode/{id}` (the cluster removes the DOWN member
//! `id` for good, see [`removal`](crate::view::removal); 202, or 409 with
//! the reason).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::membership::NodeState;
use crate::stream::handoff;
use crate::stream::plan::waiting_for;

/// Path of the decommission route.
pub const DECOMMISSION_PATH: &str = "/admin/v1/decommission";
/// Path of the clean-up route.
pub const CLEANUP_PATH: &str = "/admin/v1/cleanup";
/// Path of the compaction route.
pub const COMPACT_PATH: &str = "/admin/v1/compact";
/// Path of the removenode route; the member's id follows, as one segment.
pub const REMOVENODE_PATH: &str = "/admin/v1/removenode";

/// One member in `/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct MemberReport {
    id: String,
    state: &'static str,
    /// `UP` or `DOWN`, as this node's failure detector sees it.
    status: &'static str,
    http_addr: String,
    tokens: usize,
    /// Fraction of the token space it holds a replica of (sums to
    /// `min(rf, ring members)` over the ring); `null` when not in the ring.
    ownership: Option<f64>,
    /// Why its engine refuses writes, as it publishes; `null` when healthy.
    degraded: Option<String>,
}

/// `GET /v1/cluster`.
pub async fn cluster(State(state): State<AppState>) -> Json<serde_json::Value> {
    let view = state.membership.view();
    let rf = state.config.replication_factor;
    let ownership = view.ring.as_ref().map(|r| r.ownership(rf));
    let members: Vec<MemberReport> = view
        .members
        .values()
        .map(|m| MemberReport {
            id: m.id.to_string(),
            state: m.state.as_str(),
            status: if m.live { "UP" } else { "DOWN" },
            http_addr: m.http_addr.to_string(),
            tokens: m.tokens.len(),
            ownership: ownership.as_ref().and_then(|o| o.get(&m.id)),
            degraded: m.degraded.clone(),
        })
        .collect();
    // Who still has to take a removed member's ranges over.
    let removed: Vec<serde_json::Value> = view
        .removed
        .values()
        .map(|r| {
            let waiting: Vec<String> = r
                .rings(view.ring.as_ref())
                .map(|(before, after)| {
                    waiting_for(&view.members, &before, &after, rf, &r.removal.incarnation())
                })
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            serde_json::json!({
                "id": r.removal.id.as_str(),
                "removal": r.removal.to_string(),
                "state": r.last.state.as_str(),
                "status": if r.last.live { "UP" } else { "DOWN" },
                "waiting_for": waiting,
            })
        })
        .collect();
    Json(serde_json::json!({
        "cluster_id": state.config.cluster_id,
        "coordinator": view.self_id.as_str(),
        "replication_factor": rf.get(),
        "members": members,
        "removed": removed,
    }))
}

/// `GET /v1/node`: this node, with its engine's report under `"engine"`.
pub async fn node(State(state): State<AppState>) -> Json<serde_json::Value> {
    let view = state.membership.view();
    let rf = state.config.replication_factor;
    let me = state.membership.self_id();
    let ownership = view.ring.as_ref().and_then(|r| r.ownership(rf).get(me));
    Json(serde_json::json!({
        "id": me.as_str(),
        "state": state.membership.state().as_str(),
        "http_addr": state.config.advertise.to_string(),
        "gossip_addr": state.config.gossip_advertise.to_string(),
        "data_dir": state.config.data_dir.display().to_string(),
        "tokens": state.membership.tokens().len(),
        "streaming": state.progress.report(),
        "cleanup": state.cleaner.status(),
        "repair": state.repairer.report(),
        "tasks": state.tasks.report(),
        "hints": state.hints.pending(),
        "degraded": state.storage.write_error(),
        "ownership": ownership,
        "version": env!("CARGO_PKG_VERSION"),
        "client_auth": client_auth(&state),
        "engine": engine_json(&state.storage.stats()),
    }))
}

/// Whether clients need tokens here: an open node says so plainly.
fn client_auth(state: &AppState) -> serde_json::Value {
    match &state.config.tokens {
        Some(tokens) => serde_json::json!({ "mode": "tokens", "tokens": tokens.len() }),
        None => serde_json::json!({
            "mode": "open",
            "warning": "no --auth-tokens-file: anyone who reaches this port can read, write and delete every key",
        }),
    }
}

fn engine_json(stats: &strata_engine::Stats) -> serde_json::Value {
    let levels: Vec<serde_json::Value> = stats
        .levels
        .iter()
        .enumerate()
        .map(|(level, l)| {
            serde_json::json!({
                "level": level,
                "tables": l.tables,
                "bytes": l.bytes,
                "score": l.score,
                "written_bytes": l.written_bytes,
                "compactions": l.compactions,
            })
        })
        .collect();
    serde_json::json!({
        "levels": levels,
        "user_bytes_written": stats.user_bytes_written,
        "wal_bytes_written": stats.wal_bytes_written,
        "bytes_flushed": stats.bytes_flushed,
        "bytes_compacted_read": stats.bytes_compacted_read,
        "bytes_compacted_written": stats.bytes_compacted_written,
        "write_amplification": stats.write_amplification(),
        "flushes": stats.flushes,
        "compactions": stats.compactions,
        "stall_stops": stats.stall_stops,
        "stall_stop_seconds": stats.stall_stop_time.as_secs_f64(),
        "stall_slowdowns": stats.stall_slowdowns,
        "bloom_checks": stats.bloom_checks,
        "bloom_negatives": stats.bloom_negatives,
        "bloom_false_positives": stats.bloom_false_positives,
        "memtable_bytes": stats.memtable_bytes,
        "immutable_memtables": stats.immutable_memtables,
        "background_error": stats.background_error,
    })
}

/// `GET /health`: 200 while the process serves HTTP.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: 200 only when this node is AVAILABLE and its engine takes
/// writes.
pub async fn ready(State(state): State<AppState>) -> Response {
    let node_state = state.membership.state();
    if let Some(reason) = state.storage.write_error() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded",
            format!("the engine refuses writes: {reason}"),
        )
        .into_response();
    }
    if node_state == NodeState::Available {
        Json(serde_json::json!({ "status": "ready", "state": node_state.as_str() })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("node is {}", node_state.as_str()),
        )
        .into_response()
    }
}

/// `GET /metrics`: Prometheus text exposition, the engine's statistics included.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .encode()
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `POST /admin/v1/decommission`: starts handing this node's ranges over;
/// the node stops once it is LEFT.
pub async fn decommission(State(state): State<AppState>) -> Result<Response, ApiError> {
    handoff::begin(&state.membership)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_decommission", e.to_string()))?;
    tracing::info!("decommission requested");
    state.tasks.spawn(
        "leave",
        handoff::leave(
            state.membership.clone(),
            state.config.clone(),
            crate::marker::marker_path(&state.config),
            state.stop.clone(),
        ),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "leaving" })),
    )
        .into_response())
}

/// `POST /admin/v1/removenode/{id}`: removes the DOWN member `id` for good.
/// Its surviving replicas re-replicate its ranges; `GET /v1/cluster` lists
/// under `"removed"` the nodes still pulling them.
pub async fn removenode(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let removal = state
        .membership
        .remove(&strata_ring::NodeId::from(id))
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_remove", e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "removed", "removal": removal.to_string() })),
    )
        .into_response())
}

/// `POST /admin/v1/cleanup`: starts a clean-up pass over the current ring;
/// its outcome shows under `"cleanup"` in `GET /v1/node`.
pub async fn cleanup(State(state): State<AppState>) -> Result<Response, ApiError> {
    state
        .cleaner
        .start_manual(&state.tasks)
        .map_err(|reason| ApiError::new(StatusCode::CONFLICT, "cannot_clean_up", reason))?;
    tracing::info!("clean-up requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "cleaning" })),
    )
        .into_response())
}

/// `POST /admin/v1/compact`: compacts this node's engine now, rather than
/// when the tree's shape calls for it, and answers once it is done with
/// the tombstones purged by this node's engine since it started.
pub async fn compact(State(state): State<AppState>) -> Result<Response, ApiError> {
    tracing::info!("compaction requested");
    let storage = state.storage.clone();
    tokio::task::spawn_blocking(move || storage.compact())
        .await
        .map_err(|e| ApiError::internal(format!("compaction task: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(serde_json::json!({
        "status": "compacted",
        "tombstones_purged": state.storage.stats().compaction_filter_removed,
    }))
    .into_response())
}
