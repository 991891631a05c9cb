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
    let mut b = TableBuilder::create(&*crate::fs::os(), &path, 512, 10).unwrap();
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
    let t = Table::open(&crate::fs::os(), &path).unwrap();
    for i in 0..500u32 {
        let k = format!("k{i:04}");
        let s = u64::from(i) * 10;
        assert_eq!(
            t.lookup(k.as_bytes(), s).unwrap(),
            None,
            "{k} before its write"
        );
        let v = Lookup::Value(format!("v{i}").into_bytes());
        assert_eq!(
            t.lookup(k.as_bytes(), s + 1).unwrap(),
            Some((s + 1, v.clone()))
        );
        let latest = if i % 2 == 1 { Lookup::Deleted } else { v };
        assert_eq!(
            t.lookup(k.as_bytes(), u64::MAX >> 8)
                .unwrap()
                .map(|(_, l)| l),
            Some(latest)
        );
    }
    assert_eq!(t.lookup(b"k9999", 1 << 40).unwrap(), None);
    assert_eq!(t.lookup(b"a", 1 << 40).unwrap(), None);
}

#[test]
fn out_of_order_adds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b =
        TableBuilder::create(&*crate::fs::os(), &dir.path().join("x.sst"), 4096, 10).unwrap();
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
    let t = Arc::new(Table::open(&crate::fs::os(), &path).unwrap());
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
        &Arc::new(Table::open(&crate::fs::os(), &path).unwrap()),
        &full,
        Direction::Forward,
    );
    let bad_path = dir.path().join("bad.sst");
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x5a;
        std::fs::write(&bad_path, &bad).unwrap();
        let result = Table::open(&crate::fs::os(), &bad_path).and_then(|t| {
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
        let err = Table::open(&crate::fs::os(), &bad_path).unwrap_err();
        assert!(err.is_corruption(), "cut at {cut}: {err}");
    }
}

