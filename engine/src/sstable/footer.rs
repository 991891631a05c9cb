//! Block handles, block trailers and the table footer.
//!
//! ```text
//! block handle = offset u64 LE | size u32 LE                        (12 bytes)
//! trailer      = compression u8 (0 = none, 1 = LZ4 block, 2 = zstd frame)
//!                | masked crc32 u32 LE
//!                                                                   (5 bytes)
//! footer       = filter handle | properties handle | index handle
//!                | format version u32 LE | magic u64 LE             (48 bytes)
//! ```
//!
//! Format versions (what the index block holds; see the module docs of
//! `sstable`): 1, written until 2026-12, and 2, written since. Both read.

use super::block_buf::BlockBuf;
use crate::coding::{get_u32, get_u64};
use crate::error::DecodeError;
use crate::wal::mask_crc;

pub(crate) const HANDLE_LEN: usize = 12;
pub(crate) const TRAILER_LEN: usize = 5;
pub(crate) const FOOTER_LEN: usize = 3 * HANDLE_LEN + 4 + 8;
/// "STRATA01" read as a little-endian u64. Do not change: on disk.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"STRATA01");
/// The version written. Do not change what a version means: on disk.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Tables of this version: the index block is stored uncompressed, with a
/// restart at every entry, and each value is a 12-byte [`BlockHandle`].
pub(crate) const FORMAT_V1: u32 = 1;
/// Trailer byte of a block stored as is. Do not change: on disk.
pub(crate) const NO_COMPRESSION: u8 = 0;
/// Trailer byte of an LZ4 block: the uncompressed length as u32 LE, then the
/// raw LZ4 block (`lz4_flex::compress_prepend_size`). Do not change: on disk.
pub(crate) const LZ4_COMPRESSION: u8 = 1;
/// Trailer byte of a Zstandard block: the uncompressed length as u32 LE,
/// then one zstd frame. Do not change: on disk.
pub(crate) const ZSTD_COMPRESSION: u8 = 2;

/// Where a block lives in the file (excluding its trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    pub(crate) offset: u64,
    pub(crate) size: u32,
}

impl BlockHandle {
    pub(crate) fn encode_to(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(&self.offset.to_le_bytes());
        dst.extend_from_slice(&self.size.to_le_bytes());
    }

    pub(crate) fn decode_from(src: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(BlockHandle {
            offset: get_u64(src)?,
            size: get_u32(src)?,
        })
    }

    /// The byte range of the block plus its trailer, if it lies within `file_len`.
    pub(crate) fn range_with_trailer(&self, file_len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start
            .checked_add(self.size as usize)?
            .checked_add(TRAILER_LEN)?;
        (end <= file_len).then_some(start..end)
    }
}

pub(crate) fn block_crc(contents: &[u8], compression: u8) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(contents);
    h.update(&[compression]);
    mask_crc(h.finalize())
}

/// The trailer written after the stored bytes `contents` of a block whose
/// compression byte is `compression`.
pub(crate) fn trailer(contents: &[u8], compression: u8) -> [u8; TRAILER_LEN] {
    let crc = block_crc(contents, compression).to_le_bytes();
    [compression, crc[0], crc[1], crc[2], crc[3]]
}

/// Splits `block_and_trailer` and checks the trailer; returns the compression
/// byte and the stored (possibly compressed) contents.
pub(crate) fn verify_stored_block(block_and_trailer: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let split = block_and_trailer
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or(DecodeError("block shorter than its trailer"))?;
    let (contents, mut tr) = block_and_trailer.split_at(split);
    let compression = crate::coding::get_u8(&mut tr)?;
    let crc = get_u32(&mut tr)?;
    if ![NO_COMPRESSION, LZ4_COMPRESSION, ZSTD_COMPRESSION].contains(&compression) {
        return Err(DecodeError("unknown block compression type"));
    }
    if block_crc(contents, compression) != crc {
        return Err(DecodeError("block checksum mismatch"));
    }
    Ok((compression, contents))
}

