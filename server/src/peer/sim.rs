//! A simulated network for in-process tests: [`SimNet`] holds a cluster of
//! nodes, each with its own real [`Storage`] (an engine in a temporary
//! directory) and clock, and [`SimPeer`] is the [`Peer`] through which one of
//! them calls the others. Calls are decoded with [`wire`](super::wire) and
//! applied to the target's engine, as `api::internal` does for HTTP.
//!
//! A script decides what becomes of each call: a [`Fault`] per link (any
//! caller to a node, or one caller to one node), for every call or for the
//! next few, and partitions that cut a set of nodes off from the rest. A
//! call that gets no answer times out after the net's replica timeout, as
//! [`HttpPeer`](super::http::HttpPeer) does. Randomness (jitter) comes from
//! one seeded generator and time from tokio's clock, so a test under
//! `#[tokio::test(start_paused = true)]` runs the same way every time and
//! its delays cost no wall time. Every call is logged ([`SimNet::calls`])
//! for tests to check where calls went.
//!
//! A call that the script delivers travels one of three [`Wire`]s: handed
//! straight to the target's engine, or over a real socket through the
//! real [`HttpPeer`](super::http::HttpPeer) or
//! [`MuxPeer`](super::mux::MuxPeer) to the target's real serving side
//! ([`Replica`], on 127.0.0.1), so the coordinator's tests run against
//! each transport with the same script. While a call is on a real socket,
//! tokio's paused clock is held still (see [`held_still`]): the round trip
//! takes no virtual time, as a direct delivery does.
//!
//! Streams are not simulated: [`Peer::stream`] is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_ring::{NodeId, TokenRange};

use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::http::HttpPeer;
use super::mux::handshake::MuxKey;
use super::mux::MuxPeer;
use super::repair::{DigestAnswer, DigestRequest, RowsAnswer, RowsRequest};
use super::wire::{
    decode_apply, decode_apply_batch, RecordDigest, APPLY_BATCH_PATH, APPLY_PATH, READ_DIGEST_PATH,
    READ_PATH,
};
use super::{Chunks, Endpoint, Peer, PeerError};
use crate::api::internal::{self, Replica};
use crate::api::mux::{serve, Serving};
use crate::applier::Applier;
use crate::auth::ClusterSecret;
use crate::config::defaults::{MAX_BODY_SIZE, MAX_KEY_SIZE, MAX_VALUE_SIZE};
use crate::config::Limits;
use crate::files::index::{ListRequest, Listed};
use crate::hlc::{Hlc, WallClock};
use crate::storage::{Record, Storage};

/// How a delivered call reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Handed straight to the target's engine.
    Direct,
    /// Over HTTP, to the target's internal routes.
    Http,
    /// Over the multiplexed transport.
    Mux,
}

/// The wall-clock bound on one call held still on a real socket: past it
/// the clock moves again, so a call that never ends fails on its own
/// deadline instead of hanging the test.
const HOLD_AT_MOST: Duration = Duration::from_secs(20);

/// What becomes of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// It never arrives: the caller waits out its deadline.
    DropRequest,
    /// It arrives and takes effect, but the answer is lost: the caller
    /// waits out its deadline.
    DropAnswer,
    /// No connection: the caller learns at once, nothing arrives.
    Unreachable,
    /// Answered at once with this error status; nothing takes effect.
    Refuse(u16),
    /// It arrives this much later. Past the deadline it is a timeout, and it
    /// never arrives (the request was still queued when the caller gave up).
    Delay(Duration),
    /// It arrives after a delay drawn below this from the seeded generator,
    /// so that concurrent calls overtake each other.
    Jitter(Duration),
}

/// The calls a [`Fault`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// Every call to this node.
    To(NodeId),
    /// Calls from the first node to the second.
    Between(NodeId, NodeId),
}

/// The kind of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// [`Peer::apply`].
    Apply,
    /// [`Peer::apply_batch`].
    ApplyBatch,
    /// [`Peer::read`].
    Read,
    /// [`Peer::read_digest`].
    ReadDigest,
}

/// A call as the net saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// The caller.
    pub(crate) from: NodeId,
    /// The node called.
    pub(crate) to: NodeId,
    /// Which call.
    pub(crate) kind: CallKind,
    /// What the script did to it (`None`: delivered at once).
    pub(crate) fault: Option<Fault>,
}

