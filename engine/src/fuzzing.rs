//! Entry points for the fuzz targets in `fuzz/`: each feeds arbitrary bytes
//! to one decoder. Not part of the API; built only with the `fuzzing` feature.

use std::path::Path;

/// Reads every record of `bytes` as a log file, both as the newest log and as an older one.
pub fn wal_reader(bytes: &[u8]) {
    for tolerate in [false, true] {
        let mut reader = crate::wal::LogReader::new(bytes, Path::new("fuzz.log"), tolerate);
        while let Ok(Some(_)) = reader.next_record() {}
    }
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
    if let Ok(mut it) = crate::sstable::block::BlockIter::new(bytes) {
        while let Ok(true) = it.advance() {}
        let _ = it.seek(b"m", |a, b| a.cmp(b));
    }
}

/// Opens `bytes` as a table file (written to `dir`) and scans it.
pub fn table_reader(dir: &Path, bytes: &[u8]) {
    let path = dir.join("fuzz.sst");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    if let Ok(table) = crate::sstable::Table::open(&path) {
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
