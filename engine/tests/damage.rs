//! Damage at every byte: flip each byte of the last records of a MANIFEST
//! and of a WAL, and cut each file at every length inside those records,
//! then open. Each case must either fail with `Corruption` naming the
//! damaged file (leaving the files as they were), or open holding every
//! write that was acknowledged in the world the damage models, with any
//! torn tail it dropped in the recovery report; and no `.sst` may ever be
//! deleted. The counts per file kind and outcome are printed.
//!
//! Also: what each recovery mode does with a damaged WAL record, that a
//! damaged open sets files aside instead of deleting them, and that
//! `Db::repair` brings back every readable item of a database with a
//! damaged table and a damaged WAL.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use strata_engine::{Db, Error, Options, RecoveryMode, WriteBatch, WriteOptions};

const BLOCK_SIZE: usize = 32 * 1024;
const HEADER_SIZE: usize = 7;

fn key(i: usize) -> String {
    format!("key{i:05}")
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "v".repeat(40)).into_bytes()
}

/// Writes keys `range`, one synced batch (one WAL record) each.
fn write_synced(db: &Db, range: std::ops::Range<usize>) {
    for i in range {
        let mut batch = WriteBatch::new();
        batch.put(key(i), value(i));
        db.write(batch, &WriteOptions { sync: true }).unwrap();
    }
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && pred(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for path in files_with(from, |n| n != "LOCK") {
        std::fs::copy(&path, to.path().join(path.file_name().unwrap())).unwrap();
    }
    to
}

/// Start offsets of the records of a log file whose records each fit in
/// one fragment (true of every record these tests write).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let left = BLOCK_SIZE - pos % BLOCK_SIZE;
        if left < HEADER_SIZE {
            pos += left;
            continue;
        }
        let len = u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]) as usize;
        assert_eq!(bytes[pos + 6], 1, "a FULL fragment at {pos}");
        starts.push(pos);
        pos += HEADER_SIZE + len;
    }
    assert_eq!(pos, bytes.len());
    starts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// `open` failed with `Corruption` naming the damaged file.
    Corruption,
    /// `open` succeeded with every write the damage left acknowledged,
    /// having reported the torn tail it dropped.
    RecoveredTornTailReported,
    /// `open` succeeded with every write, and nothing was damaged that mattered.
    RecoveredAll,
}

#[derive(Default)]
struct Tally(BTreeMap<(&'static str, &'static str, Outcome), u32>);

impl Tally {
    fn add(&mut self, file: &'static str, damage: &'static str, outcome: Outcome) {
        *self.0.entry((file, damage, outcome)).or_default() += 1;
    }

    fn print(&self, test: &str) {
        for ((file, damage, outcome), n) in &self.0 {
            eprintln!("{test}: {file} {damage}: {outcome:?} x{n}");
        }
    }
}

/// Every `.sst` of `before` is still in `dir` or in `dir/lost/`.
fn assert_no_table_deleted(dir: &Path, before: &[String], case: &str) {
    for name in before {
        let here = dir.join(name).exists() || dir.join("lost").join(name).exists();
        assert!(here, "{case}: table {name} was deleted");
    }
}

