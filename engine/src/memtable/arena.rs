//! A bump allocator for the memtable's skiplist nodes.
//!
//! Nodes are carved out of large zeroed chunks and are never freed one by
//! one: a memtable only grows until it is flushed, and then all of it goes at
//! once. So an insert costs a pointer bump instead of a `malloc`, and
//! dropping a flushed memtable frees a few dozen chunks instead of a million
//! nodes (which used to be a visible part of every flush).
//!
//! Chunks double from [`FIRST_CHUNK`] to [`HUGE_PAGE`]: an empty or small
//! memtable (tests, recovery, tiny write buffers) stays small, and a large
//! one is mostly in 2 MiB chunks. On Linux those are mapped 2 MiB-aligned
//! and marked `MADV_HUGEPAGE`, so that a random insert's dozens of node
//! visits across 64 MiB do not each pay a TLB miss as well as a cache miss.
//!
//! A flushed memtable's 2 MiB chunks go back to its database's
//! [`ChunkPool`], up to one memtable's worth, and the next memtable takes
//! them from there: otherwise every memtable would fault in (and the kernel
//! zero) 64 MiB of fresh pages, which was 8% of `fillseq`.
//!
//! Every allocation is 8-byte aligned, stays at the same address until the
//! arena is dropped, and is never handed out twice. Its bytes are zero in a
//! fresh chunk, and what a previous memtable left in a recycled one (whose
//! struct padding may be uninitialised): the skiplist writes every field it
//! reads, and nothing reads an allocation as bytes before writing it.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::Mutex;

/// Size of the first chunk; each next one is twice the last, up to [`HUGE_PAGE`].
const FIRST_CHUNK: usize = 64 << 10;
/// The x86-64 and aarch64 transparent huge page, and the largest chunk.
const HUGE_PAGE: usize = 2 << 20;
const ALIGN: usize = 8;

/// An allocation bigger than this gets a chunk of its own, so that a large
/// value does not waste the tail of the current chunk.
const DEDICATED_ABOVE: usize = FIRST_CHUNK / 4;

/// One block of memory that the arena owns.
struct Chunk {
    ptr: NonNull<u8>,
    bytes: usize,
    /// From `map_huge` (freed with `munmap`) rather than the global allocator.
    mapped: bool,
}

// SAFETY: a chunk is exclusively owned memory; the pointer is its address.
unsafe impl Send for Chunk {}

/// Free 2 MiB chunks of flushed memtables, kept for the next ones.
pub(crate) struct ChunkPool {
    free: Mutex<Vec<Chunk>>,
    /// Chunks kept at most; the rest are unmapped.
    capacity: usize,
}

impl ChunkPool {
    /// A pool that keeps up to `bytes` of chunks.
    pub(crate) fn new(bytes: usize) -> Arc<Self> {
        Arc::new(ChunkPool {
            free: Mutex::new(Vec::new()),
            capacity: bytes.div_ceil(HUGE_PAGE),
        })
    }

    fn take(&self) -> Option<Chunk> {
        self.free.lock().pop()
    }

    fn give(&self, chunk: Chunk) {
        let mut free = self.free.lock();
        if free.len() < self.capacity {
            free.push(chunk);
        }
    }
}

pub(super) struct Arena {
    chunks: Vec<Chunk>,
    /// Where huge chunks come from first and go back to.
    pool: Option<Arc<ChunkPool>>,
    /// Next free byte of the current chunk, and the bytes left in it.
    cursor: Option<NonNull<u8>>,
    free: usize,
    /// Size of the next ordinary chunk.
    next_chunk: usize,
    /// Bytes handed out, padding included.
    used: usize,
}

// SAFETY: the arena owns its chunks outright (nothing else frees them), and
// the raw pointers are only addresses into them; moving the arena to another
// thread moves that ownership with it.
unsafe impl Send for Arena {}

impl Arena {
    pub(super) fn new(pool: Option<Arc<ChunkPool>>) -> Self {
        Arena {
            chunks: Vec::new(),
            pool,
            cursor: None,
            free: 0,
            next_chunk: FIRST_CHUNK,
            used: 0,
        }
    }

    /// Bytes handed out so far.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// `bytes` of memory, 8-byte aligned, valid until the arena is
    /// dropped. Zeroed when the chunk is fresh; a recycled chunk holds an
    /// earlier memtable's bytes, struct padding included (which may be
    /// uninitialised), so a caller treats it as uninitialised and writes
    /// before it reads. A request no allocation could hold (over
    /// `usize::MAX - 7` bytes) aborts, as a failed allocation does.
    pub(super) fn alloc(&mut self, bytes: usize) -> NonNull<u8> {
        let Some(bytes) = bytes.max(1).checked_next_multiple_of(ALIGN) else {
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>());
        };
        self.used += bytes;
        if bytes > DEDICATED_ABOVE {
            return self.new_chunk(bytes);
        }
        let start = match self.cursor {
            Some(cursor) if bytes <= self.free => cursor,
            _ => {
                let size = self.next_chunk;
                // The cursor moves to the new chunk only once it exists, so
                // a chunk allocation that unwinds leaves the old cursor
                // with the old chunk's room.
                let chunk = self.new_chunk(size);
                self.next_chunk = (size * 2).min(HUGE_PAGE);
                self.free = size;
                chunk
            }
        };
        // SAFETY: `start` has `free >= bytes` bytes left in its chunk, so
        // `start + bytes` is at most one past the chunk's end.
        self.cursor = Some(unsafe { start.add(bytes) });
        self.free -= bytes;
        start
    }

    fn new_chunk(&mut self, bytes: usize) -> NonNull<u8> {
        let chunk = if bytes == HUGE_PAGE {
            self.pool
                .as_ref()
                .and_then(|p| p.take())
                .or_else(map_huge)
                .unwrap_or_else(|| heap_chunk(bytes))
        } else {
            heap_chunk(bytes)
        };
        let ptr = chunk.ptr;
        self.chunks.push(chunk);
        ptr
    }
}

