//! The id of the client request a replica call serves, carried to the
//! replica so that one id finds a request's log lines on every node it
//! touched.
//!
//! The API sets it while it serves a client request
//! ([`request_id`](crate::api::request_id)); calls the coordinator starts on
//! other tasks take it along (`carried`); the HTTP transport sends it as
//! `x-request-id` on the internal call, and the replica's `request` span
//! records it. The id is not covered by the call's signature: it is only a
//! label for logs, and the replica keeps it only if it is sane, as it does
//! a client's.
//!
//! The multiplexed transport (`peer::mux`) does not carry it: its frames
//! have no field for it, and adding one is a change of its wire format that
//! nodes of a running cluster would have to agree on first.

use std::future::Future;

use axum::http::{HeaderName, HeaderValue};

/// The header that carries the id, to clients and to replicas.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request the current task serves.
    static CURRENT: HeaderValue;
}

/// Runs `serve` with `id` as the current request's id.
pub(crate) async fn scope<F: Future>(id: HeaderValue, serve: F) -> F::Output {
    CURRENT.scope(id, serve).await
}

/// The id of the request the current task serves, if it serves one.
pub(crate) fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// `call` with the current request's id, for a task spawned on behalf of
/// the request: a task-local does not follow a spawn by itself.
pub(crate) fn carried<F: Future>(call: F) -> impl Future<Output = F::Output> {
    let id = current();
    async move {
        match id {
            Some(id) => CURRENT.scope(id, call).await,
            None => call.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_follows_a_carried_spawn_and_only_it() {
        let id = HeaderValue::from_static("req-1");
        scope(id.clone(), async {
            assert_eq!(current(), Some(id.clone()));
            let carried = tokio::spawn(carried(async { current() }));
            let bare = tokio::spawn(async { current() });
            assert_eq!(carried.await.ok().flatten(), Some(id));
            assert_eq!(bare.await.ok().flatten(), None);
        })
        .await;
        assert_eq!(current(), None);
    }
}
