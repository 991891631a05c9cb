#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::storage::{engine_key, Record, Storage};

/// A store: user key -> stored record bytes.
type Store = BTreeMap<Vec<u8>, Vec<u8>>;

/// `(token, item hash)` of a store's items in offset order of `range`.
fn hashes_of(store: &Store, range: TokenRange) -> Vec<(u64, u64)> {
    let mut items: Vec<(u64, Vec<u8>, u64)> = store
        .iter()
        .map(|(k, r)| {
            let ek = engine_key(k);
            let t = token_of(&ek);
            (
                t.wrapping_sub(range.start()).wrapping_sub(1),
                ek.clone(),
                item_hash(&ek, r),
            )
        })
        .collect();
    items.sort();
    items
        .into_iter()
        .map(|(o, _, h)| (o.wrapping_add(range.start()).wrapping_add(1), h))
        .collect()
}

/// The leaves in which `a` and `b` differ, by a top-down walk.
fn differing_leaves(a: &RangeTree, b: &RangeTree) -> Vec<u32> {
    let seed = 99;
    let mut walk = Descent::new(a, seed);
    let mut calls = 0;
    while let Some((level, parents)) = walk.request() {
        let theirs = b.children(level, parents, seed).unwrap();
        walk.answer(&theirs).unwrap();
        calls += 1;
        assert!(calls < 10_000);
    }
    walk.into_leaves()
}

fn record(version: u64, value: &[u8]) -> Vec<u8> {
    Record::value(version, value.to_vec()).encode()
}

#[test]
fn identical_stores_cost_one_question() {
    let store: Store = (0..1000u32)
        .map(|i| (i.to_be_bytes().to_vec(), record(1, b"v")))
        .collect();
    let range = TokenRange::new(0, 0);
    let a = RangeTree::from_hashes(range, None, &hashes_of(&store, range));
    let b = RangeTree::from_hashes(range, Some(a.depth()), &hashes_of(&store, range));
    assert_eq!(a.items(), 1000);
    // 4^4 = 256 leaves of at most LEAF_ITEMS (4) items: 4^3 is too few.
    assert_eq!(a.depth(), 4);
    let walk = Descent::new(&a, 5);
    assert_eq!(walk.request(), Some((0, &[0u32][..])));
    let mut walk = walk;
    walk.answer(&b.children(0, &[0], 5).unwrap()).unwrap();
    assert_eq!(walk.request(), None);
    assert!(walk.into_leaves().is_empty());
}

#[test]
fn a_version_a_tombstone_or_a_value_of_the_same_version_all_count() {
    let range = TokenRange::new(0, 0);
    let base: Store = [(b"k".to_vec(), record(5, b"v"))].into();
    let tree = |s: &Store| RangeTree::from_hashes(range, Some(3), &hashes_of(s, range));
    for changed in [
        record(6, b"v"),
        Record::tombstone(5).encode(),
        record(5, b"w"),
    ] {
        let other: Store = [(b"k".to_vec(), changed)].into();
        assert_ne!(tree(&base), tree(&other));
        let mine = tree(&base);
        let mut walk = Descent::new(&mine, 1);
        walk.answer(&tree(&other).children(0, &[0], 1).unwrap())
            .unwrap();
        assert_ne!(walk.request(), None);
    }
}

#[test]
fn a_wrong_number_of_hashes_is_an_error() {
    let tree = RangeTree::from_hashes(TokenRange::new(0, 0), Some(2), &[]);
    let mut walk = Descent::new(&tree, 1);
    assert_eq!(
        walk.answer(&[1, 2]),
        Err(DescentError::WrongCount { asked: 4, got: 2 })
    );
    // Leaves have no children; parents past the level's end are refused.
    assert_eq!(tree.children(2, &[0], 1), None);
    assert_eq!(tree.children(1, &[4], 1), None);
    assert_eq!(tree.children(1, &[3], 1).map(|c| c.len()), Some(4));
}

#[test]
fn narrow_ranges_get_no_empty_leaves_and_depth_is_capped() {
    assert_eq!(depth_for(TokenRange::new(10, 13), 1_000), 0);
    assert_eq!(depth_for(TokenRange::new(10, 14), 1_000), 1);
    // Even an empty range gets one level, for the other side's count to
    // come back with the first answer.
    assert_eq!(depth_for(TokenRange::new(0, 0), 0), 1);
    assert_eq!(depth_for(TokenRange::new(0, 0), 16), 1);
    assert_eq!(depth_for(TokenRange::new(0, 0), 17), 2);
    assert_eq!(depth_for(TokenRange::new(0, 0), 10_000_000), MAX_DEPTH);
    // A tree of depth 0 needs no walk: its one leaf is compared row by row.
    let flat = RangeTree::from_hashes(TokenRange::new(10, 13), None, &[]);
    assert_eq!(flat.depth(), 0);
    let walk = Descent::new(&flat, 1);
    assert_eq!(walk.request(), None);
    assert_eq!(walk.into_leaves(), [0]);
    // Sub-ranges tile the range: the leaves of a full ring run from S
    // round to S.
    let range = TokenRange::new(u64::MAX - 3, u64::MAX - 3);
    let first = sub_range(range, 2, 0).unwrap();
    let last = sub_range(range, 2, 15).unwrap();
    assert_eq!(first.start(), range.start());
    assert_eq!(last.end(), range.start());
}