fn table_names(dir: &Path) -> Vec<String> {
    files_with(dir, |n| n.ends_with(".sst"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Opens the damaged copy in `dir` and classifies the result. `expected`
/// is what must be readable if the open succeeds; `torn` whether the damage
/// models an interrupted append (so a successful open must report a torn tail).
fn open_damaged(
    dir: &Path,
    damaged_file: &str,
    expected: std::ops::Range<usize>,
    torn: bool,
    case: &str,
) -> Outcome {
    let tables = table_names(dir);
    let current = std::fs::read(dir.join("CURRENT")).unwrap();
    let outcome = match Db::open(dir, Options::default()) {
        Err(Error::Corruption { file, .. }) => {
            assert!(
                file.to_string_lossy().contains(damaged_file),
                "{case}: corruption names {file:?}, expected {damaged_file}"
            );
            assert_eq!(
                std::fs::read(dir.join("CURRENT")).unwrap(),
                current,
                "{case}: a failed open switched CURRENT"
            );
            Outcome::Corruption
        }
        Err(other) => panic!("{case}: expected corruption or success, got {other}"),
        Ok(db) => {
            eprintln!(
                "{case}: {:?} files {:?}",
                db.recovery_report(),
                std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect::<Vec<_>>()
            );
            for i in expected.clone() {
                assert_eq!(
                    db.get(key(i)).unwrap(),
                    Some(value(i)),
                    "{case}: acknowledged {} lost silently",
                    key(i)
                );
            }
            let report = db.recovery_report().clone();
            if torn {
                assert!(
                    !report.torn_tails.is_empty() && report.dropped_bytes() > 0,
                    "{case}: a dropped torn tail must be reported: {report:?}"
                );
                Outcome::RecoveredTornTailReported
            } else {
                Outcome::RecoveredAll
            }
        }
    };
    assert_no_table_deleted(dir, &tables, case);
    outcome
}

/// The name and bytes of the last (highest-numbered) file in `dir` whose
/// name `matches` accepts.
fn last_file(dir: &Path, matches: impl Fn(&str) -> bool) -> (String, Vec<u8>) {
    let path = files_with(dir, matches).pop().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    (name, std::fs::read(&path).unwrap())
}

#[test]
fn manifest_damage_in_the_last_records_never_loses_flushed_data() {
    let test = "manifest_damage_in_the_last_records_never_loses_flushed_data";
    let pristine = tempfile::tempdir().unwrap();
    {
        let db = Db::open(pristine.path(), Options::default()).unwrap();
        write_synced(&db, 0..100);
        // The flush deletes the WAL: the manifest's last edit is now the
        // only record of where these writes are.
        db.flush().unwrap();
    }
    let (manifest_name, good) = last_file(pristine.path(), |n| n.starts_with("MANIFEST-"));
    let starts = record_starts(&good);
    assert!(starts.len() >= 3, "snapshot, open and flush edits");
    let from = starts[starts.len() - 2];
    let mut tally = Tally::default();
    for pos in from..good.len() {
        let dir = copy_dir(pristine.path());
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        std::fs::write(dir.path().join(&manifest_name), &bad).unwrap();
        let case = format!("manifest flip at {pos}");
        let outcome = open_damaged(dir.path(), "MANIFEST-", 0..100, false, &case);
        tally.add("MANIFEST", "flip", outcome);
    }
    for cut in from + 1..good.len() {
        let dir = copy_dir(pristine.path());
        std::fs::write(dir.path().join(&manifest_name), &good[..cut]).unwrap();
        let case = format!("manifest cut at {cut}");
        // The flush's WAL is gone, so dropping its edit cannot be a tear.
        let outcome = open_damaged(dir.path(), "MANIFEST-", 0..100, false, &case);
        assert_eq!(outcome, Outcome::Corruption, "{case}");
        tally.add("MANIFEST", "truncation", outcome);
    }
    tally.print(test);
    assert!(tally.0.values().sum::<u32>() > 100);
}

#[test]
fn wal_damage_in_the_last_records_is_corruption_or_a_reported_tear() {
    let test = "wal_damage_in_the_last_records_is_corruption_or_a_reported_tear";
    let n = 30;
    let pristine = tempfile::tempdir().unwrap();
    {
        let db = Db::open(pristine.path(), Options::default()).unwrap();
        write_synced(&db, 0..n);
    }
    let (log_name, good) = last_file(pristine.path(), |n| n.ends_with(".log"));
    let starts = record_starts(&good);
    assert_eq!(starts.len(), n, "one record per synced write");
    let from = starts[n - 2];
    let mut tally = Tally::default();
    for pos in from..good.len() {
        let dir = copy_dir(pristine.path());
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        std::fs::write(dir.path().join(&log_name), &bad).unwrap();
        let case = format!("wal flip at {pos}");
        let outcome = open_damaged(dir.path(), ".log", 0..n, false, &case);
        // Every byte of a record is checked: a flip is never mistaken for a tear.
        assert_eq!(outcome, Outcome::Corruption, "{case}");
        tally.add("WAL", "flip", outcome);
    }
    for cut in from + 1..good.len() {
        let dir = copy_dir(pristine.path());
        std::fs::write(dir.path().join(&log_name), &good[..cut]).unwrap();
        // A cut inside record r models a crash during its append: records
        // before it were acknowledged, it and any after were not. A cut at
        // a record's start models a crash before that append began.
        let boundary = starts.contains(&cut);
        let whole = starts.iter().filter(|&&s| s < cut).count() - usize::from(!boundary);
        let case = format!("wal cut at {cut}");
        let outcome = open_damaged(dir.path(), ".log", 0..whole, !boundary, &case);
        let expected = if boundary {
            Outcome::RecoveredAll
        } else {
            Outcome::RecoveredTornTailReported
        };
        assert_eq!(outcome, expected, "{case}");
        tally.add("WAL", "truncation", outcome);
    }
    tally.print(test);
}

/// A closed database whose only WAL holds `n` synced single-key records,
/// with record `damaged` flipped in its payload.
fn wal_with_damaged_record(n: usize, damaged: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        write_synced(&db, 0..n);
    }
    let log = files_with(dir.path(), |n| n.ends_with(".log"))
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    let starts = record_starts(&bytes);
    bytes[starts[damaged] + HEADER_SIZE + 3] ^= 0x40;
    std::fs::write(&log, bytes).unwrap();
    (dir, log)
}

fn open_with(dir: &Path, mode: RecoveryMode) -> Result<Db, Error> {
    Db::open(dir, Options::default().recovery_mode(mode))
}

#[test]
fn recovery_modes_on_a_damaged_wal_record() {
    let (n, damaged) = (40, 25);

    let (dir, log) = wal_with_damaged_record(n, damaged);
    match open_with(dir.path(), RecoveryMode::AbsoluteConsistency) {
        Err(Error::Corruption { file, .. }) => assert_eq!(file, log),
        other => panic!("absolute consistency opened: {other:?}"),
    }
    assert!(log.exists(), "a failed open deletes nothing");

    let db = open_with(dir.path(), RecoveryMode::PointInTime).unwrap();
    for i in 0..n {
        let want = (i < damaged).then(|| value(i));
        assert_eq!(db.get(key(i)).unwrap(), want, "point in time, {}", key(i));
    }
    let report = db.recovery_report().clone();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].file, log);
    assert!(report.skipped[0].bytes > 0);
    assert_eq!(report.wal_records_replayed, damaged as u64);
    assert!(!log.exists(), "the damaged log left the directory");
    assert!(
        report
            .set_aside
            .contains(&dir.path().join("lost").join(log.file_name().unwrap())),
        "and went into lost/, not away: {report:?}"
    );
    drop(db);
    let db = open_with(dir.path(), RecoveryMode::AbsoluteConsistency).unwrap();
    assert!(db.recovery_report().is_clean(), "what was kept is durable");
    assert_eq!(db.range::<&[u8]>(..).count(), damaged);
    drop(db);

    let (dir, log) = wal_with_damaged_record(n, damaged);
    let db = open_with(dir.path(), RecoveryMode::SkipCorrupted).unwrap();
    let present = (0..n)
        .filter(|&i| db.get(key(i)).unwrap().is_some())
        .count();
    // The reader drops the rest of the damaged block: here, the records
    // after the damaged one in the same (first) block.
    assert!(present >= damaged, "skip keeps at least the prefix");
    assert_eq!(db.get(key(damaged)).unwrap(), None);
    let report = db.recovery_report().clone();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].file, log);
    assert_eq!(report.wal_records_replayed, present as u64);
    assert!(report.dropped_bytes() > 0);
}

