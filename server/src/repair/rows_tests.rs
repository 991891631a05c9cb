#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::peer::frames::Entry;
use crate::peer::wire::decode_apply_batch;
use crate::repair::tree::{depth_for, Descent, RangeTree};
use crate::storage::{engine_key, Record};

fn storage() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        dir.path(),
        Duration::from_millis(crate::config::defaults::TOMBSTONE_GRACE_MS),
    )
    .unwrap();
    (dir, storage)
}

/// What one repair of `range` between `asker` and `other` did.
#[derive(Debug, Default)]
struct Exchange {
    /// Repair-rows calls made.
    calls: usize,
    /// Items the other side sent.
    received: usize,
    /// Items the asker pushed back.
    pushed: u64,
}

/// One comparison of `asker` with `other` over `range`, as the repairer
/// runs it but without a network: the walk, then the row step over the
/// differing leaves, every body through its encoder and decoder.
fn exchange(asker: &Storage, other: &Storage, range: TokenRange, seed: u64) -> Exchange {
    let tree = |s: &Storage, depth| RangeTree::build(&s.snapshot(), range, depth, &mut |_| ());
    // The depth both sides' counts call for, as the first digest answer
    // lets the asker choose.
    let items = |s: &Storage| tree(s, None).unwrap().items();
    let depth = depth_for(range, items(asker).max(items(other)));
    let mine = tree(asker, Some(depth)).unwrap();
    let theirs = tree(other, Some(depth)).unwrap();
    let mut walk = Descent::new(&mine, seed);
    while let Some((level, parents)) = walk.request() {
        walk.answer(&theirs.children(level, parents, seed).unwrap())
            .unwrap();
    }
    let leaves = walk.into_leaves();
    let mut done = Exchange::default();
    let mut rest = leaves.as_slice();
    while !rest.is_empty() {
        let ask = ask(
            &asker.snapshot(),
            (range, mine.depth(), seed),
            rest,
            &mut |_| (),
        )
        .unwrap();
        let request = RowsRequest::decode(&ask.request.encode()).unwrap();
        let body = answer(&other.snapshot(), &request, &mut |_| ()).unwrap();
        let got = RowsAnswer::decode(&body, &ask.request).unwrap();
        rest = &rest[got.answered..];
        done.calls += 1;
        done.received += got.entries.len();
        let settled = settle(asker, &ask, &got).unwrap();
        done.pushed += settled.pushed;
        for body in settled.push {
            for e in decode_apply_batch(&body).unwrap() {
                other.apply(e.user_key(), &e.record).unwrap();
            }
        }
    }
    done
}

/// A record of a small space, so that the two sides often hold the same
/// version with another value, or a tombstone of it.
fn record() -> impl Strategy<Value = Option<Record>> {
    prop_oneof![
        Just(None),
        (1u64..4, 0u8..3).prop_map(|(v, x)| Some(Record::value(v, vec![x; 1 + x as usize]))),
        (1u64..4).prop_map(|v| Some(Record::tombstone(v))),
    ]
}

fn fill(storage: &Storage, records: &BTreeMap<Vec<u8>, Record>) {
    for (k, r) in records {
        storage.apply(k, r).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Two random replica contents: after one exchange both hold the
    /// last-writer-wins merge of the two inside the range and are
    /// untouched outside it, and only differing items crossed.
    #[test]
    fn one_exchange_leaves_both_sides_with_the_merge(
        pairs in proptest::collection::vec((record(), record()), 0..400),
        start in any::<u64>(),
        width in prop_oneof![Just(0u64), any::<u64>(), 1u64..8],
        seed in any::<u64>(),
    ) {
        let range = TokenRange::new(start, start.wrapping_add(width));
        let key = |i: usize| format!("k{i}").into_bytes();
        let (mut a_items, mut b_items) = (BTreeMap::new(), BTreeMap::new());
        for (i, (ra, rb)) in pairs.iter().enumerate() {
            if let Some(r) = ra {
                a_items.insert(key(i), r.clone());
            }
            if let Some(r) = rb {
                b_items.insert(key(i), r.clone());
            }
        }
        let ((_da, a), (_db, b)) = (storage(), storage());
        fill(&a, &a_items);
        fill(&b, &b_items);
        let done = exchange(&a, &b, range, seed);
        let mut differing = 0;
        for (i, (ra, rb)) in pairs.iter().enumerate() {
            let k = key(i);
            let inside = range.contains(strata_ring::token(&k));
            let merged = match (ra, rb) {
                (Some(x), Some(y)) => Some(if y.supersedes(x) { y } else { x }.clone()),
                (x, y) => x.clone().or_else(|| y.clone()),
            };
            let (got_a, got_b) = (a.read(&k).unwrap(), b.read(&k).unwrap());
            if inside {
                prop_assert_eq!(&got_a, &merged, "asker, key {}", i);
                prop_assert_eq!(&got_b, &merged, "other, key {}", i);
                differing += usize::from(rb.is_some() && ra != rb);
            } else {
                prop_assert_eq!(&got_a, ra, "asker outside, key {}", i);
                prop_assert_eq!(&got_b, rb, "other outside, key {}", i);
            }
        }
        prop_assert_eq!(done.received, differing);
    }
}

#[test]
fn answers_stop_at_a_batch_and_the_asker_asks_for_the_rest() {
    let ((_da, a), (_db, b)) = (storage(), storage());
    let big: BTreeMap<Vec<u8>, Record> = (0..200)
        .map(|i| {
            (
                format!("big-{i}").into_bytes(),
                Record::value(1, vec![7; 20_000]),
            )
        })
        .collect();
    fill(&b, &big);
    // The asker's own one item is newer on its side, and pushed.
    fill(
        &a,
        &[(b"big-3".to_vec(), Record::value(2, b"x".to_vec()))].into(),
    );
    let done = exchange(&a, &b, TokenRange::new(0, 0), 1);
    // 4 MB of items in answers of about 256 KiB.
    assert!(done.calls >= 10, "{done:?}");
    assert_eq!(done.received, 200);
    assert_eq!(done.pushed, 1);
    for k in big.keys() {
        assert_eq!(a.read(k).unwrap(), b.read(k).unwrap());
    }
    assert_eq!(b.read(b"big-3").unwrap().unwrap().version, 2);
    // Nothing more to do.
    let again = exchange(&a, &b, TokenRange::new(0, 0), 2);
    assert_eq!((again.calls, again.received, again.pushed), (0, 0, 0));
}

#[test]
fn an_item_outside_the_leaves_answered_is_refused_and_nothing_is_stored() {
    let ((_da, a), (_db, b)) = (storage(), storage());
    let range = TokenRange::new(0, 0);
    fill(
        &b,
        &[(b"k".to_vec(), Record::value(1, b"v".to_vec()))].into(),
    );
    let token = strata_ring::token(b"k");
    let depth = 3;
    let leaf = leaf_of(range, depth, token) as u32;
    let other_leaf = (leaf + 1) % 64;
    let ask = ask(&a.snapshot(), (range, depth, 5), &[other_leaf], &mut |_| ()).unwrap();
    let forged = RowsAnswer {
        answered: 1,
        lacks: vec![],
        entries: vec![Entry {
            engine_key: engine_key(b"k"),
            record: Record::value(1, b"v".to_vec()),
        }],
        items_len: 0,
    };
    assert!(matches!(settle(&a, &ask, &forged), Err(RowsError::Foreign)));
    assert_eq!(a.read(b"k").unwrap(), None);
}
