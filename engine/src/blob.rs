//! Blob files: value separation. A value of at least
//! [`Options::blob_threshold`](crate::Options::blob_threshold) bytes never
//! enters the tree: the write path appends it to the blob file of the
//! current WAL and logs a small [`BlobRef`] under the entry kind `BlobIndex`
//! in its place (WiscKey's value log; see `db/write`). The memtable and the
//! tables hold that pointer, and the flush hands the WAL's blob file to the
//! version with the table. Compaction moves the 20-byte pointer down the
//! levels, not the value, so a large value is written once. (A value logged
//! whole by an older build is moved to a blob file written beside the
//! table at its flush.)
//!
//! # File layout (`NNNNNN.blob`)
//!
//! ```text
//! magic   8 bytes   b"STRBLOB1"
//! record  repeated  value_len u32 LE | masked crc32 of the value u32 LE | value
//! ```
//!
//! A file is written once, fsynced, and only then named by the manifest
//! edit that adds the table pointing into it (the same edit); it never
//! changes afterwards. A WAL's blob file is synced with its WAL, before it,
//! so that a synced WAL record never points at a value that is not; replay
//! checks every pointer, and one that finds no whole record ends the newest
//! log's replay as a torn tail (the repair scan likewise stops at a torn
//! last record). A [`BlobRef`] names the file, the record's offset and
//! the value's length, so a read is one `pread` of the record, checked
//! against both the pointer and the checksum.
//!
//! # Lifetime
//!
//! Every record is pointed to by exactly one entry of one table: pointers
//! are made only by the write path or a flush, each pointer goes to one
//! table, and a compaction either copies an entry or drops it. (Records
//! that no pointer ever named, from a write that failed, are simply not
//! counted in their file's meta.) So a compaction that drops a `BlobIndex` entry (overwritten,
//! deleted, filtered) adds that record to its file's *garbage* in the edit
//! it installs, and a file whose garbage covers every record leaves the
//! version; like a table, it is deleted when the last reader holding a
//! version with it is gone. The manifest records each file's record count
//! and value bytes with its garbage, so the accounting survives restarts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::coding::{get_varint64, put_varint64};
use crate::error::{DecodeError, Error, Result};
use crate::fs::{self, Appender, Dir, FileSystem, RandomAccessFile};
use crate::wal::mask_crc;

const MAGIC: &[u8; 8] = b"STRBLOB1";
/// `value_len` and the checksum.
const RECORD_HEADER: u64 = 8;

/// Where a separated value lives: the table entry's value for kind `BlobIndex`.
///
/// Encoded as three varint64s: file number, record offset, value length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobRef {
    pub(crate) file: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl BlobRef {
    /// The pointer an entry of kind `BlobIndex` holds; one that does not
    /// decode is corruption of the table or log it came from.
    pub(crate) fn from_entry(value: &[u8]) -> Result<Self> {
        Self::decode(value)
            .map_err(|e| Error::corruption(PathBuf::new(), 0, format!("bad blob pointer: {}", e.0)))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        put_varint64(&mut out, self.file);
        put_varint64(&mut out, self.offset);
        put_varint64(&mut out, self.len);
        out
    }

    pub(crate) fn decode(mut src: &[u8]) -> Result<Self, DecodeError> {
        let r = BlobRef {
            file: get_varint64(&mut src)?,
            offset: get_varint64(&mut src)?,
            len: get_varint64(&mut src)?,
        };
        if !src.is_empty() {
            return Err(DecodeError("blob pointer has trailing bytes"));
        }
        if r.offset < MAGIC.len() as u64 || r.len > u64::from(u32::MAX) {
            return Err(DecodeError("blob pointer out of range"));
        }
        Ok(r)
    }
}

/// What the manifest records of a blob file: its record count and the
/// bytes of its values (headers excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BlobMeta {
    pub(crate) number: u64,
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

impl BlobMeta {
    /// Whether the record `r` points to lies within the file's whole
    /// records, as [`scan`] counted them (a pointer past them reaches into
    /// a torn tail, or past the end).
    pub(crate) fn holds(&self, r: &BlobRef) -> bool {
        let end = r.offset.saturating_add(RECORD_HEADER).saturating_add(r.len);
        let whole = MAGIC.len() as u64 + self.count * RECORD_HEADER + self.bytes;
        r.file == self.number && end <= whole
    }
}

