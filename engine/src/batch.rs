//! Write batches: the unit of atomicity, and the payload of one WAL record.
//!
//! Encoding (also the WAL record body, so it is fixed forever):
//!
//! ```text
//! +-----------------+-------------+------------------------------------------+
//! | sequence u64 LE | count u32 LE| count x record                           |
//! +-----------------+-------------+------------------------------------------+
//! record = kind u8 | varint key_len | key | (kind == Value: varint val_len | value)
//!        | (kind == RangeDeletion: varint end_len | end; the key is the start)
//!        | (kind == BlobIndex: varint len | a `blob::BlobRef` into the WAL's blob
//!           file; only in the WAL, where the leader moved a large value)
//! ```
//!
//! `sequence` is the sequence of the first record; record `i` gets `sequence + i`.

use crate::coding::{get_length_prefixed, get_u32, get_u64, get_u8, put_length_prefixed};
use crate::error::DecodeError;
use crate::key::ValueKind;

const HEADER_LEN: usize = 12;

/// A set of puts, deletes and range deletes applied atomically by [`Db::write`](crate::Db::write).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let db = strata_engine::Db::open(dir.path(), Default::default())?;
/// use strata_engine::{WriteBatch, WriteOptions};
/// let mut batch = WriteBatch::new();
/// batch.put(b"a", b"1");
/// batch.delete(b"b");
/// db.write(batch, &WriteOptions { sync: true })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WriteBatch {
    rep: Vec<u8>,
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("count", &self.len())
            .field("bytes", &self.rep.len())
            .finish()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch {
            rep: vec![0; HEADER_LEN],
        }
    }

    /// An empty batch with room for `bytes` of encoded records, so that
    /// filling it does not reallocate.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut rep = Vec::with_capacity(HEADER_LEN + bytes);
        rep.resize(HEADER_LEN, 0);
        WriteBatch { rep }
    }

    /// Adds a put of `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.push(ValueKind::Value, key.as_ref(), value.as_ref());
    }

    /// Adds a deletion of `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.push(ValueKind::Deletion, key.as_ref(), &[]);
    }

    /// Adds a deletion of every key in `start..end` (see
    /// [`Db::delete_range`](crate::Db::delete_range)).
    pub fn delete_range(&mut self, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) {
        self.push(ValueKind::RangeDeletion, start.as_ref(), end.as_ref());
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.count() as usize
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Removes every operation, keeping the allocation.
    pub fn clear(&mut self) {
        self.rep.clear();
        self.rep.resize(HEADER_LEN, 0);
    }

    /// Size of the encoded batch in bytes.
    pub fn approximate_size(&self) -> usize {
        self.rep.len()
    }

    /// Adds `record` with its kind, key and value (its sequence is the batch's).
    pub(crate) fn push_record(&mut self, record: &Record<'_>) {
        self.push(record.kind, record.key, record.value);
    }

    fn push(&mut self, kind: ValueKind, key: &[u8], value: &[u8]) {
        self.rep.push(kind as u8);
        put_length_prefixed(&mut self.rep, key);
        if kind != ValueKind::Deletion {
            put_length_prefixed(&mut self.rep, value);
        }
        self.set_count(self.count() + 1);
    }

    pub(crate) fn count(&self) -> u32 {
        crate::coding::u32_at(&self.rep, 8).unwrap_or(0)
    }

    fn set_count(&mut self, n: u32) {
        if let Some(slot) = self.rep.get_mut(8..HEADER_LEN) {
            slot.copy_from_slice(&n.to_le_bytes());
        }
    }

    pub(crate) fn set_sequence(&mut self, seq: u64) {
        if let Some(slot) = self.rep.get_mut(..8) {
            slot.copy_from_slice(&seq.to_le_bytes());
        }
    }

    /// Appends every record of `other` (group commit merges followers' batches
    /// into the leader's so that one WAL record carries the whole group).
    pub(crate) fn append(&mut self, other: &WriteBatch) {
        self.rep
            .extend_from_slice(other.rep.get(HEADER_LEN..).unwrap_or_default());
        self.set_count(self.count() + other.count());
    }

    /// The encoded form, as written to the WAL.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.rep
    }

    /// Every key in the batch, for size validation.
    pub(crate) fn records(&self) -> Result<BatchRecords<'_>, DecodeError> {
        BatchRecords::decode(&self.rep)
    }
}

