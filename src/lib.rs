//! Strata: an embeddable LSM-tree key-value engine ([`engine`]) and the
//! consistent-hash ring ([`ring`]) that the `kvnode` cluster server is built on.
//!
//! This facade re-exports the member crates so that a user needs one dependency.

pub use strata_engine as engine;
pub use strata_ring as ring;
