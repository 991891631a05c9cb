//! Real coordinators driven over views built by hand and a simulated
//! network ([`SimNet`]), on each of its wires (direct, HTTP, multiplexed): quorum arithmetic under each kind of failure,
//! pending and leaving replicas, tail writes, digest reads and read repair,
//! the background set's bounds and the node's drain of it. Time is tokio's paused clock,
//! so timeouts cost no wall time.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_ring::{NodeId, ReplicationFactor};
use tokio::time::{sleep, Instant};

use super::{Consistency, Coordinator, CoordinatorError, CoordinatorParts};
use crate::applier::Applier;
use crate::config::defaults::{
    MAX_BACKGROUND_REPLICA_CALLS, MAX_HINT_BYTES_PER_NODE, MAX_HINT_WINDOW_MS,
};
use crate::config::HintLimits;
use crate::hints::Hints;
use crate::membership::{ClusterView, MemberInfo, NodeState};
use crate::metrics::Metrics;
use crate::peer::sim::{CallKind, Fault, Link, SimNet, Wire};
use crate::routing::Routing;
use crate::storage::Record;

use Consistency::{All, One, Quorum};
use NodeState::{Available, Bootstrapping, Joining, Leaving};

tokio::task_local! {
    /// The wire the test running in this task delivers its calls over.
    static WIRE: Wire;
}

/// The wire of the running test ([`Wire::Direct`] outside
/// [`on_every_wire`]).
fn wire() -> Wire {
    WIRE.try_with(|w| *w).unwrap_or(Wire::Direct)
}

/// Runs the test `$name` (an `async fn` of no arguments) once per wire, on
/// tokio's paused clock: `$name::direct`, `$name::http` and `$name::mux`.
/// The same script and the same assertions hold on every wire, so the
/// coordinator is tested against each real transport as well as the
/// direct one.
macro_rules! on_every_wire {
    ($name:ident) => {
        mod $name {
            use super::{Wire, WIRE};

            #[tokio::test(start_paused = true)]
            async fn direct() {
                WIRE.scope(Wire::Direct, super::$name()).await;
            }

            #[tokio::test(start_paused = true)]
            async fn http() {
                WIRE.scope(Wire::Http, super::$name()).await;
            }

            #[tokio::test(start_paused = true)]
            async fn mux() {
                WIRE.scope(Wire::Mux, super::$name()).await;
            }
        }
    };
}

/// The replica timeout of the simulated network.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough for every call in flight to have ended.
const SETTLE: Duration = Duration::from_secs(5);

/// Members in a view, and the simulated nodes behind them.
struct Cluster {
    net: Arc<SimNet>,
    members: BTreeMap<NodeId, MemberInfo>,
    rf: ReplicationFactor,
}

/// A coordinator on one node, with what a test looks at.
struct Node {
    coordinator: Coordinator,
    routing: Arc<Routing>,
    metrics: Arc<Metrics>,
    hints: Hints,
    _hints_dir: tempfile::TempDir,
}

impl Cluster {
    /// Nodes in these states, up, with replication factor 3.
    fn new(nodes: &[(&str, NodeState)]) -> Self {
        let ids: Vec<&str> = nodes.iter().map(|(id, _)| *id).collect();
        let members = nodes
            .iter()
            .map(|(id, state)| {
                let m = MemberInfo::for_test(id, *state, 1);
                (m.id.clone(), m)
            })
            .collect();
        Self {
            net: SimNet::on(wire(), &ids, TIMEOUT, 7).unwrap(),
            members,
            rf: ReplicationFactor::new(3).unwrap(),
        }
    }

    /// Three AVAILABLE replicas, a, b and c: every key lives on all three.
    fn abc() -> Self {
        Self::new(&[("a", Available), ("b", Available), ("c", Available)])
    }

    /// a, b and c, and x, a JOINING node that owns nothing and coordinates.
    fn abc_and_x() -> Self {
        Self::new(&[
            ("a", Available),
            ("b", Available),
            ("c", Available),
            ("x", Joining),
        ])
    }

    /// Changes how the views made from now on show `id`.
    fn set(&mut self, id: &str, change: impl FnOnce(&mut MemberInfo)) {
        change(self.members.get_mut(&NodeId::from(id)).unwrap());
    }

    fn view(&self, at: &str) -> ClusterView {
        ClusterView::build(NodeId::from(at), self.members.clone(), 1)
    }

    fn node(&self, at: &str) -> Node {
        self.node_with(at, MAX_BACKGROUND_REPLICA_CALLS)
    }

    /// A coordinator on `at` whose background set holds `limit` calls.
    fn node_with(&self, at: &str, limit: usize) -> Node {
        let routing = Arc::new(Routing::new(self.view(at)));
        let metrics = Arc::new(Metrics::new());
        let hints_dir = tempfile::tempdir().unwrap();
        let limits = HintLimits {
            max_bytes_per_node: MAX_HINT_BYTES_PER_NODE,
            window: Duration::from_millis(MAX_HINT_WINDOW_MS),
        };
        let hints = Hints::open(hints_dir.path(), limits, metrics.hints()).unwrap();
        let coordinator = Coordinator::new(CoordinatorParts {
            applier: Applier::new(self.net.storage(at)),
            storage: self.net.storage(at),
            routing: routing.clone(),
            hlc: self.net.hlc(at),
            rf: self.rf,
            peer: Arc::new(self.net.peer(at)),
            metrics: metrics.clone(),
            max_background_calls: limit,
            hints: hints.clone(),
        });
        Node {
            coordinator,
            routing,
            metrics,
            hints,
            _hints_dir: hints_dir,
        }
    }

