//! Cluster and node introspection: `GET /v1/cluster`, `GET /v1/ring`
//! ([`report`](super::report) has both documents), `GET /v1/node`,
//! `GET /health` (the process answers; `GET /ping` is its twin in
//! [`metadata`](super::metadata)), `GET /ready` (this node can serve
//! QUORUM), `GET /metrics` (Prometheus text), and
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

use super::report::{ClusterReport, MemberReport, RemovedReport, RingReport, RingToken};
use super::{ApiError, AppState};
use crate::membership::ring_digest;
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

/// `GET /v1/cluster`.
pub async fn cluster(State(state): State<AppState>) -> Json<ClusterReport> {
    let view = state.membership.view();
    let rf = state.config.replication_factor;
    let ownership = view.ring.as_ref().map(|r| r.ownership(rf));
    let me = state.membership.self_id();
    let now_ms = unix_ms();
    let members = view
        .members
        .values()
        .map(|m| {
            let (version, load_bytes, last_heard_ms) = if m.id == *me {
                (
                    Some(env!("CARGO_PKG_VERSION").to_owned()),
                    Some(state.storage.disk_usage().total()),
                    Some(0),
                )
            } else {
                let vitals = state.membership.vitals(&m.id);
                (
                    vitals.as_ref().and_then(|v| v.version.clone()),
                    vitals.as_ref().and_then(|v| v.load),
                    vitals.map(|v| u64::try_from(v.last_heard.as_millis()).unwrap_or(u64::MAX)),
                )
            };
            MemberReport {
                id: m.id.to_string(),
                state: m.state.as_str().to_owned(),
                status: status(m.live).to_owned(),
                http_addr: m.http_addr.to_string(),
                tokens: m.tokens.len(),
                ownership: ownership.as_ref().and_then(|o| o.get(&m.id)),
                degraded: m.degraded.clone(),
                version,
                load_bytes,
                uptime_secs: m.live.then(|| now_ms.saturating_sub(m.generation) / 1000),
                last_heard_ms,
            }
        })
        .collect();
    // Who still has to take a removed member's ranges over.
    let removed = view
        .removed
        .values()
        .map(|r| RemovedReport {
            id: r.removal.id.to_string(),
            removal: r.removal.to_string(),
            state: r.last.state.as_str().to_owned(),
            status: status(r.last.live).to_owned(),
            waiting_for: r
                .rings(view.ring.as_ref())
                .map(|(before, after)| {
                    waiting_for(&view.members, &before, &after, rf, &r.removal.incarnation())
                })
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect();
    Json(ClusterReport {
        cluster_id: state.config.cluster_id.clone(),
        coordinator: view.self_id.to_string(),
        replication_factor: rf.get(),
        members,
        removed,
    })
}

/// `GET /v1/ring`.
pub async fn ring(State(state): State<AppState>) -> Json<RingReport> {
    let view = state.membership.view();
    let mut tokens: Vec<RingToken> = view
        .ring
        .iter()
        .flat_map(|ring| {
            ring.members().iter().flat_map(move |m| {
                m.tokens
                    .iter()
                    // A token two members claim belongs to one of them only.
                    .filter(move |&&t| *ring.token_owner(t) == m.id)
                    .map(move |&token| RingToken {
                        token,
                        owner: m.id.to_string(),
                    })
            })
        })
        .collect();
    tokens.sort_by_key(|t| t.token);
    tokens.dedup_by_key(|t| t.token);
    Json(RingReport {
        ring_digest: ring_digest(view.ring.as_ref()),
        replication_factor: state.config.replication_factor.get(),
        tokens,
    })
}

/// How a failure detector verdict reads in reports.
pub(crate) fn status(live: bool) -> &'static str {
    if live {
        "UP"
    } else {
        "DOWN"
    }
}

/// Milliseconds since the Unix epoch, the unit of gossip generations.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        "snapshot": state.snapshots.status(),
        "tasks": state.tasks.report(),
        "hints": state.hints.pending(),
        "degraded": state.storage.write_error(),
        "ownership": ownership,
        "version": env!("CARGO_PKG_VERSION"),
        "client_auth": client_auth(&state),
        "uptime_secs": unix_ms().saturating_sub(state.membership.generation()) / 1000,
        "disk": state.storage.disk_usage(),
        "not_ready": not_ready(&state),
        "join": state.join.report(),
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
        "block_cache_hits": stats.block_cache_hits,
        "block_cache_misses": stats.block_cache_misses,
        "block_cache_bytes": stats.block_cache_bytes,
        "block_cache_capacity": stats.block_cache_capacity,
        "blob_files": stats.blob_files,
        "blob_bytes": stats.blob_bytes,
        "blob_garbage_bytes": stats.blob_garbage_bytes,
        "memtable_bytes": stats.memtable_bytes,
        "immutable_memtables": stats.immutable_memtables,
        "background_error": stats.background_error,
    })
}

/// `GET /health`: 200 while the process serves HTTP.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: 200 only when this node's engine takes writes and it can
/// serve QUORUM for its ranges ([`readiness`](crate::readiness)).
pub async fn ready(State(state): State<AppState>) -> Response {
    if let Some(reason) = state.storage.write_error() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded",
            format!("the engine refuses writes: {reason}"),
        )
        .into_response();
    }
    let node_state = state.membership.state();
    match not_ready(&state) {
        None => Json(serde_json::json!({ "status": "ready", "state": node_state.as_str() }))
            .into_response(),
        Some(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response()
        }
    }
}

/// Why this node is not ready, if it is not (the engine's health apart).
/// A joining node that has heard no seed yet says that, and for how long.
fn not_ready(state: &AppState) -> Option<String> {
    if state.membership.state() == crate::view::NodeState::Joining {
        if let Some(waiting) = state.join.waiting() {
            return Some(waiting);
        }
    }
    state
        .readiness
        .check(
            state.membership.state(),
            &state.membership.view(),
            state.config.replication_factor,
        )
        .err()
        .map(|e| e.to_string())
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
            crate::marker::marker_path(&state.config.data_dir),
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
