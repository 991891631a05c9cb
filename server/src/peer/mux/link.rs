//! One multiplexed connection to a peer, from the connecting side: calls
//! tagged with ids, many in flight at once, their frames written in batches.
//!
//! - A writer task takes every frame queued since its last write and sends
//!   them with one write: under load, the calls of many requests share a
//!   system call and a TCP segment.
//! - A reader task opens the replies and hands each to the call waiting on
//!   its id. A reply for a call that gave up (its deadline passed) is
//!   dropped.
//! - The queue to the writer is bounded ([`QUEUE_FRAMES`]): past it, callers
//!   wait, which is the back-pressure of a slow peer.
//! - Any failure (a frame that does not open, a request kind in a reply, an
//!   I/O error, the peer closing) closes the link with a logged reason and
//!   fails every call in flight; the next call opens a new link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::frame::{Frame, Kind, Opener, Sealer};
use super::handshake::{self, HandshakeError, MuxKey};
use crate::conn::{Conn, ConnRead, ConnWrite, Replay};
use crate::peer::PeerError;

/// Frames queued for the writer at most.
const QUEUE_FRAMES: usize = 1024;
/// The writer stops adding frames to one write past this many bytes.
const WRITE_BATCH: usize = 256 * 1024;
/// What a reader asks of the socket per read, at least.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// An open link.
pub(crate) struct Link {
    frames: mpsc::Sender<Frame>,
    calls: Arc<Mutex<Calls>>,
    next_id: AtomicU64,
    tasks: [JoinHandle<()>; 2],
}

/// The calls waiting for a reply, until the link closes.
#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, oneshot::Sender<Frame>>,
    closed: bool,
}

impl Calls {
    /// Fails every call in flight and refuses new ones.
    fn close(&mut self) {
        self.closed = true;
        self.waiting.clear();
    }
}

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// No TCP connection.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (a certificate not from the cluster CA, or
    /// not for the peer's address).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl Link {
    /// Connects to `addr` (over TLS with `tls`, the peer's certificate
    /// checked for its IP address) and proves the secret as `node_id`;
    /// replies over `max_payload` close the link.
    pub(crate) async fn open(
        addr: SocketAddr,
        tls: Option<&tokio_rustls::TlsConnector>,
        key: &MuxKey,
        node_id: &str,
        max_payload: usize,
    ) -> Result<Self, OpenError> {
        let tcp = TcpStream::connect(addr).await.map_err(OpenError::Connect)?;
        tcp.set_nodelay(true).map_err(OpenError::Connect)?;
        let mut stream = match tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let session = tls.connect(name, tcp).await.map_err(OpenError::Tls)?;
                let session = tokio_rustls::TlsStream::Client(session);
                Conn::Tls(Box::new(Replay::new(Vec::new(), session)))
            }
            None => Conn::Plain(tcp),
        };
        let keys = handshake::connect(&mut stream, key, node_id).await?;
        let (read, write) = stream.into_split();
        let calls = Arc::new(Mutex::new(Calls::default()));
        let (frames, queue) = mpsc::channel(QUEUE_FRAMES);
        let writer = tokio::spawn(write_frames(
            write,
            queue,
            Sealer::new(&keys.to_server),
            calls.clone(),
            addr,
        ));
        let reader = tokio::spawn(read_replies(
            read,
            Opener::new(&keys.to_client, max_payload),
            calls.clone(),
            addr,
        ));
        Ok(Self {
            frames,
            calls,
            next_id: AtomicU64::new(0),
            tasks: [writer, reader],
        })
    }

    /// Whether calls can still go out on this link.
    pub(crate) fn is_open(&self) -> bool {
        !self.calls.lock().closed
    }

    /// Sends a request and waits up to `deadline` for its reply.
    pub(crate) async fn call(
        &self,
        kind: Kind,
        payload: Bytes,
        deadline: Duration,
    ) -> Result<Frame, PeerError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut calls = self.calls.lock();
            if calls.closed {
                return Err(closed());
            }
            calls.waiting.insert(id, reply);
        }
        // Whatever ends this call (a reply, its deadline, its caller going
        // away), its entry goes.
        let _entry = Entry {
            calls: &self.calls,
            id,
        };
        let call = async {
            self.frames
                .send(Frame { id, kind, payload })
                .await
                .map_err(|_| closed())?;
            answer.await.map_err(|_| closed())
        };
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| PeerError::Timeout)?
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Removes a call's entry when the call ends.
struct Entry<'a> {
    calls: &'a Mutex<Calls>,
    id: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.calls.lock().waiting.remove(&self.id);
    }
}

fn closed() -> PeerError {
    PeerError::Unreachable("multiplexed connection closed".into())
}

/// The writer of a link.
async fn write_frames(
    mut stream: ConnWrite,
    mut queue: mpsc::Receiver<Frame>,
    mut sealer: Sealer,
    calls: Arc<Mutex<Calls>>,
    peer: SocketAddr,
) {
    if let Err(e) = write_batched(&mut stream, &mut queue, &mut sealer).await {
        tracing::debug!(%peer, error = %e, "multiplexed link: write failed; closing");
    }
    calls.lock().close();
}

/// Writes every frame queued since the last write in one, until the queue
/// closes: under load, the frames of many calls share a system call. Both
/// sides of a connection write this way.
pub(crate) async fn write_batched<W: AsyncWrite + Unpin>(
    stream: &mut W,
    queue: &mut mpsc::Receiver<Frame>,
    sealer: &mut Sealer,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    while let Some(first) = queue.recv().await {
        sealer.seal(&first, &mut buf);
        while buf.len() < WRITE_BATCH {
            let Ok(frame) = queue.try_recv() else { break };
            sealer.seal(&frame, &mut buf);
        }
        stream.write_all(&buf).await?;
        buf.clear();
    }
    Ok(())
}

/// The reader: each reply to the call waiting on its id.
async fn read_replies(
    mut stream: ConnRead,
    mut opener: Opener,
    calls: Arc<Mutex<Calls>>,
    peer: SocketAddr,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let malformed = loop {
        match opener.open(&mut buf) {
            Ok(Some(frame)) if frame.kind.is_request() => {
                break Some(format!("a request ({:?}) where replies belong", frame.kind));
            }
            Ok(Some(frame)) => {
                let waiting = calls.lock().waiting.remove(&frame.id);
                if let Some(reply) = waiting {
                    let _ = reply.send(frame);
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break Some(e.to_string()),
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(&mut buf).await {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "multiplexed link: read failed; closing");
                break None;
            }
        }
    };
    calls.lock().close();
    match malformed {
        Some(reason) => {
            tracing::warn!(%peer, %reason, "multiplexed link: malformed reply; closing")
        }
        None => tracing::debug!(%peer, "multiplexed link closed"),
    }
}

/// The reply expected of a request, or the error it means.
pub(crate) fn expect(reply: Frame, kinds: &[Kind]) -> Result<Frame, PeerError> {
    if kinds.contains(&reply.kind) {
        return Ok(reply);
    }
    match reply.refusal() {
        Some((status, reason)) if reply.kind == Kind::Refused => {
            tracing::debug!(status, %reason, "multiplexed call refused");
            Err(PeerError::Refused { status })
        }
        _ => Err(PeerError::BadAnswer(format!(
            "a {:?} reply where {kinds:?} was expected",
            reply.kind
        ))),
    }
}
