//! Who may call what, on real `kvnode` processes: every route of the router
//! against every kind of credential, a tokens file and a secret file that
//! are refused at start, and the cluster secret never on the wire between
//! two nodes (a recording proxy sits between them).

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{signed, Cluster, SECRET};
use parking_lot::Mutex;
use strata_server::api::{route_table, Access};
use strata_server::auth::tokens::{self, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The access each route must require: the spec the router is held to. A
/// route added to the router and not here fails the matrix test.
fn expected_routes() -> BTreeMap<(String, String), Access> {
    use Access::{Admin, Node, Open, Operator, Read, Write};
    [
        ("GET", "/v1/kv/{*key}", Read),
        ("PUT", "/v1/kv/{*key}", Write),
        ("DELETE", "/v1/kv/{*key}", Write),
        ("GET", "/v1/files", Read),
        ("GET", "/v1/files/{*name}", Read),
        ("PUT", "/v1/files/{*name}", Write),
        ("DELETE", "/v1/files/{*name}", Write),
        ("POST", "/v1/files/{*name}", Write),
        ("POST", "/v1/chunks/missing", Write),
        ("PUT", "/v1/chunks/{hash}", Write),
        ("POST", "/v1/data", Write),
        ("GET", "/v1/data", Read),
        ("GET", "/v1/data/{*key}", Read),
        ("GET", "/block/{*id}", Read),
        ("PUT", "/block/{*id}", Write),
        ("DELETE", "/block/{*id}", Write),
        ("GET", "/v1/cluster", Admin),
        ("GET", "/v1/ring", Admin),
        ("GET", "/v1/node", Admin),
        ("GET", "/health", Open),
        ("GET", "/ready", Open),
        ("GET", "/ping", Open),
        ("GET", "/ui", Open),
        ("GET", "/ui/", Open),
        ("GET", "/ui/console.css", Open),
        ("GET", "/ui/console.js", Open),
        ("GET", "/v1/gossip", Admin),
        ("GET", "/v1/metadata/node", Admin),
        ("GET", "/v1/metadata/key", Admin),
        ("GET", "/metrics", Read),
        ("POST", "/admin/v1/decommission", Operator),
        ("POST", "/admin/v1/cleanup", Operator),
        ("POST", "/admin/v1/compact", Operator),
        ("POST", "/admin/v1/removenode/{id}", Operator),
        ("POST", "/admin/v1/repair", Operator),
        ("POST", "/admin/v1/snapshot", Operator),
        ("POST", "/admin/v1/files/gc", Operator),
        ("POST", "/internal/v1/apply", Node),
        ("POST", "/internal/v1/apply-batch", Node),
        ("POST", "/internal/v1/read", Node),
        ("POST", "/internal/v1/read-digest", Node),
        ("GET", "/internal/v1/tokens", Node),
        ("GET", "/internal/v1/stream", Node),
        ("POST", "/internal/v1/digest", Node),
        ("POST", "/internal/v1/repair-rows", Node),
        ("POST", "/internal/v1/files", Node),
    ]
    .into_iter()
    .map(|(m, p, a)| ((m.to_owned(), p.to_owned()), a))
    .collect()
}

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    None,
    WrongToken,
    Token(Role),
    Signature,
}

/// How a node with a tokens file must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Past the check: the handler's own answer, never 401 or 403.
    Passes,
    Unauthorized,
    Forbidden,
}

fn answer(access: Access, credential: Credential) -> Answer {
    use Answer::{Forbidden, Passes, Unauthorized};
    use Credential::{None, Signature, Token, WrongToken};
    match (access, credential) {
        (Access::Open, _) | (_, Signature) => Passes,
        (_, None | WrongToken) => Unauthorized,
        (Access::Node, Token(_)) => Unauthorized,
        (Access::Read, Token(_)) => Passes,
        (Access::Write, Token(Role::Read)) => Forbidden,
        (Access::Write, Token(_)) => Passes,
        (Access::Admin | Access::Operator, Token(Role::Admin)) => Passes,
        (Access::Admin | Access::Operator, Token(_)) => Forbidden,
    }
}

/// A concrete request path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{*key}", "matrix-key")
        .replace("{*id}", "matrix-id")
        .replace("{hash}", "matrix-hash")
        .replace("{id}", "node9")
}

/// Writes a tokens file with one token of each role; the tokens.
fn tokens_file(path: &Path) -> BTreeMap<Role, String> {
    let mut file = String::from("# the matrix test's tokens\n");
    let mut tokens = BTreeMap::new();
    for role in [Role::Read, Role::Write, Role::Admin] {
        let (token, line) = tokens::create(&format!("t-{role}"), role).unwrap();
        file.push_str(&line);
        file.push('\n');
        tokens.insert(role, token);
    }
    std::fs::write(path, file).unwrap();
    tokens
}