/// A fault on a link, for every call or for the next `left`.
#[derive(Debug)]
struct Rule {
    link: Link,
    fault: Fault,
    left: Option<usize>,
}

impl Rule {
    fn matches(&self, from: &NodeId, to: &NodeId) -> bool {
        match &self.link {
            Link::To(t) => t == to,
            Link::Between(f, t) => f == from && t == to,
        }
    }
}

#[derive(Debug)]
struct Script {
    /// Later rules win over earlier ones.
    rules: Vec<Rule>,
    /// Nodes cut off from the others (and still connected among themselves).
    cut: BTreeSet<NodeId>,
    rng: StdRng,
}

/// One simulated node.
#[derive(Debug)]
struct SimNode {
    storage: Storage,
    hlc: Arc<Hlc>,
    /// Where its serving side listens, on a real wire.
    addr: Option<SocketAddr>,
}

/// A simulated cluster of nodes and the network between them.
#[derive(Debug)]
pub(crate) struct SimNet {
    nodes: BTreeMap<NodeId, SimNode>,
    /// Deadline of a call, as the replica timeout.
    timeout: Duration,
    script: Mutex<Script>,
    calls: Mutex<Vec<Call>>,
    wire: Wire,
    /// The nodes' serving sides on a real wire, stopped with the net.
    servers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Holds the engines' directories until the net is dropped.
    _dir: tempfile::TempDir,
}

impl Drop for SimNet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for server in &self.servers {
            server.abort();
        }
    }
}

impl SimNet {
    /// A net of `ids`, each with an empty engine, whose calls time out after
    /// `timeout` and whose jitter is drawn from `seed`.
    pub(crate) fn new(ids: &[&str], timeout: Duration, seed: u64) -> std::io::Result<Arc<Self>> {
        Self::on(Wire::Direct, ids, timeout, seed)
    }

