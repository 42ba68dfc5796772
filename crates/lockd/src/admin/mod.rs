//! The admin HTTP API and the live dashboard (`lockd --http ADDR`): `/metrics`, `/healthz`,
//! `/readyz`, `/v1/locks`, `/v1/locks/{resource}` and the page at `/`.
//!
//! It runs on the server's own Tokio runtime (axum) and never touches the lock table: every
//! answer comes from the backend (the single server's driver or a cluster node's front end)
//! over the seam's channel, as a shared locks report for reads (on a single server rebuilt at
//! most every 250 ms, however many browsers poll) and as one message for a forced release, so
//! the table keeps a single total order of inputs. It holds only a weak sender to the backend,
//! so it never keeps a stopping server alive.
//!
//! It is read-only unless lockd runs with `--allow-force-release`, which also needs
//! `--admin-token-file`: then `DELETE /v1/locks/{resource}` with `Authorization: Bearer TOKEN`
//! ends the holder's session (see `LockTable::handle_force_release`). Without the flag that
//! route answers 403; with it, a missing or wrong token gets 401. Tokens are compared in
//! constant time and never logged.
//!
//! The port is bounded before anyone is trusted (`limits.rs`): at most `--admin-max-connections`
//! at once, counted apart from the lock port's connections so that a flood here never takes a
//! lock client's place, and a connection must send each request's head within
//! `--admin-header-timeout-ms` of connecting or of its previous answer.
//!
//! It reads the clock to give ages as of the request and to bound its wait for the backend.
//!
//! The dashboard is three static files compiled into the binary (`dashboard/`): no build step,
//! no CDN, nothing fetched from elsewhere.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::cmd::DEFAULT_STATUS_LIMIT;
use protocol::{FenceToken, LockMode, ResourceName, SessionId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::credentials::LiveCredentials;
use crate::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::report::{LocksReport, Order, View};
use crate::seam::{BackendMsg, Evicted, ForceReleaseRefused};
use crate::secret;

mod backup;
mod limits;

pub use limits::{
    AdminLimits, DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS,
    DEFAULT_ADMIN_MAX_RESTORE_BYTES,
};

/// How long a request waits for the backend before answering 503: a backend this slow is stuck
/// (on a disk that does not answer, usually), and saying so beats hanging the caller.
const BACKEND_PATIENCE: Duration = Duration::from_secs(2);

/// What the admin tasks share.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// Weak, so that the admin API never keeps the backend running during shutdown.
    pub(crate) backend: mpsc::WeakUnboundedSender<BackendMsg>,
    pub(crate) metrics: Arc<Metrics>,
    /// Whether forced releases are allowed (with the admin credential as bearer token).
    pub(crate) allow_force_release: bool,
    /// The admin credential, among the others in force.
    pub(crate) credentials: Arc<LiveCredentials>,
    /// True while the server accepts lock connections.
    pub(crate) ready: Arc<AtomicBool>,
    /// The largest page `GET /v1/locks` may ask for: `status`'s, `--max-status-limit`.
    pub(crate) max_page: u64,
}

/// Serves the admin API on `listener` until `stop` is cancelled, within `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: AdminLimits,
    stop: CancellationToken,
) {
    let metrics = Arc::clone(&state.metrics);
    let app = router(Arc::new(state), limits.max_restore_bytes);
    limits::serve(listener, app, limits, metrics, stop).await;
}

fn router(state: Arc<AdminState>, max_restore_bytes: usize) -> Router {
    Router::new()
        .route("/", get(dashboard_page))
        .route("/dashboard.js", get(dashboard_js))
        .route("/dashboard.css", get(dashboard_css))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/locks", get(list_locks))
        .route("/v1/locks/{*resource}", get(one_lock).delete(force_release))
        .route("/v1/reload", post(reload))
        .route("/v1/backup", get(backup::backup))
        .route(
            "/v1/restore",
            post(backup::restore).layer(DefaultBodyLimit::max(max_restore_bytes)),
        )
        .fallback(not_found)
        .with_state(state)
}

/// An error answer: a status and `{"error": "<sentence>"}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lockd admin\""),
            );
        }
        response
    }
}

/// Asks the backend something and waits at most [`BACKEND_PATIENCE`] for the answer.
async fn ask<T>(
    state: &AdminState,
    message: impl FnOnce(oneshot::Sender<T>) -> BackendMsg,
) -> Result<T, ApiError> {
    let gone = || ApiError::unavailable("lockd is shutting down");
    let backend = state.backend.upgrade().ok_or_else(gone)?;
    let (reply, answer) = oneshot::channel();
    backend.send(message(reply)).map_err(|_| gone())?;
    drop(backend);
    match tokio::time::timeout(BACKEND_PATIENCE, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err(ApiError::unavailable(format!(
            "the lock table did not answer within {} s (a stuck disk? see \
             lockd_store_commit_seconds in /metrics)",
            BACKEND_PATIENCE.as_secs()
        ))),
    }
}

