//! The HTTP server's accept loop and connections: what bounds the sockets a
//! node holds, where `axum::serve` bounded none.
//!
//! - **Connection limit.** A slot is taken before `accept`, so when every
//!   slot is in use the loop stops accepting and the kernel's listen backlog
//!   holds new connections (and refuses them once full) instead of this
//!   process running out of descriptors. The default limit is derived from
//!   the descriptor limit, which [`raise_fd_limit`] first raises to its hard
//!   maximum ([`default_max_connections`]).
//! - **Header timeout.** Hyper's `header_read_timeout`: a request head must
//!   be complete within it. Hyper starts the timer whenever the connection
//!   is ready for a request (on accept and after each response), so it also
//!   ends a keep-alive connection that waits that long for its next request.
//!   A slowloris connection is closed without an answer.
//! - **Idle timeout.** A connection with no request in flight for this long
//!   is closed; a request is in flight from its head until its response's
//!   last byte is handed to the socket. Closing is hyper's graceful close:
//!   an answer being written is finished first.
//! - **Accept errors** (`EMFILE`, `ENFILE`, `ECONNABORTED`, ...) back off,
//!   10 ms doubling to 1 s, instead of spinning on a socket that cannot be
//!   accepted.
//! - **Lingering close.** After the last answer, the write side is shut and
//!   what the client still sends is read and dropped for up to
//!   [`LINGER`]: a client may still be sending a body the server refused
//!   (a 413 on its `Content-Length`), and closing a socket with unread data
//!   makes the kernel send a reset that can destroy the answer before the
//!   client reads it.
//! - **TLS.** With a [`ServerTls`], every connection is a TLS session
//!   first: the handshake must end within the header timeout, and a client
//!   that speaks plain HTTP fails it and is closed unserved. The
//!   configuration is taken per connection, so a reload changes new
//!   connections only. The transport's magic is then looked for in the
//!   decrypted bytes, which are replayed to whichever side takes the
//!   connection ([`Conn`]).
//! - **Graceful shutdown**: stop accepting, ask every connection to close
//!   after its request in flight, and wait for all of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::defaults::FD_RESERVE;
use crate::conn::{Conn, Replay};
use crate::tls::ServerTls;

/// How long a closing connection reads and drops what the client still
/// sends (see the module doc). Long enough for a refused 1 MiB body on a
/// slow link to arrive; short, as it holds a connection slot.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// First pause after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after failed `accept`s in a row.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What bounds the server's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeLimits {
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// Time to receive a request head (and to wait for the next one).
    pub(crate) header_read_timeout: Duration,
    /// Time a connection may sit with no request in flight.
    pub(crate) idle_timeout: Duration,
}

/// Raises this process's soft descriptor limit to its hard limit; returns
/// the soft limit in force afterwards.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "getrlimit(RLIMIT_NOFILE)");
        return FD_RESERVE;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            // An unlimited hard limit cannot be the soft one on Linux; the
            // soft one stays as it was.
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                hard = limit.rlim_max,
                "could not raise the descriptor limit"
            );
        }
    }
    limit.rlim_cur
}

