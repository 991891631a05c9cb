//! The load generator: a closed loop over long-lived HTTP/1.1 connections.
//!
//! Each of `connections` tasks holds one keep-alive connection to one
//! server (connection i goes to server i mod n, so every node coordinates
//! its share) and sends its next request as soon as the last one is
//! answered, as `wrk` does. The tasks are spread over `threads` threads,
//! each with its own single-threaded runtime, and a task drives its own
//! connection (hyper's connection future is polled inside the task instead
//! of spawned), so a request costs one task wake-up on one thread: the
//! generator shares the cores with the servers it measures.
//!
//! A run has a warm-up and a timed window. A request counts in the window
//! if its answer arrives inside it: its latency goes into that task's HDR
//! histogram (1 µs to 60 s, 3 significant digits), merged at the end, and a
//! failure is counted as non-2xx (the server answered with an error, or, for
//! a system that answers a miss with 200, a body without the value) or I/O
//! (connect, write, read, timeout), kept apart. A broken connection is
//! reopened. The servers' CPU time and this process's own are read at both
//! ends of the window.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::{http, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::process::{own_cpu, Processes};

/// A request without an answer after this long is an I/O error: kvnode's
/// own request deadline, so a node never gives up later than the client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed connect, so a dead server is retried without
/// spinning a core that the other servers need.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Latency range of the histograms, in µs: past 60 s a request has timed out.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What the requests of a run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Overwrites of random keys of the key space.
    Put,
    /// Reads of random keys, all written beforehand.
    Get,
    /// Half reads, half overwrites, of random keys written beforehand.
    Mixed,
}

impl Workload {
    /// Whether the keys must hold values before the window opens.
    pub fn reads(self) -> bool {
        self != Workload::Put
    }
}

/// One request of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write the value under the key.
    Put,
    /// Read the key.
    Get,
}

/// How one system spells a read and a write; the generator adds `Host`.
pub trait Api: Send + Sync + 'static {
    /// The request for `op` on key number `key` (see [`key`]).
    fn request(&self, op: Op, key: u64) -> http::Result<Request<Full<Bytes>>>;

    /// Whether a 2xx answer's body is the answer asked for (a system that
    /// answers a missing key with 200 says here that it was missing).
    fn answered(&self, _op: Op, _body: &[u8]) -> bool {
        true
    }

    /// How connections to the servers start TLS (with this client's
    /// certificate); `None` for plain HTTP.
    fn tls(&self) -> Option<&TlsConnector> {
        None
    }
}

/// The key of number `i`: the same bytes for every system.
pub fn key(i: u64) -> String {
    format!("bench-{i:010}")
}

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct Load {
    /// Connections, each with one request in flight.
    pub connections: usize,
    /// Load before the window, not counted.
    pub warmup: Duration,
    /// The timed window.
    pub duration: Duration,
    /// Keys are drawn uniformly from `0..keys`.
    pub keys: u64,
    /// What the requests are.
    pub workload: Workload,
    /// Threads the connections are spread over.
    pub threads: usize,
}

/// What the requests answered within a window.
pub struct Stats {
    /// 2xx answers (with the value, for reads).
    pub ok: u64,
    /// Answers that were errors.
    pub non_2xx: u64,
    /// Requests that got no answer: connect, write, read or timeout.
    pub io_errors: u64,
    /// Latency of the `ok` requests, in µs.
    pub latency: Histogram<u64>,
    /// The first failure of each kind, to say what went wrong.
    pub first_non_2xx: Option<String>,
    /// See `first_non_2xx`.
    pub first_io_error: Option<String>,
}

/// A timed run: what was answered, and the CPU it took.
pub struct Outcome {
    /// Answers inside the window.
    pub stats: Stats,
    /// The window's length.
    pub window: Duration,
    /// CPU time of all the server processes over the window.
    pub server_cpu: Duration,
    /// CPU time of this process (the generator) over the window.
    pub client_cpu: Duration,
}

/// Runs `load` against `servers` through `api`: warm-up, then the window.
pub async fn run(
    api: Arc<dyn Api>,
    addrs: &[SocketAddr],
    load: &Load,
    servers: &Processes,
) -> Result<Outcome> {
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let mut drives = Vec::new();
    for (i, addr) in (0..load.connections).zip(addrs.iter().cycle()) {
        let worker = Worker::new(api.clone(), *addr)?;
        let (keys, workload) = (load.keys, load.workload);
        let mut rng = SplitMix64(i as u64);
        drives.push(worker.drive(Stats::new()?, start..end, move |now| {
            if now >= end {
                return None;
            }
            let op = match workload {
                Workload::Put => Op::Put,
                Workload::Get => Op::Get,
                Workload::Mixed if rng.next() & 1 == 0 => Op::Put,
                Workload::Mixed => Op::Get,
            };
            Some((op, rng.next() % keys))
        }));
    }
    let threads = on_threads(load.threads, drives)?;
    tokio::time::sleep_until(start.into()).await;
    let before = (servers.cpu()?, own_cpu()?, Instant::now());
    tokio::time::sleep_until(end.into()).await;
    let after = (servers.cpu()?, own_cpu()?, Instant::now());
    Ok(Outcome {
        stats: join(threads).await?,
        window: after.2 - before.2,
        server_cpu: after.0.saturating_sub(before.0),
        client_cpu: after.1.saturating_sub(before.1),
    })
}

