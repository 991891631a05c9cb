//! Writes a table file from entries given in internal-key order.

use std::path::Path;

use super::block::BlockBuilder;
use super::filter::FilterBuilder;
use super::footer::{
    trailer, BlockHandle, Footer, FORMAT_VERSION, LZ4_COMPRESSION, NO_COMPRESSION, ZSTD_COMPRESSION,
};
use super::properties::Properties;
use super::zstd_codec;
use crate::coding::put_varint32;
use crate::error::{Error, Result};
use crate::fs::{Appender, FileSystem};
use crate::key::{compare_internal, internal_key, ParsedKey, ValueKind, MAX_SEQUENCE, SEEK_KIND};
use crate::options::Compression;
use crate::range_del::RangeTombstone;

/// Restart interval of data blocks: a lookup scans at most this many entries.
const DATA_RESTART_INTERVAL: usize = 16;
/// Restart interval of the index block (prefix compression of its keys).
const INDEX_RESTART_INTERVAL: usize = 16;

pub(crate) struct TableBuilder {
    out: Appender,
    block_size: usize,
    data: BlockBuilder,
    index: BlockBuilder,
    filter: FilterBuilder,
    props: Properties,
    last_key: Vec<u8>,
    compression: Compression,
    /// Made at the first zstd block and reused for the rest of the table.
    zstd: Option<zstd_codec::Compressor>,
}

/// What a finished table holds, for its manifest entry.
#[derive(Debug, Clone)]
pub(crate) struct BuiltTable {
    pub(crate) file_size: u64,
    pub(crate) smallest: Vec<u8>,
    pub(crate) largest: Vec<u8>,
}

impl TableBuilder {
    pub(crate) fn create(
        fs: &dyn FileSystem,
        path: &Path,
        block_size: usize,
        bloom_bits_per_key: u32,
    ) -> Result<Self> {
        Ok(TableBuilder {
            out: Appender::create(fs, path, 256 << 10)?,
            block_size,
            data: BlockBuilder::new(DATA_RESTART_INTERVAL),
            // Read whole at open, never searched in place: restarts only
            // cost space here.
            index: BlockBuilder::new(INDEX_RESTART_INTERVAL),
            filter: FilterBuilder::new(bloom_bits_per_key),
            props: Properties::default(),
            last_key: Vec::new(),
            compression: Compression::None,
            zstd: None,
        })
    }