/// The connection limit for a descriptor limit: what is left after
/// [`FD_RESERVE`], divided by the replication factor, because a request on
/// each connection may hold a connection to each other replica of its key.
pub(crate) fn default_max_connections(fd_limit: u64, replication_factor: usize) -> usize {
    let per_connection = u64::try_from(replication_factor.max(1)).unwrap_or(u64::MAX);
    let n = fd_limit.saturating_sub(FD_RESERVE) / per_connection;
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

/// Serves a connection of the multiplexed peer transport to its end; it
/// should close once the receiver says stop.
pub(crate) type MuxServe = Arc<
    dyn Fn(Conn, watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits until every connection has closed. With `mux`, a
/// connection that starts with the multiplexed transport's magic is handed
/// to it instead. With `tls`, every connection is TLS.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    mux: Option<MuxServe>,
    tls: Option<Arc<ServerTls>>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    // acquire_many takes a u32; no host has 4 billion descriptors.
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        match accepted {
            Ok((stream, slot)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let (builder, router, mux, stop) = (
                    builder.clone(),
                    router.clone(),
                    mux.clone(),
                    stop_rx.clone(),
                );
                let acceptor = tls.as_ref().map(|tls| tls.acceptor());
                tokio::spawn(async move {
                    let timeout = limits.header_read_timeout;
                    let opened = match acceptor {
                        Some(acceptor) => open_tls(stream, acceptor, mux.is_some(), timeout).await,
                        None => {
                            let is_mux = mux.is_some() && speaks_mux(&stream, timeout).await;
                            Some((Conn::Plain(stream), is_mux))
                        }
                    };
                    match (opened, mux) {
                        (Some((conn, true)), Some(mux)) => mux(conn, stop).await,
                        (Some((conn, _)), _) => {
                            serve_connection(conn, builder, router, limits.idle_timeout, stop).await
                        }
                        (None, _) => {}
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis(), "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
    let open = max as usize - slots.available_permits();
    tracing::info!(
        connections = open,
        "stopped accepting; draining connections"
    );
    // Receivers only end with their connections; none left is fine.
    let _ = stop_tx.send(true);
    // Every connection holds its slot until it has closed.
    let _all = slots.acquire_many(max).await;
}

/// A free slot, then a connection for it.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// Whether the connection starts with the multiplexed transport's magic.
/// Looks without taking: an HTTP connection reaches hyper whole. An HTTP
/// request's first byte already differs, so only a connection whose first
/// bytes match waits (up to `timeout`) for the rest of the magic.
async fn speaks_mux(stream: &TcpStream, timeout: Duration) -> bool {
    let magic = crate::peer::mux::handshake::MAGIC;
    let look = async {
        let mut seen = [0u8; 8];
        loop {
            let n = stream.peek(&mut seen).await.unwrap_or(0);
            if n == 0 || seen.get(..n) != magic.get(..n) {
                return false;
            }
            if n == magic.len() {
                return true;
            }
            // A prefix of the magic: the rest is on its way.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(timeout, look).await.unwrap_or(false)
}

/// The TLS session of a new connection and whether it speaks the
/// multiplexed transport (looked for only when `look_for_mux`); `None` when
/// the handshake fails or takes longer than `timeout`.
async fn open_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    look_for_mux: bool,
    timeout: Duration,
) -> Option<(Conn, bool)> {
    let peer = stream.peer_addr().ok();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tokio_rustls::TlsStream::Server(tls),
        Ok(Err(e)) => {
            // Plain HTTP, an unknown CA, an expired certificate: the
            // client's doing, and rustls has told it with an alert.
            tracing::debug!(?peer, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake timed out");
            return None;
        }
    };
    let (seen, is_mux) = if look_for_mux {
        sniff_mux(&mut tls, deadline).await
    } else {
        (Vec::new(), false)
    };
    Some((Conn::Tls(Box::new(Replay::new(seen, tls))), is_mux))
}

/// Reads from a stream that cannot be peeked at until its first bytes
/// match the transport's magic or differ from it (or `deadline` passes, or
/// it ends); returns what it read, for [`Replay`], and whether they match.
async fn sniff_mux<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    deadline: tokio::time::Instant,
) -> (Vec<u8>, bool) {
    let magic = crate::peer::mux::handshake::MAGIC;
    let mut seen = Vec::with_capacity(magic.len());
    let mut chunk = [0u8; 16];
    while seen.len() < magic.len() && magic.starts_with(&seen) {
        let Some(want) = chunk.get_mut(..magic.len() - seen.len()) else {
            break;
        };
        // Cancelling a read loses nothing: rustls keeps what it decrypted
        // until a read takes it.
        match tokio::time::timeout_at(deadline, stream.read(want)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(want.get(..n).unwrap_or_default()),
            _ => break,
        }
    }
    let is_mux = seen == magic;
    (seen, is_mux)
}

/// Serves one connection to its end, then closes it with a linger.
async fn serve_connection(
    stream: Conn,
    builder: http1::Builder,
    router: Router,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let load = Arc::new(Load::new());
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        load: load.clone(),
    };
    let mut conn = builder.serve_connection(TokioIo::new(stream), service);
    let idle = idle(load, idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    let served = loop {
        tokio::select! {
            served = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break served,
            () = &mut idle, if !closing => {
                closing = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            _ = stop.wait_for(|stop| *stop), if !closing => {
                closing = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    if let Err(e) = served {
        // Timeouts, resets, malformed requests: the client's doing, and
        // hyper has answered what it could.
        tracing::debug!(error = %e, "connection ended with an error");
    }
    linger(conn.into_parts().io.into_inner()).await;
}

/// Shuts the write side, then reads and drops until the client closes or
/// [`LINGER`] passes.
async fn linger(mut stream: Conn) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Requests on one connection, counted without waking anyone: the idle
/// timer looks when it is due (a watch channel here, notified twice per
/// request, was 2% of a node's CPU under a GET load).
#[derive(Debug)]
struct Load {
    /// Requests whose response has not been fully handed to the socket.
    in_flight: AtomicUsize,
    /// When the connection last had nothing in flight: micros since
    /// `epoch`. Written before `in_flight` drops to 0, so a timer that sees
    /// 0 in flight sees the time it became so.
    quiet_since: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Load {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.quiet_since.store(micros, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection turns idle if nothing starts: `None` while a
    /// request is in flight.
    fn idle_at(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let quiet = Duration::from_micros(self.quiet_since.load(Ordering::SeqCst));
        Some(self.epoch + quiet + timeout)
    }
}

/// Resolves once the connection has had no request in flight for
/// `timeout`.
async fn idle(load: Arc<Load>, timeout: Duration) {
    let mut due = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep_until(due).await;
        match load.idle_at(timeout) {
            Some(at) if at <= tokio::time::Instant::now() => return,
            Some(at) => due = at,
            None => due = tokio::time::Instant::now() + timeout,
        }
    }
}

/// The router as a hyper service that counts its requests in flight.
struct Tracked {
    inner: TowerToHyperService<Router>,
    load: Arc<Load>,
}

/// A request in flight; it ends when dropped.
struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

type ServiceFuture = Pin<
    Box<dyn Future<Output = Result<hyper::Response<TrackedBody>, std::convert::Infallible>> + Send>,
>;

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.load.start();
        let in_flight = InFlight(self.load.clone());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until hyper drops it,
/// after its last byte.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn connections_leave_descriptors_for_replica_calls_and_the_engine() {
        assert_eq!(default_max_connections(1024, 3), (1024 - 256) / 3);
        assert_eq!(default_max_connections(1024, 1), 1024 - 256);
        assert_eq!(default_max_connections(100, 3), 1);
        assert_eq!(
            default_max_connections(u64::MAX, 3),
            (u64::MAX - 256) as usize / 3
        );
    }

    /// What `sniff_mux` reads from a stream that first sends `sent` and
    /// then ends, and what is left in it after.
    async fn sniff(sent: &[u8]) -> (Vec<u8>, bool, Vec<u8>) {
        let (mut near, mut far) = tokio::io::duplex(64);
        near.write_all(sent).await.unwrap();
        drop(near);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (seen, is_mux) = sniff_mux(&mut far, deadline).await;
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        (seen, is_mux, rest)
    }

    #[tokio::test]
    async fn sniffing_a_decrypted_stream_takes_no_more_than_the_magic() {
        let magic = crate::peer::mux::handshake::MAGIC;
        let mut mux = magic.to_vec();
        mux.extend_from_slice(b"handshake");
        assert_eq!(
            sniff(&mux).await,
            (magic.to_vec(), true, b"handshake".to_vec())
        );
        // HTTP differs at the first byte: one read, handed on whole.
        let (seen, is_mux, rest) = sniff(b"GET /health HTTP/1.1\r\n").await;
        assert!(!is_mux);
        assert_eq!([seen, rest].concat(), b"GET /health HTTP/1.1\r\n");
        // A prefix of the magic, then the end: not the transport.
        let partial = magic.get(..3).unwrap();
        assert_eq!(sniff(partial).await, (partial.to_vec(), false, Vec::new()));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_a_quiet_timeout() {
        let load = Arc::new(Load::new());
        let timeout = Duration::from_secs(5);
        let idle = tokio::spawn(idle(load.clone(), timeout));
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A request that starts and ends between two looks restarts the
        // clock.
        load.start();
        load.end();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!idle.is_finished());
        // A request in flight holds it off however long it takes.
        load.start();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!idle.is_finished());
        load.end();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!idle.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(idle.is_finished());
    }
}
