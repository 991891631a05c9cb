//! The node's Prometheus metrics and their text exposition (`GET /metrics`).
//!
//! `prometheus-client` (the Prometheus project's own Rust client) rather than
//! a hand-rolled registry: it gets the text format, label escaping and
//! histogram buckets right, and costs one small dependency.
//!
//! Engine statistics are not exported yet: `strata_engine::Db::stats()` lands
//! with the compaction work. They belong in the `/metrics` handler
//! (`api::cluster::metrics`), appended to [`Metrics::encode`]'s text, read
//! fresh from the engine at scrape time rather than copied into counters.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
        Self {
            registry,
            requests,
            latency,
            errors,
            replica_calls,
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

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
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
        let text = m.encode().unwrap();
        for needle in [
            "kvnode_requests_total{op=\"get\",status=\"200\"} 1",
            "kvnode_request_duration_seconds_bucket{le=",
            "kvnode_errors_total{kind=\"bad_request\"} 1",
            "kvnode_replica_calls_total{op=\"apply\",target=\"remote\",outcome=\"timeout\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
