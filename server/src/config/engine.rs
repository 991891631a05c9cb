//! The `[engine]` section: the storage engine's knobs for the node's data
//! engine (`<data_dir>/engine/`), as flags (`--engine-*`), variables
//! (`KVNODE_ENGINE_*`) and keys of the TOML file's `[engine]` table.
//!
//! ```toml
//! [engine]
//! wal_sync = "always"          # or "none" (the default)
//! memtable_bytes = 67108864
//! l0_compaction_trigger = 4
//! l0_slowdown_trigger = 8
//! l0_stop_trigger = 12
//! level1_bytes = 268435456
//! table_bytes = 67108864
//! bloom_bits_per_key = 10
//! compression = "lz4"          # "none" (the default), "lz4", "zstd" or "zstd:LEVEL"
//! blob_threshold = 65536       # values this large go to blob files; 0 keeps all in tables
//! ```
//!
//! Each unset knob is the engine's own default ([`strata_engine::Options`]),
//! except `blob_threshold`: the engine keeps every value in its tables by
//! default, and a node separates values of 64 KiB and more, which file
//! chunks (1 MiB) always are, so that compaction moves pointers to them
//! instead of rewriting them at every level.
//! The compaction filter (tombstone GC, `storage`) stays internal, and the
//! hints engine (`<data_dir>/hints/`) keeps the engine's defaults: its load
//! is small and its writes are never a client's answer.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use strata_engine::{Compression, Options};

use super::{invalid, ConfigError};

/// When a write reaches the disk, not only the page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSync {
    /// The WAL is written before a write is acknowledged but not fsynced:
    /// a write survives the process being killed, not the machine losing
    /// power. Replication is what keeps it then (every replica would have
    /// to lose power at once).
    #[default]
    None,
    /// Every write group is fsynced before its writes are acknowledged
    /// (group commit: one fsync for all the writers waiting together).
    Always,
}

/// Data block compression of every level: `none`, `lz4`, `zstd` (level 3)
/// or `zstd:LEVEL` (1..=22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub struct BlockCompression(pub Compression);

impl FromStr for BlockCompression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let codec = match s.split_once(':') {
            None if s == "none" => Compression::None,
            None if s == "lz4" => Compression::Lz4,
            None if s == "zstd" => Compression::Zstd { level: 3 },
            Some(("zstd", level)) => Compression::Zstd {
                level: level
                    .parse()
                    .map_err(|_| format!("zstd level {level:?} is not a number"))?,
            },
            _ => return Err(format!("{s:?}: expected none, lz4, zstd or zstd:LEVEL")),
        };
        Ok(BlockCompression(codec))
    }
}

impl TryFrom<String> for BlockCompression {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for BlockCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            _ => f.write_str("none"),
        }
    }
}