/// One meta per file number, the counts of each number's metas added up.
pub(crate) fn merge_counts(metas: impl IntoIterator<Item = BlobMeta>) -> Vec<BlobMeta> {
    let mut merged: std::collections::BTreeMap<u64, BlobMeta> = Default::default();
    for meta in metas {
        let m = merged.entry(meta.number).or_insert(BlobMeta {
            number: meta.number,
            ..BlobMeta::default()
        });
        m.count += meta.count;
        m.bytes += meta.bytes;
    }
    merged.into_values().collect()
}

/// Records of a blob file that no table points to any more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Garbage {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

impl Garbage {
    pub(crate) fn add(&mut self, other: Garbage) {
        self.count = self.count.saturating_add(other.count);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }

    /// Whether every record of the file is garbage, so that it can go.
    pub(crate) fn covers(&self, meta: &BlobMeta) -> bool {
        self.count >= meta.count
    }
}

pub(crate) fn blob_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.blob"))
}

/// Appends values to a new blob file.
pub(crate) struct BlobWriter {
    out: Appender,
    meta: BlobMeta,
}

impl BlobWriter {
    /// A blob file written at a flush or compaction: buffered, synced once
    /// at [`finish`](Self::finish).
    pub(crate) fn create(dir: &Dir, number: u64) -> Result<Self> {
        Self::with_buffer(dir, number, 256 << 10)
    }

    /// The blob file of a WAL (see `db/write`): every record reaches the
    /// file in the call that adds it, so a process crash keeps what a write
    /// was acknowledged for, as the WAL does.
    pub(crate) fn create_unbuffered(dir: &Dir, number: u64) -> Result<Self> {
        Self::with_buffer(dir, number, 0)
    }

    fn with_buffer(dir: &Dir, number: u64, buffer: usize) -> Result<Self> {
        let mut out = Appender::create(&**dir.fs(), &blob_path(dir, number), buffer)?;
        out.write(MAGIC)?;
        Ok(BlobWriter {
            out,
            meta: BlobMeta {
                number,
                ..BlobMeta::default()
            },
        })
    }

    /// Appends `value` and returns the pointer a table stores for it.
    pub(crate) fn add(&mut self, value: &[u8]) -> Result<BlobRef> {
        let len = u32::try_from(value.len())
            .map_err(|_| Error::InvalidArgument("value too large for a blob file".into()))?;
        let crc = mask_crc(crc32fast::hash(value));
        let r = BlobRef {
            file: self.meta.number,
            offset: self.out.len(),
            len: u64::from(len),
        };
        self.out.write(&len.to_le_bytes())?;
        self.out.write(&crc.to_le_bytes())?;
        self.out.write(value)?;
        self.meta.count += 1;
        self.meta.bytes += u64::from(len);
        Ok(r)
    }

    /// Makes every record added so far durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.out.sync()
    }

    /// Flushes and fsyncs the file.
    pub(crate) fn finish(mut self) -> Result<BlobMeta> {
        self.out.sync()?;
        Ok(self.meta)
    }
}

/// An open blob file of a version. Deleted when dropped after a version
/// edit made it obsolete (see "Lifetime").
#[derive(Debug)]
pub(crate) struct BlobFile {
    pub(crate) meta: BlobMeta,
    path: PathBuf,
    file: Arc<dyn RandomAccessFile>,
    fs: Arc<dyn FileSystem>,
    obsolete: AtomicBool,
}

impl BlobFile {
    pub(crate) fn open(dir: &Dir, meta: BlobMeta) -> Result<Self> {
        let path = blob_path(dir, meta.number);
        let file = dir.fs().open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::corruption(&path, 0, "blob file named by the manifest is missing")
            } else {
                Error::io(&path, e)
            }
        })?;
        Ok(BlobFile {
            meta,
            path,
            file,
            fs: dir.fs().clone(),
            obsolete: AtomicBool::new(false),
        })
    }

    pub(crate) fn read(&self, r: &BlobRef) -> Result<Vec<u8>> {
        read_record(&*self.file, &self.path, r)
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // A failed delete leaves garbage, not damage: the next open
            // removes it (the manifest no longer names it).
            let _ = self.fs.remove_file(&self.path);
        }
    }
}

