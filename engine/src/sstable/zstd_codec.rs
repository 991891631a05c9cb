//! Zstandard for data blocks, behind the `zstd` feature (it builds the C
//! library). Without the feature, `Options` refuses a zstd level at open and
//! a table holding zstd blocks fails to read them with a clear corruption
//! error rather than wrong bytes.
//!
//! Contexts are kept and reused: creating one costs more than compressing
//! or decompressing a 4 KiB block. A table builder owns its compressor; each
//! thread keeps one decompressor.

use crate::error::DecodeError;

/// Compresses blocks at one level, reusing its context across them.
#[cfg(feature = "zstd")]
pub(crate) struct Compressor(zstd::bulk::Compressor<'static>);

#[cfg(feature = "zstd")]
impl Compressor {
    pub(crate) fn new(level: i32) -> std::io::Result<Self> {
        zstd::bulk::Compressor::new(level).map(Compressor)
    }

    /// `block` as stored after the trailer byte `ZSTD_COMPRESSION`: its length
    /// as u32 LE, then one zstd frame.
    pub(crate) fn compress(&mut self, block: &[u8]) -> std::io::Result<Vec<u8>> {
        let len =
            u32::try_from(block.len()).map_err(|_| std::io::Error::other("block over 4 GiB"))?;
        let frame = self.0.compress(block)?;
        let mut out = Vec::with_capacity(4 + frame.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&frame);
        Ok(out)
    }
}

/// Without the feature there is no compressor: `Options::validate` refuses
/// a zstd level before a table is ever written.
#[cfg(not(feature = "zstd"))]
pub(crate) struct Compressor(std::convert::Infallible);

#[cfg(not(feature = "zstd"))]
impl Compressor {
    pub(crate) fn new(_level: i32) -> std::io::Result<Self> {
        Err(std::io::Error::other(
            "zstd compression needs strata-engine's `zstd` feature",
        ))
    }

    pub(crate) fn compress(&mut self, _block: &[u8]) -> std::io::Result<Vec<u8>> {
        match self.0 {}
    }
}

/// Decompresses the frame `body` into `out`; returns the bytes written.
#[cfg(feature = "zstd")]
pub(crate) fn decompress_into(body: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    use std::cell::RefCell;
    thread_local! {
        static CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let context = match slot.as_mut() {
            Some(context) => context,
            None => slot.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|_| DecodeError("cannot make a zstd context"))?,
            ),
        };
        context
            .decompress_to_buffer(body, out)
            .map_err(|_| DecodeError("corrupt zstd block"))
    })
}

#[cfg(not(feature = "zstd"))]
pub(crate) fn decompress_into(_body: &[u8], _out: &mut [u8]) -> Result<usize, DecodeError> {
    Err(DecodeError(
        "zstd block, but strata-engine was built without its `zstd` feature",
    ))
}
