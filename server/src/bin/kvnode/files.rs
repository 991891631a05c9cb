//! `kvnode put-file PATH NAME` and `kvnode get-file NAME PATH`: a local file
//! to and from a cluster's file API (`/v1/files/{name}`), streamed both ways
//! with a progress bar on a terminal, so memory stays flat whatever the size.
//!
//! `put-file` is resumable and sends only what the cluster lacks: it cuts
//! the file into the cluster's chunks and hashes each, asks which chunks
//! are missing (`POST /v1/chunks/missing`), sends those
//! (`PUT /v1/chunks/{sha256}`, each checked against its name by the node),
//! and commits the file from its chunk list (`POST /v1/files/{name}`), which
//! the node checks chunk by chunk and against the whole file's SHA-256. Run
//! again after an interruption, it sends only the chunks still missing; a
//! file uploaded twice is sent once. `get-file` writes into `PATH.kvnode-part`, checks the bytes
//! against the file's SHA-256 (its ETag), syncs, and only then renames it to
//! PATH, so PATH is never a torn or wrong file.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use strata_server::files::MAX_MISSING_QUERY;
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
    /// takes), and the node's base URL.
    fn client_and_base(&self) -> anyhow::Result<(reqwest::Client, String)> {
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let (builder, scheme) = self.tls.apply(builder)?;
        Ok((builder.build()?, format!("{scheme}://{}", self.node)))
    }

    /// [`NodeArgs::client_and_base`] with the URL of the file `name`.
    fn client_and_url(&self, name: &str) -> anyhow::Result<(reqwest::Client, String)> {
        let (client, base) = self.client_and_base()?;
        let url = format!(
            "{base}/v1/files/{}?consistency={}",
            utf8_percent_encode(name, NON_ALPHANUMERIC),
            self.consistency
        );
        Ok((client, url))
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
    let node = Uploader::new(&args.node)?;
    let chunk_size = node.chunk_size().await?;
    let hashing = bar("hashing  ", size);
    let (chunks, whole) = tokio::task::spawn_blocking({
        let (path, hashing) = (path.clone(), hashing.clone());
        move || hash_chunks(&path, chunk_size, &hashing)
    })
    .await??;
    hashing.finish_and_clear();

    let start = Instant::now();
    let missing = node.missing(&chunks).await?;
    let mut sent = Sent::default();
    node.send(&path, chunk_size, &chunks, &missing, &mut sent)
        .await?;
    let commit = serde_json::json!({
        "size": size,
        "chunk_size": chunk_size,
        "chunks": chunks.iter().map(hex::encode).collect::<Vec<_>>(),
        "sha256": hex::encode(whole),
        "content_type": args.content_type,
    });
    // A chunk can go between the question and the commit (a node's disk
    // lost, or a GC that ran between): the commit names it, and it is sent
    // again.
    let mut tries = 0;
    let manifest = loop {
        tries += 1;
        match node.commit(&args.name, &commit).await? {
            Commit::Done(manifest) => break manifest,
            Commit::Missing(again) if tries < COMMIT_TRIES => {
                let again: HashSet<[u8; 32]> = again.iter().filter_map(|h| decode32(h)).collect();
                node.send(&path, chunk_size, &chunks, &again, &mut sent)
                    .await?;
            }
            Commit::Missing(again) => bail!(
                "the cluster still lacks {} chunks after {COMMIT_TRIES} commits; run the same \
                 command again",
                again.len()
            ),
        }
    };
    println!(
        "{}: {} bytes in {} chunks as {:?}, sha256 {}; sent {} chunks ({} bytes), {} already stored; {:.1} MiB/s",
        path.display(),
        size,
        chunks.len(),
        args.name,
        manifest
            .get("sha256")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default(),
        sent.chunks,
        sent.bytes,
        chunks.len().saturating_sub(sent.chunks),
        mib_per_sec(size, start.elapsed()),
    );
    Ok(())
}

/// Commits tried before `put-file` gives up on chunks that keep going.
const COMMIT_TRIES: usize = 3;

/// Tries of one chunk's `PUT` before the upload fails.
const CHUNK_TRIES: usize = 3;

/// Chunk uploads in flight.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What `put-file` sent.
#[derive(Debug, Default)]
struct Sent {
    chunks: usize,
    bytes: u64,
}

/// The answer to a commit.
enum Commit {
    /// The file exists; its manifest.
    Done(serde_json::Value),
    /// These chunks (hex) must be sent first.
    Missing(Vec<String>),
}

/// The calls of a resumable upload to one node.
struct Uploader<'a> {
    args: &'a NodeArgs,
    client: reqwest::Client,
    base: String,
}