/// Writes `entries` (sorted, distinct user keys, all at seq 1) with
/// `compression` and returns the table.
fn table_with(
    dir: &std::path::Path,
    name: &str,
    compression: crate::options::Compression,
    entries: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> Arc<Table> {
    let path = dir.join(name);
    let mut b = TableBuilder::create(&*crate::fs::os(), &path, 512, 10)
        .unwrap()
        .with_compression(compression);
    for (k, v) in entries {
        b.add(&internal_key(k, 1, ValueKind::Value), v).unwrap();
    }
    b.finish().unwrap();
    let cache = Arc::new(BlockCache::new(16 << 10));
    Arc::new(Table::open_with_cache(&crate::fs::os(), &path, Some(cache)).unwrap())
}

/// Every block compression this build can write.
fn compressed_codecs() -> Vec<crate::options::Compression> {
    use crate::options::Compression;
    let mut codecs = vec![Compression::Lz4];
    if cfg!(feature = "zstd") {
        codecs.push(Compression::Zstd { level: 3 });
    }
    codecs
}

fn all_entries(t: &Arc<Table>, direction: Direction) -> Vec<(Vec<u8>, Vec<u8>)> {
    let full = KeyBounds {
        lower: Bound::Unbounded,
        upper: Bound::Unbounded,
    };
    let mut s = TableSource::new(Arc::clone(t), &full, direction);
    let mut out = Vec::new();
    while let Some(e) = s.next_entry().unwrap() {
        out.push((e.user_key, e.value));
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    #[test]
    fn every_compression_reads_back_byte_identical(
        entries in proptest::collection::btree_map(
            proptest::collection::vec(0u8..8, 1..24),
            proptest::collection::vec(0u8..4, 0..300),
            1..200,
        )
    ) {
        use crate::options::Compression;
        use proptest::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let want: Vec<_> = entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let codecs = std::iter::once(Compression::None).chain(compressed_codecs());
        for (i, c) in codecs.enumerate() {
            let t = table_with(dir.path(), &format!("{i}.sst"), c, &entries);
            prop_assert_eq!(&all_entries(&t, Direction::Forward), &want);
            let mut back = all_entries(&t, Direction::Backward);
            back.reverse();
            prop_assert_eq!(&back, &want);
            for (k, v) in &entries {
                prop_assert_eq!(t.lookup(k, 1).unwrap(), Some((1, Lookup::Value(v.clone()))));
            }
        }
    }
}

/// Repetitive values compress; the table is smaller, and the compressed
/// blocks are served from the cache.
#[test]
fn compressed_tables_are_smaller_and_use_the_cache() {
    use crate::options::Compression;
    let dir = tempfile::tempdir().unwrap();
    let entries: std::collections::BTreeMap<_, _> = (0..2000u32)
        .map(|i| {
            (
                format!("key{i:06}").into_bytes(),
                format!("value {i} {}", "ab".repeat(30)).into_bytes(),
            )
        })
        .collect();
    let plain = table_with(dir.path(), "plain.sst", Compression::None, &entries);
    let size = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().len();
    for (i, codec) in compressed_codecs().into_iter().enumerate() {
        let name = format!("{i}.sst");
        let packed = table_with(dir.path(), &name, codec, &entries);
        assert!(
            size(&name) * 2 < size("plain.sst"),
            "{codec:?}: {} vs {}",
            size(&name),
            size("plain.sst")
        );
        assert_eq!(
            all_entries(&plain, Direction::Forward),
            all_entries(&packed, Direction::Forward)
        );
        let cache = packed.cache.as_ref().unwrap();
        assert!(cache.bytes() > 0 && cache.bytes() <= 16 << 10, "{codec:?}");
    }
}

/// A compressed block whose bytes are damaged and whose checksum is then
/// recomputed passes the checksum: the decoder must still report corruption
/// (or decode to different entries), never panic.
#[test]
fn corrupt_compressed_block_with_fixed_checksum_is_caught() {
    for codec in compressed_codecs() {
        damaged_blocks_are_caught(codec);
    }
}

fn damaged_blocks_are_caught(codec: crate::options::Compression) {
    use super::footer::{block_crc, TRAILER_LEN};
    let dir = tempfile::tempdir().unwrap();
    let entries: std::collections::BTreeMap<_, _> = (0..300u32)
        .map(|i| {
            (
                format!("key{i:06}").into_bytes(),
                "abc".repeat(20).into_bytes(),
            )
        })
        .collect();
    let t = table_with(dir.path(), "good.sst", codec, &entries);
    let (_, first) = t.index.get(0).cloned().unwrap();
    drop(t);
    let good = std::fs::read(dir.path().join("good.sst")).unwrap();
    let start = first.offset as usize;
    let end = start + first.size as usize;
    let kind = good[end];
    assert_ne!(
        kind,
        super::footer::NO_COMPRESSION,
        "{codec:?} block stored plain"
    );
    let want: Vec<_> = entries.into_iter().collect();
    let mut caught = 0;
    for (pos, flip) in [
        (start, 0xff),
        (start + 2, 0x40),
        (start + 6, 0x0f),
        (end - 1, 0x5a),
        (start + 9, 0xf0),
    ] {
        let mut bad = good.clone();
        bad[pos] ^= flip;
        let crc = block_crc(&bad[start..end], kind).to_le_bytes();
        bad[end + 1..end + TRAILER_LEN].copy_from_slice(&crc);
        let path = dir.path().join("bad.sst");
        std::fs::write(&path, &bad).unwrap();
        let t = Arc::new(Table::open(&crate::fs::os(), &path).unwrap());
        let full = KeyBounds {
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
        };
        let mut s = TableSource::new(t, &full, Direction::Forward);
        let result = (|| -> crate::error::Result<Vec<_>> {
            let mut out = Vec::new();
            while let Some(e) = s.next_entry()? {
                out.push((e.user_key, e.value));
            }
            Ok(out)
        })();
        match result {
            Err(e) => {
                assert!(e.is_corruption(), "{codec:?} flip at {pos}: {e}");
                caught += 1;
            }
            Ok(got) => assert_ne!(got, want, "{codec:?} flip at {pos} went unnoticed"),
        }
    }
    assert!(
        caught >= 3,
        "{codec:?}: only {caught} of 5 damaged blocks reported corrupt"
    );
}

/// Resident bytes of this process's mapping of `path`, from /proc/self/smaps.
#[cfg(target_os = "linux")]
fn mapped_rss(path: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_str().unwrap();
    let mut lines = smaps.lines().skip_while(|l| !l.ends_with(name));
    assert!(lines.next().is_some(), "{name} is not mapped");
    let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
    let kib: u64 = rss.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Big values read by lookups and by scans both ways come back
/// byte-identical every time, although their pages leave the mapping after
/// each read (so reading them all leaves almost nothing resident).
#[test]
fn big_values_read_back_identical_and_leave_the_mapping() {
    use crate::options::Compression;
    let dir = tempfile::tempdir().unwrap();
    let entries: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = (0..8u8)
        .map(|i| {
            let v = (0..1u32 << 20)
                .map(|j| (j.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
                .collect();
            (vec![b'c', i], v)
        })
        .collect();
    let want: Vec<_> = entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let t = table_with(dir.path(), "big.sst", Compression::None, &entries);
    for _ in 0..2 {
        for (k, v) in &entries {
            assert_eq!(t.lookup(k, 1).unwrap(), Some((1, Lookup::Value(v.clone()))));
        }
        assert_eq!(all_entries(&t, Direction::Forward), want);
        let mut back = all_entries(&t, Direction::Backward);
        back.reverse();
        assert_eq!(back, want);
    }
    #[cfg(target_os = "linux")]
    {
        let rss = mapped_rss(&dir.path().join("big.sst"));
        assert!(
            rss < 1 << 20,
            "{rss} bytes of 8 MiB of values stay resident"
        );
    }
}

#[test]
fn range_tombstones_round_trip_and_widen_the_key_range() {
    use crate::key::user_key;
    use crate::range_del::RangeTombstone;
    let dir = tempfile::tempdir().unwrap();
    let t = |start: &str, end: &str, seq| RangeTombstone {
        start: start.into(),
        end: end.into(),
        seq,
    };
    // Only tombstones: a table all the same.
    let path = dir.path().join("only.sst");
    let mut b = TableBuilder::create(&*crate::fs::os(), &path, 512, 10).unwrap();
    b.add_range_tombstone(t("c", "f", 7));
    b.add_range_tombstone(t("a", "b", 9));
    let built = b.finish().unwrap();
    let table = Table::open(&crate::fs::os(), &path).unwrap();
    assert_eq!(table.range_tombstones(), [t("c", "f", 7), t("a", "b", 9)]);
    assert_eq!(user_key(&built.smallest), b"a");
    assert_eq!(user_key(&built.largest), b"f");
    assert_eq!(table.lookup(b"d", 100).unwrap(), None);
    assert_eq!(table.entries_and_largest_seq(), (0, 9));

    // Entries inside and outside the tombstones' span.
    let path = dir.path().join("mixed.sst");
    let mut b = TableBuilder::create(&*crate::fs::os(), &path, 512, 10).unwrap();
    b.add(&internal_key(b"d", 3, ValueKind::Value), b"v")
        .unwrap();
    b.add(&internal_key(b"m", 4, ValueKind::Value), b"v")
        .unwrap();
    b.add_range_tombstone(t("b", "z", 5));
    let built = b.finish().unwrap();
    assert_eq!(user_key(&built.smallest), b"b");
    assert_eq!(user_key(&built.largest), b"z");
    let table = Table::open(&crate::fs::os(), &path).unwrap();
    assert_eq!(table.key_range(), (&built.smallest[..], &built.largest[..]));
    assert_eq!(
        table.lookup(b"d", 10).unwrap(),
        Some((3, Lookup::Value(b"v".to_vec())))
    );

    let empty = dir.path().join("empty.sst");
    let b = TableBuilder::create(&*crate::fs::os(), &empty, 512, 10).unwrap();
    assert!(b.finish().is_err(), "nothing at all is still refused");
}
