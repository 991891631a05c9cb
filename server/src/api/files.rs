//! The file API: `PUT/GET/HEAD/DELETE /v1/files/{name}` over the chunks and
//! manifests of [`crate::files`].
//!
//! A `PUT` streams its body: it is cut into chunks as it arrives, each
//! chunk is written through the coordinator at the request's consistency
//! level with at most [`CHUNKS_IN_FLIGHT`] writes outstanding, and each
//! chunk in flight holds its bytes in the node's body budget (a file body
//! is not one body, so the route itself reserves nothing). The manifest is
//! written last, after an `x-checksum-sha256` (64 hex digits) from the
//! client was checked against the whole file. 201 with the manifest.
//!
//! A `GET` streams the chunks back in order, reading a few ahead, and checks
//! every chunk's SHA-256: a chunk that does not match is read again at ALL,
//! and if that copy is bad too the response is cut off rather than served.
//! `Range: bytes=a-b`, `a-` and `-n` give 206 (416 when unsatisfiable).
//! `HEAD` answers the size, the ETag (the whole file's SHA-256) and the
//! content type without reading a chunk.
//!
//! `GET /v1/files?prefix=&after=&limit=` lists names in order, a page at a
//! time, from every node's index of its manifests (`files::index`): the
//! answer is `{"files": [{"name", "size", "created_ms", "version"}],
//! "next": <the next page's "after", or null>}`. A listing needs answers
//! from all but fewer than the replication factor of the nodes (so that
//! every file has a replica that answered); otherwise it is 503.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::kv::consistency;
use super::{ApiError, AppState};
use crate::coordinator::{Consistency, Coordinator, CoordinatorError};
use crate::files::index::{self, ListRequest, MAX_PAGE};
use crate::files::{self, Manifest, MAX_MISSING_QUERY};
use crate::storage::Record;

/// The route prefix.
pub const FILES_PREFIX: &str = "/v1/files/";

/// The listing route.
pub const LIST_ROUTE: &str = "/v1/files";

/// The route that runs a pass of this node's chunk GC now.
pub const GC_PATH: &str = "/admin/v1/files/gc";

/// Chunk writes (on `PUT`) and reads (on `GET`) outstanding per request:
/// enough to keep every replica busy, few enough that a request holds at
/// most this many chunks of memory.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// The content type of a file uploaded without one.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The header a client sends the whole file's SHA-256 in (hex).
const CHECKSUM_HEADER: &str = "x-checksum-sha256";

