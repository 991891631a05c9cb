//! The peer that repair talks through: every body byte of its digest,
//! repair-rows and apply-batch calls, both ways, is counted in the repair
//! metrics and drawn from the node's background [`Throttle`], so repair
//! traffic is both measured and bounded without the comparison knowing.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use strata_ring::TokenRange;

use crate::files::index::{ListRequest, Listed};
use crate::metrics::Metrics;
use crate::peer::repair::{DigestAnswer, DigestRequest, RowsAnswer, RowsRequest};
use crate::peer::wire::RecordDigest;
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

    async fn read_digest(
        &self,
        to: Endpoint<'_>,
        key: Bytes,
    ) -> Result<Option<RecordDigest>, PeerError> {
        self.inner.read_digest(to, key).await
    }

    /// Not metered: repair does not stream.
    async fn stream(
        &self,
        to: Endpoint<'_>,
        range: TokenRange,
        after: Option<&[u8]>,
    ) -> Result<Box<dyn Chunks>, PeerError> {
        self.inner.stream(to, range, after).await
    }

    /// Not metered: a listing is not repair traffic.
    async fn list_files(
        &self,
        to: Endpoint<'_>,
        request: &ListRequest,
    ) -> Result<Vec<Listed>, PeerError> {
        self.inner.list_files(to, request).await
    }

    async fn digest(
        &self,
        to: Endpoint<'_>,
        request: &DigestRequest,
    ) -> Result<DigestAnswer, PeerError> {
        // The encoded sizes are exactly the bodies' (`peer::repair`).
        let asked = 30 + 4 * request.parents.len() as u64;
        self.throttle.spend(asked).await;
        let answer = self.inner.digest(to, request).await?;
        let answered = 8 + 4 * answer.hashes.len() as u64;
        self.metrics.repair_digest_bytes(asked + answered);
        self.throttle.spend(answered).await;
        Ok(answer)
    }

    async fn repair_rows(
        &self,
        to: Endpoint<'_>,
        request: &RowsRequest,
    ) -> Result<RowsAnswer, PeerError> {
        let asked = 29 + 8 * request.leaves.len() as u64 + 4 * request.hashes() as u64;
        self.throttle.spend(asked).await;
        let answer = self.inner.repair_rows(to, request).await?;
        // The answer's count and lacks bits are comparison, its batch items.
        let bits = 4 + answer.lacks.len().div_ceil(8) as u64;
        let items = answer.items_len as u64;
        self.metrics.repair_digest_bytes(asked + bits);
        self.metrics.repair_item_bytes(items);
        self.throttle.spend(bits + items).await;
        Ok(answer)
    }
}
