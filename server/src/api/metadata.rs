//! Where things are, in the routes the storage service this project grew
//! from offered (`/ping`, `/v1/gossip`, `/v1/metadata/node`,
//! `/v1/metadata/key`), answered from this node's gossip view. Each document
//! is typed here; the README's HTTP API section shows them.
//!
//! `/ping` is open like `/health`; the others name nodes and their
//! addresses, so they take what `/v1/cluster` takes (an `admin` token when
//! the node has a tokens file, or a request signed under the cluster
//! secret: a joining node asks a seed's `/v1/metadata/node` that way).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::cluster::status;
use super::kv::check_key;
use super::{ApiError, AppState};
pub(crate) use crate::join::{NodeMetadata, NODE_PATH};
use crate::view::MemberInfo;

/// One member in `GET /v1/gossip`.
#[derive(Debug, Serialize)]
pub(crate) struct GossipMember {
    id: String,
    http_addr: String,
    /// `null` for a member whose gossip record has aged out.
    gossip_addr: Option<String>,
    state: &'static str,
    /// The failure detector's verdict: `UP` or `DOWN`.
    status: &'static str,
    /// Tokens it owns on the ring (each starts one range).
    tokens: usize,
    /// Share of the key space it replicates.
    ownership: Option<f64>,
    /// Its run's start time, ms since the epoch.
    generation: u64,
    /// Ms since its heartbeat last moved (0 for this node).
    last_update_ms: Option<u64>,
}

/// `GET /v1/gossip`.
#[derive(Debug, Serialize)]
pub(crate) struct Gossip {
    #[serde(rename = "self")]
    self_id: String,
    cluster_id: String,
    members: Vec<GossipMember>,
}

/// One replica in `GET /v1/metadata/key`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyReplica {
    id: String,
    http_addr: String,
    state: &'static str,
    status: &'static str,
    /// Whether reads go to it (up, owning, engine healthy).
    readable: bool,
}

/// `GET /v1/metadata/key?key=K`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyPlacement {
    key: String,
    token: u64,
    replication_factor: usize,
    /// Its preference list, in ring order (the first owns its token).
    replicas: Vec<KeyReplica>,
    /// Nodes receiving its range that get its writes too.
    pending: Vec<KeyReplica>,
}

/// `GET /ping`.
pub async fn ping() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "message": "pong" }))
}

/// `GET /v1/metadata/node`.
pub async fn node(State(state): State<AppState>) -> Json<NodeMetadata> {
    let config = &state.config;
    Json(NodeMetadata {
        id: config.node_id.clone(),
        http_addr: config.advertise,
        gossip_addr: config.gossip_advertise,
        state: state.membership.state().as_str().to_owned(),
        cluster_id: config.cluster_id.clone(),
        replication_factor: config.replication_factor.get(),
        vnodes: config.vnodes,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// `GET /v1/gossip`: every member this node's view holds.
pub async fn gossip(State(state): State<AppState>) -> Json<Gossip> {
    let view = state.membership.view();
    let rf = state.config.replication_factor;
    let ownership = view.ring.as_ref().map(|r| r.ownership(rf));
    let me = state.membership.self_id();
    let members = view
        .members
        .values()
        .map(|m| {
            let (gossip_addr, last_update_ms) = if m.id == *me {
                (Some(state.config.gossip_advertise), Some(0))
            } else {
                let vitals = state.membership.vitals(&m.id);
                (
                    vitals.as_ref().map(|v| v.gossip_addr),
                    vitals.map(|v| u64::try_from(v.last_heard.as_millis()).unwrap_or(u64::MAX)),
                )
            };
            GossipMember {
                id: m.id.to_string(),
                http_addr: m.http_addr.to_string(),
                gossip_addr: gossip_addr.map(|a| a.to_string()),
                state: m.state.as_str(),
                status: status(m.live),
                tokens: m.tokens.len(),
                ownership: ownership.as_ref().and_then(|o| o.get(&m.id)),
                generation: m.generation,
                last_update_ms,
            }
        })
        .collect();
    Json(Gossip {
        self_id: me.to_string(),
        cluster_id: state.config.cluster_id.clone(),
        members,
    })
}

/// The query of `/v1/metadata/key`.
#[derive(Debug, Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// `GET /v1/metadata/key?key=K`: the key's replicas in ring order.
pub async fn key(State(state): State<AppState>, uri: Uri) -> Result<Json<KeyPlacement>, ApiError> {
    let query: KeyQuery = serde_urlencoded::from_str(uri.query().unwrap_or_default())
        .map_err(|e| ApiError::bad_request("bad_query", format!("query string: {e}")))?;
    let Some(key) = query.key else {
        return Err(ApiError::bad_request(
            "bad_key",
            "GET /v1/metadata/key needs ?key=K",
        ));
    };
    check_key(&state.config.limits, key.as_bytes())?;
    let view = state.membership.view();
    let rf = state.config.replication_factor;
    let placement = KeyPlacement {
        token: strata_ring::token(key.as_bytes()),
        replication_factor: rf.get(),
        replicas: view
            .replicas(key.as_bytes(), rf)
            .into_iter()
            .map(|m| replica(m))
            .collect(),
        pending: view
            .pending(key.as_bytes(), rf)
            .into_iter()
            .map(|m| replica(m))
            .collect(),
        key,
    };
    Ok(Json(placement))
}

fn replica(m: &MemberInfo) -> KeyReplica {
    KeyReplica {
        id: m.id.to_string(),
        http_addr: m.http_addr.to_string(),
        state: m.state.as_str(),
        status: status(m.live),
        readable: m.readable(),
    }
}
