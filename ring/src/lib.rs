//! strata-ring: the token space, vnodes, replica placement and movement plans
//! that every Strata node uses to decide who owns a key. Pure computation, no
//! I/O: every node builds the same [`Ring`] from the same membership.
//!
//! A key's token is [`token`] (XXH3-64, fixed forever). Each node holds
//! tokens on a 64-bit ring; a token range `(start, end]` belongs to the node
//! holding `end`, and a key's replicas are the first distinct nodes met
//! clockwise from its token.
//!
//! ```
//! use strata_ring::{Member, NodeId, ReplicationFactor, Ring};
//!
//! let rf = ReplicationFactor::new(3)?;
//! let ring = Ring::new(["a", "b", "c", "d"].map(|id| Member::derived(id, 256)))?;
//!
//! // Where a key lives: three distinct nodes, the owner first.
//! let replicas: Vec<&NodeId> = ring.replicas(b"user:42", rf).collect();
//! assert_eq!(replicas.len(), 3);
//! assert_eq!(replicas[0], ring.owner(b"user:42"));
//!
//! // What node a stores, as contiguous scans of a store keyed by token.
//! for range in ring.ranges(&NodeId::from("a"), rf) {
//!     for span in range.spans() {
//!         let _ = span; // scan tokens `span` in the store
//!     }
//! }
//! # Ok::<(), strata_ring::RingError>(())
//! ```

mod balance;
mod error;
mod node;
mod plan;
mod rf;
mod ring;
mod token;

pub use balance::Ownership;
pub use error::RingError;
pub use node::{Member, NodeId};
pub use plan::{plan, Move, Plan};
pub use rf::{ReplicationFactor, MAX_RF};
pub use ring::{Replicas, Ring};
pub use token::{token, TokenRange};