#[test]
fn pieces_tile_the_range() {
    for range in [
        TokenRange::new(5, 5),
        TokenRange::new(u64::MAX - 10, 20),
        TokenRange::new(3, 10),
    ] {
        for parts in [1u128, 2, 3, 7] {
            let pieces: Vec<TokenRange> = (0..parts as u64)
                .filter_map(|j| piece(range, parts, j))
                .collect();
            let width: u128 = pieces.iter().map(TokenRange::width).sum();
            assert_eq!(width, range.width(), "{range:?} in {parts}");
            assert_eq!(pieces.first().unwrap().start(), range.start());
            assert_eq!(pieces.last().unwrap().end(), range.end());
            for w in pieces.windows(2) {
                assert_eq!(w[0].end(), w[1].start());
            }
        }
    }
    assert_eq!(piece(TokenRange::new(0, 10), 2, 2), None);
}

#[test]
fn a_tree_read_from_the_engine_is_the_tree_of_its_items() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        dir.path(),
        Duration::from_millis(crate::config::defaults::TOMBSTONE_GRACE_MS),
    )
    .unwrap();
    let mut store = Store::new();
    let mut bytes = 0;
    for i in 0..500u32 {
        let key = format!("key-{i}").into_bytes();
        let r = if i % 9 == 0 {
            Record::tombstone(u64::from(i))
        } else {
            Record::value(u64::from(i), vec![i as u8; 10])
        };
        storage.apply(&key, &r).unwrap();
        bytes += (8 + key.len() + r.encoded_len()) as u64;
        store.insert(key, r.encode());
    }
    // A wrapping range, a plain one and the full ring.
    for range in [
        TokenRange::new(u64::MAX / 3 * 2, u64::MAX / 3),
        TokenRange::new(u64::MAX / 4, u64::MAX / 2),
        TokenRange::new(7, 7),
    ] {
        let mut paid = 0;
        let built = RangeTree::build(&storage.snapshot(), range, None, &mut |n| paid += n).unwrap();
        let want = RangeTree::from_hashes(range, None, &hashes_of(&store, range));
        assert_eq!(built, want, "{range:?}");
        assert!(built.items() > 0);
        // Every byte read is paid for, and only those of the range.
        assert!(paid > 0 && paid <= bytes, "{paid} of {bytes}");
    }
    let mut paid = 0;
    RangeTree::build(&storage.snapshot(), TokenRange::new(7, 7), None, &mut |n| {
        paid += n
    })
    .unwrap();
    assert_eq!(paid, bytes);
}

/// A change to one key of a store.
#[derive(Debug, Clone)]
enum Change {
    NewVersion,
    Delete,
    Remove,
    Add,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::NewVersion),
        Just(Change::Delete),
        Just(Change::Remove),
        Just(Change::Add),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two stores that differ in a random set of keys: the differing leaves
    /// cover every differing key, and each holds at least one.
    #[test]
    fn differing_leaves_cover_exactly_the_differing_keys(
        n in 0usize..3000,
        changes in proptest::collection::vec((any::<prop::sample::Index>(), change()), 0..40),
        start in any::<u64>(),
        width in prop_oneof![Just(0u64), any::<u64>(), 1u64..100],
        depth in proptest::option::of(0u8..=7),
    ) {
        let range = TokenRange::new(start, start.wrapping_add(width));
        let a: Store = (0..n)
            .map(|i| (format!("k{i}").into_bytes(), record(10, format!("v{i}").as_bytes())))
            .collect();
        let mut b = a.clone();
        let mut differing = BTreeSet::new();
        for (j, (index, change)) in changes.iter().enumerate() {
            let key = if matches!(change, Change::Add) || n == 0 {
                format!("new{j}").into_bytes()
            } else {
                format!("k{}", index.index(n)).into_bytes()
            };
            match change {
                Change::NewVersion | Change::Add => b.insert(key.clone(), record(11 + j as u64, b"x")),
                Change::Delete => b.insert(key.clone(), Record::tombstone(11 + j as u64).encode()),
                Change::Remove => b.remove(&key),
            };
            if a.get(&key) != b.get(&key) {
                differing.insert(key);
            }
        }
        let ta = RangeTree::from_hashes(range, depth, &hashes_of(&a, range));
        let tb = RangeTree::from_hashes(range, Some(ta.depth()), &hashes_of(&b, range));
        let leaves = differing_leaves(&ta, &tb);
        let inside: Vec<u64> = differing
            .iter()
            .map(|k| token(k))
            .filter(|t| range.contains(*t))
            .collect();
        // Every differing key lies in a differing leaf ...
        for t in &inside {
            let leaf = leaf_of(range, ta.depth(), *t) as u32;
            prop_assert!(leaves.contains(&leaf), "token {t} in leaf {leaf} not found");
            prop_assert!(sub_range(range, ta.depth(), leaf).unwrap().contains(*t));
        }
        // ... and every differing leaf holds a differing key (but the one
        // leaf of a tree of depth 0, which is always compared).
        if ta.depth() > 0 {
            for leaf in &leaves {
                prop_assert!(inside.iter().any(|t| leaf_of(range, ta.depth(), *t) as u32 == *leaf));
            }
        }
    }

    /// A token's leaf's sub-range contains it, at every depth.
    #[test]
    fn a_tokens_leaf_contains_it(start in any::<u64>(), width in any::<u64>(), t in any::<u64>(), depth in 0u8..=MAX_DEPTH) {
        let range = TokenRange::new(start, start.wrapping_add(width));
        prop_assume!(range.contains(t));
        let leaf = leaf_of(range, depth, t);
        let sub = sub_range(range, depth, leaf as u32);
        prop_assert!(sub.is_some_and(|s| s.contains(t)), "{range:?} depth {depth} leaf {leaf} {sub:?}");
    }
}

fn token(key: &[u8]) -> u64 {
    strata_ring::token(key)
}
