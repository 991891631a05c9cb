//! Entry points for the fuzz targets in `fuzz/`: each feeds arbitrary bytes
//! to one decoder. Not part of the API; built only with the `fuzzing` feature.

use std::path::Path;

/// Reads every record of `bytes` as a log file: as the newest log and as
/// an older one, as a WAL (where reserved zeros end the log) and not,
/// skipping damage.
pub fn wal_reader(bytes: &[u8]) {
    for tolerate in [false, true] {
        for wal in [false, true] {
            let reader = crate::wal::LogReader::new(bytes, Path::new("fuzz.log"), tolerate);
            let reader = if wal { reader.zero_tail_ends() } else { reader };
            read_skipping_damage(reader, bytes.len(), |_| ());
        }
    }
}

/// Reads `reader` (over `len` bytes) to its end, skipping each
/// corruption, and hands each record to `each`.
fn read_skipping_damage(
    mut reader: crate::wal::LogReader<&[u8]>,
    len: usize,
    each: impl Fn(&[u8]),
) {
    // Each skip moves on to a later block, or keeps a block read ahead past
    // the damage (then the next skip there drops it): the skips are bounded.
    let mut skips_left = 2 * (len / crate::wal::BLOCK_SIZE) + 2;
    loop {
        match reader.next_record() {
            Ok(Some(record)) => each(&record),
            Err(crate::Error::Corruption { offset, .. }) if skips_left > 0 => {
                skips_left -= 1;
                reader.skip_damage(offset);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Decodes `bytes` as a version edit (a MANIFEST record); whatever decodes
/// must encode back to the same edit.
pub fn version_edit(bytes: &[u8]) {
    if let Ok(edit) = crate::version::VersionEdit::decode(bytes) {
        let again = crate::version::VersionEdit::decode(&edit.encode());
        assert_eq!(again.ok(), Some(edit), "a decoded edit must round-trip");
    }
}

/// Reads `bytes` as a MANIFEST: the log reader skipping damage, each record
/// decoded as a version edit.
pub fn manifest(bytes: &[u8]) {
    let reader = crate::wal::LogReader::new(bytes, Path::new("MANIFEST-fuzz"), true);
    read_skipping_damage(reader, bytes.len(), |record| {
        let _ = crate::version::VersionEdit::decode(record);
    });
}

/// Decodes `bytes` as a write batch.
pub fn batch_decoder(bytes: &[u8]) {
    if let Ok(records) = crate::batch::BatchRecords::decode(bytes) {
        for record in records {
            if record.is_err() {
                break;
            }
        }
    }
}

/// Walks and seeks `bytes` as a data block.
pub fn block_reader(bytes: &[u8]) {
    let scan = |block: &[u8]| {
        if let Ok(mut it) = crate::sstable::block::BlockIter::new(block) {
            while let Ok(true) = it.advance() {}
            let _ = it.seek(b"m", |a, b| a.cmp(b));
        }
    };
    scan(bytes);
    // The same bytes as a stored LZ4 block, as a reader meets one whose
    // checksum matched.
    use crate::sstable::block_buf::{recycle, BlockBuf};
    use crate::sstable::footer::{decompress, decompress_block, LZ4_COMPRESSION};
    let fresh = decompress(LZ4_COMPRESSION, bytes);
    if let Ok(block) = &fresh {
        scan(block);
    }
    // Decoded into a buffer left full of another block's bytes, as the
    // block cache's reads are, it must come out the same, or fail the same.
    let claimed = bytes
        .first_chunk::<4>()
        .map_or(0, |c| u32::from_le_bytes(*c)) as usize;
    if let Ok(dirty) = BlockBuf::fill::<()>(claimed.min(64 << 10), |b| {
        b.fill(0xAA);
        Ok(())
    }) {
        recycle(dirty);
    }
    let recycled = decompress_block(LZ4_COMPRESSION, bytes);
    match (&fresh, &recycled) {
        (Ok(a), Ok(b)) => assert_eq!(a.as_slice(), &**b, "a recycled buffer changed a block"),
        (Err(_), Err(_)) => {}
        _ => panic!("a recycled buffer changed whether a block decodes"),
    }
}

/// Opens `bytes` as a table file (written to `dir`) and scans it.
pub fn table_reader(dir: &Path, bytes: &[u8]) {
    let path = dir.join("fuzz.sst");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let fs: std::sync::Arc<dyn crate::fs::FileSystem> = std::sync::Arc::new(crate::fs::OsFs);
    if let Ok(table) = crate::sstable::Table::open(&fs, &path) {
        let _ = table.may_contain(crate::sstable::KeyHash::of(b"key"));
        let _ = table.lookup(b"key", crate::MAX_SEQUENCE);
        let bounds = crate::iter::KeyBounds::prefix(b"");
        let mut source = crate::sstable::TableSource::new(
            std::sync::Arc::new(table),
            &bounds,
            crate::iter::Direction::Forward,
        );
        use crate::iter::Source;
        while let Ok(Some(_)) = source.next_entry() {}
    }
}

/// Reads `bytes` as a blob file, and reads the record a pointer decoded
/// from its first bytes names, through the read path of a lookup: damage is
/// an error, and a record that passes is exactly what the scan counted.
pub fn blob_file(bytes: &[u8]) {
    use crate::fs::{FileSystem, MemFs};
    let path = Path::new("/d/000001.blob");
    let scanned = crate::blob::scan_bytes(bytes, path, 1);
    let pointer = bytes.get(..bytes.len().min(24)).unwrap_or_default();
    // A lookup's pointer comes from a checksummed table and never names
    // more than its file holds; one that did would only allocate in vain.
    if let Some(r) = crate::blob::BlobRef::decode(pointer)
        .ok()
        .filter(|r| r.len <= bytes.len() as u64)
    {
        let fs = MemFs::new();
        let file = fs
            .create_dir_all(Path::new("/d"))
            .and_then(|()| fs.create_new(path))
            .and_then(|mut w| w.append(bytes));
        let file = file
            .and_then(|()| fs.open(path))
            .expect("an in-memory file");
        if let Ok(value) = crate::blob::read_record(&*file, path, &r) {
            assert_eq!(
                value.len() as u64,
                r.len,
                "a checked record has the pointer's length"
            );
        }
    }
    if let Ok(meta) = scanned {
        // Magic, then an 8-byte header per record, then at most a torn
        // last record.
        assert!(
            meta.bytes + meta.count * 8 + 8 <= bytes.len() as u64,
            "a clean scan counts no more than the file holds"
        );
    }
}
