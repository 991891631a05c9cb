//! The engines under test behind one small trait, each opened with the
//! comparable settings the crate docs list.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the workloads need from an engine. Errors abort the run: a
/// benchmark that silently skipped failed operations would lie.
pub trait Store {
    fn put(&self, key: &[u8], value: &[u8]);
    /// True if the key was found.
    fn get(&self, key: &[u8]) -> bool;
    /// Entries seen by one full forward scan.
    fn scan_all(&self) -> u64;
    /// Positions at the first key at or after `key`; true if there is one.
    fn seek(&self, key: &[u8]) -> bool;
    /// Flushes the memtable and waits for background compaction to finish.
    fn settle(&self);
    /// Bytes written so far through a mapping rather than `write(2)`, which
    /// `wchar` does not see: strata's mapped WAL.
    fn mapped_bytes_written(&self) -> u64 {
        0
    }
    /// The engine's own description of its tree, level by level, where it
    /// has one (`--levels`).
    fn levels(&self) -> Option<String> {
        None
    }
}

#[cfg(feature = "rocksdb")]
pub const DEFAULT_ENGINES: &str = "strata,fjall,rocksdb";
#[cfg(not(feature = "rocksdb"))]
pub const DEFAULT_ENGINES: &str = "strata,fjall";

/// Data block compression, the same for every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    None,
    Lz4,
    /// Zstandard at level 3 (zstd's default); fjall 3 has none, so leave it
    /// out with `--engines strata,rocksdb`.
    Zstd,
}

/// The settings every engine is opened with.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Memtable size in bytes.
    pub write_buffer: usize,
    pub codec: Codec,
    /// Values of at least this many bytes go to blob files: strata's
    /// `blob_threshold`, fjall's KV separation, RocksDB's BlobDB
    /// (`enable_blob_files`, `min_blob_size`). `None`: all inline.
    pub blob_threshold: Option<usize>,
    pub mmap_writes: MmapWrites,
}

/// Whether logs are appended through a shared mapping instead of `write`:
/// strata's `mapped_wal` (its default) and RocksDB's `allow_mmap_writes`
/// (off by default; it maps its tables' writes too). fjall has no such
/// setting. Either way a write survives the process's death once
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MmapWrites {
    /// Each engine's own default.
    Default,
    On,
    Off,
}

pub fn open(
    engine: &str,
    dir: &Path,
    s: Settings,
) -> Result<Box<dyn Store>, Box<dyn std::error::Error>> {
    Ok(match engine {
        "strata" => Box::new(Strata {
            db: strata_engine::Db::open(
                dir,
                strata_engine::Options::default()
                    .write_buffer_size(s.write_buffer)
                    .blob_threshold(s.blob_threshold)
                    .mapped_wal(s.mmap_writes != MmapWrites::Off)
                    .compression_per_level(vec![match s.codec {
                        Codec::None => strata_engine::Compression::None,
                        Codec::Lz4 => strata_engine::Compression::Lz4,
                        Codec::Zstd => strata_engine::Compression::Zstd { level: 3 },
                    }]),
            )?,
            mapped: s.mmap_writes != MmapWrites::Off,
            blob_threshold: s.blob_threshold,
            blob_value_bytes: AtomicU64::new(0),
        }),
        "fjall" => Box::new(Fjall::open(dir, s)?),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rocks::open(dir, s)?),
        other => {
            return Err(
                format!("unknown engine {other:?} (rocksdb needs --features rocksdb)").into(),
            )
        }
    })
}

/// strata, with what its WAL wrote through the mapping.
pub struct Strata {
    db: strata_engine::Db,
    mapped: bool,
    blob_threshold: Option<usize>,
    /// Values put into blob files as they were written: counted in the
    /// engine's `wal_bytes_written`, but written with `write(2)`.
    blob_value_bytes: AtomicU64,
}

impl Store for Strata {
    fn put(&self, key: &[u8], value: &[u8]) {
        if self.blob_threshold.is_some_and(|t| value.len() >= t) {
            self.blob_value_bytes
                .fetch_add(value.len() as u64, Ordering::Relaxed);
        }
        self.db.put(key, value).expect("strata put");
    }

    fn get(&self, key: &[u8]) -> bool {
        self.db.get(key).expect("strata get").is_some()
    }

    fn scan_all(&self) -> u64 {
        // Every entry is decoded (and its error checked), as a reader would.
        self.db.range::<&[u8]>(..).fold(0, |n, kv| {
            kv.expect("strata scan");
            n + 1
        })
    }

    fn seek(&self, key: &[u8]) -> bool {
        self.db
            .range(key..)
            .next()
            .transpose()
            .expect("strata seek")
            .is_some()
    }

    fn settle(&self) {
        self.db.wait_for_compactions().expect("strata compaction");
    }

