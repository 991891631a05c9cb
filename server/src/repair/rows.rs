//! The row-level last step of a repair, as ScyllaDB's row-level repair: the
//! digest walk stops at leaves of a few items, and for a batch of the leaves
//! that differ the asker sends the short hashes of its items in them
//! (`POST /internal/v1/repair-rows`, [`peer::repair`](crate::peer::repair)).
//! The other replica answers with its items in those leaves whose hash the
//! asker did not send, and marks the asker's hashes it holds no item of;
//! the asker applies the first by last-writer-wins, as the stream receiver
//! does, and pushes back its current record of each marked item
//! (`POST /internal/v1/apply-batch`) unless what it received for the same
//! key is as new. After one exchange both replicas hold, in those leaves,
//! the last-writer-wins merge of the two, and only items that differ
//! crossed the network.
//!
//! The three steps are plain functions over engine snapshots, so that the
//! exchange is tested without a network: [`ask`] on the asker, [`answer`]
//! on the other replica, [`settle`] on the asker again.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use strata_engine::Snapshot;
use strata_ring::TokenRange;

use super::tree::{item_hash, leaf_of, scan, sub_range};
use crate::peer::repair::{
    encode_rows_answer, short_hash, LeafHashes, RowsAnswer, RowsRequest, MAX_ROW_HASHES,
    MAX_ROW_LEAVES,
};
use crate::peer::wire::ApplyBatch;
use crate::storage::{Applied, Storage, StorageError};

/// The asker stops adding leaves to a request once the keys it keeps for
/// them reach this size (it needs them after the answer, to push back).
const ASK_KEY_BYTES: usize = 1024 * 1024;

/// Why a row exchange cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RowsError {
    /// The engine could not be read.
    #[error("engine: {0}")]
    Engine(#[from] strata_engine::Error),
    /// The node's storage could not be read or written.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// One leaf holds more items than a request carries.
    #[error("leaf {leaf} holds {items} items, more than a request carries")]
    LeafTooLarge {
        /// The leaf.
        leaf: u32,
        /// Its items.
        items: usize,
    },
    /// The other side sent an item outside the leaves it answered.
    #[error("an item outside the leaves answered")]
    Foreign,
}

/// A request and what the asker needs to settle its answer.
#[derive(Debug)]
pub(crate) struct Ask {
    /// What to send.
    pub(crate) request: RowsRequest,
    /// The engine key of each hash of the request, in order.
    keys: Vec<Vec<u8>>,
}

/// What settling an answer did, and the push-back left to send.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// Items received that were newer here (stored).
    pub(crate) pulled: u64,
    /// Items to push back.
    pub(crate) pushed: u64,
    /// Apply-batch bodies of those items.
    pub(crate) push: Vec<Bytes>,
}

/// Items read from the engine: (engine key, stored record).
type Items = Vec<(Vec<u8>, Vec<u8>)>;

/// The items of `leaf` of the tree of `range` and `depth`: (engine key,
/// stored record), each paid for through `pay`.
fn leaf_items(
    snapshot: &Snapshot,
    (range, depth, leaf): (TokenRange, u8, u32),
    pay: &mut dyn FnMut(u64),
) -> Result<Items, strata_engine::Error> {
    let mut items = Vec::new();
    // A leaf narrower than one token holds nothing.
    if let Some(sub) = sub_range(range, depth, leaf) {
        scan(snapshot, sub, &mut |key, record| {
            pay((key.len() + record.len()) as u64);
            items.push((key.to_vec(), record.to_vec()));
        })?;
    }
    Ok(items)
}

