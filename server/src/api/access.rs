//! Who may call which route: every route of the router declares an
//! [`Access`], and `require` enforces it before the handler runs.
//!
//! Two credentials exist, and neither stands in for the other:
//!
//! - a client's `Authorization: Bearer <token>`, checked against the tokens
//!   file ([`auth::tokens`](crate::auth::tokens));
//! - a node's (or the operator CLI's) signature under the cluster secret,
//!   `Authorization: KVNODE-HMAC-SHA256 ...`
//!   ([`auth::request`](crate::auth::request)). Its holder could write any
//!   replica directly, so it passes every route.
//!
//! | access     | routes                                                   | no tokens file | with a tokens file       |
//! |------------|----------------------------------------------------------|----------------|--------------------------|
//! | `Open`     | `/health`, `/ready`, `/ping`, `/ui` and its files        | open           | open                     |
//! | `Read`     | `GET` of keys (`/v1/data?key=` too), `/metrics`          | open           | `read` token or above    |
//! | `Write`    | `PUT`/`DELETE` of keys, `POST /v1/data`                  | open           | `write` token or above   |
//! | `Admin`    | `/v1/node`, `/v1/cluster`, `/v1/gossip`, `/v1/metadata/*` | open          | `admin` token            |
//! | `Operator` | `/admin/*` (cluster changes)                             | signature      | `admin` token, signature |
//! | `Node`     | `/internal/*`                                            | signature      | signature                |
//!
//! `/ready` stays open because load balancers and orchestrators probe it
//! without credentials and it says only whether the node serves; `/ping`
//! says less still. `/ui` ([`console`](super::console)) is a static page
//! that holds no data: what it shows it fetches from the other routes with
//! the token the user types, so opening it needs none. `/v1/gossip` and
//! `/v1/metadata/*` name the nodes and their addresses, as `/v1/cluster`
//! does, and take what it takes.
//! `/metrics` needs a `read` token: request counts and engine sizes are
//! not for anyone on the network, and Prometheus sends a bearer token
//! (`authorization` in a scrape config).
//!
//! A request without the credential its route needs gets 401; a token whose
//! role is too small gets 403. A bearer token on an internal route is a 401:
//! no token reaches one, whatever its role.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{read_body, route_body_limit, ApiError, AppState, BodyLimit};
use crate::auth::request::{Canonical, SCHEME};
use crate::auth::tokens::Role;

/// What a route requires; see the module doc's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// A `read` token (open without a tokens file).
    Read,
    /// A `write` token (open without a tokens file).
    Write,
    /// An `admin` token (open without a tokens file).
    Admin,
    /// An `admin` token, or a request signed under the cluster secret (only
    /// the signature without a tokens file): changes to the cluster.
    Operator,
    /// A request signed under the cluster secret: node-to-node calls.
    Node,
}

impl Access {
    /// The least token role that passes; `None` when no token does.
    fn role(self) -> Option<Role> {
        match self {
            Self::Open | Self::Read => Some(Role::Read),
            Self::Write => Some(Role::Write),
            Self::Admin | Self::Operator => Some(Role::Admin),
            Self::Node => None,
        }
    }

    /// Whether a client needs no token for it when the node has no tokens.
    fn open_without_tokens(self) -> bool {
        matches!(self, Self::Open | Self::Read | Self::Write | Self::Admin)
    }
}

/// Lets the request through if it carries the credential `access` needs.
pub(crate) async fn require(
    state: &AppState,
    access: Access,
    req: Request,
    next: Next,
) -> Response {
    if access == Access::Open {
        return next.run(req).await;
    }
    // A refusal leaves the body unread, so the connection cannot carry
    // another request: say so, or a pooling client reuses it and sees its
    // next request cut off. A signed request refused after its body was
    // read keeps its connection.
    let unread_body = http_body::Body::size_hint(req.body()).exact() != Some(0);
    let mut response = check(state, access, req, next).await;
    let refused = matches!(
        response.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    );
    if refused && unread_body && response.extensions().get::<BodyRead>().is_none() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Marks a refusal made after the request's body was read whole.
#[derive(Debug, Clone, Copy)]
struct BodyRead;

async fn check(state: &AppState, access: Access, req: Request, next: Next) -> Response {
    let tokens = state.config.tokens.as_deref();
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let Some(authorization) = authorization else {
        if tokens.is_none() && access.open_without_tokens() {
            return next.run(req).await;
        }
        return unauthorized(access, "no Authorization header").into_response();
    };
    let value = authorization.as_bytes();
    if value.starts_with(SCHEME.as_bytes()) {
        return match verify_signature(state, value, req).await {
            Ok(req) => next.run(req).await,
            Err(refusal) => refusal,
        };
    }
    let Some(tokens) = tokens else {
        // Without tokens a header is ignored where none is needed.
        if access.open_without_tokens() {
            return next.run(req).await;
        }
        return unauthorized(access, "this node takes no client tokens").into_response();
    };
    let Some(needed) = access.role() else {
        return unauthorized(access, "a client token never reaches an internal route")
            .into_response();
    };
    let holder = value
        .strip_prefix(b"Bearer ")
        .and_then(|token| tokens.holder(token));
    match holder {
        None => unauthorized(access, "not a valid Bearer token").into_response(),
        Some(h) if h.role < needed => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the {} role; this route needs {needed}",
                h.name, h.role
            ),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

/// Checks a signed request: the header and its time first, then the body it
/// covers, read whole within the route's limit and handed on.
async fn verify_signature(
    state: &AppState,
    header: &[u8],
    req: Request,
) -> Result<Request, Response> {
    let verifier = &state.verifier;
    let claim = verifier
        .claim(header)
        .map_err(|e| refused_signature(&e.to_string()).into_response())?;
    let (parts, body) = req.into_parts();
    // A route that reads no body takes none under a signature either.
    let limit = route_body_limit(&parts.method, parts.uri.path(), &state.config.limits)
        .unwrap_or(BodyLimit::Body(0));
    let bytes = read_body(body, limit)
        .await
        .map_err(IntoResponse::into_response)?;
    let request = Canonical {
        method: parts.method.as_str(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str()),
        body: &bytes,
    };
    let sender = claim.sender.clone();
    verifier.verify(claim, &request).map_err(|e| {
        tracing::debug!(%sender, path = parts.uri.path(), "signed request refused: {e}");
        let mut refusal = refused_signature(&e.to_string()).into_response();
        refusal.extensions_mut().insert(BodyRead);
        refusal
    })?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn refused_signature(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("signature refused: {reason}"),
    )
}

/// The 401 of a request without the credential `access` needs.
fn unauthorized(access: Access, why: &str) -> ApiError {
    let needs = match access {
        Access::Node => "a request signed under the cluster secret",
        Access::Operator => "an admin token or a request signed under the cluster secret",
        Access::Read | Access::Write | Access::Admin | Access::Open => {
            "Authorization: Bearer <token>"
        }
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("{why}: this route needs {needs}"),
    )
}
