//! The bodies of the two anti-entropy calls (`repair`): comparing digest
//! trees and asking a replica to pull ranges from this node. Integers are
//! big-endian; every decoder refuses what does not parse exactly, and
//! bounds what it allocates by the bytes it was given.
//!
//! # `POST /internal/v1/digest`
//!
//! Request: the hashes of some nodes of one level of the answering node's
//! tree of a range (`repair::tree` defines the tree and its hashes).
//!
//! ```text
//! offset  size  field
//! 0       8     session: the asker's id for this comparison (a tree is
//!               built once per session, range and depth, and kept a while)
//! 8       8     range start S (exclusive)
//! 16      8     range end E (inclusive); E == S is the whole ring
//! 24      1     depth d, at most repair::tree::MAX_DEPTH
//! 25      1     level l, at most d
//! 26      4     n, 1 ..= MAX_NODES_PER_CALL
//! 30      4n    node indices of level l, u32 each, below FANOUT^l
//! ```
//!
//! Answer (200):
//!
//! ```text
//! 0       8     items in the answering node's range (as of its snapshot)
//! 8       8n    the hash of each node asked for, in the order asked
//! ```
//!
//! # `POST /internal/v1/repair-pull`
//!
//! Request: "pull these ranges from me".
//!
//! ```text
//! 0       2     asker's node id length k, u16, 1 ..= 255
//! 2       k     asker's node id, UTF-8
//! 2+k     4     n, 1 ..= MAX_PULL_RANGES
//! 6+k     16n   ranges: start u64, end u64
//! ```
//!
//! Answer (200, streamed as each range finishes, in order): one u64 per
//! range, the entries applied, or [`PULL_FAILED`]. An answer that ends
//! early was cut: the ranges it did not report are not known to be done.

use strata_ring::TokenRange;

/// Children per inner node of a digest tree (`repair::tree`). Four rather
/// than Cassandra's two or a wider sixteen: a top-down walk costs about
/// `FANOUT * 8 * levels` bytes per differing leaf, and `F / ln F` is
/// smallest for 2..4; four halves the round trips of two.
pub(crate) const FANOUT: u32 = 4;
/// Deepest digest tree: `4^10` (about a million) leaves.
pub(crate) const MAX_DEPTH: u8 = 10;
/// The most node hashes asked for in one call: 128 KiB of answer.
pub(crate) const MAX_NODES_PER_CALL: usize = 16 * 1024;

/// Path of the digest route.
pub const DIGEST_PATH: &str = "/internal/v1/digest";
/// Path of the repair-pull route.
pub const REPAIR_PULL_PATH: &str = "/internal/v1/repair-pull";
/// Ranges in one repair-pull request.
pub const MAX_PULL_RANGES: usize = 4096;
/// The count a repair-pull answer gives for a range it could not pull.
pub const PULL_FAILED: u64 = u64::MAX;
/// Largest digest request body.
pub const MAX_DIGEST_REQUEST: usize = 30 + 4 * MAX_NODES_PER_CALL;
/// Largest repair-pull request body.
pub const MAX_PULL_REQUEST: usize = 6 + 255 + 16 * MAX_PULL_RANGES;

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
    /// A node id that is not UTF-8.
    #[error("node id is not UTF-8")]
    BadId,
}

/// A digest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRequest {
    /// The asker's comparison.
    pub session: u64,
    /// The range.
    pub range: TokenRange,
    /// The tree's depth.
    pub depth: u8,
    /// The level asked about.
    pub level: u8,
    /// Node indices of that level.
    pub nodes: Vec<u32>,
}

/// A digest answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAnswer {
    /// Items in the answering node's range.
    pub items: u64,
    /// One hash per node asked for.
    pub hashes: Vec<u64>,
}