/// The request for as many of `leaves` (ascending, of the tree of `range`
/// and `depth`) as one request carries, at least the first. Blocks on
/// engine reads.
pub(crate) fn ask(
    snapshot: &Snapshot,
    (range, depth, session): (TokenRange, u8, u64),
    leaves: &[u32],
    pay: &mut dyn FnMut(u64),
) -> Result<Ask, RowsError> {
    let mut request = RowsRequest {
        session,
        range,
        depth,
        leaves: Vec::new(),
    };
    let (mut keys, mut key_bytes) = (Vec::new(), 0usize);
    for &leaf in leaves.iter().take(MAX_ROW_LEAVES) {
        let items = leaf_items(snapshot, (range, depth, leaf), pay)?;
        if keys.len() + items.len() > MAX_ROW_HASHES {
            if request.leaves.is_empty() {
                return Err(RowsError::LeafTooLarge {
                    leaf,
                    items: items.len(),
                });
            }
            break;
        }
        let hashes = items
            .iter()
            .map(|(k, r)| short_hash(item_hash(k, r), session))
            .collect();
        request.leaves.push(LeafHashes { leaf, hashes });
        for (key, _) in items {
            key_bytes += key.len();
            keys.push(key);
        }
        if key_bytes >= ASK_KEY_BYTES {
            break;
        }
    }
    Ok(Ask { request, keys })
}

/// The answer of this node (whose engine `snapshot` is) to `request`: its
/// items the asker lacks and the asker's it lacks, leaf by leaf until the
/// items fill a batch. Blocks on engine reads.
pub(crate) fn answer(
    snapshot: &Snapshot,
    request: &RowsRequest,
    pay: &mut dyn FnMut(u64),
) -> Result<Vec<u8>, strata_engine::Error> {
    let (mut batch, mut lacks, mut answered) = (ApplyBatch::default(), Vec::new(), 0);
    for leaf in &request.leaves {
        let items = leaf_items(snapshot, (request.range, request.depth, leaf.leaf), pay)?;
        let theirs: HashSet<u32> = leaf.hashes.iter().copied().collect();
        let mut ours = HashSet::with_capacity(items.len());
        for (key, record) in &items {
            let short = short_hash(item_hash(key, record), request.session);
            ours.insert(short);
            if !theirs.contains(&short) {
                batch.push(key.get(8..).unwrap_or_default(), record);
            }
        }
        lacks.extend(leaf.hashes.iter().map(|h| !ours.contains(h)));
        answered += 1;
        if batch.is_full() {
            break;
        }
    }
    Ok(encode_rows_answer(answered, &lacks, &batch.finish()))
}

/// Applies `answer` to `storage` (the asker's) by last-writer-wins, and
/// gathers the push-back: the asker's current record of each item the
/// other side lacks, unless the record received for that key is as new.
/// Blocks on engine reads and writes.
pub(crate) fn settle(
    storage: &Storage,
    ask: &Ask,
    answer: &RowsAnswer,
) -> Result<Settled, RowsError> {
    let RowsRequest {
        range,
        depth,
        ref leaves,
        ..
    } = ask.request;
    let answered: HashSet<u32> = leaves
        .iter()
        .take(answer.answered)
        .map(|l| l.leaf)
        .collect();
    // An item elsewhere was not asked for: storing it could put data on a
    // node that does not replicate it. Checked before anything is stored.
    let foreign = answer.entries.iter().any(|e| {
        let leaf = u32::try_from(leaf_of(range, depth, e.token())).unwrap_or(u32::MAX);
        !range.contains(e.token()) || !answered.contains(&leaf)
    });
    if foreign {
        return Err(RowsError::Foreign);
    }
    let mut settled = Settled::default();
    let mut received = HashMap::with_capacity(answer.entries.len());
    for e in &answer.entries {
        if storage.apply(e.user_key(), &e.record)? == Applied::Stored {
            settled.pulled += 1;
        }
        received.insert(e.engine_key.as_slice(), &e.record);
    }
    let mut batch = ApplyBatch::default();
    for (key, _) in ask
        .keys
        .iter()
        .zip(&answer.lacks)
        .filter(|(_, lacks)| **lacks)
    {
        let user_key = key.get(8..).unwrap_or_default();
        let Some(mine) = storage.read_encoded(user_key)? else {
            continue;
        };
        if received
            .get(key.as_slice())
            .is_some_and(|theirs| !mine.record().supersedes(theirs))
        {
            continue;
        }
        batch.push(user_key, mine.bytes());
        settled.pushed += 1;
        if batch.is_full() {
            settled.push.push(std::mem::take(&mut batch).finish());
        }
    }
    if batch.entries() > 0 {
        settled.push.push(batch.finish());
    }
    Ok(settled)
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
