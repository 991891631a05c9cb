//! What a measurement reports, and the tables and JSON it is printed as.
//!
//! A [`Row`] is one system under one workload; a [`Case`] is kvnode's row
//! with its peer's (if any) and the ratios kvnode / peer of throughput and
//! of p99. Throughput and CPU count only the successful requests of the
//! window; failures are reported apart and never hidden in an average.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Outcome;

/// One system under one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `kvnode`, `etcd` or `bare axum`.
    pub system: String,
    /// Successful requests in the window.
    pub requests: u64,
    /// Successful requests per second of the window.
    pub req_per_sec: f64,
    /// Latency percentiles of the successful requests, in µs.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub p999_us: u64,
    /// See `p50_us`.
    pub max_us: u64,
    /// Answers that were errors (or reads that found nothing).
    pub non_2xx: u64,
    /// Requests without an answer (connect, read, write, timeout).
    pub io_errors: u64,
    /// What the first failures were.
    pub errors: Vec<String>,
    /// CPU time of all the server processes per successful request, in µs.
    pub server_cpu_us_per_op: Option<f64>,
    /// Cores the servers kept busy on average over the window.
    pub server_cores: f64,
    /// CPU time of the load generator per successful request, in µs.
    pub client_cpu_us_per_op: Option<f64>,
    /// Cores the generator kept busy on average over the window.
    pub client_cores: f64,
}

impl Row {
    /// The row of `system`'s run.
    pub fn new(system: &str, outcome: &Outcome) -> Self {
        let stats = &outcome.stats;
        let window = outcome.window.as_secs_f64().max(f64::MIN_POSITIVE);
        let per_op = |cpu: std::time::Duration| {
            (stats.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / stats.ok as f64)
        };
        let errors = [
            stats
                .first_non_2xx
                .as_ref()
                .map(|e| format!("non-2xx: {e}")),
            stats.first_io_error.as_ref().map(|e| format!("I/O: {e}")),
        ];
        Self {
            system: system.to_owned(),
            requests: stats.ok,
            req_per_sec: stats.ok as f64 / window,
            p50_us: stats.latency.value_at_quantile(0.5),
            p99_us: stats.latency.value_at_quantile(0.99),
            p999_us: stats.latency.value_at_quantile(0.999),
            max_us: stats.latency.max(),
            non_2xx: stats.non_2xx,
            io_errors: stats.io_errors,
            errors: errors.into_iter().flatten().collect(),
            server_cpu_us_per_op: per_op(outcome.server_cpu),
            server_cores: outcome.server_cpu.as_secs_f64() / window,
            client_cpu_us_per_op: per_op(outcome.client_cpu),
            client_cores: outcome.client_cpu.as_secs_f64() / window,
        }
    }

    fn failed(&self) -> bool {
        self.non_2xx + self.io_errors > 0
    }
}

/// kvnode under one workload, next to its peer.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// What was measured, e.g. `3 nodes RF 3 QUORUM PUT`.
    pub workload: String,
    /// kvnode's row.
    pub kvnode: Row,
    /// The peer's row, if one was measured.
    pub peer: Option<Row>,
    /// Why the peer was skipped, or how it differs.
    pub peer_note: Option<String>,
    /// kvnode's req/s over the peer's: above 1, kvnode serves more.
    pub ratio_req_per_sec: Option<f64>,
    /// kvnode's p99 over the peer's: below 1, kvnode's tail is shorter.
    pub ratio_p99: Option<f64>,
}

impl Case {
    /// The case, with the ratios of its rows.
    pub fn new(
        workload: String,
        kvnode: Row,
        peer: Option<Row>,
        peer_note: Option<String>,
    ) -> Self {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let ratio_req_per_sec = peer
            .as_ref()
            .and_then(|p| ratio(kvnode.req_per_sec, p.req_per_sec));
        let ratio_p99 = peer
            .as_ref()
            .and_then(|p| ratio(kvnode.p99_us as f64, p.p99_us as f64));
        Self {
            workload,
            kvnode,
            peer,
            peer_note,
            ratio_req_per_sec,
            ratio_p99,
        }
    }

