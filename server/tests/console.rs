//! The web console at `/ui` on a real `kvnode` process: the page and every
//! file it references are served, open even on a node with a tokens file,
//! with the content type a browser needs to use them and a policy that
//! keeps the page to its own origin; and every route the page's script
//! calls is one the router serves. `scripts/console-test.sh` drives the
//! page in a real browser.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use common::Cluster;
use strata_server::api::route_table;
use strata_server::auth::tokens::{self, Role};

/// The values of every `name="..."` attribute in `html`.
fn attributes<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!(" {name}=\"");
    html.match_indices(&open)
        .filter_map(|(at, _)| {
            let rest = &html[at + open.len()..];
            rest.split_once('"').map(|(value, _)| value)
        })
        .collect()
}

/// The content type a file of `path` must be served with.
fn content_type_of(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "text/html; charset=utf-8",
    }
}

#[tokio::test]
async fn the_console_and_its_files_are_served_with_their_content_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let (_, line) = tokens::create("ops", Role::Admin).unwrap();
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let c = Cluster::start_with(1, 1, &[("KVNODE_AUTH_TOKENS_FILE", path.to_str().unwrap())]).await;
    let node = &c.nodes[0];

    let get = |path: String| {
        let client = c.client.clone();
        let url = node.url(&path);
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "GET {path} without a token");
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            assert_eq!(header("content-type"), content_type_of(&path), "{path}");
            assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
            assert!(
                header("content-security-policy").starts_with("default-src 'self'"),
                "{path}"
            );
            r.text().await.unwrap()
        }
    };

    let page = get("/ui".to_owned()).await;
    assert!(page.starts_with("<!doctype html>"), "{page}");
    // `/ui/` as people type it leads to the page.
    assert_eq!(get("/ui/".to_owned()).await, page);
    let mut assets: Vec<&str> = attributes(&page, "src");
    assets.extend(attributes(&page, "href"));
    assert!(assets.len() >= 2, "the page references {assets:?}");
    let mut script = String::new();
    for asset in assets {
        assert!(
            asset.starts_with("/ui/"),
            "{asset} is not one of the node's files"
        );
        let body = get(asset.to_owned()).await;
        assert!(!body.is_empty(), "{asset}");
        if asset.ends_with(".js") {
            script.push_str(&body);
        }
    }

    // Every path the script calls is a route (a prefix of one, for keys).
    let routes: Vec<String> = route_table().into_iter().map(|(_, p, _)| p).collect();
    let called: Vec<&str> = script
        .split(['"', '`'])
        .filter(|s| s.starts_with("/v1/") || *s == "/metrics")
        .map(|s| s.split('$').next().unwrap())
        .collect();
    assert!(called.contains(&"/v1/cluster"), "{called:?}");
    for path in called {
        assert!(
            routes.iter().any(|r| r.starts_with(path)),
            "the console calls {path}, which no route serves"
        );
    }

    // The data the page shows is not open like the page itself.
    let cluster = c.client.get(node.url("/v1/cluster")).send().await.unwrap();
    assert_eq!(cluster.status(), 401);
}
