//! The HTTP surface: the router, the shared state its handlers use, the JSON
//! error type, and the middleware that bounds and measures every request.
//!
//! One file per route group: `kv` (the client API), `compat` (the seeds'
//! APIs), `metadata` (where nodes and keys are: `/ping`, `/v1/gossip`,
//! `/v1/metadata/*`), `cluster` (cluster, ring, node, health, readiness, metrics, and
//! the operator's decommission, clean-up, compaction and removenode;
//! [`report`] types the cluster and ring documents), `files` (files of
//! any size, chunked),
//! [`internal`] (node-to-node) and `repair` (anti-entropy, internal and
//! admin), `snapshot` (the operator's backups), [`console`] (the web
//! console at `/ui`); `budget` is the byte budget of bodies in flight; [`access`] says
//! who may call what.
//!
//! Every route is one row of [`route_table`], with the [`Access`] it
//! requires: the router is built from that table alone, so a route cannot
//! be added without saying who may call it.
//!
//! Every client request first gets its id ([`request_id`]). Before a
//! handler runs, `edge` admits the request: a body
//! declared larger than its route takes is refused with 413 before a byte
//! of it is read, and a body that does not fit the node's budget with 503
//! and `Retry-After`. Then `access::require` checks its credential.

pub mod access;
pub(crate) mod budget;
pub(crate) mod cluster;
pub(crate) mod compat;
pub mod console;
pub(crate) mod files;
pub mod internal;
pub(crate) mod kv;
pub(crate) mod metadata;
pub(crate) mod mux;
pub(crate) mod repair;
pub mod report;
pub mod request_id;
pub(crate) mod snapshot;
pub(crate) mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use tokio::sync::Semaphore;

pub use self::access::Access;
use self::budget::{BodyBudget, BodyPermit};
use crate::auth::request::RequestVerifier;
use crate::config::{Config, Limits};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::files::index::LIST_PATH;
use crate::membership::Membership;
use crate::metrics::{Metrics, Op, RequestClass};
use crate::peer::repair::{DIGEST_PATH, MAX_DIGEST_REQUEST, MAX_ROWS_REQUEST, REPAIR_ROWS_PATH};
use crate::peer::wire::{APPLY_BATCH_PATH, APPLY_PATH, READ_DIGEST_PATH, READ_PATH, STREAM_PATH};
use crate::repair::Repairer;
use crate::storage::Storage;
use crate::stream::cleanup::Cleaner;
use crate::stream::Progress;

/// What every handler can reach. Cheap to clone: one reference count,
/// where cloning the parts (as axum's `State` does for every request) cost
/// a twentieth of a node's CPU under load.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state of `parts`.
    pub(crate) fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of an [`AppState`].
pub struct AppParts {
    /// Replication and consistency.
    pub(crate) coordinator: Coordinator,
    /// This node's side of the replica calls.
    pub(crate) replica: Arc<internal::Replica>,
    /// The cluster view and this node's state.
    pub(crate) membership: Arc<Membership>,
    /// This node's engine (internal routes only: clients go through the
    /// coordinator).
    pub(crate) storage: Storage,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The configuration.
    pub(crate) config: Arc<Config>,
    /// Requests in flight; bounds the work a burst can start.
    pub(crate) in_flight: Arc<Semaphore>,
    /// Bytes of request bodies in flight; bounds the memory a burst takes.
    pub(crate) body_budget: Arc<BodyBudget>,
    /// Progress of this node's incoming streams.
    pub(crate) progress: Arc<Progress>,
    /// Clean-up passes.
    pub(crate) cleaner: Arc<Cleaner>,
    /// The hints this node keeps for others (`/v1/node` shows them).
    pub(crate) hints: crate::hints::Hints,
    /// Anti-entropy repair: this node's passes, other nodes' calls.
    pub(crate) repairer: Arc<Repairer>,
    /// The node's background tasks (a decommission's leave runs there).
    pub(crate) tasks: crate::tasks::Tasks,
    /// Asks the node to stop (after a decommission).
    pub(crate) stop: Arc<tokio::sync::Notify>,
    /// Checks requests signed under the cluster secret, and remembers their
    /// nonces.
    pub(crate) verifier: Arc<RequestVerifier>,
    /// Whether this node can serve QUORUM (`/ready`).
    pub(crate) readiness: Arc<crate::readiness::Readiness>,
    /// How this node's join is going (`/ready` and `/v1/node` while it
    /// waits for a seed).
    pub(crate) join: Arc<crate::join::JoinWatch>,
    /// This node's backups: the save running, the last one's outcome.
    pub(crate) snapshots: Arc<snapshot::Snapshots>,
    /// The chunk GC (`POST /admin/v1/files/gc` runs a pass).
    pub(crate) file_gc: crate::files::gc::FileGc,
}