async fn locks_report(state: &AdminState) -> Result<Arc<LocksReport>, ApiError> {
    ask(state, |reply| BackendMsg::Report { reply }).await
}

// ---- Dashboard ---------------------------------------------------------------------------

/// The page allows nothing but its own files: no inline script, no other origin.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                           connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                           form-action 'none'; frame-ancestors 'none'";

async fn dashboard_page() -> Response {
    static_file(
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    )
}

async fn dashboard_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/dashboard.js"),
    )
}

async fn dashboard_css() -> Response {
    static_file(
        "text/css; charset=utf-8",
        include_str!("dashboard/dashboard.css"),
    )
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

// ---- Probes and metrics ------------------------------------------------------------------

/// Liveness: the process runs and serves HTTP. Deliberately does not ask the backend, so a slow
/// disk makes lockd unready (below) but never gets it restarted, which would free every lock.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: lockd accepts lock connections, its backend answers, and it can serve: on a single
/// server, no commit to the data directory has been running for longer than
/// [`BACKEND_PATIENCE`]; on a cluster node, it knows a leader (and, as the leader, a majority
/// has acknowledged it lately).
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    let probe = |reply| BackendMsg::Probe {
        stuck_after: BACKEND_PATIENCE,
        reply,
    };
    let problem = match ask(&state, probe).await {
        Ok(Ok(())) => return "ready\n".into_response(),
        Ok(Err(not_ready)) => not_ready.to_string(),
        Err(err) => err.message,
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {problem}\n"),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    // The gauges of current holders and waiters come from the shared report. If the backend
    // does not answer, the counters are still worth serving (they show why: commit latency).
    match locks_report(&state).await {
        Ok(report) => state
            .metrics
            .set_lock_gauges(&report.gauges(Instant::now())),
        Err(err) => warn!(error = %err.message, "/metrics: lock gauges not updated"),
    }
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

// ---- Locks -------------------------------------------------------------------------------

/// `GET /v1/locks` query parameters.
#[derive(Debug, Deserialize)]
struct ListParams {
    /// Case-insensitive text to find in resource names, client names or peer addresses.
    q: Option<String>,
    /// `name` (the default) or `hot`.
    #[serde(default)]
    sort: Order,
    /// At most this many resources: `status`'s default page unless given, and never more than
    /// its largest.
    limit: Option<u64>,
    /// With `sort=name`: only resources whose names come after this one (the previous page's
    /// `next`).
    after: Option<String>,
}

async fn list_locks(
    State(state): State<Arc<AdminState>>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, err.body_text()))?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let max = state.max_page;
    let limit = params.limit.unwrap_or(DEFAULT_STATUS_LIMIT.min(max));
    if limit == 0 || limit > max {
        return Err(bad(format!(
            "limit must be from 1 to {max} (--max-status-limit); absent: {}",
            DEFAULT_STATUS_LIMIT.min(max)
        )));
    }
    let after = match params.after.as_deref() {
        Some(_) if params.sort != Order::Name => {
            return Err(bad(
                "`after` pages in name order; it takes sort=name".to_owned()
            ))
        }
        Some(after) => Some(
            ResourceName::new(after)
                .map_err(|err| bad(format!("`after` is not a resource name: {err}")))?,
        ),
        None => None,
    };
    let report = locks_report(&state).await?;
    let view = View {
        filter: params.q.as_deref(),
        order: params.sort,
        limit: Some(usize::try_from(limit).unwrap_or(usize::MAX)),
        after: after.as_ref(),
    };
    Ok(Json(report.render(Instant::now(), &view)).into_response())
}

/// `GET /v1/locks/{resource}`: every valid name is a lock, so an idle one is `200` with no
/// holders and no waiters (as the `status` op reports it); an invalid name is `400`.
async fn one_lock(
    State(state): State<Arc<AdminState>>,
    Path(resource): Path<String>,
) -> Result<Response, ApiError> {
    let resource = resource_name(&resource)?;
    let report = locks_report(&state).await?;
    Ok(Json(report.render_one(Instant::now(), &resource)).into_response())
}

/// `DELETE /v1/locks/{resource}` query parameters.
#[derive(Debug, Deserialize)]
struct ForceParams {
    /// Only the hold with this fencing token (one of several shared holders).
    token: Option<u64>,
}

