//! Compaction's keep-or-drop rules, output cutting and trivial moves, on
//! hand-built tables.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::key::{internal_key, user_key, ParsedKey, ValueKind};
use crate::sstable::Table;

/// `(user key, seq, value)`; a `None` value is a tombstone.
type Row = (&'static str, u64, Option<&'static str>);
/// A [`Row`] read back from an output table.
type OwnedRow = (String, u64, Option<String>);

fn table(dir: &Path, number: u64, rows: &[Row]) -> Arc<TableFile> {
    table_with_tombstones(dir, number, rows, &[])
}

/// [`table`] with range tombstones `(start, end, seq)`.
fn table_with_tombstones(
    dir: &Path,
    number: u64,
    rows: &[Row],
    tombstones: &[(&str, &str, u64)],
) -> Arc<TableFile> {
    let path = file_name::table_path(dir, number);
    let mut b = TableBuilder::create(&*crate::fs::os(), &path, 256, 10).unwrap();
    let mut sorted: Vec<Row> = rows.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    for (k, seq, v) in sorted {
        let kind = if v.is_some() {
            ValueKind::Value
        } else {
            ValueKind::Deletion
        };
        b.add(
            &internal_key(k.as_bytes(), seq, kind),
            v.unwrap_or("").as_bytes(),
        )
        .unwrap();
    }
    for &(start, end, seq) in tombstones {
        b.add_range_tombstone(RangeTombstone {
            start: start.into(),
            end: end.into(),
            seq,
        });
    }
    let built = b.finish().unwrap();
    let meta = FileMeta {
        number,
        size: built.file_size,
        smallest: built.smallest,
        largest: built.largest,
    };
    Arc::new(TableFile::new(
        meta,
        Arc::new(Table::open(&crate::fs::os(), &path).unwrap()),
    ))
}

fn options() -> Options {
    Options {
        target_table_size: 4 << 10,
        level1_target_size: 4 << 10,
        ..Options::default()
    }
}

/// Runs `c` and returns every output row, and the output tables.
fn compact(
    dir: &Path,
    c: &Compaction,
    smallest_snapshot: u64,
    cancel: bool,
) -> Option<(Vec<OwnedRow>, Vec<FileMeta>)> {
    compact_with(dir, c, smallest_snapshot, cancel, &options())
        .map(|(rows, metas, _)| (rows, metas))
}

/// [`compact`] with `options`, also returning what the filter decided.
fn compact_with(
    dir: &Path,
    c: &Compaction,
    smallest_snapshot: u64,
    cancel: bool,
    options: &Options,
) -> Option<(Vec<OwnedRow>, Vec<FileMeta>, FilterCounts)> {
    let next = AtomicU64::new(1000);
    let new_file_number = || next.fetch_add(1, Ordering::Relaxed);
    let cancel = AtomicBool::new(cancel);
    let dir = crate::fs::os_dir(dir);
    let env = Env {
        dir: &dir,
        options,
        smallest_snapshot,
        new_file_number: &new_file_number,
        cancel: &cancel,
    };
    let Output {
        tables: metas,
        blob,
        filtered,
        garbage,
    } = run(c, &env).unwrap()?;
    assert!(blob.is_none());
    assert!(garbage.is_empty(), "these tables hold no blob pointers");
    let mut rows = Vec::new();
    for m in &metas {
        let t = Table::open(&crate::fs::os(), &file_name::table_path(&dir, m.number)).unwrap();
        let everything = KeyBounds {
            lower: std::ops::Bound::Unbounded,
            upper: std::ops::Bound::Unbounded,
        };
        let mut src = TableSource::new(Arc::new(t), &everything, Direction::Forward);
        while let Some(e) = src.next_entry().unwrap() {
            let value = (!e.is_deletion()).then(|| String::from_utf8(e.value.clone()).unwrap());
            rows.push((
                String::from_utf8(e.user_key.clone()).unwrap(),
                e.seq(),
                value,
            ));
        }
    }
    Some((rows, metas, filtered))
}

fn version(levels: Vec<(usize, Arc<TableFile>)>) -> Arc<Version> {
    let mut v = Version::default();
    for (level, f) in levels {
        v.levels[level].push(f);
    }
    v.levels[0].sort_by_key(|f| std::cmp::Reverse(f.meta.number));
    Arc::new(v)
}

fn row(k: &str, seq: u64, v: Option<&str>) -> OwnedRow {
    (k.to_string(), seq, v.map(str::to_string))
}

