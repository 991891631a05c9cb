//! Side-by-side throughput of strata-engine, fjall and RocksDB on the same
//! db_bench workloads, in one process and one run, so that the ratios
//! between them mean something on a noisy machine.
//!
//! ```text
//! cd benches/compare
//! cargo run --release -- --num 1000000                       # strata and fjall
//! cargo run --release --features rocksdb -- --num 1000000    # and RocksDB
//! ```
//!
//! Every engine gets comparable settings: WAL on without per-write fsync
//! (a write survives the process's death once acknowledged: strata copies
//! it into its mapped WAL, fjall and RocksDB `write` it; `--mmap-writes on`
//! turns on RocksDB's `allow_mmap_writes`, `off` strata's `mapped_wal`),
//! bloom filters at 10 bits per key, no block compression, 4 KiB blocks and
//! the same memtable size (`--write-buffer-mb`); with `--blob-threshold N`,
//! every engine keeps values of N bytes and more in blob files. After each fill the tool
//! waits, untimed, for flushes and compactions to finish, so reads meet a
//! settled tree, and reports the bytes the process wrote through `write(2)`
//! (`wchar` in `/proc/self/io`: WAL, tables and metadata alike; plus what
//! strata's WAL copied into its mapping, from its own count) per user
//! byte as the write amplification, and the database's size on disk.
//!
//! Fills also report the CPU time (user + system) of the thread that made
//! the puts, per put: unlike ops/s it does not count time spent waiting for
//! a core, so on a shared machine it still compares the engines' write paths
//! (though not what they pay in cache misses to each other's load). The
//! background flushes and compactions run on other threads and are left
//! out; write amplification covers them.
//!
//! Output: one JSON object per line per engine, benchmark and round, then a
//! table of each engine's best round and strata's throughput as a ratio of
//! each peer's, and for fills the same for the writer's CPU per put.

mod engines;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use engines::Store;

#[derive(Parser, Debug)]
#[command(about = "strata-engine against fjall and RocksDB, same workloads, same run")]
struct Args {
    /// Comma-separated engines: strata, fjall, rocksdb (needs `--features rocksdb`).
    #[arg(long, default_value = engines::DEFAULT_ENGINES)]
    engines: String,
    /// Comma-separated benchmarks, run in order against each engine.
    #[arg(
        long,
        default_value = "fillrandom,readrandom,readseq,seekrandom,overwrite,fillseq"
    )]
    benchmarks: String,
    #[arg(long, default_value_t = 1_000_000)]
    num: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Memtable size for every engine, in MiB.
    #[arg(long, default_value_t = 64)]
    write_buffer_mb: usize,
    /// Where the databases go (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Run the whole suite this many times, rotating the engine order each
    /// round, and compare each engine's best round: on a shared machine,
    /// load from elsewhere otherwise lands on whichever engine runs then.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Data block compression, applied the same way to every engine (all
    /// levels, data blocks only).
    #[arg(long, value_enum, default_value_t = engines::Codec::None)]
    compression: engines::Codec,
    /// Values of at least this many bytes go to blob files in every engine
    /// (strata's blob files, fjall's KV separation, RocksDB's BlobDB);
    /// unset: every value stays in the tree.
    #[arg(long)]
    blob_threshold: Option<usize>,
    /// Logs appended through a mapping (strata's `mapped_wal`, RocksDB's
    /// `allow_mmap_writes`): each engine's default, or on or off for both.
    /// With RocksDB's on, its write amplification misses what it mapped.
    #[arg(long, value_enum, default_value_t = engines::MmapWrites::Default)]
    mmap_writes: engines::MmapWrites,
    /// After each fill, print each engine's tree level by level (to stderr),
    /// where the engine describes it (strata, RocksDB).
    #[arg(long)]
    levels: bool,
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size);
    k
}

