//! The admin port's own accept loop: a cap on its connections and a timeout on every request
//! head, so that silent, half-sent and trickling connections cannot pile up.
//!
//! axum's `serve` has neither, so connections are served here with hyper directly. The cap is
//! a semaphore of the admin port alone: the lock port's `Admission` never sees an admin
//! connection, and `main.rs` raises the open-file limit for both caps, so a full admin port
//! leaves every lock client its place. A connection over the cap is answered 503 (if its socket
//! takes the few bytes at once) and closed before anything is read.
//!
//! hyper's header timeout runs from the moment a connection waits for a request head: from the
//! accept, and on a kept-alive connection from the end of its previous answer, so it is the
//! keep-alive idle timeout as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// The default for [`AdminLimits::max_connections`]: a few dashboards, scrapers and operators,
/// and a small fraction of the file descriptors lockd asks for.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// The default for [`AdminLimits::header_timeout`]: a browser or scraper sends its request at
/// once, and a dashboard polls every second or two, so its connection never idles this long.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The default for [`AdminLimits::max_restore_bytes`]: a backup of a million values of a few
/// hundred bytes, with room to spare.
pub const DEFAULT_ADMIN_MAX_RESTORE_BYTES: usize = 1 << 30;

/// What one admin connection may take.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Open admin connections at most (`--admin-max-connections`).
    pub max_connections: usize,
    /// A connection must send a complete request head within this time of connecting or of
    /// its previous answer, or it is closed (`--admin-header-timeout-ms`).
    pub header_timeout: Duration,
    /// The largest backup `POST /v1/restore` takes (`--admin-max-restore-bytes`); every other
    /// request body is limited to axum's default, 2 MB.
    pub max_restore_bytes: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            max_restore_bytes: DEFAULT_ADMIN_MAX_RESTORE_BYTES,
        }
    }
}

/// The answer of a connection over the cap.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 65\r\n\r\n\
too many admin connections open (--admin-max-connections); retry\n";

/// Serves `app` on `listener` until `stop` is cancelled, then lets the requests in flight
/// finish (the caller bounds that wait).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Usually out of file descriptors: back off rather than spin.
                warn!(error = %err, "admin accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.admin_connections_refused.inc();
            debug!(%peer, "refusing an admin connection: too many open");
            refuse(&stream);
            continue;
        };
        metrics.admin_connections.inc();
        let service = TowerToHyperService::new(app.clone().layer(Extension(ConnectInfo(peer))));
        let metrics = Arc::clone(&metrics);
        let stop = stop.clone();
        tasks.spawn(async move {
            serve_connection(stream, service, limits.header_timeout, stop, peer).await;
            metrics.admin_connections.dec();
            drop(slot);
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Serves one admin connection until it ends, its header timeout passes, or `stop` (then it
/// finishes the request in flight and closes).
async fn serve_connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    header_timeout: Duration,
    stop: CancellationToken,
    peer: SocketAddr,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = served {
        // Timeouts, resets and bad requests: the client's doing, and not worth more.
        debug!(%peer, error = %err, "admin connection ended");
    }
}

/// Tells a connection over the cap why it is closed, if its socket takes the answer at once
/// (it never waits on the client), and closes it.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(OVER_CAP);
}
