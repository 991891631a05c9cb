//! The one place that says what an internal key is.
//!
//! Every version of every user key is stored under an *internal key*: the user
//! key followed by an 8-byte little-endian tag, `tag = (sequence << 8) | kind`.
//!
//! ```text
//! +-------------------+----------------------------------+
//! | user key (n bytes)| tag: u64 LE = seq << 8 | kind    |
//! +-------------------+----------------------------------+
//! ```
//!
//! Internal keys order by user key ascending, then by tag descending, so the
//! newest version of a key comes first and a seek to `(key, snapshot_seq)`
//! lands on the newest version that the snapshot may see.

use std::cmp::Ordering;

use crate::error::DecodeError;

/// Largest sequence number: 56 bits, because the low byte of a tag holds the kind.
pub const MAX_SEQUENCE: u64 = (1 << 56) - 1;

/// Width of the tag appended to every user key.
pub(crate) const TAG_LEN: usize = 8;

/// What an internal entry records. Do not change the values: they are on disk.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ValueKind {
    /// A deletion marker (tombstone); its value is empty.
    Deletion = 0,
    /// A live value.
    Value = 1,
    /// A value moved to a blob file: the entry's value is its
    /// `blob::BlobRef`. Only tables hold it; a write batch never does.
    BlobIndex = 2,
    /// `Db::delete_range`: the record's key is the range's start and its
    /// value the end (see `range_del`). Only write batches hold it; a table
    /// keeps range tombstones apart from its entries.
    RangeDeletion = 3,
}

/// The kind used in seek keys: the highest kind of a point entry, so that
/// `(key, seq, SEEK_KIND)` sorts before every real entry of `key` at `seq`
/// (`RangeDeletion` is never one).
pub(crate) const SEEK_KIND: ValueKind = ValueKind::BlobIndex;

impl TryFrom<u8> for ValueKind {
    type Error = DecodeError;

    fn try_from(b: u8) -> Result<Self, DecodeError> {
        match b {
            0 => Ok(ValueKind::Deletion),
            1 => Ok(ValueKind::Value),
            2 => Ok(ValueKind::BlobIndex),
            3 => Ok(ValueKind::RangeDeletion),
            _ => Err(DecodeError("unknown value kind")),
        }
    }
}

pub(crate) fn pack_tag(seq: u64, kind: ValueKind) -> u64 {
    debug_assert!(seq <= MAX_SEQUENCE);
    (seq << 8) | kind as u64
}

/// Splits a tag into sequence and kind. Tags are those of point entries:
/// a range deletion is never one.
pub(crate) fn unpack_tag(tag: u64) -> Result<(u64, ValueKind), DecodeError> {
    match ValueKind::try_from((tag & 0xff) as u8)? {
        ValueKind::RangeDeletion => Err(DecodeError("range deletion among point entries")),
        kind => Ok((tag >> 8, kind)),
    }
}

/// Appends the internal key `user_key ++ tag` to `dst`.
pub(crate) fn append_internal_key(dst: &mut Vec<u8>, user_key: &[u8], seq: u64, kind: ValueKind) {
    append_tagged(dst, user_key, pack_tag(seq, kind));
}

/// Appends `user_key ++ tag` to `dst`, for a tag already packed.
pub(crate) fn append_tagged(dst: &mut Vec<u8>, user_key: &[u8], tag: u64) {
    dst.extend_from_slice(user_key);
    dst.extend_from_slice(&tag.to_le_bytes());
}

pub(crate) fn internal_key(user_key: &[u8], seq: u64, kind: ValueKind) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + TAG_LEN);
    append_internal_key(&mut k, user_key, seq, kind);
    k
}

/// A borrowed, validated internal key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParsedKey<'a> {
    pub(crate) user_key: &'a [u8],
    pub(crate) seq: u64,
    pub(crate) kind: ValueKind,
}

impl<'a> ParsedKey<'a> {
    pub(crate) fn parse(ikey: &'a [u8]) -> Result<Self, DecodeError> {
        let (user_key, tag) = split_internal_key(ikey)?;
        let (seq, kind) = unpack_tag(tag)?;
        Ok(ParsedKey {
            user_key,
            seq,
            kind,
        })
    }
}

fn split_internal_key(ikey: &[u8]) -> Result<(&[u8], u64), DecodeError> {
    let split = ikey
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(DecodeError("internal key shorter than its tag"))?;
    let (user, tag) = ikey.split_at(split);
    let tag: [u8; 8] = tag
        .try_into()
        .map_err(|_| DecodeError("internal key shorter than its tag"))?;
    Ok((user, u64::from_le_bytes(tag)))
}

/// The user-key part of an internal key; the whole slice if it is too short
/// to hold a tag (such keys never pass validation, so the choice is moot).
pub(crate) fn user_key(ikey: &[u8]) -> &[u8] {
    ikey.get(..ikey.len().saturating_sub(TAG_LEN))
        .unwrap_or(ikey)
}

fn tag_of(ikey: &[u8]) -> u64 {
    split_internal_key(ikey).map(|(_, t)| t).unwrap_or(0)
}

/// The internal-key order: user key ascending, then tag (sequence) descending.
pub(crate) fn compare_internal(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a)
        .cmp(user_key(b))
        .then_with(|| tag_of(b).cmp(&tag_of(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_user_key_then_newest_first() {
        let a1 = internal_key(b"a", 1, ValueKind::Value);
        let a2 = internal_key(b"a", 2, ValueKind::Value);
        let ab = internal_key(b"ab", 1, ValueKind::Value);
        let b = internal_key(b"b", 9, ValueKind::Deletion);
        assert_eq!(compare_internal(&a2, &a1), Ordering::Less);
        assert_eq!(compare_internal(&a1, &ab), Ordering::Less);
        assert_eq!(compare_internal(&ab, &b), Ordering::Less);
        // A user key that is a prefix of another still sorts first, whatever its tag.
        let a_max = internal_key(b"a", MAX_SEQUENCE, SEEK_KIND);
        assert_eq!(compare_internal(&a_max, &a1), Ordering::Less);
    }

    #[test]
    fn parse_round_trip_and_rejects_garbage() {
        let k = internal_key(b"key", 42, ValueKind::Deletion);
        let p = ParsedKey::parse(&k).unwrap();
        assert_eq!(
            (p.user_key, p.seq, p.kind),
            (&b"key"[..], 42, ValueKind::Deletion)
        );
        assert!(ParsedKey::parse(b"short").is_err());
        let mut bad = k.clone();
        let last = bad.len() - TAG_LEN;
        bad[last] = 7;
        assert!(ParsedKey::parse(&bad).is_err());
    }
}