/// Like [`verify_stored_block`] for the blocks that are always stored
/// uncompressed (filter, properties, and a format-1 table's index):
/// anything else is corruption.
pub(crate) fn verify_block(block_and_trailer: &[u8]) -> Result<&[u8], DecodeError> {
    match verify_stored_block(block_and_trailer)? {
        (NO_COMPRESSION, contents) => Ok(contents),
        _ => Err(DecodeError("metadata block must not be compressed")),
    }
}

/// The uncompressed contents of a compressed block with compression byte
/// `compression` (already checksum-verified).
pub(crate) fn decompress(compression: u8, stored: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (claimed, body) = claim(compression, stored)?;
    // Zeroed by the allocator: the pages of a large claim are committed only
    // as the decoder writes them.
    let mut out = vec![0; claimed];
    decode_exactly(compression, body, &mut out)?;
    Ok(out)
}

/// Claims above this decompress through [`decompress`] and a copy.
const DECODE_IN_PLACE_LIMIT: usize = 1 << 20;

/// [`decompress`] into the buffer the block cache keeps (a recycled one
/// when there is one, see [`BlockBuf`]), rather than into a `Vec` copied
/// into one.
pub(crate) fn decompress_block(compression: u8, stored: &[u8]) -> Result<BlockBuf, DecodeError> {
    let (claimed, body) = claim(compression, stored)?;
    // A large claim may be a lie (a zstd block may claim 32768 times its
    // size): zeroing a buffer would commit every page of it before the
    // decoder fails.
    if claimed > DECODE_IN_PLACE_LIMIT {
        return decompress(compression, stored).map(BlockBuf::from);
    }
    BlockBuf::fill(claimed, |out| decode_exactly(compression, body, out))
}

/// The recorded uncompressed length of a compressed block, and its body.
fn claim(compression: u8, stored: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
    match compression {
        // LZ4 expands at most ~255x.
        LZ4_COMPRESSION => claimed_length(stored, 255),
        // A zstd block of 128 KiB can be one RLE byte and its header.
        ZSTD_COMPRESSION => claimed_length(stored, 32 * 1024),
        NO_COMPRESSION => Err(DecodeError("block is not compressed")),
        _ => Err(DecodeError("unknown block compression type")),
    }
}

/// Decodes `body` into `out`, which must come out exactly full: decoders
/// take the length as a capacity, not a promise. On success every byte of
/// `out` was written (a recycled buffer's old bytes are all overwritten).
fn decode_exactly(compression: u8, body: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let written = if compression == LZ4_COMPRESSION {
        lz4_flex::decompress_into(body, out).map_err(|_| DecodeError("corrupt LZ4 block"))?
    } else {
        super::zstd_codec::decompress_into(body, out)?
    };
    if written != out.len() {
        return Err(DecodeError(
            "compressed block shorter than its recorded length",
        ));
    }
    Ok(())
}

/// Splits a compressed block into its recorded uncompressed length and its
/// body. A length beyond `max_ratio` times the body is corruption, and
/// checking it first keeps a bad length from allocating gigabytes.
fn claimed_length(stored: &[u8], max_ratio: usize) -> Result<(usize, &[u8]), DecodeError> {
    let (mut len, body) = (stored, stored.get(4..).unwrap_or_default());
    let claimed = get_u32(&mut len)? as usize;
    if claimed > body.len().saturating_mul(max_ratio) {
        return Err(DecodeError("compressed block claims an impossible length"));
    }
    Ok((claimed, body))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) filter: BlockHandle,
    pub(crate) properties: BlockHandle,
    pub(crate) index: BlockHandle,
    /// [`FORMAT_V1`] or [`FORMAT_VERSION`].
    pub(crate) version: u32,
}