#[test]
fn keeps_only_the_newest_version_when_no_reader_needs_older() {
    let dir = tempfile::tempdir().unwrap();
    let old = table(dir.path(), 1, &[("a", 5, Some("v1")), ("b", 1, Some("x"))]);
    let new = table(dir.path(), 2, &[("a", 9, Some("v2")), ("b", 3, None)]);
    let v = version(vec![(0, old), (0, new)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let (rows, _) = compact(dir.path(), &c, 100, false).unwrap();
    // b's tombstone hides nothing deeper, so it goes too; a@9 is the base
    // version of a, visible to every reader: its sequence goes.
    assert_eq!(rows, vec![row("a", 0, Some("v2"))]);
}

#[test]
fn keeps_every_version_a_reader_at_the_smallest_snapshot_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let old = table(dir.path(), 1, &[("a", 5, Some("v1")), ("b", 1, Some("x"))]);
    let new = table(dir.path(), 2, &[("a", 9, Some("v2")), ("b", 7, None)]);
    let v = version(vec![(0, old), (0, new)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let (rows, _) = compact(dir.path(), &c, 6, false).unwrap();
    // A reader at 6 sees a@5 and b@1 (every reader does: their sequences
    // go); the newer entries stay for later readers.
    assert_eq!(
        rows,
        vec![
            row("a", 9, Some("v2")),
            row("a", 0, Some("v1")),
            row("b", 7, None),
            row("b", 0, Some("x")),
        ]
    );
}

#[test]
fn tombstones_stay_while_a_deeper_level_holds_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let l0 = table(dir.path(), 3, &[("b", 8, None), ("c", 9, None)]);
    let l2 = table(dir.path(), 1, &[("b", 2, Some("old"))]);
    let v = version(vec![(0, l0), (2, l2)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let (rows, _) = compact(dir.path(), &c, 100, false).unwrap();
    // b's tombstone still hides b@2 in L2; c's hides nothing.
    assert_eq!(rows, vec![row("b", 8, None)]);
}

#[test]
fn outputs_are_cut_at_the_target_size_but_never_inside_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let value: &'static str = Box::leak("v".repeat(100).into_boxed_str());
    let keys: Vec<&'static str> = (0..300)
        .map(|i| &*Box::leak(format!("key{i:04}").into_boxed_str()))
        .collect();
    let rows: Vec<Row> = keys
        .iter()
        .flat_map(|k| (1..=3).map(move |s| (*k, s, Some(value))))
        .collect();
    let t = table(dir.path(), 1, &rows);
    let v = version(vec![(1, t)]);
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    // Snapshot 0: every version may still be read, so all 900 stay.
    let (out, metas) = compact(dir.path(), &c, 0, false).unwrap();
    assert_eq!(out.len(), 900);
    assert!(
        metas.len() > 3,
        "expected several outputs, got {}",
        metas.len()
    );
    for pair in metas.windows(2) {
        let last = ParsedKey::parse(&pair[0].largest)
            .unwrap()
            .user_key
            .to_vec();
        let first = ParsedKey::parse(&pair[1].smallest)
            .unwrap()
            .user_key
            .to_vec();
        assert!(last < first, "a user key spans two outputs");
    }
}

#[test]
fn disjoint_inputs_move_down_without_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let a = table(dir.path(), 1, &[("a", 1, Some("x"))]);
    let b = table(dir.path(), 2, &[("m", 2, Some("y"))]);
    let v = version(vec![(0, a.clone()), (0, b.clone())]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    assert!(c.is_trivial_move());
    let edit = c.trivial_move_edit();
    assert_eq!(edit.deleted.len(), 2);
    assert!(edit.added.iter().all(|(level, _)| *level == 1));

    // Overlapping L0 tables, or an overlapping table below, need a merge.
    let overlapping = table(dir.path(), 3, &[("a", 3, Some("z"))]);
    let v = version(vec![(0, a.clone()), (0, overlapping)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    assert!(!c.is_trivial_move());
    let v = version(vec![
        (1, b),
        (3, table(dir.path(), 4, &[("m", 1, Some("w"))])),
    ]);
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    assert!(
        c.is_trivial_move(),
        "a small overlap two levels down is fine"
    );
    let v = version(vec![
        (1, a),
        (2, table(dir.path(), 5, &[("a", 0, Some("w"))])),
    ]);
    let c = Compaction::new(v.clone(), 0, vec![], &options());
    assert!(!c.is_trivial_move(), "nothing to move");
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    assert!(!c.is_trivial_move());
}

#[test]
fn a_cancelled_compaction_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Row> = (0..10_000)
        .map(|i| {
            (
                &*Box::leak(format!("k{i:05}").into_boxed_str()),
                1,
                Some("v"),
            )
        })
        .collect();
    let t = table(dir.path(), 1, &rows);
    let v = version(vec![(1, t)]);
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    assert!(compact(dir.path(), &c, 100, true).is_none());
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "only the input table remains");
}

/// Removes values starting with `-`, changes those starting with `+` to
/// `changed`, panics on `!`, and records every value it is offered.
#[derive(Default)]
struct TestFilter {
    offered: parking_lot::Mutex<Vec<(usize, String, String)>>,
}

impl CompactionFilter for TestFilter {
    fn filter(&self, level: usize, key: &[u8], value: &[u8]) -> FilterDecision {
        let value = String::from_utf8(value.to_vec()).unwrap();
        self.offered.lock().push((
            level,
            String::from_utf8(key.to_vec()).unwrap(),
            value.clone(),
        ));
        match value.as_bytes().first() {
            Some(b'-') => FilterDecision::Remove,
            Some(b'+') => FilterDecision::ChangeValue(b"changed".to_vec()),
            Some(b'!') => panic!("a filter that panics"),
            _ => FilterDecision::Keep,
        }
    }
}

fn filtered_options(filter: &Arc<TestFilter>) -> Options {
    Options {
        compaction_filter: Some(filter.clone()),
        ..options()
    }
}

#[test]
fn the_filter_sees_only_the_newest_value_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = table(
        dir.path(),
        1,
        &[("a", 5, Some("-old")), ("b", 1, Some("x"))],
    );
    let new = table(dir.path(), 2, &[("a", 9, Some("keep")), ("b", 3, None)]);
    let v = version(vec![(0, old), (0, new)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, _, counts) =
        compact_with(dir.path(), &c, 100, false, &filtered_options(&filter)).unwrap();
    assert_eq!(rows, vec![row("a", 0, Some("keep"))]);
    // Not a@5 (shadowed), not b's tombstone (deletions are never offered).
    assert_eq!(
        *filter.offered.lock(),
        vec![(1, "a".to_string(), "keep".to_string())]
    );
    assert_eq!(counts, FilterCounts::default());
}

#[test]
fn a_removed_entry_leaves_a_deletion_marker_over_deeper_versions() {
    let dir = tempfile::tempdir().unwrap();
    let l0 = table(
        dir.path(),
        3,
        &[("b", 8, Some("-gone")), ("c", 9, Some("-gone"))],
    );
    let l2 = table(dir.path(), 1, &[("b", 2, Some("old"))]);
    let v = version(vec![(0, l0), (2, l2)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, _, counts) =
        compact_with(dir.path(), &c, 100, false, &filtered_options(&filter)).unwrap();
    // b@2 in L2 would come back without the marker; c hides nothing, so it
    // simply goes.
    assert_eq!(rows, vec![row("b", 8, None)]);
    assert_eq!(counts.removed, 2);
}

#[test]
fn a_removed_entry_takes_its_older_versions_in_the_compaction_along() {
    let dir = tempfile::tempdir().unwrap();
    let old = table(dir.path(), 1, &[("a", 5, Some("older"))]);
    let new = table(dir.path(), 2, &[("a", 9, Some("-newest"))]);
    let v = version(vec![(0, old), (0, new)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, _, _) =
        compact_with(dir.path(), &c, 100, false, &filtered_options(&filter)).unwrap();
    assert_eq!(rows, vec![], "a@5 must not resurface");
}

#[test]
fn a_changed_value_keeps_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(dir.path(), 1, &[("a", 4, Some("+x")), ("b", 5, Some("y"))]);
    // Deeper versions, so that the outputs keep their sequences.
    let deeper = table(dir.path(), 2, &[("a", 1, Some("d")), ("b", 1, Some("d"))]);
    let v = version(vec![(1, t), (3, deeper)]);
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, _, counts) =
        compact_with(dir.path(), &c, 100, false, &filtered_options(&filter)).unwrap();
    assert_eq!(
        rows,
        vec![row("a", 4, Some("changed")), row("b", 5, Some("y"))]
    );
    assert_eq!(counts.changed, 1);
    assert_eq!(filter.offered.lock()[0].0, 2, "offered at the output level");
}

#[test]
fn a_panicking_filter_keeps_the_entry_and_the_compaction_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(
        dir.path(),
        1,
        &[
            ("a", 4, Some("!boom")),
            ("b", 5, Some("-drop")),
            ("c", 6, Some("z")),
        ],
    );
    let v = version(vec![(1, t)]);
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, _, counts) =
        compact_with(dir.path(), &c, 100, false, &filtered_options(&filter)).unwrap();
    assert_eq!(
        rows,
        vec![row("a", 0, Some("!boom")), row("c", 0, Some("z"))]
    );
    assert_eq!(
        counts,
        FilterCounts {
            removed: 1,
            changed: 0,
            panics: 1
        }
    );
}

#[test]
fn entries_above_the_smallest_snapshot_are_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(
        dir.path(),
        1,
        &[("a", 7, Some("-new")), ("a", 3, Some("-old"))],
    );
    let v = version(vec![(1, t)]);
    let c = Compaction::new(v.clone(), 1, v.files(1).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, _, _) = compact_with(dir.path(), &c, 5, false, &filtered_options(&filter)).unwrap();
    // A reader at 5 still reads a@3 from the output; a@7 is not visible to
    // it, and a@3 is not the newest version: neither is offered.
    assert_eq!(
        rows,
        vec![row("a", 7, Some("-new")), row("a", 0, Some("-old"))]
    );
    assert!(filter.offered.lock().is_empty());
}

