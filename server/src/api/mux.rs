//! The accepting side of the multiplexed transport
//! ([`peer::mux`](crate::peer::mux)): the listener hands over a connection
//! that starts with the transport's magic, and this serves it until the
//! peer closes it or the node stops.
//!
//! Each request does what its HTTP route does, through the same
//! [`Replica`], and a refusal carries
//! the route's status. Reads are answered inline (the engine's read path
//! never waits on writers); applies run as tasks, so the applies of one
//! read from the socket join one engine group. Replies go out in batches.
//!
//! Bounds: the payloads of the requests in flight on a connection are at
//! most [`connection_bytes`]; past it the connection is not read until
//! some finish, which is TCP back-pressure on the sender. A frame over the
//! largest apply-batch body, one that does not open, or a reply kind where
//! requests belong closes the connection with a logged reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Semaphore};

use super::internal::Replica;
use super::ApiError;
use crate::config::Config;
use crate::conn::Conn;
use crate::peer::mux::frame::{Frame, Kind, Opener, Sealer};
use crate::peer::mux::handshake::{self, MuxKey};
use crate::peer::mux::{write_batched, READ_CHUNK};

/// Replies queued for the writer at most.
const QUEUE_REPLIES: usize = 1024;
/// What a request costs in the connection's budget beyond its payload.
const REQUEST_COST: usize = 64;

/// Payload bytes in flight on one connection at most: room for two of the
/// largest frames, and never under 8 MiB.
pub(crate) fn connection_bytes(max_payload: usize) -> usize {
    (2 * (max_payload + REQUEST_COST)).max(8 << 20)
}

/// What a node serves its multiplexed connections with.
pub(crate) struct Serving {
    replica: Arc<Replica>,
    key: MuxKey,
    /// Bound on a peer's handshake, as on an HTTP request's headers.
    handshake_timeout: Duration,
    /// How long a closing connection waits for its requests' answers.
    drain_timeout: Duration,
}

impl Serving {
    /// Serving `replica` under `config`'s secret and deadlines.
    pub(crate) fn new(replica: Arc<Replica>, config: &Config) -> Self {
        Self::with(
            replica,
            MuxKey::derive(&config.secret),
            config.edges.header_read_timeout,
            config.request_timeout,
        )
    }

    /// Serving `replica` under `key`, with these deadlines.
    pub(crate) fn with(
        replica: Arc<Replica>,
        key: MuxKey,
        handshake_timeout: Duration,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            replica,
            key,
            handshake_timeout,
            drain_timeout,
        }
    }
}

/// Serves one connection whose first bytes are the transport's magic.
pub(crate) async fn serve(
    mut stream: Conn,
    serving: Arc<Serving>,
    mut stop: watch::Receiver<bool>,
) {
    let peer = stream
        .tcp()
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let accepted = tokio::time::timeout(
        serving.handshake_timeout,
        handshake::accept(&mut stream, &serving.key),
    )
    .await;
    let (keys, node) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "multiplexed handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "multiplexed handshake timed out");
            return;
        }
    };
    if let Err(e) = stream.tcp().set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "TCP_NODELAY");
    }
    tracing::debug!(%peer, %node, "multiplexed connection open");
    let (mut read, mut write) = stream.into_split();
    let (replies, mut queue) = mpsc::channel(QUEUE_REPLIES);
    let writer = tokio::spawn(async move {
        let mut sealer = Sealer::new(&keys.to_client);
        write_batched(&mut write, &mut queue, &mut sealer).await
    });
    let replica = &serving.replica;
    let max_payload = replica.limits().apply_batch_body_size();
    let budget_bytes = connection_bytes(max_payload);
    // Semaphores count in u32 on acquire; the budget is far below 4 GiB.
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let mut opener = Opener::new(&keys.to_server, max_payload);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let ended = 'conn: loop {
        loop {
            let frame = match opener.open(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'conn Some(e.to_string()),
            };
            if !frame.kind.is_request() {
                break 'conn Some(format!("a reply ({:?}) where requests belong", frame.kind));
            }
            let cost = u32::try_from(frame.payload.len() + REQUEST_COST).unwrap_or(u32::MAX);
            let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
                break 'conn None;
            };
            if matches!(frame.kind, Kind::Read | Kind::ReadDigest) {
                let reply = reply(frame.id, read_reply(replica, &frame));
                if replies.send(reply).await.is_err() {
                    break 'conn None;
                }
                continue;
            }
            let (replica, replies) = (replica.clone(), replies.clone());
            tokio::spawn(async move {
                let answer = match frame.kind {
                    Kind::Apply => replica.apply_one(frame.payload).await,
                    _ => replica.apply_many(&frame.payload).await,
                };
                let done = answer.map(|()| Frame {
                    id: frame.id,
                    kind: Kind::Done,
                    payload: Default::default(),
                });
                let _ = replies.send(reply(frame.id, done)).await;
                drop(permit);
            });
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            read = read.read_buf(&mut buf) => match read {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "multiplexed connection: read failed");
                    break None;
                }
            },
            _ = stop.wait_for(|stop| *stop) => break None,
        }
    };
    if let Some(reason) = ended {
        tracing::warn!(%peer, %node, %reason, "multiplexed connection: malformed request; closing");
    }
    // Requests already read are answered before the connection closes, if
    // they finish within a request's deadline.
    let all = u32::try_from(budget_bytes).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(serving.drain_timeout, budget.acquire_many(all)).await;
    drop(replies);
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "multiplexed connection: write failed"),
        Err(e) => tracing::error!(%peer, error = %e, "multiplexed writer task failed"),
    }
    tracing::debug!(%peer, %node, "multiplexed connection closed");
}

/// The reply to a read or read-digest request.
fn read_reply(replica: &Replica, frame: &Frame) -> Result<Frame, ApiError> {
    let found = if frame.kind == Kind::Read {
        replica
            .read_one(&frame.payload)?
            .map(|record| (Kind::Record, record.bytes().clone()))
    } else {
        replica
            .digest_one(&frame.payload)?
            .map(|digest| (Kind::Digest, Bytes::copy_from_slice(&digest.encode())))
    };
    let (kind, payload) = found.unwrap_or((Kind::Absent, Bytes::new()));
    Ok(Frame {
        id: frame.id,
        kind,
        payload,
    })
}

/// `answer`, or the refusal it means.
fn reply(id: u64, answer: Result<Frame, ApiError>) -> Frame {
    answer.unwrap_or_else(|e| {
        let (status, message) = e.status_and_message();
        Frame::refused(id, status.as_u16(), message)
    })
}
