//! `GET /v1/backup`: a consistent copy of the store, taken while lockd keeps serving; and
//! `POST /v1/restore`: a backup loaded into an empty cluster.
//!
//! The backend hands over a snapshot: on a single server a redb read transaction, taken between
//! two commits; on a cluster's leader, once a majority has confirmed it still leads, a copy of
//! its table's values and highest token. Either holds every write acknowledged before the
//! request. The copy is written to a temporary file on the blocking pool, while commits go on,
//! and streamed to the operator. The body is a single server's `lockd.redb` file, whichever
//! mode took it (docs/operations.md says how to restore it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::io::ReaderStream;
use tracing::info;

use super::{ask, require_admin, AdminState, ApiError};
use crate::seam::{BackendMsg, BackupRefused, RestoreRefused};
use crate::store::{BackupStats, RedbStore, StoredState, DB_FILE};

/// A written copy, open for reading; its file is already unlinked.
struct WrittenCopy {
    file: std::fs::File,
    bytes: u64,
    stats: BackupStats,
}

pub(super) async fn backup(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, operator, "a backup")?;
    let started = Instant::now();
    let snapshot = ask(&state, |reply| BackendMsg::Backup { reply })
        .await?
        .map_err(|refused| {
            let status = match refused {
                BackupRefused::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
                BackupRefused::Unconfirmed(_) => StatusCode::SERVICE_UNAVAILABLE,
                BackupRefused::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::new(status, refused.to_string())
        })?;
    let written = tokio::task::spawn_blocking(move || -> Result<WrittenCopy, String> {
        let dir = tempfile::tempdir().map_err(|err| format!("no temporary directory: {err}"))?;
        let path = dir.path().join(DB_FILE);
        let stats = snapshot.write_to(&path).map_err(|err| err.to_string())?;
        let file = std::fs::File::open(&path).map_err(|err| err.to_string())?;
        let bytes = file.metadata().map_err(|err| err.to_string())?.len();
        // Dropping `dir` unlinks the copy; the open file stays readable until it is sent.
        Ok(WrittenCopy { file, bytes, stats })
    })
    .await
    .map_err(|err| err.to_string())
    .and_then(|written| written)
    .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err))?;
    info!(
        %operator,
        values = written.stats.values,
        bytes = written.bytes,
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "backup taken"
    );
    let body = Body::from_stream(ReaderStream::new(tokio::fs::File::from_std(written.file)));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, written.bytes)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{DB_FILE}\""),
        )
        .header("x-lockd-backup-values", written.stats.values)
        .body(body)
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
}

/// How long a restore may take to be committed: the values of a large backup go through the
/// log in many entries.
const RESTORE_PATIENCE: Duration = Duration::from_secs(600);

/// `POST /v1/restore` with a backup as the body (a `lockd.redb` file, as `GET /v1/backup`
/// gives): loads its values into an empty cluster, through the log, and makes every later
/// fencing token larger than the backup's reservation. A single server refuses (it restores by
/// starting on the file); so does a follower, naming the leader, and a cluster that holds any
/// value.
pub(super) async fn restore(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, operator, "a restore")?;
    let started = Instant::now();
    let stored = tokio::task::spawn_blocking(move || -> Result<StoredState, String> {
        let dir = tempfile::tempdir().map_err(|err| format!("no temporary directory: {err}"))?;
        std::fs::write(dir.path().join(DB_FILE), &body)
            .map_err(|err| format!("cannot keep the upload: {err}"))?;
        let (_, stored) = RedbStore::open(dir.path())
            .map_err(|err| format!("the body is not a lockd backup: {err}"))?;
        Ok(stored)
    })
    .await
    .map_err(|err| err.to_string())
    .and_then(|stored| stored)
    .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, err))?;
    let gone = || ApiError::unavailable("lockd is shutting down");
    let backend = state.backend.upgrade().ok_or_else(gone)?;
    let (reply, answer) = oneshot::channel();
    backend
        .send(BackendMsg::Restore {
            state: stored,
            reply,
        })
        .map_err(|_| gone())?;
    drop(backend);
    let restored = match tokio::time::timeout(RESTORE_PATIENCE, answer).await {
        Ok(Ok(outcome)) => outcome.map_err(|refused| {
            let status = match refused {
                RestoreRefused::SingleServer => StatusCode::NOT_IMPLEMENTED,
                RestoreRefused::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
                RestoreRefused::NotEmpty(_) => StatusCode::CONFLICT,
                RestoreRefused::NotCommitted(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError::new(status, refused.to_string())
        })?,
        Ok(Err(_)) => return Err(gone()),
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "the restore was not committed within {} s; what was committed stays",
                RESTORE_PATIENCE.as_secs()
            )))
        }
    };
    info!(
        %operator,
        values = restored.values,
        tokens_above = restored.tokens_above,
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "backup restored"
    );
    Ok(Json(json!({
        "restored_values": restored.values,
        "tokens_above": restored.tokens_above,
    }))
    .into_response())
}