fn heap_layout(bytes: usize) -> Layout {
    // Entries are at most two 4 GiB lengths long, so this only fails where
    // `Vec::with_capacity` would panic too: on a size past `isize::MAX`.
    Layout::from_size_align(bytes, ALIGN)
        .unwrap_or_else(|_| panic!("memtable arena: {bytes} bytes is past the address space"))
}

fn heap_chunk(bytes: usize) -> Chunk {
    let layout = heap_layout(bytes);
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    let Some(ptr) = NonNull::new(ptr) else {
        std::alloc::handle_alloc_error(layout)
    };
    Chunk {
        ptr,
        bytes: layout.size(),
        mapped: false,
    }
}

/// A fresh, zeroed, 2 MiB-aligned mapping of [`HUGE_PAGE`] bytes that the
/// kernel may back with one huge page; `None` where that is unavailable.
#[cfg(target_os = "linux")]
fn map_huge() -> Option<Chunk> {
    // Map twice the size and keep the aligned middle: mmap only promises
    // page alignment.
    let span = 2 * HUGE_PAGE;
    // SAFETY: an anonymous private mapping touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = span - head - HUGE_PAGE;
    // SAFETY: both ranges are page-aligned parts of the mapping made above
    // that nothing uses; the aligned middle stays mapped. madvise is only
    // advice: if it fails the chunk is simply backed by small pages.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + HUGE_PAGE) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, HUGE_PAGE, libc::MADV_HUGEPAGE);
    }
    Some(Chunk {
        ptr: NonNull::new(aligned as *mut u8)?,
        bytes: HUGE_PAGE,
        mapped: true,
    })
}

#[cfg(not(target_os = "linux"))]
fn map_huge() -> Option<Chunk> {
    None
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            for chunk in self.chunks.drain(..).filter(|c| c.bytes == HUGE_PAGE) {
                pool.give(chunk);
            }
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.mapped {
            #[cfg(target_os = "linux")]
            // SAFETY: `map_huge` mapped exactly this range, and it is
            // unmapped only here, once, when the arena (and with it the
            // skiplist that points into it) is dropped.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
            }
        } else {
            // SAFETY: `heap_chunk` allocated this pointer with this layout,
            // and it is freed only here, once, as above.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), heap_layout(self.bytes)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_zeroed_disjoint_and_stable() {
        let mut arena = Arena::new(None);
        let mut seen: Vec<(usize, usize)> = Vec::new();
        // Small ones across chunks of every size up to huge ones, and ones
        // big enough for their own chunk.
        let sizes = (1..60_000)
            .map(|i| i % 200 + 1)
            .chain([DEDICATED_ABOVE + 1, 3 * HUGE_PAGE]);
        for (i, size) in sizes.enumerate() {
            let p = arena.alloc(size);
            let addr = p.as_ptr() as usize;
            assert_eq!(addr % ALIGN, 0);
            // SAFETY: `size` bytes at `p` belong to this allocation alone.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), size) };
            assert!(
                bytes.iter().all(|&b| b == 0),
                "fresh allocation {i} not zeroed"
            );
            bytes.fill(i as u8);
            seen.push((addr, size));
        }
        assert!(arena.chunks.iter().any(|c| c.bytes == HUGE_PAGE));
        #[cfg(target_os = "linux")]
        assert!(arena
            .chunks
            .iter()
            .filter(|c| c.mapped)
            .all(|c| (c.ptr.as_ptr() as usize).is_multiple_of(HUGE_PAGE)));
        seen.sort_unstable();
        for pair in seen.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "allocations overlap");
        }
        assert!(arena.used() >= seen.iter().map(|(_, l)| l).sum::<usize>());
    }

    #[test]
    fn a_dropped_arenas_huge_chunks_serve_the_next_one_up_to_the_pools_capacity() {
        let pool = ChunkPool::new(2 * HUGE_PAGE);
        let mut first = Arena::new(Some(pool.clone()));
        // Enough for several huge chunks.
        while first.chunks.iter().filter(|c| c.bytes == HUGE_PAGE).count() < 4 {
            first.alloc(1000);
        }
        let huge: Vec<usize> = first
            .chunks
            .iter()
            .filter(|c| c.bytes == HUGE_PAGE)
            .map(|c| c.ptr.as_ptr() as usize)
            .collect();
        drop(first);
        assert_eq!(pool.free.lock().len(), 2, "kept only up to capacity");
        let mut second = Arena::new(Some(pool.clone()));
        while second
            .chunks
            .iter()
            .filter(|c| c.bytes == HUGE_PAGE)
            .count()
            < 2
        {
            second.alloc(1000);
        }
        assert!(second
            .chunks
            .iter()
            .filter(|c| c.bytes == HUGE_PAGE)
            .all(|c| huge.contains(&(c.ptr.as_ptr() as usize))));
        assert!(pool.free.lock().is_empty());
    }
}
