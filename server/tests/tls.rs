//! TLS on real `kvnode` processes: plain HTTP refused on a TLS listener; a
//! 3-node cluster with mutual TLS between nodes (HTTP and the multiplexed
//! transport) that keeps every acknowledged QUORUM write through a node's
//! restart; certificates from another CA, expired or for another host
//! refused with the reason; a certificate reloaded on SIGHUP under load
//! with no failed request, and a broken one left unused.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{retry_503, Cluster, SERIAL};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use strata_server::certs::{create_ca, create_leaf, write, Issued, Leaf};
use strata_server::tls::{client_config, error_chain};

/// A CA and what it signed, as files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issued,
}

impl Pki {
    /// A fresh CA named `name`.
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(name, 1).unwrap();
        write(dir.path(), "ca", &ca).unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a node certificate for `names` as `NAME.crt` and `NAME.key`.
    fn node(&self, name: &str, names: &[&str]) -> Issued {
        let leaf = Leaf::Node {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        let issued = create_leaf(&self.ca, name, &leaf, 1).unwrap();
        write(self.dir.path(), name, &issued).unwrap();
        issued
    }

    /// Writes a client certificate as `NAME.crt` and `NAME.key`.
    fn client_cert(&self, name: &str) {
        let issued = create_leaf(&self.ca, name, &Leaf::Client, 1).unwrap();
        write(self.dir.path(), name, &issued).unwrap();
    }

    /// The settings of a node serving `NAME.crt`, requiring client
    /// certificates of this CA when `mutual`.
    fn node_env(&self, name: &str, mutual: bool) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "KVNODE_TLS_CERT".to_owned(),
                self.file(&format!("{name}.crt")),
            ),
            (
                "KVNODE_TLS_KEY".to_owned(),
                self.file(&format!("{name}.key")),
            ),
        ];
        if mutual {
            env.push(("KVNODE_TLS_CLIENT_CA".to_owned(), self.file("ca.crt")));
        }
        env
    }

    fn file(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    /// A client that trusts this CA and presents `NAME.crt` if given.
    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let (cert, key) = identity
            .map(|name| {
                (
                    self.path(&format!("{name}.crt")),
                    self.path(&format!("{name}.key")),
                )
            })
            .unzip();
        let identity = cert.as_deref().zip(key.as_deref());
        let tls = client_config(&self.path("ca.crt"), identity).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Starts `n` TLS nodes serving `NAME.crt`.
async fn start(pki: &Pki, n: usize, name: &str, mutual: bool) -> Cluster {
    let env = pki.node_env(name, mutual);
    let client = pki.client(mutual.then_some("client"));
    let rf = u8::try_from(n).unwrap();
    Cluster::start_over(n, rf, &env_refs(&env), "https", client).await
}

/// Replaces `path` in one rename, so that a reload never reads half a file.
fn replace(path: &Path, text: &str, mode: u32) {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The certificate the server presented for `response`.
fn served_cert(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS response carries the server's certificate")
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn plain_http_to_a_tls_node_is_refused_and_https_is_served() {
    let pki = Pki::new("cluster CA");
    pki.node("node", &["127.0.0.1"]);
    let c = start(&pki, 1, "node", false).await;
    let addr = c.nodes[0].http;

    // A raw plain-HTTP request gets no HTTP answer: rustls refuses the
    // bytes as a TLS record and the connection closes.
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "served plain HTTP: {answer:?}"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    let put = c.put(0, "k", b"over-tls", "ONE").await;
    assert!(put.status().is_success(), "{}", put.status());
    let got = c.get(0, "k", "ONE").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"over-tls");
}

#[tokio::test]
async fn a_mutual_tls_cluster_keeps_every_quorum_write_through_a_restart() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new("cluster CA");
    pki.node("node", &["127.0.0.1"]);
    pki.client_cert("client");
    let mut c = start(&pki, 3, "node", true).await;

    let mut acked = Vec::new();
    let write = |c: &Cluster, via: usize, key: String| {
        let url = c.nodes[via].url(&format!("/v1/kv/{key}?consistency=QUORUM"));
        let client = c.client.clone();
        async move {
            let (answer, _) = retry_503(50, || client.put(&url).body(key.clone())).await;
            let status = answer.map(|r| r.status());
            assert!(
                matches!(status, Ok(s) if s.is_success()),
                "{key}: {status:?}"
            );
            key
        }
    };
    for i in 0..60 {
        acked.push(write(&c, i % 3, format!("before-{i}")).await);
    }
    c.nodes[2].kill();
    for i in 0..60 {
        acked.push(write(&c, i % 2, format!("down-{i}")).await);
    }
    c.nodes[2].restart();
    c.wait_until_sees(2, 3, Duration::from_secs(30)).await;
    for i in 0..60 {
        acked.push(write(&c, 2, format!("after-{i}")).await);
    }
    for (n, key) in acked.iter().enumerate() {
        let via = n % 3;
        let url = c.nodes[via].url(&format!("/v1/kv/{key}?consistency=QUORUM"));
        let (answer, _) = retry_503(50, || c.client.get(&url)).await;
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200, "{key} via node {via}");
        assert_eq!(answer.bytes().await.unwrap().as_ref(), key.as_bytes());
    }

    // Replica calls went over the multiplexed transport inside TLS, not
    // over HTTP for want of it.
    for node in &c.nodes {
        let log = node.log_text();
        assert!(!log.contains("calling it over HTTP"), "{}", node.id);
        assert!(!log.contains("handshake refused"), "{}", node.id);
    }

    // The CLI reaches the same cluster with --ca and a client certificate.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["status", "--node", &c.nodes[0].http.to_string()])
        .args(["--ca", &pki.file("ca.crt")])
        .args(["--cert", &pki.file("client.crt")])
        .args(["--key", &pki.file("client.key")])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("node3"));
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused() {
    let pki = Pki::new("cluster CA");
    pki.node("node", &["127.0.0.1"]);
    pki.client_cert("client");
    let mut c = start(&pki, 1, "node", true).await;
    let url = c.nodes[0].url("/health");
    assert_eq!(c.client.get(&url).send().await.unwrap().status(), 200);

    let no_cert = pki.client(None).get(&url).send().await;
    assert!(no_cert.is_err(), "served without a client certificate");
    let other = Pki::new("another CA");
    other.client_cert("client");
    other.node("node", &["127.0.0.1"]);
    // Trusts the cluster's CA, presents another's certificate.
    let foreign = {
        let tls = client_config(
            &pki.path("ca.crt"),
            Some((&other.path("client.crt"), &other.path("client.key"))),
        )
        .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    };
    let refused = foreign.get(&url).send().await;
    assert!(refused.is_err(), "served a certificate of another CA");

    // A node with a certificate of another CA cannot join: the seed
    // refuses it, and it gives up naming why.
    let seed = format!("https://{}", c.nodes[0].http);
    let env = other.node_env("node", true);
    let mut env = env_refs(&env);
    env.push(("KVNODE_JOIN_TIMEOUT_SECS", "3"));
    let i = c.add_node_seeded(&seed, &env);
    let exit = c.nodes[i].wait_exit(Duration::from_secs(20));
    assert!(!exit.success());
    let log = c.nodes[i].log_text();
    assert!(log.contains("UnknownIssuer"), "{log}");
}