    /// One line per row that had failures, naming the first of them.
    pub fn failures(&self) -> Vec<String> {
        std::iter::once(&self.kvnode)
            .chain(&self.peer)
            .filter(|row| row.failed())
            .map(|row| {
                format!(
                    "{} / {}: {} non-2xx, {} I/O errors ({})",
                    self.workload,
                    row.system,
                    row.non_2xx,
                    row.io_errors,
                    row.errors.join("; ")
                )
            })
            .collect()
    }
}

/// What every case of a run shares, and how busy the machine was.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    /// Connections, each with one request in flight.
    pub connections: usize,
    /// Threads of the generator.
    pub client_threads: usize,
    /// Uncounted load before each window, in seconds.
    pub warmup_secs: f64,
    /// Each timed window, in seconds.
    pub duration_secs: f64,
    /// Bytes per value.
    pub value_size: usize,
    /// Size of the key space.
    pub keys: u64,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started.
    pub load_average_start: Option<String>,
    /// The same when it ended.
    pub load_average_end: Option<String>,
}

/// The whole run as one JSON document.
pub fn json(conditions: &Conditions, cases: &[Case]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::json!({
        "conditions": conditions,
        "cases": cases,
    }))
}

/// One line that says under what the figures were taken.
pub fn conditions(c: &Conditions) -> String {
    let load = |l: &Option<String>| l.clone().unwrap_or_else(|| "unknown".to_owned());
    format!(
        "{} connections on {} client threads, {} s warm-up, {} s window, {}-byte values, {} keys; \
         load average {} at the start, {} at the end\n",
        c.connections,
        c.client_threads,
        c.warmup_secs,
        c.duration_secs,
        c.value_size,
        count(c.keys as f64),
        load(&c.load_average_start),
        load(&c.load_average_end),
    )
}

/// The table: one line per case, kvnode against its peer.
pub fn summary(cases: &[Case]) -> String {
    let mut out = String::from(
        "| workload | kvnode req/s | p50 | p99 | p99.9 | CPU µs/op | peer | peer req/s | peer p99 \
         | peer CPU µs/op | ratio req/s | ratio p99 |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for case in cases {
        let k = &case.kvnode;
        let peer_name = match (&case.peer, &case.peer_note) {
            (Some(p), Some(note)) => format!("{} ({note})", p.system),
            (Some(p), None) => p.system.clone(),
            (None, Some(note)) => note.clone(),
            (None, None) => "–".to_owned(),
        };
        let peer = case.peer.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.workload,
            count(k.req_per_sec),
            latency(k.p50_us),
            latency(k.p99_us),
            latency(k.p999_us),
            micros(k.server_cpu_us_per_op),
            peer_name,
            peer.map_or_else(dash, |p| count(p.req_per_sec)),
            peer.map_or_else(dash, |p| latency(p.p99_us)),
            peer.map_or_else(dash, |p| micros(p.server_cpu_us_per_op)),
            case.ratio_req_per_sec
                .map_or_else(dash, |r| format!("{r:.2}")),
            case.ratio_p99.map_or_else(dash, |r| format!("{r:.2}")),
        );
    }
    out
}

/// Every row in full: latency tail, CPU of both sides, failures.
pub fn details(cases: &[Case]) -> String {
    let mut out = String::from(
        "| workload | system | requests | req/s | p50 | p99 | p99.9 | max | server CPU µs/op \
         | server cores | client CPU µs/op | client cores | non-2xx | I/O errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for case in cases {
        for row in std::iter::once(&case.kvnode).chain(&case.peer) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} |",
                case.workload,
                row.system,
                count(row.requests as f64),
                count(row.req_per_sec),
                latency(row.p50_us),
                latency(row.p99_us),
                latency(row.p999_us),
                latency(row.max_us),
                micros(row.server_cpu_us_per_op),
                row.server_cores,
                micros(row.client_cpu_us_per_op),
                row.client_cores,
                row.non_2xx,
                row.io_errors,
            );
        }
    }
    out
}

