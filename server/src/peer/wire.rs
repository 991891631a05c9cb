//! The node-to-node wire format of replication: the bodies of the
//! `/internal/` calls a coordinator makes, and their paths. The routes that
//! serve them are in `api::internal`; [`frames`](super::frames) is the
//! format of the stream route's body.
//!
//! # `POST /internal/v1/apply`
//!
//! ```text
//! +------------------+-----------+-------------------------------+
//! | key length u32 BE| key bytes | record (storage's layout)     |
//! +------------------+-----------+-------------------------------+
//! ```
//!
//! Merged by last-writer-wins: 204 whether it was newer or stale. The
//! record part is stored as it arrives (no decode-and-re-encode), and a
//! coordinator encodes one body per write for all its replicas, its own
//! included.
//!
//! # `POST /internal/v1/apply-batch`
//!
//! Many applies in one call (hint replay, repair's push-back): the body is
//! [`frames`](super::frames), `records` frames then one `end` frame whose
//! count is the number of entries sent, and nothing after it. Entries may
//! come in any order: each is merged by last-writer-wins on its own. 204
//! once every entry is merged; 400 (and nothing applied) for a body that
//! does not decode whole. A sender closes a batch once it reaches
//! [`BATCH_TARGET`] bytes, so a batch is at most that plus one maximal
//! entry ([`max_batch_body`]).
//!
//! # `POST /internal/v1/read`
//!
//! Body: the key bytes. 200 with the record (storage's layout, tombstones
//! included), or 404 if this node holds nothing for the key.
//!
//! # `POST /internal/v1/read-digest`
//!
//! Body: the key bytes. 200 with the [`RecordDigest`] of the record this
//! node holds (tombstones included), or 404 if it holds nothing:
//!
//! ```text
//! +-------------------+-------------------+
//! | version: u64 BE   | hash: u64 BE      |
//! +-------------------+-------------------+
//!   0..8                8..16
//! ```
//!
//! `version` is the record's; `hash` is xxh3-64 (seed 0) of the record's
//! stored bytes (storage's layout: header and value). Exactly 16 bytes:
//! any other length is refused. A coordinator of a QUORUM or ALL read asks
//! one replica for the record and the others for this: two replicas hold
//! the same record exactly when their digests are equal (up to a 64-bit
//! hash collision between two records of one key and version), and a
//! digest whose version is below a record's belongs to a record that
//! loses to it ([`Record::supersedes`] orders by version first).
//!
//! # `GET /internal/v1/stream?start=S&end=E[&after=HEX]`
//!
//! The token range `(S, E]` as [`frames`](super::frames); `after` is an
//! engine key in lower-case hex.

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use super::frames::{end_frame, Decoder, Entry, Frame, FrameBuilder, FrameError, HEADER_LEN};
use crate::storage::{engine_key, CodecError, EncodedRecord, Record};

/// Path of the apply route.
pub const APPLY_PATH: &str = "/internal/v1/apply";
/// Path of the batched apply route.
pub const APPLY_BATCH_PATH: &str = "/internal/v1/apply-batch";
/// A batch is sent once its body reaches this size: a few milliseconds of
/// engine work on the receiving side, so one batch never holds a replica's
/// write path for long.
pub const BATCH_TARGET: usize = 256 * 1024;
/// Path of the read route.
pub const READ_PATH: &str = "/internal/v1/read";
/// Path of the read-digest route.
pub const READ_DIGEST_PATH: &str = "/internal/v1/read-digest";
/// Bytes of an encoded [`RecordDigest`].
pub const DIGEST_LEN: usize = 16;
/// Path of the stream route.
pub const STREAM_PATH: &str = "/internal/v1/stream";