impl<'a> Uploader<'a> {
    fn new(args: &'a NodeArgs) -> anyhow::Result<Self> {
        let (client, base) = args.client_and_base()?;
        Ok(Self { args, client, base })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}?consistency={}", self.base, self.args.consistency)
    }

    /// The cluster's chunk size, which the file is cut by.
    async fn chunk_size(&self) -> anyhow::Result<u64> {
        let answer = self.ask_missing(&[]).await?;
        answer
            .get("chunk_size")
            .and_then(serde_json::Value::as_u64)
            .filter(|&n| n > 0)
            .context("the node named no chunk size")
    }

    async fn ask_missing(&self, chunks: &[[u8; 32]]) -> anyhow::Result<serde_json::Value> {
        let body =
            serde_json::json!({ "chunks": chunks.iter().map(hex::encode).collect::<Vec<_>>() });
        let response = self
            .args
            .authorize(self.client.post(self.url("/v1/chunks/missing")))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("asking {} for missing chunks", self.base))?;
        json_or_refusal(
            response,
            reqwest::StatusCode::OK,
            "the missing-chunks query",
        )
        .await
    }

    /// The chunks of `chunks` the cluster does not hold.
    async fn missing(&self, chunks: &[[u8; 32]]) -> anyhow::Result<HashSet<[u8; 32]>> {
        let mut missing = HashSet::new();
        for batch in chunks.chunks(MAX_MISSING_QUERY) {
            let answer = self.ask_missing(batch).await?;
            let named = answer
                .get("missing")
                .and_then(serde_json::Value::as_array)
                .context("the node's answer names no missing chunks")?;
            missing.extend(named.iter().filter_map(|h| decode32(h.as_str()?)));
        }
        Ok(missing)
    }

    /// Sends each chunk of `path` in `wanted` once, a few at a time.
    async fn send(
        &self,
        path: &Path,
        chunk_size: u64,
        chunks: &[[u8; 32]],
        wanted: &HashSet<[u8; 32]>,
        sent: &mut Sent,
    ) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        let todo: Vec<(usize, [u8; 32])> = chunks
            .iter()
            .enumerate()
            .filter(|(_, h)| wanted.contains(*h) && seen.insert(**h))
            .map(|(i, h)| (i, *h))
            .collect();
        let size = std::fs::metadata(path)?.len();
        let total: u64 = todo
            .iter()
            .map(|(i, _)| chunk_size.min(size - *i as u64 * chunk_size))
            .sum();
        let sending = bar("uploading", total);
        let uploads = todo.into_iter().map(|(i, hash)| {
            let sending = sending.clone();
            async move {
                let bytes = read_chunk(path, i as u64 * chunk_size, chunk_size).await?;
                let len = bytes.len() as u64;
                self.put_chunk(hash, bytes).await?;
                sending.inc(len);
                anyhow::Ok(len)
            }
        });
        let mut uploads = futures_util::stream::iter(uploads).buffer_unordered(CHUNKS_IN_FLIGHT);
        let result = async {
            while let Some(len) = uploads.next().await {
                sent.chunks += 1;
                sent.bytes += len?;
            }
            anyhow::Ok(())
        }
        .await;
        sending.finish_and_clear();
        result.context(
            "uploading chunks; run the same command again: chunks already stored are not sent again",
        )
    }

    async fn put_chunk(&self, hash: [u8; 32], bytes: bytes::Bytes) -> anyhow::Result<()> {
        let url = self.url(&format!("/v1/chunks/{}", hex::encode(hash)));
        let mut last = None;
        for _ in 0..CHUNK_TRIES {
            let sent = self
                .args
                .authorize(self.client.put(&url))
                .body(bytes.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => return Ok(()),
                // A refusal of the chunk itself will not change.
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    bail!(
                        "chunk {} refused ({status}): {}",
                        hex::encode(hash),
                        r.text().await.unwrap_or_default()
                    )
                }
                Ok(r) => {
                    last = Some(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ))
                }
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        bail!(
            "chunk {} not stored after {CHUNK_TRIES} tries: {}",
            hex::encode(hash),
            last.unwrap_or_default()
        )
    }

    async fn commit(&self, name: &str, commit: &serde_json::Value) -> anyhow::Result<Commit> {
        let url = self.url(&format!(
            "/v1/files/{}",
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        ));
        let response = self
            .args
            .authorize(self.client.post(&url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(commit.to_string())
            .send()
            .await
            .with_context(|| format!("committing {name:?}"))?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
            let missing = body
                .get("missing")
                .and_then(serde_json::Value::as_array)
                .context("a 409 without the missing chunks")?;
            return Ok(Commit::Missing(
                missing
                    .iter()
                    .filter_map(|h| Some(h.as_str()?.to_owned()))
                    .collect(),
            ));
        }
        json_or_refusal(response, reqwest::StatusCode::CREATED, "the commit")
            .await
            .map(Commit::Done)
    }
}

/// The JSON body of an answer with `expected` status, or an error with
/// the node's own.
async fn json_or_refusal(
    response: reqwest::Response,
    expected: reqwest::StatusCode,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status != expected {
        bail!("the node refused {what} ({status}): {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: the answer is not JSON"))
}

fn decode32(hex_digits: &str) -> Option<[u8; 32]> {
    strata_server::files::decode_hash(hex_digits)
}

/// Chunk `offset..offset + len` of `path` (shorter at the end).
async fn read_chunk(path: &Path, offset: u64, len: u64) -> anyhow::Result<bytes::Bytes> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(BUF));
        file.take(len).read_to_end(&mut buf)?;
        anyhow::Ok(bytes::Bytes::from(buf))
    })
    .await?
}

/// Each chunk's SHA-256 and the whole file's, in one read of `path`.
fn hash_chunks(
    path: &Path,
    chunk_size: u64,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<[u8; 32]>, [u8; 32])> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut buf = Vec::with_capacity(usize::try_from(chunk_size).unwrap_or(BUF));
    loop {
        buf.clear();
        let n = (&mut file).take(chunk_size).read_to_end(&mut buf)?;
        if n == 0 {
            return Ok((chunks, whole.finalize().into()));
        }
        whole.update(&buf);
        chunks.push(Sha256::digest(&buf).into());
        progress.inc(n as u64);
    }
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

/// Where a download is written until it is verified.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".kvnode-part");
    path.with_file_name(name)
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-6)
}