fn dash() -> String {
    "–".to_owned()
}

/// `72,345`: a whole number with thousands separators.
fn count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `612 µs`, `4.9 ms` or `1.23 s`.
fn latency(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn micros(us: Option<f64>) -> String {
    us.map_or_else(dash, |us| format!("{us:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, req_per_sec: f64, p99_us: u64) -> Row {
        Row {
            system: system.to_owned(),
            requests: 1000,
            req_per_sec,
            p50_us: 100,
            p99_us,
            p999_us: p99_us * 2,
            max_us: p99_us * 3,
            non_2xx: 0,
            io_errors: 0,
            errors: Vec::new(),
            server_cpu_us_per_op: Some(50.0),
            server_cores: 1.0,
            client_cpu_us_per_op: Some(5.0),
            client_cores: 0.1,
        }
    }

    #[test]
    fn ratios_are_kvnode_over_peer() {
        let case = Case::new(
            "3 nodes RF 3 QUORUM PUT".into(),
            row("kvnode", 15_000.0, 5_000),
            Some(row("etcd", 5_000.0, 20_000)),
            None,
        );
        assert_eq!(case.ratio_req_per_sec, Some(3.0));
        assert_eq!(case.ratio_p99, Some(0.25));
        let table = summary(&[case]);
        assert!(table.contains("| 3 nodes RF 3 QUORUM PUT | 15,000 | 100 µs | 5.0 ms | 10.0 ms | 50.0 | etcd | 5,000 | 20.0 ms | 50.0 | 3.00 | 0.25 |"), "{table}");
    }

    #[test]
    fn a_case_without_peer_shows_why() {
        let case = Case::new(
            "1 node PUT".into(),
            row("kvnode", 30_000.0, 900),
            None,
            Some("etcd skipped: no etcd".into()),
        );
        assert_eq!(case.ratio_req_per_sec, None);
        assert!(summary(&[case]).contains("| etcd skipped: no etcd | – | – | – | – | – |"));
    }

    #[test]
    fn failures_name_each_failing_row() {
        let mut kvnode = row("kvnode", 1.0, 1);
        kvnode.non_2xx = 3;
        kvnode.errors = vec!["non-2xx: 503 Service Unavailable".into()];
        let case = Case::new("w".into(), kvnode, Some(row("etcd", 1.0, 1)), None);
        let failures = case.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("kvnode: 3 non-2xx, 0 I/O errors (non-2xx: 503"));
    }

    #[test]
    fn conditions_say_how_busy_the_machine_was() {
        let c = Conditions {
            connections: 64,
            client_threads: 2,
            warmup_secs: 2.0,
            duration_secs: 10.0,
            value_size: 100,
            keys: 100_000,
            load_average_start: Some("0.52 0.61 0.70".into()),
            load_average_end: None,
        };
        assert_eq!(
            conditions(&c),
            "64 connections on 2 client threads, 2 s warm-up, 10 s window, 100-byte values, \
             100,000 keys; load average 0.52 0.61 0.70 at the start, unknown at the end\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&json(&c, &[]).expect("JSON")).expect("parses");
        assert_eq!(json["conditions"]["connections"], 64);
        assert_eq!(json["cases"], serde_json::json!([]));
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1_000.0), "1,000");
        assert_eq!(count(72_345.6), "72,346");
        assert_eq!(count(1_234_567.0), "1,234,567");
        assert_eq!(latency(612), "612 µs");
        assert_eq!(latency(4_930), "4.9 ms");
        assert_eq!(latency(1_234_000), "1.23 s");
    }
}
