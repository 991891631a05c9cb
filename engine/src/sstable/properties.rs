//! The properties block: what a table holds, readable without scanning it.
//!
//! ```text
//! entries u64 | deletions u64 | data_blocks u64 | smallest_seq u64 | largest_seq u64
//! | varint len | smallest internal key | varint len | largest internal key
//! | range tombstones (see `range_del`; absent in tables written before them)
//! ```
//! (all integers little-endian)

use crate::coding::{get_length_prefixed, get_u64, put_length_prefixed};
use crate::error::DecodeError;
use crate::range_del::{self, RangeTombstone};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Properties {
    pub(crate) entries: u64,
    pub(crate) deletions: u64,
    pub(crate) data_blocks: u64,
    pub(crate) smallest_seq: u64,
    pub(crate) largest_seq: u64,
    pub(crate) smallest_key: Vec<u8>,
    pub(crate) largest_key: Vec<u8>,
    pub(crate) range_tombstones: Vec<RangeTombstone>,
}

impl Properties {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.smallest_key.len() + self.largest_key.len());
        for v in [
            self.entries,
            self.deletions,
            self.data_blocks,
            self.smallest_seq,
            self.largest_seq,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_length_prefixed(&mut out, &self.smallest_key);
        put_length_prefixed(&mut out, &self.largest_key);
        range_del::encode(&mut out, &self.range_tombstones);
        out
    }

    pub(crate) fn decode(mut src: &[u8]) -> Result<Self, DecodeError> {
        let mut p = Properties {
            entries: get_u64(&mut src)?,
            deletions: get_u64(&mut src)?,
            data_blocks: get_u64(&mut src)?,
            smallest_seq: get_u64(&mut src)?,
            largest_seq: get_u64(&mut src)?,
            smallest_key: get_length_prefixed(&mut src)?.to_vec(),
            largest_key: get_length_prefixed(&mut src)?.to_vec(),
            range_tombstones: Vec::new(),
        };
        if !src.is_empty() {
            p.range_tombstones = range_del::decode(&mut src)?;
        }
        if !src.is_empty() {
            return Err(DecodeError("trailing bytes in properties block"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let p = Properties {
            entries: 10,
            deletions: 2,
            data_blocks: 3,
            smallest_seq: 5,
            largest_seq: 50,
            smallest_key: b"a\0\0\0\0\0\0\0\0".to_vec(),
            largest_key: b"zz\0\0\0\0\0\0\0\0".to_vec(),
            range_tombstones: vec![RangeTombstone {
                start: b"b".to_vec(),
                end: b"k".to_vec(),
                seq: 7,
            }],
        };
        let enc = p.encode();
        assert_eq!(Properties::decode(&enc).unwrap(), p);
        // Everything up to the tombstones is a table from before them.
        let before = enc.len() - 13;
        for cut in (0..enc.len()).filter(|&c| c != before) {
            assert!(Properties::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let old = Properties::decode(&enc[..before]).unwrap();
        assert!(old.range_tombstones.is_empty());
    }
}
