//! The log format shared by the write-ahead log and the MANIFEST: LevelDB's
//! record log, byte for byte in layout, with CRC-32 (IEEE) in place of CRC-32C.
//!
//! A log file is a sequence of 32 KiB blocks. Each logical record (one encoded
//! write batch, or one version edit) is stored as one or more *fragments*, each
//! with a 7-byte header:
//!
//! ```text
//! +-------------------+---------------+-----------+------------------+
//! | masked crc u32 LE | length u16 LE | type u8   | payload (length) |
//! +-------------------+---------------+-----------+------------------+
//! crc   = mask(crc32(type ++ payload))
//! type  = 1 FULL | 2 FIRST | 3 MIDDLE | 4 LAST
//! ```
//!
//! A fragment never crosses a block boundary: a record that does not fit in
//! the rest of a block is split into FIRST, MIDDLE..., LAST. When fewer than 7
//! bytes remain in a block they are zero-filled and the next fragment starts
//! in the next block. A reader can therefore resynchronise at any block and a
//! torn write damages only the record it was writing.
//!
//! Recovery rules live in [`reader`]: a record cut short by the end of a
//! file that may be torn (the newest WAL, the MANIFEST) ends the log and is
//! reported as a torn tail; any other damage, a whole record with a bad
//! checksum included, is [`Error::Corruption`](crate::Error::Corruption)
//! with the file and offset.

pub(crate) mod reader;
pub(crate) mod writer;

pub(crate) use reader::LogReader;
pub(crate) use writer::LogWriter;

/// Size of a log block. Do not change: on disk.
pub(crate) const BLOCK_SIZE: usize = 32 * 1024;
/// crc (4) + length (2) + type (1).
pub(crate) const HEADER_SIZE: usize = 7;

/// Fragment types. Do not change the values: on disk.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FragmentType {
    Full = 1,
    First = 2,
    Middle = 3,
    Last = 4,
}

impl TryFrom<u8> for FragmentType {
    type Error = u8;

    fn try_from(b: u8) -> Result<Self, u8> {
        match b {
            1 => Ok(FragmentType::Full),
            2 => Ok(FragmentType::First),
            3 => Ok(FragmentType::Middle),
            4 => Ok(FragmentType::Last),
            other => Err(other),
        }
    }
}

const MASK_DELTA: u32 = 0xa282_ead8;

/// Masks a CRC so that a CRC computed over data that itself contains CRCs
/// (a log inside a log, say) does not collide with them.
pub(crate) fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

pub(crate) fn fragment_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    mask_crc(h.finalize())
}

#[cfg(test)]
mod tests;