/// Reads the value `r` points to straight from its file in `dir`, for the
/// checks of an open that have no version holding the file.
pub(crate) fn read_from_dir(dir: &Dir, r: &BlobRef) -> Result<Vec<u8>> {
    let path = blob_path(dir, r.file);
    let file = dir.fs().open(&path).map_err(|e| Error::io(&path, e))?;
    read_record(&*file, &path, r)
}

pub(crate) fn read_record(
    file: &dyn RandomAccessFile,
    path: &Path,
    r: &BlobRef,
) -> Result<Vec<u8>> {
    let len = usize::try_from(r.len)
        .map_err(|_| Error::corruption(path, r.offset, "blob pointer length out of range"))?;
    let past_end = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corruption(path, r.offset, "blob record runs past the end of its file")
        } else {
            Error::io(path, e)
        }
    };
    // The header and the value in two reads, so that the value lands in a
    // buffer of its own that is returned as it is, never shifted down over
    // the header.
    let mut header = [0u8; RECORD_HEADER as usize];
    file.read_exact_at(&mut header, r.offset)
        .map_err(past_end)?;
    let (stored, crc, _) = split_record(&header).unwrap_or_default();
    check_length(stored, path, r)?;
    let value = file
        .read_vec_at(len, r.offset + RECORD_HEADER)
        .map_err(past_end)?;
    check_crc(&value, crc, path, r.offset)?;
    Ok(value)
}

/// Whether a record that holds `stored` bytes is the one `r` points to.
fn check_length(stored: impl Into<u64>, path: &Path, r: &BlobRef) -> Result<()> {
    let stored = stored.into();
    if stored != r.len {
        return Err(Error::corruption(
            path,
            r.offset,
            format!(
                "blob record holds {stored} bytes, its pointer says {}",
                r.len
            ),
        ));
    }
    Ok(())
}

/// The value of the record at the start of `bytes` (which lies at `offset`
/// in the file at `path`), its length and checksum checked.
fn check_record<'a>(bytes: &'a [u8], path: &Path, offset: u64) -> Result<&'a [u8]> {
    let bad = |reason: &str| Error::corruption(path, offset, reason);
    let (len, crc, rest) =
        split_record(bytes).ok_or_else(|| bad("blob record header runs past the end"))?;
    let value = usize::try_from(len)
        .ok()
        .and_then(|len| rest.get(..len))
        .ok_or_else(|| bad("blob record runs past the end"))?;
    check_crc(value, crc, path, offset)?;
    Ok(value)
}

fn check_crc(value: &[u8], crc: u32, path: &Path, offset: u64) -> Result<()> {
    if mask_crc(crc32fast::hash(value)) != crc {
        return Err(Error::corruption(
            path,
            offset,
            "blob record checksum mismatch",
        ));
    }
    Ok(())
}

/// A record's stored length and checksum, and the bytes after its header.
fn split_record(record: &[u8]) -> Option<(u32, u32, &[u8])> {
    let (len, rest) = record.split_first_chunk::<4>()?;
    let (crc, value) = rest.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*len), u32::from_le_bytes(*crc), value))
}

/// Walks every record of the blob file at `path`, checking each checksum:
/// what [`Db::repair`](crate::Db::repair) learns of a file the manifest
/// cannot be trusted for. An error names the first bad record.
pub(crate) fn scan(fs: &dyn FileSystem, path: &Path, number: u64) -> Result<BlobMeta> {
    let data = fs::read_all(fs, path).map_err(|e| Error::io(path, e))?;
    scan_bytes(&data, path, number)
}

/// [`scan`] of a file's bytes, already read.
pub(crate) fn scan_bytes(data: &[u8], path: &Path, number: u64) -> Result<BlobMeta> {
    if data.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(Error::corruption(path, 0, "not a blob file (bad magic)"));
    }
    let mut meta = BlobMeta {
        number,
        ..BlobMeta::default()
    };
    let mut offset = MAGIC.len();
    while let Some(rest) = data.get(offset..).filter(|rest| !rest.is_empty()) {
        let value = match check_record(rest, path, offset as u64) {
            Ok(value) => value,
            // A last record cut short or not wholly written: the torn tail
            // a crash leaves in a WAL's blob file, whose pointers the WAL
            // replay drops too. Damage with records after it is not.
            Err(_) if is_last_record(rest) => break,
            Err(e) => return Err(e),
        };
        meta.count += 1;
        meta.bytes += value.len() as u64;
        offset += RECORD_HEADER as usize + value.len();
    }
    Ok(meta)
}