/// `PUT`: stores the body as the file `name`; 201 with its manifest.
pub async fn put_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let began = Instant::now();
    let name = file_name(&state, &uri)?;
    let level = consistency(uri.query())?;
    let expected = match headers.get(CHECKSUM_HEADER) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(files::decode_hash)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_checksum",
                        format!("{CHECKSUM_HEADER} must be 64 hex digits"),
                    )
                })?,
        ),
        None => None,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_owned();
    let chunk_size = files::chunk_size(state.config.limits.max_value_size);

    let mut body = body;
    let mut whole = Sha256::new();
    let mut size = 0u64;
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(chunk_size);
    let mut writes = JoinSet::new();
    // One reservation per chunk write in flight; they are all the same
    // size, so whichever write ends gives one back.
    let mut permits = VecDeque::new();
    // An upload has no overall deadline (it lasts as long as its body), so a
    // body that stops sending must not hold its request slot and buffers for
    // ever: each part of it must come within the request timeout.
    let idle = state.config.request_timeout;
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_stalled",
                    format!(
                        "no bytes of the body came for {} ms (--request-timeout-ms); the upload is dropped",
                        idle.as_millis()
                    ),
                )
            })?
            .transpose()
            .map_err(|e| {
                ApiError::bad_request("bad_body", format!("reading the request body: {e}"))
            })?;
        let end = frame.is_none();
        let mut data = frame.and_then(|f| f.into_data().ok()).unwrap_or_default();
        while !data.is_empty() || (end && !buf.is_empty()) {
            let take = data.len().min(chunk_size - buf.len());
            buf.extend_from_slice(&data.split_to(take));
            if buf.len() < chunk_size && !end {
                break;
            }
            let chunk = std::mem::replace(&mut buf, BytesMut::with_capacity(chunk_size)).freeze();
            whole.update(&chunk);
            size += chunk.len() as u64;
            while writes.len() >= CHUNKS_IN_FLIGHT {
                join_write(&mut writes, &mut chunks).await?;
                permits.pop_front();
            }
            let permit = state
                .body_budget
                .try_reserve(chunk.len(), false)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "request bodies in flight are at this node's budget; retry in 1 s",
                    )
                    .retry_after(1)
                })?;
            permits.push_back(permit);
            let coordinator = state.coordinator.clone();
            let index = chunks.len();
            chunks.push(String::new());
            // The chunk's own hash is taken by its write task, so that it
            // runs beside the whole file's, which this task takes in order.
            writes.spawn(async move {
                let hash = files::sha256(&chunk);
                write_chunk(&coordinator, &hash, chunk, level)
                    .await
                    .map(|_| (index, hash))
            });
        }
        if end {
            break;
        }
    }
    while !writes.is_empty() {
        join_write(&mut writes, &mut chunks).await?;
    }
    drop(permits);
    let sha256: [u8; 32] = whole.finalize().into();
    if let Some(expected) = expected {
        if expected != sha256 {
            return Err(ApiError::bad_request(
                "checksum_mismatch",
                format!(
                    "{CHECKSUM_HEADER} is {} but the body's SHA-256 is {}",
                    hex::encode(expected),
                    hex::encode(sha256)
                ),
            ));
        }
    }
    let manifest = Manifest {
        format: files::FORMAT,
        size,
        chunk_size: chunk_size as u64,
        chunks,
        sha256: hex::encode(sha256),
        content_type,
        created_ms: now_ms(),
        version: 0,
    };
    commit(&state, &name, manifest, level, began).await
}

/// Writes `manifest` as the file `name`, if it comes within the commit
/// window of `began` (before which every chunk it names was written or
/// found fresh); 201 with the manifest.
async fn commit(
    state: &AppState,
    name: &str,
    mut manifest: Manifest,
    level: Consistency,
    began: Instant,
) -> Result<Response, ApiError> {
    // The chunk GC spares a chunk for a grace after its write, and counts on
    // a manifest naming it coming within this window (`files::gc`).
    let window = state.config.file_commit_window();
    if began.elapsed() > window {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_too_slow",
            format!(
                "the upload took {} s, more than the {} s that --file-gc-grace-ms allows: its \
                 first chunks may be collected before the file would be visible; upload \
                 again (chunks already stored are not sent again by kvnode put-file), or \
                 raise the grace",
                began.elapsed().as_secs(),
                window.as_secs()
            ),
        ));
    }
    manifest.version = state
        .coordinator
        .write(files::manifest_key(name), Some(manifest.encode()), level)
        .await?;
    Ok((StatusCode::CREATED, Json(manifest)).into_response())
}

/// Now, in Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The prefix of the chunk routes of resumable uploads.
pub const CHUNKS_PREFIX: &str = "/v1/chunks/";

/// The route that says which chunks the cluster lacks.
pub const MISSING_PATH: &str = "/v1/chunks/missing";

/// The body limit of a missing-chunks query: [`MAX_MISSING_QUERY`] hashes
/// of 64 hex digits, quoted, with commas, and room to spare.
pub(crate) const MISSING_QUERY_LIMIT: usize = 1 << 20;

/// The body limit of a commit: the chunk list of a file of about 200 GiB
/// at 1 MiB chunks.
pub(crate) const COMMIT_LIMIT: usize = 16 << 20;

/// The body of a missing-chunks query.
#[derive(Debug, serde::Deserialize)]
struct MissingQuery {
    chunks: Vec<String>,
}

