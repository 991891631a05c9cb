//! The multiplexed transport: a second [`Peer`] that carries the hot calls
//! (apply, apply-batch, read, read-digest) over one long-lived TCP connection per peer,
//! on the peer's HTTP port.
//!
//! - [`handshake`]: how a connection starts (each side proves the cluster
//!   secret without sending it; two session keys come out).
//! - [`frame`]: the frames, each sealed with a truncated HMAC under its
//!   direction's session key and sequence number.
//! - `link`: one connection from the calling side (ids, batching writer,
//!   reader, deadlines).
//! - The accepting side is `api::mux`, next to the HTTP routes it shares
//!   its handlers with.
//!
//! Why: every call of the HTTP peer is its own request (headers, a
//! signature, a pooled connection, a task on each side); a QUORUM PUT cost
//! 310 µs of CPU over three nodes, most of it in system calls and thread
//! wakes. Here the calls of many requests share a write and a read, and
//! the connection is authenticated once.
//!
//! Streams, digests and repair's row exchange stay on HTTP: they are
//! few, long and bulky, and HTTP bounds and meters them already. A peer
//! that answers the handshake as HTTP (an older node, or one started with
//! `--peer-transport http`) is called over HTTP, and asked again after
//! [`RECHECK_HTTP`].

pub mod frame;
pub mod handshake;
mod link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use strata_ring::TokenRange;

use self::frame::Kind;
use self::handshake::{HandshakeError, MuxKey};
use self::link::{expect, Link, OpenError};
pub(crate) use self::link::{write_batched, READ_CHUNK};
use super::http::HttpPeer;
use super::repair::{DigestAnswer, DigestRequest, RowsAnswer, RowsRequest};
use super::wire::RecordDigest;
use super::{Chunks, Endpoint, Peer, PeerError};
use crate::files::index::{ListRequest, Listed};
use crate::storage::Record;

/// How long a peer that does not speak the transport is called over HTTP
/// before it is asked again (it may have been upgraded).
pub const RECHECK_HTTP: Duration = Duration::from_secs(60);

/// Calls peers over multiplexed links, and over `http` what they do not
/// carry.
pub struct MuxPeer {
    http: HttpPeer,
    key: MuxKey,
    node_id: String,
    /// Deadline of one call, and of opening a link.
    timeout: Duration,
    /// Largest reply payload accepted.
    max_payload: usize,
    /// The TLS of every link, in a TLS cluster.
    tls: Option<tokio_rustls::TlsConnector>,
    peers: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
}

/// What this node knows of one peer address.
#[derive(Default)]
struct Slot {
    link: RwLock<Option<Arc<Link>>>,
    /// Held while a link is being opened, so callers wait for one attempt
    /// instead of each opening their own.
    opening: tokio::sync::Mutex<()>,
    /// Attempts to open a link so far, and how the last one failed: a
    /// caller that waited on another's failed attempt fails with it
    /// instead of trying again, so a dead peer costs one connect timeout,
    /// not one per waiting call.
    attempts: AtomicU64,
    last_failure: Mutex<Option<PeerError>>,
    /// Until when the peer is called over HTTP.
    http_until: Mutex<Option<Instant>>,
}

impl Slot {
    fn open_link(&self) -> Option<Arc<Link>> {
        self.link.read().as_ref().filter(|l| l.is_open()).cloned()
    }

    fn speaks_http_only(&self) -> bool {
        self.http_until.lock().is_some_and(|t| Instant::now() < t)
    }
}

/// How one call travels.
enum Route {
    Mux(Arc<Link>),
    Http,
}

impl MuxPeer {
    /// A peer client over `http`'s secret and deadlines: `key` from the
    /// same secret, calls sent as `node_id`, replies up to `max_payload`
    /// bytes, each call and each connection attempt bounded by `timeout`;
    /// links over TLS with `tls` (the configuration `http` has too).
    pub fn new(
        http: HttpPeer,
        key: MuxKey,
        node_id: &str,
        timeout: Duration,
        max_payload: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            http,
            key,
            node_id: node_id.to_owned(),
            timeout,
            max_payload,
            tls: tls.map(tokio_rustls::TlsConnector::from),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        self.peers.lock().entry(addr).or_default().clone()
    }

