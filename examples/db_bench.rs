//! A db_bench-style throughput tool for strata-engine, after LevelDB's
//! `db_bench`: one line per benchmark, or one JSON object per line with `--json`.
//!
//! ```text
//! cargo run --release --example db_bench -- \
//!     --benchmarks fillrandom,readrandom,readseq,fillsync --num 1000000 --value-size 100
//! ```
//!
//! Benchmarks:
//! - `fillseq`, `fillrandom`: `--num` puts in key order / in a random permutation (fresh database).
//! - `overwrite`: `--num` random puts over the existing keys.
//! - `readrandom`: `--reads` random gets of existing keys (default `--num`).
//! - `readseq`: one full forward scan.
//! - `seekrandom`: `--reads` random range seeks, reading the first entry.
//! - `compact`: one manual compaction of the whole key space.
//! - `stats`: prints the engine's compaction and stall report.
//! - `fillsync`: `--sync-ops` puts with `sync: true` split over each thread
//!   count of `--sync-threads`, with group commit, then with every write
//!   serialised behind a lock (one fsync per write: the no-group-commit baseline).
//!
//! Keys are 16 bytes (`--key-size`), values `--value-size` bytes. After each
//! fill the tool waits (untimed) for compactions to finish and reports write
//! amplification (table bytes written per user byte, WAL excluded) and the
//! space the database takes. `--noop-filter` sets a compaction filter that
//! keeps every entry, to measure what consulting one costs.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use strata_kv::engine::{CompactionFilter, Db, FilterDecision, Options, WriteOptions};

#[derive(Parser, Debug)]
#[command(about = "Throughput benchmarks for strata-engine")]
struct Args {
    /// Comma-separated benchmarks to run, in order.
    #[arg(
        long,
        default_value = "fillseq,fillrandom,overwrite,readrandom,readseq,seekrandom"
    )]
    benchmarks: String,
    /// Number of keys written by the fill benchmarks.
    #[arg(long, default_value_t = 1_000_000)]
    num: u64,
    /// Number of reads (default: --num).
    #[arg(long)]
    reads: Option<u64>,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Total sync writes per thread count in fillsync.
    #[arg(long, default_value_t = 4000)]
    sync_ops: u64,
    /// Thread counts for fillsync.
    #[arg(long, default_value = "1,4,16")]
    sync_threads: String,
    /// Database directory (default: a temporary directory).
    #[arg(long)]
    db: Option<std::path::PathBuf>,
    /// Memtable size in MiB.
    #[arg(long, default_value_t = 32)]
    write_buffer_mb: usize,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Set a compaction filter that keeps every entry.
    #[arg(long)]
    noop_filter: bool,
}

/// Keeps everything: what remains is the cost of asking.
struct KeepAll;

impl CompactionFilter for KeepAll {
    fn filter(&self, _level: usize, _key: &[u8], _value: &[u8]) -> FilterDecision {
        FilterDecision::Keep
    }
}

struct Bench {
    args: Args,
    dir: std::path::PathBuf,
    db: Option<Db>,
    rng: rand::rngs::StdRng,
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size);
    k
}

impl Bench {
    fn options(&self) -> Options {
        let options = Options::default().write_buffer_size(self.args.write_buffer_mb << 20);
        if self.args.noop_filter {
            options.compaction_filter(Arc::new(KeepAll))
        } else {
            options
        }
    }

    fn fresh_db(&mut self) -> Db {
        self.db = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        let db = Db::open(&self.dir, self.options()).expect("open");
        self.db = Some(db.clone());
        db
    }

    fn db(&mut self) -> Db {
        if let Some(db) = &self.db {
            return db.clone();
        }
        let db = Db::open(&self.dir, self.options()).expect("open");
        self.db = Some(db.clone());
        db
    }

    fn value(&mut self) -> Vec<u8> {
        (0..self.args.value_size)
            .map(|_| self.rng.gen_range(b'a'..=b'z'))
            .collect()
    }

    fn report(&self, name: &str, ops: u64, secs: f64, extra: &str) {
        let ops_per_sec = ops as f64 / secs;
        let micros = secs * 1e6 / ops.max(1) as f64;
        if self.args.json {
            println!(
                "{{\"engine\":\"strata\",\"benchmark\":\"{name}\",\"ops\":{ops},\"ops_per_sec\":{ops_per_sec:.0},\"micros_per_op\":{micros:.3}{extra}}}"
            );
        } else {
            println!(
                "{name:<24} : {micros:>10.3} micros/op {ops_per_sec:>12.0} ops/sec {ops:>10} ops"
            );
        }
    }