/// Why an apply body does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than its key length says.
    #[error("apply body truncated: {len} bytes")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The record part is bad.
    #[error("apply record: {0}")]
    Record(#[from] CodecError),
    /// A batch's frames are bad.
    #[error("apply batch: {0}")]
    Frames(#[from] FrameError),
    /// A batch without its `end` frame, with bytes after it, or whose
    /// count is not the entries it holds.
    #[error("apply batch: {0}")]
    Batch(&'static str),
    /// A read-digest answer that is not exactly [`DIGEST_LEN`] bytes.
    #[error("record digest is {len} bytes, not {DIGEST_LEN}")]
    DigestLength {
        /// Bytes present.
        len: usize,
    },
}

/// What identifies a record under last-writer-wins, in 16 bytes: the answer
/// of `POST /internal/v1/read-digest` (layout in the module doc). A replica
/// that holds nothing has no digest (`None` where one is expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordDigest {
    /// The record's version.
    pub version: u64,
    /// xxh3-64 of the record's stored bytes.
    pub hash: u64,
}

impl RecordDigest {
    /// The digest of `record`: hashed as its encoding, header then value,
    /// without building the encoding.
    pub fn of(record: &Record) -> Self {
        let mut hasher = Xxh3::new();
        hasher.update(&record.header());
        hasher.update(record.value.as_deref().unwrap_or_default());
        Self {
            version: record.version,
            hash: hasher.digest(),
        }
    }

    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; DIGEST_LEN] {
        let mut out = [0; DIGEST_LEN];
        let (version, hash) = out.split_at_mut(8);
        version.copy_from_slice(&self.version.to_be_bytes());
        hash.copy_from_slice(&self.hash.to_be_bytes());
        out
    }

    /// Parses [`RecordDigest::encode`]'s output; any other length is an
    /// error.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let wrong = || WireError::DigestLength { len: bytes.len() };
        let (version, hash) = bytes.split_first_chunk::<8>().ok_or_else(wrong)?;
        // Exactly eight more: neither short nor trailing bytes.
        let hash: &[u8; 8] = hash.try_into().map_err(|_| wrong())?;
        Ok(Self {
            version: u64::from_be_bytes(*version),
            hash: u64::from_be_bytes(*hash),
        })
    }
}

/// Encodes an apply body: the one copy of the value a write makes on its
/// way from the client's body to the replicas. Cloning the result shares it.
pub fn encode_apply(key: &[u8], record: &Record) -> Bytes {
    let mut out = Vec::with_capacity(4 + key.len() + record.encoded_len());
    // Keys are bounded by max_key_size (checked on entry, far below 4 GiB).
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    record.encode_into(&mut out);
    Bytes::from(out)
}

/// Decodes an apply body into key and record, both slices of `body`.
pub fn decode_apply(body: Bytes) -> Result<(Bytes, EncodedRecord), WireError> {
    let truncated = WireError::Truncated { len: body.len() };
    let (len, rest) = body.split_first_chunk::<4>().ok_or(truncated.clone())?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| truncated.clone())?;
    if rest.len() < len {
        return Err(truncated);
    }
    let key = body.slice(4..4 + len);
    let record = EncodedRecord::decode(body.slice(4 + len..))?;
    Ok((key, record))
}

/// The largest apply-batch body a node accepts, given the largest apply
/// body (`Limits::apply_body_size`): a full batch plus one maximal entry,
/// their frame headers and the `end` frame.
pub fn max_batch_body(apply_body_size: usize) -> usize {
    BATCH_TARGET + apply_body_size + 16 + 3 * HEADER_LEN + 8
}

/// Builds an apply-batch body.
///
/// ```
/// use strata_server::peer::wire::{decode_apply_batch, ApplyBatch};
/// use strata_server::storage::Record;
///
/// let mut batch = ApplyBatch::default();
/// batch.push(b"k", &Record::value(7, b"v".to_vec()).encode());
/// let entries = decode_apply_batch(&batch.finish()).unwrap();
/// assert_eq!(entries[0].user_key(), b"k");
/// ```
#[derive(Debug, Default)]
pub struct ApplyBatch {
    body: Vec<u8>,
    frame: FrameBuilder,
    entries: u64,
}

impl ApplyBatch {
    /// Adds the stored record bytes `record` of the user key `key`.
    pub fn push(&mut self, key: &[u8], record: &[u8]) {
        self.frame.push(&engine_key(key), record);
        self.entries += 1;
        if self.frame.is_full() {
            self.body.extend(self.frame.take());
        }
    }

    /// Entries added.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Whether the batch reached [`BATCH_TARGET`] and should be sent.
    pub fn is_full(&self) -> bool {
        self.body.len() + self.frame.payload_len() >= BATCH_TARGET
    }

    /// The body to send.
    pub fn finish(mut self) -> Bytes {
        if self.frame.entries() > 0 {
            self.body.extend(self.frame.take());
        }
        self.body.extend(end_frame(self.entries));
        Bytes::from(self.body)
    }
}

