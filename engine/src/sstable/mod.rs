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
//! the only value written today) and `masked crc32 u32 LE` over the block
//! contents followed by the compression byte ([`footer`]).
//!
//! *Data and index blocks* ([`block`]) hold prefix-compressed entries with a
//! restart point every 16 entries (every entry in the index block) so that a
//! lookup binary-searches the restarts and scans at most 16 entries. The index
//! maps the last internal key of each data block to its [`footer::BlockHandle`].
//!
//! The *filter* ([`filter`]) is one bloom filter over the table's user keys,
//! checked before any data block is touched. The *properties* block
//! ([`properties`]) describes the table. The *footer* locates the filter,
//! properties and index blocks and ends with a format version and a magic number.
//!
//! Tables are read through `mmap`; each block's checksum (over the stored,
//! possibly compressed, bytes and the compression byte) is verified the first
//! time the block is read and remembered afterwards. Data blocks may be
//! compressed (trailer byte 1 = LZ4); metadata blocks never are. Compressed
//! blocks are decompressed once into the shared [`cache::BlockCache`].

pub(crate) mod block;
pub(crate) mod builder;
pub(crate) mod cache;
pub(crate) mod filter;
pub(crate) mod footer;
pub(crate) mod properties;
pub(crate) mod reader;
pub(crate) mod zstd_codec;

pub(crate) use builder::TableBuilder;
pub(crate) use cache::BlockCache;
pub(crate) use reader::{Table, TableSource};

#[cfg(test)]
mod tests;