/// Whether the record at the start of `rest` claims to reach the end of
/// the file or beyond (its header cut short counts).
fn is_last_record(rest: &[u8]) -> bool {
    split_record(rest).is_none_or(|(len, _, value)| u64::from(len) >= value.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Dir, values: &[&[u8]]) -> (BlobMeta, Vec<BlobRef>) {
        let mut w = BlobWriter::create(dir, 7).unwrap();
        let refs = values.iter().map(|v| w.add(v).unwrap()).collect();
        (w.finish().unwrap(), refs)
    }

    #[test]
    fn values_read_back_and_the_file_scans_to_its_meta() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::os_dir(tmp.path());
        let big = vec![0xabu8; 300_000];
        let values: [&[u8]; 3] = [b"first", &[], &big];
        let (meta, refs) = write(&dir, &values);
        assert_eq!((meta.count, meta.bytes), (3, 5 + 300_000));
        let file = BlobFile::open(&dir, meta).unwrap();
        for (r, v) in refs.iter().zip(values) {
            assert_eq!(BlobRef::decode(&r.encode()).unwrap(), *r);
            assert_eq!(file.read(r).unwrap(), v);
            assert_eq!(read_from_dir(&dir, r).unwrap(), v);
        }
        assert_eq!(scan(&fs::OsFs, &blob_path(&dir, 7), 7).unwrap(), meta);
    }

    #[test]
    fn a_scanned_meta_holds_the_pointers_into_whole_records_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::os_dir(tmp.path());
        let (meta, refs) = write(&dir, &[b"one", b"", b"three"]);
        assert!(refs.iter().all(|r| meta.holds(r)));
        // The last record torn off: the scan counts two records.
        let path = blob_path(&dir, 7);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let torn = scan(&fs::OsFs, &path, 7).unwrap();
        assert_eq!(torn.count, 2);
        assert!(torn.holds(&refs[0]) && torn.holds(&refs[1]));
        assert!(!torn.holds(&refs[2]), "into the torn tail");
        let elsewhere = BlobRef { file: 8, ..refs[0] };
        assert!(!torn.holds(&elsewhere), "another file's record");
    }

    #[test]
    fn damage_is_corruption_never_other_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::os_dir(tmp.path());
        let (meta, refs) = write(&dir, &[b"hello world", b"second value"]);
        let path = blob_path(&dir, 7);
        let mut bytes = std::fs::read(&path).unwrap();
        let flip = refs[1].offset as usize + RECORD_HEADER as usize + 3;
        bytes[flip] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let file = BlobFile::open(&dir, meta).unwrap();
        assert_eq!(file.read(&refs[0]).unwrap(), b"hello world");
        let err = file.read(&refs[1]).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        // The last record damaged: a torn tail, which the scan leaves out.
        assert_eq!(scan(&fs::OsFs, &path, 7).unwrap().count, 1);
        let mut first_bad = std::fs::read(&path).unwrap();
        first_bad[refs[0].offset as usize + RECORD_HEADER as usize] ^= 1;
        std::fs::write(blob_path(&dir, 8), &first_bad).unwrap();
        let err = scan(&fs::OsFs, &blob_path(&dir, 8), 8).unwrap_err();
        assert!(err.is_corruption(), "damage before the last record: {err}");

        let wrong_len = BlobRef {
            len: refs[0].len + 1,
            ..refs[0]
        };
        assert!(file.read(&wrong_len).unwrap_err().is_corruption());
        let past_end = BlobRef {
            offset: bytes.len() as u64,
            ..refs[0]
        };
        assert!(file.read(&past_end).unwrap_err().is_corruption());
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(scan(&fs::OsFs, &path, 7).unwrap().count, 1, "cut short");
    }

    #[test]
    fn bad_pointers_do_not_decode() {
        let ok = BlobRef {
            file: 3,
            offset: 8,
            len: 10,
        };
        let enc = ok.encode();
        for cut in 0..enc.len() {
            assert!(BlobRef::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(BlobRef::decode(&trailing).is_err());
        let inside_magic = BlobRef { offset: 2, ..ok };
        assert!(BlobRef::decode(&inside_magic.encode()).is_err());
    }
}
