//! The frames of the multiplexed transport, each sealed with a truncated
//! keyed BLAKE3 hash under its direction's session key
//! ([`handshake`](super::handshake)).
//!
//! # Frame
//!
//! ```text
//! offset  size  field
//! 0       4     length of the rest of the frame, u32 BE (25 + payload length)
//! 4       8     request id, u64 BE (a reply carries its request's id)
//! 12      1     kind (below)
//! 13      n     payload
//! 13+n    16    tag: the first 16 bytes of BLAKE3 in keyed mode under the
//!               direction's key of (sequence number u64 BE ++ bytes 4..13+n)
//! ```
//!
//! BLAKE3's keyed mode is a MAC as strong as HMAC-SHA256 and faster (about
//! 1.5x per byte against SHA-NI on the 2-core test machine): a chunk of a
//! file crosses two links at its coordinator, and HMAC-SHA256 of those
//! bytes took a fifth of the coordinator's CPU.
//!
//! The sequence number is the frame's position in its direction of the
//! connection, from 0; it is not sent. So a frame that is altered, dropped,
//! replayed, reordered or moved to another connection or direction fails its
//! tag, and the connection is closed. The tag is also the frame's checksum.
//!
//! # Kinds
//!
//! | kind | name          | payload                                             |
//! |------|---------------|-----------------------------------------------------|
//! | 1    | `apply`       | an apply body (`peer::wire::encode_apply`)          |
//! | 2    | `apply-batch` | an apply-batch body (`peer::wire::ApplyBatch`)      |
//! | 3    | `read`        | the key                                             |
//! | 4    | `read-digest` | the key                                             |
//! | 0x81 | `done`        | empty: the apply or batch is merged                 |
//! | 0x82 | `record`      | the record (storage's layout)                       |
//! | 0x83 | `absent`      | empty: the peer holds nothing for the key           |
//! | 0x84 | `digest`      | the record's digest (`peer::wire::RecordDigest`)    |
//! | 0xff | `refused`     | status u16 BE (the HTTP route's), then a UTF-8 reason |
//!
//! Requests (kinds below 0x80) go from the connecting node to the accepting
//! one, replies the other way. The decoder refuses a length over its limit
//! before buffering the frame, so a corrupt or hostile length cannot make it
//! allocate without bound.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length, id and kind fields.
pub const HEADER_LEN: usize = 13;
/// Bytes of a frame's tag.
pub const TAG_LEN: usize = 16;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Request: one apply body.
    Apply,
    /// Request: one apply-batch body.
    ApplyBatch,
    /// Request: read the record of a key.
    Read,
    /// Request: the digest of the record of a key.
    ReadDigest,
    /// Reply: applied.
    Done,
    /// Reply: the record read.
    Record,
    /// Reply: no record for the key.
    Absent,
    /// Reply: the digest of the record.
    Digest,
    /// Reply: the request was refused (status and reason).
    Refused,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Self::Apply => 1,
            Self::ApplyBatch => 2,
            Self::Read => 3,
            Self::ReadDigest => 4,
            Self::Done => 0x81,
            Self::Record => 0x82,
            Self::Absent => 0x83,
            Self::Digest => 0x84,
            Self::Refused => 0xff,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Apply,
            2 => Self::ApplyBatch,
            3 => Self::Read,
            4 => Self::ReadDigest,
            0x81 => Self::Done,
            0x82 => Self::Record,
            0x83 => Self::Absent,
            0x84 => Self::Digest,
            0xff => Self::Refused,
            _ => return None,
        })
    }

    /// Whether a frame of this kind is a request (else a reply).
    pub fn is_request(self) -> bool {
        self.byte() < 0x80
    }
}

/// One frame, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request it is or answers.
    pub id: u64,
    /// What it is.
    pub kind: Kind,
    /// Its payload.
    pub payload: Bytes,
}