/// Decodes a whole apply-batch body; any defect refuses all of it.
pub fn decode_apply_batch(body: &[u8]) -> Result<Vec<Entry>, WireError> {
    let mut decoder = Decoder::default();
    decoder.push(body);
    let mut entries = Vec::new();
    loop {
        match decoder.next_frame()? {
            Some(Frame::Records(more)) => entries.extend(more),
            Some(Frame::End { entries: sent }) => {
                if sent != entries.len() as u64 {
                    return Err(WireError::Batch("end count does not match the entries"));
                }
                if decoder.has_bytes() {
                    return Err(WireError::Batch("bytes after the end frame"));
                }
                return Ok(entries);
            }
            None => return Err(WireError::Batch("no end frame")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn apply_bodies_round_trip() {
        let record = Record::value(42, b"v".to_vec());
        let body = encode_apply(b"key", &record);
        let (key, decoded) = decode_apply(body.clone()).unwrap();
        assert_eq!((&key[..], decoded.record()), (&b"key"[..], &record));
        // The stored bytes are the tail of the body, not a copy of it.
        assert_eq!(decoded.bytes().as_ref(), &body[4 + 3..]);
        assert_eq!(decoded.bytes().as_ptr(), body[4 + 3..].as_ptr());
    }

    #[test]
    fn bad_apply_bodies_are_errors() {
        let body = encode_apply(b"key", &Record::tombstone(1));
        for len in 0..body.len() {
            assert!(decode_apply(body.slice(..len)).is_err(), "len {len}");
        }
        let mut huge = body.to_vec();
        huge.splice(0..4, u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_apply(huge.into()),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn a_digest_hashes_the_stored_bytes_and_round_trips() {
        for record in [
            Record::value(42, b"v".to_vec()),
            Record::value(42, vec![7; 1000]),
            Record::value(42, Vec::new()),
            Record::tombstone(42),
        ] {
            let digest = RecordDigest::of(&record);
            assert_eq!(digest.version, 42);
            assert_eq!(
                digest.hash,
                xxhash_rust::xxh3::xxh3_64(&record.encode()),
                "{record:?}"
            );
            let bytes = digest.encode();
            assert_eq!(bytes[..8], 42u64.to_be_bytes());
            assert_eq!(RecordDigest::decode(&bytes), Ok(digest));
        }
        // Records that differ only past the version differ in the hash.
        let same_version = [
            Record::value(42, b"a".to_vec()),
            Record::value(42, b"b".to_vec()),
            Record::value(42, Vec::new()),
            Record::tombstone(42),
        ];
        for (i, a) in same_version.iter().enumerate() {
            for b in &same_version[i + 1..] {
                assert_ne!(RecordDigest::of(a), RecordDigest::of(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_digest_of_any_other_length_is_refused() {
        let bytes = RecordDigest::of(&Record::value(1, b"v".to_vec())).encode();
        for len in 0..DIGEST_LEN {
            assert_eq!(
                RecordDigest::decode(&bytes[..len]),
                Err(WireError::DigestLength { len }),
                "len {len}"
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            RecordDigest::decode(&long),
            Err(WireError::DigestLength { len: 17 })
        );
    }

    fn sample_batch(n: u64) -> (Vec<(Vec<u8>, Record)>, Bytes) {
        let items: Vec<(Vec<u8>, Record)> = (0..n)
            .map(|i| {
                let record = if i % 5 == 0 {
                    Record::tombstone(i + 1)
                } else {
                    Record::value(i + 1, vec![i as u8; 300])
                };
                (format!("key-{i}").into_bytes(), record)
            })
            .collect();
        let mut batch = ApplyBatch::default();
        for (key, record) in &items {
            batch.push(key, &record.encode());
        }
        (items, batch.finish())
    }

    #[test]
    fn apply_batches_round_trip_across_frames() {
        // 1,000 entries of ~330 bytes span several 64 KiB frames.
        let (items, body) = sample_batch(1000);
        let entries = decode_apply_batch(&body).unwrap();
        let got: Vec<(Vec<u8>, Record)> = entries
            .iter()
            .map(|e| (e.user_key().to_vec(), e.record.clone()))
            .collect();
        assert_eq!(got, items);
        let (_, empty) = sample_batch(0);
        assert!(decode_apply_batch(&empty).unwrap().is_empty());
    }

    #[test]
    fn bad_apply_batches_are_refused_whole() {
        let (_, body) = sample_batch(20);
        for len in 0..body.len() {
            assert!(decode_apply_batch(&body[..len]).is_err(), "len {len}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_apply_batch(&trailing),
            Err(WireError::Batch(_))
        ));
        // An end frame that claims one entry too many.
        let mut wrong = body.to_vec();
        let end = end_frame(21);
        wrong.splice(body.len() - end.len().., end);
        assert!(matches!(
            decode_apply_batch(&wrong),
            Err(WireError::Batch(_))
        ));
        let mut flipped = body.to_vec();
        flipped[40] ^= 1;
        assert!(decode_apply_batch(&flipped).is_err());
    }

    #[test]
    fn a_batch_is_full_at_its_target() {
        let mut batch = ApplyBatch::default();
        let record = Record::value(1, vec![0; 1000]).encode();
        let mut i = 0u32;
        while !batch.is_full() {
            batch.push(&i.to_be_bytes(), &record);
            i += 1;
        }
        let body = batch.finish();
        assert!(body.len() >= BATCH_TARGET && body.len() < BATCH_TARGET + 1100);
        assert!(body.len() <= max_batch_body(1100));
    }
}
