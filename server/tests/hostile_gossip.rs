//! An attacker on the gossip port of a live 3-node cluster: garbage,
//! oversized, plain (unsealed) chitchat, datagrams sealed under another
//! secret, tampered and replayed ones, a digest claiming enormous heartbeats
//! and one naming 3,000 fake members. None of it may remove a member, stop a
//! QUORUM write, delete an item or grow a node's memory.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, Serializable};
use common::{Cluster, SECRET};
use strata_server::auth::ClusterSecret;
use strata_server::gossip_transport::{seal_message, sender_id, GossipKey, MAX_DATAGRAM};

/// A chitchat SYN (protocol V0) whose digest names `members`, each with
/// `heartbeat`: what chitchat would send, built by hand from its wire format.
fn syn(members: &[ChitchatId], heartbeat: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(45_139u16.to_le_bytes()); // chitchat's magic number
    out.push(0); // protocol V0
    out.push(0); // SYN
    u16::try_from(members.len()).unwrap().serialize(&mut out);
    for id in members {
        id.serialize(&mut out);
        heartbeat.serialize(&mut out);
        0u64.serialize(&mut out); // last GC version
        u64::MAX.serialize(&mut out); // max version
    }
    "strata".to_owned().serialize(&mut out);
    out
}

fn fake_members(n: usize) -> Vec<ChitchatId> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("127.0.0.{}:{}", 2 + i % 200, 10_000 + i)
                .parse()
                .unwrap();
            ChitchatId::new(format!("fake-{i}"), 1, addr)
        })
        .collect()
}

/// This host's wall clock, ms: an insider's datagrams carry it, or they
/// would be refused for their clock alone.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

async fn counter(cluster: &Cluster, i: usize, outcome: &str) -> f64 {
    cluster
        .metric(
            i,
            &format!(
                "kvnode_gossip_datagrams_total{{direction=\"received\",outcome=\"{outcome}\"}}"
            ),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_replayed_and_oversized_gossip_changes_nothing() {
    let _serial = common::SERIAL.lock().await;
    let cluster = Cluster::start(3).await;
    let keys = 300;
    for k in 0..keys {
        let r = cluster.put(k % 3, &format!("k{k}"), b"v", "all").await;
        assert_eq!(r.status(), 204);
    }
    let rss = |i: usize| common::status_bytes(cluster.nodes[i].pid(), "VmRSS") / 1024;
    let rss_before: Vec<u64> = (0..3).map(rss).collect();

    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let targets: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.gossip).collect();
    let members: Vec<ChitchatId> = cluster
        .nodes
        .iter()
        .map(|n| ChitchatId::new(n.id.clone(), 1, n.gossip))
        .collect();
    let good = GossipKey::derive(&ClusterSecret::new(SECRET.into()), "strata");
    let wrong = GossipKey::derive(
        &ClusterSecret::new("not-the-secret-0123456789".into()),
        "strata",
    );
    let insider = sender_id("insider");
    let mut counter_out = 0u64;

    let mut attacks: Vec<Vec<u8>> = Vec::new();
    // Garbage of every small length, and datagrams of the largest size.
    attacks.extend((1..300).map(|len| (0..len).map(|i| (i * 31 + len) as u8).collect()));
    attacks.extend((0..10).map(|_| vec![0xA5; MAX_DATAGRAM]));
    // Plain chitchat, as the forgeries of the past were: heartbeats of 2^62
    // for the real members, and 3,000 fake members.
    let huge_heartbeat = syn(&members, 1 << 62);
    let fake_digest = syn(&fake_members(3_000), 1);
    attacks.push(huge_heartbeat.clone());
    attacks.push(fake_digest[..MAX_DATAGRAM.min(fake_digest.len())].to_vec());
    // The same, sealed under a wrong secret.
    for message in [&huge_heartbeat, &fake_digest] {
        attacks
            .extend(seal_message(&wrong, insider, 1, &mut counter_out, now_ms(), message).unwrap());
    }
    for datagram in &attacks {
        for target in &targets {
            attacker.send_to(datagram, target).await.unwrap();
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }

    // Nothing was answered: an anonymous SYN used to return every member's
    // address, state, tokens and signature.
    let mut reply = vec![0u8; MAX_DATAGRAM];
    let answered =
        tokio::time::timeout(Duration::from_millis(500), attacker.recv_from(&mut reply)).await;
    assert!(
        answered.is_err(),
        "the cluster answered an attacker: {answered:?}"
    );

    // From here on, a holder of the secret (its own socket, since it is
    // answered). A datagram sealed under the right secret, as one captured
    // from a member would be, replayed, and tampered with.
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let harmless = syn(&[], 0);
    let sealed = seal_message(&good, insider, 2, &mut counter_out, now_ms(), &harmless).unwrap();
    for target in &targets {
        attacker.send_to(&sealed[0], target).await.unwrap();
        attacker.send_to(&sealed[0], target).await.unwrap();
        let mut tampered = sealed[0].clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        attacker.send_to(&tampered, target).await.unwrap();
    }
    // An insider that names 3,000 fake members: bounded by max_members, and
    // unsigned, so none of them becomes a member.
    for datagram in
        seal_message(&good, insider, 2, &mut counter_out, now_ms(), &fake_digest).unwrap()
    {
        for target in &targets {
            attacker.send_to(&datagram, target).await.unwrap();
        }
    }

    // For longer than the clean-up grace (1.5 s in tests), every view keeps
    // every member, and QUORUM writes keep succeeding.
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(6) {
        for i in 0..3 {
            let view = cluster.view(i).await.expect("view");
            let up: Vec<&str> = view
                .iter()
                .filter(|(_, s, st)| s == "AVAILABLE" && st == "UP")
                .map(|(id, _, _)| id.as_str())
                .collect();
            assert_eq!(up.len(), 3, "node{} sees {view:?}", i + 1);
            assert_eq!(view.len(), 3, "node{} sees {view:?}", i + 1);
        }
        let r = cluster
            .put(round % 3, &format!("during-{round}"), b"v", "quorum")
            .await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 204, "QUORUM write during the attack: {body}");
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each node still holds every key itself (RF 3 on 3 nodes), checked on
    // its own engine before any read could repair it.
    for (i, before) in rss_before.into_iter().enumerate() {
        for k in 0..keys {
            assert!(
                cluster.local_record(i, &format!("k{k}")).await.is_some(),
                "node{} lost k{k}",
                i + 1
            );
        }
        assert_eq!(
            cluster
                .metric(i, "kvnode_cleanup_deleted_items_total")
                .await,
            0.0
        );
        assert!(counter(&cluster, i, "unauthenticated").await >= 3.0);
        assert!(counter(&cluster, i, "malformed").await >= 300.0);
        assert!(counter(&cluster, i, "replayed").await >= 1.0);
        let after = rss(i);
        let grown = after.saturating_sub(before);
        eprintln!("node{}: RSS {before} -> {after} KiB (+{grown} KiB)", i + 1);
        assert!(grown < 64 * 1024, "node{} grew by {grown} KiB", i + 1);
    }
}
