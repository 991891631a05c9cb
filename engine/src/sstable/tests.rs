//! Table round trips and corruption: every lookup and scan against the
//! entries written, and flipped bytes that must surface as corruption.

use std::ops::Bound;
use std::sync::Arc;

use super::*;
use crate::iter::{Direction, KeyBounds, Source};
use crate::key::{internal_key, ValueKind};
use crate::memtable::Lookup;

/// Keys `k0000..`, each with versions at seq 10*i+1 (value) and, for odd i, 10*i+5 (deletion).
fn build_table(dir: &std::path::Path, n: u32) -> std::path::PathBuf {
    let path = dir.join("000001.sst");
    let mut b = TableBuilder::create(&path, 512, 10).unwrap();
    for i in 0..n {
        let k = format!("k{i:04}");
        let s = u64::from(i) * 10;
        if i % 2 == 1 {
            b.add(&internal_key(k.as_bytes(), s + 5, ValueKind::Deletion), b"")
                .unwrap();
        }
        b.add(
            &internal_key(k.as_bytes(), s + 1, ValueKind::Value),
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    let built = b.finish().unwrap();
    assert_eq!(built.file_size, std::fs::metadata(&path).unwrap().len());
    path
}

#[test]
fn point_lookups_honour_sequence_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_table(dir.path(), 500);
    let t = Table::open(&path).unwrap();
    for i in 0..500u32 {
        let k = format!("k{i:04}");
        let s = u64::from(i) * 10;
        assert_eq!(
            t.lookup(k.as_bytes(), s).unwrap(),
            None,
            "{k} before its write"
        );
        let v = Lookup::Value(format!("v{i}").into_bytes());
        assert_eq!(t.lookup(k.as_bytes(), s + 1).unwrap(), Some(v.clone()));
        let latest = if i % 2 == 1 { Lookup::Deleted } else { v };
        assert_eq!(t.lookup(k.as_bytes(), u64::MAX >> 8).unwrap(), Some(latest));
    }
    assert_eq!(t.lookup(b"k9999", 1 << 40).unwrap(), None);
    assert_eq!(t.lookup(b"a", 1 << 40).unwrap(), None);
}

#[test]
fn out_of_order_adds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = TableBuilder::create(&dir.path().join("x.sst"), 4096, 10).unwrap();
    b.add(&internal_key(b"b", 1, ValueKind::Value), b"")
        .unwrap();
    assert!(b
        .add(&internal_key(b"a", 2, ValueKind::Value), b"")
        .is_err());
    assert!(b
        .add(&internal_key(b"b", 1, ValueKind::Value), b"")
        .is_err());
}

fn scan(t: &Arc<Table>, bounds: &KeyBounds, dir: Direction) -> Vec<(Vec<u8>, u64)> {
    let mut s = TableSource::new(t.clone(), bounds, dir);
    let mut out = Vec::new();
    while let Some(e) = s.next_entry().unwrap() {
        out.push((e.user_key, e.tag));
    }
    if dir == Direction::Backward {
        out.reverse();
    }
    out
}

#[test]
fn scans_match_in_both_directions_for_many_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_table(dir.path(), 300);
    let t = Arc::new(Table::open(&path).unwrap());
    let all = scan(
        &t,
        &KeyBounds::from_range(&(..Vec::<u8>::new())),
        Direction::Forward,
    );
    assert!(all.is_empty());
    let full = KeyBounds {
        lower: Bound::Unbounded,
        upper: Bound::Unbounded,
    };
    let everything = scan(&t, &full, Direction::Forward);
    assert_eq!(everything.len(), 300 + 150);
    let key = |i: u32| format!("k{i:04}").into_bytes();
    let cases = [
        (Bound::Included(key(0)), Bound::Included(key(299))),
        (Bound::Excluded(key(10)), Bound::Excluded(key(200))),
        (Bound::Included(b"k0100a".to_vec()), Bound::Unbounded),
        (Bound::Unbounded, Bound::Included(key(37))),
        (Bound::Included(key(150)), Bound::Included(key(150))),
        (Bound::Included(b"zzz".to_vec()), Bound::Unbounded),
    ];
    for (lower, upper) in cases {
        let b = KeyBounds { lower, upper };
        let want: Vec<_> = everything
            .iter()
            .filter(|(k, _)| b.contains(k))
            .cloned()
            .collect();
        assert_eq!(scan(&t, &b, Direction::Forward), want, "{b:?}");
        assert_eq!(scan(&t, &b, Direction::Backward), want, "{b:?}");
    }
}

#[test]
fn every_flipped_byte_is_caught_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_table(dir.path(), 60);
    let good = std::fs::read(&path).unwrap();
    let full = KeyBounds {
        lower: Bound::Unbounded,
        upper: Bound::Unbounded,
    };
    let expected = scan(
        &Arc::new(Table::open(&path).unwrap()),
        &full,
        Direction::Forward,
    );
    let bad_path = dir.path().join("bad.sst");
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x5a;
        std::fs::write(&bad_path, &bad).unwrap();
        let result = Table::open(&bad_path).and_then(|t| {
            let mut s = TableSource::new(Arc::new(t), &full, Direction::Forward);
            let mut out = Vec::new();
            while let Some(e) = s.next_entry()? {
                out.push((e.user_key, e.tag));
            }
            Ok(out)
        });
        match result {
            Err(e) => assert!(e.is_corruption(), "flip at {pos}: {e}"),
            // Every byte is covered by a checksum or the footer's checks.
            Ok(got) => panic!(
                "flip at {pos} went unnoticed ({} entries, expected {})",
                got.len(),
                expected.len()
            ),
        }
    }
    for cut in [0, 10, good.len() / 2, good.len() - 1] {
        std::fs::write(&bad_path, &good[..cut]).unwrap();
        let err = Table::open(&bad_path).unwrap_err();
        assert!(err.is_corruption(), "cut at {cut}: {err}");
    }
}