    /// A net as [`SimNet::new`] makes, whose delivered calls travel `wire`.
    /// A real wire starts each node's serving side on 127.0.0.1, so it must
    /// be called within a tokio runtime.
    pub(crate) fn on(
        wire: Wire,
        ids: &[&str],
        timeout: Duration,
        seed: u64,
    ) -> std::io::Result<Arc<Self>> {
        let dir = tempfile::tempdir()?;
        let mut nodes = BTreeMap::new();
        let mut servers = Vec::new();
        let (stop, stopped) = watch::channel(false);
        let grace = Duration::from_millis(crate::config::defaults::TOMBSTONE_GRACE_MS);
        for (tag, id) in (0..=u8::MAX).zip(ids) {
            let storage =
                Storage::open(&dir.path().join(id), grace).map_err(std::io::Error::other)?;
            let hlc = Arc::new(Hlc::tagged(tag));
            let addr = if wire == Wire::Direct {
                None
            } else {
                let replica = Arc::new(Replica::new(
                    storage.clone(),
                    Applier::new(storage.clone()),
                    hlc.clone(),
                    limits(),
                ));
                let (addr, server) = start_serving(wire, replica, timeout, stopped.clone())?;
                servers.push(server);
                Some(addr)
            };
            nodes.insert(NodeId::from(*id), SimNode { storage, hlc, addr });
        }
        Ok(Arc::new(Self {
            nodes,
            timeout,
            script: Mutex::new(Script {
                rules: Vec::new(),
                cut: BTreeSet::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
            calls: Mutex::new(Vec::new()),
            wire,
            servers,
            stop,
            _dir: dir,
        }))
    }

    /// The peer `from` calls the others through.
    pub(crate) fn peer(self: &Arc<Self>, from: &str) -> SimPeer {
        let http = || {
            HttpPeer::new(secret(), self.timeout, self.timeout, None)
                .expect("an HTTP client builds")
                .signing_as(from, WallClock::default())
        };
        let real: Option<Arc<dyn Peer>> = match self.wire {
            Wire::Direct => None,
            Wire::Http => Some(Arc::new(http())),
            Wire::Mux => Some(Arc::new(MuxPeer::new(
                http(),
                MuxKey::derive(&secret()),
                from,
                self.timeout,
                limits().apply_batch_body_size(),
                None,
            ))),
        };
        SimPeer {
            from: NodeId::from(from),
            net: self.clone(),
            real,
        }
    }

    /// The engine of `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not in the net: a mistake in the test.
    pub(crate) fn storage(&self, id: &str) -> Storage {
        self.node(id).storage.clone()
    }

    /// The clock of `id` (see [`SimNet::storage`] on panics).
    pub(crate) fn hlc(&self, id: &str) -> Arc<Hlc> {
        self.node(id).hlc.clone()
    }

    fn node(&self, id: &str) -> &SimNode {
        self.nodes
            .get(&NodeId::from(id))
            .unwrap_or_else(|| panic!("no node {id} in the simulated net"))
    }

    /// Every call on `link` meets `fault`, until [`SimNet::heal`].
    pub(crate) fn fault(&self, link: Link, fault: Fault) {
        self.script.lock().rules.push(Rule {
            link,
            fault,
            left: None,
        });
    }

    /// The next `times` calls on `link` meet `fault`.
    pub(crate) fn fault_times(&self, link: Link, fault: Fault, times: usize) {
        self.script.lock().rules.push(Rule {
            link,
            fault,
            left: Some(times),
        });
    }

    /// Cuts `ids` off from the other nodes, both ways: calls across the cut
    /// are dropped.
    pub(crate) fn partition(&self, ids: &[&str]) {
        self.script
            .lock()
            .cut
            .extend(ids.iter().map(|id| NodeId::from(*id)));
    }

    /// Clears every fault and partition.
    pub(crate) fn heal(&self) {
        let mut script = self.script.lock();
        script.rules.clear();
        script.cut.clear();
    }

    /// Every call so far, in the order they were made.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    /// What the script does to the next call from `from` to `to`, drawn
    /// and logged now.
    fn route(&self, from: &NodeId, to: &NodeId, kind: CallKind) -> Fate {
        let fault = {
            let mut script = self.script.lock();
            let fault = if script.cut.contains(from) != script.cut.contains(to) {
                Some(Fault::DropRequest)
            } else {
                let rule = script
                    .rules
                    .iter_mut()
                    .rev()
                    .find(|r| r.matches(from, to) && r.left != Some(0));
                rule.map(|r| {
                    if let Some(left) = &mut r.left {
                        *left -= 1;
                    }
                    r.fault
                })
            };
            match fault {
                Some(Fault::Jitter(max)) => {
                    let max = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
                    // Logged as drawn, so that two runs of one seed compare.
                    Some(Fault::Delay(Duration::from_micros(
                        script.rng.gen_range(0..=max),
                    )))
                }
                other => other,
            }
        };
        self.calls.lock().push(Call {
            from: from.clone(),
            to: to.clone(),
            kind,
            fault,
        });
        match fault {
            None => Fate::After(Duration::ZERO),
            Some(Fault::Unreachable) => Fate::Unreachable,
            Some(Fault::Refuse(status)) => Fate::Refused(status),
            Some(Fault::DropRequest) => Fate::Lost { lands: false },
            Some(Fault::DropAnswer) => Fate::Lost { lands: true },
            Some(Fault::Delay(delay) | Fault::Jitter(delay)) if delay < self.timeout => {
                Fate::After(delay)
            }
            Some(Fault::Delay(_) | Fault::Jitter(_)) => Fate::Lost { lands: false },
        }
    }

    /// Carries one call from `from` to `to` through the script; `deliver`
    /// is the call's delivery, awaited only if the script delivers it.
    async fn call<T>(
        &self,
        from: &NodeId,
        to: &NodeId,
        kind: CallKind,
        deliver: impl Future<Output = Result<T, PeerError>>,
    ) -> Result<T, PeerError> {
        if !self.nodes.contains_key(to) {
            return Err(PeerError::Unreachable(format!("no node {to}")));
        }
        match self.route(from, to, kind) {
            Fate::Unreachable => Err(PeerError::Unreachable("connection refused".into())),
            Fate::Refused(status) => Err(refused(status)),
            Fate::Lost { lands } => {
                if lands {
                    let _ = deliver.await;
                }
                tokio::time::sleep(self.timeout).await;
                Err(PeerError::Timeout)
            }
            Fate::After(delay) => {
                tokio::time::sleep(delay).await;
                deliver.await
            }
        }
    }
}

/// What happens to one call, once the script has decided.
enum Fate {
    /// Delivered and answered after this long.
    After(Duration),
    /// No answer within the deadline; whether it took effect.
    Lost { lands: bool },
    /// No connection.
    Unreachable,
    /// Answered with this error status.
    Refused(u16),
}

/// The [`Peer`] of one node of a [`SimNet`].
#[derive(Clone)]
pub(crate) struct SimPeer {
    from: NodeId,
    net: Arc<SimNet>,
    /// The real transport's client, on a real wire.
    real: Option<Arc<dyn Peer>>,
}

impl std::fmt::Debug for SimPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPeer")
            .field("from", &self.from)
            .field("wire", &self.net.wire)
            .finish_non_exhaustive()
    }
}

