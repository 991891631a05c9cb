//! Sorted string tables: immutable files of internal entries in key order.
//!
//! # File layout
//!
//! ```text
//! +------------------------+
//! | data block 0 + trailer |  ~block_size bytes of entries each
//! | ...                    |
//! | data block n + trailer |
//! | filter block + trailer |  bloom filter over every user key
//! | properties + trailer   |  counts, key and sequence range
//! | index block + trailer  |  one entry per data block: last key -> handle
//! | footer (48 bytes)      |
//! +------------------------+
//! ```
//!
//! Every block is followed by a 5-byte trailer: `compression u8` (0 = none,
//! 1 = LZ4, 2 = zstd) and `masked crc32 u32 LE` over the stored block
//! followed by the compression byte ([`footer`]).
//!
//! *Data blocks* ([`block`]) hold prefix-compressed entries with a restart
//! point every 16 entries, so that a lookup binary-searches the restarts and
//! scans at most 16 entries. The *index block* has one entry per data block,
//! keyed by the block's last internal key; it is decoded whole when the
//! table is opened ([`index`]), never searched in place. What it holds depends on the
//! footer's format version:
//!
//! - **2** (written since 2026-12): a restart every 16 entries (its keys are
//!   prefix-compressed too), each value the data block's size as a varint32
//!   (block `i` starts where block `i - 1`'s trailer ends, block 0 at offset
//!   0), and the block compressed like the data blocks.
//! - **1**: a restart at every entry, each value a 12-byte
//!   [`footer::BlockHandle`], the block stored uncompressed.
//!
//! The *filter* ([`filter`]) is one bloom filter over the table's user keys,
//! checked before any data block is touched. The *properties* block
//! ([`properties`]) describes the table. The *footer* locates the filter,
//! properties and index blocks and ends with a format version and a magic number.
//!
//! Tables are read through `mmap`; each block's checksum (over the stored,
//! possibly compressed, bytes and the compression byte) is verified the first
//! time the block is read and remembered afterwards. Data blocks and the
//! index block may be compressed; the filter and properties never are.
//! Compressed data blocks are decompressed into the shared
//! [`cache::BlockCache`] on a miss (two readers missing the same block at
//! once may both decompress it).

pub(crate) mod block;
pub(crate) mod block_buf;
pub(crate) mod builder;
pub(crate) mod cache;
pub(crate) mod filter;
pub(crate) mod footer;
pub(crate) mod index;
pub(crate) mod properties;
pub(crate) mod reader;
pub(crate) mod zstd_codec;

pub(crate) use builder::TableBuilder;
pub(crate) use cache::BlockCache;
pub(crate) use filter::KeyHash;
pub(crate) use reader::{Table, TableSource};

#[cfg(test)]
mod tests;