/// Writes every key of `0..load.keys` once through `api`, untimed, over
/// `load.connections`; fails if any write fails.
pub async fn preload(api: Arc<dyn Api>, addrs: &[SocketAddr], load: &Load) -> Result<Duration> {
    let started = Instant::now();
    let keys = load.keys;
    let next_key = Arc::new(AtomicU64::new(0));
    let mut drives = Vec::new();
    // Every answer counts: the window is open for as long as a preload can take.
    let window = started..started + Duration::from_secs(24 * 3600);
    for addr in addrs.iter().cycle().take(load.connections) {
        let next_key = next_key.clone();
        let worker = Worker::new(api.clone(), *addr)?;
        drives.push(worker.drive(Stats::new()?, window.clone(), move |_| {
            let key = next_key.fetch_add(1, Ordering::Relaxed);
            (key < keys).then_some((Op::Put, key))
        }));
    }
    let stats = join(on_threads(load.threads, drives)?).await?;
    if stats.ok != keys {
        bail!(
            "preload: {} of {keys} writes failed ({} errors: {}; {} I/O: {})",
            keys - stats.ok,
            stats.non_2xx,
            stats.first_non_2xx.as_deref().unwrap_or("-"),
            stats.io_errors,
            stats.first_io_error.as_deref().unwrap_or("-"),
        );
    }
    Ok(started.elapsed())
}

/// One request on a fresh connection (TLS through `tls`): for readiness
/// checks and set-up.
pub async fn fetch(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    let mut conn = Conn::open(addr, tls).await?;
    tokio::time::timeout(REQUEST_TIMEOUT, conn.send(with_host(request, addr)?))
        .await
        .map_err(|_| anyhow!("{addr}: no answer within {REQUEST_TIMEOUT:?}"))?
}

/// A bodiless `GET path` for [`fetch`].
pub fn get(path: &str) -> Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Full::new(Bytes::new()))?)
}

fn with_host(mut request: Request<Full<Bytes>>, addr: SocketAddr) -> Result<Request<Full<Bytes>>> {
    request
        .headers_mut()
        .insert(HOST, HeaderValue::from_str(&addr.to_string())?);
    Ok(request)
}

/// What one load thread hands back: its connections' stats, merged.
type ThreadStats = oneshot::Receiver<Result<Stats>>;

/// Runs `drives` spread over `threads` OS threads, each with a
/// single-threaded runtime of its own, as wrk gives each thread its own
/// event loop: a connection's task never moves and never wakes another
/// thread. Against bare axum on 2 busy cores it took 9-10 µs of CPU per
/// request where the same tasks on a 2-worker work-stealing runtime took
/// 11-15 µs (wrk -t2: 7 µs).
fn on_threads<F>(threads: usize, drives: Vec<F>) -> Result<Vec<ThreadStats>>
where
    F: Future<Output = Stats> + Send + 'static,
{
    let mut shares: Vec<Vec<F>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    let count = shares.len();
    for (i, drive) in drives.into_iter().enumerate() {
        if let Some(share) = shares.get_mut(i % count) {
            share.push(drive);
        }
    }
    let mut receivers = Vec::new();
    for (t, share) in shares.into_iter().enumerate() {
        let (done, receiver) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a load thread's runtime")?;
        std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                let stats = runtime.block_on(async {
                    let mut tasks: JoinSet<Stats> = share.into_iter().collect();
                    let mut parts = Vec::new();
                    while let Some(stats) = tasks.join_next().await {
                        parts.push(stats.context("a connection's task failed")?);
                    }
                    merge(parts)
                });
                // The receiver is gone only if the run was abandoned.
                let _ = done.send(stats);
            })
            .context("starting a load thread")?;
        receivers.push(receiver);
    }
    Ok(receivers)
}

/// Waits for every load thread; their stats merged.
async fn join(threads: Vec<ThreadStats>) -> Result<Stats> {
    let mut parts = Vec::new();
    for thread in threads {
        parts.push(thread.await.context("a load thread died")??);
    }
    merge(parts)
}