/// `POST /v1/chunks/missing`: which of the named chunks (SHA-256 in hex)
/// the cluster does not hold at the request's level, and the chunk size a
/// file must be cut into: `{"chunk_size": N, "missing": [...]}`. A chunk
/// counts as held if a live copy answers; its bytes are checked when a file
/// that names it is committed.
pub async fn missing_chunks(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let level = consistency(uri.query())?;
    let body = super::read_body(body, super::BodyLimit::Body(MISSING_QUERY_LIMIT)).await?;
    let query: MissingQuery = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_body", format!("a missing-chunks query: {e}")))?;
    if query.chunks.len() > MAX_MISSING_QUERY {
        return Err(ApiError::bad_request(
            "too_many_chunks",
            format!("ask about at most {MAX_MISSING_QUERY} chunks at a time"),
        ));
    }
    let hashes = query
        .chunks
        .iter()
        .map(|h| files::decode_hash(h).ok_or_else(|| bad_hash(h)))
        .collect::<Result<Vec<_>, _>>()?;
    let reads = hashes.into_iter().map(|hash| {
        let coordinator = state.coordinator.clone();
        async move {
            let held = coordinator.read(files::chunk_key(&hash), level).await?;
            let present = held.is_some_and(|r| r.value.is_some());
            Ok::<_, ApiError>((!present).then(|| hex::encode(hash)))
        }
    });
    let answers: Vec<Result<Option<String>, ApiError>> = futures_util::stream::iter(reads)
        .buffered(CHUNKS_IN_FLIGHT * 4)
        .collect()
        .await;
    let mut missing = Vec::new();
    for answer in answers {
        missing.extend(answer?);
    }
    Ok(Json(serde_json::json!({
        "chunk_size": files::chunk_size(state.config.limits.max_value_size),
        "missing": missing,
    })))
}

