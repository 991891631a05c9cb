//! The engine behind the node's key layout: how an item is keyed and encoded
//! inside the node's one `strata_engine::Db`, and the last-writer-wins merge
//! that makes applying a replicated write idempotent and order-independent.
//!
//! # Engine keys
//!
//! ```text
//! +---------------------------+------------------+
//! | token(user key): u64 BE   | user key bytes   |
//! +---------------------------+------------------+
//!   8 bytes                     0.. bytes
//! ```
//!
//! Big-endian tokens sort like the ring, so one token range is one contiguous
//! engine range: streaming, repair and clean-up of a range are range scans.
//!
//! # Stored values (records)
//!
//! ```text
//! +----------+-----------------+---------+-------------------+
//! | format u8| version: u64 BE | flags u8| value bytes       |
//! +----------+-----------------+---------+-------------------+
//!   offset 0   1..9              9         10..
//! ```
//!
//! - `format` is [`RECORD_FORMAT`] (1). Other values are refused.
//! - `version` is a hybrid-logical-clock timestamp (`hlc`).
//! - `flags` bit 0 is the tombstone flag; the other bits must be zero. A
//!   tombstone carries no value bytes.
//!
//! The same bytes travel between nodes (`peer::wire`), so this codec is
//! also the replication wire format. The engine checksums its blocks; this
//! layer only has to refuse bytes that do not parse, and never panic on them.
//!
//! # Merge
//!
//! A record replaces the stored one only if it is newer by
//! [`Record::supersedes`]: higher version, then tombstone over value, then the
//! larger value bytes. The order is total, so every replica that has seen the
//! same set of writes holds the same record whatever the order of arrival.
//!
//! # Tombstone GC
//!
//! A tombstone must stay until every replica has it: a replica that still
//! holds the old value would otherwise hand it back (a read repair or a
//! stream from it would find no tombstone to lose against). So tombstones
//! are purged only once their version's wall-clock time is older than the
//! grace (`--tombstone-grace-ms`, 10 days by default), by an engine
//! compaction filter: no scan, and only as compaction rewrites the tables
//! that hold them (`POST /admin/v1/compact` forces a pass over everything).
//! Purging one over an older value in a deeper table leaves an engine
//! deletion marker, so the value never comes back from the engine itself.
//! The engine counts them as `strata_engine_compaction_filter_removed_total`
//! (the filter removes nothing else).
//!
//! The grace must be longer than the longest time a replica can go without
//! receiving a delete. Hints deliver a missed delete within their window
//! (`--max-hint-window-ms`, 3 h), and the repair scheduler
//! (`--repair-interval`, 1 h per node) reaches every range each cycle; a
//! replica that is down longer than the grace must be rebuilt (wiped and
//! re-joined, or `removenode`d), not brought back with its old data.
//! `config` refuses a grace under an hour. A node whose clock runs ahead
//! purges early by as much.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use strata_engine::{
    CompactionFilter, Db, FilterDecision, Options, Snapshot, WriteBatch, WriteOptions,
};
use strata_ring::token;

use crate::files::index::ManifestIndex;
use crate::hlc;

/// The only record format this build reads and writes. Do not change: on disk.
pub const RECORD_FORMAT: u8 = 1;
/// Bytes before the value: format, version, flags.
pub const RECORD_HEADER_LEN: usize = 10;
/// Tombstone bit of the flags byte. Do not change: on disk.
const FLAG_TOMBSTONE: u8 = 0b0000_0001;
/// Read-compare-write stripes. Enough that unrelated keys rarely wait on each
/// other under a few hundred concurrent writes; each is one small mutex.
const LOCK_STRIPES: usize = 512;

/// One versioned item: a value or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Hybrid-logical-clock timestamp of the write.
    pub version: u64,
    /// `None` is a tombstone (the item was deleted at `version`). Shared,
    /// not owned: a value travels from the request body to the replicas
    /// and back out of a read as slices of the buffers it arrived in.
    pub value: Option<Bytes>,
}

/// A record together with its encoding, both over one buffer. What crosses
/// the network between nodes is exactly what the engine stores, so a
/// replicated write is encoded once by its coordinator and never again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    record: Record,
    bytes: Bytes,
}

impl EncodedRecord {
    /// Checks `bytes` and keeps them; the record's value is a slice of them.
    pub fn decode(bytes: Bytes) -> Result<Self, CodecError> {
        Ok(Self {
            record: Record::decode(bytes.clone())?,
            bytes,
        })
    }

    /// The decoded record.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The decoded record, without its encoding.
    pub fn into_record(self) -> Record {
        self.record
    }
}

