//! Reads records back from a log file. See the [module docs](super) for the layout.
//!
//! Damage is classified, not skipped:
//!
//! - A *torn tail* is what an interrupted append leaves at the end of the
//!   file: a partial fragment header, a fragment whose payload runs past the
//!   end of the file, a record whose later fragments never arrived, or a
//!   tail of zeros (space the file system allocated before the data reached
//!   it). Only a file allowed to have one (the newest log, the manifest)
//!   ends there; [`LogReader::torn_tail`] then says where and how much was
//!   dropped, so the caller can report it.
//! - A write-ahead log may have been appended through a mapping with space
//!   reserved ahead (`fs/mapped_log.rs`): there zeros that start where a
//!   fragment would and run to the end of the file are where writing
//!   stopped ([`LogReader::zero_tail_ends`]), in any WAL, not a tear. A
//!   fragment whose bytes end in zeros that run to the end of the file,
//!   and that fails its checksum (or has no type), was being copied when the
//!   process died or the power went: a torn tail like one cut short by the
//!   end of the file, with the same test for a damaged length. (The one
//!   case this cannot tell from damage: a bit flipped in the newest WAL's
//!   last record when that record ends in zero bytes. It is reported as a
//!   torn tail, and the log kept aside, not read as a record.)
//! - A power cut can also leave a hole: pages of the page cache reach the
//!   disk independently, each whole or not at all, so a page of the newest
//!   WAL written back before its last appends may read back with zeros from
//!   there to its end while a later page holds data. In the newest WAL, a
//!   damaged fragment with such zeros (at least [`MIN_LOST_RUN`] bytes, or
//!   from its header on, up to a page boundary: see
//!   [`LogReader::lost_page_suffix`]) ends the log as a torn tail. Nothing
//!   after the hole had been synced, since a sync makes every earlier byte
//!   durable, if a power cut made the hole. The price: other damage of the
//!   same shape (a page of the newest WAL the drive lost or zeroed later,
//!   synced or not, or a damaged fragment that really holds that many zeros
//!   before a page boundary) is taken for a power cut too, and the records
//!   after it are dropped as a reported torn tail (the WAL is kept aside in
//!   `lost/`) rather than failing the open. A caller that skips damage
//!   ([`LogReader::read_past_holes`]) gets such a hole as damage, and the
//!   records after it.
//! - Anything else is [`Error::Corruption`] with the offset: a whole
//!   fragment whose checksum fails (even the very last one: an append that
//!   was cut short cannot produce a fragment of full length, so its bytes
//!   changed after they were written), a fragment type that does not exist,
//!   a length that crosses a block boundary, fragments out of order. A
//!   payload that "runs past the end" while some prefix of the bytes that
//!   are there matches its checksum is a damaged length field (one that now
//!   swallows the records after it), not a tear: that record was whole, and
//!   is reported as corruption too. A real tear passes this test by chance
//!   with a probability of at most 2^-17 (one 2^-32 chance per byte of a
//!   32 KiB block), and then fails the open rather than losing anything.
//!
//! After a corruption a caller that chose to skip damage (see
//! [`RecoveryMode`](crate::RecoveryMode)) calls
//! [`LogReader::skip_damage`]: the reader drops the rest of the block (a
//! damaged length cannot be trusted to find the next fragment) and every
//! continuation fragment up to the next record start, and counts the bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{fragment_crc, FragmentType, BLOCK_SIZE, HEADER_SIZE};
use crate::error::{Error, Result};
use crate::fs::PAGE;

// Blocks start on page boundaries, so a page's bounds within a block are
// its bounds in the file.
const _: () = assert!(BLOCK_SIZE.is_multiple_of(PAGE));

const CUT_SHORT: &str = "record cut short by the reserved zeros";
const LOST_PAGE: &str = "page lost by a power cut (zeros, then data)";

/// The fewest zeros before a page boundary a damaged fragment must hold to
/// be taken for a lost page suffix: a page written back within its last
/// few bytes is rare, a few zero bytes in data are not.
pub(crate) const MIN_LOST_RUN: usize = 32;

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