fn merge(parts: Vec<Stats>) -> Result<Stats> {
    let mut total = Stats::new()?;
    for stats in parts {
        total.ok += stats.ok;
        total.non_2xx += stats.non_2xx;
        total.io_errors += stats.io_errors;
        total
            .latency
            .add(&stats.latency)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        total.first_non_2xx = total.first_non_2xx.or(stats.first_non_2xx);
        total.first_io_error = total.first_io_error.or(stats.first_io_error);
    }
    Ok(total)
}

impl Stats {
    fn new() -> Result<Self> {
        Ok(Self {
            ok: 0,
            non_2xx: 0,
            io_errors: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| anyhow!("histogram: {e:?}"))?,
            first_non_2xx: None,
            first_io_error: None,
        })
    }
}

/// One connection's closed loop.
struct Worker {
    api: Arc<dyn Api>,
    addr: SocketAddr,
    host: HeaderValue,
    conn: Option<Conn>,
}

impl Worker {
    fn new(api: Arc<dyn Api>, addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            api,
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            conn: None,
        })
    }

    /// Sends `next(now)`'s requests back to back until it says `None`;
    /// counts the answers that arrive within `window`.
    async fn drive(
        mut self,
        mut stats: Stats,
        window: Range<Instant>,
        mut next: impl FnMut(Instant) -> Option<(Op, u64)> + Send,
    ) -> Stats {
        while let Some((op, key)) = next(Instant::now()) {
            let sent = Instant::now();
            let answer = self.exchange(op, key).await;
            let done = Instant::now();
            if !window.contains(&done) {
                continue;
            }
            match answer {
                Ok((status, body)) if status.is_success() && self.api.answered(op, &body) => {
                    stats.ok += 1;
                    let micros = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                    stats.latency.saturating_record(micros.max(1));
                }
                Ok((status, body)) => {
                    stats.non_2xx += 1;
                    stats.first_non_2xx.get_or_insert_with(|| {
                        format!("{status} {}", String::from_utf8_lossy(&body).trim())
                    });
                }
                Err(e) => {
                    stats.io_errors += 1;
                    stats.first_io_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        stats
    }

    async fn exchange(&mut self, op: Op, key: u64) -> Result<(StatusCode, Bytes)> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match Conn::open(self.addr, self.api.tls()).await {
                Ok(conn) => conn,
                Err(e) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return Err(e);
                }
            },
        };
        let mut request = self.api.request(op, key).context("building the request")?;
        request.headers_mut().insert(HOST, self.host.clone());
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, conn.send(request))
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {REQUEST_TIMEOUT:?}")));
        // After a failure the connection is in an unknown state (a request
        // half sent or half answered): it is dropped, never reused.
        if answer.is_ok() && !conn.closed {
            self.conn = Some(conn);
        }
        answer
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What drives a connection's socket I/O.
type Driver = http1::Connection<TokioIo<Box<dyn Io>>, Full<Bytes>>;

/// A client connection whose I/O is driven by whoever awaits [`Conn::send`].
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Driver>>,
    /// The driver has finished: the connection is gone, whatever the last
    /// exchange got.
    closed: bool,
}

impl Conn {
    /// Connects to `addr`, and starts TLS there through `tls`, checking
    /// that the server's certificate names `addr`'s IP address.
    async fn open(addr: SocketAddr, tls: Option<&TlsConnector>) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream: Box<dyn Io> = match tls {
            Some(tls) => Box::new(
                tls.connect(addr.ip().into(), stream)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?,
            ),
            None => Box::new(stream),
        };
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Self {
            sender,
            driver: Box::pin(driver),
            closed: false,
        })
    }

    /// Sends `request` and reads the whole answer.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        let sender = &mut self.sender;
        let exchange = async move {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        tokio::pin!(exchange);
        // The driver does the socket I/O; it only ends when the connection
        // does, which fails the exchange.
        tokio::select! {
            biased;
            answer = &mut exchange => Ok(answer?),
            closed = self.driver.as_mut() => {
                self.closed = true;
                // A server may answer and close at once (a 413 before the
                // body is read): the answer is then already delivered.
                let last = std::future::poll_fn(|cx| Poll::Ready(exchange.as_mut().poll(cx))).await;
                match (last, closed) {
                    (Poll::Ready(answer), _) => Ok(answer?),
                    (Poll::Pending, Ok(())) => Err(anyhow!("connection closed by the server")),
                    (Poll::Pending, Err(e)) => Err(e.into()),
                }
            },
        }
    }
}