/// One route: its method, its path pattern (axum's syntax), who may call it
/// and its handler.
struct Route {
    method: Method,
    path: String,
    access: Access,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new(access: Access, path: &str, method: Method, handler: MethodRouter<AppState>) -> Self {
        Self {
            method,
            path: path.to_owned(),
            access,
            handler,
        }
    }
}

/// Every route the node serves, with the access it requires.
fn routes() -> Vec<Route> {
    use Access::{Admin, Node, Open, Operator, Read, Write};
    let removenode = format!("{}/{{id}}", cluster::REMOVENODE_PATH);
    let console =
        console::routes().map(|(path, handler)| Route::new(Open, path, Method::GET, handler));
    let mut routes = vec![
        Route::new(Read, "/v1/kv/{*key}", Method::GET, get(kv::get_value)),
        Route::new(Write, "/v1/kv/{*key}", Method::PUT, put(kv::put_value)),
        Route::new(
            Write,
            "/v1/kv/{*key}",
            Method::DELETE,
            delete(kv::delete_value),
        ),
        Route::new(Read, files::LIST_ROUTE, Method::GET, get(files::list_files)),
        Route::new(Read, "/v1/files/{*name}", Method::GET, get(files::get_file)),
        Route::new(
            Write,
            "/v1/files/{*name}",
            Method::PUT,
            put(files::put_file),
        ),
        Route::new(
            Write,
            "/v1/files/{*name}",
            Method::DELETE,
            delete(files::delete_file),
        ),
        Route::new(
            Write,
            "/v1/files/{*name}",
            Method::POST,
            post(files::commit_file),
        ),
        Route::new(
            Write,
            files::MISSING_PATH,
            Method::POST,
            post(files::missing_chunks),
        ),
        Route::new(
            Write,
            "/v1/chunks/{hash}",
            Method::PUT,
            put(files::put_chunk),
        ),
        Route::new(Write, "/v1/data", Method::POST, post(compat::post_data)),
        Route::new(Read, "/v1/data", Method::GET, get(compat::read_data)),
        Route::new(Read, "/v1/data/{*key}", Method::GET, get(compat::get_data)),
        Route::new(Read, "/block/{*id}", Method::GET, get(kv::get_value)),
        Route::new(Write, "/block/{*id}", Method::PUT, put(kv::put_block)),
        Route::new(
            Write,
            "/block/{*id}",
            Method::DELETE,
            delete(kv::delete_value),
        ),
        Route::new(Admin, "/v1/cluster", Method::GET, get(cluster::cluster)),
        Route::new(Admin, "/v1/ring", Method::GET, get(cluster::ring)),
        Route::new(Admin, "/v1/node", Method::GET, get(cluster::node)),
        Route::new(Open, "/health", Method::GET, get(cluster::health)),
        Route::new(Open, "/ready", Method::GET, get(cluster::ready)),
        Route::new(Open, "/ping", Method::GET, get(metadata::ping)),
        Route::new(Admin, "/v1/gossip", Method::GET, get(metadata::gossip)),
        Route::new(Admin, metadata::NODE_PATH, Method::GET, get(metadata::node)),
        Route::new(Admin, "/v1/metadata/key", Method::GET, get(metadata::key)),
        Route::new(Read, "/metrics", Method::GET, get(cluster::metrics)),
        Route::new(
            Operator,
            cluster::DECOMMISSION_PATH,
            Method::POST,
            post(cluster::decommission),
        ),
        Route::new(
            Operator,
            cluster::CLEANUP_PATH,
            Method::POST,
            post(cluster::cleanup),
        ),
        Route::new(
            Operator,
            cluster::COMPACT_PATH,
            Method::POST,
            post(cluster::compact),
        ),
        Route::new(
            Operator,
            &removenode,
            Method::POST,
            post(cluster::removenode),
        ),
        Route::new(
            Operator,
            repair::REPAIR_PATH,
            Method::POST,
            post(repair::start),
        ),
        Route::new(
            Operator,
            snapshot::SNAPSHOT_PATH,
            Method::POST,
            post(snapshot::save),
        ),
        Route::new(Node, APPLY_PATH, Method::POST, post(internal::apply)),
        Route::new(
            Node,
            APPLY_BATCH_PATH,
            Method::POST,
            post(internal::apply_batch),
        ),
        Route::new(Node, READ_PATH, Method::POST, post(internal::read)),
        Route::new(
            Node,
            READ_DIGEST_PATH,
            Method::POST,
            post(internal::read_digest),
        ),
        Route::new(
            Node,
            internal::TOKENS_PATH,
            Method::GET,
            get(internal::tokens),
        ),
        Route::new(Node, STREAM_PATH, Method::GET, get(stream::stream)),
        Route::new(Node, LIST_PATH, Method::POST, post(files::list_own)),
        Route::new(
            Operator,
            files::GC_PATH,
            Method::POST,
            post(files::collect_garbage),
        ),
        Route::new(Node, DIGEST_PATH, Method::POST, post(repair::digest)),
        Route::new(
            Node,
            REPAIR_ROWS_PATH,
            Method::POST,
            post(repair::repair_rows),
        ),
    ];
    routes.extend(console);
    routes
}

