//! The durable hint store: a second `strata_engine::Db` in
//! `<data_dir>/hints/`, its layout, and its bounds.
//!
//! # Keys
//!
//! ```text
//! +--------------+-------------------+-----------------+
//! | id length u8 | target node id    | sequence u64 BE |
//! +--------------+-------------------+-----------------+
//!   offset 0       1..1+len            1+len..9+len
//! ```
//!
//! The length prefix makes `length ++ id` a prefix no other target's keys
//! share, so one target's hints are one contiguous engine range, in arrival
//! order: replay is a prefix scan and dropping a target's hints deletes that
//! range. Sequences are global to the store and never reused while a hint
//! holds them: on open the next one is one past the largest found.
//!
//! # Values
//!
//! ```text
//! +-----------+-------------------------+----------------------------------+
//! | format u8 | stored at: u64 BE, ms   | apply body (`peer::wire`)        |
//! +-----------+-------------------------+----------------------------------+
//!   offset 0    1..9                      9..
//! ```
//!
//! - `format` is [`HINT_FORMAT`] (1); other values are refused.
//! - `stored at` is wall-clock milliseconds since the Unix epoch: a hint
//!   outlives a restart, so its age cannot be a monotonic instant.
//! - The apply body is exactly what the replica call carried (key, then the
//!   record with its version), so delivery sends it as it is and
//!   last-writer-wins makes a second delivery harmless.
//!
//! The engine checksums its WAL records and table blocks; this layer refuses
//! bytes that do not parse, and never panics on them.
//!
//! # Bounds
//!
//! Per target, at most `max_bytes_per_node` bytes (keys and values) are
//! pending; a hint past it is dropped and counted. No hint is stored for a
//! target that this node has seen down for longer than the window, and a
//! hint older than the window expires: by then the target has missed too
//! much for hints to be the way it catches up (Cassandra's
//! `max_hint_window`). A window of zero turns hinting off.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use strata_engine::{Db, Options, WriteBatch, WriteOptions};
use strata_ring::NodeId;

use crate::config::HintLimits;
use crate::metrics::{HintDrop, HintMetrics};
use crate::peer::wire::{decode_apply, WireError};

/// The only hint value format this build reads and writes. Do not change:
/// on disk.
pub(crate) const HINT_FORMAT: u8 = 1;
/// Bytes of a value before the apply body: format, stored-at.
const VALUE_HEADER_LEN: usize = 9;
/// The hint engine's memtable: hints arrive in bursts while a node is down
/// and are read back soon after, so a small one bounds the memory an idle
/// store keeps, and a flush is cheap.
const HINT_WRITE_BUFFER: usize = 8 << 20;

/// Why a hint could not be stored, read or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HintError {
    /// The hint engine failed.
    #[error("hint engine: {0}")]
    Engine(#[from] strata_engine::Error),
    /// A node id longer than a key's length byte can say.
    #[error("target node id of {len} bytes is longer than 255")]
    TargetTooLong {
        /// Its length.
        len: usize,
    },
    /// A key that is not `length ++ id ++ sequence`.
    #[error("hint key of {len} bytes does not parse")]
    BadKey {
        /// Its length.
        len: usize,
    },
    /// A value shorter than its header.
    #[error("hint value is {len} bytes, shorter than its {VALUE_HEADER_LEN}-byte header")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// A format byte this build does not know.
    #[error("unknown hint format {format}")]
    UnknownFormat {
        /// The byte found.
        format: u8,
    },
    /// The apply body inside the value does not parse.
    #[error("hint apply body: {0}")]
    Body(#[from] WireError),
    /// A blocking task running hint engine work failed.
    #[error("hint task: {0}")]
    Task(String),
}

/// One stored hint, read back for delivery. `user_key` and `record` are
/// slices of `body`, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hint {
    /// Its engine key (what deleting it takes).
    pub(crate) key: Vec<u8>,
    /// The apply body it stands for (what a hand-off hints again).
    pub(crate) body: Bytes,
    /// The user key the write is for.
    pub(crate) user_key: Bytes,
    /// The record's stored bytes (what an apply batch carries).
    pub(crate) record: Bytes,
    /// Key and value bytes it holds in the store.
    pub(crate) size: u64,
}