    /// The open link to `addr`, opening one if needed, or HTTP.
    async fn route(&self, addr: SocketAddr) -> Result<Route, PeerError> {
        let slot = self.slot(addr);
        if let Some(link) = slot.open_link() {
            return Ok(Route::Mux(link));
        }
        if slot.speaks_http_only() {
            return Ok(Route::Http);
        }
        let seen = slot.attempts.load(Ordering::Acquire);
        let _opening = slot.opening.lock().await;
        if let Some(link) = slot.open_link() {
            return Ok(Route::Mux(link));
        }
        if slot.speaks_http_only() {
            return Ok(Route::Http);
        }
        if slot.attempts.load(Ordering::Acquire) != seen {
            if let Some(failure) = slot.last_failure.lock().clone() {
                return Err(failure);
            }
        }
        let opened = tokio::time::timeout(
            self.timeout,
            Link::open(
                addr,
                self.tls.as_ref(),
                &self.key,
                &self.node_id,
                self.max_payload,
            ),
        )
        .await;
        let result = match opened {
            Ok(Ok(link)) => {
                let link = Arc::new(link);
                *slot.link.write() = Some(link.clone());
                Ok(Route::Mux(link))
            }
            Ok(Err(OpenError::Handshake(HandshakeError::NotSpoken))) => {
                tracing::info!(peer = %addr, "peer does not speak the multiplexed transport; calling it over HTTP");
                *slot.http_until.lock() = Some(Instant::now() + RECHECK_HTTP);
                Ok(Route::Http)
            }
            Ok(Err(OpenError::Handshake(HandshakeError::BadProof))) => {
                tracing::warn!(peer = %addr, "peer failed the multiplexed handshake: does it hold this cluster's secret?");
                Err(PeerError::Refused { status: 401 })
            }
            Ok(Err(e)) => Err(PeerError::Unreachable(e.to_string())),
            Err(_) => Err(PeerError::Timeout),
        };
        *slot.last_failure.lock() = result.as_ref().err().cloned();
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// A request over the link to `to`; `None` when the peer is called
    /// over HTTP.
    async fn call(
        &self,
        to: Endpoint<'_>,
        kind: Kind,
        payload: Bytes,
        replies: &[Kind],
    ) -> Result<Option<frame::Frame>, PeerError> {
        match self.route(to.addr).await? {
            Route::Mux(link) => {
                let reply = link.call(kind, payload, self.timeout).await?;
                expect(reply, replies).map(Some)
            }
            Route::Http => Ok(None),
        }
    }
}

#[async_trait]
impl Peer for MuxPeer {
    async fn apply(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        match self
            .call(to, Kind::Apply, body.clone(), &[Kind::Done])
            .await?
        {
            Some(_) => Ok(()),
            None => self.http.apply(to, body).await,
        }
    }

    async fn apply_batch(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        match self
            .call(to, Kind::ApplyBatch, body.clone(), &[Kind::Done])
            .await?
        {
            Some(_) => Ok(()),
            None => self.http.apply_batch(to, body).await,
        }
    }

    async fn read(&self, to: Endpoint<'_>, key: Bytes) -> Result<Option<Record>, PeerError> {
        let replies = [Kind::Record, Kind::Absent];
        match self.call(to, Kind::Read, key.clone(), &replies).await? {
            Some(reply) if reply.kind == Kind::Absent => Ok(None),
            Some(reply) => Record::decode(reply.payload)
                .map(Some)
                .map_err(|e| PeerError::BadAnswer(e.to_string())),
            None => self.http.read(to, key).await,
        }
    }

    async fn read_digest(
        &self,
        to: Endpoint<'_>,
        key: Bytes,
    ) -> Result<Option<RecordDigest>, PeerError> {
        let replies = [Kind::Digest, Kind::Absent];
        match self
            .call(to, Kind::ReadDigest, key.clone(), &replies)
            .await?
        {
            Some(reply) if reply.kind == Kind::Absent => Ok(None),
            Some(reply) => RecordDigest::decode(&reply.payload)
                .map(Some)
                .map_err(|e| PeerError::BadAnswer(e.to_string())),
            None => self.http.read_digest(to, key).await,
        }
    }

    async fn stream(
        &self,
        to: Endpoint<'_>,
        range: TokenRange,
        after: Option<&[u8]>,
    ) -> Result<Box<dyn Chunks>, PeerError> {
        self.http.stream(to, range, after).await
    }

    async fn digest(
        &self,
        to: Endpoint<'_>,
        request: &DigestRequest,
    ) -> Result<DigestAnswer, PeerError> {
        self.http.digest(to, request).await
    }

    async fn repair_rows(
        &self,
        to: Endpoint<'_>,
        request: &RowsRequest,
    ) -> Result<RowsAnswer, PeerError> {
        self.http.repair_rows(to, request).await
    }

    async fn list_files(
        &self,
        to: Endpoint<'_>,
        request: &ListRequest,
    ) -> Result<Vec<Listed>, PeerError> {
        self.http.list_files(to, request).await
    }
}
