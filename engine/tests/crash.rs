//! Crash test: a child process writes from several threads, half of them
//! with `sync: true` and half without, and prints every acknowledged write;
//! the parent kills it with SIGKILL at a random moment, reopens the database
//! and checks that every acknowledged put is there with its value, every
//! acknowledged delete stays deleted, and nothing is corrupt. Several rounds
//! run on the same directory. A killed process loses nothing acknowledged,
//! synced or not: an unsynced write is in the kernel's page cache (written,
//! or copied into the mapped WAL) before it is acknowledged.
//!
//! Runs as its own program (`harness = false`): started with the
//! `STRATA_CRASH_CHILD` environment variable it is the writer.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use strata_engine::{Db, Options, WriteBatch, WriteOptions};

const CHILD_ENV: &str = "STRATA_CRASH_CHILD";
const ROUNDS: u32 = 8;
const WRITER_THREADS: u32 = 4;
/// Values are 107 to 130 bytes: some go to blob files, the rest stay in tables.
const BLOB_THRESHOLD: usize = 118;

fn options() -> Options {
    // Small memtables and levels so that rotations, flushes and compactions
    // (several levels deep over the rounds) happen inside the crash window.
    Options::default()
        .blob_threshold(Some(BLOB_THRESHOLD))
        .write_buffer_size(128 << 10)
        .level0_compaction_trigger(2)
        .target_table_size(64 << 10)
        .level1_target_size(256 << 10)
}

fn value_for(key: &str, n: u64) -> String {
    format!("{key}={n}:{}", "v".repeat(100))
}

/// The writer: never returns; it is killed.
fn child(dir: &str, round: u32) -> ! {
    let db = match Db::open(dir, options()) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("child: open failed: {e}");
            std::process::exit(3);
        }
    };
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let sync = WriteOptions { sync: t % 2 == 0 };
                for i in 0u64.. {
                    let key = format!("r{round}-t{t}-{i:08}");
                    let hot = format!("hot-{t}");
                    let mut batch = WriteBatch::new();
                    batch.put(&key, value_for(&key, i));
                    batch.put(&hot, value_for(&hot, u64::from(round) << 32 | i));
                    let deleted =
                        (i >= 5 && i % 5 == 0).then(|| format!("r{round}-t{t}-{:08}", i - 5));
                    if let Some(d) = &deleted {
                        batch.delete(d);
                    }
                    if let Err(e) = db.write(batch, &sync) {
                        eprintln!("child: write failed: {e}");
                        std::process::exit(4);
                    }
                    // One line per acknowledged batch, written whole.
                    let mut line = format!("P {key} {i}\nH {hot} {}\n", u64::from(round) << 32 | i);
                    if let Some(d) = deleted {
                        line.push_str(&format!("D {d}\n"));
                    }
                    let mut out = std::io::stdout().lock();
                    if out
                        .write_all(line.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        std::process::exit(5);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

#[derive(Default)]
struct Acked {
    puts: BTreeMap<String, u64>,
    deleted: BTreeSet<String>,
    /// Hot keys: the newest acknowledged version; a later unacknowledged one may also survive.
    hot: BTreeMap<String, u64>,
    /// Keys that the batch in flight at the kill (one per writer thread) deletes:
    /// that batch may or may not have reached the log.
    maybe_deleted: BTreeSet<String>,
}

fn run_round(
    exe: &std::path::Path,
    dir: &std::path::Path,
    round: u32,
    acked: &mut Acked,
) -> Result<usize, String> {
    let mut child = Command::new(exe)
        .env(CHILD_ENV, format!("{}|{round}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.ends_with('\n') {
                lines.push(line.trim_end().to_string());
            }
            line.clear();
        }
        lines
    });
    let wait = rand::thread_rng().gen_range(150..700);
    std::thread::sleep(Duration::from_millis(wait));
    child.kill().map_err(|e| format!("kill: {e}"))?;
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let lines = reader.join().map_err(|_| "reader panicked")?;
    if status.code().is_some() {
        return Err(format!(
            "child exited by itself ({status}) instead of being killed"
        ));
    }
    let mut last_i: BTreeMap<u32, u64> = BTreeMap::new();
    for line in &lines {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("P"), Some(k), Some(n)) => {
                let n: u64 = n.parse().map_err(|_| "bad line")?;
                acked.puts.insert(k.to_string(), n);
                let t = k
                    .split('-')
                    .nth(1)
                    .and_then(|t| t.strip_prefix('t')?.parse().ok());
                last_i.insert(t.ok_or("bad key")?, n);
            }
            (Some("H"), Some(k), Some(n)) => {
                acked
                    .hot
                    .insert(k.to_string(), n.parse().map_err(|_| "bad line")?);
            }
            (Some("D"), Some(k), None) => {
                acked.puts.remove(k);
                acked.deleted.insert(k.to_string());
            }
            _ => return Err(format!("unparseable line {line:?}")),
        }
    }
    acked.maybe_deleted.clear();
    for (t, i) in last_i {
        let next = i + 1;
        if next >= 5 && next % 5 == 0 {
            acked
                .maybe_deleted
                .insert(format!("r{round}-t{t}-{:08}", next - 5));
        }
    }
    Ok(lines.len())
}

