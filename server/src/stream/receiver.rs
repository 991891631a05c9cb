//! The receiving side: pulls one token range from a source replica and
//! applies it with last-writer-wins, resuming a cut stream after the last
//! key applied and moving on to another replica when a source keeps failing.

use std::time::Duration;

use bytes::Bytes;
use strata_ring::TokenRange;

use super::Progress;
use crate::hlc::Hlc;
use crate::membership::MemberInfo;
use crate::metrics::Metrics;
use crate::peer::frames::{Decoder, Frame, FrameError};
use crate::peer::{Peer, PeerError};
use crate::storage::{Storage, StorageError};
use crate::throttle::Throttle;
use std::sync::Arc;

/// Longest wait for the next piece of a stream before it counts as cut.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries on one source (each resuming) before the next source.
const TRIES_PER_SOURCE: u32 = 3;
/// Rounds over all sources before giving up on a range for now.
const ROUNDS: u32 = 5;
/// Ranges pulled at once: a join gains hundreds of small ranges (one per
/// vnode and replica position), and one at a time the per-request round
/// trip, not the bytes, sets the pace. Few enough that the sources' disks
/// and the foreground load keep most of the machine.
const RANGES_AT_ONCE: usize = 4;

/// Why one stream attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The source refused, or could not be reached or read.
    #[error("source: {0}")]
    Peer(#[from] PeerError),
    /// No bytes for [`IDLE_TIMEOUT`].
    #[error("stream idle for {0:?}")]
    Idle(Duration),
    /// The body ended without an end frame.
    #[error("stream cut before its end frame")]
    Cut,
    /// The frames do not decode.
    #[error("frames: {0}")]
    Frame(#[from] FrameError),
    /// The end frame counts other entries than were received.
    #[error("source says it sent {sent} entries, {received} arrived")]
    Count {
        /// Per the end frame.
        sent: u64,
        /// Decoded.
        received: u64,
    },
    /// Applying locally failed.
    #[error("apply: {0}")]
    Storage(#[from] StorageError),
    /// An entry outside the requested range.
    #[error("entry with token {0} outside the range")]
    OutOfRange(u64),
    /// No source is left to try.
    #[error("no source for the range answered")]
    NoSource,
}

/// Pulls ranges into this node's engine. Cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    peer: Arc<dyn Peer>,
    storage: Storage,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    hlc: Arc<Hlc>,
    /// What the bytes received are paid from; unlimited unless set.
    throttle: Throttle,
    /// [`IDLE_TIMEOUT`]; shorter in tests, which stall a source on purpose.
    idle_timeout: Duration,
}

impl Receiver {
    /// A receiver that pulls through `peer`, with an idle deadline per
    /// read of a stream rather than one for the whole range (a range takes
    /// as long as it takes).
    pub fn new(
        storage: Storage,
        peer: Arc<dyn Peer>,
        (metrics, progress, hlc): (Arc<Metrics>, Arc<Progress>, Arc<Hlc>),
    ) -> Self {
        Self {
            peer,
            storage,
            metrics,
            progress,
            hlc,
            throttle: Throttle::new(0),
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// The same receiver, paying for every byte it receives from
    /// `throttle`: the node's background budget, shared with hints and
    /// repair, so a join or a take-over never takes the bandwidth its
    /// sources' clients need.
    pub(crate) fn throttled(self, throttle: Throttle) -> Self {
        Self { throttle, ..self }
    }

    /// Pulls every `(range, sources)` job, [`RANGES_AT_ONCE`] at a time;
    /// returns the entries applied and how many ranges failed.
    pub async fn pull_all(&self, jobs: Vec<(TokenRange, Vec<MemberInfo>)>) -> (u64, usize) {
        let mut set = tokio::task::JoinSet::new();
        let (mut entries, mut failed) = (0u64, 0usize);
        let mut jobs = jobs.into_iter();
        loop {
            while set.len() < RANGES_AT_ONCE {
                let Some((range, sources)) = jobs.next() else {
                    break;
                };
                let this = self.clone();
                set.spawn(async move { (range, this.pull(range, &sources).await) });
            }
            let Some(done) = set.join_next().await else {
                return (entries, failed);
            };
            match done {
                Ok((_, Ok(n))) => entries += n,
                Ok((range, Err(e))) => {
                    tracing::error!(?range, error = %e, "range not received");
                    failed += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "stream task failed");
                    failed += 1;
                }
            }
        }
    }

    /// Streams `range` from the first of `sources` that delivers it whole,
    /// trying each a few times (resuming) and cycling over them a few
    /// rounds. Returns the entries applied.
    pub async fn pull(
        &self,
        range: TokenRange,
        sources: &[MemberInfo],
    ) -> Result<u64, StreamError> {
        let mut after: Option<Vec<u8>> = None;
        let mut applied = 0u64;
        let mut last_error = StreamError::NoSource;
        for round in 0..ROUNDS {
            for source in sources {
                for attempt in 0..TRIES_PER_SOURCE {
                    self.progress.started(range, source.id.as_str());
                    match self
                        .pull_once(range, source, &mut after, &mut applied)
                        .await
                    {
                        Ok(()) => {
                            self.progress.finished(range);
                            return Ok(applied);
                        }
                        Err(e) => {
                            tracing::warn!(
                                source = %source.id, %round, %attempt, error = %e,
                                resume_after = after.as_deref().map(hex::encode),
                                "stream attempt failed; resuming"
                            );
                            self.metrics.stream_retry();
                            last_error = e;
                            let backoff = Duration::from_millis(100 << attempt.min(4));
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
            }
        }
        self.progress.failed(range);
        Err(last_error)
    }

    async fn pull_once(
        &self,
        range: TokenRange,
        source: &MemberInfo,
        after: &mut Option<Vec<u8>>,
        applied: &mut u64,
    ) -> Result<(), StreamError> {
        let idle = self.idle_timeout;
        let request = self.peer.stream(source.endpoint(), range, after.as_deref());
        let mut body = tokio::time::timeout(idle, request)
            .await
            .map_err(|_| StreamError::Idle(idle))??;
        let mut decoder = Decoder::default();
        let mut received = 0u64;
        loop {
            let chunk = tokio::time::timeout(idle, body.next_chunk())
                .await
                .map_err(|_| StreamError::Idle(idle))??;
            let Some(chunk) = chunk else {
                return Err(StreamError::Cut);
            };
            self.throttle.spend(chunk.len() as u64).await;
            decoder.push(&chunk);
            while let Some(frame) = decoder.next_frame()? {
                match frame {
                    Frame::Records(entries) => {
                        if let Some(e) = entries.iter().find(|e| !range.contains(e.token())) {
                            return Err(StreamError::OutOfRange(e.token()));
                        }
                        let n = entries.len() as u64;
                        let bytes: usize = entries
                            .iter()
                            .map(|e| {
                                e.engine_key.len() + e.record.value.as_ref().map_or(0, Bytes::len)
                            })
                            .sum();
                        let last = entries.last().map(|e| (e.engine_key.clone(), e.token()));
                        // As for a replicated apply: this node's next write
                        // of a streamed key must get a newer version.
                        if let Some(v) = entries.iter().map(|e| e.record.version).max() {
                            self.hlc.update(v);
                        }
                        let storage = self.storage.clone();
                        tokio::task::spawn_blocking(move || {
                            for e in &entries {
                                storage.apply(e.user_key(), &e.record)?;
                            }
                            Ok::<(), StorageError>(())
                        })
                        .await
                        .map_err(|e| StorageError::Task(e.to_string()))??;
                        received += n;
                        *applied += n;
                        if let Some((key, token)) = last {
                            *after = Some(key);
                            self.progress.advanced(range, bytes as u64, n, token);
                        }
                        self.metrics.stream_received(bytes, n);
                    }
                    Frame::End { entries } => {
                        if entries != received {
                            return Err(StreamError::Count {
                                sent: entries,
                                received,
                            });
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "receiver_tests.rs"]
mod tests;
