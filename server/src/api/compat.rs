//! The API of the Cassandra-style storage service this project grew from,
//! kept so that its clients and README commands work unchanged (`/block/{id}`
//! shares the raw handlers of `kv`). Every route uses the one key space of
//! `/v1/kv`: the key is the UTF-8 bytes of the JSON string.
//!
//! - `POST /v1/data` with `{"key": "..", "value": <any JSON>}`: the value is
//!   stored as its JSON text exactly as sent (`"hello"` with its quotes,
//!   `{"a": 1}`, `42`), so `GET /v1/kv/{key}` reads those bytes back. Other
//!   fields are ignored. 201 with `{"status": true, "key", "value",
//!   "version", "message": "OK"}`.
//! - `GET /v1/data?key=K`: 200 with `{"status": true, "value", "version",
//!   "message": "OK", "metadata": {..}}`; a missing key answers 200 with
//!   `"value": null` and `"version": 0`, as that system's clients expect, on
//!   this route only.
//! - `GET /v1/data/{key}`: `{"key", "value": string}`, or 404: the shape
//!   this node has always answered there.
//!
//! Stored bytes that are not JSON (a raw `PUT /v1/kv`) read back as a JSON
//! string when they are UTF-8; others are refused with 422.
//!
//! `readquorum` and `writequorum` pick the consistency level by the number
//! of replicas: 1 is ONE, a majority of the replication factor QUORUM, the
//! replication factor or -1 ALL; any other number is a 400, never a silent
//! QUORUM. `consistency=one|quorum|all` works too; giving both is a 400.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use strata_ring::ReplicationFactor;

use super::kv::check_client_key;
use super::{read_body, ApiError, AppState, BodyLimit};
use crate::coordinator::Consistency;
use crate::storage::Record;

/// The JSON item of `POST /v1/data`; other fields are ignored.
#[derive(Debug, Deserialize)]
struct PostItem {
    key: String,
    /// The value's JSON text exactly as sent.
    value: Box<RawValue>,
}

/// What `POST /v1/data` answers.
#[derive(Debug, Serialize)]
struct Posted<'a> {
    status: bool,
    key: &'a str,
    value: &'a RawValue,
    version: u64,
    message: &'static str,
}

/// The item `GET /v1/data/{key}` answers.
#[derive(Debug, Serialize)]
pub struct Item {
    key: String,
    value: String,
}

/// What `GET /v1/data?key=` answers.
#[derive(Debug, Serialize)]
struct Read {
    status: bool,
    value: Option<Box<RawValue>>,
    version: u64,
    message: &'static str,
    metadata: ReadMetadata,
}

/// The `metadata` of a read: how it was served.
#[derive(Debug, Serialize)]
struct ReadMetadata {
    key: String,
    consistency: &'static str,
    coordinator: String,
}

/// The query of the `/v1/data` routes; others are ignored (`include`).
#[derive(Debug, Default, Deserialize)]
struct DataQuery {
    key: Option<String>,
    readquorum: Option<String>,
    writequorum: Option<String>,
    consistency: Option<String>,
}

impl DataQuery {
    fn parse(uri: &Uri) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(uri.query().unwrap_or_default())
            .map_err(|e| ApiError::bad_request("bad_query", format!("query string: {e}")))
    }

    /// The level a quorum parameter (`readquorum` or `writequorum`, named
    /// `name`) or `consistency` asks for; QUORUM when neither is given.
    fn level(
        &self,
        name: &'static str,
        quorum: Option<&str>,
        rf: ReplicationFactor,
    ) -> Result<Consistency, ApiError> {
        match (quorum, &self.consistency) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "bad_consistency",
                format!("give either {name} or consistency, not both"),
            )),
            (Some(n), None) => quorum_level(name, n, rf),
            (None, Some(level)) => Consistency::parse(level).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_consistency",
                    format!("consistency must be one, quorum or all, not {level:?}"),
                )
            }),
            (None, None) => Ok(Consistency::Quorum),
        }
    }
}

/// The level a replica count asks for: 1 is ONE, a majority QUORUM, the
/// replication factor (or -1, "every replica") ALL. With few replicas two
/// of them coincide, and the cheaper level wins: they need the same acks.
fn quorum_level(name: &str, n: &str, rf: ReplicationFactor) -> Result<Consistency, ApiError> {
    let rf = rf.get();
    let majority = rf / 2 + 1;
    let refuse = || {
        ApiError::bad_request(
            "bad_consistency",
            format!(
                "{name} must be 1 (ONE), {majority} (QUORUM), {rf} or -1 (ALL) with replication factor {rf}, not {n:?}"
            ),
        )
    };
    match n.trim().parse::<i64>().map_err(|_| refuse())? {
        1 => Ok(Consistency::One),
        -1 => Ok(Consistency::All),
        n if usize::try_from(n).is_ok_and(|n| n == majority) => Ok(Consistency::Quorum),
        n if usize::try_from(n).is_ok_and(|n| n == rf) => Ok(Consistency::All),
        _ => Err(refuse()),
    }
}

/// `POST /v1/data`: stores `value`'s JSON text under `key`; 201.
pub async fn post_data(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let query = DataQuery::parse(&uri)?;
    let level = query.level(
        "writequorum",
        query.writequorum.as_deref(),
        state.config.replication_factor,
    )?;
    let body = read_body(body, BodyLimit::Body(state.config.limits.max_body_size)).await?;
    let item: PostItem = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("expected {{\"key\": string, \"value\": any JSON}}: {e}"),
        )
    })?;
    check_client_key(&state.config.limits, item.key.as_bytes())?;
    let value = Bytes::copy_from_slice(item.value.get().as_bytes());
    let limit = BodyLimit::value(&state.config.limits);
    if value.len() > limit.bytes() {
        return Err(limit.too_large());
    }
    let version = state
        .coordinator
        .write(
            Bytes::copy_from_slice(item.key.as_bytes()),
            Some(value),
            level,
        )
        .await?;
    let posted = Posted {
        status: true,
        key: &item.key,
        value: &item.value,
        version,
        message: "OK",
    };
    Ok((StatusCode::CREATED, Json(posted)).into_response())
}

