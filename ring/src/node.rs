//! Node identity and a node's place in the ring.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::token::derived_token;

/// The id of a physical node, unique in a cluster. Ids order the nodes
/// wherever the ring must break a tie (token collisions, allocation), so
/// every node breaks it the same way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node and the tokens it claims: the unit of membership a node publishes
/// and the ring is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// The tokens it claims, in any order. The ring keeps them sorted and
    /// drops the ones another node wins (see [`Ring::new`](crate::Ring::new)).
    pub tokens: Vec<u64>,
}

impl Member {
    /// A member with explicit tokens (allocated, or read back from gossip).
    pub fn new(id: impl Into<NodeId>, tokens: Vec<u64>) -> Self {
        Self {
            id: id.into(),
            tokens,
        }
    }

    /// A member with `vnodes` tokens derived from its id alone, so any node
    /// can compute them from the id: XXH3-64 of the id seeded with the vnode
    /// index. Like any random tokens they need many vnodes (hundreds) to
    /// balance; [`Ring::allocate`](crate::Ring::allocate) balances with few.
    pub fn derived(id: impl Into<NodeId>, vnodes: u32) -> Self {
        let id = id.into();
        let tokens = (0..vnodes).map(|i| derived_token(id.as_str(), i)).collect();
        Self { id, tokens }
    }
}
