//! The node's Prometheus metrics and their OpenMetrics exposition
//! (`GET /metrics`).
//!
//! `prometheus-client` (the Prometheus project's own Rust client) rather than
//! a hand-rolled registry: it gets the text format, label escaping and
//! histogram buckets right, and costs one small dependency.
//!
//! Engine statistics (`strata_engine::Db::stats()`), the incoming ranges
//! by state and the engine's bytes on disk are read fresh at each scrape by
//! collectors in the registry (`strata_engine_*`, `kvnode_stream_ranges`,
//! `kvnode_disk_bytes`), rather than copied into counters that could drift
//! from their sources.

use std::fmt;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use strata_engine::{LevelStats, Stats};

/// A client or internal operation, as labelled in metrics.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Op {
    /// `GET /v1/kv`, `/v1/data`, `/block`.
    get,
    /// `PUT /v1/kv`, `POST /v1/data`, `PUT /block`.
    put,
    /// `DELETE /v1/kv`, `/block`.
    delete,
    /// An internal apply received from a coordinator.
    internal_apply,
    /// An internal read received from a coordinator.
    internal_read,
    /// An internal read-digest received from a coordinator.
    internal_read_digest,
    /// A range stream served to a bootstrapping node.
    internal_stream,
    /// A digest or repair-rows call from a repairing replica.
    internal_repair,
    /// A page of this node's manifests, for a file listing.
    internal_list,
    /// Cluster, node, health, readiness and metrics routes, and the web
    /// console's files.
    admin,
    /// No route matched.
    unmatched,
}

/// Which side of a replica call.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum ReplicaOp {
    /// A write sent to a replica.
    apply,
    /// A read of the whole record sent to a replica.
    read,
    /// A read of the record's digest sent to a replica (QUORUM and ALL
    /// reads, past their one full read).
    digest,
    /// A read repair sent to a stale replica.
    repair,
}

/// How a replica call ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Outcome {
    /// Answered.
    ok,
    /// Failed (connection, status, decoding, local engine error).
    error,
    /// Did not answer within the replica timeout.
    timeout,
}

/// Where a replica call went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Target {
    /// This node's own engine.
    local,
    /// Another node, over HTTP (a forwarded request).
    remote,
}

/// What became of a gossip datagram.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum GossipOutcome {
    /// Sent, or received and accepted.
    ok,
    /// Dropped: not sealed under this cluster's key, or altered.
    unauthenticated,
    /// Dropped: seen before, or from an older incarnation of its sender.
    replayed,
    /// Dropped: not a gossip datagram, or a sealed message that does not parse.
    malformed,
    /// Not sent: the message would not fit the datagram bound.
    oversized,
    /// Dropped: its sender's wall clock differs from this node's by more
    /// than the maximum clock offset.
    clock_offset,
}

/// Which way a gossip datagram went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Direction {
    /// Received.
    received,
    /// Sent.
    sent,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GossipLabels {
    direction: Direction,
    outcome: GossipOutcome,
}

/// The gossip transport's counters (`kvnode_gossip_*`), shared with it.
#[derive(Debug, Clone, Default)]
pub(crate) struct GossipMetrics {
    datagrams: Family<GossipLabels, Counter>,
    bytes: Family<GossipLabels, Counter>,
    members_ignored: Counter,
    records_rejected: Counter,
    members: Family<MemberLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    state: &'static str,
    status: &'static str,
}

