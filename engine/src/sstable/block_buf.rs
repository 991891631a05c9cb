//! Buffers for decompressed data blocks, recycled from the block cache's
//! evictions.
//!
//! With a block cache smaller than the data, nearly every miss evicts a
//! block about as long as the one it decompresses. Allocating the new
//! buffer, zeroing it and freeing the evicted one cost a point lookup more
//! than searching the block does; instead, the cache hands an evicted
//! buffer that no reader still holds to [`recycle`], which keeps it as its
//! thread's spare, and the thread's next decompression overwrites it.
//!
//! Buffers are allocated in multiples of [`GRANULE`] bytes so that a spare
//! fits the next block of a table whose blocks differ by a few bytes; a
//! buffer's whole length is what the cache charges for it. A spare is never
//! zeroed again: the decoders write every byte of the block or fail (see
//! `footer::decode_exactly`), and a failed block is never returned, so no
//! byte of an earlier block can be read through a new one.

use std::cell::RefCell;
use std::sync::Arc;

/// Buffer lengths are multiples of this.
const GRANULE: usize = 128;
/// A spare serves a block shorter than itself by at most an eighth of the
/// block (or one [`GRANULE`]), so that one long block does not leave every
/// later short one charged for its length.
fn max_slack(len: usize) -> usize {
    (len / 8).max(GRANULE)
}
/// Buffers longer than this are not kept as spares: a thread's spare is
/// memory outside the cache's budget.
const MAX_SPARE: usize = 64 << 10;

thread_local! {
    static SPARE: RefCell<Option<Arc<[u8]>>> = const { RefCell::new(None) };
}

/// One decompressed block: the first `len` bytes of a shared buffer.
#[derive(Clone)]
pub(crate) struct BlockBuf {
    buf: Arc<[u8]>,
    len: usize,
}

impl BlockBuf {
    /// A block of `len` bytes that `fill` writes in full, in a recycled
    /// buffer when this thread has one that fits. `fill` must write every
    /// byte of the slice it is given or return an error.
    pub(crate) fn fill<E>(
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Self, E> {
        let mut buf = take_spare(len).unwrap_or_else(|| {
            // One allocation of exactly this length (`RepeatN` knows it).
            std::iter::repeat_n(0, len.next_multiple_of(GRANULE).max(GRANULE)).collect()
        });
        let contents = Arc::get_mut(&mut buf).and_then(|b| b.get_mut(..len));
        // A spare or a new buffer has no other owner and is at least `len`
        // long; tests check that `recycle` keeps it so.
        debug_assert!(contents.is_some(), "a shared or short spare");
        match contents {
            Some(contents) => fill(contents)?,
            None => {
                let mut own = vec![0; len];
                fill(&mut own)?;
                buf = own.into();
            }
        }
        Ok(BlockBuf { buf, len })
    }

    /// The bytes the block cache charges for this block: its whole buffer.
    pub(crate) fn charge(&self) -> usize {
        self.buf.len()
    }
}

impl From<Vec<u8>> for BlockBuf {
    fn from(contents: Vec<u8>) -> Self {
        let len = contents.len();
        BlockBuf {
            buf: contents.into(),
            len,
        }
    }
}

impl std::ops::Deref for BlockBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// Keeps `block`'s buffer as this thread's spare if no reader holds it and
/// it is not too long; otherwise drops it.
pub(crate) fn recycle(mut block: BlockBuf) {
    if block.buf.len() <= MAX_SPARE && Arc::get_mut(&mut block.buf).is_some() {
        // An earlier spare, if any, is dropped: one per thread is enough when
        // each miss evicts about one block.
        let _ = SPARE.try_with(|s| s.replace(Some(block.buf)));
    }
}

/// The length of this thread's spare buffer, if it has one.
#[cfg(test)]
pub(crate) fn spare_len() -> Option<usize> {
    SPARE.with(|s| s.borrow().as_ref().map(|b| b.len()))
}

/// This thread's spare, if it can hold `len` bytes without wasting more than
/// [`max_slack`].
fn take_spare(len: usize) -> Option<Arc<[u8]>> {
    SPARE
        .try_with(|s| {
            let mut spare = s.borrow_mut();
            let fits = spare
                .as_ref()
                .is_some_and(|b| b.len() >= len && b.len() - len <= max_slack(len));
            if fits {
                spare.take()
            } else {
                None
            }
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, byte: u8) -> BlockBuf {
        BlockBuf::fill::<()>(len, |b| {
            b.fill(byte);
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn a_recycled_buffer_serves_the_next_block_of_about_its_length() {
        let first = filled(4100, 1);
        assert_eq!(first.len(), 4100);
        assert_eq!(first.charge(), 4224);
        let first_ptr = first.buf.as_ptr();
        recycle(first);
        assert_eq!(spare_len(), Some(4224));
        let second = filled(4200, 2);
        assert_eq!(spare_len(), None);
        assert_eq!(second.buf.as_ptr(), first_ptr, "the spare was not reused");
        assert_eq!(&*second, &[2u8; 4200][..]);
        assert_eq!(second.charge(), 4224);
    }

    #[test]
    fn a_buffer_a_reader_holds_is_not_recycled() {
        let block = filled(4096, 3);
        let reader = block.clone();
        recycle(block);
        assert_eq!(spare_len(), None);
        assert_eq!(&*reader, &[3u8; 4096][..]);
    }

    #[test]
    fn a_spare_much_longer_than_the_block_is_not_used() {
        recycle(filled(8000, 5));
        let short = filled(1000, 6);
        assert_eq!(spare_len(), Some(8064), "the long spare was used");
        assert_eq!(short.charge(), 1024);
    }

    #[test]
    fn a_failed_fill_returns_its_error() {
        recycle(filled(4096, 7));
        let failed = BlockBuf::fill(4096, |_| Err("corrupt"));
        assert_eq!(failed.err(), Some("corrupt"));
    }
}
