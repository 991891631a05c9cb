//! Appends records to a log file. See the [module docs](super) for the layout.

use std::path::Path;

use super::{fragment_crc, FragmentType, BLOCK_SIZE, HEADER_SIZE};
use crate::error::Result;
use crate::fs::{Appender, FileSystem};

/// An append-only log writer. Each [`add_record`](Self::add_record) is one
/// append to the file (one `write` system call, or one copy into a mapped
/// WAL), so a record is either wholly in the OS page cache or torn only by a
/// crash during that one append.
pub(crate) struct LogWriter {
    /// Unbuffered: each record is one append.
    file: Appender,
    /// Offset within the current block, in `0..BLOCK_SIZE`.
    block_offset: usize,
    scratch: Vec<u8>,
}

impl LogWriter {
    /// Creates a new, empty log file. Fails if the file exists: logs are never reused.
    pub(crate) fn create(fs: &dyn FileSystem, path: &Path) -> Result<Self> {
        Ok(Self::over(Appender::create(fs, path, 0)?))
    }

    /// Creates a new, empty write-ahead log, through
    /// [`FileSystem::create_log`] when `mapped` (it may then hold zeros past
    /// its last record until dropped), else as [`create`](Self::create).
    pub(crate) fn create_wal(fs: &dyn FileSystem, path: &Path, mapped: bool) -> Result<Self> {
        if !mapped {
            return Self::create(fs, path);
        }
        Ok(Self::over(Appender::create_log(fs, path)?))
    }

    fn over(file: Appender) -> Self {
        LogWriter {
            file,
            block_offset: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends one logical record (fragmenting it across blocks as needed).
    pub(crate) fn add_record(&mut self, record: &[u8]) -> Result<()> {
        self.scratch.clear();
        encode_fragments(&mut self.scratch, &mut self.block_offset, record);
        self.file.write(&self.scratch)
    }

    /// The log file.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Bytes appended so far.
    pub(crate) fn len(&self) -> u64 {
        self.file.len()
    }

    /// Cuts the file back to `len` bytes and makes the cut durable: after a
    /// failed append or sync, `len` is where the last record known whole
    /// ends, and the cut removes whatever part of the failed record reached
    /// the file. REQUIRES: the writer is not appended to afterwards (its block
    /// position no longer matches the file); it is only being retired.
    pub(crate) fn truncate(&mut self, len: u64) -> Result<()> {
        self.file.truncate(len)
    }

    /// Makes every appended record durable (fdatasync).
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file.sync()
    }
}

/// Appends the physical fragments of `record` to `out`, starting at
/// `*block_offset` within the current block and advancing it.
fn encode_fragments(out: &mut Vec<u8>, block_offset: &mut usize, record: &[u8]) {
    let mut rest = record;
    let mut first = true;
    loop {
        let left_in_block = BLOCK_SIZE - *block_offset;
        if left_in_block < HEADER_SIZE {
            // Too small for a header: pad with zeros and start a new block.
            out.extend(std::iter::repeat_n(0u8, left_in_block));
            *block_offset = 0;
            continue;
        }
        let avail = left_in_block - HEADER_SIZE;
        let take = rest.len().min(avail);
        let (chunk, tail) = rest.split_at(take);
        let last = tail.is_empty();
        let kind = match (first, last) {
            (true, true) => FragmentType::Full,
            (true, false) => FragmentType::First,
            (false, false) => FragmentType::Middle,
            (false, true) => FragmentType::Last,
        } as u8;
        out.extend_from_slice(&fragment_crc(kind, chunk).to_le_bytes());
        // `take` fits in u16: a block is 32 KiB.
        out.extend_from_slice(&(take as u16).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(chunk);
        *block_offset += HEADER_SIZE + take;
        rest = tail;
        first = false;
        if last {
            return;
        }
    }
}
