//! The `lockd` binary: flags, logging, signals, then [`lockd::server::Server::run`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Parser, ValueEnum};
use lockd::cluster::node::ClusterOptions;
use lockd::cluster::node::MAX_CLUSTER_FRAME_BYTES;
use lockd::core::{TableConfig, DEFAULT_MAX_STATUS_LIMIT};
use lockd::data_dir::DataDir;
use lockd::server::{
    AdminLimits, AdminOptions, Server, ServerConfig, DEFAULT_ADMIN_HEADER_TIMEOUT,
    DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE,
    DEFAULT_MAX_CLIENT_NAME_BYTES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_UNSENT_BYTES,
};
use protocol::cmd::DEFAULT_MAX_VALUE_BYTES;
use protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use tokio::net::{TcpListener, TcpSocket};
use tracing_subscriber::EnvFilter;

/// lockd: a lock server with FIFO queues, shared and exclusive locks, and fencing tokens.
///
/// Clients speak newline-delimited JSON over TCP (see docs/protocol.md); `lockctl` is the CLI.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port. Use 0.0.0.0:5555 to serve other machines.
    #[arg(long, default_value = "127.0.0.1:5555", value_name = "ADDR")]
    listen: String,

    /// Connections the kernel may queue for lockd before it accepts them (the listen backlog;
    /// Linux caps it at net.core.somaxconn). When it overflows, a connecting client's SYN is
    /// dropped and retried a second later, so a burst of reconnecting clients needs room.
    #[arg(long, default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    listen_backlog: u32,

    /// Threads that serve connections (Tokio workers). The lock table runs on one task
    /// whatever this is; more threads spread reading, parsing and writing over more cores.
    /// With 1, everything runs on lockd's main thread (a current-thread runtime), where
    /// handing a request to the lock table and back costs least. Default: one per CPU core. On
    /// a machine shared with busy clients, one thread can be faster (see docs/benchmarks.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,

    /// Directory for lockd's data; created if missing, and owned by one lockd at a time.
    #[arg(long, default_value = "./lockd-data", value_name = "DIR")]
    data_dir: PathBuf,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive). Without it,
    /// RUST_LOG is used, else `info`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,

    /// Log line format on stderr: `text` for people, `json` (one object per line, with the
    /// session span's fields) for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,

    /// Serve the admin HTTP API and live dashboard on this address: /metrics (Prometheus),
    /// /healthz, /readyz, /v1/locks and the page at /. Off unless given; port 0 picks a free
    /// port. It shows every lock, client name and address, so keep it on loopback or a
    /// private network.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,

    /// Let operators force the release of a lock through the admin API
    /// (DELETE /v1/locks/NAME with `Authorization: Bearer TOKEN`). Needs --http and
    /// --admin-token-file.
    #[arg(long, requires_all = ["http", "admin_token_file"])]
    allow_force_release: bool,

    /// Open connections to the admin HTTP API at most; more are answered 503 and closed. They
    /// are counted apart from --max-connections, which they never take from.
    #[arg(long, default_value_t = DEFAULT_ADMIN_MAX_CONNECTIONS, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    admin_max_connections: usize,

    /// An admin HTTP connection must send each request's head within this time of connecting
    /// or of its previous answer (so also the keep-alive idle timeout), or it is closed.
    #[arg(long, default_value_t = DEFAULT_ADMIN_HEADER_TIMEOUT.as_millis() as u64,
          value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    admin_header_timeout_ms: u64,

    /// The admin API's bearer token, read from this file (trimmed); used with
    /// --allow-force-release.
    #[arg(long, value_name = "FILE", requires = "allow_force_release")]
    admin_token_file: Option<PathBuf>,

    /// Longest request line accepted, in bytes without the newline.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(64..=(1 << 30)).map(|n| n as usize))]
    max_frame_bytes: usize,

    /// Largest value `write` accepts, in UTF-8 bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(0..=(1 << 30)).map(|n| n as usize))]
    max_value_bytes: usize,

    /// Failed authentications (a `hello` with a wrong or missing secret) one client address may
    /// make in a minute; after that its new connections are refused until the minute is over.
    #[arg(long, default_value_t = DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|n| n as usize))]
    max_auth_failures_per_minute: usize,

    /// Longest client name a `hello` may give, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_CLIENT_NAME_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=65_536).map(|n| n as usize))]
    max_client_name_bytes: usize,

    /// Requests one connection may have in flight before lockd stops reading from it.
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|n| n as usize))]
    max_in_flight: usize,

    /// The largest page of resources one `status` (and one GET /v1/locks) may ask for with
    /// `limit`; a request without `limit` gets 1000, or this if it is smaller.
    #[arg(long, default_value_t = DEFAULT_MAX_STATUS_LIMIT, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_status_limit: u64,

    /// Bytes of replies one connection may have waiting for its client before lockd stops
    /// reading that connection (it reads again once they are written).
    #[arg(long, default_value_t = DEFAULT_MAX_UNSENT_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)).map(|n| n as usize))]
    max_unsent_bytes: usize,

    /// Lease of a session that does not ask for one in `hello`, in milliseconds.
    #[arg(long, default_value_t = 15_000, value_name = "MS")]
    default_lease_ms: u64,

    /// Shortest lease `hello` may ask for; shorter requests are raised to it.
    #[arg(long, default_value_t = 1_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(10..))]
    min_lease_ms: u64,

    /// Longest lease `hello` may ask for; longer requests are lowered to it.
    #[arg(long, default_value_t = 300_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(..=86_400_000))]
    max_lease_ms: u64,

    /// Resources one session may hold or wait for at once.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000).map(|n| n as usize))]
    max_locks_per_session: usize,

    /// Waiting acquires one session may have at once.
    #[arg(long, default_value_t = 1_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000).map(|n| n as usize))]
    max_waits_per_session: usize,

    /// The lock-delay of an acquire that asks for none: when its holder loses the lock other
    /// than by `release` (expiry, disconnect, eviction), nobody is granted the resource for
    /// this long (docs/safety.md). 0: none.
    #[arg(long, default_value_t = 0, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=4_294_967_295))]
    default_lock_delay_ms: u64,

    /// The longest lock-delay an acquire may ask for; longer ones are clamped to it, and so is
    /// --default-lock-delay-ms.
    #[arg(long, default_value_t = 60_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=4_294_967_295))]
    max_lock_delay_ms: u64,

    /// Open connections at most; more are refused with `limit_exceeded`.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000).map(|n| n as usize))]
    max_connections: usize,

    /// Open connections from one client IP address at most.
    #[arg(long, default_value_t = 1_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000).map(|n| n as usize))]
    max_connections_per_ip: usize,

    /// A new connection must send a complete frame within this time, or it is closed.
    #[arg(long, default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(10..))]
    first_frame_timeout_ms: u64,

    /// A client that leaves one reply unread this long (its socket full) is dropped.
    #[arg(long, default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(10..))]
    write_timeout_ms: u64,

    /// Require every session to send `hello` with this file's contents (trimmed) as `auth`.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Cluster mode: this node's id among --peers. Without it lockd is a single server.
    #[arg(long, value_name = "N", requires_all = ["peer_listen", "peers"])]
    node_id: Option<u64>,

    /// Cluster mode: the address other nodes reach this one on for Raft traffic.
    #[arg(long, value_name = "ADDR", requires = "node_id")]
    peer_listen: Option<String>,

    /// Cluster mode: every voter of the cluster, this node included, as
    /// ID=CLIENT_ADDR/PEER_ADDR items separated by commas (CLIENT_ADDR is its --listen,
    /// PEER_ADDR its --peer-listen), e.g. 1=10.0.0.1:5555/10.0.0.1:5556,2=...
    #[arg(long, value_name = "LIST", requires = "node_id")]
    peers: Option<String>,

    /// Cluster mode: the secret the nodes present to each other on the peer port (this file's
    /// contents, trimmed), the same file on every node. Separate from --auth-token-file: a
    /// client's secret never opens the peer port.
    #[arg(long, value_name = "FILE", requires = "node_id")]
    peer_secret_file: Option<PathBuf>,

    /// Cluster mode: let --peer-listen be a non-loopback address without --peer-secret-file,
    /// for a network that only the cluster's nodes can reach.
    #[arg(long, requires = "node_id")]
    peer_network_trusted: bool,

    /// Cluster mode: initialize a new cluster with --peers as its voters, if this node has
    /// no cluster state yet (a no-op afterwards). Give it to one node of a new cluster.
    #[arg(long, requires = "node_id")]
    bootstrap: bool,

    /// Cluster mode: a follower that hears no leader for a random time between this and twice
    /// this starts an election. Failover takes about this long.
    #[arg(long, default_value_t = 1_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(20..=60_000))]
    election_timeout_ms: u64,

    /// Cluster mode: how often the leader sends heartbeats; must be below
    /// --election-timeout-ms. It is also the deadline of every replication message (openraft's
    /// rule), so it must exceed a follower's slowest fsync plus a network round trip.
    #[arg(long, default_value_t = 200, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(5..=10_000))]
    heartbeat_ms: u64,

    /// Cluster mode: take a snapshot of the table, and drop the log before it, every this many
    /// log entries.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(10..))]
    snapshot_every: u64,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by a CA in this file (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl Args {
    fn server_config(&self) -> Result<ServerConfig, FlagError> {
        if !(self.min_lease_ms <= self.default_lease_ms
            && self.default_lease_ms <= self.max_lease_ms)
        {
            return Err(FlagError::Leases {
                min: self.min_lease_ms,
                default: self.default_lease_ms,
                max: self.max_lease_ms,
            });
        }
        // A waiting acquire holds one of its connection's in-flight slots until it is answered;
        // if every slot could be taken by waits, the connection would stop being read (not even
        // a ping or a cancel would get through) and the session would expire.
        if self.max_waits_per_session >= self.max_in_flight {
            return Err(FlagError::WaitsAboveInFlight {
                waits: self.max_waits_per_session,
                in_flight: self.max_in_flight,
            });
        }
        Ok(ServerConfig {
            table: TableConfig {
                default_lease: Duration::from_millis(self.default_lease_ms),
                min_lease: Duration::from_millis(self.min_lease_ms),
                max_lease: Duration::from_millis(self.max_lease_ms),
                max_value_bytes: self.max_value_bytes,
                max_locks_per_session: self.max_locks_per_session,
                max_waits_per_session: self.max_waits_per_session,
                expire_sessions: true,
                default_lock_delay: Duration::from_millis(self.default_lock_delay_ms),
                max_lock_delay: Duration::from_millis(self.max_lock_delay_ms),
                max_status_limit: self.max_status_limit,
            },
            max_frame_bytes: self.max_frame_bytes,
            max_in_flight: self.max_in_flight,
            max_unsent_bytes: self.max_unsent_bytes,
            max_client_name_bytes: self.max_client_name_bytes,
            max_auth_failures_per_minute: self.max_auth_failures_per_minute,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            first_frame_timeout: Duration::from_millis(self.first_frame_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            auth: self
                .auth_token_file
                .as_deref()
                .map(|path| read_secret(path, "--auth-token-file"))
                .transpose()?,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(lockd::tls::server_config(
                    cert,
                    key,
                    self.tls_client_ca.as_deref(),
                )?),
                _ => None,
            },
        })
    }

    /// The cluster flags, with the peer listener bound; only called with --node-id.
    async fn cluster_options(&self) -> Result<ClusterOptions, FlagError> {
        let (Some(node_id), Some(peer_listen), Some(peers)) =
            (self.node_id, &self.peer_listen, &self.peers)
        else {
            return Err(FlagError::ClusterFlags);
        };
        if self.max_frame_bytes > MAX_CLUSTER_FRAME_BYTES {
            return Err(FlagError::ClusterFrame(self.max_frame_bytes));
        }
        if self.heartbeat_ms >= self.election_timeout_ms {
            return Err(FlagError::HeartbeatAboveElection {
                heartbeat: self.heartbeat_ms,
                election: self.election_timeout_ms,
            });
        }
        let peers = lockd::cluster::node::parse_peers(peers)?;
        let secret = self
            .peer_secret_file
            .as_deref()
            .map(|path| read_secret(path, "--peer-secret-file"))
            .transpose()?;
        if secret.is_none() && !self.peer_network_trusted {
            // Checked before binding: whoever reaches an open peer port can rewrite the log.
            let addrs = tokio::net::lookup_host(peer_listen.as_str())
                .await
                .map_err(|source| FlagError::PeerListen {
                    addr: peer_listen.clone(),
                    source,
                })?;
            if let Some(open) = addrs.into_iter().find(|addr| !addr.ip().is_loopback()) {
                return Err(FlagError::OpenPeerPort(open));
            }
            tracing::warn!(
                addr = %peer_listen,
                "the peer port has no secret (--peer-secret-file): any process on this machine \
                 can send it Raft messages"
            );
        }
        let peer_listener =
            TcpListener::bind(peer_listen)
                .await
                .map_err(|source| FlagError::PeerListen {
                    addr: peer_listen.clone(),
                    source,
                })?;
        Ok(ClusterOptions {
            node_id,
            peer_listener,
            peers,
            bootstrap: self.bootstrap,
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            snapshot_every: self.snapshot_every,
            secret,
        })
    }

    fn admin_options(&self) -> Result<AdminOptions, FlagError> {
        let force_release_token = match (&self.admin_token_file, self.allow_force_release) {
            (Some(path), true) => Some(read_secret(path, "--admin-token-file")?),
            _ => None,
        };
        Ok(AdminOptions {
            limits: AdminLimits {
                max_connections: self.admin_max_connections,
                header_timeout: Duration::from_millis(self.admin_header_timeout_ms),
            },
            force_release_token,
        })
    }
}

/// Why lockd cannot start with the flags it was given.
#[derive(Debug, thiserror::Error)]
enum FlagError {
    #[error(
        "leases must satisfy --min-lease-ms ({min}) <= --default-lease-ms ({default}) <= \
         --max-lease-ms ({max})"
    )]
    Leases { min: u64, default: u64, max: u64 },
    #[error(
        "--max-waits-per-session ({waits}) must be below --max-in-flight ({in_flight}), so \
         that a connection full of waiting acquires can still be read"
    )]
    WaitsAboveInFlight { waits: usize, in_flight: usize },
    #[error("cannot read {flag} {}: {source}", path.display())]
    ReadSecret {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {} is empty", path.display())]
    EmptySecret { flag: &'static str, path: PathBuf },
    #[error(transparent)]
    Tls(#[from] lockd::tls::TlsError),
    #[error("cluster mode needs --node-id, --peer-listen and --peers")]
    ClusterFlags,
    #[error(
        "--max-frame-bytes ({0}) is over {MAX_CLUSTER_FRAME_BYTES} in cluster mode: every \
         request becomes part of a log entry, which must fit a peer frame"
    )]
    ClusterFrame(usize),
    #[error("--heartbeat-ms ({heartbeat}) must be below --election-timeout-ms ({election})")]
    HeartbeatAboveElection { heartbeat: u64, election: u64 },
    #[error(transparent)]
    Cluster(#[from] lockd::cluster::node::NodeError),
    #[error(
        "--peer-listen {0} is reachable beyond this machine and the peer port has no secret: \
         anyone who reaches it could rewrite the cluster's log; give every node the same \
         --peer-secret-file (or --peer-network-trusted if only the nodes can reach it)"
    )]
    OpenPeerPort(std::net::SocketAddr),
    #[error("cannot listen on --peer-listen {addr}: {source}")]
    PeerListen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen for {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event.
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(err) => return fail(format!("invalid --log-level: {err}")),
    };
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let config = match args.server_config() {
        Ok(config) => config,
        Err(err) => return fail(err.to_string()),
    };
    let admin = match args.admin_options() {
        Ok(admin) => admin,
        Err(err) => return fail(err.to_string()),
    };
    let mut runtime = match args.worker_threads {
        // Tasks woken on the one thread then run in turn, so the driver takes every request
        // the connections read in one batch instead of being run once per request.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(serve(args, config, admin))
}