impl SimPeer {
    /// The real client and the address of `to`'s serving side, on a real
    /// wire.
    fn real_to<'a>(&self, to: Endpoint<'a>) -> Option<(&dyn Peer, Endpoint<'a>)> {
        let addr = self.net.nodes.get(to.id)?.addr?;
        let peer = self.real.as_deref()?;
        Some((peer, Endpoint { id: to.id, addr }))
    }

    /// The simulated node `to`.
    fn node(&self, to: &NodeId) -> Result<&SimNode, PeerError> {
        self.net
            .nodes
            .get(to)
            .ok_or_else(|| PeerError::Unreachable(format!("no node {to}")))
    }
}

#[async_trait]
impl Peer for SimPeer {
    async fn apply(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        let deliver = async {
            if let Some((peer, to)) = self.real_to(to) {
                return held_still(peer.apply(to, body)).await;
            }
            // What `api::internal::apply` answers: 400 for a body that
            // does not decode, 500 for an engine error.
            let node = self.node(to.id)?;
            let (key, record) = decode_apply(body).map_err(|_| refused(400))?;
            node.hlc.update(record.record().version);
            node.storage
                .apply_encoded(&key, &record)
                .map(|_| ())
                .map_err(|_| refused(500))
        };
        self.net
            .call(&self.from, to.id, CallKind::Apply, deliver)
            .await
    }

    async fn apply_batch(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        let deliver = async {
            if let Some((peer, to)) = self.real_to(to) {
                return held_still(peer.apply_batch(to, body)).await;
            }
            // What `api::internal::apply_batch` answers.
            let node = self.node(to.id)?;
            let entries = decode_apply_batch(&body).map_err(|_| refused(400))?;
            for e in &entries {
                node.hlc.update(e.record.version);
                node.storage
                    .apply(e.user_key(), &e.record)
                    .map_err(|_| refused(500))?;
            }
            Ok(())
        };
        self.net
            .call(&self.from, to.id, CallKind::ApplyBatch, deliver)
            .await
    }

    async fn read(&self, to: Endpoint<'_>, key: Bytes) -> Result<Option<Record>, PeerError> {
        let deliver = async {
            if let Some((peer, to)) = self.real_to(to) {
                return held_still(peer.read(to, key)).await;
            }
            self.node(to.id)?
                .storage
                .read(&key)
                .map_err(|_| refused(500))
        };
        self.net
            .call(&self.from, to.id, CallKind::Read, deliver)
            .await
    }

    async fn read_digest(
        &self,
        to: Endpoint<'_>,
        key: Bytes,
    ) -> Result<Option<RecordDigest>, PeerError> {
        let deliver = async {
            if let Some((peer, to)) = self.real_to(to) {
                return held_still(peer.read_digest(to, key)).await;
            }
            let record = self
                .node(to.id)?
                .storage
                .read(&key)
                .map_err(|_| refused(500))?;
            Ok(record.as_ref().map(RecordDigest::of))
        };
        self.net
            .call(&self.from, to.id, CallKind::ReadDigest, deliver)
            .await
    }

    async fn stream(
        &self,
        _to: Endpoint<'_>,
        _range: TokenRange,
        _after: Option<&[u8]>,
    ) -> Result<Box<dyn Chunks>, PeerError> {
        Err(PeerError::Unreachable(
            "streams are not simulated".to_owned(),
        ))
    }