/// Bytes this process has passed to `write(2)` and friends so far.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) the calling thread has used so far, from
/// `/proc/thread-self/stat` (fields 14 and 15, in clock ticks); 0 where
/// that file is missing.
fn thread_cpu_secs() -> f64 {
    const TICKS_PER_SEC: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; fields after it don't.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / TICKS_PER_SEC
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct Run<'a> {
    args: &'a Args,
    engine: &'a str,
    dir: std::path::PathBuf,
    store: Option<Box<dyn Store>>,
    rng: rand::rngs::StdRng,
    value: Vec<u8>,
    /// The last fill's writer CPU microseconds per put.
    fill_cpu_micros: Option<f64>,
}

impl Run<'_> {
    fn store(&mut self, fresh: bool) -> &dyn Store {
        if fresh || self.store.is_none() {
            self.store = None;
            let _ = std::fs::remove_dir_all(&self.dir);
            std::fs::create_dir_all(&self.dir).expect("create db dir");
            let settings = engines::Settings {
                write_buffer: self.args.write_buffer_mb << 20,
                codec: self.args.compression,
                blob_threshold: self.args.blob_threshold,
                mmap_writes: self.args.mmap_writes,
            };
            let store = engines::open(self.engine, &self.dir, settings)
                .unwrap_or_else(|e| panic!("open {}: {e}", self.engine));
            self.store = Some(store);
        }
        self.store.as_deref().expect("store is open")
    }

    fn report(&self, bench: &str, ops: u64, secs: f64, extra: &str) -> f64 {
        let ops_per_sec = ops as f64 / secs;
        println!(
            "{{\"engine\":\"{}\",\"benchmark\":\"{bench}\",\"ops\":{ops},\"ops_per_sec\":{ops_per_sec:.0},\"micros_per_op\":{:.3}{extra}}}",
            self.engine,
            secs * 1e6 / ops.max(1) as f64
        );
        ops_per_sec
    }

    fn fill(&mut self, bench: &str, order: &[u64], fresh: bool) -> f64 {
        let key_size = self.args.key_size;
        let value = self.value.clone();
        let dir = self.dir.clone();
        let show_levels = self.args.levels;
        let store = self.store(fresh);
        let before = written_bytes() + store.mapped_bytes_written();
        let cpu_before = thread_cpu_secs();
        let start = Instant::now();
        for &i in order {
            store.put(&key(i, key_size), &value);
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu_micros = (thread_cpu_secs() - cpu_before) * 1e6 / order.len().max(1) as f64;
        store.settle();
        let written = written_bytes() + store.mapped_bytes_written() - before;
        if let Some(levels) = show_levels.then(|| store.levels()).flatten() {
            eprintln!("{} after {bench}:\n{levels}", self.engine);
        }
        let user = order.len() as u64 * (key_size + value.len()) as u64;
        let extra = format!(
            ",\"write_amp\":{:.2},\"db_bytes\":{},\"writer_cpu_micros_per_op\":{cpu_micros:.3}",
            written as f64 / user as f64,
            dir_size(&dir)
        );
        self.fill_cpu_micros = Some(cpu_micros);
        self.report(bench, order.len() as u64, secs, &extra)
    }

    fn random_keys(&mut self, n: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| key(self.rng.gen_range(0..self.args.num), self.args.key_size))
            .collect()
    }

    fn bench(&mut self, bench: &str) -> Option<f64> {
        let num = self.args.num;
        Some(match bench {
            "fillseq" => self.fill(bench, &(0..num).collect::<Vec<_>>(), true),
            "fillrandom" | "overwrite" => {
                let mut order: Vec<u64> = (0..num).collect();
                order.shuffle(&mut self.rng);
                self.fill(bench, &order, bench == "fillrandom")
            }
            "readrandom" => {
                let keys = self.random_keys(num);
                let store = self.store(false);
                let cpu_before = thread_cpu_secs();
                let start = Instant::now();
                let found = keys.iter().filter(|k| store.get(k)).count();
                let secs = start.elapsed().as_secs_f64();
                // Time on the CPU, unlike wall time, leaves out the other
                // tenants' turns on a shared machine.
                let cpu_micros = (thread_cpu_secs() - cpu_before) * 1e6 / num.max(1) as f64;
                self.report(
                    bench,
                    num,
                    secs,
                    &format!(",\"found\":{found},\"reader_cpu_micros_per_op\":{cpu_micros:.3}"),
                )
            }
            "readseq" => {
                let store = self.store(false);
                let start = Instant::now();
                let n = store.scan_all();
                let secs = start.elapsed().as_secs_f64();
                self.report(bench, n, secs, "")
            }
            "seekrandom" => {
                let keys = self.random_keys(num.min(200_000));
                let store = self.store(false);
                let start = Instant::now();
                let found = keys.iter().filter(|k| store.seek(k)).count();
                let secs = start.elapsed().as_secs_f64();
                self.report(
                    bench,
                    keys.len() as u64,
                    secs,
                    &format!(",\"found\":{found}"),
                )
            }
            other => {
                eprintln!("unknown benchmark {other:?}, skipped");
                return None;
            }
        })
    }
}

