//! Data and index blocks: prefix-compressed sorted entries with restart points.
//!
//! ```text
//! entry    = varint shared | varint unshared | varint value_len
//!            | key[shared..] (unshared bytes) | value
//! block    = entry* | restart_offset u32 LE * num_restarts | num_restarts u32 LE
//! ```
//!
//! `shared` is the length of the prefix this key shares with the previous
//! key; at a restart point it is 0, so a reader can start decoding there.

use std::cmp::Ordering;

use crate::coding::{get_bytes, get_varint32, put_varint32, u32_at};
use crate::error::DecodeError;

/// Builds one block. Keys must be added in increasing order.
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    pub(crate) fn new(restart_interval: usize) -> Self {
        BlockBuilder {
            buf: Vec::new(),
            restarts: vec![0],
            restart_interval: restart_interval.max(1),
            since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.since_restart >= self.restart_interval {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        } else {
            key.iter()
                .zip(&self.last_key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let unshared = key.get(shared..).unwrap_or_default();
        put_varint32(&mut self.buf, shared as u32);
        put_varint32(&mut self.buf, unshared.len() as u32);
        put_varint32(&mut self.buf, value.len() as u32);
        self.buf.extend_from_slice(unshared);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart += 1;
        self.entries += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Size of the block if finished now.
    pub(crate) fn estimated_size(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Appends the restart array and returns the block contents; the builder is
    /// then reset for the next block.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts = vec![0];
        self.since_restart = 0;
        self.last_key.clear();
        self.entries = 0;
        out
    }
}

/// [`BlockIter::seek`] prefetches the restart entries of a block with at
/// most this many.
const PREFETCHED_RESTARTS: usize = 8;

/// A cursor over one block's entries, in order.
pub(crate) struct BlockIter<'a> {
    /// The entries region (without the restart array).
    data: &'a [u8],
    restarts: &'a [u8],
    num_restarts: usize,
    /// Offset of the next entry to decode.
    next: usize,
    key: Vec<u8>,
    value: &'a [u8],
    valid: bool,
}

impl<'a> BlockIter<'a> {
    pub(crate) fn new(block: &'a [u8]) -> Result<Self, DecodeError> {
        let n = block
            .len()
            .checked_sub(4)
            .and_then(|at| u32_at(block, at))
            .ok_or(DecodeError("block shorter than its restart count"))? as usize;
        let restarts_len = n
            .checked_mul(4)
            .and_then(|r| r.checked_add(4))
            .filter(|&r| r <= block.len() && n > 0)
            .ok_or(DecodeError("bad restart count"))?;
        let data_end = block.len() - restarts_len;
        Ok(BlockIter {
            data: block.get(..data_end).unwrap_or_default(),
            restarts: block.get(data_end..block.len() - 4).unwrap_or_default(),
            num_restarts: n,
            next: 0,
            key: Vec::new(),
            value: &[],
            valid: false,
        })
    }

    /// [`BlockIter::new`], keeping its current key in `key` (cleared), whose
    /// buffer [`BlockIter::into_position`] hands back; on an error the
    /// buffer comes back with it.
    pub(crate) fn with_key_buffer(
        block: &'a [u8],
        mut key: Vec<u8>,
    ) -> Result<Self, (DecodeError, Vec<u8>)> {
        key.clear();
        match BlockIter::new(block) {
            Ok(it) => Ok(BlockIter { key, ..it }),
            Err(e) => Err((e, key)),
        }
    }

    /// Resumes a scan of `block` where [`BlockIter::into_position`] left
    /// one: `next` is the offset of the next entry and `key` the key before
    /// it, which that entry's shared prefix refers to.
    pub(crate) fn resume(block: &'a [u8], next: usize, key: Vec<u8>) -> Result<Self, DecodeError> {
        let mut it = BlockIter::new(block)?;
        it.next = next;
        it.key = key;
        Ok(it)
    }

    /// Where to [`resume`](BlockIter::resume): the next entry's offset and
    /// the current key (the buffer is handed back for reuse).
    pub(crate) fn into_position(self) -> (usize, Vec<u8>) {
        (self.next, self.key)
    }

    /// The current entry, if positioned on one.
    pub(crate) fn current(&self) -> Option<(&[u8], &'a [u8])> {
        self.valid.then_some((self.key.as_slice(), self.value))
    }

    /// Moves to the next entry; `Ok(false)` at the end of the block.
    pub(crate) fn advance(&mut self) -> Result<bool, DecodeError> {
        if self.next >= self.data.len() {
            self.valid = false;
            return Ok(false);
        }
        let mut src = self.data.get(self.next..).unwrap_or_default();
        let before = src.len();
        let shared = get_varint32(&mut src)? as usize;
        let unshared = get_varint32(&mut src)? as usize;
        let value_len = get_varint32(&mut src)? as usize;
        if shared > self.key.len() {
            return Err(DecodeError("entry shares more than the previous key"));
        }
        let suffix = get_bytes(&mut src, unshared)?;
        self.value = get_bytes(&mut src, value_len)?;
        self.key.truncate(shared);
        self.key.extend_from_slice(suffix);
        self.next += before - src.len();
        self.valid = true;
        Ok(true)
    }

    fn restart_offset(&self, i: usize) -> Result<usize, DecodeError> {
        let off = u32_at(self.restarts, i * 4).ok_or(DecodeError("restart index out of range"))?;
        let off = off as usize;
        if off > self.data.len() {
            return Err(DecodeError("restart point past the entries"));
        }
        Ok(off)
    }

    /// The key of the entry at restart point `i`, read in place: a restart
    /// entry shares no prefix with the entry before it.
    fn restart_key(&self, i: usize) -> Result<&'a [u8], DecodeError> {
        let mut src = self.data.get(self.restart_offset(i)?..).unwrap_or_default();
        if src.is_empty() {
            return Err(DecodeError("restart point at end of block"));
        }
        let shared = get_varint32(&mut src)?;
        let unshared = get_varint32(&mut src)? as usize;
        let value_len = get_varint32(&mut src)? as usize;
        if shared != 0 {
            return Err(DecodeError("entry shares more than the previous key"));
        }
        let key = get_bytes(&mut src, unshared)?;
        // As `advance` would: an entry whose value runs past the block is
        // corruption even where only its key is wanted.
        get_bytes(&mut src, value_len)?;
        Ok(key)
    }

    fn seek_to_restart(&mut self, i: usize) -> Result<(), DecodeError> {
        self.key.clear();
        self.next = self.restart_offset(i)?;
        self.valid = false;
        Ok(())
    }

    /// Positions on the first entry whose key is `>= target` under `cmp`;
    /// `Ok(false)` when every key is smaller.
    pub(crate) fn seek(
        &mut self,
        target: &[u8],
        cmp: impl Fn(&[u8], &[u8]) -> Ordering,
    ) -> Result<bool, DecodeError> {
        // The binary search below reads one entry per step, each in a
        // line of its own: in a block of a few restarts (4 KiB holds about
        // three), start loading them all at once.
        if self.num_restarts <= PREFETCHED_RESTARTS {
            for i in 0..self.num_restarts {
                if let Ok(offset) = self.restart_offset(i) {
                    crate::prefetch::read(self.data.get(offset));
                }
            }
        }
        // Find the last restart whose key is < target.
        let (mut lo, mut hi) = (0usize, self.num_restarts - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if cmp(self.restart_key(mid)?, target) == Ordering::Less {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        self.seek_to_restart(lo)?;
        while self.advance()? {
            if cmp(&self.key, target) != Ordering::Less {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kv = (Vec<u8>, Vec<u8>);

    fn build(n: usize, interval: usize) -> (Vec<u8>, Vec<Kv>) {
        let mut b = BlockBuilder::new(interval);
        let mut kvs = Vec::new();
        for i in 0..n {
            let k = format!("key{:05}", i * 2).into_bytes();
            let v = format!("value{i}").into_bytes();
            b.add(&k, &v);
            kvs.push((k, v));
        }
        let est = b.estimated_size();
        let block = b.finish();
        assert_eq!(est, block.len());
        (block, kvs)
    }

    #[test]
    fn round_trip_and_seek() {
        for interval in [1, 3, 16] {
            let (block, kvs) = build(100, interval);
            let mut it = BlockIter::new(&block).unwrap();
            for (k, v) in &kvs {
                assert!(it.advance().unwrap());
                assert_eq!(it.current().unwrap(), (k.as_slice(), v.as_slice()));
            }
            assert!(!it.advance().unwrap());
            for (i, (k, _)) in kvs.iter().enumerate() {
                let mut it = BlockIter::new(&block).unwrap();
                assert!(it.seek(k, |a, b| a.cmp(b)).unwrap());
                assert_eq!(it.current().unwrap().0, k.as_slice());
                // A key between two entries lands on the next one.
                let between = format!("key{:05}", i * 2 + 1).into_bytes();
                let found = it.seek(&between, |a, b| a.cmp(b)).unwrap();
                assert_eq!(found, i + 1 < kvs.len());
            }
            let mut it = BlockIter::new(&block).unwrap();
            assert!(it.seek(b"a", |a, b| a.cmp(b)).unwrap());
            assert_eq!(it.current().unwrap().0, kvs[0].0.as_slice());

            // A scan stopped after every entry and resumed yields the rest.
            let mut pos = (0, Vec::new());
            for (k, v) in &kvs {
                let mut it = BlockIter::resume(&block, pos.0, pos.1).unwrap();
                assert!(it.advance().unwrap());
                assert_eq!(it.current().unwrap(), (k.as_slice(), v.as_slice()));
                pos = it.into_position();
            }
            let mut it = BlockIter::resume(&block, pos.0, pos.1).unwrap();
            assert!(!it.advance().unwrap());
        }
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let (block, _) = build(40, 16);
        for cut in 0..block.len() {
            let _ = BlockIter::new(&block[..cut]).and_then(|mut it| {
                while it.advance()? {}
                it.seek(b"key00020", |a, b| a.cmp(b))
            });
        }
        for pos in 0..block.len() {
            let mut bad = block.clone();
            bad[pos] ^= 0xff;
            let _ = BlockIter::new(&bad).and_then(|mut it| {
                while it.advance()? {}
                it.seek(b"key00020", |a, b| a.cmp(b))
            });
        }
        assert!(BlockIter::new(&[0, 0, 0, 0]).is_err());
        assert!(BlockIter::new(&[9, 0, 0, 0]).is_err());
    }
}