/// `PUT /v1/chunks/{sha256}`: stores one chunk, refused unless its bytes
/// hash to the name; 204.
pub async fn put_chunk(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let named = uri.path().strip_prefix(CHUNKS_PREFIX).unwrap_or_default();
    let hash = files::decode_hash(named).ok_or_else(|| bad_hash(named))?;
    let level = consistency(uri.query())?;
    let value = super::read_body(body, super::BodyLimit::value(&state.config.limits)).await?;
    let got = files::sha256(&value);
    if got != hash {
        return Err(ApiError::bad_request(
            "checksum_mismatch",
            format!(
                "the body's SHA-256 is {}, not the chunk's name",
                hex::encode(got)
            ),
        ));
    }
    write_chunk(&state.coordinator, &hash, value, level).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn bad_hash(given: &str) -> ApiError {
    ApiError::bad_request(
        "bad_hash",
        format!("{given:?} is not a SHA-256 in 64 hex digits"),
    )
}

/// The body of a commit: the file's manifest as the client cut it.
#[derive(Debug, serde::Deserialize)]
struct CommitBody {
    size: u64,
    chunk_size: u64,
    chunks: Vec<String>,
    sha256: String,
    content_type: Option<String>,
}

/// `POST /v1/files/{name}`: makes the file `name` out of chunks already
/// stored (`PUT /v1/chunks/{sha256}`, or any earlier upload). Every chunk
/// is read at the request's level and checked against its hash, and the
/// whole file against `sha256`; a chunk written longer ago than the commit
/// window is written again, so that the chunk GC spares it (`files::gc`).
/// 201 with the manifest; 409 `chunks_missing` with `"missing": [...]`
/// when some are not there, to be uploaded before committing again.
pub async fn commit_file(
    State(state): State<AppState>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let began = Instant::now();
    let name = file_name(&state, &uri)?;
    let level = consistency(uri.query())?;
    let body = super::read_body(body, super::BodyLimit::Body(COMMIT_LIMIT)).await?;
    let given: CommitBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_body", format!("a commit: {e}")))?;
    let max_chunk = files::chunk_size(state.config.limits.max_value_size) as u64;
    if given.chunk_size > max_chunk {
        return Err(ApiError::bad_request(
            "bad_manifest",
            format!("chunk_size is over this cluster's {max_chunk}"),
        ));
    }
    let manifest = Manifest {
        format: files::FORMAT,
        size: given.size,
        chunk_size: given.chunk_size,
        chunks: given.chunks,
        sha256: given.sha256,
        content_type: given
            .content_type
            .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
        created_ms: now_ms(),
        version: 0,
    };
    manifest
        .check()
        .map_err(|e| ApiError::bad_request("bad_manifest", e.to_string()))?;
    let oldest_fresh_ms = now_ms().saturating_sub(
        u64::try_from(state.config.file_commit_window().as_millis()).unwrap_or(u64::MAX),
    );
    let mut reader = ChunkReader::new(
        state.coordinator.clone(),
        manifest.clone(),
        0..manifest.chunks.len(),
        level,
    );
    let mut whole = Sha256::new();
    let mut missing = std::collections::BTreeSet::new();
    while let Some((i, read)) = reader.next().await {
        let Ok(chunk) = read else {
            missing.extend(manifest.chunks.get(i).cloned());
            continue;
        };
        whole.update(&chunk.bytes);
        if crate::hlc::ms(chunk.version) < oldest_fresh_ms {
            let hash = files::sha256(&chunk.bytes);
            write_chunk(&state.coordinator, &hash, chunk.bytes, level).await?;
        }
    }
    if !missing.is_empty() {
        let body = serde_json::json!({
            "error": "chunks_missing",
            "message": format!("{} chunks of the file are not stored: upload them, then commit again", missing.len()),
            "missing": missing,
        });
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    let sha256 = hex::encode(whole.finalize());
    if sha256 != manifest.sha256 {
        return Err(ApiError::bad_request(
            "checksum_mismatch",
            format!(
                "the chunks make a file whose SHA-256 is {sha256}, not {}",
                manifest.sha256
            ),
        ));
    }
    commit(&state, &name, manifest, level, began).await
}

/// Tries of one chunk write whose replicas did not answer enough.
const CHUNK_WRITE_TRIES: u32 = 4;

/// Writes a chunk under its hash, again (after 250, 500, then 1000 ms) when
/// too few replicas answered in time: a replica busy with a long fsync or a
/// compaction misses the replica timeout now and then under a big upload,
/// and one such chunk must not fail a gigabyte. Writing a chunk twice is
/// harmless, as its key is its content; a streamed upload has no other way
/// to retry one chunk. Fewer replicas up than the level needs is not tried
/// again: that does not pass in a second.
async fn write_chunk(
    coordinator: &Coordinator,
    hash: &[u8; 32],
    bytes: Bytes,
    level: Consistency,
) -> Result<u64, CoordinatorError> {
    let mut tries = 1;
    loop {
        match coordinator
            .write(files::chunk_key(hash), Some(bytes.clone()), level)
            .await
        {
            Err(e @ CoordinatorError::Failed { .. }) if tries < CHUNK_WRITE_TRIES => {
                tracing::debug!(chunk = %hex::encode(hash), error = %e, tries, "writing a chunk again");
                tokio::time::sleep(Duration::from_millis(250 << (tries - 1))).await;
                tries += 1;
            }
            written => return written,
        }
    }
}

/// A chunk write of an upload: the chunk's index in the file and its hash.
type ChunkWrite = Result<(usize, [u8; 32]), CoordinatorError>;

/// Waits for one chunk write and names the chunk in `chunks`; a failed one
/// fails the upload.
async fn join_write(
    writes: &mut JoinSet<ChunkWrite>,
    chunks: &mut [String],
) -> Result<(), ApiError> {
    match writes.join_next().await {
        Some(Ok(Ok((index, hash)))) => {
            if let Some(name) = chunks.get_mut(index) {
                *name = hex::encode(hash);
            }
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e.into()),
        Some(Err(e)) => Err(ApiError::internal(format!("chunk write task: {e}"))),
        None => Ok(()),
    }
}

/// `GET` and `HEAD`: the file, a range of it, or its headers.
pub async fn get_file(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = file_name(&state, &uri)?;
    let level = consistency(uri.query())?;
    let manifest = read_manifest(&state.coordinator, &name, level).await?;
    let range = match headers.get(header::RANGE) {
        Some(v) => Some(parse_range(v.to_str().unwrap_or_default(), manifest.size)?),
        None => None,
    };
    let (start, end) = range.unwrap_or((0, manifest.size));
    let mut response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let (tx, rx) = mpsc::channel(1);
        // The level applies to the manifest. A chunk is the same bytes
        // wherever it is found (its name is their hash, checked on every
        // read), so one copy is enough: this node's own, usually, with no
        // digest read elsewhere; a copy missing or bad there is looked for
        // on every replica (`read_chunk`).
        tokio::spawn(send_chunks(
            state.coordinator.clone(),
            manifest.clone(),
            start,
            end,
            Consistency::One,
            tx,
        ));
        Response::new(Body::new(ChunkBody(rx)))
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", manifest.sha256)) {
        h.insert(header::ETAG, etag);
    }
    if let Ok(ct) = HeaderValue::from_str(&manifest.content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if range.is_some() {
        if let Ok(cr) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, manifest.size))
        {
            h.insert(header::CONTENT_RANGE, cr);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// The query of a listing.
#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<u32>,
}

/// Names a page holds unless the query asks for another number.
const DEFAULT_PAGE: u32 = 100;

/// `GET /v1/files`: a page of the names of existing files.
pub async fn list_files(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query: ListQuery = serde_urlencoded::from_str(uri.query().unwrap_or_default())
        .map_err(|e| ApiError::bad_request("bad_query", format!("query string: {e}")))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let request = ListRequest {
        prefix: query.prefix,
        after: query.after,
        limit,
    };
    let listing = state.coordinator.list_files(&request).await;
    if listing.unanswered.len() >= state.config.replication_factor.get() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{} of {} nodes did not answer ({}): files whose replicas are all there may be missing",
                listing.unanswered.len(),
                listing.asked,
                listing.unanswered.join(", ")
            ),
        )
        .retry_after(1));
    }
    let merged = index::merge(listing.pages, limit);
    let files: Vec<serde_json::Value> = merged
        .files
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "size": f.size,
                "created_ms": f.created_ms,
                "version": f.version,
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "files": files, "next": merged.next }),
    ))
}