impl GossipMetrics {
    fn count(&self, direction: Direction, outcome: GossipOutcome, bytes: usize) {
        let labels = GossipLabels { direction, outcome };
        self.datagrams.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Counts a datagram received, with what became of it.
    pub(crate) fn datagram_in(&self, outcome: GossipOutcome, bytes: usize) {
        self.count(Direction::received, outcome, bytes);
    }

    /// Counts a datagram sent (or not, if `oversized`).
    pub(crate) fn datagram_out(&self, outcome: GossipOutcome, bytes: usize) {
        self.count(Direction::sent, outcome, bytes);
    }

    /// Counts a member left out of the view because the bound was reached.
    pub(crate) fn member_ignored(&self) {
        self.members_ignored.inc();
    }

    /// Counts a member record whose signature did not verify.
    pub(crate) fn record_rejected(&self) {
        self.records_rejected.inc();
    }

    /// Sets the members of the view by (state, status): every pair, zeros
    /// included, so that a state no member is in any more reads 0.
    pub(crate) fn set_members(
        &self,
        counts: impl IntoIterator<Item = (&'static str, &'static str, usize)>,
    ) {
        for (state, status, n) in counts {
            self.members
                .get_or_create(&MemberLabels { state, status })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Why a hint was not kept.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum HintDrop {
    /// Its target already had `max_hint_bytes_per_node` pending.
    over_bound,
    /// Its target has been down for longer than the hint window.
    past_window,
    /// Its stored bytes did not decode.
    corrupt,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HintDropLabels {
    reason: HintDrop,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HintTargetLabels {
    target: String,
}

/// The hinted-handoff counters (`kvnode_hints_*`), shared with the hint
/// store.
#[derive(Debug, Clone, Default)]
pub(crate) struct HintMetrics {
    stored: Counter,
    delivered: Counter,
    expired: Counter,
    dropped: Family<HintDropLabels, Counter>,
    pending_bytes: Family<HintTargetLabels, Gauge>,
}

impl HintMetrics {
    /// Counts a hint stored.
    pub(crate) fn stored(&self) {
        self.stored.inc();
    }

    /// Counts hints delivered to their target (or handed to the key's
    /// replicas) and deleted.
    pub(crate) fn delivered(&self, hints: u64) {
        self.delivered.inc_by(hints);
    }

    /// Counts a hint deleted because it outlived the window.
    pub(crate) fn expired(&self) {
        self.expired.inc();
    }

    /// Counts a hint not kept.
    pub(crate) fn dropped(&self, reason: HintDrop) {
        self.dropped.get_or_create(&HintDropLabels { reason }).inc();
    }

    /// Sets the bytes pending for `target`.
    pub(crate) fn set_pending(&self, target: &str, bytes: u64) {
        self.pending_bytes
            .get_or_create(&HintTargetLabels {
                target: target.to_owned(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The smallest latency bucket: a local read answers in tens of µs.
const FIRST_LATENCY_BUCKET_SECS: f64 = 0.000_05;

/// Latency bucket bounds: doubling from [`FIRST_LATENCY_BUCKET_SECS`] to the
/// first at or past `request_timeout`, so that a request that ran into the
/// timeout lands in a bucket of its own rather than in `+Inf` with every
/// other slow one (19 buckets, up to 13.1 s, for the default 10 s).
fn latency_buckets(request_timeout: Duration) -> Vec<f64> {
    let top = request_timeout.as_secs_f64();
    let mut buckets = vec![FIRST_LATENCY_BUCKET_SECS];
    let mut last = FIRST_LATENCY_BUCKET_SECS;
    while last < top {
        last *= 2.0;
        buckets.push(last);
    }
    buckets
}

/// Builds each operation's latency histogram with the node's buckets.
#[derive(Debug, Clone)]
struct LatencyBuckets(Vec<f64>);

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: Op,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    op: Op,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    op: ReplicaOp,
    target: Target,
    outcome: Outcome,
}

/// Every metric the node exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// The root: `kvnode_*` families in one sub-registry, the engine's
    /// collector in another.
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    latency: Family<OpLabels, Histogram, LatencyBuckets>,
    errors: Family<ErrorLabels, Counter>,
    replica_calls: Family<ReplicaLabels, Counter>,
    read_repairs_skipped: Counter,
    digest_mismatches: Counter,
    stream: StreamCounters,
    gossip: GossipMetrics,
    hints: HintMetrics,
    task_failures: Family<TaskLabels, Counter>,
    hlc_remote_ahead: Counter,
    in_flight: Family<ClassLabels, Gauge>,
}

/// Whose request: a client's, or another node's internal call.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum RequestClass {
    client,
    internal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: RequestClass,
}

/// Counts one request in flight until dropped (so a request cancelled by
/// its deadline or its client leaves the count too).
pub(crate) struct InFlightRequest(Gauge);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

/// Counters of background data work (`kvnode_stream_*`, `kvnode_cleanup_*`,
/// `kvnode_repair_*`, `kvnode_file_gc_*`).
#[derive(Debug, Default)]
struct StreamCounters {
    sent_bytes: Counter,
    sent_items: Counter,
    received_bytes: Counter,
    received_items: Counter,
    retries: Counter,
    cleanup_deleted: Counter,
    repair_ranges: Counter,
    repair_keys: Counter,
    repair_digest_bytes: Counter,
    repair_item_bytes: Counter,
    file_gc_passes: Counter,
    file_gc_skipped: Counter,
    file_gc_chunks: Counter,
    file_gc_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, with latency buckets for the default
    /// request timeout.
    pub(crate) fn new() -> Self {
        Self::with_request_timeout(Duration::from_millis(
            crate::config::defaults::REQUEST_TIMEOUT_MS,
        ))
    }

    /// Registers every metric; the latency buckets reach `request_timeout`,
    /// the longest a request can take.
    pub(crate) fn with_request_timeout(request_timeout: Duration) -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("kvnode");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by operation and status code",
            requests.clone(),
        );
        let latency =
            Family::new_with_constructor(LatencyBuckets(latency_buckets(request_timeout)));
        registry.register(
            "request_duration_seconds",
            "HTTP request latency, by operation",
            latency.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Error responses, by kind (the `error` field of the JSON body)",
            errors.clone(),
        );
        let replica_calls = Family::<ReplicaLabels, Counter>::default();
        registry.register(
            "replica_calls",
            "Replica operations issued by this node as coordinator; target=remote are the forwarded requests",
            replica_calls.clone(),
        );
        let read_repairs_skipped = Counter::default();
        registry.register(
            "read_repairs_skipped",
            "Read repairs not sent because max_background_replica_calls were in flight",
            read_repairs_skipped.clone(),
        );
        let digest_mismatches = Counter::default();
        registry.register(
            "digest_mismatches",
            "QUORUM and ALL reads where a replica's digest differed from the record read in full",
            digest_mismatches.clone(),
        );
        let stream = StreamCounters::default();
        for (name, help, counter) in [
            (
                "stream_sent_bytes",
                "Frame bytes this node sent as a stream source",
                &stream.sent_bytes,
            ),
            (
                "stream_sent_items",
                "Items this node sent as a stream source",
                &stream.sent_items,
            ),
            (
                "stream_received_bytes",
                "Key and value bytes this node received and applied from streams",
                &stream.received_bytes,
            ),
            (
                "stream_received_items",
                "Items this node received and applied from streams",
                &stream.received_items,
            ),
            (
                "stream_retries",
                "Stream attempts that failed and were resumed or moved to another source",
                &stream.retries,
            ),
            (
                "file_gc_passes",
                "Chunk GC passes that ran to the end",
                &stream.file_gc_passes,
            ),
            (
                "file_gc_skipped_passes",
                "Chunk GC passes that did not run: a node did not answer the listing of files, or a manifest could not be read",
                &stream.file_gc_skipped,
            ),
            (
                "file_gc_deleted_chunks",
                "Chunks this node deleted because no file referred to them",
                &stream.file_gc_chunks,
            ),
            (
                "file_gc_deleted_bytes",
                "Stored bytes of the chunks the GC deleted",
                &stream.file_gc_bytes,
            ),
            (
                "cleanup_deleted_items",
                "Items deleted because this node no longer replicates their range",
                &stream.cleanup_deleted,
            ),
            (
                "repair_ranges",
                "Token ranges this node repaired with all their other replicas",
                &stream.repair_ranges,
            ),
            (
                "repair_keys_streamed",
                "Items that repairs started by this node moved, both ways",
                &stream.repair_keys,
            ),
            (
                "repair_digest_bytes",
                "Comparison bytes of the repairs this node made: digest bodies and the hashes and lacks bits of repair-rows bodies, asked and answered",
                &stream.repair_digest_bytes,
            ),
            (
                "repair_item_bytes",
                "Item bytes of the repairs this node made: the items repair-rows answers carried to it and the apply-batch bodies it pushed back",
                &stream.repair_item_bytes,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let gossip = GossipMetrics::default();
        registry.register(
            "gossip_datagrams",
            "Gossip datagrams, by direction and outcome (dropped ones by reason)",
            gossip.datagrams.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Gossip datagram bytes, by direction and outcome",
            gossip.bytes.clone(),
        );
        registry.register(
            "gossip_members_ignored",
            "Member records left out of the view because max_members was reached",
            gossip.members_ignored.clone(),
        );
        registry.register(
            "members",
            "Members in this node's view (itself included), by published state and \
             failure-detector status; state REMOVED counts those removed for good",
            gossip.members.clone(),
        );
        registry.register(
            "gossip_records_rejected",
            "Member records whose signature did not verify (the last verified one was kept)",
            gossip.records_rejected.clone(),
        );
        let hints = HintMetrics::default();
        for (name, help, counter) in [
            (
                "hints_stored",
                "Hints stored for replicas that missed a write",
                &hints.stored,
            ),
            (
                "hints_delivered",
                "Hints delivered to their target (or handed to the key's replicas) and deleted",
                &hints.delivered,
            ),
            (
                "hints_expired",
                "Hints deleted undelivered because they outlived the hint window",
                &hints.expired,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "hints_dropped",
            "Hints not kept, by reason",
            hints.dropped.clone(),
        );
        registry.register(
            "hints_pending_bytes",
            "Bytes of hints waiting for delivery, by target node",
            hints.pending_bytes.clone(),
        );
        let task_failures = Family::<TaskLabels, Counter>::default();
        registry.register(
            "task_failures",
            "Background tasks of the node that failed (panicked), by task",
            task_failures.clone(),
        );
        let hlc_remote_ahead = Counter::default();
        registry.register(
            "hlc_remote_ahead",
            "Versions received that were more than the maximum clock offset ahead of this \
             node's wall clock (folded into its clock all the same)",
            hlc_remote_ahead.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which kvnode build this node runs",
            build_info,
        );
        let in_flight = Family::<ClassLabels, Gauge>::default();
        registry.register(
            "requests_in_flight",
            "HTTP requests being served now (waiting for a slot or running), by class",
            in_flight.clone(),
        );
        root.register_collector(Box::new(crate::process::ProcessCollector));
        Self {
            registry: root,
            requests,
            latency,
            errors,
            replica_calls,
            read_repairs_skipped,
            digest_mismatches,
            stream,
            gossip,
            hints,
            task_failures,
            hlc_remote_ahead,
            in_flight,
        }
    }

    /// Counts a request of `class` as in flight until the guard drops.
    pub(crate) fn in_flight(&self, class: RequestClass) -> InFlightRequest {
        let gauge = self.in_flight.get_or_create(&ClassLabels { class }).clone();
        gauge.inc();
        InFlightRequest(gauge)
    }

    /// Counts one handled request.
    pub(crate) fn request(&self, op: Op, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&StatusLabels { op, status })
            .inc();
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(seconds);
    }

    /// Counts a background task that failed.
    pub(crate) fn task_failed(&self, task: &'static str) {
        self.task_failures.get_or_create(&TaskLabels { task }).inc();
    }

    /// Counts one error response of `kind`.
    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts one replica call.
    pub(crate) fn replica_call(&self, op: ReplicaOp, target: Target, outcome: Outcome) {
        self.replica_calls
            .get_or_create(&ReplicaLabels {
                op,
                target,
                outcome,
            })
            .inc();
    }

    /// Counts a read repair skipped for want of room in the background set.
    pub(crate) fn read_repair_skipped(&self) {
        self.read_repairs_skipped.inc();
    }

    /// Counts a read whose digests did not all match its full record.
    pub(crate) fn digest_mismatch(&self) {
        self.digest_mismatches.inc();
    }

    /// Counts a frame sent by a stream source.
    pub(crate) fn stream_sent(&self, bytes: usize, items: u64) {
        self.stream.sent_bytes.inc_by(bytes as u64);
        self.stream.sent_items.inc_by(items);
    }

    /// Counts items received and applied from a stream.
    pub(crate) fn stream_received(&self, bytes: usize, items: u64) {
        self.stream.received_bytes.inc_by(bytes as u64);
        self.stream.received_items.inc_by(items);
    }

    /// Counts a failed stream attempt.
    pub(crate) fn stream_retry(&self) {
        self.stream.retries.inc();
    }

    /// The gossip counters, for the transport and the membership.
    pub(crate) fn gossip(&self) -> GossipMetrics {
        self.gossip.clone()
    }

    /// The counter of versions received too far ahead, for the clock.
    pub(crate) fn hlc_remote_ahead(&self) -> Counter {
        self.hlc_remote_ahead.clone()
    }

    /// The hinted-handoff counters, for the hint store.
    pub(crate) fn hints(&self) -> HintMetrics {
        self.hints.clone()
    }

    /// Counts a range repaired with all its other replicas.
    pub(crate) fn repair_range_done(&self) {
        self.stream.repair_ranges.inc();
    }

    /// Counts items a repair moved.
    pub(crate) fn repair_keys(&self, items: u64) {
        self.stream.repair_keys.inc_by(items);
    }

    /// Counts comparison bytes of a repair (digests, row hashes).
    pub(crate) fn repair_digest_bytes(&self, bytes: u64) {
        self.stream.repair_digest_bytes.inc_by(bytes);
    }

    /// Counts item bytes of a repair, received or pushed.
    pub(crate) fn repair_item_bytes(&self, bytes: u64) {
        self.stream.repair_item_bytes.inc_by(bytes);
    }

    /// Counts a chunk GC pass: `None` when it was skipped.
    pub(crate) fn file_gc_pass(&self, deleted: Option<(u64, u64)>) {
        match deleted {
            Some((chunks, bytes)) => {
                self.stream.file_gc_passes.inc();
                self.stream.file_gc_chunks.inc_by(chunks);
                self.stream.file_gc_bytes.inc_by(bytes);
            }
            None => {
                self.stream.file_gc_skipped.inc();
            }
        }
    }

    /// Counts items dropped by clean-up.
    pub(crate) fn cleanup_deleted(&self, items: u64) {
        self.stream.cleanup_deleted.inc_by(items);
    }

    /// Adds the families read at each scrape: the engine's statistics from
    /// `engine`, the incoming ranges by state from `stream_ranges` and the
    /// engine's bytes on disk by kind from `disk`.
    pub(crate) fn with_sources(
        mut self,
        engine: impl Fn() -> Stats + Send + Sync + 'static,
        stream_ranges: impl Fn() -> RangeCounts + Send + Sync + 'static,
        disk: impl Fn() -> DiskBytes + Send + Sync + 'static,
    ) -> Self {
        let kvnode = self.registry.sub_registry_with_prefix("kvnode");
        kvnode.register_collector(Box::new(LabelledGauges {
            name: "stream_ranges",
            help: "Ranges of this node's current bootstrap or take-over, by state",
            label: "state",
            read: Source(Box::new(move || {
                stream_ranges()
                    .iter()
                    .map(|&(state, n)| (state, n as u64))
                    .collect()
            })),
        }));
        kvnode.register_collector(Box::new(LabelledGauges {
            name: "disk_bytes",
            help: "Bytes the engine holds on disk, by kind: live tables and write-ahead logs",
            label: "kind",
            read: Source(Box::new(move || disk().to_vec())),
        }));
        self.registry
            .sub_registry_with_prefix("strata_engine")
            .register_collector(Box::new(EngineCollector(Source(Box::new(engine)))));
        self
    }

    /// The OpenMetrics text exposition of every metric, ending in `# EOF`.
    pub(crate) fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Incoming ranges by state name, as `stream::Progress::counts` reports them.
pub(crate) type RangeCounts = [(&'static str, usize); 4];

/// The engine's bytes on disk by kind (`tables`, `wal`), as
/// `storage::DiskUsage` has them.
pub(crate) type DiskBytes = [(&'static str, u64); 2];

/// What a collector reads at each scrape. A closure rather than the node's
/// types, so that metrics stays below the modules it measures.
struct Source<T>(Box<dyn Fn() -> T + Send + Sync>);

impl<T> fmt::Debug for Source<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Source")
    }
}

/// A gauge family read fresh at each scrape, one sample per value of its
/// one label.
#[derive(Debug)]
struct LabelledGauges {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    read: Source<Vec<(&'static str, u64)>>,
}

impl Collector for LabelledGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, ConstGauge::<u64>::TYPE)?;
        for (value, n) in (self.read.0)() {
            ConstGauge::new(n).encode(family.encode_family(&[(self.label, value)])?)?;
        }
        Ok(())
    }
}

/// `strata_engine_*`: the engine's statistics.
#[derive(Debug)]
struct EngineCollector(Source<Stats>);

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = (self.0 .0)();
        let e = &mut encoder;
        let levels = stats.levels.as_slice();
        per_level(e, "level_tables", "Live tables per level.", levels, |l| {
            ConstGauge::new(l.tables as u64)
        })?;
        per_level(
            e,
            "level_bytes",
            "Bytes of live tables per level.",
            levels,
            |l| ConstGauge::new(l.bytes),
        )?;
        per_level(
            e,
            "level_score",
            "Compaction urgency per level (due at 1).",
            levels,
            |l| ConstGauge::new(l.score),
        )?;
        per_level(
            e,
            "level_written_bytes",
            "Bytes written into each level by flushes and compactions.",
            levels,
            |l| ConstCounter::new(l.written_bytes),
        )?;
        for (name, help, value) in [
            (
                "user_written_bytes",
                "Key and value bytes of accepted writes.",
                stats.user_bytes_written,
            ),
            (
                "wal_written_bytes",
                "Bytes appended to write-ahead logs.",
                stats.wal_bytes_written,
            ),
            (
                "compacted_read_bytes",
                "Bytes compactions read.",
                stats.bytes_compacted_read,
            ),
            ("flushes", "Memtables flushed.", stats.flushes),
            ("compactions", "Compactions run.", stats.compactions),
            (
                "stall_stops",
                "Write groups stopped by back-pressure.",
                stats.stall_stops,
            ),
            (
                "stall_slowdowns",
                "Write groups delayed by back-pressure.",
                stats.stall_slowdowns,
            ),
            (
                "bloom_checks",
                "Table lookups that consulted a bloom filter.",
                stats.bloom_checks,
            ),
            (
                "bloom_negatives",
                "Lookups a bloom filter ruled out.",
                stats.bloom_negatives,
            ),
            (
                "bloom_false_positives",
                "Lookups a bloom filter let through in vain.",
                stats.bloom_false_positives,
            ),
            (
                "block_cache_hits",
                "Reads of a compressed block served decompressed from the block cache.",
                stats.block_cache_hits,
            ),
            (
                "block_cache_misses",
                "Reads of a compressed block that decompressed it.",
                stats.block_cache_misses,
            ),
            (
                "compaction_filter_removed",
                "Entries the compaction filter removed: in kvnode, tombstones purged past the grace.",
                stats.compaction_filter_removed,
            ),
            (
                "compaction_filter_changed",
                "Entries whose value the compaction filter changed.",
                stats.compaction_filter_changed,
            ),
            (
                "compaction_filter_panics",
                "Compaction filter calls that panicked (the entry was kept).",
                stats.compaction_filter_panics,
            ),
        ] {
            single(e, name, help, &ConstCounter::new(value))?;
        }
        single(
            e,
            "stall_stop_seconds",
            "Time writers spent stopped.",
            &ConstCounter::new(stats.stall_stop_time.as_secs_f64()),
        )?;
        single(
            e,
            "write_amplification",
            "Table bytes written per user byte.",
            &ConstGauge::new(stats.write_amplification()),
        )?;
        for (name, help, value) in [
            (
                "memtable_bytes",
                "Bytes in the active memtable.",
                stats.memtable_bytes,
            ),
            (
                "immutable_memtables",
                "Frozen memtables waiting for a flush.",
                stats.immutable_memtables as u64,
            ),
            (
                "block_cache_bytes",
                "Bytes of decompressed blocks in the block cache.",
                stats.block_cache_bytes,
            ),
            (
                "blob_files",
                "Live blob files (values of engine.blob_threshold bytes and more).",
                stats.blob_files,
            ),
            (
                "blob_bytes",
                "Bytes of values in live blob files, garbage included.",
                stats.blob_bytes,
            ),
            (
                "blob_garbage_bytes",
                "Bytes of values in live blob files that nothing points to any more.",
                stats.blob_garbage_bytes,
            ),
            (
                "background_error",
                "1 while a background error stops writes.",
                u64::from(stats.background_error.is_some()),
            ),
        ] {
            single(e, name, help, &ConstGauge::new(value))?;
        }
        Ok(())
    }
}

/// Writes one family of a single, unlabelled sample.
pub(crate) fn single(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one family with a sample per level, labelled `level`.
fn per_level<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    levels: &[LevelStats],
    metric: impl Fn(&LevelStats) -> M,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (level, stats) in levels.iter().enumerate() {
        metric(stats).encode(family.encode_family(&[("level", level)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.request(Op::get, 200, 0.001);
        m.error("bad_request");
        m.replica_call(ReplicaOp::apply, Target::remote, Outcome::timeout);
        m.stream_received(100, 3);
        m.hlc_remote_ahead().inc();
        m.gossip().datagram_in(GossipOutcome::clock_offset, 60);
        m.read_repair_skipped();
        m.digest_mismatch();
        m.replica_call(ReplicaOp::digest, Target::remote, Outcome::ok);
        m.hints().stored();
        m.hints().dropped(HintDrop::over_bound);
        m.hints().set_pending("node2", 4096);
        m.gossip()
            .set_members([("AVAILABLE", "UP", 2), ("AVAILABLE", "DOWN", 1)]);
        m.request(Op::put, 503, 9.5);
        let _served = m.in_flight(RequestClass::client);
        drop(m.in_flight(RequestClass::internal));
        let mut stats = Stats::default();
        stats.levels = vec![LevelStats::default(); 2];
        stats.flushes = 5;
        stats.compaction_filter_removed = 7;
        stats.stall_stop_time = std::time::Duration::from_millis(1500);
        let m = m.with_sources(
            move || stats.clone(),
            || [("pending", 1), ("streaming", 0), ("done", 2), ("failed", 0)],
            || [("tables", 4096), ("wal", 512)],
        );
        let text = m.encode().unwrap();
        for needle in [
            "kvnode_requests_total{op=\"get\",status=\"200\"} 1",
            "kvnode_request_duration_seconds_bucket{le=",
            "kvnode_errors_total{kind=\"bad_request\"} 1",
            "kvnode_replica_calls_total{op=\"apply\",target=\"remote\",outcome=\"timeout\"} 1",
            "kvnode_stream_received_items_total 3",
            "kvnode_read_repairs_skipped_total 1",
            "kvnode_digest_mismatches_total 1",
            "kvnode_replica_calls_total{op=\"digest\",target=\"remote\",outcome=\"ok\"} 1",
            "kvnode_stream_received_bytes_total 100",
            "kvnode_stream_ranges{state=\"done\"} 2",
            "kvnode_disk_bytes{kind=\"wal\"} 512",
            "kvnode_requests_in_flight{class=\"client\"} 1",
            "kvnode_requests_in_flight{class=\"internal\"} 0",
            "kvnode_hlc_remote_ahead_total 1",
            "kvnode_gossip_datagrams_total{direction=\"received\",outcome=\"clock_offset\"} 1",
            "kvnode_hints_stored_total 1",
            "kvnode_hints_delivered_total 0",
            "kvnode_hints_dropped_total{reason=\"over_bound\"} 1",
            "kvnode_hints_pending_bytes{target=\"node2\"} 4096",
            "# TYPE strata_engine_level_tables gauge",
            "strata_engine_level_tables{level=\"1\"} 0",
            "# TYPE strata_engine_flushes counter",
            "strata_engine_flushes_total 5",
            "strata_engine_stall_stop_seconds_total 1.5",
            "strata_engine_background_error 0",
            "strata_engine_compaction_filter_removed_total 7",
            "kvnode_members{state=\"AVAILABLE\",status=\"DOWN\"} 1",
            "kvnode_build_info{version=\"",
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            // A request that ran to the 10 s timeout has a bucket of its own.
            "kvnode_request_duration_seconds_bucket{le=\"13.1072\",op=\"put\"} 1",
            "kvnode_request_duration_seconds_bucket{le=\"6.5536\",op=\"put\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // One exposition: the EOF marker once, last, after every family.
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }

    #[test]
    fn latency_buckets_reach_the_request_timeout() {
        let buckets = latency_buckets(Duration::from_secs(10));
        assert_eq!(buckets.len(), 19);
        let (last, below) = (buckets[18], buckets[17]);
        assert!(last >= 10.0 && below < 10.0, "{buckets:?}");
        // A shorter timeout gets fewer buckets, never one short of it.
        let short = latency_buckets(Duration::from_millis(300));
        assert!(*short.last().unwrap() >= 0.3);
        assert_eq!(latency_buckets(Duration::ZERO), [FIRST_LATENCY_BUCKET_SECS]);
    }
}
