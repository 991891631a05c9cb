//! The peer that repair talks through: every body byte of its digest,
//! repair-pull and stream calls is counted in the repair metrics, and the
//! digest and repair-pull bytes are drawn from the node's background
//! [`Throttle`] (stream bytes are paid by the receiver, as every stream's
//! are), so repair traffic is both measured and bounded without the
//! comparison knowing.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use strata_ring::TokenRange;

use crate::metrics::Metrics;
use crate::peer::repair::{DigestAnswer, DigestRequest, PullRequest};
use crate::peer::{Chunks, Endpoint, Peer, PeerError};
use crate::storage::Record;
use crate::throttle::Throttle;

/// A [`Peer`] that meters and throttles another.
pub(crate) struct MeteredPeer {
    inner: Arc<dyn Peer>,
    throttle: Throttle,
    metrics: Arc<Metrics>,
}

impl MeteredPeer {
    pub(crate) fn new(inner: Arc<dyn Peer>, throttle: Throttle, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            throttle,
            metrics,
        }
    }
}

/// Which repair counter a body's bytes go to.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Digest,
    Items,
}

/// A body whose chunks are counted and paid for as they arrive.
struct MeteredChunks {
    inner: Box<dyn Chunks>,
    throttle: Throttle,
    metrics: Arc<Metrics>,
    kind: Kind,
}

#[async_trait]
impl Chunks for MeteredChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, PeerError> {
        let chunk = self.inner.next_chunk().await?;
        if let Some(c) = &chunk {
            let n = c.len() as u64;
            match self.kind {
                Kind::Digest => {
                    self.metrics.repair_digest_bytes(n);
                    self.throttle.spend(n).await;
                }
                // The receiver pays for stream bytes.
                Kind::Items => self.metrics.repair_item_bytes(n),
            }
        }
        Ok(chunk)
    }
}

#[async_trait]
impl Peer for MeteredPeer {
    async fn apply(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        self.inner.apply(to, body).await
    }

    async fn apply_batch(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        let n = body.len() as u64;
        self.metrics.repair_item_bytes(n);
        self.throttle.spend(n).await;
        self.inner.apply_batch(to, body).await
    }

    async fn read(&self, to: Endpoint<'_>, key: Bytes) -> Result<Option<Record>, PeerError> {
        self.inner.read(to, key).await
    }

    async fn stream(
        &self,
        to: Endpoint<'_>,
        range: TokenRange,
        after: Option<&[u8]>,
    ) -> Result<Box<dyn Chunks>, PeerError> {
        let inner = self.inner.stream(to, range, after).await?;
        Ok(Box::new(MeteredChunks {
            inner,
            throttle: self.throttle.clone(),
            metrics: self.metrics.clone(),
            kind: Kind::Items,
        }))
    }

    async fn digest(
        &self,
        to: Endpoint<'_>,
        request: &DigestRequest,
    ) -> Result<DigestAnswer, PeerError> {
        // The encoded sizes are exactly the bodies' (`peer::repair`).
        let asked = 30 + 4 * request.nodes.len() as u64;
        self.throttle.spend(asked).await;
        let answer = self.inner.digest(to, request).await?;
        let answered = 8 + 8 * answer.hashes.len() as u64;
        self.metrics.repair_digest_bytes(asked + answered);
        self.throttle.spend(answered).await;
        Ok(answer)
    }

    async fn pull_from(
        &self,
        to: Endpoint<'_>,
        request: &PullRequest,
    ) -> Result<Box<dyn Chunks>, PeerError> {
        let asked = request.encode().len() as u64;
        self.metrics.repair_digest_bytes(asked);
        self.throttle.spend(asked).await;
        let inner = self.inner.pull_from(to, request).await?;
        Ok(Box::new(MeteredChunks {
            inner,
            throttle: self.throttle.clone(),
            metrics: self.metrics.clone(),
            kind: Kind::Digest,
        }))
    }
}