fn main() {
    let args = Args::parse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let engine_names: Vec<&str> = args.engines.split(',').map(str::trim).collect();
    let benches: Vec<&str> = args.benchmarks.split(',').map(str::trim).collect();
    let mut results: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut fill_cpu: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(301);
    let value: Vec<u8> = (0..args.value_size)
        .map(|_| rng.gen_range(b'a'..=b'z'))
        .collect();
    for round in 0..args.rounds.max(1) {
        for i in 0..engine_names.len() {
            let Some(engine) = engine_names.get((i + round) % engine_names.len()) else {
                continue;
            };
            let mut run = Run {
                args: &args,
                engine,
                dir: root.join(engine),
                store: None,
                rng: rand::rngs::StdRng::seed_from_u64(301),
                value: value.clone(),
                fill_cpu_micros: None,
            };
            for bench in &benches {
                if let Some(ops) = run.bench(bench) {
                    let best = results
                        .entry((engine.to_string(), bench.to_string()))
                        .or_insert(0.0);
                    *best = best.max(ops);
                }
                if let Some(cpu) = run.fill_cpu_micros.take() {
                    let best = fill_cpu
                        .entry((engine.to_string(), bench.to_string()))
                        .or_insert(f64::MAX);
                    *best = best.min(cpu);
                }
            }
        }
    }
    println!();
    print!("{:<12}", "benchmark");
    for engine in &engine_names {
        print!("{:>14}", format!("{engine} ops/s"));
    }
    for peer in engine_names.iter().filter(|e| **e != "strata") {
        print!("{:>16}", format!("strata/{peer}"));
    }
    println!();
    for bench in &benches {
        print!("{bench:<12}");
        let get = |e: &str| results.get(&(e.to_string(), bench.to_string())).copied();
        for engine in &engine_names {
            print!("{:>14.0}", get(engine).unwrap_or(0.0));
        }
        for peer in engine_names.iter().filter(|e| **e != "strata") {
            match (get("strata"), get(peer)) {
                (Some(s), Some(p)) if p > 0.0 => print!("{:>16.2}", s / p),
                _ => print!("{:>16}", "-"),
            }
        }
        println!();
    }
    if fill_cpu.is_empty() {
        return;
    }
    println!();
    print!("{:<12}", "writer CPU");
    for engine in &engine_names {
        print!("{:>14}", format!("{engine} us/op"));
    }
    for peer in engine_names.iter().filter(|e| **e != "strata") {
        print!("{:>16}", format!("{peer}/strata"));
    }
    println!();
    for bench in benches
        .iter()
        .filter(|b| fill_cpu.keys().any(|(_, fb)| fb == *b))
    {
        print!("{bench:<12}");
        let get = |e: &str| fill_cpu.get(&(e.to_string(), bench.to_string())).copied();
        for engine in &engine_names {
            print!("{:>14.2}", get(engine).unwrap_or(0.0));
        }
        for peer in engine_names.iter().filter(|e| **e != "strata") {
            match (get("strata"), get(peer)) {
                (Some(s), Some(p)) if s > 0.0 => print!("{:>16.2}", p / s),
                _ => print!("{:>16}", "-"),
            }
        }
        println!();
    }
}
