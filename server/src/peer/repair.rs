//! The bodies of the two anti-entropy calls (`repair`): walking two digest
//! trees top-down to the leaves that differ, then comparing those leaves
//! item by item and carrying exactly the items one side lacks. Integers are
//! big-endian; every decoder refuses what does not parse exactly, and
//! bounds what it allocates by the bytes it was given.
//!
//! # Short hashes
//!
//! Both calls carry 4-byte hashes, not the trees' 8-byte ones
//! (`repair::tree`): `short = high 32 bits of xxh3_64_with_seed(hash u64,
//! seed)` (`short_hash`), the seed being the asker's session, a fresh
//! random number per comparison. Two different nodes or items with the same
//! short hash (2^-32 a pair) look equal, so the difference is not repaired
//! in that session: nothing wrong is applied, since a short hash only ever
//! decides what is *not* sent. With a new seed the same pair collides again
//! only by a new 2^-32 chance, so the next pass repairs it; an unseeded
//! truncation would hide that pair for ever.
//!
//! # `POST /internal/v1/digest`
//!
//! Request: the children of some nodes of one level of the answering node's
//! tree of a range (`repair::tree` defines the tree and its hashes).
//!
//! ```text
//! offset  size  field
//! 0       8     session: the asker's id for this comparison and the seed
//!               of the short hashes (a tree is built once per session,
//!               range and depth, and kept a while)
//! 8       8     range start S (exclusive)
//! 16      8     range end E (inclusive); E == S is the whole ring
//! 24      1     depth d, 1 ..= MAX_DEPTH
//! 25      1     level l of the parents, below d
//! 26      4     n, 1 ..= MAX_PARENTS_PER_CALL
//! 30      4n    parent indices of level l, u32 each, below FANOUT^l
//! ```
//!
//! Answer (200):
//!
//! ```text
//! 0       8     items in the answering node's range (as of its snapshot)
//! 8       16n   the short hashes of each parent's FANOUT children, u32
//!               each, parents in the order asked
//! ```
//!
//! # `POST /internal/v1/repair-rows`
//!
//! Request: the asker's items of some differing leaves, as short hashes.
//!
//! ```text
//! 0       8     session (the seed of the short hashes)
//! 8       8     range start S
//! 16      8     range end E
//! 24      1     depth d, at most MAX_DEPTH
//! 25      4     n leaves, 1 ..= MAX_ROW_LEAVES
//! then n times, leaves strictly ascending:
//!         4     leaf index, below FANOUT^d
//!         4     k, the asker's items in the leaf
//!         4k    their short hashes, u32 each, in engine-key order
//! ```
//!
//! All the leaves together hold at most `MAX_ROW_HASHES` hashes.
//!
//! Answer (200):
//!
//! ```text
//! 0       4     m, leaves answered: the first m asked, 1 ..= n (the rest
//!               did not fit and are to be asked again)
//! 4       b     lacks: one bit per hash of the first m leaves, in the order
//!               sent, bit 7 - i % 8 of byte i / 8; set if the answering
//!               node holds no item of that short hash. b = ceil(h / 8)
//!               for h hashes; the bits past h are 0
//! 4+b     ..    an apply-batch body (`peer::wire`): the answering node's
//!               items in those m leaves whose short hash the asker did not
//!               send, then the end frame
//! ```
//!
//! An answering node stops adding leaves once its items reach
//! [`BATCH_TARGET`](super::wire::BATCH_TARGET) bytes, so an answer is at
//! most that plus one leaf's items and the lacks bits.

use strata_ring::TokenRange;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::frames::Entry;
use super::wire::{decode_apply_batch, WireError};

/// Children per inner node of a digest tree (`repair::tree`). Four rather
/// than Cassandra's two or a wider sixteen: a top-down walk costs about
/// `FANOUT * 4 * levels` answer bytes per differing leaf, and `F / ln F` is
/// smallest for 2..4; four halves the round trips of two.
pub(crate) const FANOUT: u32 = 4;
/// Deepest digest tree: `4^10` (about a million) leaves.
pub(crate) const MAX_DEPTH: u8 = 10;
/// The most parents asked about in one digest call: 64 KiB of answer.
pub(crate) const MAX_PARENTS_PER_CALL: usize = 4 * 1024;
/// The most leaves in one repair-rows request.
pub(crate) const MAX_ROW_LEAVES: usize = 8 * 1024;
/// The most item hashes in one repair-rows request: 256 KiB.
pub(crate) const MAX_ROW_HASHES: usize = 64 * 1024;