/// A repair-pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The node to pull from (the asker).
    pub from: String,
    /// The ranges to pull.
    pub ranges: Vec<TokenRange>,
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

    fn take<const N: usize>(&mut self) -> Result<[u8; N], RepairWireError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(RepairWireError::Length { len: self.len })?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, RepairWireError> {
        self.take().map(u64::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, RepairWireError> {
        self.take().map(u32::from_be_bytes)
    }

    /// A count of items of `size` bytes each, bounded by `max` and by the
    /// bytes left, so a corrupt count cannot make the decoder allocate.
    fn count(&mut self, max: usize, size: usize) -> Result<usize, RepairWireError> {
        let n = usize::try_from(self.u32()?).map_err(|_| RepairWireError::Bounds("count"))?;
        if n == 0 || n > max {
            return Err(RepairWireError::Bounds("count"));
        }
        if self.bytes.len() != n * size {
            return Err(RepairWireError::Length { len: self.len });
        }
        Ok(n)
    }
}

impl DigestRequest {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30 + 4 * self.nodes.len());
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.range.start().to_be_bytes());
        out.extend_from_slice(&self.range.end().to_be_bytes());
        out.push(self.depth);
        out.push(self.level);
        // At most MAX_NODES_PER_CALL: the asker batches.
        out.extend_from_slice(
            &u32::try_from(self.nodes.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for n in &self.nodes {
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
        if depth > MAX_DEPTH {
            return Err(RepairWireError::Bounds("depth"));
        }
        if level > depth {
            return Err(RepairWireError::Bounds("level"));
        }
        let n = r.count(MAX_NODES_PER_CALL, 4)?;
        let limit = u64::from(FANOUT).pow(u32::from(level));
        let nodes = (0..n)
            .map(|_| {
                let node = r.u32()?;
                if u64::from(node) >= limit {
                    return Err(RepairWireError::Bounds("node index"));
                }
                Ok(node)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            session,
            range,
            depth,
            level,
            nodes,
        })
    }
}

impl DigestAnswer {
    /// The answer's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 * self.hashes.len());
        out.extend_from_slice(&self.items.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(&h.to_be_bytes());
        }
        out
    }

    /// Parses [`DigestAnswer::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepairWireError> {
        let mut r = Reader::new(bytes);
        let items = r.u64()?;
        if !r.bytes.len().is_multiple_of(8) || r.bytes.len() / 8 > MAX_NODES_PER_CALL {
            return Err(RepairWireError::Length { len: bytes.len() });
        }
        let hashes = (0..r.bytes.len() / 8)
            .map(|_| r.u64())
            .collect::<Result<_, _>>()?;
        Ok(Self { items, hashes })
    }
}

