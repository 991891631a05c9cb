//! Reads records back from a log file. See the [module docs](super) for the layout.
//!
//! Damage is classified, not skipped: a fragment that runs past the end of
//! the file, a partial header at the end, a bad checksum on the very last
//! fragment, or an all-zero tail are what a crash in the middle of an append
//! leaves behind. When the reader is told the file may have such a *torn
//! tail* (it is the newest log), it ends there cleanly; every other
//! inconsistency, and a torn tail in a file that must be complete, is
//! reported as corruption with its offset.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{fragment_crc, FragmentType, BLOCK_SIZE, HEADER_SIZE};
use crate::error::{Error, Result};

/// What the next physical fragment turned out to be.
enum Fragment {
    Data {
        kind: FragmentType,
        start: usize,
        end: usize,
        offset: u64,
    },
    /// The clean end of the file.
    Eof,
    /// What a crash mid-append leaves: the log ends here if that is allowed.
    Torn { offset: u64, reason: &'static str },
}

/// Reads logical records from a log file in order.
pub(crate) struct LogReader<R> {
    src: R,
    path: PathBuf,
    /// The current block (or the file's last, short block).
    block: Vec<u8>,
    pos: usize,
    /// File offset of `block[0]`.
    block_start: u64,
    /// `block` is the last one: the source returned less than a full block.
    at_last_block: bool,
    tolerate_torn_tail: bool,
}

impl<R: Read> LogReader<R> {
    /// `tolerate_torn_tail`: true only for the newest log, the one a crash may have cut.
    pub(crate) fn new(src: R, path: &Path, tolerate_torn_tail: bool) -> Self {
        LogReader {
            src,
            path: path.to_path_buf(),
            block: Vec::with_capacity(BLOCK_SIZE),
            pos: 0,
            block_start: 0,
            at_last_block: false,
            tolerate_torn_tail,
        }
    }

    /// The next logical record, `None` at the end of the log.
    pub(crate) fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        let mut assembled: Option<(Vec<u8>, u64)> = None;
        loop {
            match self.next_fragment()? {
                Fragment::Eof => {
                    return match assembled {
                        None => Ok(None),
                        Some((_, offset)) => {
                            self.torn(offset, "log ends inside a fragmented record")
                        }
                    };
                }
                Fragment::Torn { offset, reason } => {
                    let offset = assembled.map_or(offset, |(_, start)| start);
                    return self.torn(offset, reason);
                }
                Fragment::Data {
                    kind,
                    start,
                    end,
                    offset,
                } => {
                    let payload = self.block.get(start..end).unwrap_or_default();
                    match (kind, assembled.as_mut()) {
                        (FragmentType::Full, None) => return Ok(Some(payload.to_vec())),
                        (FragmentType::First, None) => assembled = Some((payload.to_vec(), offset)),
                        (FragmentType::Middle, Some((buf, _))) => buf.extend_from_slice(payload),
                        (FragmentType::Last, Some((buf, _))) => {
                            buf.extend_from_slice(payload);
                            return Ok(assembled.map(|(buf, _)| buf));
                        }
                        (FragmentType::Full | FragmentType::First, Some(_)) => {
                            return Err(
                                self.corrupt(offset, "new record inside a fragmented record")
                            )
                        }
                        (FragmentType::Middle | FragmentType::Last, None) => {
                            return Err(
                                self.corrupt(offset, "continuation fragment without a first")
                            )
                        }
                    }
                }
            }
        }
    }

    fn torn(&mut self, offset: u64, reason: &'static str) -> Result<Option<Vec<u8>>> {
        if self.tolerate_torn_tail {
            Ok(None)
        } else {
            Err(self.corrupt(offset, reason))
        }
    }

    fn corrupt(&self, offset: u64, reason: &str) -> Error {
        Error::corruption(&self.path, offset, reason)
    }

    /// Fills `block` with the next block of the file.
    fn read_block(&mut self) -> Result<()> {
        self.block_start += self.block.len() as u64;
        self.block.clear();
        self.pos = 0;
        let mut limited = (&mut self.src).take(BLOCK_SIZE as u64);
        limited
            .read_to_end(&mut self.block)
            .map_err(|e| Error::io(&self.path, e))?;
        self.at_last_block = self.block.len() < BLOCK_SIZE;
        Ok(())
    }

    fn next_fragment(&mut self) -> Result<Fragment> {
        loop {
            let left = self.block.len() - self.pos;
            if left < HEADER_SIZE {
                if !self.at_last_block {
                    // The rest of a full block is trailer padding.
                    self.read_block()?;
                    continue;
                }
                if left == 0 {
                    return Ok(Fragment::Eof);
                }
                return Ok(Fragment::Torn {
                    offset: self.offset(),
                    reason: "partial fragment header at end of log",
                });
            }
            let offset = self.offset();
            let header = self
                .block
                .get(self.pos..self.pos + HEADER_SIZE)
                .unwrap_or_default();
            let crc = crate::coding::u32_at(header, 0).unwrap_or(0);
            let len = usize::from(u16::from_le_bytes([
                header.get(4).copied().unwrap_or(0),
                header.get(5).copied().unwrap_or(0),
            ]));
            let kind_byte = header.get(6).copied().unwrap_or(0);
            let start = self.pos + HEADER_SIZE;
            let end = start + len;
            if kind_byte == 0 && len == 0 && crc == 0 {
                // Zeros where a header should be: a preallocated or torn tail, if
                // nothing but zeros follows.
                return if self.rest_is_zero()? {
                    Ok(Fragment::Torn {
                        offset,
                        reason: "zero-filled tail",
                    })
                } else {
                    Err(self.corrupt(offset, "zeroed fragment header followed by data"))
                };
            }
            if end > self.block.len() {
                if self.at_last_block {
                    return Ok(Fragment::Torn {
                        offset,
                        reason: "fragment runs past the end of the log",
                    });
                }
                return Err(self.corrupt(offset, "fragment length crosses a block boundary"));
            }
            let payload = self.block.get(start..end).unwrap_or_default();
            if fragment_crc(kind_byte, payload) != crc {
                if self.at_last_block && end == self.block.len() {
                    return Ok(Fragment::Torn {
                        offset,
                        reason: "checksum mismatch in the last fragment",
                    });
                }
                return Err(self.corrupt(offset, "fragment checksum mismatch"));
            }
            let kind = FragmentType::try_from(kind_byte)
                .map_err(|_| self.corrupt(offset, "unknown fragment type"))?;
            self.pos = end;
            return Ok(Fragment::Data {
                kind,
                start,
                end,
                offset,
            });
        }
    }

    fn offset(&self) -> u64 {
        self.block_start + self.pos as u64
    }

    /// True when every byte from the current position to the end of the file is zero.
    fn rest_is_zero(&mut self) -> Result<bool> {
        loop {
            if self
                .block
                .get(self.pos..)
                .unwrap_or_default()
                .iter()
                .any(|&b| b != 0)
            {
                return Ok(false);
            }
            if self.at_last_block {
                return Ok(true);
            }
            self.read_block()?;
        }
    }
}
