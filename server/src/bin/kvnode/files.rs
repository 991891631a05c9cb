//! `kvnode put-file PATH NAME` and `kvnode get-file NAME PATH`: a local file
//! to and from a cluster's file API (`/v1/files/{name}`), streamed both ways
//! with a progress bar on a terminal, so memory stays flat whatever the size.
//!
//! `put-file` hashes the file first and sends its SHA-256 in
//! `x-checksum-sha256`: a body that reached the node different is refused and
//! leaves no file. `get-file` writes into `PATH.kvnode-part`, checks the bytes
//! against the file's SHA-256 (its ETag), syncs, and only then renames it to
//! PATH, so PATH is never a torn or wrong file.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::tls_args::TlsArgs;

/// How to reach the node, shared by both commands.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// HTTP address of any node of the cluster.
    #[arg(long)]
    pub node: SocketAddr,
    /// Client token (`Authorization: Bearer`), for a node with a tokens file.
    #[arg(long, env = "KVNODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Consistency level of every chunk and of the manifest.
    #[arg(long, default_value = "quorum")]
    pub consistency: String,
    /// HTTPS to the node.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Flags of `kvnode put-file`.
#[derive(Debug, Clone, clap::Args)]
pub struct PutFileArgs {
    /// The local file to upload.
    pub path: PathBuf,
    /// Its name in the cluster.
    pub name: String,
    /// Content type stored with it and answered on reads.
    #[arg(long, default_value = "application/octet-stream")]
    pub content_type: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Flags of `kvnode get-file`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetFileArgs {
    /// The file's name in the cluster.
    pub name: String,
    /// Where to write it; refused if it exists, unless --overwrite.
    pub path: PathBuf,
    /// Replace PATH if it exists.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Bytes read from the disk or the network at a time.
const BUF: usize = 1 << 20;

impl NodeArgs {
    /// A client with no overall deadline (a file takes as long as it
    /// takes), and the URL of `name`.
    fn client_and_url(&self, name: &str) -> anyhow::Result<(reqwest::Client, String)> {
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let (builder, scheme) = self.tls.apply(builder)?;
        let url = format!(
            "{scheme}://{}/v1/files/{}?consistency={}",
            self.node,
            utf8_percent_encode(name, NON_ALPHANUMERIC),
            self.consistency
        );
        Ok((builder.build()?, url))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// A byte counter drawn on stderr, only on a terminal.
fn bar(what: &str, total: u64) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

/// `kvnode put-file PATH NAME`.
pub async fn put(args: PutFileArgs) -> anyhow::Result<()> {
    let path = args.path.clone();
    let size = std::fs::metadata(&path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    let hashing = bar("hashing  ", size);
    let hash = tokio::task::spawn_blocking({
        let (path, hashing) = (path.clone(), hashing.clone());
        move || sha256_of(&path, &hashing)
    })
    .await??;
    hashing.finish_and_clear();

    let (client, url) = args.node.client_and_url(&args.name)?;
    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("{}", path.display()))?;
    let sending = bar("uploading", size);
    let counted = sending.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, BUF);
    let stream = futures_util::StreamExt::inspect(stream, move |chunk| {
        if let Ok(bytes) = chunk {
            counted.inc(bytes.len() as u64);
        }
    });
    let start = Instant::now();
    let response = args
        .node
        .authorize(client.put(&url))
        .header(reqwest::header::CONTENT_TYPE, &args.content_type)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header("x-checksum-sha256", hex::encode(hash))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("uploading to {url}"))?;
    sending.finish_and_clear();
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::CREATED {
        bail!("the node refused the upload ({status}): {body}");
    }
    let manifest: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    println!(
        "{}: {} bytes in {} chunks as {:?}, sha256 {}, {:.1} MiB/s",
        path.display(),
        size,
        manifest
            .get("chunks")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len),
        args.name,
        hex::encode(hash),
        mib_per_sec(size, start.elapsed()),
    );
    Ok(())
}

/// `kvnode get-file NAME PATH`.
pub async fn get(args: GetFileArgs) -> anyhow::Result<()> {
    if !args.overwrite && args.path.exists() {
        bail!("{} exists (--overwrite replaces it)", args.path.display());
    }
    let (client, url) = args.node.client_and_url(&args.name)?;
    let start = Instant::now();
    let mut response = args
        .node
        .authorize(client.get(&url))
        .send()
        .await
        .with_context(|| format!("downloading {url}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        bail!("the node refused the download ({status}): {body}");
    }
    let expected = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned())
        .context("the answer has no ETag (the file's SHA-256) to check the bytes against")?;
    let size = response.content_length().unwrap_or(0);
    let part = part_path(&args.path);
    let mut out = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("{}", part.display()))?;
    let receiving = bar("downloading", size);
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let written = async {
        while let Some(bytes) = response.chunk().await? {
            hasher.update(&bytes);
            out.write_all(&bytes).await?;
            got += bytes.len() as u64;
            receiving.inc(bytes.len() as u64);
        }
        out.sync_all().await?;
        anyhow::Ok(())
    }
    .await;
    receiving.finish_and_clear();
    let actual = hex::encode(hasher.finalize());
    let checked = written.and_then(|()| {
        if actual == expected {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "the bytes received hash to {actual}, the file's SHA-256 is {expected}"
            ))
        }
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&part);
        return Err(e.context(format!(
            "downloading {:?}; nothing was written to {}",
            args.name,
            args.path.display()
        )));
    }
    std::fs::rename(&part, &args.path)
        .with_context(|| format!("renaming {} to {}", part.display(), args.path.display()))?;
    if let Some(dir) = args.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    println!(
        "{}: {} bytes, sha256 {} verified, {:.1} MiB/s",
        args.path.display(),
        got,
        actual,
        mib_per_sec(got, start.elapsed()),
    );
    Ok(())
}

fn sha256_of(path: &Path, progress: &indicatif::ProgressBar) -> anyhow::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        progress.inc(n as u64);
    }
}

/// Where a download is written until it is verified.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".kvnode-part");
    path.with_file_name(name)
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-6)
}
