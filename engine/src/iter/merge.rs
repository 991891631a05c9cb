//! Merges several sources, each sorted in the same direction, into one.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Direction, Entry, Source};
use crate::Result;

/// A heap slot: the head entry of child `child`.
struct Head {
    entry: Entry,
    child: usize,
    direction: Direction,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    // BinaryHeap pops the greatest: make "next in walk order" the greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        let walk = self.entry.cmp_key(&other.entry);
        let walk = match self.direction {
            Direction::Forward => walk.reverse(),
            Direction::Backward => walk,
        };
        // Equal internal keys only arise from the same write seen twice; prefer the lower child.
        walk.then_with(|| other.child.cmp(&self.child))
    }
}

/// A k-way merge of sources by internal key, in one direction.
pub(crate) struct MergingSource {
    children: Vec<Box<dyn Source>>,
    heap: BinaryHeap<Head>,
    direction: Direction,
    started: bool,
}

impl MergingSource {
    pub(crate) fn new(children: Vec<Box<dyn Source>>, direction: Direction) -> Self {
        MergingSource {
            heap: BinaryHeap::with_capacity(children.len()),
            children,
            direction,
            started: false,
        }
    }

    fn pull(&mut self, child: usize) -> Result<()> {
        if let Some(source) = self.children.get_mut(child) {
            if let Some(entry) = source.next_entry()? {
                self.heap.push(Head {
                    entry,
                    child,
                    direction: self.direction,
                });
            }
        }
        Ok(())
    }
}

impl Source for MergingSource {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if !self.started {
            self.started = true;
            for child in 0..self.children.len() {
                self.pull(child)?;
            }
        }
        let Some(head) = self.heap.pop() else {
            return Ok(None);
        };
        self.pull(head.child)?;
        Ok(Some(head.entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct VecSource(std::vec::IntoIter<Entry>);

    impl Source for VecSource {
        fn next_entry(&mut self) -> Result<Option<Entry>> {
            Ok(self.0.next())
        }
    }

    fn e(k: &str, seq: u64) -> Entry {
        Entry {
            user_key: k.as_bytes().to_vec(),
            tag: seq << 8 | 1,
            value: vec![],
        }
    }

    #[test]
    fn merges_in_internal_key_order_both_ways() {
        let a = vec![e("a", 5), e("c", 1)];
        let b = vec![e("a", 7), e("b", 2), e("c", 3)];
        let run = |dir, a: Vec<Entry>, b: Vec<Entry>| {
            let mut m = MergingSource::new(
                vec![
                    Box::new(VecSource(a.into_iter())),
                    Box::new(VecSource(b.into_iter())),
                ],
                dir,
            );
            let mut out = Vec::new();
            while let Some(x) = m.next_entry().unwrap() {
                out.push((String::from_utf8(x.user_key).unwrap(), x.tag >> 8));
            }
            out
        };
        let fwd = run(Direction::Forward, a.clone(), b.clone());
        let want: Vec<(String, u64)> = [("a", 7), ("a", 5), ("b", 2), ("c", 3), ("c", 1)]
            .iter()
            .map(|(k, s)| (k.to_string(), *s))
            .collect();
        assert_eq!(fwd, want);
        let rev = |mut v: Vec<Entry>| {
            v.reverse();
            v
        };
        let mut bwd = run(Direction::Backward, rev(a), rev(b));
        bwd.reverse();
        assert_eq!(bwd, want);
    }
}