#[tokio::test]
async fn every_route_answers_each_credential_as_its_access_says() {
    let table = route_table();
    let listed: BTreeMap<(String, String), Access> = table
        .iter()
        .map(|(m, p, a)| ((m.as_str().to_owned(), p.clone()), *a))
        .collect();
    assert_eq!(listed.len(), table.len(), "a route is listed twice");
    assert_eq!(
        listed,
        expected_routes(),
        "the router's routes and their access differ from the spec"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let tokens = tokens_file(&path);
    let c = Cluster::start_with(1, 1, &[("KVNODE_AUTH_TOKENS_FILE", path.to_str().unwrap())]).await;
    let node = &c.nodes[0];
    let credentials = [
        Credential::None,
        Credential::WrongToken,
        Credential::Token(Role::Read),
        Credential::Token(Role::Write),
        Credential::Token(Role::Admin),
        Credential::Signature,
    ];
    let mut wrong = Vec::new();
    for (method, pattern, access) in &table {
        for credential in credentials {
            let url = node.url(&concrete(pattern));
            let request = c.client.request(method.clone(), url).body(Vec::new());
            let request = match credential {
                Credential::None => request,
                Credential::WrongToken => request.bearer_auth(format!("kvt_{}", "0".repeat(64))),
                Credential::Token(role) => request.bearer_auth(&tokens[&role]),
                Credential::Signature => signed(request),
            };
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let want = answer(*access, credential);
            let got = match status {
                401 => Answer::Unauthorized,
                403 => Answer::Forbidden,
                _ => Answer::Passes,
            };
            if got != want {
                wrong.push(format!(
                    "{method} {pattern} with {credential:?}: {status}, want {want:?}"
                ));
                continue;
            }
            if got != Answer::Passes {
                let body: serde_json::Value =
                    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                let kind = if got == Answer::Forbidden {
                    "forbidden"
                } else {
                    "unauthorized"
                };
                assert_eq!(body["error"], kind, "{method} {pattern}: {body}");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers off the matrix:\n{}",
        wrong.join("\n")
    );

    let info = c.node_info(0).await.unwrap();
    assert_eq!(info["client_auth"]["mode"], "tokens", "{info}");
    assert_eq!(info["client_auth"]["tokens"], 3, "{info}");
    // The token's holder writes and reads back.
    let put = c
        .client
        .put(node.url("/v1/kv/k?consistency=one"))
        .bearer_auth(&tokens[&Role::Write])
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let get = c
        .client
        .get(node.url("/v1/kv/k?consistency=one"))
        .bearer_auth(&tokens[&Role::Read])
        .send()
        .await
        .unwrap();
    assert_eq!(get.bytes().await.unwrap(), "v");

    // The operator's views need the admin token once tokens exist.
    let addr = node.http.to_string();
    let status = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvnode"));
        cmd.args(["status", "--node", &addr])
            .env_remove("KVNODE_TOKEN");
        if let Some(t) = token {
            cmd.env("KVNODE_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let refused = status(None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let read_only = status(Some(&tokens[&Role::Read]));
    assert_eq!(read_only.status.code(), Some(1));
    let shown = status(Some(&tokens[&Role::Admin]));
    assert_eq!(
        shown.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains("UN"));
}

/// Runs `kvnode` with `args` and `env` until it exits (20 s at most); its
/// status and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(args)
        .args(["--listen", "127.0.0.1:1", "--gossip-listen", "127.0.0.1:2"])
        .arg("--data-dir")
        .arg(dir.path())
        .envs(env.iter().copied())
        .env_remove("KVNODE_CLUSTER_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvnode {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn a_node_refuses_to_start_on_a_bad_tokens_file_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let (_, good) = tokens::create("ops", Role::Admin).unwrap();
    std::fs::write(
        &path,
        format!("# ops\n{good}\n\nloader writer {}\n", "ab".repeat(32)),
    )
    .unwrap();
    let (status, stderr) = run_to_exit(&["--auth-tokens-file", path.to_str().unwrap()], &[]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("{}:4:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown role"), "{stderr}");
}

#[test]
fn a_node_refuses_a_secret_file_that_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (status, stderr) = run_to_exit(
        &[],
        &[("KVNODE_CLUSTER_SECRET_FILE", path.to_str().unwrap())],
    );
    assert!(!status.success());
    assert!(
        stderr.contains(path.to_str().unwrap()) && stderr.contains("0640"),
        "{stderr}"
    );
}

#[test]
fn token_create_prints_a_token_and_the_line_of_its_digest() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["token", "create", "alice", "write"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (token, line) = (lines[0], lines[1]);
    assert!(!line.contains(token));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let loaded = tokens::Tokens::load(&path).unwrap();
    let holder = loaded.holder(token.as_bytes()).unwrap();
    assert_eq!((holder.name, holder.role), ("alice", Role::Write));

    let bad = Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["token", "create", "alice", "root"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// A TCP proxy to a target set later, recording every byte sent to it,
/// connection by connection.
struct Recorder {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    bytes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let bytes: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (t, b) = (target.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (t, b) = (t.clone(), b.clone());
                tokio::spawn(async move {
                    let to = loop {
                        if let Some(to) = *t.lock() {
                            break to;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    };
                    let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let connection = {
                        let mut all = b.lock();
                        all.push(Vec::new());
                        all.len() - 1
                    };
                    let upstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n @ 1..) = in_read.read(&mut buf).await {
                            b.lock()[connection].extend_from_slice(&buf[..n]);
                            if out_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = out_write.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                        let _ = in_write.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Self {
            addr,
            target,
            bytes,
        }
    }

    fn recorded(&self) -> Vec<u8> {
        self.bytes.lock().concat()
    }

    /// What each connection sent, in the order they were opened.
    fn connections(&self) -> Vec<Vec<u8>> {
        self.bytes.lock().clone()
    }
}

/// The last whole request in `bytes` whose request line starts with
/// `start`, head and body.
fn last_request(bytes: &[u8], start: &str) -> Vec<u8> {
    let at = bytes
        .windows(start.len())
        .rposition(|w| w == start.as_bytes())
        .expect("a recorded request");
    let rest = &bytes[at..];
    let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&rest[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    rest[..head_end + length].to_vec()
}

/// Two nodes (RF 2) on `transport`, the second reached by the cluster
/// through a [`Recorder`] (it advertises the proxy's address); returns the
/// proxy, the cluster and the second node's index once both are ready.
async fn behind_proxy(transport: &str) -> (Recorder, Cluster, usize) {
    let proxy = Recorder::start().await;
    let mut c = Cluster::start_with(1, 2, &[("KVNODE_PEER_TRANSPORT", transport)]).await;
    let second = c.add_node_with(&[("KVNODE_ADVERTISE", &proxy.addr.to_string())]);
    *proxy.target.lock() = Some(c.nodes[second].http);
    for i in 0..2 {
        c.wait_until_sees(i, 2, Duration::from_secs(30)).await;
    }
    c.wait_ready(second, Duration::from_secs(60)).await;
    (proxy, c, second)
}

#[tokio::test]
async fn the_cluster_secret_never_crosses_the_wire_and_a_captured_call_cannot_be_replayed() {
    // Replica calls over signed HTTP; the multiplexed transport's own
    // capture test is the next one.
    let (proxy, c, second) = behind_proxy("http").await;
    for k in 0..50 {
        c.write_retrying(0, &format!("k{k}"), Some(b"v"), "all", 50)
            .await;
        assert_eq!(c.get(0, &format!("k{k}"), "all").await.status(), 200);
    }

    // A captured replica call sent again, byte for byte (within the time
    // window), is refused.
    let captured = last_request(&proxy.recorded(), "POST /internal/v1/apply ");
    let mut direct = tokio::net::TcpStream::connect(c.nodes[second].http)
        .await
        .unwrap();
    direct.write_all(&captured).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = direct.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("replayed"), "{answer}");

    // The operator's CLI through the proxy too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args([
            "repair",
            "--node",
            &proxy.addr.to_string(),
            "--timeout-secs",
            "120",
        ])
        .env("KVNODE_CLUSTER_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let recorded = proxy.recorded();
    let text = String::from_utf8_lossy(&recorded);
    assert!(
        text.contains("POST /internal/v1/apply"),
        "no replica call went through the proxy"
    );
    assert!(
        text.contains("POST /admin/v1/repair"),
        "the CLI's call did not go through the proxy"
    );
    assert!(text.contains("KVNODE-HMAC-SHA256 id=node1"));
    assert!(text.contains("KVNODE-HMAC-SHA256 id=kvnode-cli"));
    assert!(
        !recorded
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "the cluster secret was sent in clear"
    );
    assert!(
        !text.to_lowercase().contains("bearer"),
        "a bearer credential was sent"
    );

    // A node without a tokens file says it is open.
    let info = c.node_info(0).await.unwrap();
    assert_eq!(info["client_auth"]["mode"], "open", "{info}");
    assert!(c.nodes[0].log_text().contains("the client API is open"));
}

#[tokio::test]
async fn a_multiplexed_connection_sends_no_secret_and_a_recorded_one_replayed_is_refused() {
    let (proxy, c, second) = behind_proxy("mux").await;
    for k in 0..50 {
        c.write_retrying(0, &format!("m{k}"), Some(b"v"), "all", 50)
            .await;
    }
    let magic = strata_server::peer::mux::handshake::MAGIC;
    let recorded = proxy
        .connections()
        .into_iter()
        .find(|bytes| bytes.starts_with(magic))
        .expect("node1's replica calls went through the proxy on the multiplexed transport");
    assert!(
        !recorded
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "the cluster secret was sent in clear"
    );
    // The recorded hello and proof, sent again: the node answers the hello
    // with its fresh nonce and proof, finds the old proof wrong for it, and
    // closes without accepting the connection. (The frames that followed
    // are left out so that the close is a clean one, not a reset.)
    let hello = magic.len() + 32 + 1 + usize::from(recorded[magic.len() + 32]);
    let mut direct = tokio::net::TcpStream::connect(c.nodes[second].http)
        .await
        .unwrap();
    direct.write_all(&recorded[..hello + 32]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), direct.read_to_end(&mut answer))
        .await
        .expect("the node closes the replayed connection")
        .unwrap_or_default();
    assert_eq!(
        answer.len(),
        64,
        "only the nonce and proof of the node: {answer:?}"
    );
    assert!(c.nodes[second]
        .log_text()
        .contains("multiplexed handshake refused"));
}