#[test]
fn an_open_that_met_a_torn_tail_sets_files_aside_instead_of_deleting() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        write_synced(&db, 0..10);
    }
    let log = files_with(dir.path(), |n| n.ends_with(".log"))
        .pop()
        .unwrap();
    let bytes = std::fs::read(&log).unwrap();
    let last = *record_starts(&bytes).last().unwrap() as u64;
    let len = bytes.len() as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let report = db.recovery_report().clone();
    assert_eq!(report.torn_tails.len(), 1, "{report:?}");
    assert_eq!(report.torn_tails[0].file, log);
    assert_eq!(
        (report.torn_tails[0].offset, report.torn_tails[0].bytes),
        (last, len - 5 - last)
    );
    assert!(report
        .set_aside
        .iter()
        .any(|p| p.ends_with(log.file_name().unwrap())));
    assert!(report.set_aside.iter().any(|p| p
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("MANIFEST-")));
    for i in 0..9 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i)));
    }
    assert_eq!(db.get(key(9)).unwrap(), None, "the torn append");
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert!(
        db.recovery_report().is_clean(),
        "{:?}",
        db.recovery_report()
    );
}

#[test]
fn repair_keeps_every_readable_item_of_a_damaged_table_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().level0_compaction_trigger(8);
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        write_synced(&db, 0..100);
        db.flush().unwrap();
        write_synced(&db, 100..200);
        db.flush().unwrap();
        write_synced(&db, 200..300);
    }
    let tables = files_with(dir.path(), |n| n.ends_with(".sst"));
    assert_eq!(tables.len(), 2);
    // Damage the second table's first data block and one WAL record.
    let damaged_table = &tables[1];
    let mut bytes = std::fs::read(damaged_table).unwrap();
    bytes[20] ^= 0x08;
    std::fs::write(damaged_table, bytes).unwrap();
    let log = files_with(dir.path(), |n| n.ends_with(".log"))
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    let starts = record_starts(&bytes);
    bytes[starts[50] + HEADER_SIZE + 2] ^= 0x08;
    std::fs::write(&log, bytes).unwrap();

    assert!(Db::open(dir.path(), opts.clone())
        .unwrap_err()
        .is_corruption());
    let report = Db::repair(dir.path()).unwrap();
    assert_eq!(report.tables_kept, tables[..1], "{report:?}");
    assert!(!report.tables_written.is_empty(), "{report:?}");
    assert!(
        !tables[0].exists(),
        "the kept table was merged into the written ones"
    );
    assert_eq!(report.tables_set_aside.len(), 1, "{report:?}");
    assert_eq!(&report.tables_set_aside[0].file, damaged_table);
    assert_eq!(report.wal_damage.len(), 1, "{report:?}");
    assert_eq!(report.wal_damage[0].file, log);
    assert!(report.wal_bytes_lost() > 0 && !report.lost_nothing());
    let lost = dir.path().join("lost");
    assert!(lost.join(damaged_table.file_name().unwrap()).exists());
    assert!(lost.join(log.file_name().unwrap()).exists());

    let db = Db::open(dir.path(), opts).unwrap();
    assert!(db.recovery_report().is_clean());
    for i in 0..100 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i)), "{}", key(i));
    }
    for i in 100..200 {
        assert_eq!(db.get(key(i)).unwrap(), None, "in the damaged table");
    }
    let wal_kept = (200..300)
        .filter(|&i| db.get(key(i)).unwrap().is_some())
        .count();
    assert_eq!(wal_kept as u64, report.wal_records_recovered);
    assert!(wal_kept >= 50, "every record before the damaged one");
    for i in 200..250 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i)));
    }
    assert_eq!(db.get(key(250)).unwrap(), None, "the damaged record");
}