impl Frame {
    /// A `refused` reply to request `id`.
    pub fn refused(id: u64, status: u16, reason: &str) -> Self {
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        payload.put_u16(status);
        payload.put_slice(reason.as_bytes());
        Self {
            id,
            kind: Kind::Refused,
            payload: payload.freeze(),
        }
    }

    /// The status and reason of a `refused` reply.
    pub fn refusal(&self) -> Option<(u16, String)> {
        let (status, reason) = self.payload.split_first_chunk::<2>()?;
        Some((
            u16::from_be_bytes(*status),
            String::from_utf8_lossy(reason).into_owned(),
        ))
    }
}

/// Why bytes are not a frame. Every one closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field is below the smallest frame.
    #[error("frame length {0} is below the minimum {min}", min = TAG_LEN + HEADER_LEN - 4)]
    TooShort(usize),
    /// The length field is over the limit.
    #[error("frame length {len} is over the limit {max}")]
    TooLong {
        /// The length field.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The tag does not verify: altered, replayed, reordered or forged.
    #[error("frame {seq} fails its tag")]
    BadTag {
        /// The frame's sequence number.
        seq: u64,
    },
    /// A kind this build does not know.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
}

/// Seals the frames of one direction: its key and its next sequence number.
pub struct Sealer {
    mac: blake3::Hasher,
    seq: u64,
}

impl Sealer {
    /// A sealer under `key`, from sequence number 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            mac: blake3::Hasher::new_keyed(key),
            seq: 0,
        }
    }

    /// Appends `frame`, sealed, to `out`.
    pub fn seal(&mut self, frame: &Frame, out: &mut BytesMut) {
        let start = out.len();
        let len = HEADER_LEN - 4 + frame.payload.len() + TAG_LEN;
        // Payloads are bounded far below 4 GiB by the peer's limits.
        out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        out.put_u64(frame.id);
        out.put_u8(frame.kind.byte());
        out.put_slice(&frame.payload);
        let tag = tag(
            &self.mac,
            self.seq,
            out.get(start + 4..).unwrap_or_default(),
        );
        out.put_slice(&tag);
        self.seq += 1;
    }
}

/// Opens the frames of one direction.
pub struct Opener {
    mac: blake3::Hasher,
    seq: u64,
    max_payload: usize,
}

impl Opener {
    /// An opener under `key`, from sequence number 0, refusing payloads over
    /// `max_payload`.
    pub fn new(key: &[u8; 32], max_payload: usize) -> Self {
        Self {
            mac: blake3::Hasher::new_keyed(key),
            seq: 0,
            max_payload,
        }
    }

