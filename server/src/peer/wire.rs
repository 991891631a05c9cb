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
//! # `POST /internal/v1/read`
//!
//! Body: the key bytes. 200 with the record (storage's layout, tombstones
//! included), or 404 if this node holds nothing for the key.
//!
//! # `GET /internal/v1/stream?start=S&end=E[&after=HEX]`
//!
//! The token range `(S, E]` as [`frames`](super::frames); `after` is an
//! engine key in lower-case hex ([`encode_hex`]).

use bytes::Bytes;

use crate::storage::{CodecError, EncodedRecord, Record};

/// Path of the apply route.
pub const APPLY_PATH: &str = "/internal/v1/apply";
/// Path of the read route.
pub const READ_PATH: &str = "/internal/v1/read";
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

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes of a hex string; `None` if it is not hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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
    fn hex_round_trips_and_refuses_junk() {
        let bytes = vec![0, 1, 0xab, 0xff];
        assert_eq!(decode_hex(&encode_hex(&bytes)).unwrap(), bytes);
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
    }
}
