//! The documents of `GET /v1/cluster` and `GET /v1/ring`, typed once: the
//! node serializes them and `kvnode status` and `kvnode ring` deserialize
//! them, so the two sides cannot drift apart.
//!
//! Plain data: every field is public and nothing is checked on the way in,
//! since a report is only ever shown to people.

use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`: the cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The configured cluster id.
    pub cluster_id: String,
    /// The id of the node that answered.
    pub coordinator: String,
    /// Copies of each item.
    pub replication_factor: usize,
    /// Every member in its view, by id.
    pub members: Vec<MemberReport>,
    /// Members removed for good (`kvnode removenode`).
    pub removed: Vec<RemovedReport>,
}

/// One member in `/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Node id.
    pub id: String,
    /// Its published state: `JOINING`, `BOOTSTRAPPING`, `AVAILABLE`,
    /// `LEAVING` or `LEFT`.
    pub state: String,
    /// `UP` or `DOWN`, as the answering node's failure detector sees it.
    pub status: String,
    /// Advertised HTTP address.
    pub http_addr: String,
    /// How many ring tokens it holds.
    pub tokens: usize,
    /// Fraction of the token space it holds a replica of (sums to
    /// `min(rf, ring members)` over the ring); `null` when not in the ring.
    pub ownership: Option<f64>,
    /// Why its engine refuses writes, as it publishes; `null` when healthy.
    pub degraded: Option<String>,
    /// Its `kvnode` version; `null` if it does not publish one.
    #[serde(default)]
    pub version: Option<String>,
    /// Its table + WAL bytes on disk, as last published (every few
    /// seconds); `null` before its first.
    #[serde(default)]
    pub load_bytes: Option<u64>,
    /// Seconds since it started (its gossip generation); `null` while DOWN.
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    /// Milliseconds since the answering node last heard its heartbeat (0
    /// for the answering node); `null` if never.
    #[serde(default)]
    pub last_heard_ms: Option<u64>,
}

/// A member removed for good, in `/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemovedReport {
    /// Node id.
    pub id: String,
    /// The removed incarnation.
    pub removal: String,
    /// The last state it published.
    pub state: String,
    /// `UP` or `DOWN` (a removed node that still runs stops by itself).
    pub status: String,
    /// The members still taking its ranges over; empty once done.
    pub waiting_for: Vec<String>,
}

/// `GET /v1/ring`: the ring the answering node routes by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingReport {
    /// Digest of the ring (members and tokens): equal on two nodes that
    /// route alike.
    pub ring_digest: String,
    /// Copies of each item.
    pub replication_factor: usize,
    /// Every ring token with its owner, ascending. Only members that own
    /// data (AVAILABLE, LEAVING) are in the ring.
    pub tokens: Vec<RingToken>,
}

/// One token of the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingToken {
    /// The token: the range `(previous token, token]` belongs to its owner.
    pub token: u64,
    /// The node that holds it.
    pub owner: String,
}
