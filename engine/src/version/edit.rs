//! Version edits: the records of the MANIFEST.
//!
//! An edit is a sequence of tagged fields (tags fixed forever):
//!
//! ```text
//! 1 log_number      varint          WAL files below this number are obsolete
//! 2 next_file_number varint
//! 3 last_sequence   varint
//! 4 deleted_file    varint level | varint number
//! 5 new_file        varint level | varint number | varint size
//!                   | varint len | smallest internal key | varint len | largest internal key
//! ```
//!
//! Replaying every edit of a MANIFEST in order rebuilds the set of live tables.

use crate::blob::{BlobMeta, Garbage};
use crate::coding::{
    get_length_prefixed, get_varint32, get_varint64, put_length_prefixed, put_varint32,
    put_varint64,
};
use crate::error::DecodeError;
use crate::key::ParsedKey;

const TAG_LOG_NUMBER: u32 = 1;
const TAG_NEXT_FILE: u32 = 2;
const TAG_LAST_SEQUENCE: u32 = 3;
const TAG_DELETED_FILE: u32 = 4;
const TAG_NEW_FILE: u32 = 5;
const TAG_NEW_BLOB: u32 = 6;
const TAG_BLOB_GARBAGE: u32 = 7;

/// Number of levels. Do not lower: level numbers are on disk.
pub(crate) const NUM_LEVELS: usize = 7;

/// A table as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    pub(crate) number: u64,
    pub(crate) size: u64,
    /// Smallest and largest internal keys in the table.
    pub(crate) smallest: Vec<u8>,
    pub(crate) largest: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionEdit {
    pub(crate) log_number: Option<u64>,
    pub(crate) next_file_number: Option<u64>,
    pub(crate) last_sequence: Option<u64>,
    pub(crate) deleted: Vec<(usize, u64)>,
    pub(crate) added: Vec<(usize, FileMeta)>,
    /// Blob files written by the flush or compaction this edit installs.
    pub(crate) added_blobs: Vec<BlobMeta>,
    /// Records of blob files that the edit's compaction dropped the
    /// pointers to (see `blob`); applied after `added_blobs`.
    pub(crate) blob_garbage: Vec<(u64, Garbage)>,
}

