//! Memory under a burst of large writes: 256 concurrent 1 MiB PUTs against
//! one real kvnode with a 64 MiB body budget. Before the budget, this load
//! took a node to 3.0 GB (about 12 MB per request in flight).

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, SERIAL};

const BUDGET: u64 = 64 << 20;
const WRITERS: usize = 256;
const VALUE: usize = 1 << 20;
/// What a node may hold beyond its budget under this load, with why:
/// - 3 × the budget for the bodies themselves: a body in flight lives as the
///   collected request body, the apply body (the one copy the coordinator
///   makes) and the engine's WAL batch, and the allocator does not hand a
///   freed buffer back at once;
/// - 3 × 32 MiB of memtables (the engine's default: one active and two
///   frozen waiting for their flush), which this much data fills;
/// - 64 MiB for everything else: hyper's read buffers, the tokio and
///   blocking-pool threads' stacks, the flushes' table builders.
const OVERHEAD: u64 = 3 * BUDGET + 3 * (32 << 20) + (64 << 20);

#[tokio::test]
async fn a_burst_of_large_puts_stays_within_the_body_budget() {
    let _serial = SERIAL.lock().await;
    let budget = BUDGET.to_string();
    let c = Cluster::start_with(1, 1, &[("KVNODE_MAX_INFLIGHT_BODY_BYTES", &budget)]).await;
    let pid = c.nodes[0].pid();
    // Warm up the paths the burst takes, so the baseline holds their
    // one-time allocations.
    for k in 0..8 {
        let r = c
            .put(0, &format!("warm{k}"), &vec![0u8; VALUE], "one")
            .await;
        assert_eq!(r.status(), 204);
    }
    let baseline = common::status_bytes(pid, "RssAnon");

    // Anonymous memory (not the mmapped tables, which are page cache),
    // sampled every 5 ms while the burst runs.
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(common::status_bytes(pid, "RssAnon"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(WRITERS)
        .build()
        .unwrap();
    let url = c.nodes[0].url("/v1/kv/");
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let value = vec![i as u8; VALUE];
                let mut refused = 0u32;
                loop {
                    let sent = client
                        .put(format!("{url}burst{i}?consistency=one"))
                        .body(value.clone())
                        .send()
                        .await;
                    // A node that refuses a body early may close the
                    // connection before this client has sent all of it
                    // (HTTP/1.1 allows it; its lingering close makes it
                    // rare): a refusal all the same.
                    let r = match sent {
                        Ok(r) => r,
                        Err(e) => {
                            refused += 1;
                            assert!(refused < 60, "writer {i} refused 60 times: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    match r.status().as_u16() {
                        204 => return refused,
                        503 => {
                            let retry: u64 = r.headers()["retry-after"]
                                .to_str()
                                .unwrap()
                                .parse()
                                .unwrap();
                            refused += 1;
                            assert!(refused < 60, "writer {i} refused 60 times");
                            tokio::time::sleep(Duration::from_secs(retry)).await;
                        }
                        s => panic!("writer {i}: {s} {}", r.text().await.unwrap()),
                    }
                }
            })
        })
        .collect();
    let mut refusals = 0;
    for w in writers {
        refusals += w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let hwm = common::status_bytes(pid, "VmHWM");
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "baseline RssAnon {:.0} MiB, peak RssAnon {:.0} MiB (+{:.0} MiB), VmHWM {:.0} MiB, \
         {refusals} refusals retried",
        mib(baseline),
        mib(peak),
        mib(peak - baseline),
        mib(hwm)
    );
    assert!(refusals > 0, "a 64 MiB budget cannot take 256 MiB at once");
    assert!(
        peak - baseline <= OVERHEAD,
        "grew {:.0} MiB, more than the {:.0} MiB allowed",
        mib(peak - baseline),
        mib(OVERHEAD)
    );
    // Every acknowledged write is there.
    for i in (0..WRITERS).step_by(17) {
        let r = c.get(0, &format!("burst{i}"), "one").await;
        assert_eq!(r.bytes().await.unwrap().len(), VALUE);
    }
}
