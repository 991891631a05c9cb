//! Reading at a point in time: point lookups and double-ended range scans
//! over the memtables and tables of one [`SuperVersion`] at one sequence.

use std::sync::Arc;

use crate::blob::BlobRef;
use crate::db::SuperVersion;
use crate::iter::merge::MergingSource;
use crate::iter::{Direction, Entry, KeyBounds, Source};
use crate::memtable::{Lookup, MemSource};
use crate::range_del::{Fragments, RangeTombstone};
use crate::Result;

/// A sequence number and the structures that hold everything up to it.
#[derive(Clone)]
pub(crate) struct ReadView {
    sv: Arc<SuperVersion>,
    seq: u64,
}

impl ReadView {
    pub(crate) fn new(sv: Arc<SuperVersion>, seq: u64) -> Self {
        ReadView { sv, seq }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Newest source first: the first one that knows the key decides,
    /// unless a range tombstone of a memtable newer than what it found
    /// covers the key (the version applies its tables' own).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let memtables = || std::iter::once(&self.sv.mem).chain(&self.sv.imms);
        let found = memtables().find_map(|m| m.get(key, self.seq));
        let found = match found {
            Some(found) => Some(found),
            None => self.sv.version.get(key, self.seq, &self.sv.counters)?,
        };
        let Some((seq, lookup)) = found else {
            return Ok(None);
        };
        let tombstone = memtables()
            .map(|m| m.newest_tombstone_covering(key, self.seq))
            .max()
            .unwrap_or(0);
        if tombstone > seq {
            return Ok(None);
        }
        Ok(match lookup {
            Lookup::Value(v) => Some(v),
            Lookup::Blob(pointer) => Some(self.read_blob(&pointer)?),
            Lookup::Deleted => None,
        })
    }

    /// The value a `BlobIndex` entry points to: in the blob file of a
    /// memtable's WAL, or in a blob file of the version.
    fn read_blob(&self, pointer: &[u8]) -> Result<Vec<u8>> {
        if let Ok(r) = BlobRef::decode(pointer) {
            let vlog = std::iter::once(&self.sv.mem)
                .chain(&self.sv.imms)
                .find_map(|m| m.vlog(r.file));
            if let Some(file) = vlog {
                return file.read(&r);
            }
        }
        self.sv.version.read_blob(pointer)
    }

    /// The range tombstones visible to this view that may cover keys in `bounds`.
    fn fragments(&self, bounds: &KeyBounds) -> Fragments {
        let in_memory: Vec<RangeTombstone> = std::iter::once(&self.sv.mem)
            .chain(&self.sv.imms)
            .flat_map(|m| m.range_tombstones())
            .collect();
        Fragments::new(
            in_memory
                .iter()
                .chain(self.sv.version.range_tombstones(bounds)),
            self.seq,
        )
    }

    pub(crate) fn range<K: AsRef<[u8]>>(&self, range: impl std::ops::RangeBounds<K>) -> Iter {
        Iter::new(self.clone(), KeyBounds::from_range(&range))
    }

    pub(crate) fn prefix(&self, prefix: &[u8]) -> Iter {
        Iter::new(self.clone(), KeyBounds::prefix(prefix))
    }

    fn merged(&self, bounds: &KeyBounds, direction: Direction) -> MergingSource {
        let mut sources: Vec<Box<dyn Source>> = std::iter::once(&self.sv.mem)
            .chain(&self.sv.imms)
            .filter(|m| !m.is_empty())
            .map(|m| Box::new(MemSource::new(m.clone(), bounds, direction)) as Box<dyn Source>)
            .collect();
        sources.extend(self.sv.version.sources(bounds, direction));
        MergingSource::new(sources, direction)
    }
}

/// One end of an [`Iter`]: merged entries reduced to the visible value of each key.
struct Cursor {
    merged: MergingSource,
    direction: Direction,
    /// Forward: the key whose newest visible version was already decided
    /// (valid when `has_decided`; the buffer is reused to spare an allocation per key).
    decided: Vec<u8>,
    has_decided: bool,
    /// Backward: an entry read past the end of the key being decided.
    lookahead: Option<Entry>,
    /// The range tombstones visible to the view, shared by both ends.
    tombstones: Arc<Fragments>,
}

