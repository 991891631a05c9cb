//! The Grafana dashboard `deploy/grafana/kvnode.json` against a real
//! `kvnode` process: every query of every panel parses as PromQL (once the
//! dashboard's variables are given values), and every metric it names is a
//! family the node declares on `/metrics`, with the suffix its type gives
//! its samples (`_total` for counters; `_bucket`, `_sum`, `_count` for
//! histograms). Where the scrape has samples of a family, every label a
//! query matches on must be one of theirs. A metric renamed in the node
//! and not in the dashboard fails here rather than as an empty panel.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::Cluster;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;

/// Labels Prometheus adds to every scraped series: a query may match on
/// them though the node never writes them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Values for the dashboard's variables, so that its queries are PromQL.
const VARIABLES: [(&str, &str); 2] = [("$__rate_interval", "1m"), ("$instance", ".*")];

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/kvnode.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel's queries, with the panel's title; rows' nested panels too.
fn queries(panels: &[Value], out: &mut Vec<(String, String)>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target without expr");
            out.push((title.clone(), expr.to_owned()));
        }
        if let Some(nested) = panel["panels"].as_array() {
            queries(nested, out);
        }
    }
}

/// The vector selectors of a query: (metric name, labels it matches on).
#[derive(Default)]
struct Selectors(Vec<(String, Vec<String>)>);

impl Selectors {
    fn add(&mut self, vs: &VectorSelector) {
        let name = vs.name.clone().expect("a selector without a metric name");
        let labels = vs
            .matchers
            .matchers
            .iter()
            .map(|m| m.name.clone())
            .filter(|l| l != "__name__")
            .collect();
        self.0.push((name, labels));
    }
}

impl ExprVisitor for Selectors {
    type Error = ();

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        match expr {
            Expr::VectorSelector(vs) => self.add(vs),
            Expr::MatrixSelector(ms) => self.add(&ms.vs),
            _ => {}
        }
        Ok(true)
    }
}

/// What a scrape declares: each sample name a family's type gives it, and
/// the label names seen on the samples of each.
fn exported(text: &str) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = declared.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            "gauge" | "unknown" => &[""],
            other => panic!("a family of type {other}: {line}"),
        };
        for suffix in suffixes {
            names.insert(format!("{family}{suffix}"));
        }
    }
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let entry = labels.entry(line[..name_end].to_owned()).or_default();
        if let Some(set) = line[name_end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
        {
            for pair in set.0.split(',') {
                if let Some((label, _)) = pair.split_once('=') {
                    entry.insert(label.to_owned());
                }
            }
        }
    }
    (names, labels)
}

#[tokio::test]
async fn every_dashboard_query_names_metrics_a_node_exports() {
    let dashboard = dashboard();
    let mut all = Vec::new();
    queries(dashboard["panels"].as_array().unwrap(), &mut all);
    assert!(all.len() >= 20, "only {} queries", all.len());
    // The node picker's query is Grafana's, not PromQL: its metric counts too.
    let picker = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    let definition = picker["definition"].as_str().unwrap();
    let picked = definition
        .strip_prefix("label_values(")
        .and_then(|rest| rest.split_once(','))
        .map(|(metric, _)| metric.trim().to_owned())
        .unwrap_or_else(|| panic!("the picker's query is {definition}"));

    let mut named: Vec<(String, String, Vec<String>)> =
        vec![("node picker".into(), picked, Vec::new())];
    let mut unparsed = Vec::new();
    for (title, expr) in &all {
        let query = VARIABLES
            .iter()
            .fold(expr.clone(), |q, (var, value)| q.replace(var, value));
        assert!(
            !query.contains('$'),
            "{title}: a variable without a value: {expr}"
        );
        match parser::parse(&query) {
            Ok(ast) => {
                let mut selectors = Selectors::default();
                walk_expr(&mut selectors, &ast).unwrap();
                assert!(!selectors.0.is_empty(), "{title}: names no metric: {expr}");
                for (name, labels) in selectors.0 {
                    named.push((title.clone(), name, labels));
                }
            }
            Err(e) => unparsed.push(format!("{title}: {e}: {expr}")),
        }
    }
    assert!(
        unparsed.is_empty(),
        "queries that do not parse:\n{}",
        unparsed.join("\n")
    );

    let c = Cluster::start_with_rf(1, 1).await;
    // Traffic, so that labelled families have samples whose labels to check.
    assert_eq!(c.put(0, "dashboard", b"v", "one").await.status(), 204);
    assert_eq!(c.get(0, "dashboard", "one").await.status(), 200);
    assert_eq!(c.get(0, "absent", "one").await.status(), 404);
    let text = common::signed(c.client.get(c.nodes[0].url("/metrics")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (names, labels) = exported(&text);
    assert!(
        names.contains("kvnode_request_duration_seconds_bucket"),
        "{text}"
    );

    let mut wrong = Vec::new();
    for (title, name, matched) in &named {
        if !names.contains(name) {
            wrong.push(format!("{title}: {name} is not exported"));
            continue;
        }
        let Some(seen) = labels.get(name) else {
            continue;
        };
        for label in matched {
            if !seen.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                wrong.push(format!(
                    "{title}: {name} has no label {label} (it has {seen:?})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the dashboard is off the node's metrics:\n{}",
        wrong.join("\n")
    );
}