/// Every route the node serves: method, path pattern (`{name}` is one
/// segment, `{*name}` the rest of the path) and the access it requires.
/// The router serves exactly these.
pub fn route_table() -> Vec<(Method, String, Access)> {
    routes()
        .into_iter()
        .map(|r| (r.method, r.path, r.access))
        .collect()
}

/// The node's router: every route of [`route_table`] behind one middleware,
/// `edge`, that bounds the request, checks its access and measures it.
pub fn router(state: AppState) -> Router {
    let edge = |access| middleware::from_fn_with_state((state.clone(), access), edge);
    // Methods of one path share one entry, each with its own check.
    let mut paths: Vec<(String, MethodRouter<AppState>)> = Vec::new();
    for route in routes() {
        let checked = route.handler.route_layer(edge(route.access));
        match paths.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(checked),
            None => paths.push((route.path, checked)),
        }
    }
    paths
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(&path, methods)
        })
        .fallback(not_found.layer(edge(Access::Open)))
        .method_not_allowed_fallback(method_not_allowed.layer(edge(Access::Open)))
        // Bodies are read with an explicit limit (`read_body`), which answers
        // in JSON; axum's own default limit would answer in plain text.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Bounds a request (body bytes, concurrency, deadline), checks that it
/// carries the credential `access` needs, and records its metrics: one
/// middleware per route rather than a layer for each, since every layer
/// costs a boxed future and a clone of the service it wraps per request.
async fn edge(
    State((state, access)): State<(AppState, Access)>,
    req: Request,
    next: Next,
) -> Response {
    // The id's span covers refusals and timeouts too.
    request_id::within(req, |req| bound_and_measure(&state, access, req, next)).await
}