/// A compaction input that a reader held when the process stopped outlives
/// the edit that deleted it. A flushed table's versions carry real
/// sequences, older than the sequence-0 versions its compaction into the base
/// level wrote: merged by a repair, they would win.
#[test]
fn repair_sets_aside_a_compaction_input_that_outlived_its_edit() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().level0_compaction_trigger(8);
    let (stale, stale_bytes) = {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        db.put("a", "old").unwrap();
        db.put("z", "z").unwrap();
        db.flush().unwrap();
        let tables = files_with(dir.path(), |n| n.ends_with(".sst"));
        assert_eq!(tables.len(), 1);
        let stale = tables[0].clone();
        let bytes = std::fs::read(&stale).unwrap();
        db.put("a", "new").unwrap();
        db.compact_range::<&[u8]>(..).unwrap();
        assert!(!stale.exists(), "the compaction deleted its input");
        db.close().unwrap();
        (stale, bytes)
    };
    // As if a reader had kept the file open when the process died.
    std::fs::write(&stale, stale_bytes).unwrap();

    let report = Db::repair(dir.path()).unwrap();
    let db = Db::open(dir.path(), opts).unwrap();
    assert!(db.recovery_report().is_clean());
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(db.get("z").unwrap().as_deref(), Some(&b"z"[..]));
    assert!(report.lost_nothing(), "{report:?}");
    assert_eq!(
        report.tables_superseded,
        std::slice::from_ref(&stale),
        "{report:?}"
    );
    assert!(dir
        .path()
        .join("lost")
        .join(stale.file_name().unwrap())
        .exists());
}