/// The `[engine]` settings, all optional (module doc). Merged and resolved
/// with the rest of [`Settings`](super::Settings).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// When engine writes are fsynced: `none` (page cache; survives a
    /// crash of the process, not of the machine) or `always` (every write
    /// group, before its acknowledgement) [default: none].
    #[arg(
        id = "engine_wal_sync",
        long = "engine-wal-sync",
        env = "KVNODE_ENGINE_WAL_SYNC",
        value_enum
    )]
    pub wal_sync: Option<WalSync>,
    /// Memtable size in bytes at which it is flushed to a table; memory
    /// holds up to three of them [default: 32 MiB].
    #[arg(
        id = "engine_memtable_bytes",
        long = "engine-memtable-bytes",
        env = "KVNODE_ENGINE_MEMTABLE_BYTES"
    )]
    pub memtable_bytes: Option<usize>,
    /// L0 tables that start a compaction into L1 [default: 4].
    #[arg(
        id = "engine_l0_compaction_trigger",
        long = "engine-l0-compaction-trigger",
        env = "KVNODE_ENGINE_L0_COMPACTION_TRIGGER"
    )]
    pub l0_compaction_trigger: Option<usize>,
    /// L0 tables at which writes are slowed down [default: 8].
    #[arg(
        id = "engine_l0_slowdown_trigger",
        long = "engine-l0-slowdown-trigger",
        env = "KVNODE_ENGINE_L0_SLOWDOWN_TRIGGER"
    )]
    pub l0_slowdown_trigger: Option<usize>,
    /// L0 tables at which writes stop until compaction catches up
    /// [default: 12].
    #[arg(
        id = "engine_l0_stop_trigger",
        long = "engine-l0-stop-trigger",
        env = "KVNODE_ENGINE_L0_STOP_TRIGGER"
    )]
    pub l0_stop_trigger: Option<usize>,
    /// Target size of level 1 in bytes; each deeper level is ten times the
    /// one above [default: 256 MiB].
    #[arg(
        id = "engine_level1_bytes",
        long = "engine-level1-bytes",
        env = "KVNODE_ENGINE_LEVEL1_BYTES"
    )]
    pub level1_bytes: Option<u64>,
    /// Size in bytes at which compaction outputs are cut into tables
    /// [default: 64 MiB].
    #[arg(
        id = "engine_table_bytes",
        long = "engine-table-bytes",
        env = "KVNODE_ENGINE_TABLE_BYTES"
    )]
    pub table_bytes: Option<u64>,
    /// Bloom filter bits per key, 1..=30; 10 gives about 1% false
    /// positives [default: 10].
    #[arg(
        id = "engine_bloom_bits_per_key",
        long = "engine-bloom-bits-per-key",
        env = "KVNODE_ENGINE_BLOOM_BITS_PER_KEY"
    )]
    pub bloom_bits_per_key: Option<u32>,
    /// Data block compression of every level: `none`, `lz4`, `zstd` or
    /// `zstd:LEVEL` (1..=22; `zstd` is level 3). Tables already written keep
    /// theirs: each block records its own [default: none].
    #[arg(
        id = "engine_compression",
        long = "engine-compression",
        env = "KVNODE_ENGINE_COMPRESSION"
    )]
    pub compression: Option<BlockCompression>,
    /// Values of at least this many bytes (file chunks among them) are kept
    /// in blob files beside the tables, so that compaction moves a pointer
    /// instead of the value; 0 keeps every value in the tables
    /// [default: 65536].
    #[arg(
        id = "engine_blob_threshold",
        long = "engine-blob-threshold",
        env = "KVNODE_ENGINE_BLOB_THRESHOLD"
    )]
    pub blob_threshold: Option<usize>,
}

/// Lays `$high` over `$low` field by field; the literal names every field,
/// so a knob added above but not here fails to compile.
macro_rules! merge_engine {
    ($high:expr, $low:expr; $($field:ident),* $(,)?) => {{
        let (high, low) = ($high, $low);
        EngineSettings { $($field: high.$field.or(low.$field)),* }
    }};
}

impl EngineSettings {
    /// Each knob of `self`, or of `lower` where `self` leaves it unset.
    #[must_use]
    pub fn or(self, lower: Self) -> Self {
        merge_engine!(self, lower;
            wal_sync,
            memtable_bytes,
            l0_compaction_trigger,
            l0_slowdown_trigger,
            l0_stop_trigger,
            level1_bytes,
            table_bytes,
            bloom_bits_per_key,
            compression,
            blob_threshold,
        )
    }
}

/// Values from this size on go to blob files (module doc).
const DEFAULT_BLOB_THRESHOLD: usize = 64 << 10;

/// Smallest memtable: the engine's own floor.
const MIN_MEMTABLE_BYTES: usize = 64 << 10;
/// Largest memtable: three of them are held in memory, and a larger one
/// only lengthens the WAL replay after a crash.
const MAX_MEMTABLE_BYTES: usize = 4 << 30;
/// Smallest table: the engine's own floor.
const MIN_TABLE_BYTES: u64 = 4 << 10;
/// Most L0 tables before writes stop: every lookup that misses the
/// memtables reads each of them.
const MAX_L0_STOP_TRIGGER: usize = 1000;