async fn bound_and_measure(state: &AppState, access: Access, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let op = op_of(req.method(), req.uri().path());
    let deadline = state.config.request_timeout;
    // A file upload lasts as long as its body does: it has an idle timeout
    // between parts of the body instead, and its chunk writes have the
    // replica timeouts. So does a commit, which reads every chunk of the
    // file, each read with the replica timeouts, and a chunk GC pass, which
    // reads every manifest and the whole engine (a gigabyte of chunks takes
    // longer than any request deadline) through the background throttle.
    let path = req.uri().path();
    let unbounded = matches!(*req.method(), Method::PUT | Method::POST)
        && (path.starts_with(files::FILES_PREFIX) || path == files::GC_PATH);
    let deadline = if unbounded {
        std::time::Duration::MAX
    } else {
        deadline
    };
    // Node-to-node calls do not take a client slot: a coordinator holding a
    // slot waits on its replicas' internal calls, so if those queued behind
    // the same limit, a full load on every node would deadlock until the
    // replica timeouts fired. They are bounded anyway, by the coordinators'
    // own client limits times the replication factor.
    let internal = req.uri().path().starts_with("/internal/");
    let _in_flight = state.metrics.in_flight(if internal {
        RequestClass::internal
    } else {
        RequestClass::client
    });
    let response = match admit(state, &req, internal) {
        Err(refusal) => refusal.into_response(),
        Ok(_body_permit) => match tokio::time::timeout(deadline, async {
            // The semaphore is never closed, so acquire only fails if it were.
            let _permit = if internal {
                None
            } else {
                Some(state.in_flight.acquire().await)
            };
            access::require(state, access, req, next).await
        })
        .await
        {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("no answer within {} ms", deadline.as_millis()),
            )
            .into_response(),
        },
    };
    if let Some(kind) = response.extensions().get::<ErrorKind>() {
        state.metrics.error(kind.0);
    }
    state.metrics.request(
        op,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Reserves the request's body in the budget, or refuses it: 413 if its
/// declared length is over its route's limit, 503 if it does not fit now.
/// Routes that read no body reserve nothing.
fn admit<'a>(
    state: &'a AppState,
    req: &Request,
    internal: bool,
) -> Result<Option<BodyPermit<'a>>, ApiError> {
    let Some(limit) = route_body_limit(req.method(), req.uri().path(), &state.config.limits) else {
        return Ok(None);
    };
    // Hyper reports a valid Content-Length as the exact size; a chunked
    // body has none and may take up to the limit.
    let declared = http_body::Body::size_hint(req.body()).exact();
    let bytes = match declared.map(usize::try_from) {
        Some(Ok(n)) if n <= limit.bytes() => n,
        Some(_) => return Err(limit.too_large()),
        None => limit.bytes(),
    };
    state
        .body_budget
        .try_reserve(bytes, internal)
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("request bodies in flight are at this node's budget; retry in {RETRY_AFTER_SECS} s"),
            )
            .retry_after(RETRY_AFTER_SECS)
        })
}

/// What a refused body is told to wait. Bodies in flight last about as long
/// as a write does (milliseconds to the replica timeout, 2 s): a second
/// lets most of them finish without making a client wait long.
const RETRY_AFTER_SECS: u32 = 1;

/// The most a route reads of a request body; `None` for routes that read
/// none. The handlers read with the same limits.
fn route_body_limit(method: &Method, path: &str, limits: &Limits) -> Option<BodyLimit> {
    let writes_value = matches!(*method, Method::PUT)
        && (path.starts_with("/v1/kv/")
            || path.starts_with("/block/")
            || path.starts_with(files::CHUNKS_PREFIX));
    if writes_value {
        Some(BodyLimit::value(limits))
    } else if *method == Method::POST && path == files::MISSING_PATH {
        Some(BodyLimit::Body(files::MISSING_QUERY_LIMIT))
    } else if *method == Method::POST && path.starts_with(files::FILES_PREFIX) {
        Some(BodyLimit::Body(files::COMMIT_LIMIT))
    } else if *method == Method::POST && path == "/v1/data" {
        Some(BodyLimit::Body(limits.max_body_size))
    } else if *method == Method::POST && path == APPLY_PATH {
        Some(BodyLimit::Body(limits.apply_body_size()))
    } else if *method == Method::POST && path == APPLY_BATCH_PATH {
        Some(BodyLimit::Body(limits.apply_batch_body_size()))
    } else if *method == Method::POST && (path == READ_PATH || path == READ_DIGEST_PATH) {
        Some(BodyLimit::Body(limits.max_key_size))
    } else if *method == Method::POST && path == DIGEST_PATH {
        Some(BodyLimit::Body(MAX_DIGEST_REQUEST))
    } else if *method == Method::POST && path == LIST_PATH {
        Some(BodyLimit::Body(files::LIST_REQUEST_LIMIT))
    } else if *method == Method::POST && path == REPAIR_ROWS_PATH {
        Some(BodyLimit::Body(MAX_ROWS_REQUEST))
    } else if *method == Method::POST && path == repair::REPAIR_PATH {
        Some(BodyLimit::Body(repair::MAX_REPAIR_REQUEST))
    } else if *method == Method::POST && path == snapshot::SNAPSHOT_PATH {
        Some(BodyLimit::Body(snapshot::MAX_SNAPSHOT_REQUEST))
    } else {
        None
    }
}

