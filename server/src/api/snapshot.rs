//! `POST /admin/v1/snapshot`: this node saves a backup of itself
//! ([`snapshot`](crate::snapshot)) into a directory on its own host.
//!
//! The body is `{"dir": "/absolute/path"}`; the directory must not exist
//! and its parent must. The node answers 202 and saves in the background
//! (a checkpoint is quick, but checksumming every table of a large engine
//! outlasts a request's deadline); `GET /v1/node` shows the save under
//! `"snapshot"`, and `kvnode snapshot save` follows it there. 400 for a
//! body without an absolute `dir`, 403 for one outside `--snapshot-root`
//! when that is set (checked on the real path of `dir`'s parent, so `..`
//! and symbolic links do not lead out), 409 while another save runs or when
//! the node is not AVAILABLE (a joining node's engine is not yet its ranges).
//! While it runs, `bytes_checked` of `bytes_total` say how far the
//! checksums are.
//!
//! Hard links make the engine's part of a snapshot nearly free when `dir`
//! is on the data dir's file system; elsewhere the tables are copied.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::cluster::unix_ms;
use super::{read_body, ApiError, AppState, BodyLimit};
use crate::membership::ring_digest;
use crate::snapshot::{self, Origin};
use crate::view::NodeState;

/// Path of the snapshot route.
pub const SNAPSHOT_PATH: &str = "/admin/v1/snapshot";
/// Largest body: a path (`PATH_MAX` is 4096) in a little JSON.
pub(crate) const MAX_SNAPSHOT_REQUEST: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveRequest {
    dir: PathBuf,
}

/// This node's saves: the one running, and how the last one ended.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    status: Mutex<SnapshotStatus>,
}

/// What `GET /v1/node` shows under `"snapshot"`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SnapshotStatus {
    /// Whether a save runs now.
    running: bool,
    /// The directory of the running or last save.
    dir: Option<String>,
    /// Saves finished, well or not, since the node started.
    saves: u64,
    /// Bytes of the running save's files checksummed so far.
    bytes_checked: u64,
    /// Bytes of its files (0 until the checkpoint is made).
    bytes_total: u64,
    /// How the last save ended.
    last: Option<SnapshotOutcome>,
}

/// The end of one save.
#[derive(Debug, Clone, Serialize)]
struct SnapshotOutcome {
    /// Files written, the manifest apart (0 on an error).
    files: usize,
    /// Their bytes.
    bytes: u64,
    /// How long the save took.
    elapsed_ms: u64,
    /// Why it failed, if it did (the directory is then removed).
    error: Option<String>,
}

impl Snapshots {
    /// Marks a save into `dir` as running, unless one is.
    fn begin(&self, dir: &std::path::Path) -> Result<(), ApiError> {
        let mut status = self.status.lock();
        if status.running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "cannot_snapshot",
                format!(
                    "a snapshot into {} is being saved",
                    status.dir.as_deref().unwrap_or("?")
                ),
            ));
        }
        status.running = true;
        status.dir = Some(dir.display().to_string());
        status.bytes_checked = 0;
        status.bytes_total = 0;
        Ok(())
    }

    fn progress(&self, done: u64, total: u64) {
        let mut status = self.status.lock();
        status.bytes_checked = done;
        status.bytes_total = total;
    }

    fn finish(&self, outcome: SnapshotOutcome) {
        let mut status = self.status.lock();
        status.running = false;
        status.saves += 1;
        status.last = Some(outcome);
    }

    /// The status, for `/v1/node`.
    pub(crate) fn status(&self) -> SnapshotStatus {
        self.status.lock().clone()
    }
}