    fn fill(&mut self, name: &str, order: Vec<u64>, fresh: bool) {
        let db = if fresh { self.fresh_db() } else { self.db() };
        let value = self.value();
        let before = db.stats();
        let start = Instant::now();
        for &i in &order {
            db.put(key(i, self.args.key_size), &value).expect("put");
        }
        let secs = start.elapsed().as_secs_f64();
        // Untimed: the compaction these writes caused counts toward their
        // write amplification, and later reads see the settled tree.
        db.wait_for_compactions().expect("compaction");
        let after = db.stats();
        let table_writes = (after.bytes_flushed + after.bytes_compacted_written)
            - (before.bytes_flushed + before.bytes_compacted_written);
        let user = after.user_bytes_written - before.user_bytes_written;
        let write_amp = table_writes as f64 / user.max(1) as f64;
        let bytes = dir_size(&self.dir);
        let extra = format!(",\"write_amp\":{write_amp:.2},\"db_bytes\":{bytes}");
        self.report(name, order.len() as u64, secs, &extra);
        if !self.args.json {
            println!(
                "{:<24}   write amplification {write_amp:.2}, {:.1} MiB on disk",
                "",
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
    }

    fn compact(&mut self) {
        let db = self.db();
        let before = db.stats().bytes_compacted_written;
        let start = Instant::now();
        db.compact_range::<&[u8]>(..).expect("compaction");
        let secs = start.elapsed().as_secs_f64();
        let written = db.stats().bytes_compacted_written - before;
        self.report(
            "compact",
            self.args.num,
            secs,
            &format!(",\"written_bytes\":{written}"),
        );
        if !self.args.json {
            println!(
                "{:<24}   {:.1} MiB written",
                "",
                written as f64 / (1024.0 * 1024.0)
            );
        }
    }

    fn permutation(&mut self) -> Vec<u64> {
        let mut order: Vec<u64> = (0..self.args.num).collect();
        order.shuffle(&mut self.rng);
        order
    }

    fn read_random(&mut self) {
        let db = self.db();
        let reads = self.args.reads.unwrap_or(self.args.num);
        let keys: Vec<u64> = (0..reads)
            .map(|_| self.rng.gen_range(0..self.args.num))
            .collect();
        let start = Instant::now();
        let mut found = 0u64;
        for &i in &keys {
            if db.get(key(i, self.args.key_size)).expect("get").is_some() {
                found += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        self.report("readrandom", reads, secs, &format!(",\"found\":{found}"));
    }

    fn read_seq(&mut self) {
        let db = self.db();
        let start = Instant::now();
        let mut n = 0u64;
        for item in db.range::<&[u8]>(..) {
            item.expect("scan");
            n += 1;
        }
        self.report("readseq", n, start.elapsed().as_secs_f64(), "");
    }

    fn seek_random(&mut self) {
        let db = self.db();
        let reads = self.args.reads.unwrap_or(self.args.num).min(200_000);
        let keys: Vec<u64> = (0..reads)
            .map(|_| self.rng.gen_range(0..self.args.num))
            .collect();
        let start = Instant::now();
        for &i in &keys {
            let k = key(i, self.args.key_size);
            let _ = db.range(k.as_slice()..).next();
        }
        self.report("seekrandom", reads, start.elapsed().as_secs_f64(), "");
    }

    fn fill_sync(&mut self) {
        let threads: Vec<usize> = self
            .args
            .sync_threads
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        for n in threads {
            for grouped in [true, false] {
                let db = self.fresh_db();
                let value = self.value();
                let per_thread = self.args.sync_ops / n as u64;
                let serialise = Arc::new(std::sync::Mutex::new(()));
                let start = Instant::now();
                let handles: Vec<_> = (0..n)
                    .map(|t| {
                        let db = db.clone();
                        let value = value.clone();
                        let lock = serialise.clone();
                        let key_size = self.args.key_size;
                        std::thread::spawn(move || {
                            for i in 0..per_thread {
                                let k = key(t as u64 * per_thread + i, key_size);
                                let _guard = (!grouped).then(|| lock.lock());
                                sync_put(&db, &k, &value);
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().expect("writer thread");
                }
                let secs = start.elapsed().as_secs_f64();
                let name = format!("fillsync/{n}t/{}", if grouped { "group" } else { "serial" });
                self.report(
                    &name,
                    per_thread * n as u64,
                    secs,
                    &format!(",\"threads\":{n}"),
                );
            }
        }
    }
}

fn sync_put(db: &Db, key: &[u8], value: &[u8]) {
    let mut batch = strata_kv::engine::WriteBatch::new();
    batch.put(key, value);
    db.write(batch, &WriteOptions { sync: true })
        .expect("sync write");
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let args = Args::parse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .db
        .clone()
        .unwrap_or_else(|| tmp.path().join("db_bench"));
    let benchmarks: Vec<String> = args
        .benchmarks
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    if !args.json {
        println!(
            "strata-engine db_bench: keys {} bytes, values {} bytes, num {}, dir {}",
            args.key_size,
            args.value_size,
            args.num,
            dir.display()
        );
    }
    let mut bench = Bench {
        args,
        dir,
        db: None,
        rng: rand::rngs::StdRng::seed_from_u64(301),
    };
    for name in benchmarks {
        match name.as_str() {
            "fillseq" => {
                let order = (0..bench.args.num).collect();
                bench.fill("fillseq", order, true)
            }
            "fillrandom" => {
                let order = bench.permutation();
                bench.fill("fillrandom", order, true)
            }
            "overwrite" => {
                let order = bench.permutation();
                bench.fill("overwrite", order, false)
            }
            "readrandom" => bench.read_random(),
            "readseq" => bench.read_seq(),
            "seekrandom" => bench.seek_random(),
            "fillsync" => bench.fill_sync(),
            "compact" => bench.compact(),
            "stats" => println!("{}", bench.db().stats()),
            other => eprintln!("unknown benchmark {other:?}, skipped"),
        }
    }
}
