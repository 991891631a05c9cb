//! How this node talks to the others: the [`Peer`] trait, the seam between
//! the replication and streaming logic (`coordinator`, `stream`) and the
//! network. [`http::HttpPeer`] is the real transport.
//!
//! - [`wire`]: the apply, read and read-digest bodies, the internal paths.
//! - [`frames`]: the checksummed frames a streamed range travels in.
//! - [`repair`]: the bodies of the anti-entropy calls.
//! - [`trace`]: the client request id a call carries to its replica.
//! - `sim` (tests only): a simulated network of in-process nodes with
//!   scripted faults.

pub mod frames;
pub mod http;
pub mod mux;
pub mod repair;
#[cfg(test)]
pub(crate) mod sim;
pub mod trace;
pub mod wire;

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use strata_ring::{NodeId, TokenRange};

use self::repair::{DigestAnswer, DigestRequest, RowsAnswer, RowsRequest};
use self::wire::RecordDigest;
use crate::files::index::{ListRequest, Listed};
use crate::storage::Record;

/// The member a call goes to.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// Its id (what a simulated cluster knows it by).
    pub id: &'a NodeId,
    /// Its HTTP address.
    pub addr: SocketAddr,
}

/// Why a call to a peer failed. The kinds are what the coordinator counts
/// apart in its replica-call metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No answer within the call's deadline; it may or may not have taken
    /// effect.
    #[error("timed out")]
    Timeout,
    /// The peer answered with an error status.
    #[error("refused with status {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// No connection, or it broke before the answer was whole.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer that does not decode.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// The body of a range stream, piece by piece as it arrives.
#[async_trait]
pub trait Chunks: Send {
    /// The next piece; `None` once the body ended.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, PeerError>;
}

/// Calls to other nodes. Every call acts on that node's own engine only.
#[async_trait]
pub trait Peer: Send + Sync {
    /// Applies an apply body ([`wire::encode_apply`]) with last-writer-wins.
    async fn apply(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError>;

    /// Applies an apply-batch body ([`wire::ApplyBatch`]): every entry
    /// merged by last-writer-wins, or none if the peer refuses the body.
    async fn apply_batch(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError>;

    /// The record the peer holds for `key`, tombstones included.
    async fn read(&self, to: Endpoint<'_>, key: Bytes) -> Result<Option<Record>, PeerError>;

    /// The digest of the record the peer holds for `key` (tombstones
    /// included), `None` if it holds nothing: what a QUORUM or ALL read asks
    /// of every replica but the one it reads in full.
    async fn read_digest(
        &self,
        to: Endpoint<'_>,
        key: Bytes,
    ) -> Result<Option<RecordDigest>, PeerError>;

    /// Opens the stream of `range` past the engine key `after`: the body is
    /// [`frames`]. No deadline beyond connecting: the caller bounds its waits.
    async fn stream(
        &self,
        to: Endpoint<'_>,
        range: TokenRange,
        after: Option<&[u8]>,
    ) -> Result<Box<dyn Chunks>, PeerError>;

    /// The short hashes of the children of some nodes of the peer's digest
    /// tree of a range (`repair::tree`), which it builds from one snapshot
    /// per session and range. No deadline beyond connecting: the first call
    /// of a session reads the whole range, and the caller bounds its wait.
    async fn digest(
        &self,
        to: Endpoint<'_>,
        request: &DigestRequest,
    ) -> Result<DigestAnswer, PeerError>;

    /// Compares this node's items of some leaves (as short hashes) with the
    /// peer's: the answer carries the peer's items this node lacks and
    /// marks this node's items the peer lacks. Changes nothing on the peer.
    /// No deadline beyond connecting.
    async fn repair_rows(
        &self,
        to: Endpoint<'_>,
        request: &RowsRequest,
    ) -> Result<RowsAnswer, PeerError>;

    /// A page of the manifests the peer holds (`files::index`), tombstones
    /// included.
    async fn list_files(
        &self,
        to: Endpoint<'_>,
        request: &ListRequest,
    ) -> Result<Vec<Listed>, PeerError>;
}