    fn levels(&self) -> Option<String> {
        Some(self.db.stats().to_string())
    }

    fn mapped_bytes_written(&self) -> u64 {
        if !self.mapped {
            return 0;
        }
        let wal = self.db.stats().wal_bytes_written;
        wal.saturating_sub(self.blob_value_bytes.load(Ordering::Relaxed))
    }
}

pub struct Fjall {
    db: fjall::Database,
    tree: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path, s: Settings) -> Result<Self, Box<dyn std::error::Error>> {
        use fjall::config::{
            BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry,
        };
        let data = match s.codec {
            Codec::None => CompressionPolicy::disabled(),
            Codec::Lz4 => CompressionPolicy::all(fjall::CompressionType::Lz4),
            Codec::Zstd => {
                return Err("fjall 3 has no zstd; use --engines strata,rocksdb".into());
            }
        };
        let db = fjall::Database::builder(dir).open()?;
        let tree = db.keyspace("bench", || {
            fjall::KeyspaceCreateOptions::default()
                .max_memtable_size(s.write_buffer as u64)
                .with_kv_separation(s.blob_threshold.map(|t| {
                    fjall::KvSeparationOptions::default()
                        .separation_threshold(u32::try_from(t).unwrap_or(u32::MAX))
                }))
                .data_block_compression_policy(data)
                .index_block_compression_policy(CompressionPolicy::disabled())
                .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                    BloomConstructionPolicy::BitsPerKey(10.0),
                )))
        })?;
        Ok(Fjall { db, tree })
    }
}

impl Store for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.tree.insert(key, value).expect("fjall put");
    }

    fn get(&self, key: &[u8]) -> bool {
        self.tree.get(key).expect("fjall get").is_some()
    }

    fn scan_all(&self) -> u64 {
        self.tree.iter().fold(0, |n, kv| {
            kv.into_inner().expect("fjall scan");
            n + 1
        })
    }

    fn seek(&self, key: &[u8]) -> bool {
        self.tree
            .range(key..)
            .next()
            .map(|kv| kv.into_inner().expect("fjall seek"))
            .is_some()
    }

    fn settle(&self) {
        self.tree.rotate_memtable_and_wait().expect("fjall flush");
        // fjall has no "wait for compaction"; poll until it is idle twice in a row.
        let mut idle = 0;
        while idle < 2 {
            std::thread::sleep(Duration::from_millis(100));
            let busy = self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0;
            idle = if busy { 0 } else { idle + 1 };
        }
    }
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use std::path::Path;

    use rocksdb::{BlockBasedOptions, DBCompressionType, Options, WaitForCompactOptions, DB};

    pub fn open(dir: &Path, s: super::Settings) -> Result<DB, rocksdb::Error> {
        let compression = match s.codec {
            super::Codec::None => DBCompressionType::None,
            super::Codec::Lz4 => DBCompressionType::Lz4,
            super::Codec::Zstd => DBCompressionType::Zstd,
        };
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_size(4096);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_size(s.write_buffer);
        if let Some(threshold) = s.blob_threshold {
            opts.set_enable_blob_files(true);
            opts.set_min_blob_size(threshold as u64);
            opts.set_enable_blob_gc(true);
        }
        opts.set_compression_type(compression);
        opts.set_bottommost_compression_type(compression);
        opts.set_block_based_table_factory(&table);
        if s.mmap_writes == super::MmapWrites::On {
            opts.set_allow_mmap_writes(true);
        }
        DB::open(&opts, dir)
    }

    impl super::Store for DB {
        fn put(&self, key: &[u8], value: &[u8]) {
            DB::put(self, key, value).expect("rocksdb put");
        }

        fn get(&self, key: &[u8]) -> bool {
            self.get_pinned(key).expect("rocksdb get").is_some()
        }

        fn scan_all(&self) -> u64 {
            let mut it = self.raw_iterator();
            it.seek_to_first();
            let mut n = 0;
            while it.valid() {
                std::hint::black_box((it.key(), it.value()));
                n += 1;
                it.next();
            }
            it.status().expect("rocksdb scan");
            n
        }

        fn seek(&self, key: &[u8]) -> bool {
            let mut it = self.raw_iterator();
            it.seek(key);
            let found = it.valid() && std::hint::black_box(it.value()).is_some();
            it.status().expect("rocksdb seek");
            found
        }

        fn settle(&self) {
            self.flush().expect("rocksdb flush");
            let mut opts = WaitForCompactOptions::default();
            opts.set_flush(true);
            self.wait_for_compact(&opts).expect("rocksdb compaction");
        }

        fn levels(&self) -> Option<String> {
            self.property_value("rocksdb.levelstats").ok().flatten()
        }
    }
}