/// Refuses an absolute `dir` that would not be created inside `root`.
fn within_root(dir: &Path, root: &Path) -> Result<(), ApiError> {
    let outside = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "snapshot_outside_root",
            format!(
                "{} is not inside --snapshot-root {}: {why}",
                dir.display(),
                root.display()
            ),
        )
    };
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(outside("it goes up with `..`".into()));
    }
    let (Some(parent), Some(_)) = (dir.parent(), dir.file_name()) else {
        return Err(outside("it names no new directory".into()));
    };
    let real =
        |p: &Path| std::fs::canonicalize(p).map_err(|e| outside(format!("{}: {e}", p.display())));
    if real(parent)?.starts_with(real(root)?) {
        Ok(())
    } else {
        Err(outside("its parent lies elsewhere".into()))
    }
}

/// `POST /admin/v1/snapshot` (module doc).
pub(crate) async fn save(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, BodyLimit::Body(MAX_SNAPSHOT_REQUEST)).await?;
    let request: SaveRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_snapshot",
            format!("expected {{\"dir\": \"/absolute/path\"}}: {e}"),
        )
    })?;
    let dir = request.dir;
    if !dir.is_absolute() {
        return Err(ApiError::bad_request(
            "bad_snapshot",
            format!("{} is not an absolute path", dir.display()),
        ));
    }
    if let Some(root) = &state.config.snapshot_root {
        within_root(&dir, root)?;
    }
    let node_state = state.membership.state();
    if node_state != NodeState::Available {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_snapshot",
            format!(
                "this node is {}: only an AVAILABLE node holds its ranges",
                node_state.as_str()
            ),
        ));
    }
    let view = state.membership.view();
    let origin = Origin {
        node_id: state.membership.self_id().to_string(),
        cluster_id: state.config.cluster_id.clone(),
        generation: state.membership.generation(),
        state: node_state.as_str().to_owned(),
        ring_digest: ring_digest(view.ring.as_ref()),
        ring_members: view
            .ring
            .iter()
            .flat_map(|r| r.members().iter().map(|m| m.id.to_string()))
            .collect(),
        tokens: state.membership.tokens().len(),
    };
    state.snapshots.begin(&dir)?;
    tracing::info!(dir = %dir.display(), "snapshot requested");
    let snapshots = Arc::clone(&state.snapshots);
    let storage = state.storage.clone();
    let data_dir = state.config.data_dir.clone();
    let target = dir.clone();
    state.tasks.spawn("snapshot", async move {
        let start = Instant::now();
        let reporter = Arc::clone(&snapshots);
        let saved = tokio::task::spawn_blocking(move || {
            snapshot::save(
                &storage,
                &data_dir,
                &target,
                origin,
                unix_ms(),
                &mut |done, total| reporter.progress(done, total),
            )
        })
        .await
        .map_err(|e| format!("snapshot task: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = match &saved {
            Ok(manifest) => {
                tracing::info!(
                    files = manifest.files.len(),
                    bytes = manifest.total_bytes(),
                    elapsed_ms,
                    "snapshot saved"
                );
                SnapshotOutcome {
                    files: manifest.files.len(),
                    bytes: manifest.total_bytes(),
                    elapsed_ms,
                    error: None,
                }
            }
            Err(e) => SnapshotOutcome {
                files: 0,
                bytes: 0,
                elapsed_ms,
                error: Some(e.clone()),
            },
        };
        snapshots.finish(outcome);
        saved.map(|_| ())
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "saving", "dir": dir.display().to_string() })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_new_directories_under_the_root_pass() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let inside = root.path().join("deeper");
        std::fs::create_dir(&inside).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("link")).unwrap();
        assert!(within_root(&root.path().join("snap"), root.path()).is_ok());
        assert!(within_root(&inside.join("snap"), root.path()).is_ok());
        for bad in [
            elsewhere.path().join("snap"),
            root.path().join("..").join("snap"),
            root.path().join("link").join("snap"),
            root.path().join("missing").join("snap"),
            PathBuf::from("/"),
        ] {
            let e = within_root(&bad, root.path()).unwrap_err();
            assert_eq!(
                e.status_and_message().0,
                StatusCode::FORBIDDEN,
                "{}",
                bad.display()
            );
        }
    }
}
