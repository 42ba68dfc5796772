//! The accept loop and orderly shutdown.
//!
//! `run` takes a listener that is already bound (so callers, tests included, choose the address
//! and read the real port before anything runs) and a future that resolves when the server
//! should stop. Shutdown order: stop accepting, close every connection (which releases its
//! session's locks), wait for the connection tasks to finish, then stop the driver.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::connection::{self, ConnectionLimits};
use crate::core::{LockTable, TableConfig};
use crate::driver::Driver;
use crate::store::{CommitBatch, RedbStore, Snapshot, Store, StoreError};

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

/// A server ready to run: its table restored from the store, its first tokens reserved.
pub struct Server {
    config: ServerConfig,
    table: LockTable,
    store: Box<dyn Store>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store in `data_dir` (the caller holds the directory's [`DataDir`] lock) and
    /// restores the values and the token reservation from it.
    ///
    /// [`DataDir`]: crate::data_dir::DataDir
    pub fn open(config: ServerConfig, data_dir: &Path) -> Result<Server, StoreError> {
        let (store, snapshot) = RedbStore::open(data_dir)?;
        Server::with_store(config, Box::new(store), snapshot)
    }

    /// A server over any store, starting from `snapshot` (what that store holds). Makes the
    /// first token reservation durable before returning, so the first grant needs no fsync
    /// and a store that cannot be written stops the server before it serves anyone.
    pub fn with_store(
        config: ServerConfig,
        mut store: Box<dyn Store>,
        snapshot: Snapshot,
    ) -> Result<Server, StoreError> {
        let mut table = LockTable::restore(
            config.table.clone(),
            snapshot.values,
            snapshot.tokens_reserved,
        );
        if let Some(reserved) = table.tokens_wanted() {
            store.commit(&CommitBatch {
                values: Vec::new(),
                tokens_reserved: Some(reserved),
            })?;
            table.handle_tokens_reserved(std::time::Instant::now(), reserved);
        }
        Ok(Server {
            config,
            table,
            store,
        })
    }

    /// Serves lock requests on `listener` until `shutdown` resolves, then closes every
    /// session, commits what is in flight, and returns once all tasks have ended.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let Server {
            config,
            table,
            store,
        } = self;
        let (driver_tx, driver_rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(Driver::new(table, store).run(driver_rx));
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
}