    /// The preference list of `key`, owner first.
    fn replicas(&self, key: &[u8]) -> Vec<String> {
        self.view("a")
            .replicas(key, self.rf)
            .iter()
            .map(|m| m.id.to_string())
            .collect()
    }

    /// The first key (`k0`, `k1`, ...) that `pick` takes.
    fn key_where(&self, pick: impl Fn(&ClusterView, &[u8]) -> bool) -> Bytes {
        let view = self.view("a");
        (0..10_000)
            .map(|n| Bytes::from(format!("k{n}")))
            .find(|k| pick(&view, k))
            .unwrap()
    }

    /// Stores `record` straight into `id`'s engine.
    fn put(&self, id: &str, key: &[u8], record: &Record) {
        self.net.storage(id).apply(key, record).unwrap();
    }

    /// What `id`'s engine holds for `key`.
    fn stored(&self, id: &str, key: &[u8]) -> Option<Record> {
        self.net.storage(id).read(key).unwrap()
    }

    /// The peer calls of `kind` made so far, by target.
    fn calls_to(&self, kind: CallKind) -> Vec<String> {
        self.net
            .calls()
            .into_iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.to.to_string())
            .collect()
    }
}

fn key(n: usize) -> Bytes {
    Bytes::from(format!("key{n}"))
}

fn value(text: &str) -> Option<Bytes> {
    Some(Bytes::from(text.to_owned()))
}

