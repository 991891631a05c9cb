//! The one error type of the crate.

use crate::node::NodeId;
use crate::rf::MAX_RF;

/// Why a ring or a replication factor could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// A ring needs at least one node.
    #[error("a ring needs at least one node")]
    Empty,
    /// The node holds no token: it claimed none (or asked for zero vnodes),
    /// or every token it claimed is held by a node with a smaller id.
    #[error("node {node} holds no token")]
    NoTokens {
        /// The node without tokens.
        node: NodeId,
    },
    /// Two members share an id.
    #[error("node {node} is a member twice")]
    DuplicateNode {
        /// The repeated id.
        node: NodeId,
    },
    /// The node is not a member of the ring.
    #[error("node {node} is not in the ring")]
    UnknownNode {
        /// The missing id.
        node: NodeId,
    },
    /// More nodes than a ring indexes (`u32::MAX`).
    #[error("too many nodes: {count}")]
    TooManyNodes {
        /// How many were given.
        count: usize,
    },
    /// A replication factor outside `1..=MAX_RF`.
    #[error("replication factor {rf} is outside 1..={MAX_RF}")]
    InvalidReplicationFactor {
        /// The rejected value.
        rf: usize,
    },
}
