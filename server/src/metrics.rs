//! The node's Prometheus metrics and their text exposition (`GET /metrics`).
//!
//! `prometheus-client` (the Prometheus project's own Rust client) rather than
//! a hand-rolled registry: it gets the text format, label escaping and
//! histogram buckets right, and costs one small dependency.
//!
//! Engine statistics (`strata_engine::Db::stats()`) are read fresh at scrape
//! time and written as `strata_engine_*` families next to the registry's,
//! rather than copied into counters that could drift from the engine's own.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use strata_engine::Stats;

/// A client or internal operation, as labelled in metrics.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Op {
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
    /// A range stream served to a bootstrapping node.
    internal_stream,
    /// Cluster, node, health, readiness and metrics routes.
    admin,
    /// No route matched.
    unmatched,
}

/// Which side of a replica call.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReplicaOp {
    /// A write sent to a replica.
    apply,
    /// A read sent to a replica.
    read,
    /// A read repair sent to a stale replica.
    repair,
}

/// How a replica call ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
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
pub enum Target {
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
}

/// Which way a gossip datagram went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
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
pub struct GossipMetrics {
    datagrams: Family<GossipLabels, Counter>,
    bytes: Family<GossipLabels, Counter>,
    members_ignored: Counter,
    records_rejected: Counter,
}

impl GossipMetrics {
    fn count(&self, direction: Direction, outcome: GossipOutcome, bytes: usize) {
        let labels = GossipLabels { direction, outcome };
        self.datagrams.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Counts a datagram received, with what became of it.
    pub fn datagram_in(&self, outcome: GossipOutcome, bytes: usize) {
        self.count(Direction::received, outcome, bytes);
    }

    /// Counts a datagram sent (or not, if `oversized`).
    pub fn datagram_out(&self, outcome: GossipOutcome, bytes: usize) {
        self.count(Direction::sent, outcome, bytes);
    }

    /// Counts a member left out of the view because the bound was reached.
    pub fn member_ignored(&self) {
        self.members_ignored.inc();
    }

    /// Counts a member record whose signature did not verify.
    pub fn record_rejected(&self) {
        self.records_rejected.inc();
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
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    latency: Family<OpLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    replica_calls: Family<ReplicaLabels, Counter>,
    stream: StreamCounters,
    gossip: GossipMetrics,
}

/// Streaming and clean-up counters (`kvnode_stream_*`, `kvnode_cleanup_*`).
#[derive(Debug, Default)]
struct StreamCounters {
    sent_bytes: Counter,
    sent_items: Counter,
    received_bytes: Counter,
    received_items: Counter,
    retries: Counter,
    cleanup_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kvnode");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by operation and status code",
            requests.clone(),
        );
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
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
                "cleanup_deleted_items",
                "Items deleted because this node no longer replicates their range",
                &stream.cleanup_deleted,
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
            "gossip_records_rejected",
            "Member records whose signature did not verify (the last verified one was kept)",
            gossip.records_rejected.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            errors,
            replica_calls,
            stream,
            gossip,
        }
    }

    /// Counts one handled request.
    pub fn request(&self, op: Op, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&StatusLabels { op, status })
            .inc();
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(seconds);
    }

    /// Counts one error response of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts one replica call.
    pub fn replica_call(&self, op: ReplicaOp, target: Target, outcome: Outcome) {
        self.replica_calls
            .get_or_create(&ReplicaLabels {
                op,
                target,
                outcome,
            })
            .inc();
    }

    /// Counts a frame sent by a stream source.
    pub fn stream_sent(&self, bytes: usize, items: u64) {
        self.stream.sent_bytes.inc_by(bytes as u64);
        self.stream.sent_items.inc_by(items);
    }

    /// Counts items received and applied from a stream.
    pub fn stream_received(&self, bytes: usize, items: u64) {
        self.stream.received_bytes.inc_by(bytes as u64);
        self.stream.received_items.inc_by(items);
    }

    /// Counts a failed stream attempt.
    pub fn stream_retry(&self) {
        self.stream.retries.inc();
    }

    /// The gossip counters, for the transport and the membership.
    pub fn gossip(&self) -> GossipMetrics {
        self.gossip.clone()
    }

    /// Counts items dropped by clean-up.
    pub fn cleanup_deleted(&self, items: u64) {
        self.stream.cleanup_deleted.inc_by(items);
    }

    /// The Prometheus text exposition of every metric, the engine's and the
    /// incoming streams' range counts (`(state, ranges)`) included.
    pub fn encode(
        &self,
        engine: &Stats,
        stream_ranges: &[(&str, usize)],
    ) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        // The exposition must end with its EOF marker: the engine's families go before it.
        let body_len = out.strip_suffix("# EOF\n").map_or(out.len(), str::len);
        out.truncate(body_len);
        encode_engine(&mut out, engine)?;
        encode_stream_ranges(&mut out, stream_ranges)?;
        out.push_str("# EOF\n");
        Ok(out)
    }
}

