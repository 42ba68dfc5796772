//! The accept loop and orderly shutdown.
//!
//! `run` takes a listener that is already bound (so callers, tests included, choose the address
//! and read the real port before anything runs) and a future that resolves when the server
//! should stop. Shutdown order: stop accepting (and report unready), close every connection
//! (which releases its session's locks), wait for the connection tasks to finish, stop the
//! driver, then stop the admin HTTP API, if one was asked for with [`Server::with_admin`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{ErrorCode, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::credentials::{Credentials, LiveCredentials};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
pub use crate::admin::{
    AdminLimits, DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS,
    DEFAULT_ADMIN_MAX_RESTORE_BYTES,
};
use crate::cluster::frontend::Frontend;
use crate::cluster::node::{ClusterNode, ClusterOptions, NodeError};
use crate::connection::{self, Accepted, ConnectionLimits};
use crate::core::{LockTable, TableConfig};
use crate::metrics::Metrics;
use crate::single::{wall_clock_us, Driver};
use crate::store::{CommitBatch, RedbStore, Store, StoreError, StoredState};

/// Everything the server needs to know; `main.rs` builds it from the command line.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Lease and value rules of the lock table.
    pub table: TableConfig,
    /// The longest frame accepted, in bytes of the line without its newline.
    pub max_frame_bytes: usize,
    /// The longest frame accepted before a client has authenticated (with `auth` set): room
    /// for a `hello`, so that a stranger cannot make lockd buffer `max_frame_bytes`.
    pub max_unauthenticated_frame_bytes: usize,
    /// Requests one connection may have in flight before the server stops reading from it.
    pub max_in_flight: usize,
    /// Bytes of replies one connection may have waiting for its client before the server stops
    /// reading from it.
    pub max_unsent_bytes: usize,
    /// Watch events one watch may have waiting for its client before they are replaced by one
    /// `resync`.
    pub max_watch_backlog: usize,
    /// The longest client name `hello` may give, in bytes.
    pub max_client_name_bytes: usize,
    /// Failed authentications one client address may make in a minute before its new
    /// connections are refused for the rest of that minute.
    pub max_auth_failures_per_minute: usize,
    /// Open connections at most; more are refused with `limit_exceeded`.
    pub max_connections: usize,
    /// Open connections from one client IP address at most.
    pub max_connections_per_ip: usize,
    /// A new connection must send a complete frame within this time.
    pub first_frame_timeout: Duration,
    /// A write to a client may stall this long before the client is dropped.
    pub write_timeout: Duration,
    /// The secret every session must give in `hello`, if any.
    pub auth: Option<Arc<str>>,
    /// The admin credential (`--admin-token-file`), if any: forced releases (when allowed) and
    /// a cluster's membership changes need it.
    pub admin_token: Option<Arc<str>>,
    /// Serve TLS instead of plain TCP.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            table: TableConfig::default(),
            max_frame_bytes: protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_unauthenticated_frame_bytes: DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_unsent_bytes: DEFAULT_MAX_UNSENT_BYTES,
            max_watch_backlog: DEFAULT_MAX_WATCH_BACKLOG,
            max_client_name_bytes: DEFAULT_MAX_CLIENT_NAME_BYTES,
            max_auth_failures_per_minute: DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            first_frame_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            auth: None,
            admin_token: None,
            tls: None,
        }
    }
}

/// The default for [`ServerConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The default for [`ServerConfig::max_unsent_bytes`]: a few default `status` pages, so a
/// client that reads slowly is not held back, and far below what a thousand such clients could
/// cost.
pub const DEFAULT_MAX_UNSENT_BYTES: usize = 4 * 1024 * 1024;

/// The default for [`ServerConfig::max_watch_backlog`]: enough for a burst of changes to a
/// busy resource; a watcher this far behind gets one `resync` instead.
pub const DEFAULT_MAX_WATCH_BACKLOG: usize = 256;

/// The default for [`ServerConfig::max_auth_failures_per_minute`]: a person who mistyped the
/// secret, or a few clients with an old one, are never refused; guessing is.
pub const DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE: usize = 20;

/// The default for [`ServerConfig::max_unauthenticated_frame_bytes`]: a `hello` with the
/// longest client name, a long secret and a resume fits many times over.
pub const DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES: usize = 16 * 1024;

/// The default for [`ServerConfig::max_client_name_bytes`]: room for `user@host.domain` and a
/// job name, far below what would weigh on logs or a cluster's log entries.
pub const DEFAULT_MAX_CLIENT_NAME_BYTES: usize = 256;