/// Path of the digest route.
pub const DIGEST_PATH: &str = "/internal/v1/digest";
/// Path of the repair-rows route.
pub const REPAIR_ROWS_PATH: &str = "/internal/v1/repair-rows";
/// Largest digest request body.
pub const MAX_DIGEST_REQUEST: usize = 30 + 4 * MAX_PARENTS_PER_CALL;
/// Largest repair-rows request body.
pub const MAX_ROWS_REQUEST: usize = 29 + 8 * MAX_ROW_LEAVES + 4 * MAX_ROW_HASHES;

/// The 4-byte hash of a tree node's or an item's 8-byte `hash` in the
/// comparison seeded by `seed` (see the module doc for why it is seeded).
pub(crate) fn short_hash(hash: u64, seed: u64) -> u32 {
    let mixed = xxh3_64_with_seed(&hash.to_be_bytes(), seed).to_be_bytes();
    let [a, b, c, d, ..] = mixed;
    u32::from_be_bytes([a, b, c, d])
}

/// Why repair bytes are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepairWireError {
    /// Shorter or longer than its counts say.
    #[error("body of {len} bytes does not match its counts")]
    Length {
        /// Bytes present.
        len: usize,
    },
    /// A field outside its bounds.
    #[error("{0} out of bounds")]
    Bounds(&'static str),
    /// The items of a repair-rows answer.
    #[error("repair-rows items: {0}")]
    Items(#[from] WireError),
}

/// A digest request: the children of `parents`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRequest {
    /// The asker's comparison, and the seed of the short hashes.
    pub session: u64,
    /// The range.
    pub range: TokenRange,
    /// The tree's depth.
    pub depth: u8,
    /// The level of the parents.
    pub level: u8,
    /// Node indices of that level.
    pub parents: Vec<u32>,
}

/// A digest answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAnswer {
    /// Items in the answering node's range.
    pub items: u64,
    /// `FANOUT` short hashes per parent asked about.
    pub hashes: Vec<u32>,
}

/// The asker's items of one leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafHashes {
    /// The leaf's index.
    pub leaf: u32,
    /// The short hashes of its items, in engine-key order.
    pub hashes: Vec<u32>,
}

/// A repair-rows request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsRequest {
    /// The seed of the short hashes.
    pub session: u64,
    /// The range.
    pub range: TokenRange,
    /// The tree's depth.
    pub depth: u8,
    /// The leaves, ascending.
    pub leaves: Vec<LeafHashes>,
}

/// A repair-rows answer, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsAnswer {
    /// Leaves answered: the first this many of the request.
    pub answered: usize,
    /// One per hash of the answered leaves, in order: whether the answering
    /// node lacks it.
    pub lacks: Vec<bool>,
    /// The answering node's items the asker lacks.
    pub entries: Vec<Entry>,
    /// Bytes of the answer that carried `entries` (its apply-batch body).
    pub items_len: usize,
}

/// A reader over a body that fails on a short read.
struct Reader<'a> {
    bytes: &'a [u8],
    len: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            len: bytes.len(),
        }
    }

    fn short(&self) -> RepairWireError {
        RepairWireError::Length { len: self.len }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], RepairWireError> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(self.short())?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, RepairWireError> {
        self.take().map(u64::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, RepairWireError> {
        self.take().map(u32::from_be_bytes)
    }

    /// A count bounded by `max` and by the bytes left at `size` bytes an
    /// item, so a corrupt count cannot make the decoder allocate.
    fn count(&mut self, min: usize, max: usize, size: usize) -> Result<usize, RepairWireError> {
        let n = usize::try_from(self.u32()?).map_err(|_| RepairWireError::Bounds("count"))?;
        if n < min || n > max {
            return Err(RepairWireError::Bounds("count"));
        }
        if self.bytes.len() < n * size {
            return Err(self.short());
        }
        Ok(n)
    }

    fn end(&self) -> Result<(), RepairWireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.short())
        }
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Every count is bounded far below 4 Gi by the constants above; the
    // decoder refuses one that is not.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_range(out: &mut Vec<u8>, session: u64, range: TokenRange) {
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&range.start().to_be_bytes());
    out.extend_from_slice(&range.end().to_be_bytes());
}