/// The resolved `[engine]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// When writes are fsynced.
    pub wal_sync: WalSync,
    /// Memtable flush size.
    pub memtable_bytes: usize,
    /// L0 tables that start a compaction.
    pub l0_compaction_trigger: usize,
    /// L0 tables that slow writers down.
    pub l0_slowdown_trigger: usize,
    /// L0 tables that stop writers.
    pub l0_stop_trigger: usize,
    /// Target size of level 1.
    pub level1_bytes: u64,
    /// Compaction output table size.
    pub table_bytes: u64,
    /// Bloom filter bits per key.
    pub bloom_bits_per_key: u32,
    /// Data block compression of every level.
    pub compression: BlockCompression,
    /// Smallest value kept in a blob file; 0: none is.
    pub blob_threshold: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let engine = Options::default();
        Self {
            wal_sync: WalSync::default(),
            memtable_bytes: engine.write_buffer_size,
            l0_compaction_trigger: engine.level0_compaction_trigger,
            l0_slowdown_trigger: engine.level0_slowdown_trigger,
            l0_stop_trigger: engine.level0_stop_trigger,
            level1_bytes: engine.level1_target_size,
            table_bytes: engine.target_table_size,
            bloom_bits_per_key: engine.bloom_bits_per_key,
            compression: BlockCompression::default(),
            blob_threshold: DEFAULT_BLOB_THRESHOLD,
        }
    }
}

impl EngineConfig {
    /// The defaults with `s` laid over them, each checked, so that a
    /// nonsense value stops the node at start naming its setting rather
    /// than failing inside the engine.
    pub(crate) fn resolve(s: &EngineSettings) -> Result<Self, ConfigError> {
        let d = Self::default();
        let c = Self {
            wal_sync: s.wal_sync.unwrap_or(d.wal_sync),
            memtable_bytes: s.memtable_bytes.unwrap_or(d.memtable_bytes),
            l0_compaction_trigger: s.l0_compaction_trigger.unwrap_or(d.l0_compaction_trigger),
            l0_slowdown_trigger: s.l0_slowdown_trigger.unwrap_or(d.l0_slowdown_trigger),
            l0_stop_trigger: s.l0_stop_trigger.unwrap_or(d.l0_stop_trigger),
            level1_bytes: s.level1_bytes.unwrap_or(d.level1_bytes),
            table_bytes: s.table_bytes.unwrap_or(d.table_bytes),
            bloom_bits_per_key: s.bloom_bits_per_key.unwrap_or(d.bloom_bits_per_key),
            compression: s.compression.unwrap_or(d.compression),
            blob_threshold: s.blob_threshold.unwrap_or(d.blob_threshold),
        };
        if !(MIN_MEMTABLE_BYTES..=MAX_MEMTABLE_BYTES).contains(&c.memtable_bytes) {
            return invalid("engine.memtable_bytes", "must be 64 KiB..=4 GiB");
        }
        if c.l0_compaction_trigger == 0
            || c.l0_compaction_trigger > c.l0_slowdown_trigger
            || c.l0_slowdown_trigger > c.l0_stop_trigger
            || c.l0_stop_trigger > MAX_L0_STOP_TRIGGER
        {
            return invalid(
                "engine.l0_*_trigger",
                "must satisfy 1 <= l0_compaction_trigger <= l0_slowdown_trigger <= l0_stop_trigger <= 1000",
            );
        }
        if c.table_bytes < MIN_TABLE_BYTES {
            return invalid("engine.table_bytes", "must be at least 4 KiB");
        }
        if c.level1_bytes < c.table_bytes {
            return invalid("engine.level1_bytes", "must be at least engine.table_bytes");
        }
        if !(1..=30).contains(&c.bloom_bits_per_key) {
            return invalid("engine.bloom_bits_per_key", "must be 1..=30");
        }
        if let Compression::Zstd { level } = c.compression.0 {
            if !(1..=22).contains(&level) {
                return invalid("engine.compression", "a zstd level must be 1..=22");
            }
        }
        Ok(c)
    }