/// What a target has pending, as `/v1/node` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Pending {
    /// Hints.
    pub(crate) hints: u64,
    /// Their key and value bytes.
    pub(crate) bytes: u64,
}

/// What became of a hint offered to [`HintStore::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// It is in the store.
    Kept,
    /// It was not kept, for this reason (counted).
    Dropped(HintDrop),
    /// Hinting is off (a zero window).
    Off,
}

/// The hint engine and what is pending per target. Blocking: call its
/// methods from a blocking context.
#[derive(Debug)]
pub(crate) struct HintStore {
    db: Db,
    limits: HintLimits,
    next_seq: AtomicU64,
    pending: Mutex<BTreeMap<NodeId, Pending>>,
    /// When this node first saw each down member down (ms since the epoch),
    /// for the window's "no new hints" rule.
    down_since: Mutex<HashMap<NodeId, u64>>,
    metrics: HintMetrics,
}

impl HintStore {
    /// Opens (creating if needed) the store in `dir` and counts what each
    /// target has pending. A key that does not parse is deleted with a
    /// warning: it can hold nothing deliverable.
    pub(crate) fn open(
        dir: &Path,
        limits: HintLimits,
        metrics: HintMetrics,
    ) -> Result<Self, HintError> {
        let db = Db::open(dir, Options::default().write_buffer_size(HINT_WRITE_BUFFER))?;
        let mut pending: BTreeMap<NodeId, Pending> = BTreeMap::new();
        let mut max_seq = None;
        let mut bad = WriteBatch::new();
        for item in db.range::<&[u8]>(..) {
            let (key, value) = item?;
            match decode_key(&key) {
                Ok((target, seq)) => {
                    let p = pending.entry(target).or_default();
                    p.hints += 1;
                    p.bytes += size_of(&key, &value);
                    max_seq = max_seq.max(Some(seq));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deleting a hint whose key does not parse");
                    metrics.dropped(HintDrop::corrupt);
                    bad.delete(&key);
                }
            }
        }
        if !bad.is_empty() {
            db.write(bad, &WriteOptions::default())?;
        }
        for (target, p) in &pending {
            metrics.set_pending(target.as_str(), p.bytes);
        }
        Ok(Self {
            db,
            limits,
            next_seq: AtomicU64::new(max_seq.map_or(0, |s| s + 1)),
            pending: Mutex::new(pending),
            down_since: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Stores a hint of `body` for `target` at `now_ms`, within the bounds.
    /// Written as the data engine writes (no fsync: it survives a crash of
    /// the process, as the write it stands for does).
    pub(crate) fn store(
        &self,
        target: &NodeId,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Stored, HintError> {
        if self.limits.window.is_zero() {
            return Ok(Stored::Off);
        }
        let window = millis(self.limits.window);
        let down_for = self
            .down_since
            .lock()
            .get(target)
            .map_or(0, |since| now_ms.saturating_sub(*since));
        if down_for > window {
            self.metrics.dropped(HintDrop::past_window);
            return Ok(Stored::Dropped(HintDrop::past_window));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let key = encode_key(target, seq)?;
        let value = encode_value(now_ms, body);
        let size = size_of(&key, &value);
        {
            // Reserved before the write, so that concurrent stores cannot
            // together pass the bound.
            let mut pending = self.pending.lock();
            let p = pending.entry(target.clone()).or_default();
            if p.bytes + size > self.limits.max_bytes_per_node {
                drop(pending);
                self.metrics.dropped(HintDrop::over_bound);
                return Ok(Stored::Dropped(HintDrop::over_bound));
            }
            p.hints += 1;
            p.bytes += size;
            self.metrics.set_pending(target.as_str(), p.bytes);
        }
        if let Err(e) = self.db.put(&key, &value) {
            self.forget(target, 1, size);
            return Err(e.into());
        }
        self.metrics.stored();
        Ok(Stored::Kept)
    }

    /// `target`'s oldest hints at `now_ms`, taken while their sizes add up
    /// to less than `max_bytes`: so at most `max_bytes` plus one hint, and
    /// at least one hint if any is live. Expired hints met on the way are
    /// deleted and counted; so are hints that do not decode (logged), which
    /// would otherwise hold up the target for ever. With `max_bytes` 0 it
    /// only expires: hints are in arrival order, so the expired ones are
    /// the run before the first that is not.
    ///
    /// With `after` (the last key of a batch just delivered and deleted),
    /// the scan starts past it rather than at the head of the target's
    /// range, which holds the delivered hints' tombstones until compaction:
    /// a backlog of n hints costs n steps to drain, not n²/batch.
    pub(crate) fn oldest(
        &self,
        target: &NodeId,
        after: Option<&[u8]>,
        max_bytes: u64,
        now_ms: u64,
    ) -> Result<Vec<Hint>, HintError> {
        let prefix = target_prefix(target)?;
        let window = millis(self.limits.window);
        let (mut out, mut taken) = (Vec::new(), 0);
        let mut gone = WriteBatch::new();
        let (mut gone_hints, mut gone_bytes) = (0, 0);
        let items = match after {
            Some(after) => self
                .db
                .range::<&[u8]>((Bound::Excluded(after), Bound::Unbounded)),
            None => self.db.prefix(&prefix),
        };
        for item in items {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let size = size_of(&key, &value);
            match decode_value(Bytes::from(value)) {
                Ok(stored) if now_ms.saturating_sub(stored.at_ms) > window => {
                    self.metrics.expired();
                }
                Ok(_) if taken >= max_bytes => break,
                Ok(stored) => {
                    taken += size;
                    out.push(Hint {
                        key,
                        body: stored.body,
                        user_key: stored.user_key,
                        record: stored.record,
                        size,
                    });
                    continue;
                }
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "dropping a hint that does not decode");
                    self.metrics.dropped(HintDrop::corrupt);
                }
            }
            gone.delete(&key);
            gone_hints += 1;
            gone_bytes += size;
        }
        if !gone.is_empty() {
            self.db.write(gone, &WriteOptions::default())?;
            self.forget(target, gone_hints, gone_bytes);
        }
        Ok(out)
    }

    /// Deletes `hints` of `target` once they are delivered.
    pub(crate) fn delivered(&self, target: &NodeId, hints: &[Hint]) -> Result<(), HintError> {
        if hints.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for hint in hints {
            batch.delete(&hint.key);
        }
        self.db.write(batch, &WriteOptions::default())?;
        let n = hints.len() as u64;
        self.forget(target, n, hints.iter().map(|h| h.size).sum());
        self.metrics.delivered(n);
        Ok(())
    }

    /// What each target with hints has pending.
    pub(crate) fn pending(&self) -> BTreeMap<NodeId, Pending> {
        self.pending.lock().clone()
    }

    /// Notes which of `down` (members seen down now) were already down, so
    /// that the window counts from the first time; members not in `down`
    /// are up (or gone) and start afresh.
    pub(crate) fn observe_down<'a>(&self, down: impl Iterator<Item = &'a NodeId>, now_ms: u64) {
        let mut since = self.down_since.lock();
        let mut next = HashMap::new();
        for id in down {
            let first = since.get(id).copied().unwrap_or(now_ms);
            next.insert(id.clone(), first);
        }
        *since = next;
    }

    /// Takes hints off `target`'s count after they left the store.
    fn forget(&self, target: &NodeId, hints: u64, bytes: u64) {
        let mut pending = self.pending.lock();
        if let Some(p) = pending.get_mut(target) {
            p.hints = p.hints.saturating_sub(hints);
            p.bytes = p.bytes.saturating_sub(bytes);
            self.metrics.set_pending(target.as_str(), p.bytes);
            if p.hints == 0 {
                pending.remove(target);
            }
        }
    }
}

/// Now, in wall-clock ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn size_of(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// `length ++ id`: the prefix of every key of `target`.
fn target_prefix(target: &NodeId) -> Result<Vec<u8>, HintError> {
    let id = target.as_str().as_bytes();
    let len = u8::try_from(id.len()).map_err(|_| HintError::TargetTooLong { len: id.len() })?;
    let mut out = Vec::with_capacity(1 + id.len() + 8);
    out.push(len);
    out.extend_from_slice(id);
    Ok(out)
}

fn encode_key(target: &NodeId, seq: u64) -> Result<Vec<u8>, HintError> {
    let mut key = target_prefix(target)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

fn decode_key(key: &[u8]) -> Result<(NodeId, u64), HintError> {
    let bad = HintError::BadKey { len: key.len() };
    let (&len, rest) = key.split_first().ok_or(HintError::BadKey { len: 0 })?;
    let (id, seq) = rest.split_at_checked(usize::from(len)).ok_or(bad)?;
    let seq: [u8; 8] = seq
        .try_into()
        .map_err(|_| HintError::BadKey { len: key.len() })?;
    let id = std::str::from_utf8(id).map_err(|_| HintError::BadKey { len: key.len() })?;
    Ok((NodeId::from(id), u64::from_be_bytes(seq)))
}

fn encode_value(stored_at_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_HEADER_LEN + body.len());
    out.push(HINT_FORMAT);
    out.extend_from_slice(&stored_at_ms.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A stored value, decoded.
#[derive(Debug, PartialEq, Eq)]
struct Value {
    /// When the hint was stored, ms since the Unix epoch.
    at_ms: u64,
    /// The apply body, and its key and record parts (slices of it).
    body: Bytes,
    user_key: Bytes,
    record: Bytes,
}

/// A value, its apply body checked to parse, so that what is delivered is
/// never refused for its bytes.
fn decode_value(value: Bytes) -> Result<Value, HintError> {
    let (header, _) = value
        .split_first_chunk::<VALUE_HEADER_LEN>()
        .ok_or(HintError::TooShort { len: value.len() })?;
    let [format, t0, t1, t2, t3, t4, t5, t6, t7] = *header;
    if format != HINT_FORMAT {
        return Err(HintError::UnknownFormat { format });
    }
    let body = value.slice(VALUE_HEADER_LEN..);
    let (user_key, record) = decode_apply(body.clone())?;
    Ok(Value {
        at_ms: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        body,
        user_key,
        record: record.bytes().clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::peer::wire::encode_apply;
    use crate::storage::Record;

    const HOUR: u64 = 3_600_000;
    /// A byte budget that takes every hint.
    const ALL: u64 = u64::MAX;

    fn bytes_of(hints: &[Hint]) -> u64 {
        hints.iter().map(|h| h.size).sum()
    }

    fn limits(max_bytes_per_node: u64) -> HintLimits {
        HintLimits {
            max_bytes_per_node,
            window: Duration::from_millis(3 * HOUR),
        }
    }

    fn body(i: u32) -> Bytes {
        encode_apply(
            format!("key{i}").as_bytes(),
            &Record::value(u64::from(i), b"value".to_vec()),
        )
    }

    fn open(dir: &Path, max: u64) -> HintStore {
        HintStore::open(dir, limits(max), HintMetrics::default()).unwrap()
    }

    #[test]
    fn keys_and_values_round_trip() {
        let id = NodeId::from("node-7");
        let key = encode_key(&id, 42).unwrap();
        assert_eq!(decode_key(&key).unwrap(), (id.clone(), 42));
        assert!(key.starts_with(&target_prefix(&id).unwrap()));
        // A target whose id extends another's shares no keys with it.
        let longer = encode_key(&NodeId::from("node-77"), 1).unwrap();
        assert!(!longer.starts_with(&target_prefix(&id).unwrap()));
        let b = body(3);
        let got = decode_value(Bytes::from(encode_value(99, &b))).unwrap();
        let (key, record) = decode_apply(b.clone()).unwrap();
        assert_eq!(
            got,
            Value {
                at_ms: 99,
                body: b,
                user_key: key,
                record: record.bytes().clone(),
            }
        );
        assert!(matches!(
            encode_key(&NodeId::from("x".repeat(256)), 0),
            Err(HintError::TargetTooLong { len: 256 })
        ));
    }

    #[test]
    fn corrupt_keys_and_values_are_errors_not_panics() {
        let key = encode_key(&NodeId::from("n1"), 5).unwrap();
        for len in 0..key.len() {
            assert!(
                matches!(decode_key(&key[..len]), Err(HintError::BadKey { .. })),
                "{len}"
            );
        }
        let mut long = key.clone();
        long.push(0);
        assert!(decode_key(&long).is_err());

        let value = encode_value(7, &body(1));
        for len in 0..VALUE_HEADER_LEN {
            assert!(matches!(
                decode_value(Bytes::copy_from_slice(&value[..len])),
                Err(HintError::TooShort { .. })
            ));
        }
        let mut bad = value.clone();
        bad[0] = 9;
        assert!(matches!(
            decode_value(bad.into()),
            Err(HintError::UnknownFormat { format: 9 })
        ));
        // A body cut short, and a record inside it that is not one.
        assert!(matches!(
            decode_value(Bytes::copy_from_slice(&value[..VALUE_HEADER_LEN + 6])),
            Err(HintError::Body(_))
        ));
        let mut bad = value;
        let last = bad.len() - 1;
        bad.truncate(last - 5);
        assert!(matches!(decode_value(bad.into()), Err(HintError::Body(_))));
    }

    #[test]
    fn a_corrupt_stored_hint_is_dropped_and_the_rest_still_deliver() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), u64::MAX);
        let target = NodeId::from("n2");
        for i in 0..3 {
            store.store(&target, &body(i), 1000).unwrap();
        }
        // The middle hint's value replaced by junk under the same key.
        let keys: Vec<Vec<u8>> = store
            .oldest(&target, None, ALL, 1000)
            .unwrap()
            .into_iter()
            .map(|h| h.key)
            .collect();
        store.db.put(&keys[1], b"\x01junk").unwrap();
        let hints = store.oldest(&target, None, ALL, 1000).unwrap();
        assert_eq!(
            hints.iter().map(|h| h.body.clone()).collect::<Vec<_>>(),
            [body(0), body(2)]
        );
        assert_eq!(store.pending()[&target].hints, 2);
        assert!(store.db.get(&keys[1]).unwrap().is_none());
    }

    #[test]
    fn hints_come_back_per_target_in_arrival_order_and_leave_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), u64::MAX);
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        for i in 0..100 {
            let target = if i % 3 == 0 { &a } else { &b };
            assert_eq!(store.store(target, &body(i), 1000).unwrap(), Stored::Kept);
        }
        let of_a: Vec<Bytes> = (0..100).filter(|i| i % 3 == 0).map(body).collect();
        let got = store.oldest(&a, None, ALL, 1000).unwrap();
        assert_eq!(got.iter().map(|h| h.body.clone()).collect::<Vec<_>>(), of_a);
        // The oldest ten's bytes, oldest first; a budget one byte short
        // still takes the tenth (it is taken while the sum is under the
        // budget), one byte more takes an eleventh.
        let ten = bytes_of(&got[..10]);
        assert_eq!(store.oldest(&a, None, ten - 1, 1000).unwrap().len(), 10);
        assert_eq!(store.oldest(&a, None, ten + 1, 1000).unwrap().len(), 11);
        let first = store.oldest(&a, None, ten, 1000).unwrap();
        assert_eq!(first, got[..10]);
        store.delivered(&a, &first).unwrap();
        let rest = store.oldest(&a, None, ALL, 1000).unwrap();
        assert_eq!(rest.first().unwrap().body, of_a[10]);
        // Past a key, the next ones; and nothing of another target.
        let three = bytes_of(&rest[5..8]);
        let after = store.oldest(&a, Some(&rest[4].key), three, 1000).unwrap();
        assert_eq!(
            after.iter().map(|h| h.body.clone()).collect::<Vec<_>>(),
            of_a[15..18]
        );
        let last = &rest.last().unwrap().key;
        assert!(store.oldest(&a, Some(last), ALL, 1000).unwrap().is_empty());
        assert_eq!(store.pending()[&a].hints, 24);
        store.delivered(&a, &rest).unwrap();
        assert!(!store.pending().contains_key(&a));
        assert_eq!(store.pending()[&b].hints, 66);
    }