impl From<&Record> for EncodedRecord {
    fn from(record: &Record) -> Self {
        Self {
            record: record.clone(),
            bytes: Bytes::from(record.encode()),
        }
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer bytes than the fixed header.
    #[error("record is {len} bytes, shorter than its {RECORD_HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// A format byte this build does not know.
    #[error("unknown record format {format}")]
    UnknownFormat {
        /// The byte found.
        format: u8,
    },
    /// Flag bits this build does not know.
    #[error("unknown record flags {flags:#04x}")]
    UnknownFlags {
        /// The byte found.
        flags: u8,
    },
    /// A tombstone followed by value bytes.
    #[error("tombstone carries {len} value bytes")]
    TombstoneWithValue {
        /// The stray bytes.
        len: usize,
    },
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The engine failed (I/O, corruption, a refused argument).
    #[error("engine: {0}")]
    Engine(#[from] strata_engine::Error),
    /// A stored value does not decode.
    #[error("stored record: {0}")]
    Corrupt(#[from] CodecError),
    /// A blocking task running engine work failed (panicked or was cancelled).
    #[error("engine task: {0}")]
    Task(String),
}

impl Record {
    /// A live value written at `version`.
    pub fn value(version: u64, value: impl Into<Bytes>) -> Self {
        Self {
            version,
            value: Some(value.into()),
        }
    }

    /// A deletion at `version`.
    pub fn tombstone(version: u64) -> Self {
        Self {
            version,
            value: None,
        }
    }

    /// The record's bytes, laid out as the module doc draws them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Length of [`Record::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.value.as_ref().map_or(0, Bytes::len)
    }

    /// Appends the encoding to `out` (for wire formats that embed a record).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header());
        out.extend_from_slice(self.value.as_deref().unwrap_or_default());
    }

    /// The encoding's fixed header (format, version, flags): the encoding is
    /// this followed by the value bytes, so a hash of the encoding can be
    /// taken in two pieces without copying the value next to it.
    pub(crate) fn header(&self) -> [u8; RECORD_HEADER_LEN] {
        let [v0, v1, v2, v3, v4, v5, v6, v7] = self.version.to_be_bytes();
        let flags = if self.value.is_none() {
            FLAG_TOMBSTONE
        } else {
            0
        };
        [RECORD_FORMAT, v0, v1, v2, v3, v4, v5, v6, v7, flags]
    }

    /// Parses [`Record::encode`]'s output; any other bytes are an error.
    /// The value is a slice of `bytes`, not a copy.
    pub fn decode(bytes: Bytes) -> Result<Self, CodecError> {
        match parse(&bytes)? {
            (version, true) => Ok(Self::tombstone(version)),
            (version, false) => Ok(Self::value(version, bytes.slice(RECORD_HEADER_LEN..))),
        }
    }

    /// Whether this record wins over `other` under last-writer-wins. Ties on
    /// the version (two coordinators in the same HLC tick) break on the
    /// tombstone flag and then the value bytes, so all replicas pick the same
    /// winner; an identical record does not supersede itself.
    pub fn supersedes(&self, other: &Record) -> bool {
        self.order_key() > other.order_key()
    }

    fn order_key(&self) -> (u64, bool, &[u8]) {
        (
            self.version,
            self.value.is_none(),
            self.value.as_deref().unwrap_or_default(),
        )
    }
}

/// Checks `bytes` as [`Record::decode`] does, without copying: the
/// version, and whether the record is a tombstone.
fn parse(bytes: &[u8]) -> Result<(u64, bool), CodecError> {
    let (header, value) = bytes
        .split_first_chunk::<RECORD_HEADER_LEN>()
        .ok_or(CodecError::TooShort { len: bytes.len() })?;
    let [format, v0, v1, v2, v3, v4, v5, v6, v7, flags] = *header;
    if format != RECORD_FORMAT {
        return Err(CodecError::UnknownFormat { format });
    }
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(CodecError::UnknownFlags { flags });
    }
    let version = u64::from_be_bytes([v0, v1, v2, v3, v4, v5, v6, v7]);
    let tombstone = flags & FLAG_TOMBSTONE != 0;
    if tombstone && !value.is_empty() {
        return Err(CodecError::TombstoneWithValue { len: value.len() });
    }
    Ok((version, tombstone))
}

/// The compaction filter that purges tombstones past the grace (see
/// "Tombstone GC" in the module docs).
#[derive(Debug)]
struct TombstoneGc {
    grace_ms: u64,
}

