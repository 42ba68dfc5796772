//! `GET /v1/backup`: a consistent copy of the store, taken while lockd keeps serving.
//!
//! The backend hands over a snapshot (a redb read transaction, taken between two commits, so
//! it holds every write acknowledged before the request); the copy is written to a temporary
//! file on the blocking pool, while commits go on, and streamed to the operator. The body is a
//! `lockd.redb` file: stop lockd, put it in the data directory, start lockd (docs/operations.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use tokio_util::io::ReaderStream;
use tracing::info;

use super::{ask, require_admin, AdminState, ApiError};
use crate::seam::{BackendMsg, BackupRefused};
use crate::store::{BackupStats, DB_FILE};

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
                BackupRefused::Cluster => StatusCode::NOT_IMPLEMENTED,
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
