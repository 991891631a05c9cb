//! What kvnode is compared with in the same run, driven by the same
//! generator: a 3-member etcd (the Raft store a leaderless one should beat)
//! and a bare axum server (the ceiling of one node's HTTP edge).

pub mod axum;
pub mod etcd;
