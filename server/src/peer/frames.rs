//! The stream wire format: a body of frames, each checksummed and
//! length-prefixed, decoded incrementally and never trusted.
//!
//! # Frame
//!
//! ```text
//! offset  size  field
//! 0       1     kind: 1 = records, 2 = end
//! 1       4     payload length, u32 BE, at most MAX_PAYLOAD
//! 5       4     crc32 (IEEE) of bytes 0..5 and of the payload, u32 BE
//! 9       len   payload
//! ```
//!
//! # Payload of a `records` frame (kind 1)
//!
//! Zero or more entries, back to back, in engine-key order:
//!
//! ```text
//! 0       4     engine key length k, u32 BE (8 <= k)
//! 4       k     engine key: token(user key) u64 BE ++ user key (storage's layout)
//! 4+k     4     record length r, u32 BE
//! 8+k     r     record (storage's layout: format, version, flags, value)
//! ```
//!
//! # Payload of an `end` frame (kind 2)
//!
//! ```text
//! 0       8     entries sent on this connection, u64 BE
//! ```
//!
//! A stream that stops without an `end` frame was cut: the receiver resumes
//! after the last key it applied. The entry count lets it notice a sender
//! that lost entries between its frames.
//!
//! The checksum covers the header too, so a flipped kind or length is
//! caught; the decoder refuses a length over [`MAX_PAYLOAD`] before
//! buffering it, so a corrupt length cannot make it allocate without bound.

use bytes::Bytes;
use strata_ring::token;

use crate::storage::{CodecError, Record};

/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 9;
/// Largest payload: a frame holds at least one maximal record (1 MiB value
/// plus a 4 KiB key by default) and the sender cuts frames at
/// [`FRAME_TARGET`], so 8 MiB is never reached by a well-behaved sender.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// The sender closes a frame once its payload reaches this size: small
/// enough to keep memory and the loss on a cut low, large enough that
/// framing costs nothing.
pub const FRAME_TARGET: usize = 64 * 1024;

const KIND_RECORDS: u8 = 1;
const KIND_END: u8 = 2;

/// One streamed item: its engine key (token ++ user key) and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Token (u64 BE) ++ user key.
    pub engine_key: Vec<u8>,
    /// The stored record.
    pub record: Record,
}

impl Entry {
    /// The user key (the engine key without its token).
    pub fn user_key(&self) -> &[u8] {
        self.engine_key.get(8..).unwrap_or_default()
    }

    /// The token the engine key starts with.
    pub fn token(&self) -> u64 {
        match self.engine_key.first_chunk::<8>() {
            Some(t) => u64::from_be_bytes(*t),
            None => 0,
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Entries in engine-key order.
    Records(Vec<Entry>),
    /// The sender finished; entries it sent on this connection.
    End {
        /// Entry count.
        entries: u64,
    },
}

/// Why stream bytes are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A kind byte this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A length over [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The checksum does not match.
    #[error("frame checksum mismatch")]
    Checksum,
    /// A payload that ends inside an entry.
    #[error("frame payload truncated inside an entry")]
    Truncated,
    /// An engine key shorter than its token, or whose token is not the
    /// hash of its user key.
    #[error("entry key does not carry its own token")]
    BadKey,
    /// A record that does not decode.
    #[error("entry record: {0}")]
    Record(#[from] CodecError),
    /// An `end` payload that is not 8 bytes.
    #[error("bad end frame")]
    BadEnd,
}

/// Appends entries to a `records` frame under construction.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    payload: Vec<u8>,
    entries: u64,
}

impl FrameBuilder {
    /// Adds one entry (`engine_key` and the stored record bytes as they are).
    pub fn push(&mut self, engine_key: &[u8], record: &[u8]) {
        put_len(&mut self.payload, engine_key.len());
        self.payload.extend_from_slice(engine_key);
        put_len(&mut self.payload, record.len());
        self.payload.extend_from_slice(record);
        self.entries += 1;
    }

    /// Whether the frame should be sent now.
    pub fn is_full(&self) -> bool {
        self.payload.len() >= FRAME_TARGET
    }

    /// Payload bytes in the frame so far.
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Entries in the frame.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The encoded frame; the builder is empty again.
    pub fn take(&mut self) -> Vec<u8> {
        self.entries = 0;
        encode_frame(KIND_RECORDS, &std::mem::take(&mut self.payload))
    }
}

/// The `end` frame for a connection that sent `entries`.
pub fn end_frame(entries: u64) -> Vec<u8> {
    encode_frame(KIND_END, &entries.to_be_bytes())
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Keys and records are bounded by the engine's limits, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(kind);
    put_len(&mut out, payload.len());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Turns a byte stream, fed in pieces of any size, into frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether bytes are buffered that are not yet a whole frame.
    pub fn has_bytes(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some((header, rest)) = self.buf.split_first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let [kind, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        if kind != KIND_RECORDS && kind != KIND_END {
            return Err(FrameError::UnknownKind(kind));
        }
        let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let Some(payload) = rest.get(..len) else {
            return Ok(None);
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind, l0, l1, l2, l3]);
        crc.update(payload);
        if crc.finalize() != u32::from_be_bytes([c0, c1, c2, c3]) {
            return Err(FrameError::Checksum);
        }
        let frame = if kind == KIND_END {
            let entries = payload
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| FrameError::BadEnd)?;
            Frame::End { entries }
        } else {
            Frame::Records(decode_entries(payload)?)
        };
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(frame))
    }
}

