//! The accept loop and orderly shutdown.
//!
//! `run` takes a listener that is already bound (so callers, tests included, choose the address
//! and read the real port before anything runs) and a future that resolves when the server
//! should stop. Shutdown order: stop accepting, close every connection (which releases its
//! session's locks), wait for the connection tasks to finish, then stop the driver.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::connection::{self, ConnectionLimits};
use crate::core::{LockTable, TableConfig};
use crate::driver::Driver;

/// Everything the server needs to know; `main.rs` builds it from the command line.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Lease and value rules of the lock table.
    pub table: TableConfig,
    /// The longest frame accepted, in bytes of the line without its newline.
    pub max_frame_bytes: usize,
    /// Requests one connection may have in flight before the server stops reading from it.
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            table: TableConfig::default(),
            max_frame_bytes: protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The default for [`ServerConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// How long shutdown waits for connections to write their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves lock requests on `listener` until `shutdown` resolves, then closes every session and
/// returns once all connection tasks have ended.
pub async fn run(listener: TcpListener, config: ServerConfig, shutdown: impl Future<Output = ()>) {
    let (driver_tx, driver_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(Driver::new(LockTable::new(config.table.clone())).run(driver_rx));
    let limits = ConnectionLimits {
        max_frame_bytes: config.max_frame_bytes,
        max_in_flight: config.max_in_flight.max(1),
    };
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tasks.spawn(connection::serve(
                    stream,
                    peer,
                    driver_tx.clone(),
                    limits,
                    stop.clone(),
                ));
            }
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning, keep serving
                // the connections we have.
                warn!(error = %err, "accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    info!("shutting down: closing {} connection(s)", tasks.len());
    drop(listener);
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish within {DRAIN_TIMEOUT:?}");
    }
    drop(driver_tx);
    if let Err(err) = driver.await {
        error!(error = %err, "lock table driver failed");
    }
}