/// The most a request body may hold, and which 413 a larger one gets.
#[derive(Debug, Clone, Copy)]
pub enum BodyLimit {
    /// A raw value: `value_too_large`, naming `max_value_size`.
    Value(usize),
    /// Any other body: `body_too_large`.
    Body(usize),
}

impl BodyLimit {
    /// The limit of a raw value body.
    pub fn value(limits: &Limits) -> Self {
        Self::Value(limits.max_value_size)
    }

    /// The limit in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Self::Value(n) | Self::Body(n) => n,
        }
    }

    /// The 413 of a body over this limit.
    pub fn too_large(self) -> ApiError {
        match self {
            Self::Value(n) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                format!("value exceeds max_value_size ({n} bytes)"),
            ),
            Self::Body(n) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {n} bytes"),
            ),
        }
    }
}

fn op_of(method: &axum::http::Method, path: &str) -> Op {
    if path.starts_with("/v1/kv/")
        || path.starts_with("/v1/data")
        || path.starts_with("/block/")
        || path.starts_with(files::FILES_PREFIX)
        || path == files::LIST_ROUTE
        || path.starts_with(files::CHUNKS_PREFIX)
    {
        match *method {
            Method::GET | Method::HEAD => Op::get,
            Method::PUT | Method::POST => Op::put,
            Method::DELETE => Op::delete,
            _ => Op::unmatched,
        }
    } else if path == APPLY_PATH {
        Op::internal_apply
    } else if path == READ_PATH {
        Op::internal_read
    } else if path == READ_DIGEST_PATH {
        Op::internal_read_digest
    } else if path == STREAM_PATH {
        Op::internal_stream
    } else if path == LIST_PATH {
        Op::internal_list
    } else if path == DIGEST_PATH || path == REPAIR_ROWS_PATH {
        Op::internal_repair
    } else if matches!(
        path,
        "/v1/cluster"
            | "/v1/ring"
            | "/v1/node"
            | "/health"
            | "/ready"
            | "/metrics"
            | "/ping"
            | "/v1/gossip"
            | "/v1/metadata/key"
    ) || path == metadata::NODE_PATH
        || path == cluster::DECOMMISSION_PATH
        || path == cluster::CLEANUP_PATH
        || path
            .strip_prefix(cluster::REMOVENODE_PATH)
            .is_some_and(|id| id.starts_with('/'))
        || path == repair::REPAIR_PATH
        || path == snapshot::SNAPSHOT_PATH
        || path == files::GC_PATH
        || console::is_console_path(path)
    {
        Op::admin
    } else {
        Op::unmatched
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The error kind of a response, for the errors-by-kind metric.
#[derive(Debug, Clone, Copy)]
struct ErrorKind(&'static str);

/// An error answer: a status and `{"error": kind, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// Seconds for `Retry-After`, on refusals a retry can get past.
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with its status, a stable machine-readable kind and a message
    /// for people.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 400 with `kind`.
    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// 500: this node failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The status and the message, for a transport that is not HTTP
    /// (`api::mux` sends them in a `refused` frame).
    pub(crate) fn status_and_message(&self) -> (StatusCode, &str) {
        (self.status, &self.message)
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.kind, "message": self.message });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot
            // carry another request: say so, or a pooling client will reuse
            // it and see its next request cut off.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response.extensions_mut().insert(ErrorKind(self.kind));
        response
    }
}

/// Reads a whole body, refusing one larger than `limit` with a JSON 413
/// (a chunked one: a declared length was refused on admission).
pub async fn read_body(body: Body, limit: BodyLimit) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit.bytes())
        .await
        .map_err(|e| {
            // to_bytes reports an over-limit body and a broken connection alike;
            // the source tells them apart.
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                limit.too_large()
            } else {
                ApiError::bad_request("bad_body", format!("reading the request body: {e}"))
            }
        })
}