/// `FANOUT^level`, the nodes of a level.
fn nodes_at(level: u8) -> u64 {
    u64::from(FANOUT).pow(u32::from(level))
}

impl DigestRequest {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30 + 4 * self.parents.len());
        put_range(&mut out, self.session, self.range);
        out.push(self.depth);
        out.push(self.level);
        put_u32(&mut out, self.parents.len());
        for n in &self.parents {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// Parses [`DigestRequest::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepairWireError> {
        let mut r = Reader::new(bytes);
        let session = r.u64()?;
        let range = TokenRange::new(r.u64()?, r.u64()?);
        let [depth, level] = r.take::<2>()?;
        if depth == 0 || depth > MAX_DEPTH {
            return Err(RepairWireError::Bounds("depth"));
        }
        if level >= depth {
            return Err(RepairWireError::Bounds("level"));
        }
        let n = r.count(1, MAX_PARENTS_PER_CALL, 4)?;
        let parents = (0..n)
            .map(|_| {
                let node = r.u32()?;
                if u64::from(node) >= nodes_at(level) {
                    return Err(RepairWireError::Bounds("node index"));
                }
                Ok(node)
            })
            .collect::<Result<Vec<_>, _>>()?;
        r.end()?;
        Ok(Self {
            session,
            range,
            depth,
            level,
            parents,
        })
    }
}

impl DigestAnswer {
    /// The answer's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * self.hashes.len());
        out.extend_from_slice(&self.items.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(&h.to_be_bytes());
        }
        out
    }

    /// Parses [`DigestAnswer::encode`]'s output: the answer to `parents`
    /// parents.
    pub fn decode(bytes: &[u8], parents: usize) -> Result<Self, RepairWireError> {
        let mut r = Reader::new(bytes);
        let items = r.u64()?;
        let want = parents * FANOUT as usize;
        if r.bytes.len() != want * 4 {
            return Err(r.short());
        }
        let hashes = (0..want).map(|_| r.u32()).collect::<Result<_, _>>()?;
        Ok(Self { items, hashes })
    }
}

impl RowsRequest {
    /// Hashes in all its leaves.
    pub fn hashes(&self) -> usize {
        self.leaves.iter().map(|l| l.hashes.len()).sum()
    }

    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(29 + 8 * self.leaves.len() + 4 * self.hashes());
        put_range(&mut out, self.session, self.range);
        out.push(self.depth);
        put_u32(&mut out, self.leaves.len());
        for leaf in &self.leaves {
            out.extend_from_slice(&leaf.leaf.to_be_bytes());
            put_u32(&mut out, leaf.hashes.len());
            for h in &leaf.hashes {
                out.extend_from_slice(&h.to_be_bytes());
            }
        }
        out
    }

    /// Parses [`RowsRequest::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepairWireError> {
        let mut r = Reader::new(bytes);
        let session = r.u64()?;
        let range = TokenRange::new(r.u64()?, r.u64()?);
        let [depth] = r.take::<1>()?;
        if depth > MAX_DEPTH {
            return Err(RepairWireError::Bounds("depth"));
        }
        let n = r.count(1, MAX_ROW_LEAVES, 8)?;
        let mut leaves: Vec<LeafHashes> = Vec::with_capacity(n);
        let mut total = 0usize;
        for _ in 0..n {
            let leaf = r.u32()?;
            if u64::from(leaf) >= nodes_at(depth) {
                return Err(RepairWireError::Bounds("leaf index"));
            }
            if leaves.last().is_some_and(|l| l.leaf >= leaf) {
                return Err(RepairWireError::Bounds("leaf order"));
            }
            let k = r.count(0, MAX_ROW_HASHES - total, 4)?;
            total += k;
            let hashes = (0..k).map(|_| r.u32()).collect::<Result<_, _>>()?;
            leaves.push(LeafHashes { leaf, hashes });
        }
        r.end()?;
        Ok(Self {
            session,
            range,
            depth,
            leaves,
        })
    }
}

