//! Software prefetch: asks the CPU to start loading a cache line that a
//! lookup will read soon, so that independent cache misses overlap.
//!
//! A hint only: it never faults, changes no memory and may be ignored. On
//! targets without a stable prefetch instruction it does nothing.

/// Starts loading the cache line holding `byte` (if any) for reading.
#[inline]
pub(crate) fn read(byte: Option<&u8>) {
    let Some(byte) = byte else {
        return;
    };
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch does
        // not access memory architecturally (it cannot fault); the pointer
        // comes from a live reference besides.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(byte).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}