/// The value of one series in `metrics`' exposition (0 if absent).
fn metric(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .encode()
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn replica_calls(metrics: &Metrics, op: &str, target: &str, outcome: &str) -> u64 {
    metric(
        metrics,
        &format!(
            "kvnode_replica_calls_total{{op=\"{op}\",target=\"{target}\",outcome=\"{outcome}\"}} "
        ),
    )
}

#[test]
fn consistency_arithmetic() {
    use Consistency::*;
    let table = [
        // (replicas, one, quorum, all)
        (1, 1, 1, 1),
        (2, 1, 2, 2),
        (3, 1, 2, 3),
        (4, 1, 3, 4),
        (5, 1, 3, 5),
    ];
    for (n, one, quorum, all) in table {
        assert_eq!(One.required(n), one);
        assert_eq!(Quorum.required(n), quorum);
        assert_eq!(All.required(n), all);
    }
    // Two quorums of the same list always share a replica.
    for n in 1..=8 {
        assert!(2 * Quorum.required(n) > n);
    }
}

#[test]
fn consistency_parses_case_insensitively() {
    assert_eq!(Consistency::parse("QUORUM"), Some(Consistency::Quorum));
    assert_eq!(Consistency::parse("one"), Some(Consistency::One));
    assert_eq!(Consistency::parse("All"), Some(Consistency::All));
    assert_eq!(Consistency::parse("two"), None);
    assert_eq!(Consistency::parse(""), None);
}

/// Writes from x (no replica itself) to a, b and c with 0..=3 of them
/// failing with `fault`, at every level: a write succeeds exactly when
/// enough replicas acknowledge, reaches every healthy replica either way,
/// and each failed call is counted under `outcome`.
async fn writes_meet_each_level_exactly_when_enough_replicas_ack(fault: Fault, outcome: &str) {
    let cluster = Cluster::abc_and_x();
    let x = cluster.node("x");
    let mut n = 0;
    for failing in 0..=3 {
        cluster.net.heal();
        let (bad, good) = ["a", "b", "c"].split_at(failing);
        for id in bad {
            cluster.net.fault(Link::To(NodeId::from(*id)), fault);
        }
        for level in [One, Quorum, All] {
            n += 1;
            let needed = level.required(3);
            let got = x.coordinator.write(key(n), value("v"), level).await;
            if good.len() >= needed {
                assert!(got.is_ok(), "{failing} failing at {level:?}: {got:?}");
            } else {
                let Err(CoordinatorError::Failed {
                    needed: got_needed,
                    answered,
                }) = got
                else {
                    panic!("{failing} failing at {level:?}: {got:?}");
                };
                assert_eq!(got_needed, needed);
                assert!(answered <= good.len());
            }
            sleep(SETTLE).await;
            for id in good {
                assert!(cluster.stored(id, &key(n)).is_some(), "{id} key{n}");
            }
            for id in bad {
                assert!(cluster.stored(id, &key(n)).is_none(), "{id} key{n}");
            }
        }
    }
    // Three levels, with 0 + 1 + 2 + 3 failing replicas each.
    assert_eq!(replica_calls(&x.metrics, "apply", "remote", outcome), 18);
    assert_eq!(replica_calls(&x.metrics, "apply", "remote", "ok"), 18);
}

on_every_wire!(writes_with_refusing_replicas_meet_each_level_exactly_when_enough_ack);
async fn writes_with_refusing_replicas_meet_each_level_exactly_when_enough_ack() {
    writes_meet_each_level_exactly_when_enough_replicas_ack(Fault::Refuse(503), "error").await;
}

on_every_wire!(writes_with_unreachable_replicas_meet_each_level_exactly_when_enough_ack);
async fn writes_with_unreachable_replicas_meet_each_level_exactly_when_enough_ack() {
    writes_meet_each_level_exactly_when_enough_replicas_ack(Fault::Unreachable, "error").await;
}

on_every_wire!(writes_with_replicas_timing_out_meet_each_level_exactly_when_enough_ack);
async fn writes_with_replicas_timing_out_meet_each_level_exactly_when_enough_ack() {
    writes_meet_each_level_exactly_when_enough_replicas_ack(Fault::DropRequest, "timeout").await;
}

on_every_wire!(reads_meet_each_level_exactly_when_enough_replicas_answer);
async fn reads_meet_each_level_exactly_when_enough_replicas_answer() {
    for fault in [Fault::Refuse(500), Fault::Unreachable, Fault::DropRequest] {
        let cluster = Cluster::abc_and_x();
        let x = cluster.node("x");
        let stored = Record::value(10, "v");
        for n in 0..12 {
            for id in ["a", "b", "c"] {
                cluster.put(id, &key(n), &stored);
            }
        }
        let mut n = 0;
        for failing in 0..=3 {
            cluster.net.heal();
            for id in &["a", "b", "c"][..failing] {
                cluster.net.fault(Link::To(NodeId::from(*id)), fault);
            }
            for level in [One, Quorum, All] {
                let needed = level.required(3);
                let got = x.coordinator.read(key(n), level).await;
                n += 1;
                if 3 - failing >= needed {
                    assert_eq!(
                        got,
                        Ok(Some(stored.clone())),
                        "{fault:?} {failing} {level:?}"
                    );
                } else {
                    // Every replica was tried before giving up.
                    assert_eq!(
                        got,
                        Err(CoordinatorError::Failed {
                            needed,
                            answered: 3 - failing
                        }),
                        "{fault:?} {failing} {level:?}"
                    );
                }
            }
        }
    }
}

on_every_wire!(too_few_live_replicas_is_unavailable_before_any_call);
async fn too_few_live_replicas_is_unavailable_before_any_call() {
    let mut cluster = Cluster::abc();
    cluster.set("b", |m| m.live = false);
    cluster.set("c", |m| m.live = false);
    let a = cluster.node("a");
    let unavailable = CoordinatorError::Unavailable {
        needed: 2,
        up: 1,
        replicas: 3,
    };
    assert_eq!(
        a.coordinator.write(key(1), value("v"), Quorum).await,
        Err(unavailable.clone())
    );
    assert_eq!(a.coordinator.read(key(1), Quorum).await, Err(unavailable));
    sleep(SETTLE).await;
    assert!(cluster.net.calls().is_empty(), "{:?}", cluster.net.calls());
    // Not even this node's own replica took it.
    assert_eq!(cluster.stored("a", &key(1)), None);
    // ONE needs only the replica that is up.
    a.coordinator.write(key(2), value("v"), One).await.unwrap();
    assert!(a.coordinator.read(key(2), One).await.unwrap().is_some());
    assert!(cluster.net.calls().is_empty());
}

on_every_wire!(replicas_that_refuse_fail_the_write_after_the_calls_and_nothing_is_undone);
async fn replicas_that_refuse_fail_the_write_after_the_calls_and_nothing_is_undone() {
    let cluster = Cluster::abc();
    for id in ["b", "c"] {
        cluster
            .net
            .fault(Link::To(NodeId::from(id)), Fault::Refuse(503));
    }
    let a = cluster.node("a");
    let got = a.coordinator.write(key(1), value("v"), Quorum).await;
    assert!(
        matches!(got, Err(CoordinatorError::Failed { needed: 2, answered }) if answered <= 1),
        "{got:?}"
    );
    let mut called = cluster.calls_to(CallKind::Apply);
    called.sort();
    assert_eq!(called, ["b", "c"]);
    // A failed write may still have taken effect where it was acknowledged.
    sleep(SETTLE).await;
    assert!(cluster.stored("a", &key(1)).is_some());
}

/// Hints `node` keeps, by target.
fn hinted(node: &Node) -> BTreeMap<String, u64> {
    node.hints
        .pending()
        .into_iter()
        .map(|(id, p)| (id.to_string(), p.hints))
        .collect()
}

on_every_wire!(a_replica_that_is_down_refuses_or_times_out_gets_a_hint_that_is_never_an_ack);
async fn a_replica_that_is_down_refuses_or_times_out_gets_a_hint_that_is_never_an_ack() {
    let mut cluster = Cluster::abc();
    cluster.set("b", |m| m.live = false);
    cluster
        .net
        .fault(Link::To(NodeId::from("c")), Fault::Refuse(503));
    let a = cluster.node("a");
    // a acks, b is down, c refuses: a hint each for b and c, and the write
    // fails: a hint is never one of the two acks QUORUM needs.
    let got = a.coordinator.write(key(1), value("v"), Quorum).await;
    assert!(
        matches!(got, Err(CoordinatorError::Failed { needed: 2, .. })),
        "{got:?}"
    );
    sleep(SETTLE).await;
    assert_eq!(
        hinted(&a),
        BTreeMap::from([("b".into(), 1), ("c".into(), 1)])
    );
    assert_eq!(
        cluster.calls_to(CallKind::Apply),
        ["c"],
        "no call to the down b"
    );

    // A call that times out may have applied; it is hinted all the same
    // (applying twice is last-writer-wins), and ONE is met by a alone.
    cluster.net.heal();
    cluster
        .net
        .fault(Link::To(NodeId::from("c")), Fault::DropRequest);
    a.coordinator.write(key(2), value("v"), One).await.unwrap();
    sleep(SETTLE).await;
    assert_eq!(
        hinted(&a),
        BTreeMap::from([("b".into(), 2), ("c".into(), 2)])
    );
    // This node never hints itself, and replicas that ack are not hinted.
    cluster.set("b", |m| m.live = true);
    cluster.net.heal();
    let a = cluster.node("a");
    a.coordinator.write(key(3), value("v"), All).await.unwrap();
    sleep(SETTLE).await;
    assert!(hinted(&a).is_empty(), "{:?}", hinted(&a));
}

on_every_wire!(a_quorum_write_answers_before_the_slow_replica_which_gets_it_afterwards);
async fn a_quorum_write_answers_before_the_slow_replica_which_gets_it_afterwards() {
    let cluster = Cluster::abc();
    cluster.net.fault(
        Link::To(NodeId::from("c")),
        Fault::Delay(Duration::from_millis(500)),
    );
    let a = cluster.node("a");
    let start = Instant::now();
    a.coordinator
        .write(key(1), value("v"), Quorum)
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(cluster.stored("b", &key(1)).is_some());
    assert_eq!(cluster.stored("c", &key(1)), None, "c is still on its way");
    assert_eq!(a.coordinator.inner.background.in_flight(), 1);
    sleep(Duration::from_millis(600)).await;
    assert_eq!(cluster.stored("c", &key(1)), cluster.stored("b", &key(1)));
    // At ALL the same write waits for c.
    let start = Instant::now();
    a.coordinator.write(key(2), value("v"), All).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

on_every_wire!(shutdown_waits_for_tail_writes);
async fn shutdown_waits_for_tail_writes() {
    let cluster = Cluster::abc();
    cluster.net.fault(
        Link::To(NodeId::from("c")),
        Fault::Delay(Duration::from_secs(1)),
    );
    let a = cluster.node("a");
    a.coordinator
        .write(key(1), value("v"), Quorum)
        .await
        .unwrap();
    assert_eq!(cluster.stored("c", &key(1)), None);
    let start = Instant::now();
    a.coordinator.shutdown(Duration::from_secs(5)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(cluster.stored("c", &key(1)).is_some());
}

on_every_wire!(shutdown_cancels_tail_writes_past_its_deadline);
async fn shutdown_cancels_tail_writes_past_its_deadline() {
    let cluster = Cluster::abc();
    cluster.net.fault(
        Link::To(NodeId::from("c")),
        Fault::Delay(Duration::from_millis(1_500)),
    );
    let a = cluster.node("a");
    a.coordinator
        .write(key(1), value("v"), Quorum)
        .await
        .unwrap();
    let start = Instant::now();
    a.coordinator.shutdown(Duration::from_secs(1)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    sleep(SETTLE).await;
    assert_eq!(cluster.stored("c", &key(1)), None);
    assert_eq!(a.coordinator.inner.background.in_flight(), 0);
}

on_every_wire!(a_bootstrapping_replica_adds_one_ack_and_receives_the_write);
async fn a_bootstrapping_replica_adds_one_ack_and_receives_the_write() {
    let mut cluster = Cluster::new(&[
        ("a", Available),
        ("b", Available),
        ("c", Available),
        ("d", Bootstrapping),
    ]);
    let k = cluster.key_where(|view, k| view.pending(k, cluster.rf).len() == 1);
    // JOINING, d is nobody's replica: c refusing leaves a quorum.
    cluster.set("d", |m| m.state = Joining);
    cluster
        .net
        .fault(Link::To(NodeId::from("c")), Fault::Refuse(503));
    cluster
        .node("a")
        .coordinator
        .write(k.clone(), value("1"), Quorum)
        .await
        .unwrap();

    // BOOTSTRAPPING, d is a pending replica of k: QUORUM needs 2 + 1 acks,
    // which a, b and d give.
    cluster.set("d", |m| m.state = Bootstrapping);
    let a = cluster.node("a");
    a.coordinator
        .write(k.clone(), value("2"), Quorum)
        .await
        .unwrap();
    sleep(SETTLE).await;
    assert_eq!(cluster.stored("d", &k), cluster.stored("a", &k));
    assert_eq!(cluster.stored("d", &k).unwrap().value, value("2"));

    // With d refusing too, a and b are not enough.
    cluster
        .net
        .fault(Link::To(NodeId::from("d")), Fault::Refuse(503));
    let got = a.coordinator.write(k.clone(), value("3"), Quorum).await;
    assert!(
        matches!(got, Err(CoordinatorError::Failed { needed: 3, .. })),
        "{got:?}"
    );

    // A pending replica that is down counts as not up.
    cluster.net.heal();
    cluster.set("d", |m| m.live = false);
    let a = cluster.node("a");
    assert_eq!(
        a.coordinator.write(k.clone(), value("4"), All).await,
        Err(CoordinatorError::Unavailable {
            needed: 4,
            up: 3,
            replicas: 3
        })
    );
    a.coordinator
        .write(k.clone(), value("5"), Quorum)
        .await
        .unwrap();
}

on_every_wire!(reads_never_go_to_a_pending_replica);
async fn reads_never_go_to_a_pending_replica() {
    let cluster = Cluster::new(&[
        ("a", Available),
        ("b", Available),
        ("c", Available),
        ("d", Bootstrapping),
    ]);
    let k = cluster.key_where(|view, k| view.pending(k, cluster.rf).len() == 1);
    let old = Record::value(10, "old");
    for id in ["a", "b", "c"] {
        cluster.put(id, &k, &old);
    }
    // d holds something newer (a stream in progress, say): no read sees it.
    cluster.put("d", &k, &Record::value(20, "new"));
    let a = cluster.node("a");
    assert_eq!(
        a.coordinator.read(k.clone(), All).await,
        Ok(Some(old.clone()))
    );
    // A failing replica is not replaced by the pending one.
    cluster
        .net
        .fault(Link::To(NodeId::from("c")), Fault::Unreachable);
    assert_eq!(
        a.coordinator.read(k.clone(), All).await,
        Err(CoordinatorError::Failed {
            needed: 3,
            answered: 2
        })
    );
    sleep(SETTLE).await;
    assert!(!cluster.calls_to(CallKind::Read).contains(&"d".to_owned()));
    assert!(
        cluster.calls_to(CallKind::Apply).is_empty(),
        "nothing to repair"
    );
}

on_every_wire!(a_leaving_replica_gets_writes_but_no_reads_and_its_successor_gets_writes);
async fn a_leaving_replica_gets_writes_but_no_reads_and_its_successor_gets_writes() {
    let cluster = Cluster::new(&[
        ("a", Available),
        ("b", Leaving),
        ("c", Available),
        ("d", Available),
    ]);
    let k = cluster.key_where(|view, k| {
        view.replicas(k, cluster.rf)
            .iter()
            .any(|m| m.id.as_str() == "b")
            && view.pending(k, cluster.rf).len() == 1
    });
    let view = cluster.view("a");
    let successor = view.pending(&k, cluster.rf)[0].id.to_string();
    let readable: Vec<String> = cluster
        .replicas(&k)
        .into_iter()
        .filter(|id| id != "b")
        .collect();
    let coordinator = cluster.node("a").coordinator;
    coordinator
        .write(k.clone(), value("v"), Quorum)
        .await
        .unwrap();
    sleep(SETTLE).await;
    for id in ["b", successor.as_str()] {
        assert!(cluster.stored(id, &k).is_some(), "{id}");
    }
    // ALL counts b, which cannot be read.
    assert_eq!(
        coordinator.read(k.clone(), All).await,
        Err(CoordinatorError::Unavailable {
            needed: 3,
            up: 2,
            replicas: 3
        })
    );
    assert!(coordinator.read(k.clone(), Quorum).await.unwrap().is_some());
    for id in cluster.calls_to(CallKind::Read) {
        assert!(readable.contains(&id), "read sent to {id}");
    }
}

on_every_wire!(a_read_repairs_every_replica_that_answered_with_an_older_record);
async fn a_read_repairs_every_replica_that_answered_with_an_older_record() {
    let cluster = Cluster::abc();
    for id in ["a", "b", "c"] {
        cluster.put(id, b"k", &Record::value(10, "old"));
    }
    let newest = Record::value(20, "new");
    cluster.put("b", b"k", &newest);
    let a = cluster.node("a");
    assert_eq!(
        a.coordinator.read(Bytes::from("k"), All).await,
        Ok(Some(newest.clone()))
    );
    sleep(SETTLE).await;
    for id in ["a", "c"] {
        assert_eq!(cluster.stored(id, b"k").as_ref(), Some(&newest), "{id}");
    }
    assert_eq!(replica_calls(&a.metrics, "repair", "local", "ok"), 1);
    assert_eq!(replica_calls(&a.metrics, "repair", "remote", "ok"), 1);
    // Up to date, a second read repairs nothing.
    a.coordinator.read(Bytes::from("k"), All).await.unwrap();
    sleep(SETTLE).await;
    assert_eq!(replica_calls(&a.metrics, "repair", "remote", "ok"), 1);
}

on_every_wire!(a_tombstone_wins_a_tie_on_the_version_and_is_repaired_onto_the_value);
async fn a_tombstone_wins_a_tie_on_the_version_and_is_repaired_onto_the_value() {
    let cluster = Cluster::abc();
    cluster.put("b", b"k", &Record::value(50, "v"));
    cluster.put("c", b"k", &Record::tombstone(50));
    let a = cluster.node("a");
    let read = a.coordinator.read(Bytes::from("k"), All).await.unwrap();
    assert_eq!(read, Some(Record::tombstone(50)));
    sleep(SETTLE).await;
    for id in ["a", "b", "c"] {
        assert_eq!(
            cluster.stored(id, b"k"),
            Some(Record::tombstone(50)),
            "{id}"
        );
    }
}

on_every_wire!(a_read_asks_the_next_replica_the_same_way_when_one_fails_or_times_out);
async fn a_read_asks_the_next_replica_the_same_way_when_one_fails_or_times_out() {
    for (fault, takes) in [
        (Fault::Unreachable, Duration::ZERO),
        (Fault::DropRequest, TIMEOUT),
    ] {
        // The owner is asked for the record and the second replica for a
        // digest; the third replaces whichever fails, asked as it was.
        for failing in [0, 1] {
            let cluster = Cluster::abc_and_x();
            let k = Bytes::from("k");
            let replicas = cluster.replicas(&k);
            for id in &replicas {
                cluster.put(id, &k, &Record::value(10, "v"));
            }
            cluster
                .net
                .fault(Link::To(NodeId::from(replicas[failing].as_str())), fault);
            let x = cluster.node("x");
            let start = Instant::now();
            assert_eq!(
                x.coordinator.read(k.clone(), Quorum).await,
                Ok(Some(Record::value(10, "v")))
            );
            assert_eq!(start.elapsed(), takes, "{fault:?}");
            let (full, digest) = if failing == 0 {
                (vec![0, 2], vec![1])
            } else {
                (vec![0], vec![1, 2])
            };
            let ids = |at: Vec<usize>| -> Vec<String> {
                at.into_iter().map(|i| replicas[i].clone()).collect()
            };
            assert_eq!(cluster.calls_to(CallKind::Read), ids(full), "{fault:?}");
            assert_eq!(
                cluster.calls_to(CallKind::ReadDigest),
                ids(digest),
                "{fault:?}"
            );
            assert_eq!(metric(&x.metrics, "kvnode_digest_mismatches_total "), 0);
        }
    }
}

on_every_wire!(the_local_replica_is_read_first);
async fn the_local_replica_is_read_first() {
    let cluster = Cluster::abc_and_x();
    // A key a replicates but does not own: the owner comes first in its
    // preference list.
    let k = cluster.key_where(|view, k| view.replicas(k, cluster.rf)[0].id.as_str() != "a");
    // a is stale: a read that starts with a shows it.
    cluster.put("a", &k, &Record::value(10, "old"));
    for id in ["b", "c"] {
        cluster.put(id, &k, &Record::value(20, "new"));
    }
    let a = cluster.node("a");
    let one = a.coordinator.read(k.clone(), One).await.unwrap().unwrap();
    assert_eq!(one.value, value("old"));
    assert!(
        cluster.net.calls().is_empty(),
        "ONE at a replica stays local"
    );
    let quorum = a
        .coordinator
        .read(k.clone(), Quorum)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quorum.value, value("new"));
    assert_eq!(cluster.calls_to(CallKind::Read).len(), 1);
    // A coordinator that is no replica asks the owner.
    let x = cluster.node("x");
    x.coordinator.read(k.clone(), One).await.unwrap();
    assert_eq!(
        cluster.calls_to(CallKind::Read).last(),
        cluster.replicas(&k).first()
    );
}

on_every_wire!(a_degraded_replica_takes_writes_but_no_reads);
async fn a_degraded_replica_takes_writes_but_no_reads() {
    let mut cluster = Cluster::abc();
    cluster.set("b", |m| m.degraded = Some("disk full".into()));
    let a = cluster.node("a");
    a.coordinator.write(key(1), value("v"), All).await.unwrap();
    assert!(cluster.stored("b", &key(1)).is_some());
    assert_eq!(
        a.coordinator.read(key(1), All).await,
        Err(CoordinatorError::Unavailable {
            needed: 3,
            up: 2,
            replicas: 3
        })
    );
    a.coordinator.read(key(1), Quorum).await.unwrap();
    assert!(!cluster.calls_to(CallKind::Read).contains(&"b".to_owned()));
}

on_every_wire!(a_version_read_from_a_replica_is_folded_into_the_clock);
async fn a_version_read_from_a_replica_is_folded_into_the_clock() {
    let cluster = Cluster::new(&[
        ("a", Available),
        ("b", Available),
        ("c", Available),
        ("x", Joining),
        ("y", Joining),
    ]);
    let k = Bytes::from("k");
    // Written by a node whose clock runs an hour ahead.
    let ahead = cluster.net.hlc("a").now() + (3_600_000 << 16);
    let from_the_future = Record::value(ahead, "ahead");
    for id in ["a", "b", "c"] {
        cluster.put(id, &k, &from_the_future);
    }
    let (x, y) = (cluster.node("x"), cluster.node("y"));
    assert!(cluster.net.hlc("x").now() < ahead);
    x.coordinator.read(k.clone(), One).await.unwrap();
    assert!(cluster.net.hlc("x").now() > ahead);
    // So x's overwrite wins, where y's, which read nothing, loses.
    let lost = y
        .coordinator
        .write(k.clone(), value("y"), All)
        .await
        .unwrap();
    assert!(lost < ahead);
    let won = x
        .coordinator
        .write(k.clone(), value("x"), All)
        .await
        .unwrap();
    assert!(won > ahead);
    for id in ["a", "b", "c"] {
        assert_eq!(cluster.stored(id, &k).unwrap().value, value("x"), "{id}");
    }
}

on_every_wire!(read_repairs_past_the_bound_are_skipped_and_counted);
async fn read_repairs_past_the_bound_are_skipped_and_counted() {
    let cluster = Cluster::abc();
    for id in ["a", "b", "c"] {
        cluster.put(id, b"k", &Record::value(10, "old"));
    }
    let newest = Record::value(20, "new");
    cluster.put("b", b"k", &newest);
    let a = cluster.node_with("a", 2);
    let held = [(); 2].map(|()| a.coordinator.inner.background.try_reserve().unwrap());
    let skipped = "kvnode_read_repairs_skipped_total ";
    assert_eq!(
        a.coordinator.read(Bytes::from("k"), All).await,
        Ok(Some(newest.clone()))
    );
    sleep(SETTLE).await;
    assert_eq!(metric(&a.metrics, skipped), 2, "a and c were stale");
    assert_eq!(cluster.stored("c", b"k").unwrap().version, 10);
    // With room again, the next read repairs.
    drop(held);
    a.coordinator.read(Bytes::from("k"), All).await.unwrap();
    sleep(SETTLE).await;
    assert_eq!(cluster.stored("c", b"k").as_ref(), Some(&newest));
    assert_eq!(metric(&a.metrics, skipped), 2);
}

on_every_wire!(a_write_waits_for_room_in_a_full_background_set_rather_than_skip_a_replica);
async fn a_write_waits_for_room_in_a_full_background_set_rather_than_skip_a_replica() {
    let cluster = Cluster::abc();
    let a = cluster.node_with("a", 1);
    let held = a.coordinator.inner.background.try_reserve().unwrap();
    let write = tokio::spawn({
        let coordinator = a.coordinator.clone();
        async move { coordinator.write(key(1), value("v"), One).await }
    });
    sleep(SETTLE).await;
    assert!(!write.is_finished());
    assert!(cluster.net.calls().is_empty());
    assert_eq!(cluster.stored("a", &key(1)), None);
    drop(held);
    write.await.unwrap().unwrap();
    sleep(SETTLE).await;
    for id in ["a", "b", "c"] {
        assert!(cluster.stored(id, &key(1)).is_some(), "{id}");
    }
}

on_every_wire!(a_write_counts_as_in_flight_under_its_view_until_it_is_answered);
async fn a_write_counts_as_in_flight_under_its_view_until_it_is_answered() {
    let cluster = Cluster::abc();
    for id in ["b", "c"] {
        cluster.net.fault(
            Link::To(NodeId::from(id)),
            Fault::Delay(Duration::from_secs(1)),
        );
    }
    let a = cluster.node("a");
    let epoch = a.routing.view().epoch;
    let write = tokio::spawn({
        let coordinator = a.coordinator.clone();
        async move { coordinator.write(key(1), value("v"), Quorum).await }
    });
    sleep(Duration::from_millis(500)).await;
    assert!(a.routing.writes_before(epoch + 1));
    write.await.unwrap().unwrap();
    assert!(!a.routing.writes_before(epoch + 1));
}

on_every_wire!(a_partitioned_node_cannot_reach_quorum_and_heals_through_read_repair);
async fn a_partitioned_node_cannot_reach_quorum_and_heals_through_read_repair() {
    let cluster = Cluster::abc();
    cluster.net.partition(&["c"]);
    let (a, c) = (cluster.node("a"), cluster.node("c"));
    let start = Instant::now();
    assert_eq!(
        c.coordinator.write(key(1), value("from c"), Quorum).await,
        Err(CoordinatorError::Failed {
            needed: 2,
            answered: 1
        })
    );
    assert_eq!(start.elapsed(), TIMEOUT);
    a.coordinator
        .write(key(2), value("from a"), Quorum)
        .await
        .unwrap();
    sleep(SETTLE).await;
    assert_eq!(cluster.stored("c", &key(2)), None);
    assert_eq!(cluster.stored("a", &key(1)), None);

    cluster.net.heal();
    // The majority's write reaches c, and c's failed one, which no one
    // undid, reaches the others.
    for n in [1, 2] {
        a.coordinator.read(key(n), All).await.unwrap();
    }
    sleep(SETTLE).await;
    for n in [1, 2] {
        let held: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| cluster.stored(id, &key(n)))
            .collect();
        assert!(
            held[0].is_some() && held.iter().all(|r| *r == held[0]),
            "key{n}: {held:?}"
        );
    }
}

on_every_wire!(replicas_converge_on_the_last_write_when_deliveries_overtake_each_other);
async fn replicas_converge_on_the_last_write_when_deliveries_overtake_each_other() {
    let cluster = Cluster::abc();
    for id in ["b", "c"] {
        cluster.net.fault(
            Link::To(NodeId::from(id)),
            Fault::Jitter(Duration::from_millis(50)),
        );
    }
    let a = cluster.node("a");
    let mut last = 0;
    for n in 0..20 {
        last = a
            .coordinator
            .write(Bytes::from("k"), value(&n.to_string()), One)
            .await
            .unwrap();
    }
    // Every write answered at once (a's own ack), so b got them in the
    // order of their drawn delays: out of order, for this seed.
    let delays: Vec<Duration> = cluster
        .net
        .calls()
        .into_iter()
        .filter(|c| c.to.as_str() == "b")
        .filter_map(|c| match c.fault {
            Some(Fault::Delay(d)) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 20);
    assert!(delays.windows(2).any(|w| w[0] > w[1]), "{delays:?}");
    sleep(SETTLE).await;
    for id in ["a", "b", "c"] {
        let held = cluster.stored(id, b"k").unwrap();
        assert_eq!((held.version, held.value), (last, value("19")), "{id}");
    }
}

on_every_wire!(with_no_ring_yet_reads_and_writes_are_refused);
async fn with_no_ring_yet_reads_and_writes_are_refused() {
    let cluster = Cluster::new(&[("x", Joining)]);
    let x = cluster.node("x");
    assert_eq!(
        x.coordinator.write(key(1), value("v"), One).await,
        Err(CoordinatorError::NoRing)
    );
    assert_eq!(
        x.coordinator.read(key(1), One).await,
        Err(CoordinatorError::NoRing)
    );
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Read and digest calls so far, by target, sorted.
fn read_calls(cluster: &Cluster) -> (Vec<String>, Vec<String>) {
    (
        sorted(cluster.calls_to(CallKind::Read)),
        sorted(cluster.calls_to(CallKind::ReadDigest)),
    )
}

on_every_wire!(quorum_and_all_reads_take_one_record_and_digests_from_the_other_replicas);
async fn quorum_and_all_reads_take_one_record_and_digests_from_the_other_replicas() {
    let cluster = Cluster::abc_and_x();
    let k = Bytes::from("k");
    let replicas = cluster.replicas(&k);
    let stored = Record::value(10, vec![7; 4096]);
    for id in &replicas {
        cluster.put(id, &k, &stored);
    }
    let x = cluster.node("x");
    let r = |i: usize| replicas[i].clone();
    for (level, full, digests) in [
        (One, vec![r(0)], vec![]),
        (Quorum, vec![r(0)], vec![r(1)]),
        (All, vec![r(0)], vec![r(1), r(2)]),
    ] {
        let before = cluster.net.calls().len();
        assert_eq!(
            x.coordinator.read(k.clone(), level).await,
            Ok(Some(stored.clone()))
        );
        let calls: Vec<_> = cluster.net.calls().split_off(before);
        let of = |kind| -> Vec<String> {
            sorted(
                calls
                    .iter()
                    .filter(|c| c.kind == kind)
                    .map(|c| c.to.to_string())
                    .collect(),
            )
        };
        assert_eq!(of(CallKind::Read), full, "{level:?}");
        assert_eq!(of(CallKind::ReadDigest), sorted(digests), "{level:?}");
        assert_eq!(calls.len(), level.required(3), "{level:?}");
    }
    assert_eq!(replica_calls(&x.metrics, "read", "remote", "ok"), 3);
    assert_eq!(replica_calls(&x.metrics, "digest", "remote", "ok"), 3);

    // A replica coordinating reads itself in full and digests the others.
    let a = cluster.node("a");
    a.coordinator.read(k.clone(), All).await.unwrap();
    assert_eq!(replica_calls(&a.metrics, "read", "local", "ok"), 1);
    assert_eq!(replica_calls(&a.metrics, "read", "remote", "ok"), 0);
    assert_eq!(replica_calls(&a.metrics, "digest", "remote", "ok"), 2);
    // Agreeing replicas: no mismatch, nothing to repair.
    sleep(SETTLE).await;
    for node in [&x, &a] {
        assert_eq!(metric(&node.metrics, "kvnode_digest_mismatches_total "), 0);
    }
    assert!(cluster.calls_to(CallKind::Apply).is_empty());
}

on_every_wire!(a_digest_mismatch_answers_the_newest_record_and_repairs_the_replicas_behind);
async fn a_digest_mismatch_answers_the_newest_record_and_repairs_the_replicas_behind() {
    let records = [
        Record::value(10, "old"),
        Record::value(20, "new"),
        Record::value(50, "a"),
        Record::value(50, "b"),
        Record::value(10, "v"),
        Record::tombstone(20),
    ];
    let [old, new, low, high, value, tombstone] = records.each_ref().map(Some);
    // What the owner (read in full) and the second replica (a digest)
    // hold; whether the second is read in full too, and the answer.
    let cases = [
        ("both hold it", new, new, false, new),
        ("neither holds it", None, None, false, None),
        ("digest behind", new, old, false, new),
        ("digest missing", new, None, false, new),
        ("full behind", old, new, true, new),
        ("full missing", None, new, true, new),
        ("same version, digest wins", low, high, true, high),
        ("same version, full wins", high, low, true, high),
        ("newer tombstone digest", value, tombstone, true, tombstone),
        ("newer tombstone full", tombstone, value, false, tombstone),
    ];
    for (case, full, digest, reread, answer) in cases {
        let cluster = Cluster::abc_and_x();
        let k = Bytes::from("k");
        let replicas = cluster.replicas(&k);
        let (r0, r1, r2) = (&replicas[0], &replicas[1], &replicas[2]);
        for (id, record) in [(r0, full), (r1, digest)] {
            if let Some(record) = record {
                cluster.put(id, &k, record);
            }
        }
        let x = cluster.node("x");
        assert_eq!(
            x.coordinator.read(k.clone(), Quorum).await,
            Ok(answer.cloned()),
            "{case}"
        );
        let full_reads = if reread {
            sorted(vec![r0.clone(), r1.clone()])
        } else {
            vec![r0.clone()]
        };
        assert_eq!(
            read_calls(&cluster),
            (full_reads, vec![r1.clone()]),
            "{case}"
        );
        let mismatch = full != digest;
        assert_eq!(
            metric(&x.metrics, "kvnode_digest_mismatches_total "),
            u64::from(mismatch),
            "{case}"
        );
        sleep(SETTLE).await;
        // Both asked replicas hold the answer now, on their own engines;
        // the third, never asked, is left alone.
        for id in [r0, r1] {
            assert_eq!(cluster.stored(id, &k).as_ref(), answer, "{case}: {id}");
        }
        assert_eq!(cluster.stored(r2, &k), None, "{case}");
        let repairs = [full, digest].iter().filter(|r| **r != answer).count();
        assert_eq!(cluster.calls_to(CallKind::Apply).len(), repairs, "{case}");
    }
}

on_every_wire!(a_replica_that_fails_its_full_read_after_a_mismatch_is_replaced_or_fails_the_read);
async fn a_replica_that_fails_its_full_read_after_a_mismatch_is_replaced_or_fails_the_read() {
    for level in [Quorum, All] {
        let cluster = Cluster::abc_and_x();
        let k = Bytes::from("k");
        let replicas = cluster.replicas(&k);
        let (r0, r1, r2) = (&replicas[0], &replicas[1], &replicas[2]);
        let (old, new) = (Record::value(10, "old"), Record::value(20, "new"));
        cluster.put(r0, &k, &old);
        cluster.put(r1, &k, &new);
        // At QUORUM r2, read in r1's place, answers the newest record; at
        // ALL no replica is left to stand in for r1.
        cluster.put(r2, &k, if level == Quorum { &new } else { &old });
        // The full read is slow, so r1's digest is in before r1 goes away.
        cluster.net.fault(
            Link::To(NodeId::from(r0.as_str())),
            Fault::Delay(Duration::from_millis(100)),
        );
        let x = cluster.node("x");
        let read = tokio::spawn({
            let coordinator = x.coordinator.clone();
            let k = k.clone();
            async move { coordinator.read(k, level).await }
        });
        sleep(Duration::from_millis(50)).await;
        assert!(cluster.calls_to(CallKind::ReadDigest).contains(r1));
        cluster
            .net
            .fault(Link::To(NodeId::from(r1.as_str())), Fault::Unreachable);
        let got = read.await.unwrap();
        if level == Quorum {
            // r2 is read in full in r1's place.
            assert_eq!(got, Ok(Some(new.clone())));
            assert_eq!(
                read_calls(&cluster),
                (sorted(replicas.clone()), vec![r1.clone()])
            );
            sleep(SETTLE).await;
            assert_eq!(cluster.stored(r0, &k), Some(new.clone()), "repaired");
        } else {
            // Never the older record r0 and r2 agree on: r1 may hold a
            // newer one, and no replica is left to stand in for it.
            assert_eq!(
                got,
                Err(CoordinatorError::Failed {
                    needed: 3,
                    answered: 2
                })
            );
        }
        assert_eq!(metric(&x.metrics, "kvnode_digest_mismatches_total "), 1);
    }
}