    #[test]
    fn each_target_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let one = size_of(
            &encode_key(&NodeId::from("a"), 0).unwrap(),
            &encode_value(0, &body(0)),
        );
        let store = open(dir.path(), one * 5);
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        for i in 0..5 {
            assert_eq!(store.store(&a, &body(i), 1000).unwrap(), Stored::Kept);
        }
        assert_eq!(
            store.store(&a, &body(5), 1000).unwrap(),
            Stored::Dropped(HintDrop::over_bound)
        );
        // Another target has its own bound.
        assert_eq!(store.store(&b, &body(5), 1000).unwrap(), Stored::Kept);
        assert_eq!(
            store.pending()[&a],
            Pending {
                hints: 5,
                bytes: one * 5
            }
        );
        // Delivery makes room again.
        let hints = store.oldest(&a, None, 1, 1000).unwrap();
        store.delivered(&a, &hints).unwrap();
        assert_eq!(store.store(&a, &body(6), 1000).unwrap(), Stored::Kept);
    }

    #[test]
    fn hints_expire_after_the_window_and_none_are_kept_for_a_target_down_longer() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), u64::MAX);
        let t = NodeId::from("t");
        store.store(&t, &body(0), 0).unwrap();
        store.store(&t, &body(1), HOUR).unwrap();
        // At 3 h 30 min the first is past the window, the second is not.
        let got = store.oldest(&t, None, ALL, 3 * HOUR + HOUR / 2).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, body(1));
        assert_eq!(store.pending()[&t].hints, 1);

        // Seen down from 10 h on: hints are kept for the window's length,
        // then refused; once it is up again they are kept again.
        store.observe_down([&t].into_iter(), 10 * HOUR);
        store.observe_down([&t].into_iter(), 12 * HOUR);
        assert_eq!(store.store(&t, &body(2), 13 * HOUR).unwrap(), Stored::Kept);
        assert_eq!(
            store.store(&t, &body(3), 13 * HOUR + 1).unwrap(),
            Stored::Dropped(HintDrop::past_window)
        );
        store.observe_down(std::iter::empty(), 14 * HOUR);
        assert_eq!(store.store(&t, &body(4), 14 * HOUR).unwrap(), Stored::Kept);
    }

    #[test]
    fn a_zero_window_turns_hinting_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = HintStore::open(
            dir.path(),
            HintLimits {
                max_bytes_per_node: u64::MAX,
                window: Duration::ZERO,
            },
            HintMetrics::default(),
        )
        .unwrap();
        let t = NodeId::from("t");
        assert_eq!(store.store(&t, &body(0), 0).unwrap(), Stored::Off);
        assert!(store.pending().is_empty());
    }

    #[test]
    fn hints_and_their_counts_survive_a_reopen_and_sequences_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        let before = {
            let store = open(dir.path(), u64::MAX);
            for i in 0..50 {
                store
                    .store(if i < 20 { &a } else { &b }, &body(i), 1000)
                    .unwrap();
            }
            let five = bytes_of(&store.oldest(&a, None, ALL, 1000).unwrap()[..5]);
            let first = store.oldest(&a, None, five, 1000).unwrap();
            store.delivered(&a, &first).unwrap();
            store.pending()
        };
        let store = open(dir.path(), u64::MAX);
        assert_eq!(store.pending(), before);
        assert_eq!(store.pending()[&a].hints, 15);
        // A hint stored after the reopen comes after the older ones.
        store.store(&a, &body(99), 2000).unwrap();
        let got = store.oldest(&a, None, ALL, 2000).unwrap();
        assert_eq!(got.first().unwrap().body, body(5));
        assert_eq!(got.last().unwrap().body, body(99));
        assert_eq!(got.len(), 16);
    }
}