async fn serve(args: Args, config: ServerConfig, admin: AdminOptions) -> ExitCode {
    let data_dir = match DataDir::open(&args.data_dir) {
        Ok(data_dir) => data_dir,
        Err(err) => return fail(err.to_string()),
    };
    let mut server = match &args.node_id {
        None => match Server::open(config, data_dir.path()) {
            Ok(server) => server,
            Err(err) => return fail(err.to_string()),
        },
        Some(_) => {
            let options = match args.cluster_options().await {
                Ok(options) => options,
                Err(err) => return fail(err.to_string()),
            };
            match Server::open_cluster(config, data_dir.path(), options).await {
                Ok(server) => server,
                Err(err) => return fail(err.to_string()),
            }
        }
    };
    let listener = match bind_listener(&args.listen, args.listen_backlog).await {
        Ok(listener) => listener,
        Err(err) => return fail(format!("cannot listen on {}: {err}", args.listen)),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => return fail(format!("cannot read the listening address: {err}")),
    };
    if !addr.ip().is_loopback() && args.auth_token_file.is_none() && args.tls_client_ca.is_none() {
        tracing::warn!(
            %addr,
            tls = args.tls_cert.is_some(),
            "serving without authentication on a non-loopback address: anyone who can reach it \
             can take and release locks (see --auth-token-file and --tls-client-ca)"
        );
    }
    let mut admin_addr = None;
    if let Some(http) = &args.http {
        let listener = match TcpListener::bind(http).await {
            Ok(listener) => listener,
            Err(err) => return fail(format!("cannot listen on --http {http}: {err}")),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => return fail(format!("cannot read the admin HTTP address: {err}")),
        };
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the admin HTTP API is reachable beyond this machine: anyone who can reach it \
                 sees every lock, client name and address"
            );
        }
        admin_addr = Some(addr);
        server = server.with_admin(listener, admin);
    }
    let admin_connections = if args.http.is_some() {
        args.admin_max_connections
    } else {
        0
    };
    raise_open_file_limit(args.max_connections, admin_connections);
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => return fail(err.to_string()),
    };
    let mut stdout = std::io::stdout();
    // Scripts and tests wait for this exact first line to learn the real port, and for the
    // second (only with --http) to learn the admin API's.
    let mut banner = format!("Lock Server started on tcp://{addr}\n");
    if let Some(admin_addr) = admin_addr {
        banner.push_str(&format!("Admin HTTP listening on http://{admin_addr}\n"));
    }
    if stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // Nobody is reading stdout; keep serving anyway.
    }
    tracing::info!(
        %addr,
        data_dir = %data_dir.path().display(),
        "lockd {} ready",
        env!("CARGO_PKG_VERSION")
    );
    server.run(listener, shutdown).await;
    tracing::info!("stopped");
    drop(data_dir);
    ExitCode::SUCCESS
}