/// Writes the incoming ranges by state, read fresh from the progress
/// report like the engine's statistics.
fn encode_stream_ranges(out: &mut String, ranges: &[(&str, usize)]) -> std::fmt::Result {
    use std::fmt::Write;
    writeln!(
        out,
        "# HELP kvnode_stream_ranges Ranges of this node's current bootstrap or take-over, by state"
    )?;
    writeln!(out, "# TYPE kvnode_stream_ranges gauge")?;
    for (state, n) in ranges {
        writeln!(out, "kvnode_stream_ranges{{state=\"{state}\"}} {n}")?;
    }
    Ok(())
}

/// Writes `stats` as OpenMetrics families.
fn encode_engine(out: &mut String, stats: &Stats) -> std::fmt::Result {
    use std::fmt::Write;
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        writeln!(out, "# HELP strata_engine_{name} {help}")?;
        writeln!(out, "# TYPE strata_engine_{name} {kind}")?;
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (labels, value) in samples {
            writeln!(out, "strata_engine_{name}{suffix}{labels} {value}")?;
        }
        Ok::<(), std::fmt::Error>(())
    };
    let per_level = |f: &dyn Fn(&strata_engine::LevelStats) -> f64| -> Vec<(String, f64)> {
        stats
            .levels
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("{{level=\"{i}\"}}"), f(l)))
            .collect()
    };
    let one = |v: f64| vec![(String::new(), v)];
    family(
        "level_tables",
        "gauge",
        "Live tables per level.",
        &per_level(&|l| l.tables as f64),
    )?;
    family(
        "level_bytes",
        "gauge",
        "Bytes of live tables per level.",
        &per_level(&|l| l.bytes as f64),
    )?;
    family(
        "level_score",
        "gauge",
        "Compaction urgency per level (due at 1).",
        &per_level(&|l| l.score),
    )?;
    family(
        "level_written_bytes",
        "counter",
        "Bytes written into each level by flushes and compactions.",
        &per_level(&|l| l.written_bytes as f64),
    )?;
    family(
        "user_written_bytes",
        "counter",
        "Key and value bytes of accepted writes.",
        &one(stats.user_bytes_written as f64),
    )?;
    family(
        "wal_written_bytes",
        "counter",
        "Bytes appended to write-ahead logs.",
        &one(stats.wal_bytes_written as f64),
    )?;
    family(
        "compacted_read_bytes",
        "counter",
        "Bytes compactions read.",
        &one(stats.bytes_compacted_read as f64),
    )?;
    family(
        "flushes",
        "counter",
        "Memtables flushed.",
        &one(stats.flushes as f64),
    )?;
    family(
        "compactions",
        "counter",
        "Compactions run.",
        &one(stats.compactions as f64),
    )?;
    family(
        "write_amplification",
        "gauge",
        "Table bytes written per user byte.",
        &one(stats.write_amplification()),
    )?;
    family(
        "stall_stops",
        "counter",
        "Write groups stopped by back-pressure.",
        &one(stats.stall_stops as f64),
    )?;
    family(
        "stall_stop_seconds",
        "counter",
        "Time writers spent stopped.",
        &one(stats.stall_stop_time.as_secs_f64()),
    )?;
    family(
        "stall_slowdowns",
        "counter",
        "Write groups delayed by back-pressure.",
        &one(stats.stall_slowdowns as f64),
    )?;
    family(
        "bloom_checks",
        "counter",
        "Table lookups that consulted a bloom filter.",
        &one(stats.bloom_checks as f64),
    )?;
    family(
        "bloom_negatives",
        "counter",
        "Lookups a bloom filter ruled out.",
        &one(stats.bloom_negatives as f64),
    )?;
    family(
        "bloom_false_positives",
        "counter",
        "Lookups a bloom filter let through in vain.",
        &one(stats.bloom_false_positives as f64),
    )?;
    family(
        "memtable_bytes",
        "gauge",
        "Bytes in the active memtable.",
        &one(stats.memtable_bytes as f64),
    )?;
    family(
        "immutable_memtables",
        "gauge",
        "Frozen memtables waiting for a flush.",
        &one(stats.immutable_memtables as f64),
    )?;
    family(
        "background_error",
        "gauge",
        "1 while a background error stops writes.",
        &one(f64::from(u8::from(stats.background_error.is_some()))),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.request(Op::get, 200, 0.001);
        m.error("bad_request");
        m.replica_call(ReplicaOp::apply, Target::remote, Outcome::timeout);
        m.stream_received(100, 3);
        let text = m.encode(&Stats::default(), &[("done", 2)]).unwrap();
        for needle in [
            "kvnode_requests_total{op=\"get\",status=\"200\"} 1",
            "kvnode_request_duration_seconds_bucket{le=",
            "kvnode_errors_total{kind=\"bad_request\"} 1",
            "kvnode_replica_calls_total{op=\"apply\",target=\"remote\",outcome=\"timeout\"} 1",
            "kvnode_stream_received_items_total 3",
            "kvnode_stream_received_bytes_total 100",
            "kvnode_stream_ranges{state=\"done\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