/// Checks that a request for `what` carries the admin credential as its bearer token: `403` on a
/// lockd without one, `401` (logged with the caller) for a missing or wrong one.
fn require_admin(
    state: &AdminState,
    headers: &HeaderMap,
    operator: SocketAddr,
    what: &str,
) -> Result<(), ApiError> {
    let Some(expected) = state.credentials.current().admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{what} through the admin API needs lockd's --admin-token-file"),
        ));
    };
    if !bearer_matches(headers, &expected) {
        warn!(%operator, "refused {what} without the right admin token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "{what} needs `Authorization: Bearer <token>` with the token of --admin-token-file"
            ),
        ));
    }
    Ok(())
}

/// `POST /v1/reload`: reads the credential files again, as SIGHUP does (see
/// `credentials.rs`). Needs the admin credential as bearer token.
async fn reload(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, operator, "a reload")?;
    match state.credentials.reload() {
        Ok(()) => {
            info!(%operator, "credentials reloaded through the admin API");
            Ok(Json(json!({ "reloaded": true })).into_response())
        }
        Err(err) => {
            error!(%operator, "reload through the admin API failed: {err}");
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                err.to_string(),
            ))
        }
    }
}

/// `DELETE /v1/locks/{resource}[?token=N]`: an operator's forced release.
async fn force_release(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(operator): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(resource): Path<String>,
    params: Result<Query<ForceParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let admin_token = state.credentials.current().admin_token;
    let Some(expected) = admin_token.filter(|_| state.allow_force_release) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forced release is disabled; start lockd with --allow-force-release and \
             --admin-token-file to enable it",
        ));
    };
    // Checked first, so that a name is in the log only once it is known to be a valid one:
    // anything else could forge log lines.
    let resource = resource_name(&resource)?;
    if !bearer_matches(&headers, &expected) {
        warn!(%operator, %resource, "refused a forced release without the right admin token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "forced release needs `Authorization: Bearer <token>` with the token of \
             --admin-token-file",
        ));
    }
    let Query(params) =
        params.map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, err.body_text()))?;
    info!(%operator, %resource, token = params.token, "forced release requested");
    let token = params.token.map(FenceToken);
    let evicted = ask(&state, |reply| BackendMsg::ForceRelease {
        resource: resource.clone(),
        token,
        operator,
        reply,
    })
    .await?
    .map_err(refused)?;
    if evicted.is_empty() {
        let whom = match token {
            Some(token) => format!("nobody holds {resource} with token {token}"),
            None => format!("nobody holds {resource}"),
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{whom}; nothing was released"),
        ));
    }
    let released = evicted.iter().map(ReleasedJson::from).collect();
    Ok(Json(ForcedJson {
        resource: &resource,
        released,
    })
    .into_response())
}

/// The answer to a forced release.
#[derive(Debug, Serialize)]
struct ForcedJson<'a> {
    resource: &'a ResourceName,
    released: Vec<ReleasedJson<'a>>,
}

/// A hold a forced release ended, in the shape of a `/v1/locks` holder.
#[derive(Debug, Serialize)]
struct ReleasedJson<'a> {
    session: SessionId,
    client: Option<&'a str>,
    peer: Option<SocketAddr>,
    mode: LockMode,
    token: FenceToken,
    held_ms: u64,
}

impl<'a> From<&'a Evicted> for ReleasedJson<'a> {
    fn from(evicted: &'a Evicted) -> Self {
        let release = &evicted.release;
        ReleasedJson {
            session: release.session,
            client: evicted.session.as_ref().and_then(|s| s.client.as_deref()),
            peer: evicted.session.as_ref().map(|s| s.peer),
            mode: release.mode,
            token: release.token,
            held_ms: u64::try_from(release.held.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A forced release the backend would not carry out: a cluster follower (the operator should
/// ask the leader), or a cluster that could not commit it.
fn refused(refusal: ForceReleaseRefused) -> ApiError {
    let status = match refusal {
        ForceReleaseRefused::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
        ForceReleaseRefused::NotCommitted(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, refusal.to_string())
}

fn resource_name(name: &str) -> Result<ResourceName, ApiError> {
    ResourceName::new(name).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid resource name: {err}"),
        )
    })
}

/// Whether the request carries `Authorization: Bearer <expected>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && secret::matches(given.trim().as_bytes(), expected.as_bytes())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {}; try /, /metrics, /healthz, /readyz, /v1/locks or \
             /v1/locks/NAME",
            uri.path()
        ),
    )
}