/// `POST /internal/v1/files`: a page of this node's own manifests, for a
/// listing coordinated elsewhere.
pub async fn list_own(
    State(state): State<AppState>,
    body: Body,
) -> Result<Json<Vec<index::Listed>>, ApiError> {
    let body = super::read_body(body, super::BodyLimit::Body(LIST_REQUEST_LIMIT)).await?;
    let request: ListRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_body", format!("a list request: {e}")))?;
    Ok(Json(state.storage.manifests().page(&request)))
}

/// `POST /admin/v1/files/gc`: one pass of this node's chunk GC, now; 200 with
/// what it did, 503 when it was skipped or another pass is running.
pub async fn collect_garbage(
    State(state): State<AppState>,
) -> Result<Json<crate::files::gc::GcReport>, ApiError> {
    state.file_gc.pass().await.map(Json).map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "gc_skipped", e.to_string()).retry_after(5)
    })
}

/// A list request holds a prefix and a name at most: two keys.
pub(crate) const LIST_REQUEST_LIMIT: usize = 64 * 1024;

/// `DELETE`: removes the manifest (the chunks stay); 204 either way.
pub async fn delete_file(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let name = file_name(&state, &uri)?;
    let level = consistency(uri.query())?;
    state
        .coordinator
        .write(files::manifest_key(&name), None, level)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn read_manifest(
    coordinator: &Coordinator,
    name: &str,
    level: Consistency,
) -> Result<Manifest, ApiError> {
    let record = coordinator.read(files::manifest_key(name), level).await?;
    let Some((value, version)) = record.and_then(|r| r.value.map(|v| (v, r.version))) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file",
        ));
    };
    let mut manifest = Manifest::decode(&value).map_err(|e| ApiError::internal(e.to_string()))?;
    manifest.version = version;
    Ok(manifest)
}