impl Footer {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FOOTER_LEN);
        self.filter.encode_to(&mut out);
        self.properties.encode_to(&mut out);
        self.index.encode_to(&mut out);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out
    }

    pub(crate) fn decode(mut src: &[u8]) -> Result<Self, DecodeError> {
        if src.len() != FOOTER_LEN {
            return Err(DecodeError("footer has the wrong length"));
        }
        let filter = BlockHandle::decode_from(&mut src)?;
        let properties = BlockHandle::decode_from(&mut src)?;
        let index = BlockHandle::decode_from(&mut src)?;
        let version = get_u32(&mut src)?;
        let magic = get_u64(&mut src)?;
        if magic != MAGIC {
            return Err(DecodeError("bad table magic number (not a table file)"));
        }
        if version != FORMAT_V1 && version != FORMAT_VERSION {
            return Err(DecodeError("unsupported table format version"));
        }
        Ok(Footer {
            filter,
            properties,
            index,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::block_buf;
    use super::*;

    /// Leaves this thread a recycled buffer for a block of `len` bytes,
    /// full of `0xAA`.
    fn dirty_spare(len: usize) {
        block_buf::recycle(
            BlockBuf::fill::<()>(len, |b| {
                b.fill(0xAA);
                Ok(())
            })
            .unwrap(),
        );
    }

    /// Every stored form of `plain` this build can write, with its trailer byte.
    fn stored_forms(plain: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut forms = vec![(LZ4_COMPRESSION, lz4_flex::compress_prepend_size(plain))];
        if cfg!(feature = "zstd") {
            let mut zstd = super::super::zstd_codec::Compressor::new(3).unwrap();
            forms.push((ZSTD_COMPRESSION, zstd.compress(plain).unwrap()));
        }
        forms
    }

    /// A recycled buffer holds another block's bytes: a block decoded into
    /// it must come out exactly as into a fresh one, and a stored block that
    /// decodes short must fail rather than pass the old bytes off as its tail.
    #[test]
    fn a_block_decoded_into_a_dirty_buffer_is_exact() {
        let plain: Vec<u8> = (0..4100u32).map(|i| (i % 7 + i / 300) as u8).collect();
        for (kind, stored) in stored_forms(&plain) {
            dirty_spare(plain.len());
            assert_eq!(block_buf::spare_len(), Some(4224));
            let block = decompress_block(kind, &stored).unwrap();
            assert_eq!(block_buf::spare_len(), None, "the dirty spare was not used");
            assert_eq!(&*block, &plain[..], "compression {kind}");
            assert_eq!(&*block, &decompress(kind, &stored).unwrap()[..]);

            // The recorded length claims 60 bytes more than the body decodes to.
            let mut lying = stored.clone();
            let claimed = (plain.len() as u32 + 60).to_le_bytes();
            lying.get_mut(..4).unwrap().copy_from_slice(&claimed);
            dirty_spare(plain.len() + 60);
            assert!(
                decompress_block(kind, &lying).is_err(),
                "compression {kind}"
            );
        }
    }

    #[test]
    fn footer_round_trip_and_rejects_damage() {
        let h = |o, s| BlockHandle { offset: o, size: s };
        let f = Footer {
            filter: h(1, 2),
            properties: h(3, 4),
            index: h(u64::MAX, u32::MAX),
            version: FORMAT_VERSION,
        };
        let enc = f.encode();
        assert_eq!(enc.len(), FOOTER_LEN);
        assert_eq!(Footer::decode(&enc).unwrap(), f);
        let v1 = Footer {
            version: FORMAT_V1,
            ..f
        };
        assert_eq!(Footer::decode(&v1.encode()).unwrap(), v1);
        let v3 = Footer { version: 3, ..f };
        assert!(Footer::decode(&v3.encode()).is_err());
        let mut bad = enc.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(Footer::decode(&bad).is_err());
        assert!(Footer::decode(&enc[1..]).is_err());
        assert_eq!(h(u64::MAX, 10).range_with_trailer(100), None);
    }

    #[test]
    fn trailer_detects_flips() {
        let mut block = b"some block contents".to_vec();
        block.extend_from_slice(&trailer(b"some block contents", NO_COMPRESSION));
        assert_eq!(verify_block(&block).unwrap(), b"some block contents");
        for i in 0..block.len() {
            let mut bad = block.clone();
            bad[i] ^= 0x10;
            assert!(verify_block(&bad).is_err(), "flip at {i}");
        }
    }
}
