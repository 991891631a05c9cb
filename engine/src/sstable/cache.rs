//! The block cache: decompressed data blocks of compressed tables, shared by
//! every table of a database and bounded in bytes.
//!
//! Uncompressed blocks never enter it (they are read in place from the
//! mmap); a compressed block is decompressed on a miss and kept, so repeated
//! lookups in it do not decompress again. Eviction is `quick_cache`'s
//! sharded CLOCK-Pro, weighted by block length.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A table's id in the cache: unique per opened [`super::Table`] within the
/// process, so that a reopened or renamed file never serves stale blocks.
pub(crate) fn next_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Average decompressed block assumed when sizing the shards' tables.
const TYPICAL_BLOCK: usize = 4096;

#[derive(Clone, Copy)]
struct ByLength;

impl quick_cache::Weighter<(u64, u32), Arc<[u8]>> for ByLength {
    fn weight(&self, _key: &(u64, u32), block: &Arc<[u8]>) -> u64 {
        // Never 0: a zero-weight entry would never be evicted.
        block.len().max(1) as u64
    }
}

/// Decompressed blocks keyed by (table id, block number).
pub(crate) struct BlockCache {
    blocks: quick_cache::sync::Cache<(u64, u32), Arc<[u8]>, ByLength>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.blocks.weight())
            .field("capacity", &self.blocks.capacity())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes of blocks.
    pub(crate) fn new(capacity: usize) -> Self {
        let items = (capacity / TYPICAL_BLOCK).max(16);
        BlockCache {
            blocks: quick_cache::sync::Cache::with_weighter(items, capacity as u64, ByLength),
        }
    }

    /// The cached block, or `load`'s result, cached when it is `Ok`.
    pub(crate) fn get_or_load<E>(
        &self,
        key: (u64, u32),
        load: impl FnOnce() -> Result<Arc<[u8]>, E>,
    ) -> Result<Arc<[u8]>, E> {
        if let Some(block) = self.blocks.get(&key) {
            return Ok(block);
        }
        // Two readers missing the same block at once both decompress it;
        // that is cheaper than the placeholder every miss would pay for
        // `get_or_insert_with` to prevent it.
        let block = load()?;
        self.blocks.insert(key, block.clone());
        Ok(block)
    }

    /// Bytes of blocks held now.
    pub(crate) fn bytes(&self) -> u64 {
        self.blocks.weight()
    }

    /// Its capacity in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.blocks.capacity()
    }

    /// Lookups that found their block, and lookups that loaded it.
    pub(crate) fn hits_and_misses(&self) -> (u64, u64) {
        (self.blocks.hits(), self.blocks.misses())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_capacity() {
        let cache = BlockCache::new(64 << 10);
        for i in 0..200u32 {
            let got = cache
                .get_or_load::<()>((1, i), || Ok(vec![i as u8; 4096].into()))
                .unwrap();
            assert_eq!(got.len(), 4096);
        }
        assert!(cache.bytes() <= 64 << 10, "{} bytes held", cache.bytes());
    }

    #[test]
    fn a_failed_load_is_not_cached() {
        let cache = BlockCache::new(1 << 20);
        assert!(cache.get_or_load((7, 0), || Err("bad")).is_err());
        let got = cache.get_or_load::<()>((7, 0), || Ok(vec![1u8].into()));
        assert_eq!(got.unwrap().as_ref(), &[1u8]);
    }
}
