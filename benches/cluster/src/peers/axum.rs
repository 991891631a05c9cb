//! The bare axum peer: `GET /` answering `--value-size` static bytes, on
//! the same runtime setup as kvnode (tokio multi-thread, one worker per
//! core), so that kvnode's single-node GET can be read as a share of what
//! an axum handler doing nothing costs on this machine.
//!
//! It runs as a child process of this same binary (the hidden `serve-axum`
//! subcommand), so its CPU time is measured apart from the generator's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{http, Method, Request};

use crate::load::{self, Api, Op};
use crate::process::{free_tcp_ports, Processes};

/// A server that does not answer after this long is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The hidden subcommand's body: serves until killed.
pub fn serve(listen: SocketAddr, body_size: usize) -> Result<()> {
    let body = Bytes::from(vec![b'x'; body_size]);
    let app = Router::new().route(
        "/",
        get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            axum::serve(listener, app).await?;
            Ok(())
        })
}

/// A running bare axum server.
pub struct AxumPeer {
    procs: Processes,
    /// Its address.
    pub addr: SocketAddr,
}

impl AxumPeer {
    /// Starts `serve-axum` answering `body_size` bytes; waits until it does.
    pub async fn start(data_root: &Path, body_size: usize) -> Result<Self> {
        let mut procs = Processes::new(data_root, "axum")?;
        let addr = *free_tcp_ports(1)?.first().context("a port")?;
        let mut command = Command::new(std::env::current_exe().context("this binary's path")?);
        command
            .arg("serve-axum")
            .args(["--listen", &addr.to_string()])
            .args(["--body-size", &body_size.to_string()]);
        procs.spawn("axum", command)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            procs.check_running()?;
            if load::fetch(addr, None, load::get("/")?).await.is_ok() {
                return Ok(Self { procs, addr });
            }
            if Instant::now() > deadline {
                bail!("bare axum did not answer at {addr} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process, for its CPU time.
    pub fn processes(&self) -> &Processes {
        &self.procs
    }
}

/// `GET /`, whatever the operation: the peer of a GET only.
pub struct AxumApi;

impl Api for AxumApi {
    fn request(&self, _op: Op, _key: u64) -> http::Result<Request<Full<Bytes>>> {
        Request::builder()
            .method(Method::GET)
            .uri("/")
            .body(Full::new(Bytes::new()))
    }
}
