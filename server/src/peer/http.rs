//! The real transport: pooled HTTP, each request signed under the cluster
//! secret ([`auth::request`](crate::auth::request)), which never travels.
//! In a TLS cluster it is HTTPS, the node presenting its certificate and
//! trusting only the cluster CA ([`tls`](crate::tls)).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_ring::TokenRange;

use super::repair::{
    DigestAnswer, DigestRequest, RowsAnswer, RowsRequest, DIGEST_PATH, REPAIR_ROWS_PATH,
};
use super::wire::{
    RecordDigest, APPLY_BATCH_PATH, APPLY_PATH, READ_DIGEST_PATH, READ_PATH, STREAM_PATH,
};
use super::{Chunks, Endpoint, Peer, PeerError};
use crate::auth::request::RequestSigner;
use crate::auth::ClusterSecret;
use crate::files::index::{ListRequest, Listed, LIST_PATH};
use crate::hlc::WallClock;
use crate::storage::Record;

/// Calls peers over HTTP, sharing one connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpPeer {
    client: reqwest::Client,
    signer: RequestSigner,
    /// Deadline of one apply or read.
    replica_timeout: Duration,
    /// `http`, or `https` with TLS.
    scheme: &'static str,
}

impl HttpPeer {
    /// A peer client. `replica_timeout` bounds connecting and each apply
    /// and read (not streams: a range takes as long as it takes).
    /// `pool_idle_timeout` is how long an idle pooled connection is kept:
    /// below the peers' own idle limit (their header and idle timeouts), or
    /// a call could go out on a connection the peer is closing at that
    /// moment. With `tls`, peers are called over HTTPS.
    pub fn new(
        secret: ClusterSecret,
        replica_timeout: Duration,
        pool_idle_timeout: Duration,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(replica_timeout)
            .pool_max_idle_per_host(128)
            .pool_idle_timeout(pool_idle_timeout)
            .tcp_nodelay(true);
        let (builder, scheme) = match tls {
            Some(tls) => (builder.use_preconfigured_tls(tls), "https"),
            None => (builder, "http"),
        };
        Ok(Self {
            client: builder.build()?,
            signer: RequestSigner::new(&secret, UNNAMED),
            replica_timeout,
            scheme,
        })
    }

    /// The same client, signing as `node_id` on `clock`: what a node's own
    /// peer client does.
    #[must_use]
    pub(crate) fn signing_as(mut self, node_id: &str, clock: WallClock) -> Self {
        self.signer = self.signer.with_sender(node_id).with_clock(clock);
        self
    }

    /// Signs and sends `request`, with the id of the client request it
    /// serves, if any ([`trace`](super::trace)).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, PeerError> {
        let mut request = request.build().map_err(failure)?;
        if let Some(id) = super::trace::current() {
            request
                .headers_mut()
                .insert(super::trace::REQUEST_ID.clone(), id);
        }
        self.signer
            .sign(&mut request)
            .map_err(|e| PeerError::Unreachable(e.to_string()))?;
        self.client.execute(request).await.map_err(failure)
    }

    /// Posts `body`, bounded by `timeout` when given.
    async fn post(
        &self,
        to: Endpoint<'_>,
        path: &str,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, PeerError> {
        let mut request = self
            .client
            .post(format!("{}://{}{path}", self.scheme, to.addr))
            .body(body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        self.send(request).await
    }
}

#[async_trait]
impl Peer for HttpPeer {
    async fn apply(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        let response = self
            .post(to, APPLY_PATH, body, Some(self.replica_timeout))
            .await?;
        refused(&response)
    }

    async fn apply_batch(&self, to: Endpoint<'_>, body: Bytes) -> Result<(), PeerError> {
        let response = self
            .post(to, APPLY_BATCH_PATH, body, Some(self.replica_timeout))
            .await?;
        refused(&response)
    }

    async fn read(&self, to: Endpoint<'_>, key: Bytes) -> Result<Option<Record>, PeerError> {
        let response = self
            .post(to, READ_PATH, key, Some(self.replica_timeout))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        refused(&response)?;
        let body = response.bytes().await.map_err(failure)?;
        Record::decode(body)
            .map(Some)
            .map_err(|e| PeerError::BadAnswer(e.to_string()))
    }

    async fn read_digest(
        &self,
        to: Endpoint<'_>,
        key: Bytes,
    ) -> Result<Option<RecordDigest>, PeerError> {
        let response = self
            .post(to, READ_DIGEST_PATH, key, Some(self.replica_timeout))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        refused(&response)?;
        let body = response.bytes().await.map_err(failure)?;
        RecordDigest::decode(&body)
            .map(Some)
            .map_err(|e| PeerError::BadAnswer(e.to_string()))
    }

    async fn stream(
        &self,
        to: Endpoint<'_>,
        range: TokenRange,
        after: Option<&[u8]>,
    ) -> Result<Box<dyn Chunks>, PeerError> {
        let mut url = format!(
            "{}://{}{STREAM_PATH}?start={}&end={}",
            self.scheme,
            to.addr,
            range.start(),
            range.end()
        );
        if let Some(a) = after {
            url.push_str("&after=");
            url.push_str(&hex::encode(a));
        }
        let response = self.send(self.client.get(url)).await?;
        refused(&response)?;
        Ok(Box::new(Body(response)))
    }

    async fn digest(
        &self,
        to: Endpoint<'_>,
        request: &DigestRequest,
    ) -> Result<DigestAnswer, PeerError> {
        let response = self
            .post(to, DIGEST_PATH, request.encode().into(), None)
            .await?;
        refused(&response)?;
        let body = response.bytes().await.map_err(failure)?;
        DigestAnswer::decode(&body, request.parents.len())
            .map_err(|e| PeerError::BadAnswer(e.to_string()))
    }

    async fn repair_rows(
        &self,
        to: Endpoint<'_>,
        request: &RowsRequest,
    ) -> Result<RowsAnswer, PeerError> {
        let response = self
            .post(to, REPAIR_ROWS_PATH, request.encode().into(), None)
            .await?;
        refused(&response)?;
        let body = response.bytes().await.map_err(failure)?;
        RowsAnswer::decode(&body, request).map_err(|e| PeerError::BadAnswer(e.to_string()))
    }

    async fn list_files(
        &self,
        to: Endpoint<'_>,
        request: &ListRequest,
    ) -> Result<Vec<Listed>, PeerError> {
        let body = serde_json::to_vec(request).map_err(|e| PeerError::BadAnswer(e.to_string()))?;
        let response = self
            .post(to, LIST_PATH, body.into(), Some(self.replica_timeout))
            .await?;
        refused(&response)?;
        let body = response.bytes().await.map_err(failure)?;
        serde_json::from_slice(&body).map_err(|e| PeerError::BadAnswer(e.to_string()))
    }
}

/// The sender a peer client names until [`HttpPeer::signing_as`] names it.
const UNNAMED: &str = "unnamed";

/// A streamed response body.
struct Body(reqwest::Response);

#[async_trait]
impl Chunks for Body {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, PeerError> {
        self.0.chunk().await.map_err(failure)
    }
}

/// An error status as [`PeerError::Refused`].
fn refused(response: &reqwest::Response) -> Result<(), PeerError> {
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(PeerError::Refused {
            status: status.as_u16(),
        })
    }
}

fn failure(e: reqwest::Error) -> PeerError {
    if e.is_timeout() {
        PeerError::Timeout
    } else {
        PeerError::Unreachable(crate::tls::error_chain(&e))
    }
}