/// Checks every acknowledged write after a crash; returns the deepest level
/// holding a table, to show that compactions ran inside the crash windows.
fn verify(dir: &std::path::Path, acked: &mut Acked) -> Result<usize, String> {
    let db = Db::open(dir, options()).map_err(|e| format!("reopen failed: {e}"))?;
    // The in-flight deletes either landed or did not; from now on that is settled.
    for k in std::mem::take(&mut acked.maybe_deleted) {
        if db.get(&k).map_err(|e| e.to_string())?.is_none() {
            acked.puts.remove(&k);
            acked.deleted.insert(k);
        }
    }
    for (k, n) in &acked.puts {
        match db.get(k).map_err(|e| format!("get {k}: {e}"))? {
            Some(v) if v == value_for(k, *n).as_bytes() => {}
            other => {
                return Err(format!(
                    "acknowledged {k} lost or wrong: {:?}",
                    other.map(|v| String::from_utf8_lossy(&v).into_owned())
                ))
            }
        }
    }
    for k in &acked.deleted {
        if db.get(k).map_err(|e| e.to_string())?.is_some() {
            return Err(format!("acknowledged delete of {k} undone"));
        }
    }
    for (k, n) in &acked.hot {
        let v = db
            .get(k)
            .map_err(|e| e.to_string())?
            .ok_or(format!("hot key {k} lost"))?;
        let v = String::from_utf8_lossy(&v).into_owned();
        let got: u64 = v
            .strip_prefix(&format!("{k}="))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .ok_or(format!("hot key {k} has a malformed value"))?;
        if got < *n {
            return Err(format!("hot key {k} went back from {n} to {got}"));
        }
    }
    let mut count = 0usize;
    for item in db.range::<&[u8]>(..) {
        item.map_err(|e| format!("scan: {e}"))?;
        count += 1;
    }
    if count < acked.puts.len() {
        return Err(format!(
            "scan saw {count} keys, fewer than {} acknowledged",
            acked.puts.len()
        ));
    }
    // A round killed early may have written no value long enough (the
    // first ten of each thread are short); once one is, one must be there.
    let separable = acked
        .puts
        .iter()
        .any(|(k, n)| value_for(k, *n).len() >= BLOB_THRESHOLD);
    if separable && db.stats().blob_files == 0 {
        return Err("no value went to a blob file: the threshold tests nothing".into());
    }
    Ok(db.live_tables().iter().map(|t| t.level).max().unwrap_or(0))
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, round) = spec.rsplit_once('|').expect("child spec");
        child(dir, round.parse().expect("round"));
    }
    // Let `cargo test -- <filter>` select this program by name, as the harness would.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filter.is_empty()
        && !filter
            .iter()
            .any(|f| "crash_kill9_keeps_every_acknowledged_write".contains(f.as_str()))
    {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = Acked::default();
    let start = Instant::now();
    let mut result = Ok(());
    let mut deepest = 0;
    for round in 0..ROUNDS {
        let outcome = run_round(&exe, dir.path(), round, &mut acked)
            .and_then(|n| Ok((n, verify(dir.path(), &mut acked)?)));
        match outcome {
            Ok((n, level)) => {
                deepest = deepest.max(level);
                println!(
                    "crash round {round}: {n} acknowledged lines, all {} puts present, tables down to L{level}",
                    acked.puts.len()
                )
            }
            Err(e) => {
                result = Err(format!("round {round}: {e}"));
                break;
            }
        }
    }
    if let Err(e) = &result {
        eprintln!("crash_kill9_keeps_every_acknowledged_write FAILED: {e}");
    }
    if result.is_ok() && deepest == 0 {
        result = Err("no compaction ran: every table stayed in L0".to_string());
        eprintln!("crash_kill9_keeps_every_acknowledged_write FAILED: no compaction ran");
    }
    let total_ok = result.is_ok() && !acked.puts.is_empty();
    if result.is_ok() && acked.puts.is_empty() {
        eprintln!("crash test acknowledged nothing: the child never wrote");
    }
    println!(
        "test crash_kill9_keeps_every_acknowledged_write ... {} ({:.1}s)",
        if total_ok { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    println!(
        "crash: {} passed, {} failed",
        u32::from(total_ok),
        u32::from(!total_ok)
    );
    if !total_ok {
        std::process::exit(1);
    }
}