impl Cursor {
    /// Whether the visible version `e` of its key hides the key: a deletion,
    /// or a value under a newer range tombstone.
    fn hides(&self, e: &Entry) -> bool {
        e.is_deletion()
            || (!self.tombstones.is_empty()
                && self.tombstones.newest_covering(&e.user_key) > e.seq())
    }

    fn next_visible(&mut self, seq: u64) -> Result<Option<Entry>> {
        match self.direction {
            Direction::Forward => self.next_forward(seq),
            Direction::Backward => self.next_backward(seq),
        }
    }

    /// Versions of a key arrive newest first: the first visible one decides.
    fn next_forward(&mut self, seq: u64) -> Result<Option<Entry>> {
        while let Some(e) = self.merged.next_entry()? {
            if e.seq() > seq || (self.has_decided && self.decided == e.user_key) {
                continue;
            }
            self.decided.clear();
            self.decided.extend_from_slice(&e.user_key);
            self.has_decided = true;
            if !self.hides(&e) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Versions of a key arrive oldest first: the last visible one decides,
    /// known only once the next key (or the end) shows up.
    fn next_backward(&mut self, seq: u64) -> Result<Option<Entry>> {
        let mut best: Option<Entry> = None;
        loop {
            let next = match self.lookahead.take() {
                Some(e) => Some(e),
                None => self.merged.next_entry()?,
            };
            let Some(e) = next else {
                return Ok(best.filter(|b| !self.hides(b)));
            };
            if let Some(b) = &best {
                if b.user_key != e.user_key {
                    self.lookahead = Some(e);
                    if !self.hides(b) {
                        return Ok(best);
                    }
                    best = None;
                    continue;
                }
            }
            if e.seq() <= seq {
                best = Some(e);
            }
        }
    }
}

/// A double-ended iterator over `(key, value)` pairs in key order, at the
/// point in time it was created. Yields `Err` once if a table turns out to be
/// corrupt, then ends.
pub struct Iter {
    view: ReadView,
    bounds: KeyBounds,
    front: Option<Cursor>,
    back: Option<Cursor>,
    /// The last keys yielded from each end: the two ends stop where they meet.
    front_key: Option<Vec<u8>>,
    back_key: Option<Vec<u8>>,
    done: bool,
    /// Built when the first end starts.
    tombstones: Option<Arc<Fragments>>,
}

impl Iter {
    fn new(view: ReadView, bounds: KeyBounds) -> Self {
        Iter {
            view,
            bounds,
            front: None,
            back: None,
            front_key: None,
            back_key: None,
            done: false,
            tombstones: None,
        }
    }

    fn step(&mut self, direction: Direction) -> Option<Result<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return None;
        }
        let (cursor, seq) = {
            let slot = match direction {
                Direction::Forward => &mut self.front,
                Direction::Backward => &mut self.back,
            };
            let view = &self.view;
            let bounds = &self.bounds;
            let tombstones = self
                .tombstones
                .get_or_insert_with(|| Arc::new(view.fragments(bounds)));
            let cursor = slot.get_or_insert_with(|| Cursor {
                merged: view.merged(bounds, direction),
                direction,
                decided: Vec::new(),
                has_decided: false,
                lookahead: None,
                tombstones: tombstones.clone(),
            });
            (cursor, view.seq)
        };
        let entry = match cursor.next_visible(seq) {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        let crossed = match direction {
            Direction::Forward => self.back_key.as_ref().is_some_and(|b| &entry.user_key >= b),
            Direction::Backward => self
                .front_key
                .as_ref()
                .is_some_and(|f| &entry.user_key <= f),
        };
        if crossed {
            self.done = true;
            return None;
        }
        let mine = match direction {
            Direction::Forward => &mut self.front_key,
            Direction::Backward => &mut self.back_key,
        };
        match mine {
            Some(buf) => {
                buf.clear();
                buf.extend_from_slice(&entry.user_key);
            }
            None => *mine = Some(entry.user_key.clone()),
        }
        if entry.is_blob_index() {
            return Some(match self.view.read_blob(&entry.value) {
                Ok(value) => Ok((entry.user_key, value)),
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            });
        }
        Some(Ok((entry.user_key, entry.value)))
    }
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(Direction::Forward)
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(Direction::Backward)
    }
}

impl std::iter::FusedIterator for Iter {}