fn take_len<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(FrameError::Truncated)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| FrameError::Truncated)?;
    if rest.len() < len {
        return Err(FrameError::Truncated);
    }
    let (field, rest) = rest.split_at(len);
    *bytes = rest;
    Ok(field)
}

fn decode_entries(mut payload: &[u8]) -> Result<Vec<Entry>, FrameError> {
    let mut entries = Vec::new();
    while !payload.is_empty() {
        let key = take_len(&mut payload)?;
        let record = take_len(&mut payload)?;
        let (tok, user_key) = key.split_first_chunk::<8>().ok_or(FrameError::BadKey)?;
        // A key under the wrong token would be stored where no read finds
        // it, and would escape clean-up of its real range.
        if u64::from_be_bytes(*tok) != token(user_key) {
            return Err(FrameError::BadKey);
        }
        entries.push(Entry {
            engine_key: key.to_vec(),
            // A copy: a chunk's buffer is reused for the next frames.
            record: Record::decode(Bytes::copy_from_slice(record))?,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::storage::engine_key;

    fn sample() -> (Vec<Entry>, Vec<u8>) {
        let entries: Vec<Entry> = (0..50)
            .map(|i| Entry {
                engine_key: engine_key(format!("key-{i}").as_bytes()),
                record: if i % 7 == 0 {
                    Record::tombstone(i)
                } else {
                    Record::value(i, vec![i as u8; i as usize])
                },
            })
            .collect();
        let mut builder = FrameBuilder::default();
        let mut bytes = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            builder.push(&e.engine_key, &e.record.encode());
            if i % 20 == 19 {
                bytes.extend(builder.take());
            }
        }
        bytes.extend(builder.take());
        bytes.extend(end_frame(entries.len() as u64));
        (entries, bytes)
    }

    fn decode_all(bytes: &[u8], piece: usize) -> Result<(Vec<Entry>, Option<u64>), FrameError> {
        let mut d = Decoder::default();
        let (mut out, mut end) = (Vec::new(), None);
        for chunk in bytes.chunks(piece) {
            d.push(chunk);
            while let Some(frame) = d.next_frame()? {
                match frame {
                    Frame::Records(e) => out.extend(e),
                    Frame::End { entries } => end = Some(entries),
                }
            }
        }
        Ok((out, end))
    }

    #[test]
    fn frames_round_trip_whatever_the_read_sizes() {
        let (entries, bytes) = sample();
        for piece in [1, 3, 9, 100, bytes.len()] {
            let (got, end) = decode_all(&bytes, piece).unwrap();
            assert_eq!(got, entries, "piece {piece}");
            assert_eq!(end, Some(50));
        }
    }

    #[test]
    fn a_truncated_stream_yields_its_whole_frames_and_no_end() {
        let (entries, bytes) = sample();
        for cut in 0..bytes.len() {
            let (got, end) = decode_all(&bytes[..cut], 7).unwrap();
            assert!(end.is_none());
            assert!(got.len() <= entries.len());
            assert_eq!(got[..], entries[..got.len()]);
        }
    }

    #[test]
    fn every_flipped_byte_is_an_error_not_a_panic_or_a_wrong_entry() {
        let (entries, bytes) = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            // A flipped length can make a frame look longer than the data:
            // then it is only incomplete, never wrong.
            if let Ok((got, end)) = decode_all(&bad, 64) {
                assert!(end.is_none(), "byte {i}");
                assert_eq!(got[..], entries[..got.len()], "byte {i}");
            }
        }
    }

    #[test]
    fn oversized_lengths_and_foreign_keys_are_refused() {
        let mut d = Decoder::default();
        let mut header = vec![KIND_RECORDS];
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        header.extend_from_slice(&[0; 4]);
        d.push(&header);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(u32::MAX as usize)));

        let mut builder = FrameBuilder::default();
        let mut key = engine_key(b"k");
        key[0] ^= 1;
        builder.push(&key, &Record::value(1, b"v".to_vec()).encode());
        let mut d = Decoder::default();
        d.push(&builder.take());
        assert_eq!(d.next_frame(), Err(FrameError::BadKey));
    }
}