#[test]
fn a_bottom_rewrite_writes_to_its_own_level_and_drops_removed_entries() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(dir.path(), 1, &[("a", 4, Some("-x")), ("b", 5, Some("y"))]);
    let v = version(vec![(3, t)]);
    let c = Compaction::bottom_rewrite(v.clone(), 3, v.files(3).to_vec(), &options());
    let filter = Arc::new(TestFilter::default());
    let (rows, metas, _) =
        compact_with(dir.path(), &c, 100, false, &filtered_options(&filter)).unwrap();
    assert_eq!(rows, vec![row("b", 0, Some("y"))]);
    let edit = c.edit(Output {
        tables: metas,
        blob: None,
        filtered: FilterCounts::default(),
        garbage: Default::default(),
    });
    assert_eq!(edit.deleted, vec![(3, 1)]);
    assert!(edit.added.iter().all(|(level, _)| *level == 3));
}

#[test]
fn adjacent_kept_tombstones_never_make_outputs_share_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let big: &'static str = Box::leak("v".repeat(6000).into_boxed_str());
    // [a, c) and [c, z) are kept (L2 holds keys in both), and the value of b
    // fills a target-sized output before zz.
    let upper = table_with_tombstones(
        dir.path(),
        1,
        &[("b", 11, Some(big)), ("zz", 13, Some("x"))],
        &[("a", "c", 10), ("c", "z", 12)],
    );
    let bottom = table(
        dir.path(),
        2,
        &[("a0", 1, Some("old")), ("c", 1, Some("old"))],
    );
    let v = version(vec![(0, upper), (2, bottom)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let (_, metas) = compact(dir.path(), &c, 100, false).unwrap();
    assert!(metas.len() >= 2, "the value of b was meant to force a cut");
    for pair in metas.windows(2) {
        assert!(
            user_key(&pair[0].largest) < user_key(&pair[1].smallest),
            "outputs share a user key: {:?} / {:?}",
            String::from_utf8_lossy(user_key(&pair[0].largest)),
            String::from_utf8_lossy(user_key(&pair[1].smallest)),
        );
    }
}

#[test]
fn only_base_versions_every_reader_sees_lose_their_sequence() {
    let dir = tempfile::tempdir().unwrap();
    // b: a deeper level holds it. d: a kept tombstone covers it (L2 holds
    // c5 in its range), older than d@7 but not than 0. e@8: above the smallest snapshot. a, e@4: base
    // versions every reader sees.
    let l0 = table_with_tombstones(
        dir.path(),
        3,
        &[
            ("a", 5, Some("a")),
            ("b", 6, Some("b")),
            ("d", 7, Some("d")),
            ("e", 8, Some("e-new")),
            ("e", 4, Some("e-old")),
        ],
        &[("c", "d5", 3)],
    );
    let l2 = table(
        dir.path(),
        1,
        &[("b", 1, Some("old")), ("c5", 1, Some("old"))],
    );
    let v = version(vec![(0, l0), (2, l2)]);
    let c = Compaction::new(v.clone(), 0, v.files(0).to_vec(), &options());
    let (rows, _) = compact(dir.path(), &c, 7, false).unwrap();
    assert_eq!(
        rows,
        vec![
            row("a", 0, Some("a")),
            row("b", 6, Some("b")),
            row("d", 7, Some("d")),
            row("e", 8, Some("e-new")),
            row("e", 0, Some("e-old")),
        ]
    );
}