    /// The engine's options with these knobs; the rest stay the engine's
    /// defaults.
    pub fn options(&self) -> Options {
        Options::default()
            .write_buffer_size(self.memtable_bytes)
            .level0_compaction_trigger(self.l0_compaction_trigger)
            .level0_slowdown_trigger(self.l0_slowdown_trigger)
            .level0_stop_trigger(self.l0_stop_trigger)
            .level1_target_size(self.level1_bytes)
            .target_table_size(self.table_bytes)
            .bloom_bits_per_key(self.bloom_bits_per_key)
            .compression_per_level(vec![self.compression.0])
            .blob_threshold((self.blob_threshold > 0).then_some(self.blob_threshold))
    }

    /// Whether each engine write is fsynced before it returns.
    pub fn sync(&self) -> bool {
        self.wal_sync == WalSync::Always
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_are_the_engines_and_pass_its_own_checks() {
        let c = EngineConfig::resolve(&EngineSettings::default()).unwrap();
        assert_eq!(c, EngineConfig::default());
        assert!(!c.sync());
        let dir = tempfile::tempdir().unwrap();
        strata_engine::Db::open(dir.path(), c.options()).unwrap();
    }

    #[test]
    fn every_nonsense_value_names_its_setting() {
        let cases: [(EngineSettings, &str); 8] = [
            (
                EngineSettings {
                    memtable_bytes: Some(1000),
                    ..Default::default()
                },
                "engine.memtable_bytes",
            ),
            (
                EngineSettings {
                    l0_compaction_trigger: Some(0),
                    ..Default::default()
                },
                "engine.l0_*_trigger",
            ),
            (
                EngineSettings {
                    l0_slowdown_trigger: Some(20),
                    ..Default::default()
                },
                "engine.l0_*_trigger",
            ),
            (
                EngineSettings {
                    l0_compaction_trigger: Some(10),
                    l0_slowdown_trigger: Some(9),
                    l0_stop_trigger: Some(12),
                    ..Default::default()
                },
                "engine.l0_*_trigger",
            ),
            (
                EngineSettings {
                    table_bytes: Some(100),
                    ..Default::default()
                },
                "engine.table_bytes",
            ),
            (
                EngineSettings {
                    level1_bytes: Some(1 << 20),
                    table_bytes: Some(2 << 20),
                    ..Default::default()
                },
                "engine.level1_bytes",
            ),
            (
                EngineSettings {
                    bloom_bits_per_key: Some(0),
                    ..Default::default()
                },
                "engine.bloom_bits_per_key",
            ),
            (
                EngineSettings {
                    compression: Some("zstd:23".parse().unwrap()),
                    ..Default::default()
                },
                "engine.compression",
            ),
        ];
        for (settings, field) in cases {
            match EngineConfig::resolve(&settings) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{settings:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn compression_spellings_round_trip_and_nonsense_is_refused() {
        for text in ["none", "lz4", "zstd:3", "zstd:19"] {
            assert_eq!(text.parse::<BlockCompression>().unwrap().to_string(), text);
        }
        assert_eq!(
            "zstd".parse::<BlockCompression>().unwrap().0,
            Compression::Zstd { level: 3 }
        );
        for bad in ["", "LZ4", "snappy", "zstd:", "zstd:x", "lz4:3"] {
            assert!(bad.parse::<BlockCompression>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_accepted_config_opens_an_engine() {
        let settings = EngineSettings {
            wal_sync: Some(WalSync::Always),
            memtable_bytes: Some(64 << 10),
            l0_compaction_trigger: Some(2),
            l0_slowdown_trigger: Some(2),
            l0_stop_trigger: Some(3),
            level1_bytes: Some(1 << 20),
            table_bytes: Some(1 << 20),
            bloom_bits_per_key: Some(30),
            compression: Some("zstd:1".parse().unwrap()),
            blob_threshold: Some(0),
        };
        let c = EngineConfig::resolve(&settings).unwrap();
        assert!(c.sync());
        assert_eq!(c.options().blob_threshold, None, "0 keeps values in tables");
        assert_eq!(
            EngineConfig::default().options().blob_threshold,
            Some(64 << 10)
        );
        let dir = tempfile::tempdir().unwrap();
        strata_engine::Db::open(dir.path(), c.options()).unwrap();
    }
}