/// Reads a shared secret from `path` (given with `flag`): its contents without surrounding
/// whitespace.
fn read_secret(path: &Path, flag: &'static str) -> Result<Arc<str>, FlagError> {
    let text = std::fs::read_to_string(path).map_err(|source| FlagError::ReadSecret {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(FlagError::EmptySecret {
            flag,
            path: path.to_owned(),
        });
    }
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "{flag} is readable by other users; chmod 600 it"
            );
        }
    }
    Ok(Arc::from(secret))
}

/// Each connection is a file descriptor: raise the soft limit as far as the hard limit allows,
/// and say so if that is still below what `--max-connections` needs. The admin port's cap
/// (`--admin-max-connections`, when `--http` is on) is added on top, so that the admin port's
/// connections never use descriptors the lock port's cap counts on.
fn raise_open_file_limit(max_connections: usize, admin_connections: usize) {
    let wanted = (max_connections + admin_connections) as u64 + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below what --max-connections and --admin-max-connections \
             need; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
    }
}

/// Listens on the first address `addr` resolves to that can be bound, with `backlog`.
/// `TcpListener::bind` would do the same with a fixed backlog of 128.
async fn bind_listener(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As TcpListener::bind does: a restarted lockd can listen again at once while the old
        // process's connections linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Resolves on the first SIGINT or SIGTERM.
/// Installs the SIGINT and SIGTERM handlers now, and returns a future that resolves on the
/// first of them. Installing before the start-up line is printed matters: a supervisor may
/// send SIGTERM the moment it sees that line, and an uninstalled handler would let the signal
/// kill lockd outright instead of shutting it down cleanly.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, FlagError> {
    use tokio::signal::unix::{signal, SignalKind};
    let signal_error = |signal| move |source| FlagError::Signal { signal, source };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error("SIGTERM"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error("SIGINT"))?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

fn fail(message: String) -> ExitCode {
    eprintln!("lockd: error: {message}");
    ExitCode::FAILURE
}
