//! strata-ring: the token space, vnodes, replica placement and movement plans
//! that every Strata node uses to decide who owns a key. Pure computation, no
//! I/O: every node builds the same [`Ring`] from the same membership.
//!
//! A key's token is [`token()`] (XXH3-64, fixed forever). Each node holds
//! tokens on a 64-bit ring; a token range `(start, end]` belongs to the node
//! holding `end`, and a key's replicas are the first distinct nodes met
//! clockwise from its token.
//!
//! ```
//! use strata_ring::{plan, Member, NodeId, ReplicationFactor, Ring};
//!
//! let rf = ReplicationFactor::new(3)?;
//! let ids = ["a", "b", "c", "d"].map(NodeId::from);
//! // Tokens allocated for balance; `Member::derived` gives random ones.
//! let ring = Ring::allocated(ids, 16, rf)?;
//!
//! // Where a key lives: three distinct nodes, the owner first.
//! let replicas: Vec<&NodeId> = ring.replicas(b"user:42", rf).collect();
//! assert_eq!(replicas.len(), 3);
//! assert_eq!(replicas[0], ring.owner(b"user:42"));
//!
//! // A node joins: what it must stream, and from whom.
//! let e = NodeId::from("e");
//! let grown = ring.add(ring.allocate(&e, 16, rf)?)?;
//! for m in plan(&ring, &grown, rf).incoming(&e) {
//!     for span in m.range().spans() {
//!         let _ = (span, m.from()); // scan `span` on one of `m.from()`
//!     }
//! }
//! # Ok::<(), strata_ring::RingError>(())
//! ```

mod allocate;
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
