//! The client key-value API: `PUT/GET/DELETE /v1/kv/{key}` with raw bodies,
//! and the same under `/block/{id}`, the block store's route, where a `PUT`
//! answers 201 as its clients expect (always: telling a create from an
//! overwrite would cost a read before every write, and a racing writer could
//! make the answer wrong anyway) and, with `--block-size`, takes only bodies
//! of exactly that size: 400 for any other, where the block store truncated.
//!
//! A key is the rest of the path after the route prefix, percent-decoded to
//! bytes (so almost any byte string is a key: `%2F`, UTF-8 or not; a key
//! starting with `%00` is reserved for files and refused).
//! `?consistency=one|quorum|all` picks the level; QUORUM by default.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::{read_body, ApiError, AppState, BodyLimit};
use crate::config::Limits;
use crate::coordinator::Consistency;

/// Header carrying the stored version (HLC timestamp) of a value.
pub const VERSION_HEADER: &str = "x-kvnode-version";

/// `GET`: the value (raw bytes), or 404.
pub async fn get_value(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let (key, consistency) = key_and_consistency(&state, &uri)?;
    match state.coordinator.read(key, consistency).await? {
        Some(record) => match record.value {
            Some(value) => Ok((
                [
                    (header::CONTENT_TYPE, OCTET_STREAM),
                    (VERSION, HeaderValue::from(record.version)),
                ],
                value,
            )
                .into_response()),
            None => Err(not_found()),
        },
        None => Err(not_found()),
    }
}

/// [`VERSION_HEADER`], checked when compiled.
const VERSION: HeaderName = HeaderName::from_static(VERSION_HEADER);

/// The content type of a value.
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// `PUT /v1/kv`: stores the body as the value; 204 with the version header.
pub async fn put_value(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    store(&state, &uri, body, None, StatusCode::NO_CONTENT).await
}

/// `PUT /block`: stores the body as the block, refusing one of the wrong
/// size under `--block-size`; 201 with the version header.
pub async fn put_block(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let size = state.config.limits.block_size;
    store(&state, &uri, body, size, StatusCode::CREATED).await
}

/// Writes the body under the URI's key, answering `status` with the version;
/// a body that is not exactly `exact_len` bytes (when given) is refused.
async fn store(
    state: &AppState,
    uri: &Uri,
    body: Body,
    exact_len: Option<usize>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let (key, consistency) = key_and_consistency(state, uri)?;
    let value = read_body(body, BodyLimit::value(&state.config.limits)).await?;
    if let Some(size) = exact_len.filter(|&size| size != value.len()) {
        return Err(ApiError::bad_request(
            "bad_block_size",
            format!(
                "a block is exactly {size} bytes (--block-size); this one is {}",
                value.len()
            ),
        ));
    }
    let version = state
        .coordinator
        .write(key, Some(value), consistency)
        .await?;
    Ok(written(status, version))
}

/// `DELETE`: writes a tombstone; 204 whether or not the key existed.
pub async fn delete_value(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let (key, consistency) = key_and_consistency(&state, &uri)?;
    let version = state.coordinator.write(key, None, consistency).await?;
    Ok(written(StatusCode::NO_CONTENT, version))
}

fn written(status: StatusCode, version: u64) -> Response {
    (status, [(VERSION, HeaderValue::from(version))]).into_response()
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no value for this key")
}

fn key_and_consistency(state: &AppState, uri: &Uri) -> Result<(Bytes, Consistency), ApiError> {
    let raw = ["/v1/kv/", "/block/"]
        .iter()
        .find_map(|p| uri.path().strip_prefix(p))
        .unwrap_or_default();
    let key: Cow<'_, [u8]> = percent_decode_str(raw).into();
    let key = Bytes::copy_from_slice(&key);
    check_client_key(&state.config.limits, &key)?;
    Ok((key, consistency(uri.query())?))
}

/// Refuses an empty key, or one over the key limit (413).
pub fn check_key(limits: &Limits, key: &[u8]) -> Result<(), ApiError> {
    let limit = limits.max_key_size;
    if key.is_empty() {
        return Err(ApiError::bad_request("bad_key", "the key is empty"));
    }
    if key.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "key_too_large",
            format!("key is {} bytes; max_key_size is {limit}", key.len()),
        ));
    }
    Ok(())
}

/// [`check_key`], and refuses the keys reserved for files' chunks and
/// manifests (those starting with a zero byte), so that no client key
/// reaches them.
pub fn check_client_key(limits: &Limits, key: &[u8]) -> Result<(), ApiError> {
    check_key(limits, key)?;
    if crate::files::is_reserved(key) {
        return Err(ApiError::bad_request(
            "reserved_key",
            "keys starting with a zero byte are reserved for files",
        ));
    }
    Ok(())
}

/// The query parameters the client routes read; others are ignored.
#[derive(Debug, Default, serde::Deserialize)]
struct LevelQuery {
    consistency: Option<String>,
}

/// The `consistency` query parameter; QUORUM when absent. Other parameters
/// are ignored.
pub fn consistency(query: Option<&str>) -> Result<Consistency, ApiError> {
    let query: LevelQuery = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| ApiError::bad_request("bad_query", format!("query string: {e}")))?;
    let Some(value) = query.consistency else {
        return Ok(Consistency::Quorum);
    };
    Consistency::parse(&value).ok_or_else(|| {
        ApiError::bad_request(
            "bad_consistency",
            format!("consistency must be one, quorum or all, not {value:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_defaults_to_quorum_and_refuses_unknown_levels() {
        assert!(matches!(consistency(None), Ok(Consistency::Quorum)));
        assert!(matches!(consistency(Some("x=1")), Ok(Consistency::Quorum)));
        assert!(matches!(
            consistency(Some("consistency=ALL")),
            Ok(Consistency::All)
        ));
        assert!(matches!(
            consistency(Some("a=b&consistency=one")),
            Ok(Consistency::One)
        ));
        assert!(consistency(Some("consistency=two")).is_err());
        assert!(consistency(Some("consistency")).is_err());
        // Percent-encoded and `+`-encoded values decode like any form.
        assert!(matches!(
            consistency(Some("consistency=%71uorum")),
            Ok(Consistency::Quorum)
        ));
        assert!(consistency(Some("consistency=all+")).is_err());
        // A level given twice is ambiguous: refused, not last-one-wins.
        assert!(consistency(Some("consistency=one&consistency=all")).is_err());
    }
}