/// How long shutdown waits for connections to write their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for admin HTTP requests in flight.
const ADMIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin HTTP API may do beyond reading, and its port's limits.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// The connection cap and header timeout of the admin port.
    pub limits: AdminLimits,
    /// Whether `DELETE /v1/locks/{resource}` with `Authorization: Bearer <admin credential>`
    /// forces the release of a lock (`--allow-force-release`, which needs
    /// `--admin-token-file`). When not, that route answers 403 and the API is read-only.
    pub allow_force_release: bool,
}

/// A server ready to run: its table restored from the store, its first tokens reserved.
pub struct Server {
    config: ServerConfig,
    backend: Backend,
    metrics: Arc<Metrics>,
    admin: Option<(TcpListener, AdminOptions)>,
    /// Those of `config` unless [`with_credentials`](Self::with_credentials) gave live ones.
    credentials: Option<Arc<LiveCredentials>>,
}

/// Who owns the lock table.
enum Backend {
    /// A single server: the driver, with the table and the store.
    Single {
        table: Box<LockTable>,
        store: Box<dyn Store>,
    },
    /// A cluster node: the table is replicated, and the cluster front end proposes requests.
    Cluster(ClusterNode),
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
        let (store, stored) = RedbStore::open(data_dir)?;
        Server::with_store(config, Box::new(store), stored)
    }

    /// A server over any store, starting from `stored` (what that store holds). Makes the
    /// first token reservation durable before returning, so the first grant needs no fsync
    /// and a store that cannot be written stops the server before it serves anyone.
    pub fn with_store(
        config: ServerConfig,
        mut store: Box<dyn Store>,
        stored: StoredState,
    ) -> Result<Server, StoreError> {
        let mut table =
            LockTable::restore(config.table.clone(), stored.values, stored.tokens_reserved);
        if stored.tokens_reserved > 0 {
            // This store handed out tokens before, and may be a copy restored from a backup,
            // whose reservation knows nothing of the tokens issued after it was taken. lockd
            // hands out tokens far slower than one per microsecond and reserves past the clock
            // by at most MIN_TOKEN_BLOCK, 4 ms' worth (see `tokens_wanted` for when that
            // holds), so every token any copy of this store issued is below the clock a few
            // milliseconds later. The assumption: the clock at a start is not behind the clock
            // of an earlier run by more than that (a plain restart is safe anyway: it also
            // starts above the store's own reservation).
            table.raise_token_floor(wall_clock_us());
        }
        if let Some(reserved) = table.tokens_wanted(wall_clock_us()) {
            store.commit(&CommitBatch {
                values: Vec::new(),
                tokens_reserved: Some(reserved),
            })?;
            table.handle_tokens_reserved(std::time::Instant::now(), reserved);
        }
        Ok(Server {
            config,
            backend: Backend::Single {
                table: Box::new(table),
                store,
            },
            metrics: Arc::new(Metrics::new()),
            admin: None,
            credentials: None,
        })
    }

    /// A cluster node over the data directory (the caller holds the directory's lock): its
    /// Raft log in `raft-log/`, its snapshots in the redb file; see `crate::cluster`.
    pub async fn open_cluster(
        config: ServerConfig,
        data_dir: &Path,
        options: ClusterOptions,
    ) -> Result<Server, NodeError> {
        let path = data_dir.join(crate::store::DB_FILE);
        let db = redb::Database::create(&path).map_err(|source| NodeError::Database {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let metrics = Arc::new(Metrics::new());
        let node = ClusterNode::start(
            Arc::new(db),
            data_dir,
            config.table.clone(),
            Arc::clone(&metrics),
            options,
        )
        .await?;
        Ok(Server {
            config,
            backend: Backend::Cluster(node),
            metrics,
            admin: None,
            credentials: None,
        })
    }

    /// Also serves the admin HTTP API and the dashboard on `listener` (already bound, like the
    /// lock listener) while the server runs.
    /// Serves with `credentials` (read from files, and read again on a reload) instead of the
    /// configuration's `auth`, `admin_token` and `tls`.
    pub fn with_credentials(mut self, credentials: Arc<LiveCredentials>) -> Server {
        self.credentials = Some(credentials);
        self
    }

    pub fn with_admin(mut self, listener: TcpListener, options: AdminOptions) -> Server {
        self.admin = Some((listener, options));
        self
    }

    /// Serves lock requests on `listener` until `shutdown` resolves, then closes every
    /// session, commits what is in flight, and returns once all tasks have ended.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let Server {
            config,
            backend,
            metrics,
            admin,
            credentials,
        } = self;
        let credentials = credentials.unwrap_or_else(|| {
            Arc::new(LiveCredentials::fixed(Credentials {
                auth: config.auth.clone(),
                admin_token: config.admin_token.clone(),
                tls: config.tls.clone(),
            }))
        });
        let (backend_tx, backend_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (backend_task, cluster) = match backend {
            Backend::Single { table, store } => {
                let driver = Driver::new(*table, store, Arc::clone(&metrics));
                (tokio::spawn(driver.run(backend_rx)), None)
            }
            Backend::Cluster(node) => {
                let frontend = Frontend::new(
                    &node,
                    Arc::clone(&metrics),
                    config.table.default_lease,
                    Arc::clone(&credentials),
                );
                (tokio::spawn(frontend.run(backend_rx)), Some(node))
            }
        };
        // Ready from the start: the listener is bound, so connections made now wait in its
        // backlog for the accept loop below. Only shutdown makes lockd unready.
        let ready = Arc::new(AtomicBool::new(true));
        let admin_stop = CancellationToken::new();
        let admin = admin.map(|(listener, options)| {
            let state = AdminState {
                backend: backend_tx.downgrade(),
                metrics: Arc::clone(&metrics),
                allow_force_release: options.allow_force_release,
                credentials: Arc::clone(&credentials),
                ready: Arc::clone(&ready),
                max_page: config.table.max_status_limit,
            };
            tokio::spawn(admin::serve(
                listener,
                state,
                options.limits,
                admin_stop.clone(),
            ))
        });
        let limits = ConnectionLimits {
            max_frame_bytes: config.max_frame_bytes,
            max_in_flight: config.max_in_flight.max(1),
            max_unsent_bytes: config.max_unsent_bytes,
            max_watch_backlog: config.max_watch_backlog,
            max_client_name_bytes: config.max_client_name_bytes,
            max_unauthenticated_frame_bytes: config.max_unauthenticated_frame_bytes,
            first_frame_timeout: config.first_frame_timeout,
            write_timeout: config.write_timeout,
            auth: None,
        };
        let mut admission = Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.max_auth_failures_per_minute,
        );
        let tasks = TaskTracker::new();

        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // Each connection takes the credentials in force when it arrives: a reload
                    // changes those of connections made after it, never an established one.
                    let current = credentials.current();
                    let tls = current.tls.map(TlsAcceptor::from);
                    let ticket = match admission.admit(peer.ip()) {
                        Ok(ticket) => ticket,
                        Err(refusal) => {
                            // A TLS client could not read a plain-text refusal, so it only
                            // sees the connection close (the reason is logged).
                            metrics.connections_refused.inc();
                            if tls.is_none() {
                                metrics.error(ErrorCode::LimitExceeded);
                            }
                            tasks.spawn(refuse(stream, refusal, tls.is_none()));
                            continue;
                        }
                    };
                    metrics.connections_accepted.inc();
                    metrics.connections.inc();
                    let accepted = Accepted {
                        peer,
                        backend: backend_tx.clone(),
                        limits: ConnectionLimits {
                            auth: current.auth,
                            ..limits.clone()
                        },
                        metrics: Arc::clone(&metrics),
                        shutdown: stop.clone(),
                        on_auth_failure: ticket.auth_failure_recorder(),
                    };
                    let handshake_timeout = limits.first_frame_timeout;
                    let counted = Arc::clone(&metrics);
                    tasks.spawn(async move {
                        match tls {
                            None => connection::serve(stream, accepted).await,
                            Some(tls) => {
                                // The handshake gets its own --first-frame-timeout-ms; the
                                // first frame then gets another.
                                let handshake = tls.accept(stream);
                                match tokio::time::timeout(handshake_timeout, handshake).await {
                                    Ok(Ok(stream)) => connection::serve(stream, accepted).await,
                                    Ok(Err(err)) => {
                                        info!(%peer, error = %err, "TLS handshake failed")
                                    }
                                    Err(_) => info!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                        counted.connections.dec();
                        drop(ticket);
                    });
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
        ready.store(false, Ordering::Relaxed);
        drop(listener);
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within {DRAIN_TIMEOUT:?}");
        }
        drop(backend_tx);
        if let Err(err) = backend_task.await {
            error!(error = %err, "the lock table's backend task failed");
        }
        if let Some(node) = cluster {
            node.shutdown().await;
        }
        // Last, so that /readyz says "shutting down" while connections drain.
        if let Some(mut admin) = admin {
            admin_stop.cancel();
            if tokio::time::timeout(ADMIN_DRAIN_TIMEOUT, &mut admin)
                .await
                .is_err()
            {
                admin.abort();
            }
        }
    }
}

/// Counts open connections, in total and per client address, and hands out a ticket per
/// admitted connection that gives its place back when dropped. Also counts failed
/// authentications per address, and refuses an address that failed too often lately: a secret
/// cannot be guessed at the speed of the network.
#[derive(Debug, Clone)]
struct Admission {
    max_total: usize,
    max_per_ip: usize,
    max_auth_failures: usize,
    open: Arc<Mutex<AdmissionCounts>>,
}

#[derive(Debug, Default)]
struct AdmissionCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Failed authentications per address in the current window: how many, since when.
    auth_failures: HashMap<IpAddr, (usize, std::time::Instant)>,
}