    async fn digest(
        &self,
        _to: Endpoint<'_>,
        _request: &DigestRequest,
    ) -> Result<DigestAnswer, PeerError> {
        Err(PeerError::Unreachable("repair is not simulated".to_owned()))
    }

    async fn repair_rows(
        &self,
        _to: Endpoint<'_>,
        _request: &RowsRequest,
    ) -> Result<RowsAnswer, PeerError> {
        Err(PeerError::Unreachable("repair is not simulated".to_owned()))
    }

    async fn list_files(
        &self,
        to: Endpoint<'_>,
        request: &ListRequest,
    ) -> Result<Vec<Listed>, PeerError> {
        Ok(self.node(to.id)?.storage.manifests().page(request))
    }
}

fn refused(status: u16) -> PeerError {
    PeerError::Refused { status }
}

/// The secret of every simulated cluster.
fn secret() -> ClusterSecret {
    ClusterSecret::new("simulated cluster".to_owned())
}

/// The size limits of every simulated node: the defaults.
fn limits() -> Limits {
    Limits {
        max_key_size: MAX_KEY_SIZE,
        max_value_size: MAX_VALUE_SIZE,
        max_body_size: MAX_BODY_SIZE,
        block_size: None,
    }
}

/// Starts serving `replica` on 127.0.0.1 over `wire` until `stop`: the
/// internal routes for HTTP, the transport's connections for the
/// multiplexed one.
fn start_serving(
    wire: Wire,
    replica: Arc<Replica>,
    timeout: Duration,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let server = match wire {
        Wire::Direct => return Err(std::io::Error::other("a direct wire serves nothing")),
        Wire::Http => {
            let router = Router::new()
                .route(APPLY_PATH, post(internal::apply))
                .route(APPLY_BATCH_PATH, post(internal::apply_batch))
                .route(READ_PATH, post(internal::read))
                .route(READ_DIGEST_PATH, post(internal::read_digest))
                .with_state(replica);
            let serving = axum::serve(listener, router).into_future();
            tokio::spawn(async move {
                let _ = serving.await;
            })
        }
        Wire::Mux => {
            let serving = Arc::new(Serving::with(
                replica,
                MuxKey::derive(&secret()),
                timeout,
                timeout,
            ));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(
                        crate::conn::Conn::Plain(stream),
                        serving.clone(),
                        stop.clone(),
                    ));
                }
            })
        }
    };
    Ok((addr, server))
}

