//! Nodes whose wall clocks are too far apart refuse to gossip with each
//! other and say so. A node whose clock runs 2 s ahead (the test-only
//! `--clock-skew-ms`) never becomes a member of a cluster with the default
//! maximum offset of 500 ms, nor the cluster of it, while a node with a true
//! clock joins the same cluster beside it; both sides' logs name the peer
//! and the offset, and not once per datagram.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

/// `text` without its ANSI colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The ids in node `i`'s view.
async fn members(cluster: &Cluster, i: usize) -> Vec<String> {
    let view = cluster.view(i).await.expect("view");
    view.into_iter().map(|(id, _, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_clock_is_2_s_ahead_is_refused_and_the_offset_named() {
    let _serial = common::SERIAL.lock().await;
    let mut cluster = Cluster::start(1).await;
    let started = Instant::now();
    let skewed = cluster.add_node_with(&[("KVNODE_CLOCK_SKEW_MS", "2000")]);
    let fair = cluster.add_node();
    // The node with a true clock joins through the same seed: gossip works,
    // so what keeps the skewed one out is its clock.
    cluster.wait_until_sees(0, 2, Duration::from_secs(60)).await;
    cluster
        .wait_until_sees(fair, 2, Duration::from_secs(60))
        .await;

    // Many gossip rounds (100 ms each): the skewed node stays alone.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for i in [0, fair] {
            let ids = members(&cluster, i).await;
            assert!(
                !ids.contains(&"node2".to_owned()),
                "node{} sees {ids:?}",
                i + 1
            );
        }
        assert_eq!(members(&cluster, skewed).await, vec!["node2".to_owned()]);
        assert!(!cluster.is_ready(skewed).await, "the skewed node joined");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let refused = cluster
        .metric(
            0,
            "kvnode_gossip_datagrams_total{direction=\"received\",outcome=\"clock_offset\"}",
        )
        .await;
    assert!(
        refused >= 10.0,
        "{refused} datagrams refused for their clock"
    );

    // Each side names the other and the offset as it measures it: the seed
    // from the joiner's gossip, the joiner from the seed's clock notices.
    let seed_addr = cluster.nodes[0].gossip;
    let skewed_addr = cluster.nodes[skewed].gossip;
    let most = started.elapsed().as_secs() / 10 + 1;
    for (i, peer, offsets) in [
        (0, skewed_addr, 1_500..=2_000),
        (skewed, seed_addr, -2_500..=-2_000),
    ] {
        let log = plain(&cluster.nodes[i].log_text());
        let peer = format!("peer={peer}");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("maximum clock offset") && l.contains(&peer))
            .collect();
        assert!(
            !warnings.is_empty(),
            "node{} names no {peer}:\n{log}",
            i + 1
        );
        for line in &warnings {
            let offset: i64 = line
                .split("offset_ms=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no offset in {line}"));
            // 2 s, give or take the datagram's flight and a truncated ms.
            assert!(offsets.contains(&offset), "{line}");
        }
        // At most one warning per peer every 10 s.
        assert!(warnings.len() as u64 <= most, "{warnings:#?}");
    }
}
