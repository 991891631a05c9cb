//! The web console: one page at `/ui` (`/ui/` redirects there) and the two
//! files it loads, embedded in the binary (no CDN, no build step), so that
//! a node is all an operator needs to look at the cluster in a browser.
//!
//! The page is static and carries no data, so its routes are open (see
//! [`access`](super::access)); everything it shows it fetches with the
//! token the user types, kept in the tab's `sessionStorage`:
//!
//! | what the page shows                             | where it reads it | access  |
//! |-------------------------------------------------|-------------------|---------|
//! | members, UN/DN/UJ/UL, load, ownership, version  | `GET /v1/cluster` (as `kvnode status`) | `Admin` |
//! | this node's streaming, repair, hints, clean-up  | `GET /v1/node`    | `Admin` |
//! | request rates, latency quantiles, errors        | `GET /metrics`, two scrapes apart | `Read` |
//! | the key browser (get, put, delete one key)      | `/v1/kv/{key}`    | `Read`, `Write` |
//!
//! Rates and quantiles are those of the node that serves the page: a
//! browser may not read another origin's `/metrics`, and a node's own
//! numbers are what its histogram holds anyway. A dashboard over every
//! node is `deploy/grafana/kvnode.json`.
//!
//! Every asset is answered with a `Content-Security-Policy` that lets the
//! page load only its own files and call only its own origin, so a value
//! shown by the key browser can never run as script, and with
//! `Cache-Control: no-cache`, so that a node upgraded in place serves its
//! own console rather than a browser's stale copy.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, MethodRouter};

use super::AppState;

/// Path of the page.
pub const UI_PATH: &str = "/ui";

/// The page's path as people also type it; redirected to [`UI_PATH`].
const UI_SLASH_PATH: &str = "/ui/";

/// What the page may load and call: its own origin only, no inline script.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page and the files it references; each is one route.
static ASSETS: [Asset; 3] = [
    Asset {
        path: UI_PATH,
        content_type: "text/html; charset=utf-8",
        body: include_str!("console/index.html"),
    },
    Asset {
        path: "/ui/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console/console.css"),
    },
    Asset {
        path: "/ui/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/console.js"),
    },
];

/// Each asset's path and its handler, and the redirect of `/ui/`, for the
/// route table.
pub(crate) fn routes() -> impl Iterator<Item = (&'static str, MethodRouter<AppState>)> {
    let redirect = (
        UI_SLASH_PATH,
        get(|| async { Redirect::permanent(UI_PATH) }),
    );
    ASSETS
        .iter()
        .map(|asset| {
            let handler = move || async move {
                (
                    [
                        (header::CONTENT_TYPE, asset.content_type),
                        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    asset.body,
                )
                    .into_response()
            };
            (asset.path, get(handler))
        })
        .chain(std::iter::once(redirect))
}

/// Whether `path` is one of the console's routes.
pub(crate) fn is_console_path(path: &str) -> bool {
    path == UI_SLASH_PATH || ASSETS.iter().any(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page names is served, and nothing it names is
    /// fetched from elsewhere.
    #[test]
    fn the_page_references_only_embedded_assets() {
        let page = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(&format!("\"{}\"", asset.path)),
                "{}",
                asset.path
            );
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script>"), "inline script breaks the CSP");
    }
}