#[tokio::test]
async fn expired_and_wrong_host_certificates_are_refused_naming_why() {
    let pki = Pki::new("cluster CA");
    // Valid only for another address.
    pki.node("elsewhere", &["10.255.0.1", "db.invalid"]);
    let expired = {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let ca_key = rcgen::KeyPair::from_pem(&pki.ca.key_pem).unwrap();
        let ca = rcgen::CertificateParams::from_ca_cert_pem(&pki.ca.cert_pem)
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    };
    write(pki.dir.path(), "expired", &expired).unwrap();
    for (name, reason) in [
        ("elsewhere", "certificate not valid for name \"127.0.0.1\""),
        ("expired", "certificate expired"),
    ] {
        let env = pki.node_env(name, false);
        // The harness's own checks cannot pass; the node is asked directly.
        let ports = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http = ports.local_addr().unwrap();
        drop(ports);
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .args(["--listen", &http.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .envs(env.iter().cloned())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut last = String::new();
        for _ in 0..100 {
            match pki
                .client(None)
                .get(format!("https://{http}/health"))
                .send()
                .await
            {
                Ok(r) => panic!("{name}: served ({})", r.status()),
                Err(e) => last = error_chain(&e),
            }
            if last.contains(reason) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(last.contains(reason), "{name}: {last}");
    }
}

#[tokio::test]
async fn a_certificate_reloads_on_sighup_under_load_without_a_failed_request() {
    let pki = Pki::new("cluster CA");
    let first = pki.node("node", &["127.0.0.1"]);
    let c = start(&pki, 1, "node", false).await;
    let url = c.nodes[0].url("/health");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (pki_client, url, stop, done) =
            (c.client.clone(), url.clone(), stop.clone(), done.clone());
        // Two workers keep their connections; two open a new one per
        // request, so each of their requests is a handshake.
        let fresh = worker % 2 == 1;
        let ca = pki.path("ca.crt");
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let client = if fresh {
                    reqwest::Client::builder()
                        .use_preconfigured_tls(client_config(&ca, None).unwrap())
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap()
                } else {
                    pki_client.clone()
                };
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(r.status().to_string()),
                    Err(e) => failures.push(error_chain(&e)),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let served = |pki: &Pki| {
        let client = pki.client(None);
        let url = url.clone();
        async move { served_cert(&client.get(&url).send().await.unwrap()) }
    };
    assert_eq!(served(&pki).await, der(&first.cert_pem));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let second = create_leaf(
        &pki.ca,
        "node",
        &Leaf::Node {
            names: vec!["127.0.0.1".into()],
        },
        1,
    )
    .unwrap();
    replace(&pki.path("node.key"), &second.key_pem, 0o600);
    replace(&pki.path("node.crt"), &second.cert_pem, 0o644);
    c.nodes[0].hangup();
    let mut swapped = false;
    for _ in 0..50 {
        if served(&pki).await == der(&second.cert_pem) {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swapped, "the new certificate was never served");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A broken file: the node says so and keeps serving the second one.
    replace(&pki.path("node.crt"), "not a certificate\n", 0o644);
    c.nodes[0].hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served(&pki).await, der(&second.cert_pem));
    assert!(c.nodes[0].log_text().contains("TLS reload failed"));

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in load {
        failures.extend(worker.await.unwrap());
    }
    let total = done.load(Ordering::Relaxed);
    assert!(total > 50, "only {total} requests under load");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    println!("reload under load: {total} requests, 0 failed");
}

#[tokio::test]
async fn demo_secure_prints_a_token_and_files_that_reach_the_cluster() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // Two ports in a row: the node's HTTP and gossip.
    let base = loop {
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = http.local_addr().unwrap().port();
        if port < u16::MAX && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            break port;
        }
    };
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["demo", "--secure", "--nodes", "1"])
        .args(["--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    // The reader comes back with the token: the demo's later lines need an
    // open pipe.
    let printed = tokio::task::spawn_blocking(move || {
        let mut token = None;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 {
            if let Some(t) = line.trim().strip_prefix("TOKEN='") {
                token = Some(t.trim_end_matches('\'').to_owned());
            }
            if line.contains("kvnode status") {
                break;
            }
            line.clear();
        }
        (token, reader)
    });
    let (token, _stdout) = tokio::time::timeout(Duration::from_secs(60), printed)
        .await
        .expect("the demo formed its cluster")
        .unwrap();
    let token = token.expect("the demo printed a token");
    let pki = dir.path().join("pki");
    let tls = client_config(
        &pki.join("ca.crt"),
        Some((&pki.join("admin.crt"), &pki.join("admin.key"))),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{base}/v1/cluster");
    let open = client.get(&url).send().await.unwrap();
    assert_eq!(open.status(), 401);
    let admin = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(admin.status(), 200);
    // SAFETY: kill(2) on our own unreaped child with a valid signal.
    unsafe {
        libc::kill(i32::try_from(demo.id()).unwrap(), libc::SIGTERM);
    }
    assert!(demo.wait().unwrap().success());
}
