//! The block cache: decompressed data blocks of compressed tables, shared by
//! every table of a database and bounded in bytes.
//!
//! Uncompressed blocks never enter it (they are read in place from the
//! mmap); a compressed block is decompressed on a miss and kept, so repeated
//! lookups in it do not decompress again. Eviction is `quick_cache`'s
//! sharded CLOCK-Pro, weighted by the length of each block's buffer (the
//! block rounded up to 128 bytes, `block_buf`). What it evicts is recycled.

use std::sync::atomic::{AtomicU64, Ordering};

use super::block_buf::{self, BlockBuf};

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

impl quick_cache::Weighter<(u64, u32), BlockBuf> for ByLength {
    fn weight(&self, _key: &(u64, u32), block: &BlockBuf) -> u64 {
        // Never 0: a zero-weight entry would never be evicted.
        block.charge().max(1) as u64
    }
}

/// Collects what an insert evicts, so that it is recycled (or freed) after
/// the shard's lock is released. quick_cache also hands it the value of an
/// insert it rejects (heavier than a shard's hot share) and the value an
/// insert replaces:
/// the first is still held by [`BlockCache::get_or_load`] while it recycles,
/// which keeps it from being reused.
#[derive(Clone, Copy)]
struct Recycle;

impl quick_cache::Lifecycle<(u64, u32), BlockBuf> for Recycle {
    /// Blocks are about the same length, so an insert evicts one or two;
    /// any more are dropped in place.
    type RequestState = [Option<BlockBuf>; 2];

    fn begin_request(&self) -> Self::RequestState {
        [None, None]
    }

    fn on_evict(&self, state: &mut Self::RequestState, _key: (u64, u32), block: BlockBuf) {
        if let Some(slot) = state.iter_mut().find(|s| s.is_none()) {
            *slot = Some(block);
        }
    }
}

/// Decompressed blocks keyed by (table id, block number).
pub(crate) struct BlockCache {
    blocks: quick_cache::sync::Cache<
        (u64, u32),
        BlockBuf,
        ByLength,
        quick_cache::DefaultHashBuilder,
        Recycle,
    >,
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
            blocks: quick_cache::sync::Cache::with(
                items,
                capacity as u64,
                ByLength,
                quick_cache::DefaultHashBuilder::default(),
                Recycle,
            ),
        }
    }

    /// The cached block, or `load`'s result, cached when it is `Ok`.
    pub(crate) fn get_or_load<E>(
        &self,
        key: (u64, u32),
        load: impl FnOnce() -> Result<BlockBuf, E>,
    ) -> Result<BlockBuf, E> {
        if let Some(block) = self.blocks.get(&key) {
            return Ok(block);
        }
        // Two readers missing the same block at once both decompress it;
        // that is cheaper than the placeholder every miss would pay for
        // `get_or_insert_with` to prevent it.
        let block = load()?;
        let evicted = self.blocks.insert_with_lifecycle(key, block.clone());
        for old in evicted.into_iter().flatten() {
            block_buf::recycle(old);
        }
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
                .get_or_load::<()>((1, i), || Ok(BlockBuf::from(vec![i as u8; 4096])))
                .unwrap();
            assert_eq!(got.len(), 4096);
        }
        assert!(cache.bytes() <= 64 << 10, "{} bytes held", cache.bytes());
    }

    fn filled(len: usize, byte: u8) -> BlockBuf {
        BlockBuf::fill::<()>(len, |b| {
            b.fill(byte);
            Ok(())
        })
        .unwrap()
    }

    /// An insert that evicts a block nobody holds leaves its buffer for the
    /// thread's next block; one a reader still holds is left alone.
    #[test]
    fn evicted_buffers_are_reused_unless_held() {
        // Room for a few 4 KiB blocks, in one shard (fewer than 32 items).
        let cache = BlockCache::new(4 * 4224);
        let mut reused = false;
        for i in 0..64u32 {
            let byte = 1 + (i % 255) as u8;
            let got = cache
                .get_or_load::<()>((1, i), || {
                    BlockBuf::fill::<()>(4096, |b| {
                        // New buffers are zeroed and no block here is: a
                        // non-zero byte means a recycled buffer.
                        reused |= b.first() != Some(&0);
                        b.fill(byte);
                        Ok(())
                    })
                })
                .unwrap();
            assert_eq!(&*got, &[byte; 4096][..]);
        }
        assert!(reused, "no evicted buffer was ever reused");

        let held = cache
            .get_or_load::<()>((2, 0), || Ok(filled(4096, 0xEE)))
            .unwrap();
        for i in 1..64u32 {
            let got = cache
                .get_or_load::<()>((2, i), || Ok(filled(4096, 7)))
                .unwrap();
            assert_ne!(got.as_ptr(), held.as_ptr());
        }
        assert_eq!(&*held, &[0xEE; 4096][..]);
    }

    #[test]
    fn a_failed_load_is_not_cached() {
        let cache = BlockCache::new(1 << 20);
        assert!(cache.get_or_load((7, 0), || Err("bad")).is_err());
        let got = cache.get_or_load::<()>((7, 0), || Ok(BlockBuf::from(vec![1u8])));
        assert_eq!(&*got.unwrap(), &[1u8]);
    }
}