impl PullRequest {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.from.len() + 16 * self.ranges.len());
        // Node ids are short names; the asker checks before sending.
        out.extend_from_slice(
            &u16::try_from(self.from.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(self.from.as_bytes());
        out.extend_from_slice(
            &u32::try_from(self.ranges.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for r in &self.ranges {
            out.extend_from_slice(&r.start().to_be_bytes());
            out.extend_from_slice(&r.end().to_be_bytes());
        }
        out
    }

    /// Parses [`PullRequest::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepairWireError> {
        let mut r = Reader::new(bytes);
        let k = usize::from(u16::from_be_bytes(r.take::<2>()?));
        if k == 0 || k > 255 {
            return Err(RepairWireError::Bounds("node id length"));
        }
        let id = r
            .bytes
            .get(..k)
            .ok_or(RepairWireError::Length { len: bytes.len() })?;
        let from = std::str::from_utf8(id)
            .map_err(|_| RepairWireError::BadId)?
            .to_owned();
        r.bytes = r.bytes.get(k..).unwrap_or_default();
        let n = r.count(MAX_PULL_RANGES, 16)?;
        let ranges = (0..n)
            .map(|_| Ok(TokenRange::new(r.u64()?, r.u64()?)))
            .collect::<Result<_, RepairWireError>>()?;
        Ok(Self { from, ranges })
    }
}

/// The counts of a repair-pull answer, fed in pieces of any size.
#[derive(Debug, Default)]
pub struct PullCounts {
    partial: Vec<u8>,
    counts: Vec<u64>,
}

impl PullCounts {
    /// Adds received bytes; refuses more counts than ranges asked for.
    pub fn push(&mut self, bytes: &[u8], ranges: usize) -> Result<(), RepairWireError> {
        self.partial.extend_from_slice(bytes);
        let whole = self.partial.len() / 8;
        if self.counts.len() + whole > ranges {
            return Err(RepairWireError::Bounds("answer count"));
        }
        for chunk in self.partial.chunks_exact(8) {
            if let Ok(c) = <[u8; 8]>::try_from(chunk) {
                self.counts.push(u64::from_be_bytes(c));
            }
        }
        self.partial.drain(..whole * 8);
        Ok(())
    }

    /// The counts received whole so far, one per range in order.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn digest() -> DigestRequest {
        DigestRequest {
            session: 7,
            range: TokenRange::new(u64::MAX - 1, 5),
            depth: 4,
            level: 2,
            nodes: vec![0, 3, 15],
        }
    }

    fn pull() -> PullRequest {
        PullRequest {
            from: "node-1".into(),
            ranges: vec![TokenRange::new(1, 2), TokenRange::new(9, 9)],
        }
    }

    #[test]
    fn bodies_round_trip() {
        let d = digest();
        assert_eq!(DigestRequest::decode(&d.encode()).unwrap(), d);
        let a = DigestAnswer {
            items: 12,
            hashes: vec![1, u64::MAX, 0],
        };
        assert_eq!(DigestAnswer::decode(&a.encode()).unwrap(), a);
        let p = pull();
        assert_eq!(PullRequest::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        type Decode = fn(&[u8]) -> bool;
        let answer = DigestAnswer {
            items: 1,
            hashes: vec![2, 3],
        };
        let cases: [(Vec<u8>, Decode); 3] = [
            (digest().encode(), |b| DigestRequest::decode(b).is_ok()),
            (pull().encode(), |b| PullRequest::decode(b).is_ok()),
            (answer.encode(), |b| DigestAnswer::decode(b).is_ok()),
        ];
        for (body, decodes) in cases {
            assert!(decodes(&body));
            // An answer of fewer whole hashes is well-formed: the asker
            // checks the count against what it asked.
            for len in (0..body.len()).filter(|l| !(body.len() == 24 && (*l == 8 || *l == 16))) {
                assert!(!decodes(&body[..len]), "len {len}");
            }
            let mut longer = body.clone();
            longer.push(0);
            assert!(!decodes(&longer));
        }
    }

    #[test]
    fn out_of_bounds_fields_are_refused() {
        let mut d = digest();
        d.nodes = vec![16];
        assert_eq!(
            DigestRequest::decode(&d.encode()),
            Err(RepairWireError::Bounds("node index"))
        );
        let mut d = digest();
        d.level = 5;
        assert!(DigestRequest::decode(&d.encode()).is_err());
        let mut d = digest();
        d.depth = MAX_DEPTH + 1;
        d.level = 0;
        assert!(DigestRequest::decode(&d.encode()).is_err());
        let mut d = digest();
        d.nodes.clear();
        assert!(DigestRequest::decode(&d.encode()).is_err());
        let mut p = pull().encode();
        p[2] = 0xff;
        assert!(PullRequest::decode(&p).is_err());
    }

    #[test]
    fn pull_counts_arrive_in_any_pieces_and_no_more_than_asked() {
        let bytes: Vec<u8> = [3u64, PULL_FAILED, 0]
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        for piece in [1, 5, 8, 24] {
            let mut counts = PullCounts::default();
            for chunk in bytes.chunks(piece) {
                counts.push(chunk, 3).unwrap();
            }
            assert_eq!(counts.counts(), [3, PULL_FAILED, 0]);
        }
        let mut counts = PullCounts::default();
        assert!(counts.push(&bytes, 2).is_err());
    }
}