impl VersionEdit {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |tag: u32, v: u64| {
            put_varint32(&mut out, tag);
            put_varint64(&mut out, v);
        };
        if let Some(v) = self.log_number {
            field(TAG_LOG_NUMBER, v);
        }
        if let Some(v) = self.next_file_number {
            field(TAG_NEXT_FILE, v);
        }
        if let Some(v) = self.last_sequence {
            field(TAG_LAST_SEQUENCE, v);
        }
        for &(level, number) in &self.deleted {
            put_varint32(&mut out, TAG_DELETED_FILE);
            put_varint32(&mut out, level as u32);
            put_varint64(&mut out, number);
        }
        for (level, f) in &self.added {
            put_varint32(&mut out, TAG_NEW_FILE);
            put_varint32(&mut out, *level as u32);
            put_varint64(&mut out, f.number);
            put_varint64(&mut out, f.size);
            put_length_prefixed(&mut out, &f.smallest);
            put_length_prefixed(&mut out, &f.largest);
        }
        for b in &self.added_blobs {
            put_varint32(&mut out, TAG_NEW_BLOB);
            put_varint64(&mut out, b.number);
            put_varint64(&mut out, b.count);
            put_varint64(&mut out, b.bytes);
        }
        for (number, g) in &self.blob_garbage {
            put_varint32(&mut out, TAG_BLOB_GARBAGE);
            put_varint64(&mut out, *number);
            put_varint64(&mut out, g.count);
            put_varint64(&mut out, g.bytes);
        }
        out
    }

    pub(crate) fn decode(mut src: &[u8]) -> Result<Self, DecodeError> {
        let mut edit = VersionEdit::default();
        let level = |src: &mut &[u8]| -> Result<usize, DecodeError> {
            let l = get_varint32(src)? as usize;
            if l >= NUM_LEVELS {
                return Err(DecodeError("level out of range"));
            }
            Ok(l)
        };
        while !src.is_empty() {
            match get_varint32(&mut src)? {
                TAG_LOG_NUMBER => edit.log_number = Some(get_varint64(&mut src)?),
                TAG_NEXT_FILE => edit.next_file_number = Some(get_varint64(&mut src)?),
                TAG_LAST_SEQUENCE => edit.last_sequence = Some(get_varint64(&mut src)?),
                TAG_DELETED_FILE => {
                    let l = level(&mut src)?;
                    edit.deleted.push((l, get_varint64(&mut src)?));
                }
                TAG_NEW_FILE => {
                    let l = level(&mut src)?;
                    let meta = FileMeta {
                        number: get_varint64(&mut src)?,
                        size: get_varint64(&mut src)?,
                        smallest: get_length_prefixed(&mut src)?.to_vec(),
                        largest: get_length_prefixed(&mut src)?.to_vec(),
                    };
                    ParsedKey::parse(&meta.smallest)?;
                    ParsedKey::parse(&meta.largest)?;
                    edit.added.push((l, meta));
                }
                TAG_NEW_BLOB => edit.added_blobs.push(BlobMeta {
                    number: get_varint64(&mut src)?,
                    count: get_varint64(&mut src)?,
                    bytes: get_varint64(&mut src)?,
                }),
                TAG_BLOB_GARBAGE => {
                    let number = get_varint64(&mut src)?;
                    let garbage = Garbage {
                        count: get_varint64(&mut src)?,
                        bytes: get_varint64(&mut src)?,
                    };
                    edit.blob_garbage.push((number, garbage));
                }
                _ => return Err(DecodeError("unknown version edit tag")),
            }
        }
        Ok(edit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{internal_key, ValueKind};

    fn sample() -> VersionEdit {
        VersionEdit {
            log_number: Some(12),
            next_file_number: Some(40),
            last_sequence: Some(1 << 50),
            deleted: vec![(0, 3), (2, 17)],
            added: vec![(
                1,
                FileMeta {
                    number: 39,
                    size: 4096,
                    smallest: internal_key(b"a", 5, ValueKind::Value),
                    largest: internal_key(b"q", 9, ValueKind::Deletion),
                },
            )],
            added_blobs: vec![BlobMeta {
                number: 38,
                count: 12,
                bytes: 1 << 22,
            }],
            blob_garbage: vec![(
                21,
                Garbage {
                    count: 3,
                    bytes: 70_000,
                },
            )],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(VersionEdit::decode(&e.encode()).unwrap(), e);
        assert_eq!(VersionEdit::decode(&[]).unwrap(), VersionEdit::default());
    }

    #[test]
    fn every_truncation_is_an_error_or_a_field_prefix() {
        let e = sample();
        let enc = e.encode();
        let mut decoded_prefixes = 0;
        for cut in 0..enc.len() {
            match VersionEdit::decode(&enc[..cut]) {
                // A cut on a field boundary decodes to exactly the fields
                // before it, in encoding order (the manifest's CRC is what
                // rejects such a record; this checks nothing is invented).
                Ok(got) => {
                    decoded_prefixes += 1;
                    assert_ne!(got, e, "cut at {cut} decoded to the whole edit");
                    assert_eq!(got.encode(), enc[..cut], "cut at {cut}");
                }
                Err(DecodeError(reason)) => assert!(!reason.is_empty()),
            }
        }
        // log, next file, sequence, two deletions: six boundaries with the empty one.
        assert_eq!(decoded_prefixes, 8);
    }

    #[test]
    fn bad_fields_are_errors() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("unknown tag", vec![99, 1]),
            ("level out of range", vec![TAG_DELETED_FILE as u8, 7, 1]),
            ("varint past the end", vec![TAG_LOG_NUMBER as u8, 0x80]),
            (
                "key shorter than its tag",
                vec![TAG_NEW_FILE as u8, 0, 1, 1, 3, b'a', b'b', b'c', 0],
            ),
            (
                "length past the end",
                vec![TAG_NEW_FILE as u8, 0, 1, 1, 40, 1],
            ),
        ];
        for (what, bytes) in cases {
            assert!(VersionEdit::decode(&bytes).is_err(), "{what}");
        }
    }
}