/// `GET /v1/data?key=K`: the value in that system's read shape, 200 also
/// for a missing key.
pub async fn read_data(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let query = DataQuery::parse(&uri)?;
    let Some(key) = query.key.clone() else {
        return Err(ApiError::bad_request(
            "bad_key",
            "GET /v1/data needs ?key=K (or use GET /v1/data/{key})",
        ));
    };
    check_client_key(&state.config.limits, key.as_bytes())?;
    let level = query.level(
        "readquorum",
        query.readquorum.as_deref(),
        state.config.replication_factor,
    )?;
    let record = state
        .coordinator
        .read(Bytes::copy_from_slice(key.as_bytes()), level)
        .await?;
    let (value, version) = match record {
        Some(Record {
            value: Some(value),
            version,
        }) => (Some(as_json(&value)?), version),
        _ => (None, 0),
    };
    let read = Read {
        status: true,
        value,
        version,
        message: "OK",
        metadata: ReadMetadata {
            key,
            consistency: level_name(level),
            coordinator: state.membership.self_id().to_string(),
        },
    };
    Ok(Json(read).into_response())
}

/// `GET /v1/data/{key}`: the item as JSON, or 404.
pub async fn get_data(State(state): State<AppState>, uri: Uri) -> Result<Json<Item>, ApiError> {
    let query = DataQuery::parse(&uri)?;
    let level = query.level(
        "readquorum",
        query.readquorum.as_deref(),
        state.config.replication_factor,
    )?;
    let raw = uri.path().strip_prefix("/v1/data/").unwrap_or_default();
    let key = percent_decode_str(raw).collect::<Vec<u8>>();
    check_client_key(&state.config.limits, &key)?;
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
    // A JSON string posted here reads back as its text; any other stored
    // value as its bytes, which must then be text.
    let value = match serde_json::from_slice::<String>(&value) {
        Ok(text) => text,
        Err(_) => String::from_utf8(value.to_vec()).map_err(|_| not_utf8())?,
    };
    Ok(Json(Item { key, value }))
}

/// Stored bytes as JSON: their own text if they are JSON, else a JSON
/// string of them if they are UTF-8.
fn as_json(value: &[u8]) -> Result<Box<RawValue>, ApiError> {
    if let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(value) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(value).map_err(|_| not_utf8())?;
    serde_json::value::to_raw_value(text).map_err(|e| ApiError::internal(e.to_string()))
}

fn not_utf8() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "not_utf8",
        "the value is neither JSON nor UTF-8 text; read it with GET /v1/kv/{key}",
    )
}

fn level_name(level: Consistency) -> &'static str {
    match level {
        Consistency::One => "ONE",
        Consistency::Quorum => "QUORUM",
        Consistency::All => "ALL",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rf(n: usize) -> ReplicationFactor {
        ReplicationFactor::new(n).unwrap()
    }

    #[test]
    fn quorum_numbers_map_to_levels_and_others_are_refused() {
        let three = rf(3);
        assert_eq!(quorum_level("q", "1", three).unwrap(), Consistency::One);
        assert_eq!(quorum_level("q", "2", three).unwrap(), Consistency::Quorum);
        assert_eq!(quorum_level("q", "3", three).unwrap(), Consistency::All);
        assert_eq!(quorum_level("q", "-1", three).unwrap(), Consistency::All);
        for bad in ["0", "4", "-2", "two", "", "1.5"] {
            assert!(quorum_level("q", bad, three).is_err(), "{bad:?}");
        }
        let five = rf(5);
        assert_eq!(quorum_level("q", "3", five).unwrap(), Consistency::Quorum);
        assert_eq!(quorum_level("q", "5", five).unwrap(), Consistency::All);
        assert!(quorum_level("q", "2", five).is_err());
        assert!(quorum_level("q", "4", five).is_err());
        // With one replica every level is the same single ack.
        assert_eq!(quorum_level("q", "1", rf(1)).unwrap(), Consistency::One);
    }

    #[test]
    fn a_quorum_and_a_consistency_together_are_refused() {
        let q: DataQuery = serde_urlencoded::from_str("readquorum=1&consistency=all").unwrap();
        assert!(q
            .level("readquorum", q.readquorum.as_deref(), rf(3))
            .is_err());
        let q: DataQuery = serde_urlencoded::from_str("key=k&include=x").unwrap();
        assert_eq!(
            q.level("readquorum", None, rf(3)).unwrap(),
            Consistency::Quorum
        );
    }

    #[test]
    fn stored_bytes_read_back_as_json() {
        assert_eq!(
            as_json(br#"{"a": [1, 2]}"#).unwrap().get(),
            r#"{"a": [1, 2]}"#
        );
        assert_eq!(as_json(b"42").unwrap().get(), "42");
        assert_eq!(as_json(br#""hi""#).unwrap().get(), r#""hi""#);
        // Raw text from /v1/kv becomes a JSON string.
        assert_eq!(as_json(b"plain text").unwrap().get(), r#""plain text""#);
        assert!(as_json(b"\xff\xfe").is_err());
    }
}