/// A fast, seedable generator for keys and operations: the client's CPU is
/// part of what the machine can give the servers, so no more than a few
/// instructions per request (Steele, Lea and Flood's SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::extract::{Path, State};
    use axum::http::StatusCode as Status;
    use axum::routing::{get as get_route, put};
    use axum::Router;

    use super::*;

    /// `GET /ok` and `PUT /kv/{key}` for key number `key`.
    struct TestApi;

    impl Api for TestApi {
        fn request(&self, op: Op, key_number: u64) -> http::Result<Request<Full<Bytes>>> {
            let (method, uri) = match op {
                Op::Get => (Method::GET, "/ok".to_owned()),
                Op::Put => (Method::PUT, format!("/kv/{}", key(key_number))),
            };
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Full::new(Bytes::new()))
        }
    }

    async fn serve(app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn answers_errors_and_dead_servers_are_counted_apart() {
        let app = Router::new()
            .route("/ok", get_route(|| async { "x" }))
            .route(
                "/kv/{key}",
                put(|| async { (Status::SERVICE_UNAVAILABLE, "full") }),
            );
        let live = serve(app).await;
        // A port nothing listens on: every connect is refused.
        let dead = crate::process::free_tcp_ports(1).expect("a port")[0];
        let root = tempfile::tempdir().expect("temp dir");
        let servers = Processes::new(root.path(), "none").expect("processes");
        let load = Load {
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            keys: 10,
            workload: Workload::Mixed,
            threads: 2,
        };
        let outcome = run(Arc::new(TestApi), &[live, dead], &load, &servers)
            .await
            .expect("run");
        let stats = &outcome.stats;
        assert!(stats.ok > 10, "GETs answered: {}", stats.ok);
        assert!(stats.non_2xx > 10, "PUTs refused: {}", stats.non_2xx);
        assert_eq!(stats.latency.len(), stats.ok, "only answers are timed");
        assert_eq!(
            stats.first_non_2xx.as_deref(),
            Some("503 Service Unavailable full")
        );
        // Two connections to the dead port, each retrying every 10 ms.
        assert!(
            stats.io_errors >= 10,
            "refused connects: {}",
            stats.io_errors
        );
        let io = stats.first_io_error.as_deref().unwrap_or_default();
        assert!(io.contains(&format!("connecting to {dead}")), "{io}");
        assert!((outcome.window.as_secs_f64() - 0.4).abs() < 0.1);
        assert_eq!(outcome.server_cpu, Duration::ZERO, "no server processes");
    }

    #[tokio::test]
    async fn a_server_that_closes_after_answering_costs_no_errors() {
        // Every answer closes its connection, as a server refusing a body
        // (413) or draining for shutdown does: the generator reconnects.
        let app = Router::new().route(
            "/ok",
            get_route(|| async { ([(hyper::header::CONNECTION, "close")], "x") }),
        );
        let addr = serve(app).await;
        let root = tempfile::tempdir().expect("temp dir");
        let servers = Processes::new(root.path(), "none").expect("processes");
        let load = Load {
            connections: 2,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
            keys: 10,
            workload: Workload::Get,
            threads: 1,
        };
        let outcome = run(Arc::new(TestApi), &[addr], &load, &servers)
            .await
            .expect("run");
        assert!(outcome.stats.ok > 10, "answered: {}", outcome.stats.ok);
        assert_eq!(
            outcome.stats.io_errors, 0,
            "{:?}",
            outcome.stats.first_io_error
        );
        assert_eq!(outcome.stats.non_2xx, 0);
    }

    fn preload_of(keys: u64) -> Load {
        Load {
            connections: 8,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            keys,
            workload: Workload::Put,
            threads: 2,
        }
    }

    #[tokio::test]
    async fn preload_writes_every_key_exactly_once() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let app =
            Router::new()
                .route(
                    "/kv/{key}",
                    put(
                        |State(written): State<Arc<Mutex<Vec<String>>>>,
                         Path(key): Path<String>| async move {
                            written.lock().expect("not poisoned").push(key);
                            Status::NO_CONTENT
                        },
                    ),
                )
                .with_state(written.clone());
        let addr = serve(app).await;
        preload(Arc::new(TestApi), &[addr, addr], &preload_of(500))
            .await
            .expect("preload");
        let mut keys = written.lock().expect("not poisoned").clone();
        keys.sort();
        let expected: Vec<String> = (0..500).map(key).collect();
        assert_eq!(keys, expected);
    }

    #[tokio::test]
    async fn a_failed_preload_says_how_many_writes_failed() {
        let app = Router::new().route("/kv/{key}", put(|| async { Status::INSUFFICIENT_STORAGE }));
        let addr = serve(app).await;
        let err = preload(Arc::new(TestApi), &[addr], &preload_of(20))
            .await
            .expect_err("every write refused")
            .to_string();
        assert!(
            err.contains("20 of 20 writes failed (20 errors: 507"),
            "{err}"
        );
    }

    #[test]
    fn keys_are_fixed_width_and_distinct() {
        assert_eq!(key(7), "bench-0000000007");
        assert_eq!(key(99_999).len(), key(0).len());
    }

    #[test]
    fn splitmix_spreads_keys_over_the_space() {
        let mut rng = SplitMix64(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[(rng.next() % 10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