impl CompactionFilter for TombstoneGc {
    fn filter(&self, _level: usize, _key: &[u8], value: &[u8]) -> FilterDecision {
        match parse(value) {
            // The clock is read only for tombstones, which are few.
            Ok((version, true)) if self.expired(version, hlc::WallClock::default().now_ms()) => {
                FilterDecision::Remove
            }
            // Bytes that do not parse are kept: reads report them.
            _ => FilterDecision::Keep,
        }
    }

    fn name(&self) -> &str {
        "kvnode tombstone GC"
    }

    /// Tombstones are a header alone, never large enough for a blob file:
    /// reading every blob value back to find none would cost a disk read
    /// per chunk per compaction.
    fn filters_blob_values(&self) -> bool {
        false
    }
}

impl TombstoneGc {
    /// Whether a tombstone at `version` is past the grace at `now_ms`.
    fn expired(&self, version: u64, now_ms: u64) -> bool {
        hlc::ms(version).saturating_add(self.grace_ms) < now_ms
    }
}

/// The read-compare-write stripe of a key's token.
fn stripe(token: u64) -> usize {
    usize::try_from(token % LOCK_STRIPES as u64).unwrap_or_default()
}

/// The engine key of a user key: `token(key)` big-endian, then the key.
pub fn engine_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&token(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// What [`Storage::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record was newer and is now stored.
    Stored,
    /// The stored record was as new or newer; nothing changed.
    Stale,
}

/// One batch of a [`Storage::retain`] pass, done.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batch {
    /// Items this batch examined.
    pub examined: u64,
    /// Bytes (keys and stored records) this batch read.
    pub bytes: u64,
    /// Items this batch deleted.
    pub deleted: u64,
    /// Stored bytes of the items this batch deleted.
    pub deleted_bytes: u64,
    /// Items the pass deleted so far.
    pub total: u64,
}

/// What a sweep does with an item it picked.
enum Doom {
    /// Deletes it from the engine (its range is no longer this node's).
    Remove,
    /// Stores this tombstone over it.
    Tombstone(Record),
}

/// The manifests `db` holds: one scan of the whole engine, when a node
/// opens (see `files::index`).
fn index_manifests(db: &Db) -> Result<ManifestIndex, StorageError> {
    let index = ManifestIndex::default();
    for item in db.snapshot().range::<&[u8]>(..) {
        let (ekey, stored) = item?;
        let key = ekey.get(8..).unwrap_or_default();
        if crate::files::is_manifest_key(key) {
            index.stored(key, &Record::decode(Bytes::from(stored))?);
        }
    }
    Ok(index)
}

/// Why a [`Storage::retain`] pass stopped before the end.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stopped after deleting {deleted} items: {reason}")]
pub struct RetainStopped {
    /// Items deleted before it stopped.
    pub deleted: u64,
    /// Why.
    pub reason: String,
}

/// What a node's engine holds on disk (the load of `kvnode status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskUsage {
    /// Bytes of live tables.
    pub tables: u64,
    /// Bytes of write-ahead logs.
    pub wal: u64,
}

impl DiskUsage {
    /// Tables and logs together.
    pub fn total(self) -> u64 {
        self.tables.saturating_add(self.wal)
    }
}

