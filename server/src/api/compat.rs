//! The seeds' own APIs, kept so their README commands work unchanged:
//! `POST /v1/data` with `{"key": "..", "value": ".."}` and
//! `GET /v1/data/{key}` answering the same shape. (`/block/{id}` shares the
//! raw handlers of `kv`.) Both use the one key space of `/v1/kv`: the key is
//! the UTF-8 bytes of the JSON string, and so is the value.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use super::kv::{check_key, consistency};
use super::{read_body, ApiError, AppState, BodyLimit};

/// The JSON item of `/v1/data`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// `POST /v1/data`: stores `value` under `key`; 201 with the item.
pub async fn post_data(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let level = consistency(uri.query())?;
    let body = read_body(body, BodyLimit::Body(state.config.limits.max_body_size)).await?;
    let item: Item = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("expected {{\"key\": string, \"value\": string}}: {e}"),
        )
    })?;
    check_key(&state.config.limits, item.key.as_bytes())?;
    let limit = BodyLimit::value(&state.config.limits);
    if item.value.len() > limit.bytes() {
        return Err(limit.too_large());
    }
    // The echo is serialised first so that the strings can then move into
    // the write without a copy; it is sent only if the write succeeds.
    let echo = (StatusCode::CREATED, Json(&item)).into_response();
    state
        .coordinator
        .write(Bytes::from(item.key), Some(Bytes::from(item.value)), level)
        .await?;
    Ok(echo)
}

/// `GET /v1/data/{key}`: the item as JSON, or 404.
pub async fn get_data(State(state): State<AppState>, uri: Uri) -> Result<Json<Item>, ApiError> {
    let level = consistency(uri.query())?;
    let raw = uri.path().strip_prefix("/v1/data/").unwrap_or_default();
    let key = percent_decode_str(raw).collect::<Vec<u8>>();
    check_key(&state.config.limits, &key)?;
    let key = String::from_utf8(key)
        .map_err(|_| ApiError::bad_request("bad_key", "/v1/data keys are UTF-8; use /v1/kv"))?;
    let record = state
        .coordinator
        .read(Bytes::copy_from_slice(key.as_bytes()), level)
        .await?;
    let Some(value) = record.and_then(|r| r.value) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no value for this key",
        ));
    };
    let value = String::from_utf8(value.to_vec()).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_utf8",
            "the value is not UTF-8 text; read it with GET /v1/kv/{key}",
        )
    })?;
    Ok(Json(Item { key, value }))
}