/// The MANIFEST loses its last two edits whole: a flush (its WAL then
/// deleted) and the compaction into the base level that wrote the flushed
/// value at sequence 0, replacing a base table that a reader kept alive. The
/// compaction's output then holds the only copy of the newer value, at
/// sequence 0 beside the old base table's version: the open must not take it
/// for obsolete, and a repair brings the newer value back.
#[test]
fn a_manifest_that_lost_a_flush_and_its_compaction_fails_the_open_and_repair_keeps_the_newer_value()
{
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().level0_compaction_trigger(8);
    let (base, base_bytes, manifest, keep) = {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        db.put("k", "v1").unwrap();
        db.compact_range::<&[u8]>(..).unwrap();
        let tables = files_with(dir.path(), |n| n.ends_with(".sst"));
        assert_eq!(tables.len(), 1);
        let base = tables[0].clone();
        let base_bytes = std::fs::read(&base).unwrap();
        let (manifest, bytes) = last_file(dir.path(), |n| n.starts_with("MANIFEST-"));
        let keep = record_starts(&bytes).len();
        db.put("k", "v2").unwrap();
        db.compact_range::<&[u8]>(..).unwrap();
        db.close().unwrap();
        (base, base_bytes, manifest, keep)
    };
    let path = dir.path().join(&manifest);
    let bytes = std::fs::read(&path).unwrap();
    let starts = record_starts(&bytes);
    assert_eq!(
        starts.len(),
        keep + 2,
        "the flush's and the compaction's edits"
    );
    std::fs::write(&path, &bytes[..starts[keep]]).unwrap();
    assert!(!base.exists(), "the compaction deleted the old base table");
    std::fs::write(&base, base_bytes).unwrap();
    let output = files_with(dir.path(), |n| n.ends_with(".sst"))
        .into_iter()
        .find(|t| *t != base)
        .unwrap();

    let err = Db::open(dir.path(), opts.clone()).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(
        err.to_string()
            .contains("edit that had been acted on is missing"),
        "{err}"
    );
    assert!(output.exists(), "the open kept the only copy of v2");

    let report = Db::repair(dir.path()).unwrap();
    assert!(report.lost_nothing(), "{report:?}");
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
}

/// A WAL whose writes a flush made durable in a table can outlive the
/// MANIFEST edit that made it obsolete (its removal not yet durable). Its
/// records carry real sequences, older than the sequence-0 versions a later
/// compaction wrote: replayed by a repair, they would win.
#[test]
fn repair_sets_aside_a_wal_the_manifest_covers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().level0_compaction_trigger(8);
    let (old_log, old_bytes) = {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        db.put("a", "old").unwrap();
        let log = files_with(dir.path(), |n| n.ends_with(".log"))
            .pop()
            .unwrap();
        let bytes = std::fs::read(&log).unwrap();
        db.flush().unwrap();
        assert!(!log.exists(), "the flush deleted the WAL");
        db.put("a", "new").unwrap();
        db.compact_range::<&[u8]>(..).unwrap();
        db.close().unwrap();
        (log, bytes)
    };
    std::fs::write(&old_log, old_bytes).unwrap();

    let report = Db::repair(dir.path()).unwrap();
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(
        report.logs_superseded,
        std::slice::from_ref(&old_log),
        "{report:?}"
    );
    assert!(dir
        .path()
        .join("lost")
        .join(old_log.file_name().unwrap())
        .exists());
}