/// The node's engine, addressed by user keys and merged by last-writer-wins.
/// Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: Db,
    /// How client and replica writes reach the engine (`--engine-wal-sync`).
    write_options: WriteOptions,
    /// Serialises read-compare-write per key stripe, so two concurrent applies
    /// of the same key cannot both read the old record and let the older write
    /// land last.
    stripes: std::sync::Arc<[Mutex<()>]>,
    /// The manifests of files this engine holds, kept current by every
    /// write and deletion below (see `files::index`).
    manifests: Arc<ManifestIndex>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens (creating if needed) the engine in `dir`; compactions purge
    /// tombstones older than `tombstone_grace` (see the module docs).
    pub fn open(dir: &Path, tombstone_grace: Duration) -> Result<Self, StorageError> {
        Self::open_with(
            dir,
            tombstone_grace,
            Options::default(),
            WriteOptions::default(),
        )
    }

    /// [`Storage::open`] with the engine's `options` (the node's `[engine]`
    /// section; the compaction filter is set here) and the options of the
    /// writes of items.
    pub fn open_with(
        dir: &Path,
        tombstone_grace: Duration,
        options: Options,
        write_options: WriteOptions,
    ) -> Result<Self, StorageError> {
        let gc = TombstoneGc {
            grace_ms: u64::try_from(tombstone_grace.as_millis()).unwrap_or(u64::MAX),
        };
        let options = options.compaction_filter(Arc::new(gc));
        let db = Db::open(dir, options)?;
        let report = db.recovery_report();
        if !report.is_clean() {
            // Under the default (absolute consistency) only torn tails get
            // here: the interrupted last appends of a crash.
            tracing::warn!(
                dropped_bytes = report.dropped_bytes(),
                set_aside = ?report.set_aside,
                torn_tails = ?report.torn_tails,
                "engine recovered past damage; files it would not delete are in lost/"
            );
        }
        let stripes = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        let manifests = Arc::new(index_manifests(&db)?);
        Ok(Self {
            db,
            write_options,
            stripes,
            manifests,
        })
    }

    /// The manifests of files this engine holds.
    pub fn manifests(&self) -> &ManifestIndex {
        &self.manifests
    }

    /// The record stored for `key`, tombstones included.
    pub fn read(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        Ok(self.read_encoded(key)?.map(EncodedRecord::into_record))
    }

    /// [`Storage::read`], keeping the stored bytes (to send them on as they
    /// are).
    pub fn read_encoded(&self, key: &[u8]) -> Result<Option<EncodedRecord>, StorageError> {
        match self.db.get(engine_key(key))? {
            Some(bytes) => Ok(Some(EncodedRecord::decode(Bytes::from(bytes))?)),
            None => Ok(None),
        }
    }

    /// Stores `record` for `key` if it supersedes what is stored. Blocks on
    /// the engine's write path: call it from a blocking context.
    pub fn apply(&self, key: &[u8], record: &Record) -> Result<Applied, StorageError> {
        self.apply_encoded(key, &EncodedRecord::from(record))
    }

    /// [`Storage::apply`] of a record already encoded (a replicated write):
    /// its bytes go to the engine as they are.
    pub fn apply_encoded(
        &self,
        key: &[u8],
        record: &EncodedRecord,
    ) -> Result<Applied, StorageError> {
        let ekey = engine_key(key);
        let _guard = self.stripes.get(stripe(token(key))).map(Mutex::lock);
        if !self.supersedes_stored(&ekey, record.record())? {
            return Ok(Applied::Stale);
        }
        // Kind byte and two varint lengths of at most 5 bytes each.
        let mut batch = WriteBatch::with_capacity(11 + ekey.len() + record.bytes().len());
        batch.put(&ekey, record.bytes());
        self.db.write(batch, &self.write_options)?;
        self.manifests.stored(key, record.record());
        Ok(Applied::Stored)
    }

    /// [`Storage::apply_encoded`] of many items as one engine write: one
    /// WAL append and one group commit for the lot, which is what makes a
    /// replica's write path cheap under load. Items may repeat a key; the
    /// newest wins as if they had been applied one by one. Either every
    /// newer item is stored or, on an engine error, none is.
    pub fn apply_encoded_many(&self, items: &[(Bytes, EncodedRecord)]) -> Result<(), StorageError> {
        let mut stripes: Vec<usize> = items.iter().map(|(k, _)| stripe(token(k))).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // In ascending order: every other path holds one stripe at a time,
        // so no two lockers can wait on each other.
        let _guards: Vec<_> = stripes
            .iter()
            .filter_map(|s| self.stripes.get(*s).map(Mutex::lock))
            .collect();
        let mut batch = WriteBatch::new();
        // What this batch already stores per engine key, for repeated keys.
        let mut pending: HashMap<Vec<u8>, (&[u8], &Record)> = HashMap::new();
        for (key, record) in items {
            let ekey = engine_key(key);
            let newer = match pending.get(&ekey) {
                Some((_, earlier)) => record.record().supersedes(earlier),
                None => self.supersedes_stored(&ekey, record.record())?,
            };
            if newer {
                batch.put(&ekey, record.bytes());
                pending.insert(ekey, (key, record.record()));
            }
        }
        if !batch.is_empty() {
            self.db.write(batch, &self.write_options)?;
            for (key, record) in pending.into_values() {
                self.manifests.stored(key, record);
            }
        }
        Ok(())
    }

    /// Whether `record` supersedes what the engine holds under `ekey` (or
    /// it holds nothing). The caller holds the key's stripe.
    fn supersedes_stored(&self, ekey: &[u8], record: &Record) -> Result<bool, StorageError> {
        match self.db.get(ekey)? {
            Some(bytes) => Ok(record.supersedes(&Record::decode(Bytes::from(bytes))?)),
            None => Ok(true),
        }
    }

    /// A consistent view of the whole engine as of now (streaming reads
    /// one); it never blocks writers.
    pub fn snapshot(&self) -> Snapshot {
        self.db.snapshot()
    }

    /// Deletes every item whose token `keep` refuses; returns how many.
    ///
    /// This is not a true range delete (the engine has none): it scans a
    /// snapshot and deletes key by key, so it costs a read of the whole
    /// engine and a tombstone per item, until compaction drops them. Each
    /// delete happens under the key's stripe lock and only if the item is
    /// still the one the snapshot saw: a record that arrived since (a write
    /// for a range this node has started to gain, say) is never deleted by
    /// a pass that began before it.
    ///
    /// After every `batch` items examined, `between` hears how many the
    /// batch deleted and may stop the pass with a reason (the ring changed,
    /// say). Blocks: call it from a blocking context.
    pub fn retain(
        &self,
        keep: impl Fn(u64) -> bool,
        batch: usize,
        between: impl FnMut(Batch) -> Result<(), String>,
    ) -> Result<u64, RetainStopped> {
        self.sweep(
            |ekey, _| {
                let token = ekey
                    .first_chunk::<8>()
                    .map_or(0, |t| u64::from_be_bytes(*t));
                (!keep(token)).then_some(Doom::Remove)
            },
            batch,
            between,
        )
    }

    /// Replaces with a tombstone every live record whose user key starts
    /// with `prefix` and that `doomed` picks; returns how many. As
    /// [`Storage::retain`] does, it scans a snapshot, and a record is
    /// replaced only if it is still the one the snapshot saw (a write that
    /// arrived since is never deleted). The tombstone's version is one past
    /// the record's, so that the record's other copies never come back
    /// over it by repair while any write made since wins. Blocks: call it
    /// from a blocking context.
    pub fn tombstone_where(
        &self,
        prefix: &[u8],
        doomed: impl Fn(&[u8], &Record) -> bool,
        batch: usize,
        between: impl FnMut(Batch) -> Result<(), String>,
    ) -> Result<u64, RetainStopped> {
        self.sweep(
            |ekey, stored| {
                let key = ekey.get(8..)?;
                if !key.starts_with(prefix) {
                    return None;
                }
                let record = Record::decode(Bytes::copy_from_slice(stored)).ok()?;
                if record.value.is_none() || !doomed(key, &record) {
                    return None;
                }
                Some(Doom::Tombstone(Record::tombstone(
                    record.version.saturating_add(1),
                )))
            },
            batch,
            between,
        )
    }

    /// The scan behind [`Storage::retain`] and [`Storage::tombstone_where`]:
    /// `doom` sees each engine key and stored bytes of a snapshot and says
    /// what to do with the item, which is done under the key's stripe lock
    /// only if the item is unchanged since the snapshot.
    fn sweep(
        &self,
        doom: impl Fn(&[u8], &[u8]) -> Option<Doom>,
        batch: usize,
        mut between: impl FnMut(Batch) -> Result<(), String>,
    ) -> Result<u64, RetainStopped> {
        let mut deleted = 0u64;
        let mut in_batch = Batch::default();
        let stopped = |deleted: u64, reason: String| RetainStopped { deleted, reason };
        for item in self.db.snapshot().range::<&[u8]>(..) {
            let (key, seen) = item.map_err(|e| stopped(deleted, e.to_string()))?;
            in_batch.examined += 1;
            in_batch.bytes += (key.len() + seen.len()) as u64;
            if let Some(doom) = doom(&key, &seen) {
                let token = key.first_chunk::<8>().map_or(0, |t| u64::from_be_bytes(*t));
                let _guard = self.stripes.get(stripe(token)).map(Mutex::lock);
                let current = self
                    .db
                    .get(&key)
                    .map_err(|e| stopped(deleted, e.to_string()))?;
                if current.as_deref() == Some(seen.as_slice()) {
                    let user_key = key.get(8..).unwrap_or_default();
                    match doom {
                        Doom::Remove => {
                            self.db
                                .delete(&key)
                                .map_err(|e| stopped(deleted, e.to_string()))?;
                            self.manifests.removed(user_key);
                        }
                        Doom::Tombstone(tombstone) => {
                            let mut write = WriteBatch::new();
                            write.put(&key, tombstone.encode());
                            self.db
                                .write(write, &self.write_options)
                                .map_err(|e| stopped(deleted, e.to_string()))?;
                            self.manifests.stored(user_key, &tombstone);
                        }
                    }
                    deleted += 1;
                    in_batch.deleted += 1;
                    in_batch.deleted_bytes += seen.len() as u64;
                }
            }
            if in_batch.examined >= batch as u64 {
                in_batch.total = deleted;
                between(in_batch).map_err(|reason| stopped(deleted, reason))?;
                in_batch = Batch::default();
            }
        }
        if in_batch.examined > 0 {
            // The last, partial batch is reported; the pass is over, so its
            // answer changes nothing.
            in_batch.total = deleted;
            let _ = between(in_batch);
        }
        Ok(deleted)
    }

    /// The engine's report: tree shape, I/O, stalls, bloom verdicts.
    pub fn stats(&self) -> strata_engine::Stats {
        self.db.stats()
    }

    /// The bytes the engine holds on disk: live tables (from the version
    /// the engine reads through) and write-ahead logs (from the directory,
    /// since a log's size is not in the engine's statistics).
    pub fn disk_usage(&self) -> DiskUsage {
        let tables = self.db.stats().levels.iter().map(|l| l.bytes).sum();
        let wal = std::fs::read_dir(self.db.path())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        DiskUsage { tables, wal }
    }

    /// Why the engine refuses writes, if it does: `retrying: ...` for a full
    /// disk and the like, which clears by itself; `fatal: ...` otherwise.
    pub fn write_error(&self) -> Option<String> {
        match self.db.health() {
            strata_engine::Health::Ok => None,
            degraded => Some(degraded.to_string()),
        }
    }

    /// Makes everything written so far durable in tables (shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        Ok(self.db.flush()?)
    }

    /// Writes a consistent copy of the engine into `dir`, which must not
    /// exist ([`Db::checkpoint`]): every write acknowledged before the call.
    /// Blocks for a memtable flush and the links or copies of the tables.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        Ok(self.db.checkpoint(dir)?)
    }

    /// Compacts the whole engine, purging the tombstones past the grace
    /// on the way. Blocks for as long as it takes to rewrite every table:
    /// call it from a blocking context.
    pub fn compact(&self) -> Result<(), StorageError> {
        Ok(self.db.compact_range::<&[u8]>(..)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// The smallest grace `config` allows without the test-only override.
    const GRACE: Duration = Duration::from_secs(3600);
    const HOUR_MS: u64 = 3_600_000;

    /// An HLC version `ago_ms` before now.
    fn version_ago(ago_ms: u64) -> u64 {
        (hlc::WallClock::default().now_ms() - ago_ms) << 16
    }

    #[test]
    fn records_round_trip() {
        for record in [
            Record::value(0, Vec::new()),
            Record::value(u64::MAX, b"hello".to_vec()),
            Record::value(42 << 16 | 7, vec![0xff; 1000]),
            Record::tombstone(1234),
        ] {
            assert_eq!(Record::decode(record.encode().into()).unwrap(), record);
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let good = Record::value(99, b"v".to_vec()).encode();
        for len in 0..RECORD_HEADER_LEN {
            assert_eq!(
                Record::decode(Bytes::copy_from_slice(&good[..len])),
                Err(CodecError::TooShort { len })
            );
        }
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(
            Record::decode(bad.clone().into()),
            Err(CodecError::UnknownFormat { format: 2 })
        );
        let mut bad = good.clone();
        bad[9] = 0x80;
        assert_eq!(
            Record::decode(bad.clone().into()),
            Err(CodecError::UnknownFlags { flags: 0x80 })
        );
        let mut bad = good;
        bad[9] = FLAG_TOMBSTONE;
        assert_eq!(
            Record::decode(bad.clone().into()),
            Err(CodecError::TombstoneWithValue { len: 1 })
        );
        // Every single-bit flip is refused where the layout can tell (the
        // format byte, the flags), and anywhere else decodes to exactly what
        // the bytes say: never a record that encodes to other bytes. (The
        // engine's block checksums catch flips in the version or value.)
        let good = Record::value(7, b"abc".to_vec()).encode();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                let decoded = Record::decode(b.clone().into());
                match i {
                    0 => assert!(
                        matches!(decoded, Err(CodecError::UnknownFormat { .. })),
                        "{i}.{bit}"
                    ),
                    9 if bit == 0 => {
                        assert_eq!(decoded, Err(CodecError::TombstoneWithValue { len: 3 }))
                    }
                    9 => assert!(
                        matches!(decoded, Err(CodecError::UnknownFlags { .. })),
                        "{i}.{bit}"
                    ),
                    _ => assert_eq!(decoded.unwrap().encode(), b, "{i}.{bit}"),
                }
            }
        }
    }

    #[test]
    fn engine_keys_sort_by_token_then_key() {
        let k = engine_key(b"user:1");
        assert_eq!(&k[..8], &token(b"user:1").to_be_bytes());
        assert_eq!(&k[8..], b"user:1");
        // Byte order of engine keys is token order, then user-key order:
        // one token range is one contiguous engine range.
        let mut keys: Vec<Vec<u8>> = (0..500)
            .map(|i| engine_key(format!("k{i}").as_bytes()))
            .collect();
        keys.sort();
        let by_token: Vec<(u64, &[u8])> = keys.iter().map(|k| (token(&k[8..]), &k[8..])).collect();
        assert!(by_token.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn last_writer_wins_is_a_total_order() {
        let old = Record::value(1, b"z".to_vec());
        let new = Record::value(2, b"a".to_vec());
        assert!(new.supersedes(&old) && !old.supersedes(&new));
        let del = Record::tombstone(2);
        assert!(del.supersedes(&new) && !new.supersedes(&del));
        let tie_a = Record::value(3, b"a".to_vec());
        let tie_b = Record::value(3, b"b".to_vec());
        assert!(tie_b.supersedes(&tie_a) && !tie_a.supersedes(&tie_b));
        assert!(!tie_a.supersedes(&tie_a.clone()));
    }

    #[test]
    fn apply_is_idempotent_and_order_independent() {
        let dir = tempfile::tempdir().unwrap();
        let a = Storage::open(&dir.path().join("a"), GRACE).unwrap();
        let b = Storage::open(&dir.path().join("b"), GRACE).unwrap();
        let writes = [
            Record::value(5, b"five".to_vec()),
            Record::tombstone(7),
            Record::value(6, b"six".to_vec()),
            Record::value(7, b"seven".to_vec()),
        ];
        for w in &writes {
            a.apply(b"k", w).unwrap();
        }
        for w in writes.iter().rev().chain(&writes) {
            b.apply(b"k", w).unwrap();
        }
        let winner = Some(Record::tombstone(7));
        assert_eq!(a.read(b"k").unwrap(), winner);
        assert_eq!(b.read(b"k").unwrap(), winner);
        assert_eq!(a.apply(b"k", &writes[0]).unwrap(), Applied::Stale);
    }

    #[test]
    fn concurrent_applies_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), GRACE).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for v in 0..500u64 {
                        let version = v * 4 + t;
                        s.apply(
                            b"hot",
                            &Record::value(version, version.to_be_bytes().to_vec()),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.read(b"hot").unwrap().unwrap().version, 499 * 4 + 3);
    }

    /// Items stored whose token `accept` accepts.
    fn count(s: &Storage, accept: impl Fn(u64) -> bool) -> u64 {
        let mut n = 0;
        for item in s.db.snapshot().range::<&[u8]>(..) {
            let (key, _) = item.unwrap();
            n += u64::from(accept(u64::from_be_bytes(key[..8].try_into().unwrap())));
        }
        n
    }

    #[test]
    fn retain_deletes_exactly_the_refused_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), GRACE).unwrap();
        for k in 0..2500u32 {
            s.apply(format!("k{k}").as_bytes(), &Record::value(1, b"v".to_vec()))
                .unwrap();
        }
        let keep = |t: u64| t < u64::MAX / 2;
        let kept = count(&s, keep);
        let mut batches = Vec::new();
        let deleted = s
            .retain(keep, 100, |batch| {
                batches.push(batch);
                Ok(())
            })
            .unwrap();
        assert_eq!(batches.len(), 25);
        // What a pass pays the background budget for: every key and record
        // it read (the engine key is 8 + 5 bytes at most here).
        assert_eq!(batches.iter().map(|b| b.examined).sum::<u64>(), 2500);
        let bytes: u64 = batches.iter().map(|b| b.bytes).sum();
        let record_len = Record::value(1, b"v".to_vec()).encoded_len() as u64;
        assert!(bytes > 2500 * (8 + 2 + record_len) && bytes <= 2500 * (8 + 5 + record_len));
        assert_eq!(batches.iter().map(|b| b.deleted).sum::<u64>(), deleted);
        assert_eq!(batches.last().map(|b| b.total), Some(deleted));
        assert_eq!(kept + deleted, 2500);
        assert!(deleted > 0 && kept > 0);
        assert_eq!(count(&s, |_| true), kept);
        for k in 0..2500u32 {
            let key = format!("k{k}");
            assert_eq!(
                s.read(key.as_bytes()).unwrap().is_some(),
                keep(token(key.as_bytes()))
            );
        }
    }

    #[test]
    fn retain_never_deletes_a_record_newer_than_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), GRACE).unwrap();
        for k in 0..200u32 {
            s.apply(
                format!("k{k}").as_bytes(),
                &Record::value(1, b"old".to_vec()),
            )
            .unwrap();
        }
        // Every key is refused, and while the pass runs each key it visits
        // gets a newer record first (as a write arriving mid-pass would).
        let s2 = s.clone();
        let deleted = s
            .retain(
                |t| {
                    for k in 0..200u32 {
                        let key = format!("k{k}");
                        if token(key.as_bytes()) == t {
                            s2.apply(key.as_bytes(), &Record::value(2, b"new".to_vec()))
                                .unwrap();
                        }
                    }
                    false
                },
                64,
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(deleted, 0);
        for k in 0..200u32 {
            let r = s.read(format!("k{k}").as_bytes()).unwrap().unwrap();
            assert_eq!(r.value.as_deref(), Some(&b"new"[..]));
        }
    }

    #[test]
    fn retain_stops_between_batches_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), GRACE).unwrap();
        for k in 0..1000u32 {
            s.apply(format!("k{k}").as_bytes(), &Record::value(1, b"v".to_vec()))
                .unwrap();
        }
        let stopped = s
            .retain(
                |_| false,
                100,
                |b| {
                    assert_eq!(b.deleted, 100);
                    Err("the ring changed".into())
                },
            )
            .unwrap_err();
        assert_eq!(stopped.deleted, 100);
        assert_eq!(stopped.reason, "the ring changed");
        assert_eq!(count(&s, |_| true), 900);
    }

    #[test]
    fn a_corrupt_stored_value_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), GRACE).unwrap();
        s.db.put(engine_key(b"k"), b"junk").unwrap();
        assert!(matches!(s.read(b"k"), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn the_gc_filter_removes_only_tombstones_past_the_grace() {
        let gc = TombstoneGc { grace_ms: HOUR_MS };
        let decide = |record: &Record| gc.filter(1, b"k", &record.encode());
        assert_eq!(
            decide(&Record::tombstone(version_ago(HOUR_MS + 60_000))),
            FilterDecision::Remove
        );
        assert_eq!(
            decide(&Record::tombstone(version_ago(HOUR_MS - 60_000))),
            FilterDecision::Keep
        );
        assert_eq!(
            decide(&Record::value(version_ago(100 * HOUR_MS), b"v".to_vec())),
            FilterDecision::Keep
        );
        // A clock that ran ahead stamped this one in the future.
        assert_eq!(
            decide(&Record::tombstone(
                (hlc::WallClock::default().now_ms() + HOUR_MS) << 16
            )),
            FilterDecision::Keep
        );
        let mut junk = Record::tombstone(0).encode();
        junk[0] = 9;
        assert_eq!(gc.filter(1, b"k", &junk), FilterDecision::Keep);
        assert_eq!(gc.filter(1, b"k", b""), FilterDecision::Keep);
        assert!(gc.expired(
            version_ago(HOUR_MS + 1),
            hlc::WallClock::default().now_ms() + 1
        ));
    }

    #[test]
    fn a_purged_tombstone_does_not_let_the_value_under_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), GRACE).unwrap();
        let keys: Vec<String> = (0..200).map(|k| format!("k{k}")).collect();
        for key in &keys {
            s.apply(
                key.as_bytes(),
                &Record::value(version_ago(3 * HOUR_MS), b"old".to_vec()),
            )
            .unwrap();
        }
        // The values sink into a table below the tombstones that follow.
        s.compact().unwrap();
        let (expired, fresh) = keys.split_at(150);
        for key in expired {
            s.apply(key.as_bytes(), &Record::tombstone(version_ago(2 * HOUR_MS)))
                .unwrap();
        }
        for key in fresh {
            s.apply(key.as_bytes(), &Record::tombstone(version_ago(60_000)))
                .unwrap();
        }
        s.compact().unwrap();
        for key in expired {
            assert_eq!(s.read(key.as_bytes()).unwrap(), None, "{key}");
        }
        for key in fresh {
            assert!(
                s.read(key.as_bytes())
                    .unwrap()
                    .is_some_and(|r| r.value.is_none()),
                "{key} lost its tombstone within the grace"
            );
        }
        assert_eq!(s.stats().compaction_filter_removed, 150);
        assert_eq!(
            count(&s, |_| true),
            50,
            "only the fresh tombstones are left"
        );
        // And so it stays after a reopen, and after another compaction.
        drop(s);
        let s = Storage::open(dir.path(), GRACE).unwrap();
        s.compact().unwrap();
        for key in expired {
            assert_eq!(s.read(key.as_bytes()).unwrap(), None, "{key}");
        }
        for key in fresh {
            assert!(s.read(key.as_bytes()).unwrap().is_some(), "{key}");
        }
    }
}