/// The interrupted append a reader dropped at the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    /// Where the torn record starts.
    pub(crate) offset: u64,
    /// Bytes from there to the end of the file.
    pub(crate) bytes: u64,
    pub(crate) reason: &'static str,
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
    /// A zero-filled tail at a fragment boundary is the end, not a tear.
    zero_tail_ends: bool,
    /// The newest WAL: a page suffix lost by a power cut ends it.
    holes_end_log: bool,
    /// Set when the file ended in a torn tail that was tolerated.
    torn: Option<TornTail>,
    /// File offset of the last record returned.
    record_offset: u64,
    /// Start of the damage being skipped, from [`LogReader::skip_damage`]
    /// until the next record start or the end of the file.
    skipping_from: Option<u64>,
    /// Bytes skipped as damage so far.
    skipped_bytes: u64,
    /// `block` was read by [`rest_is_zero`](Self::rest_is_zero) looking past
    /// damage, so it starts at a fragment boundary a skip must not drop.
    looked_ahead: bool,
}

impl<R: Read> LogReader<R> {
    /// `tolerate_torn_tail`: true only for a file a crash may have cut while
    /// it was being appended to (the newest log, the manifest).
    pub(crate) fn new(src: R, path: &Path, tolerate_torn_tail: bool) -> Self {
        LogReader {
            src,
            path: path.to_path_buf(),
            block: Vec::with_capacity(BLOCK_SIZE),
            pos: 0,
            block_start: 0,
            at_last_block: false,
            tolerate_torn_tail,
            zero_tail_ends: false,
            holes_end_log: false,
            torn: None,
            record_offset: 0,
            skipping_from: None,
            skipped_bytes: 0,
            looked_ahead: false,
        }
    }

    /// For a write-ahead log: space reserved ahead of the appends (module
    /// docs) reads as the end of the log, whether or not the file may be torn.
    pub(crate) fn zero_tail_ends(mut self) -> Self {
        self.zero_tail_ends = true;
        self.holes_end_log = self.tolerate_torn_tail;
        self
    }

    /// For a caller that skips damage: a page suffix lost by a power cut
    /// (module docs) is reported as damage to skip, so that the records
    /// after it are read too, instead of ending the log.
    pub(crate) fn read_past_holes(mut self) -> Self {
        self.holes_end_log = false;
        self
    }

    /// The torn tail the reader dropped, once [`next_record`](Self::next_record)
    /// returned `None`.
    pub(crate) fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// File offset of the record [`next_record`](Self::next_record) returned last.
    pub(crate) fn record_offset(&self) -> u64 {
        self.record_offset
    }

    /// Bytes dropped by [`skip_damage`](Self::skip_damage) so far (counted
    /// once the reader found the next record or the end of the file).
    pub(crate) fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// After `next_record` reported corruption at `offset`, moves past the
    /// damage: to the next block, then past continuation fragments to the
    /// next record start. The bytes skipped are counted in
    /// [`skipped_bytes`](Self::skipped_bytes).
    pub(crate) fn skip_damage(&mut self, offset: u64) {
        self.skipping_from.get_or_insert(offset);
        if !std::mem::take(&mut self.looked_ahead) {
            self.pos = self.block.len();
        }
    }

    /// Ends a skip at `offset` (a record start or the end of the file).
    fn end_skip(&mut self, offset: u64) {
        if let Some(from) = self.skipping_from.take() {
            self.skipped_bytes += offset.saturating_sub(from);
        }
    }