/// Reads the chunks covering `start..end` in order, a few ahead, and sends
/// the requested bytes of each; sends an error (which cuts the response
/// off) on a chunk that cannot be read whole and right.
async fn send_chunks(
    coordinator: Coordinator,
    manifest: Manifest,
    start: u64,
    end: u64,
    level: Consistency,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    if start >= end {
        return;
    }
    let cs = manifest.chunk_size;
    let (first, last) = ((start / cs) as usize, ((end - 1) / cs) as usize);
    let mut reader = ChunkReader::new(coordinator, manifest, first..last + 1, level);
    while let Some((i, read)) = reader.next().await {
        let chunk = match read {
            Ok(chunk) => chunk.bytes,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                return;
            }
        };
        let base = i as u64 * cs;
        let from = start.saturating_sub(base) as usize;
        let to = ((end - base).min(chunk.len() as u64)) as usize;
        if tx.send(Ok(chunk.slice(from..to))).await.is_err() {
            return;
        }
    }
}

/// Reads some of a manifest's chunks in file order, [`CHUNKS_IN_FLIGHT`]
/// ahead of the one asked for; reads still running are dropped with it.
struct ChunkReader {
    coordinator: Coordinator,
    manifest: Manifest,
    level: Consistency,
    next: usize,
    end: usize,
    reads: VecDeque<(usize, tokio::task::JoinHandle<Result<Chunk, String>>)>,
}

impl ChunkReader {
    fn new(
        coordinator: Coordinator,
        manifest: Manifest,
        chunks: std::ops::Range<usize>,
        level: Consistency,
    ) -> Self {
        Self {
            coordinator,
            manifest,
            level,
            next: chunks.start,
            end: chunks.end,
            reads: VecDeque::new(),
        }
    }

    /// The next chunk's index and what reading it gave; `None` at the end.
    async fn next(&mut self) -> Option<(usize, Result<Chunk, String>)> {
        while self.next < self.end && self.reads.len() < CHUNKS_IN_FLIGHT {
            let (hash, len) = self.manifest.chunk(self.next)?;
            let read = read_chunk(self.coordinator.clone(), hash, len, self.level);
            self.reads.push_back((self.next, tokio::spawn(read)));
            self.next += 1;
        }
        let (i, read) = self.reads.pop_front()?;
        Some((i, read.await.unwrap_or_else(|e| Err(e.to_string()))))
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        for (_, read) in &self.reads {
            read.abort();
        }
    }
}