/// The window `--max-auth-failures-per-minute` counts in.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses whose failures are remembered at most; past this, windows that have ended are
/// forgotten first, and if all are current the oldest window goes.
const MAX_AUTH_FAILURE_ADDRESSES: usize = 100_000;

/// Why a connection was refused at accept: each variant is a limit reached, too many of what
/// it names.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the server has {0} connections open, its limit (--max-connections)")]
    Connections(usize),
    #[error(
        "{0} already has {1} connections open, the limit per address (--max-connections-per-ip)"
    )]
    FromAddress(IpAddr, usize),
    #[error(
        "{0} failed authentication {1} times in the last minute, the limit \
         (--max-auth-failures-per-minute); try again later"
    )]
    AuthFailures(IpAddr, usize),
}

/// An admitted connection's place.
#[derive(Debug)]
struct AdmissionTicket {
    ip: IpAddr,
    open: Arc<Mutex<AdmissionCounts>>,
}

impl Admission {
    fn new(max_total: usize, max_per_ip: usize, max_auth_failures: usize) -> Admission {
        Admission {
            max_total,
            max_per_ip,
            max_auth_failures,
            open: Arc::default(),
        }
    }

    /// A ticket, or the reason to refuse.
    fn admit(&mut self, ip: IpAddr) -> Result<AdmissionTicket, Refused> {
        let mut open = lock_counts(&self.open);
        if let Some(&(failures, since)) = open.auth_failures.get(&ip) {
            if since.elapsed() >= AUTH_FAILURE_WINDOW {
                open.auth_failures.remove(&ip);
            } else if failures >= self.max_auth_failures {
                return Err(Refused::AuthFailures(ip, failures));
            }
        }
        if open.total >= self.max_total {
            return Err(Refused::Connections(open.total));
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(Refused::FromAddress(ip, from_ip));
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_default() += 1;
        Ok(AdmissionTicket {
            ip,
            open: Arc::clone(&self.open),
        })
    }
}

impl AdmissionTicket {
    /// What the connection calls when its client fails authentication.
    fn auth_failure_recorder(&self) -> connection::AuthFailure {
        let ip = self.ip;
        let open = Arc::clone(&self.open);
        Box::new(move || {
            let mut open = lock_counts(&open);
            let now = std::time::Instant::now();
            if open.auth_failures.len() >= MAX_AUTH_FAILURE_ADDRESSES
                && !open.auth_failures.contains_key(&ip)
            {
                open.auth_failures
                    .retain(|_, (_, since)| now.duration_since(*since) < AUTH_FAILURE_WINDOW);
                if open.auth_failures.len() >= MAX_AUTH_FAILURE_ADDRESSES {
                    let oldest = open
                        .auth_failures
                        .iter()
                        .min_by_key(|(_, (_, since))| *since)
                        .map(|(ip, _)| *ip);
                    if let Some(oldest) = oldest {
                        open.auth_failures.remove(&oldest);
                    }
                }
            }
            let entry = open.auth_failures.entry(ip).or_insert((0, now));
            if now.duration_since(entry.1) >= AUTH_FAILURE_WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        })
    }
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        let mut open = lock_counts(&self.open);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

fn lock_counts(counts: &Mutex<AdmissionCounts>) -> std::sync::MutexGuard<'_, AdmissionCounts> {
    // Every update is a few integer operations that cannot panic halfway; a poisoned lock
    // still holds consistent counts.
    counts.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Tells a refused client why (when it speaks plain text), then closes; never waits long on a
/// client that does not read.
async fn refuse(mut stream: TcpStream, reason: Refused, plain_text: bool) {
    tracing::info!(reason = %reason, "connection refused");
    if plain_text {
        let message = reason.to_string();
        let mut line = ServerFrame::error(None, ErrorCode::LimitExceeded, message).to_json();
        line.push(b'\n');
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&line)).await;
    }
    let _ = stream.shutdown().await;
}