/// One decoded operation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) seq: u64,
    pub(crate) kind: ValueKind,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

/// A validating decoder over an encoded batch (from a WAL record or a caller).
pub(crate) struct BatchRecords<'a> {
    rest: &'a [u8],
    next_seq: u64,
    remaining: u32,
}

impl<'a> BatchRecords<'a> {
    pub(crate) fn decode(rep: &'a [u8]) -> Result<Self, DecodeError> {
        let mut src = rep;
        let seq = get_u64(&mut src)?;
        let count = get_u32(&mut src)?;
        Ok(BatchRecords {
            rest: src,
            next_seq: seq,
            remaining: count,
        })
    }

    fn decode_one(&mut self) -> Result<Record<'a>, DecodeError> {
        let kind = ValueKind::try_from(get_u8(&mut self.rest)?)?;
        let key = get_length_prefixed(&mut self.rest)?;
        let value = match kind {
            ValueKind::Value | ValueKind::RangeDeletion | ValueKind::BlobIndex => {
                get_length_prefixed(&mut self.rest)?
            }
            ValueKind::Deletion => &[],
        };
        let seq = self.next_seq;
        self.next_seq = self
            .next_seq
            .checked_add(1)
            .ok_or(DecodeError("sequence overflow in batch"))?;
        Ok(Record {
            seq,
            kind,
            key,
            value,
        })
    }
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if !self.rest.is_empty() {
                self.rest = &[];
                return Some(Err(DecodeError("trailing bytes after the batch's records")));
            }
            return None;
        }
        self.remaining -= 1;
        let record = self.decode_one();
        if record.is_err() {
            self.remaining = 0;
            self.rest = &[];
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = (u64, ValueKind, Vec<u8>, Vec<u8>);

    fn decode_all(rep: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
        BatchRecords::decode(rep)?
            .map(|r| r.map(|r| (r.seq, r.kind, r.key.to_vec(), r.value.to_vec())))
            .collect()
    }

    #[test]
    fn round_trip_and_merge() {
        let mut a = WriteBatch::new();
        a.put(b"k1", b"v1");
        a.delete(b"k2");
        let mut b = WriteBatch::new();
        b.put(b"", b"");
        b.delete_range(b"a", b"m");
        a.append(&b);
        a.set_sequence(100);
        assert_eq!(a.len(), 4);
        let recs = decode_all(a.encoded()).unwrap();
        assert_eq!(
            recs,
            vec![
                (100, ValueKind::Value, b"k1".to_vec(), b"v1".to_vec()),
                (101, ValueKind::Deletion, b"k2".to_vec(), vec![]),
                (102, ValueKind::Value, vec![], vec![]),
                (103, ValueKind::RangeDeletion, b"a".to_vec(), b"m".to_vec()),
            ]
        );
        a.clear();
        assert!(a.is_empty());
        assert_eq!(decode_all(a.encoded()).unwrap(), vec![]);
    }

    #[test]
    fn truncation_and_bad_kind_are_errors() {
        let mut a = WriteBatch::new();
        a.put(b"key", b"value");
        a.delete(b"gone");
        let rep = a.encoded().to_vec();
        for cut in 0..rep.len() {
            assert!(decode_all(&rep[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = rep.clone();
        bad[HEADER_LEN] = 9;
        assert!(decode_all(&bad).is_err());
        let mut extra = rep;
        extra.push(0);
        assert!(decode_all(&extra).is_err());
    }
}