/// A chunk's bytes, checked against its hash: read at `level`; when that
/// copy is bad or missing, every replica's own copy is read and a good one
/// served. When some replica holds a bad copy (other bytes, or a
/// tombstone), the good one is written back under a fresh version so that
/// it supersedes the bad copies everywhere (newest-wins alone could keep
/// serving a rotten copy as new as the good ones, or newer).
async fn read_chunk(
    coordinator: Coordinator,
    hash: [u8; 32],
    len: u64,
    level: Consistency,
) -> Result<Chunk, String> {
    let key = files::chunk_key(&hash);
    let is_good = |v: &Bytes| v.len() as u64 == len && files::sha256(v) == hash;
    let first = match coordinator.read(key.clone(), level).await {
        Ok(Some(Record {
            value: Some(bytes),
            version,
        })) if is_good(&bytes) => return Ok(Chunk { bytes, version }),
        Ok(Some(Record { value: Some(_), .. })) => "does not match its hash".to_owned(),
        Ok(Some(Record { value: None, .. })) => "is deleted".to_owned(),
        Ok(None) => "is missing".to_owned(),
        Err(e) => e.to_string(),
    };
    let copies = coordinator.read_each(key.clone()).await;
    // The newest good copy: its age is the chunk's.
    let good = copies
        .iter()
        .flatten()
        .filter_map(|r| r.value.clone().filter(is_good).map(|v| (v, r.version)))
        .max_by_key(|(_, version)| *version);
    let Some((bytes, version)) = good else {
        return Err(format!(
            "chunk {}: {first}, and none of the {} copies read from its replicas is good",
            hex::encode(hash),
            copies.len()
        ));
    };
    let rotten = copies
        .iter()
        .flatten()
        .filter(|r| !r.value.as_ref().is_some_and(is_good))
        .count();
    if rotten == 0 {
        // Copies were only missing: a replica that missed the write (its
        // hint still on the way) or did not answer. Hints and anti-entropy
        // give it the record at its own version; a write-back here would
        // give every replica a fresh version for nothing, and restart the
        // chunk's GC grace.
        tracing::debug!(chunk = %hex::encode(hash), first = %first, "a chunk copy was missing; served a replica's good copy");
        return Ok(Chunk { bytes, version });
    }
    tracing::warn!(
        chunk = %hex::encode(hash),
        first = %first,
        rotten,
        "a chunk copy was not good; served a good replica's copy and writing it back"
    );
    match coordinator
        .write(key, Some(bytes.clone()), Consistency::One)
        .await
    {
        Ok(version) => Ok(Chunk { bytes, version }),
        Err(e) => {
            tracing::warn!(chunk = %hex::encode(hash), error = %e, "writing a chunk back failed");
            // Served all the same.
            Ok(Chunk { bytes, version })
        }
    }
}

/// A chunk read whole and checked, and the version it was read at.
struct Chunk {
    bytes: Bytes,
    version: u64,
}

/// The response body of a `GET`: the chunks as [`send_chunks`] sends them.
struct ChunkBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|r| r.map(Frame::data)))
    }
}

/// The file name: the rest of the path, percent-decoded, as UTF-8.
fn file_name(state: &AppState, uri: &Uri) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(FILES_PREFIX).unwrap_or_default();
    let name = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("bad_name", "a file name is UTF-8"))?
        .into_owned();
    super::kv::check_key(&state.config.limits, name.as_bytes())?;
    Ok(name)
}

/// One `bytes=` range of a file of `size` bytes as `start..end`, or 416.
fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ApiError> {
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the file has {size} bytes; give one range bytes=a-b inside it"),
        )
    };
    let spec = value.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| unsatisfiable())?;
        (size.saturating_sub(n), size)
    } else {
        let start: u64 = a.parse().map_err(|_| unsatisfiable())?;
        let end = if b.is_empty() {
            size
        } else {
            let last: u64 = b.parse().map_err(|_| unsatisfiable())?;
            if last < start {
                return Err(unsatisfiable());
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if range.0 >= range.1 {
        return Err(unsatisfiable());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-0", 10).unwrap(), (0, 1));
        assert_eq!(parse_range("bytes=9-9", 10).unwrap(), (9, 10));
        assert_eq!(parse_range("bytes=3-", 10).unwrap(), (3, 10));
        assert_eq!(parse_range("bytes=-4", 10).unwrap(), (6, 10));
        assert_eq!(parse_range("bytes=-40", 10).unwrap(), (0, 10));
        assert_eq!(parse_range("bytes=5-99", 10).unwrap(), (5, 10));
        assert!(parse_range("bytes=10-", 10).is_err());
        assert!(parse_range("bytes=5-4", 10).is_err());
        assert!(parse_range("bytes=-0", 10).is_err());
        assert!(parse_range("bytes=0-0", 0).is_err());
        assert!(parse_range("items=0-1", 10).is_err());
        assert!(parse_range("bytes=0-1,3-4", 10).is_err());
    }
}
