//! `kvnode snapshot save DIR --node ADDR`: asks a running node to back
//! itself up into DIR on its own host (`POST /admin/v1/snapshot`) and
//! follows the save; `kvnode snapshot restore SRC DATA_DIR`: checks a
//! snapshot's checksums and copies it into an empty data dir for a node to
//! start from. The layout is in [`strata_server::snapshot`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_server::snapshot;
use strata_server::SNAPSHOT_PATH;

use crate::admin::{AdminArgs, AdminError, Node};

/// `kvnode snapshot`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Make a running node save a consistent snapshot of itself (engine
    /// checkpoint, node.json, checksums) into DIR, on the node's host.
    Save(SaveArgs),
    /// Check a snapshot's checksums and copy it into DATA_DIR, which must
    /// be empty or absent; then start the node with --data-dir DATA_DIR.
    Restore(RestoreArgs),
}

/// Flags of `kvnode snapshot save`.
#[derive(Debug, Clone, clap::Args)]
pub struct SaveArgs {
    /// Directory to create on the node's host (it must not exist; a
    /// relative path is taken from this command's working directory).
    pub dir: PathBuf,
    /// The node, its secret and how long to follow it.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Flags of `kvnode snapshot restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot directory (holding snapshot.json).
    pub src: PathBuf,
    /// The new node's data dir: empty or absent.
    pub data_dir: PathBuf,
}

/// Runs a `kvnode snapshot` subcommand.
pub async fn run(command: SnapshotCommand) -> Result<(), AdminError> {
    match command {
        SnapshotCommand::Save(args) => save(args).await,
        SnapshotCommand::Restore(args) => restore(&args),
    }
}

async fn save(args: SaveArgs) -> Result<(), AdminError> {
    let dir = std::path::absolute(&args.dir).map_err(|source| AdminError::Path {
        path: args.dir.clone(),
        source,
    })?;
    let node = Node::new(&args.admin)?;
    let saves_before = status(&node)
        .await
        .and_then(|s| s.get("saves")?.as_u64())
        .unwrap_or(0);
    node.post(
        SNAPSHOT_PATH,
        Some(serde_json::json!({ "dir": dir.display().to_string() })),
    )
    .await?;
    let deadline = Duration::from_secs(args.admin.timeout_secs);
    let start = Instant::now();
    // Drawn on stderr, and only on a terminal.
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "checksumming {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(status) = status(&node).await else {
            continue;
        };
        let count = |k: &str| status.get(k).and_then(serde_json::Value::as_u64);
        let running = status.get("running").and_then(serde_json::Value::as_bool);
        if count("saves").unwrap_or(0) <= saves_before || running != Some(false) {
            bar.set_length(count("bytes_total").unwrap_or(0));
            bar.set_position(count("bytes_checked").unwrap_or(0));
            continue;
        }
        bar.finish_and_clear();
        let last = status.get("last").cloned().unwrap_or_default();
        if let Some(error) = last.get("error").and_then(|e| e.as_str()) {
            return Err(AdminError::Refused {
                status: 500,
                body: format!("the snapshot failed: {error}"),
            });
        }
        println!(
            "{}: snapshot saved in {} on the node's host: {} files, {} bytes, in {:.1} s",
            args.admin.node,
            dir.display(),
            last.get("files").cloned().unwrap_or_default(),
            last.get("bytes").cloned().unwrap_or_default(),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    Err(AdminError::Timeout(deadline))
}

/// The node's `"snapshot"` status, if it answers.
async fn status(node: &Node) -> Option<serde_json::Value> {
    let body = node.get("/v1/node").await.ok()?.bytes().await.ok()?;
    let report: serde_json::Value = serde_json::from_slice(&body).ok()?;
    report.get("snapshot").cloned()
}

fn restore(args: &RestoreArgs) -> Result<(), AdminError> {
    let manifest = snapshot::restore(&args.src, &args.data_dir)?;
    println!(
        "restored the snapshot of {} (cluster {}, saved at {} ms since the epoch, ring {}) into {}: {} files, {} bytes, every checksum verified",
        manifest.origin.node_id,
        manifest.origin.cluster_id,
        manifest.created_unix_ms,
        manifest.origin.ring_digest,
        args.data_dir.display(),
        manifest.files.len(),
        manifest.total_bytes()
    );
    println!(
        "start it with --node-id {} --data-dir {}",
        manifest.origin.node_id,
        args.data_dir.display()
    );
    Ok(())
}