/// Awaits `call`, which travels a real socket, with tokio's paused clock
/// held still until it ends (a running blocking task keeps the clock from
/// advancing on its own): otherwise the clock would jump to the next timer
/// whenever the runtime waits on the socket, and the transport's own
/// deadline would fire before the answer came. For at most
/// [`HOLD_AT_MOST`] of wall time.
async fn held_still<F: Future>(call: F) -> F::Output {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let hold = tokio::task::spawn_blocking(move || {
        let _ = held.recv_timeout(HOLD_AT_MOST);
    });
    let answer = call.await;
    drop(release);
    let _ = hold.await;
    answer
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::time::Instant;

    use super::*;
    use crate::peer::wire::encode_apply;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn to(id: &NodeId) -> Endpoint<'_> {
        Endpoint {
            id,
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_fault_answers_as_a_real_peer_would_and_lands_only_when_it_should() {
        let net = SimNet::new(&["a", "b"], TIMEOUT, 1).unwrap();
        let peer = net.peer("a");
        let b = NodeId::from("b");
        let cases = [
            (None, Ok(()), true, Duration::ZERO),
            (
                Some(Fault::Unreachable),
                Err("unreachable"),
                false,
                Duration::ZERO,
            ),
            (
                Some(Fault::Refuse(503)),
                Err("refused"),
                false,
                Duration::ZERO,
            ),
            (Some(Fault::DropRequest), Err("timeout"), false, TIMEOUT),
            (Some(Fault::DropAnswer), Err("timeout"), true, TIMEOUT),
            (
                Some(Fault::Delay(Duration::from_millis(300))),
                Ok(()),
                true,
                Duration::from_millis(300),
            ),
            (
                Some(Fault::Delay(TIMEOUT * 2)),
                Err("timeout"),
                false,
                TIMEOUT,
            ),
        ];
        for (n, (fault, expected, lands, takes)) in cases.into_iter().enumerate() {
            net.heal();
            if let Some(fault) = fault {
                net.fault(Link::To(b.clone()), fault);
            }
            let key = format!("k{n}");
            let start = Instant::now();
            let got = peer
                .apply(to(&b), encode_apply(key.as_bytes(), &Record::value(7, "v")))
                .await;
            let kind = got.map_err(|e| match e {
                PeerError::Timeout => "timeout",
                PeerError::Refused { .. } => "refused",
                PeerError::Unreachable(_) => "unreachable",
                _ => "other",
            });
            assert_eq!(kind, expected, "{fault:?}");
            assert_eq!(start.elapsed(), takes, "{fault:?}");
            let stored = net.storage("b").read(key.as_bytes()).unwrap();
            assert_eq!(stored.is_some(), lands, "{fault:?}");
        }
        // An apply that landed folded its version into the target's clock.
        assert!(net.hlc("b").now() > 7);
    }

    #[tokio::test(start_paused = true)]
    async fn counted_faults_run_out_and_partitions_cut_both_ways_until_healed() {
        let net = SimNet::new(&["a", "b", "c"], TIMEOUT, 1).unwrap();
        let (a, b, c) = (NodeId::from("a"), NodeId::from("b"), NodeId::from("c"));
        net.fault_times(Link::Between(a.clone(), b.clone()), Fault::Refuse(500), 2);
        for expect_ok in [false, false, true] {
            let got = net.peer("a").read(to(&b), Bytes::from("k")).await;
            assert_eq!(got.is_ok(), expect_ok);
        }
        // Only the link a -> b was faulty.
        assert!(net.peer("c").read(to(&b), Bytes::from("k")).await.is_ok());

        net.partition(&["c"]);
        let across = [(&a, &c), (&c, &a), (&b, &c)];
        for (from, target) in across {
            let got = net
                .peer(from.as_str())
                .read(to(target), Bytes::from("k"))
                .await;
            assert_eq!(got, Err(PeerError::Timeout), "{from} -> {target}");
        }
        assert!(net.peer("a").read(to(&b), Bytes::from("k")).await.is_ok());
        net.heal();
        assert!(net.peer("a").read(to(&c), Bytes::from("k")).await.is_ok());
        let unknown = NodeId::from("z");
        assert!(matches!(
            net.peer("a").read(to(&unknown), Bytes::from("k")).await,
            Err(PeerError::Unreachable(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_digest_call_answers_what_the_target_holds_and_meets_the_script() {
        let net = SimNet::new(&["a", "b"], TIMEOUT, 1).unwrap();
        let b = NodeId::from("b");
        let record = Record::value(7, "v");
        net.storage("b").apply(b"k", &record).unwrap();
        let peer = net.peer("a");
        let digest = |key: &'static str| peer.read_digest(to(&b), Bytes::from(key));
        assert_eq!(digest("k").await, Ok(Some(RecordDigest::of(&record))));
        assert_eq!(digest("absent").await, Ok(None));
        net.fault_times(Link::To(b.clone()), Fault::Refuse(503), 1);
        assert_eq!(digest("k").await, Err(PeerError::Refused { status: 503 }));
        let kinds: Vec<CallKind> = net.calls().into_iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [CallKind::ReadDigest; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_is_drawn_from_the_seed() {
        let delays = |seed| async move {
            let net = SimNet::new(&["a", "b"], TIMEOUT, seed).unwrap();
            let b = NodeId::from("b");
            net.fault(
                Link::To(b.clone()),
                Fault::Jitter(Duration::from_millis(50)),
            );
            for _ in 0..8 {
                net.peer("a").read(to(&b), Bytes::from("k")).await.unwrap();
            }
            net.calls().into_iter().map(|c| c.fault).collect::<Vec<_>>()
        };
        let first = delays(7).await;
        assert_eq!(first, delays(7).await);
        assert_ne!(first, delays(8).await);
        assert!(first
            .iter()
            .all(|f| matches!(f, Some(Fault::Delay(d)) if *d <= Duration::from_millis(50))));
    }
}