    /// Takes the next whole frame off the front of `buf`, or `None` until
    /// one has arrived. An error leaves the connection unusable.
    pub fn open(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(len) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        let min = HEADER_LEN - 4 + TAG_LEN;
        if len < min {
            return Err(FrameError::TooShort(len));
        }
        let max = self.max_payload.saturating_add(min);
        if len > max {
            return Err(FrameError::TooLong { len, max });
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(4 + len);
        frame.advance(4);
        let body = frame.split_to(len - TAG_LEN);
        let expected = tag(&self.mac, self.seq, &body);
        // Constant time: a forger learns nothing from how fast it fails.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &frame[..])) {
            return Err(FrameError::BadTag { seq: self.seq });
        }
        self.seq += 1;
        let mut body = body.freeze();
        let id = body.get_u64();
        let kind_byte = body.get_u8();
        let kind = Kind::from_byte(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
        Ok(Some(Frame {
            id,
            kind,
            payload: body,
        }))
    }
}

/// The tag of frame `seq` whose id, kind and payload are `body`.
fn tag(mac: &blake3::Hasher, seq: u64, body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = mac.clone();
    mac.update(&seq.to_be_bytes());
    mac.update(body);
    let mut out = [0u8; TAG_LEN];
    mac.finalize_xof().fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn frame(id: u64, kind: Kind, payload: &[u8]) -> Frame {
        Frame {
            id,
            kind,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn sealed(frames: &[Frame]) -> BytesMut {
        let mut sealer = Sealer::new(&KEY);
        let mut out = BytesMut::new();
        for f in frames {
            sealer.seal(f, &mut out);
        }
        out
    }

    fn open_all(buf: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut opener = Opener::new(&KEY, 1024);
        let mut out = Vec::new();
        while let Some(f) = opener.open(buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip_back_to_back_and_byte_by_byte() {
        let frames = vec![
            frame(1, Kind::Apply, b"body"),
            frame(2, Kind::Read, b""),
            Frame::refused(3, 413, "too large"),
        ];
        let mut all = sealed(&frames);
        assert_eq!(open_all(&mut all.clone()), Ok(frames.clone()));
        // Arriving one byte at a time, each frame appears once whole.
        let mut opener = Opener::new(&KEY, 1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while !all.is_empty() {
            buf.put_u8(all.split_to(1)[0]);
            while let Some(f) = opener.open(&mut buf).expect("open") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(got[2].refusal(), Some((413, "too large".into())));
    }

    #[test]
    fn every_flipped_bit_fails_the_tag_or_the_header_checks() {
        let all = sealed(&[frame(9, Kind::ApplyBatch, b"payload bytes")]);
        for byte in 0..all.len() {
            for bit in 0..8 {
                let mut bad = all.clone();
                bad[byte] ^= 1 << bit;
                let opened = open_all(&mut bad);
                assert!(
                    !matches!(&opened, Ok(f) if !f.is_empty()),
                    "flip of bit {bit} of byte {byte} opened: {opened:?}"
                );
            }
        }
    }

    #[test]
    fn replayed_reordered_and_foreign_frames_are_refused() {
        let a = sealed(&[frame(1, Kind::Read, b"a")]);
        let mut twice = a.clone();
        twice.extend_from_slice(&a);
        assert_eq!(open_all(&mut twice), Err(FrameError::BadTag { seq: 1 }));

        let both = sealed(&[frame(1, Kind::Read, b"a"), frame(2, Kind::Read, b"b")]);
        let first_len = a.len();
        let mut swapped = BytesMut::from(&both[first_len..]);
        swapped.extend_from_slice(&both[..first_len]);
        assert_eq!(open_all(&mut swapped), Err(FrameError::BadTag { seq: 0 }));

        let mut other_key = BytesMut::new();
        Sealer::new(&[8; 32]).seal(&frame(1, Kind::Read, b"a"), &mut other_key);
        assert_eq!(open_all(&mut other_key), Err(FrameError::BadTag { seq: 0 }));
    }

    #[test]
    fn lengths_out_of_bounds_are_refused_before_buffering() {
        let mut short = BytesMut::from(&24u32.to_be_bytes()[..]);
        assert_eq!(open_all(&mut short), Err(FrameError::TooShort(24)));
        let mut long = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            open_all(&mut long),
            Err(FrameError::TooLong { .. })
        ));
        let mut big = sealed(&[frame(1, Kind::Apply, &[0; 1025])]);
        assert!(matches!(
            open_all(&mut big),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn an_unknown_kind_is_refused_even_when_sealed() {
        let mut out = sealed(&[frame(1, Kind::Read, b"k")]);
        // Re-seal by hand with kind 0x42 so that only the kind is wrong.
        out[12] = 0x42;
        let body = out[4..out.len() - TAG_LEN].to_vec();
        let t = tag(&blake3::Hasher::new_keyed(&KEY), 0, &body);
        let n = out.len();
        out[n - TAG_LEN..].copy_from_slice(&t);
        assert_eq!(open_all(&mut out), Err(FrameError::UnknownKind(0x42)));
    }

    #[test]
    fn truncated_frames_wait_for_more() {
        let all = sealed(&[frame(1, Kind::Apply, b"body")]);
        for cut in 0..all.len() {
            let mut part = BytesMut::from(&all[..cut]);
            assert_eq!(open_all(&mut part), Ok(vec![]), "cut at {cut}");
        }
    }
}