/// The bytes of a repair-rows answer: `answered` leaves, the `lacks` bits
/// of their hashes, and `batch`, an apply-batch body (`peer::wire`).
pub fn encode_rows_answer(answered: usize, lacks: &[bool], batch: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + lacks.len().div_ceil(8) + batch.len());
    put_u32(&mut out, answered);
    for bits in lacks.chunks(8) {
        out.push(
            bits.iter()
                .enumerate()
                .fold(0u8, |byte, (i, &set)| byte | (u8::from(set) << (7 - i))),
        );
    }
    out.extend_from_slice(batch);
    out
}

impl RowsAnswer {
    /// Parses [`encode_rows_answer`]'s output as the answer to `request`.
    pub fn decode(bytes: &[u8], request: &RowsRequest) -> Result<Self, RepairWireError> {
        let mut r = Reader::new(bytes);
        let answered = r.count(1, request.leaves.len(), 0)?;
        let hashes: usize = request
            .leaves
            .iter()
            .take(answered)
            .map(|l| l.hashes.len())
            .sum();
        let (bits, batch) = r
            .bytes
            .split_at_checked(hashes.div_ceil(8))
            .ok_or(r.short())?;
        let lacks: Vec<bool> = (0..hashes)
            .map(|i| bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0))
            .collect();
        // Bits past the last hash are 0, so each answer has one encoding.
        let used = hashes % 8;
        if used != 0 && bits.last().is_some_and(|b| b & (0xff >> used) != 0) {
            return Err(RepairWireError::Bounds("padding bits"));
        }
        Ok(Self {
            answered,
            lacks,
            entries: decode_apply_batch(batch)?,
            items_len: batch.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::peer::wire::ApplyBatch;
    use crate::storage::Record;

    fn digest() -> DigestRequest {
        DigestRequest {
            session: 7,
            range: TokenRange::new(u64::MAX - 1, 5),
            depth: 4,
            level: 2,
            parents: vec![0, 3, 15],
        }
    }

    fn rows() -> RowsRequest {
        RowsRequest {
            session: 9,
            range: TokenRange::new(3, 3),
            depth: 3,
            leaves: vec![
                LeafHashes {
                    leaf: 2,
                    hashes: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
                },
                LeafHashes {
                    leaf: 5,
                    hashes: vec![],
                },
                LeafHashes {
                    leaf: 63,
                    hashes: vec![u32::MAX],
                },
            ],
        }
    }

    fn batch() -> Vec<u8> {
        let mut b = ApplyBatch::default();
        b.push(b"k", &Record::value(3, b"v".to_vec()).encode());
        b.push(b"gone", &Record::tombstone(4).encode());
        b.finish().to_vec()
    }

    fn lacks(n: usize) -> Vec<bool> {
        (0..n).map(|i| i % 3 == 1).collect()
    }

    #[test]
    fn bodies_round_trip() {
        let d = digest();
        assert_eq!(DigestRequest::decode(&d.encode()).unwrap(), d);
        let a = DigestAnswer {
            items: 12,
            hashes: (0..12).collect(),
        };
        assert_eq!(DigestAnswer::decode(&a.encode(), 3).unwrap(), a);
        let r = rows();
        assert_eq!(RowsRequest::decode(&r.encode()).unwrap(), r);
        for answered in 1..=3 {
            let h = r.leaves[..answered].iter().map(|l| l.hashes.len()).sum();
            let body = encode_rows_answer(answered, &lacks(h), &batch());
            let got = RowsAnswer::decode(&body, &r).unwrap();
            assert_eq!((got.answered, &got.lacks), (answered, &lacks(h)));
            assert_eq!(got.entries.len(), 2);
            assert_eq!(got.entries[0].user_key(), b"k");
            assert_eq!(got.items_len, batch().len());
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let answer = DigestAnswer {
            items: 1,
            hashes: vec![2, 3, 4, 5],
        };
        let r = rows();
        type Decodes = Box<dyn Fn(&[u8]) -> bool>;
        let cases: Vec<(Vec<u8>, Decodes)> = vec![
            (
                digest().encode(),
                Box::new(|b| DigestRequest::decode(b).is_ok()),
            ),
            (
                answer.encode(),
                Box::new(|b| DigestAnswer::decode(b, 1).is_ok()),
            ),
            (
                rows().encode(),
                Box::new(|b| RowsRequest::decode(b).is_ok()),
            ),
            (
                encode_rows_answer(3, &lacks(10), &batch()),
                Box::new(move |b| RowsAnswer::decode(b, &r).is_ok()),
            ),
        ];
        for (body, decodes) in cases {
            assert!(decodes(&body));
            for len in 0..body.len() {
                assert!(!decodes(&body[..len]), "len {len} of {}", body.len());
            }
            let mut longer = body.clone();
            longer.push(0);
            assert!(!decodes(&longer));
        }
    }

    #[test]
    fn out_of_bounds_fields_are_refused() {
        let refused = |d: DigestRequest| DigestRequest::decode(&d.encode());
        let mut d = digest();
        d.parents = vec![16];
        assert_eq!(refused(d), Err(RepairWireError::Bounds("node index")));
        let mut d = digest();
        d.level = 4;
        assert_eq!(refused(d), Err(RepairWireError::Bounds("level")));
        for depth in [0, MAX_DEPTH + 1] {
            let mut d = digest();
            (d.depth, d.level) = (depth, 0);
            assert_eq!(refused(d), Err(RepairWireError::Bounds("depth")));
        }
        let mut d = digest();
        d.parents.clear();
        assert_eq!(refused(d), Err(RepairWireError::Bounds("count")));
        let mut d = digest();
        d.parents = vec![0; MAX_PARENTS_PER_CALL + 1];
        assert_eq!(refused(d), Err(RepairWireError::Bounds("count")));

        let refused = |r: RowsRequest| RowsRequest::decode(&r.encode());
        let mut r = rows();
        r.leaves[2].leaf = 64;
        assert_eq!(refused(r), Err(RepairWireError::Bounds("leaf index")));
        let mut r = rows();
        r.leaves[1].leaf = 2;
        assert_eq!(refused(r), Err(RepairWireError::Bounds("leaf order")));
        let mut r = rows();
        r.leaves.clear();
        assert_eq!(refused(r), Err(RepairWireError::Bounds("count")));
        let mut r = rows();
        r.depth = MAX_DEPTH + 1;
        assert_eq!(refused(r), Err(RepairWireError::Bounds("depth")));
        // Too many hashes over all the leaves, though each leaf is in bounds.
        let mut r = rows();
        r.depth = 5;
        r.leaves = (0..2)
            .map(|leaf| LeafHashes {
                leaf,
                hashes: vec![0; MAX_ROW_HASHES / 2 + 1],
            })
            .collect();
        assert_eq!(refused(r), Err(RepairWireError::Bounds("count")));

        let r = rows();
        // No leaf answered, more leaves than asked, stray padding bits.
        assert!(RowsAnswer::decode(&encode_rows_answer(0, &[], &batch()), &r).is_err());
        assert!(RowsAnswer::decode(&encode_rows_answer(4, &lacks(10), &batch()), &r).is_err());
        let mut padded = encode_rows_answer(3, &lacks(10), &batch());
        padded[5] |= 1;
        assert_eq!(
            RowsAnswer::decode(&padded, &r),
            Err(RepairWireError::Bounds("padding bits"))
        );
    }

    #[test]
    fn short_hashes_depend_on_the_seed() {
        assert_eq!(short_hash(42, 1), short_hash(42, 1));
        assert_ne!(short_hash(42, 1), short_hash(42, 2));
        assert_ne!(short_hash(42, 1), short_hash(43, 1));
    }
}
