//! A bump allocator for the memtable's skiplist nodes.
//!
//! Nodes are carved out of large zeroed chunks and are never freed one by
//! one: a memtable only grows until it is flushed, and then all of it goes at
//! once. So an insert costs a pointer bump instead of a `malloc`, and
//! dropping a flushed memtable frees a few dozen chunks instead of a million
//! nodes (which used to be a visible part of every flush).
//!
//! Every allocation is 8-byte aligned and zero-filled, stays at the same
//! address until the arena is dropped, and is never handed out twice.

use std::ptr::NonNull;

/// Size of an ordinary chunk. Large enough that chunk changes are rare
/// (256 per 64 MiB memtable), small enough that an empty memtable, of which
/// recovery and tests make many, costs little.
const CHUNK_WORDS: usize = 32 * 1024;
const WORD: usize = std::mem::size_of::<u64>();

/// An allocation bigger than this gets a chunk of its own, so that a large
/// value does not waste the tail of the current chunk.
const DEDICATED_ABOVE: usize = CHUNK_WORDS * WORD / 4;

pub(super) struct Arena {
    /// Every chunk, as leaked boxes (`Box::into_raw`): a `Box` may not be
    /// moved while raw pointers into it are in use, and nodes are read
    /// through raw pointers for as long as the arena lives.
    chunks: Vec<NonNull<[u64]>>,
    /// Next free word of the current chunk, and the words left in it.
    cursor: Option<NonNull<u64>>,
    free_words: usize,
    /// Bytes handed out, padding included.
    used: usize,
}

// SAFETY: the arena owns its chunks outright (nothing else frees them), and
// the raw pointers are only addresses into them; moving the arena to another
// thread moves that ownership with it.
unsafe impl Send for Arena {}

impl Arena {
    pub(super) fn new() -> Self {
        Arena {
            chunks: Vec::new(),
            cursor: None,
            free_words: 0,
            used: 0,
        }
    }

    /// Bytes handed out so far.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// `bytes` of zeroed memory, 8-byte aligned, valid until the arena is
    /// dropped.
    pub(super) fn alloc(&mut self, bytes: usize) -> NonNull<u8> {
        let words = bytes.div_ceil(WORD).max(1);
        self.used += words * WORD;
        if words * WORD > DEDICATED_ABOVE {
            return self.new_chunk(words).cast();
        }
        let start = match self.cursor {
            Some(cursor) if words <= self.free_words => cursor,
            _ => {
                self.free_words = CHUNK_WORDS;
                self.new_chunk(CHUNK_WORDS)
            }
        };
        // SAFETY: `start` has `free_words >= words` words left in its chunk,
        // so `start + words` is at most one past the chunk's end.
        self.cursor = Some(unsafe { start.add(words) });
        self.free_words -= words;
        start.cast()
    }

    fn new_chunk(&mut self, words: usize) -> NonNull<u64> {
        let chunk = NonNull::from(Box::leak(vec![0u64; words].into_boxed_slice()));
        self.chunks.push(chunk);
        chunk.cast()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..) {
            // SAFETY: every chunk came from `Box::leak` in `new_chunk` and is
            // freed only here, once; nothing points into it any more because
            // the skiplist that owns the arena is being dropped.
            drop(unsafe { Box::from_raw(chunk.as_ptr()) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_zeroed_disjoint_and_stable() {
        let mut arena = Arena::new();
        let mut seen: Vec<(usize, usize)> = Vec::new();
        // Small ones across several chunks, and ones big enough for their own chunk.
        let sizes = (1..3000)
            .map(|i| i % 200 + 1)
            .chain([DEDICATED_ABOVE + 1, 3 * CHUNK_WORDS * WORD]);
        for (i, size) in sizes.enumerate() {
            let p = arena.alloc(size);
            let addr = p.as_ptr() as usize;
            assert_eq!(addr % WORD, 0);
            // SAFETY: `size` bytes at `p` belong to this allocation alone.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), size) };
            assert!(bytes.iter().all(|&b| b == 0), "allocation {i} not zeroed");
            bytes.fill(i as u8);
            seen.push((addr, size));
        }
        seen.sort_unstable();
        for pair in seen.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "allocations overlap");
        }
        assert!(arena.used() >= seen.iter().map(|(_, l)| l).sum::<usize>());
    }
}