    /// The next logical record, `None` at the end of the log.
    pub(crate) fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        let mut assembled: Option<(Vec<u8>, u64)> = None;
        loop {
            match self.next_fragment()? {
                Fragment::Eof => {
                    return match assembled {
                        None => {
                            self.end_skip(self.offset());
                            Ok(None)
                        }
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
                    if self.skipping_from.is_some() {
                        if matches!(kind, FragmentType::Middle | FragmentType::Last) {
                            // The rest of a record whose start was damaged.
                            continue;
                        }
                        self.end_skip(offset);
                    }
                    let payload = self.block.get(start..end).unwrap_or_default();
                    match (kind, assembled.as_mut()) {
                        (FragmentType::Full, None) => {
                            self.record_offset = offset;
                            return Ok(Some(payload.to_vec()));
                        }
                        (FragmentType::First, None) => assembled = Some((payload.to_vec(), offset)),
                        (FragmentType::Middle, Some((buf, _))) => buf.extend_from_slice(payload),
                        (FragmentType::Last, Some((buf, _))) => {
                            buf.extend_from_slice(payload);
                            return Ok(assembled.map(|(buf, start)| {
                                self.record_offset = start;
                                buf
                            }));
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
        if !self.tolerate_torn_tail {
            return Err(self.corrupt(offset, reason));
        }
        let end = self.file_end()?;
        if self.skipping_from.is_some() {
            // The damage being skipped runs into the tear: count it once, as damage.
            self.end_skip(end);
            return Ok(None);
        }
        self.torn = Some(TornTail {
            offset,
            bytes: end.saturating_sub(offset),
            reason,
        });
        Ok(None)
    }

    /// The file's length: the end of the current block, or, where a torn
    /// tail was found before the last block (a lost page), of what is left.
    fn file_end(&mut self) -> Result<u64> {
        let mut end = self.block_start + self.block.len() as u64;
        if !self.at_last_block {
            end += std::io::copy(&mut self.src, &mut std::io::sink())
                .map_err(|e| Error::io(&self.path, e))?;
            self.at_last_block = true;
            self.pos = self.block.len();
        }
        Ok(end)
    }

    fn corrupt(&self, offset: u64, reason: &str) -> Error {
        Error::corruption(&self.path, offset, reason)
    }

    /// Fills `block` with the next block of the file.
    fn read_block(&mut self) -> Result<()> {
        self.block_start += self.block.len() as u64;
        self.block.clear();
        self.pos = 0;
        self.looked_ahead = false;
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
                // nothing but zeros follows. (Judged before `rest_is_zero` reads ahead.)
                let lost = self.lost_page_suffix(0, crc, start);
                return if self.rest_is_zero()? {
                    if self.zero_tail_ends {
                        self.pos = self.block.len();
                        return Ok(Fragment::Eof);
                    }
                    Ok(Fragment::Torn {
                        offset,
                        reason: "zero-filled tail",
                    })
                } else if lost {
                    Ok(self.torn_at(offset, LOST_PAGE))
                } else {
                    Err(self.corrupt(offset, "zeroed fragment header followed by data"))
                };
            }
            let Ok(kind) = FragmentType::try_from(kind_byte) else {
                if kind_byte == 0 {
                    if let Some(torn) = self.torn_by_zeros(offset, 0, crc, start)? {
                        return Ok(torn);
                    }
                }
                return Err(self.corrupt(offset, "unknown fragment type"));
            };
            if end > BLOCK_SIZE {
                // No writer ever produces this, torn or not.
                return Err(self.corrupt(offset, "fragment length crosses a block boundary"));
            }
            if end > self.block.len() {
                let present = self.block.get(start..).unwrap_or_default();
                if self.at_last_block && !some_prefix_has_crc(kind_byte, present, crc) {
                    return Ok(Fragment::Torn {
                        offset,
                        reason: "fragment runs past the end of the log",
                    });
                }
                // A short block that is not the last cannot happen; a whole
                // payload inside what is there means the length was damaged.
                return Err(self.corrupt(offset, "fragment length does not match its payload"));
            }
            let payload = self.block.get(start..end).unwrap_or_default();
            if fragment_crc(kind_byte, payload) != crc {
                if let Some(torn) = self.torn_by_zeros(offset, kind_byte, crc, end)? {
                    return Ok(torn);
                }
                return Err(self.corrupt(offset, "fragment checksum mismatch"));
            }
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

    /// In a WAL with space reserved ahead ([`zero_tail_ends`](Self::zero_tail_ends)),
    /// whether the damaged fragment at `pos`, of type `kind` and checksum
    /// `crc`, reaching to `end` in the block, was cut short by the end of
    /// the writing (module docs): its bytes end in zeros that run to the
    /// end of the file, and no prefix of the payload before them matches
    /// the checksum (which would make it a whole record behind a damaged
    /// length). Reads ahead only if the rest of the block is zero.
    fn cut_short_by_zeros(&mut self, kind: u8, crc: u32, end: usize) -> Result<bool> {
        if !self.zero_tail_ends {
            return Ok(false);
        }
        let end = end.min(self.block.len());
        let fragment = self.block.get(self.pos..end).unwrap_or_default();
        let written = fragment.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let payload = fragment.get(HEADER_SIZE..written).unwrap_or_default();
        if written == fragment.len()
            || some_prefix_has_crc(kind, payload, crc)
            || self
                .block
                .get(end..)
                .unwrap_or_default()
                .iter()
                .any(|&b| b != 0)
        {
            return Ok(false);
        }
        self.pos = end;
        self.rest_is_zero()
    }

    /// The torn tail the damaged fragment at `pos` (at file `offset`, of
    /// type `kind` and checksum `crc`, reaching to `end`) is, if its zeros
    /// say it was [cut short](Self::cut_short_by_zeros) or lost a [page
    /// suffix](Self::lost_page_suffix). The page test runs first: the other
    /// may read ahead, replacing the block.
    fn torn_by_zeros(
        &mut self,
        offset: u64,
        kind: u8,
        crc: u32,
        end: usize,
    ) -> Result<Option<Fragment>> {
        let lost = self.lost_page_suffix(kind, crc, end);
        if self.cut_short_by_zeros(kind, crc, end)? {
            return Ok(Some(self.torn_at(offset, CUT_SHORT)));
        }
        Ok(lost.then(|| self.torn_at(offset, LOST_PAGE)))
    }

    /// A torn tail from file `offset` on: nothing after it is read.
    fn torn_at(&mut self, offset: u64, reason: &'static str) -> Fragment {
        self.pos = self.block.len();
        Fragment::Torn { offset, reason }
    }

    /// In the newest WAL, whether the damaged fragment at `pos`, of type
    /// `kind` and checksum `crc`, reaching to `end` in the block, shows a
    /// page suffix a power cut lost (module docs): zeros up to a page
    /// boundary that reach back into the fragment, at least
    /// [`MIN_LOST_RUN`] of them or all of it from its header on (where only
    /// checksum bytes were lost, the ones kept must be the payload's), and
    /// no prefix of its payload that matches the checksum (that would be a
    /// whole record behind a damaged length). Reads nothing.
    fn lost_page_suffix(&self, kind: u8, crc: u32, end: usize) -> bool {
        if !self.holes_end_log {
            return false;
        }
        let end = end.max(self.pos + HEADER_SIZE).min(self.block.len());
        let payload = self
            .block
            .get(self.pos + HEADER_SIZE..end)
            .unwrap_or_default();
        let hole_before = |boundary: usize| {
            let from = boundary
                .saturating_sub(MIN_LOST_RUN)
                .min(end.saturating_sub(1))
                .max(self.pos);
            let zeros = self
                .block
                .get(from..boundary)
                .is_some_and(|run| run.iter().all(|&b| b == 0));
            let header_lost = boundary - self.pos;
            if zeros && header_lost <= 4 {
                // Length, type and payload lie past the boundary, as written:
                // the checksum bytes there must be theirs.
                let want = fragment_crc(kind, payload).to_le_bytes();
                return want.get(header_lost..) == crc.to_le_bytes().get(header_lost..);
            }
            zeros
        };
        let last = end.next_multiple_of(PAGE).min(self.block.len());
        ((self.pos / PAGE + 1) * PAGE..=last)
            .step_by(PAGE)
            .any(hole_before)
            && !some_prefix_has_crc(kind, payload, crc)
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
            self.looked_ahead = true;
        }
    }
}

/// True when `crc` is the checksum of a fragment of type `kind` whose
/// payload is some prefix of `present` (the empty one included).
fn some_prefix_has_crc(kind: u8, present: &[u8], crc: u32) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    if super::mask_crc(h.clone().finalize()) == crc {
        return true;
    }
    present.iter().any(|b| {
        h.update(std::slice::from_ref(b));
        super::mask_crc(h.clone().finalize()) == crc
    })
}