    /// Compresses data blocks, and the index of a format-2 table, with
    /// `compression` from now on. The filter and properties blocks are
    /// stored as is: they are small or do not compress.
    pub(crate) fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Adds an entry. REQUIRES: `ikey` sorts after every key added before.
    pub(crate) fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        let parsed = ParsedKey::parse(ikey).map_err(|e| Error::InvalidArgument(e.0.into()))?;
        if self.props.entries > 0 {
            if compare_internal(&self.last_key, ikey) != std::cmp::Ordering::Less {
                return Err(Error::InvalidArgument(format!(
                    "table keys out of order while writing {}",
                    self.out.path().display()
                )));
            }
            if crate::key::user_key(&self.last_key) != parsed.user_key {
                self.filter.add_key(parsed.user_key);
            }
        } else {
            self.filter.add_key(parsed.user_key);
            self.props.smallest_key = ikey.to_vec();
            if self.props.range_tombstones.is_empty() {
                self.props.smallest_seq = parsed.seq;
            }
        }
        self.props.entries += 1;
        if parsed.kind == ValueKind::Deletion {
            self.props.deletions += 1;
        }
        self.props.smallest_seq = self.props.smallest_seq.min(parsed.seq);
        self.props.largest_seq = self.props.largest_seq.max(parsed.seq);
        self.last_key.clear();
        self.last_key.extend_from_slice(ikey);
        self.data.add(ikey, value);
        if self.data.estimated_size() >= self.block_size {
            self.finish_data_block()?;
        }
        Ok(())
    }

    /// Adds a range tombstone, kept in the properties block. The table's key
    /// range grows to cover it.
    pub(crate) fn add_range_tombstone(&mut self, t: RangeTombstone) {
        if self.props.entries == 0 && self.props.range_tombstones.is_empty() {
            self.props.smallest_seq = t.seq;
        }
        self.props.smallest_seq = self.props.smallest_seq.min(t.seq);
        self.props.largest_seq = self.props.largest_seq.max(t.seq);
        self.props.range_tombstones.push(t);
    }

    /// Bytes the table would take if finished now, less its index and filter.
    pub(crate) fn estimated_size(&self) -> u64 {
        self.out.len() + self.data.estimated_size() as u64
    }

    fn finish_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let last = self.data.last_key().to_vec();
        let contents = self.data.finish();
        let handle = self.write_packed(&contents)?;
        // The offset is where the previous block's trailer ended (format
        // version 2, module docs): only the size is stored.
        let mut enc = Vec::with_capacity(5);
        put_varint32(&mut enc, handle.size);
        self.index.add(&last, &enc);
        self.props.data_blocks += 1;
        Ok(())
    }

    fn zstd(&mut self, level: i32, contents: &[u8]) -> Result<Vec<u8>> {
        let compressor = match &mut self.zstd {
            Some(compressor) => compressor,
            None => self.zstd.insert(
                zstd_codec::Compressor::new(level).map_err(|e| Error::io(self.out.path(), e))?,
            ),
        };
        compressor
            .compress(contents)
            .map_err(|e| Error::io(self.out.path(), e))
    }

    /// Writes a block compressed with the table's compression, or as is
    /// where that saves less than 1/8: below that, the decompression on
    /// every cache miss costs more than the bytes are worth.
    fn write_packed(&mut self, contents: &[u8]) -> Result<BlockHandle> {
        let packed = match self.compression {
            Compression::None => None,
            Compression::Lz4 => Some((lz4_flex::compress_prepend_size(contents), LZ4_COMPRESSION)),
            Compression::Zstd { level } => Some((self.zstd(level, contents)?, ZSTD_COMPRESSION)),
        };
        match packed {
            Some((packed, kind)) if packed.len() < contents.len() - contents.len() / 8 => {
                self.write_stored(&packed, kind)
            }
            _ => self.write_block(contents),
        }
    }

    fn write_block(&mut self, contents: &[u8]) -> Result<BlockHandle> {
        self.write_stored(contents, NO_COMPRESSION)
    }

    /// Writes the stored bytes of a block and its trailer.
    fn write_stored(&mut self, contents: &[u8], compression: u8) -> Result<BlockHandle> {
        let size = u32::try_from(contents.len())
            .map_err(|_| Error::InvalidArgument("block larger than 4 GiB".into()))?;
        let handle = BlockHandle {
            offset: self.out.len(),
            size,
        };
        self.write_raw(contents)?;
        self.write_raw(&trailer(contents, compression))?;
        Ok(handle)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write(bytes)
    }

    /// Writes filter, properties, index and footer, and fsyncs the file.
    /// REQUIRES: at least one entry or range tombstone was added.
    pub(crate) fn finish(mut self) -> Result<BuiltTable> {
        if self.props.entries == 0 && self.props.range_tombstones.is_empty() {
            return Err(Error::InvalidArgument("cannot write an empty table".into()));
        }
        self.finish_data_block()?;
        self.props.largest_key = self.last_key.clone();
        // The key range covers the tombstones: from before every entry of
        // a start key to before every entry of an end key (which a
        // tombstone does not cover).
        for t in &self.props.range_tombstones {
            let start = internal_key(&t.start, MAX_SEQUENCE, SEEK_KIND);
            let end = internal_key(&t.end, MAX_SEQUENCE, SEEK_KIND);
            let first = self.props.entries == 0 && self.props.smallest_key.is_empty();
            if first || compare_internal(&start, &self.props.smallest_key).is_lt() {
                self.props.smallest_key = start;
            }
            if self.props.largest_key.is_empty()
                || compare_internal(&end, &self.props.largest_key).is_gt()
            {
                self.props.largest_key = end;
            }
        }
        let filter = self.write_block(&self.filter.finish())?;
        let properties = self.write_block(&self.props.encode())?;
        let index_contents = self.index.finish();
        let index = self.write_packed(&index_contents)?;
        let footer = Footer {
            filter,
            properties,
            index,
            version: FORMAT_VERSION,
        }
        .encode();
        self.write_raw(&footer)?;
        self.out.sync()?;
        Ok(BuiltTable {
            file_size: self.out.len(),
            smallest: self.props.smallest_key,
            largest: self.props.largest_key,
        })
    }
}
