//! The `lockd` binary: flags, logging, signals, then [`lockd::server::Server::run`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use lockd::cluster::node::ClusterOptions;
use lockd::cluster::node::MAX_CLUSTER_FRAME_BYTES;
use lockd::cluster::peer_admission::{
    PeerLimits, DEFAULT_MAX_HANDSHAKES_PER_IP, DEFAULT_MAX_PEER_CONNECTIONS,
};
use lockd::cluster::transport::PeerCredentials;
use lockd::core::{
    TableConfig, DEFAULT_MAX_RESOURCES_PER_ACQUIRE, DEFAULT_MAX_STATUS_LIMIT,
    MAX_RESOURCES_PER_ACQUIRE,
};
use lockd::credentials::{read_secret, CredentialError, CredentialFiles, LiveCredentials};
use lockd::data_dir::DataDir;
use lockd::idle_poll;
use lockd::logging;
use lockd::server::{
    AdminLimits, AdminOptions, Server, ServerConfig, DEFAULT_ADMIN_HEADER_TIMEOUT,
    DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_ADMIN_MAX_RESTORE_BYTES,
    DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE, DEFAULT_MAX_CLIENT_NAME_BYTES, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES, DEFAULT_MAX_UNSENT_BYTES, DEFAULT_MAX_WATCH_BACKLOG,
};
use protocol::cmd::{DEFAULT_MAX_VALUE_BYTES, DEFAULT_MAX_WATCHES_PER_SESSION};
use protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use tokio::net::{TcpListener, TcpSocket};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

mod config_file;

/// What `--version` says: the version, and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LOCKD_COMMIT"), ")");

/// lockd: a lock server with FIFO queues, shared and exclusive locks, and fencing tokens.
///
/// Clients speak newline-delimited JSON over TCP (see docs/protocol.md); `lockctl` is the CLI.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Args {
    /// Read settings from this TOML file: each key is a flag's long name, e.g.
    /// `max-frame-bytes = 1048576` (docs/configuration.md). Flags and LOCKD_* environment
    /// variables win over it. Also LOCKD_CONFIG.
    #[arg(long = config_file::CONFIG_FLAG, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective settings (flags, then LOCKD_* environment, then the --config file,
    /// then defaults) as a TOML file that --config takes back, and exit.
    #[arg(long = config_file::PRINT_CONFIG_FLAG)]
    print_config: bool,

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

    /// After lockd was last busy, keep one CPU awake this long (microseconds) with a thread
    /// that spins under SCHED_IDLE, so that the next step of a request does not wait for a
    /// sleeping CPU to wake. It uses only CPU time no other thread wants, and only while
    /// requests flow; 0 turns it off. A cluster request crosses many threads and three
    /// processes, and gains most, above all on virtual machines (docs/cluster.md, "Idle
    /// polling"). Default: 200 with --node-id, 0 for a single server
    #[arg(long, value_name = "MICROSECONDS",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    idle_poll_us: Option<u32>,

    /// Directory for lockd's data; created if missing, and owned by one lockd at a time.
    #[arg(long, default_value = "./lockd-data", value_name = "DIR")]
    data_dir: PathBuf,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive). Without it,
    /// RUST_LOG is used, else `info`. openraft's own logs stay at `warn` unless the filter
    /// names openraft (`info,openraft=debug`), and each of its warnings shows at most once
    /// every 10 s.
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

    /// The largest backup the admin API's `POST /v1/restore` accepts, in bytes (a cluster
    /// loads a backup that way).
    #[arg(long, default_value_t = DEFAULT_ADMIN_MAX_RESTORE_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 40)).map(|n| n as usize))]
    admin_max_restore_bytes: usize,

    /// The admin credential, read from this file (trimmed): the bearer token of the admin
    /// API's forced release (with --allow-force-release), and in a cluster the `admin_token`
    /// that `add_node` and `remove_node` must carry (without this flag a cluster refuses
    /// membership changes).
    #[arg(long, value_name = "FILE")]
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

    /// Longest request line accepted from a client that has not yet authenticated (with
    /// --auth-token-file), in bytes: room for its `hello`. A longer line closes the connection.
    #[arg(long, default_value_t = DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(256..=(1 << 30)).map(|n| n as usize))]
    max_unauthenticated_frame_bytes: usize,

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

    /// Watches one session may have open at once.
    #[arg(long, default_value_t = DEFAULT_MAX_WATCHES_PER_SESSION, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    max_watches_per_session: usize,

    /// Resources one multi-resource acquire (`acquire` with `resources`) may name. Its members
    /// also count toward --max-locks-per-session.
    #[arg(long, default_value_t = DEFAULT_MAX_RESOURCES_PER_ACQUIRE, value_name = "N",
          value_parser = clap::value_parser!(u64)
              .range(1..=MAX_RESOURCES_PER_ACQUIRE as u64)
              .map(|n| n as usize))]
    max_resources_per_acquire: usize,

    /// Watch events one watch may have waiting for a client that reads slowly; past that, they
    /// are dropped and replaced by one `resync` event with the resource's state.
    #[arg(long, default_value_t = DEFAULT_MAX_WATCH_BACKLOG, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|n| n as usize))]
    max_watch_backlog: usize,

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

    /// Cluster mode: this node's certificate chain for the peer port (PEM, leaf first), whose
    /// leaf names `lockd-peer` as a DNS subject alternative name. With --peer-tls-key and
    /// --peer-tls-ca (all three or none): mutual TLS between the nodes, the recommended setup
    /// (docs/security.md). Default: none, plain TCP.
    #[arg(long, value_name = "FILE", requires = "node_id")]
    peer_tls_cert: Option<PathBuf>,

    /// Cluster mode: the private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "FILE", requires = "node_id")]
    peer_tls_key: Option<PathBuf>,

    /// Cluster mode: the CA (PEM) that signs every node's peer certificate, and nothing else; a
    /// peer connection whose other end has no certificate signed by it is refused, both ways.
    #[arg(long, value_name = "FILE", requires = "node_id")]
    peer_tls_ca: Option<PathBuf>,

    /// Cluster mode: let --peer-listen be a non-loopback address without --peer-secret-file or
    /// --peer-tls-*, for a network that only the cluster's nodes can reach.
    #[arg(long, requires = "node_id")]
    peer_network_trusted: bool,

    /// Cluster mode: connections the peer port serves at once, from any address. Members'
    /// addresses (--peers and the cluster's membership) get 64 more slots that no one else
    /// may take, so a flood from elsewhere cannot keep the nodes apart.
    #[arg(long, default_value_t = DEFAULT_MAX_PEER_CONNECTIONS, value_name = "N",
          requires = "node_id",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|n| n as usize))]
    peer_max_connections: usize,

    /// Cluster mode: connections one address that is not a member's may have open on the peer
    /// port before their handshake is done.
    #[arg(long, default_value_t = DEFAULT_MAX_HANDSHAKES_PER_IP, value_name = "N",
          requires = "node_id",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|n| n as usize))]
    peer_max_handshakes_per_ip: usize,

    /// Cluster mode: initialize a new cluster with --peers as its voters, if this node has
    /// no cluster state yet (a no-op afterwards). Give it to one node of a new cluster.
    #[arg(long, requires = "node_id")]
    bootstrap: bool,

    /// Cluster mode: a follower that hears no leader for a random time between this and 4/3 of
    /// this starts an election. Failover takes about this long.
    #[arg(long, default_value_t = 1_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(20..=60_000))]
    election_timeout_ms: u64,

    /// Cluster mode: how often the leader sends heartbeats; must be below a third of
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

/// `--idle-poll-us` when it is not given: on for a cluster node, whose requests cross threads
/// and processes; off for a single server, whose requests barely wait (docs/cluster.md, "Idle
/// polling", has both measurements).
const CLUSTER_IDLE_POLL_US: u32 = 200;

impl Args {
    /// How long the idle poller spins after activity; zero for none.
    fn idle_poll_window(&self) -> Duration {
        let default = if self.node_id.is_some() {
            CLUSTER_IDLE_POLL_US
        } else {
            0
        };
        Duration::from_micros(u64::from(self.idle_poll_us.unwrap_or(default)))
    }

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
                max_watches_per_session: self.max_watches_per_session,
                max_resources_per_acquire: self.max_resources_per_acquire,
            },
            max_frame_bytes: self.max_frame_bytes,
            max_in_flight: self.max_in_flight,
            max_unsent_bytes: self.max_unsent_bytes,
            max_watch_backlog: self.max_watch_backlog,
            max_client_name_bytes: self.max_client_name_bytes,
            max_unauthenticated_frame_bytes: self.max_unauthenticated_frame_bytes,
            max_auth_failures_per_minute: self.max_auth_failures_per_minute,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            first_frame_timeout: Duration::from_millis(self.first_frame_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            // `serve` hands the server the same credentials, live (reloadable); these are the
            // ones read at start.
            auth: None,
            admin_token: None,
            tls: None,
        })
    }

    /// Where the reloadable credentials are read from.
    fn credential_files(&self) -> CredentialFiles {
        CredentialFiles {
            auth_token: self.auth_token_file.clone(),
            admin_token: self.admin_token_file.clone(),
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            tls_client_ca: self.tls_client_ca.clone(),
        }
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
        if self.heartbeat_ms.saturating_mul(3) >= self.election_timeout_ms {
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
        let tls = match (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(lockd::tls::peer_config(cert, key, ca)?),
            (cert, key, ca) => {
                let missing = [
                    ("--peer-tls-cert", cert.is_none()),
                    ("--peer-tls-key", key.is_none()),
                    ("--peer-tls-ca", ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect::<Vec<_>>()
                .join(", ");
                return Err(FlagError::PeerTlsIncomplete(missing));
            }
        };
        if secret.is_none() && tls.is_none() && !self.peer_network_trusted {
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
                "the peer port has no credential (--peer-secret-file or --peer-tls-*): any \
                 process on this machine can send it Raft messages"
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
            credentials: PeerCredentials { secret, tls },
            peer_limits: PeerLimits {
                max_connections: self.peer_max_connections,
                max_handshakes_per_ip: self.peer_max_handshakes_per_ip,
            },
        })
    }

    fn admin_options(&self) -> Result<AdminOptions, FlagError> {
        Ok(AdminOptions {
            limits: AdminLimits {
                max_connections: self.admin_max_connections,
                header_timeout: Duration::from_millis(self.admin_header_timeout_ms),
                max_restore_bytes: self.admin_max_restore_bytes,
            },
            allow_force_release: self.allow_force_release,
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
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Tls(#[from] lockd::tls::TlsError),
    #[error("cluster mode needs --node-id, --peer-listen and --peers")]
    ClusterFlags,
    #[error(
        "--max-frame-bytes ({0}) is over {MAX_CLUSTER_FRAME_BYTES} in cluster mode: every \
         request becomes part of a log entry, which must fit a peer frame"
    )]
    ClusterFrame(usize),
    #[error(
        "--heartbeat-ms ({heartbeat}) must be below a third of --election-timeout-ms \
         ({election}), openraft's shortest election timeout"
    )]
    HeartbeatAboveElection { heartbeat: u64, election: u64 },
    #[error(transparent)]
    Cluster(#[from] lockd::cluster::node::NodeError),
    #[error(
        "--peer-listen {0} is reachable beyond this machine and the peer port has no \
         credential: anyone who reaches it could rewrite the cluster's log; give every node \
         --peer-tls-cert, --peer-tls-key and --peer-tls-ca (mutual TLS, recommended) or the same \
         --peer-secret-file (or --peer-network-trusted if only the nodes can reach it)"
    )]
    OpenPeerPort(std::net::SocketAddr),
    #[error(
        "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together (mutual TLS between the \
         nodes); missing: {0}"
    )]
    PeerTlsIncomplete(String),
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
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (command, from_file) = match config_file::command_with_sources(Args::command(), &argv) {
        Ok(sources) => sources,
        Err(err) => {
            eprintln!("lockd: error: {err}");
            return ExitCode::from(2);
        }
    };
    let matches = command.clone().get_matches_from(&argv);
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    if args.print_config {
        print!("{}", config_file::effective(&command, &matches, &from_file));
        return ExitCode::SUCCESS;
    }
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = match logging::filter(args.log_level.as_deref(), rust_log.as_deref()) {
        Ok(filter) => filter,
        Err(err) => return fail(format!("invalid --log-level or RUST_LOG: {err}")),
    };
    let filter = filter.and(logging::OpenraftRepeats::new(
        logging::OPENRAFT_REPEAT_EVERY,
    ));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                layer
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
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
    // Every time a worker goes to sleep or wakes up counts as activity (see `idle_poll`).
    runtime.on_thread_park(idle_poll::touch);
    runtime.on_thread_unpark(idle_poll::touch);
    if let Err(err) = idle_poll::start(args.idle_poll_window()) {
        return fail(format!("cannot start idle polling: {err}"));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(serve(args, config, admin))
}

async fn serve(args: Args, config: ServerConfig, admin: AdminOptions) -> ExitCode {
    let credentials = match LiveCredentials::from_files(args.credential_files()) {
        Ok(credentials) => Arc::new(credentials),
        Err(err) => return fail(err.to_string()),
    };
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
    server = server.with_credentials(Arc::clone(&credentials));
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => return fail(err.to_string()),
    };
    if let Err(err) = reload_on_sighup(credentials) {
        return fail(err.to_string());
    }
    let mut stdout = std::io::stdout();
    // Scripts and tests wait for this exact first line to learn the real port, and for the
    // second (only with --http) to learn the admin API's.
    // The scheme tells a reader what to speak: `tls://` needs lockctl's --tls-ca.
    let scheme = if args.tls_cert.is_some() {
        "tls"
    } else {
        "tcp"
    };
    let mut banner = format!("Lock Server started on {scheme}://{addr}\n");
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

/// Reads the credential files again at each SIGHUP (installed now, before the start-up line,
/// for the same reason as the shutdown handlers). A reload that fails keeps the credentials in
/// force and says why.
fn reload_on_sighup(credentials: Arc<LiveCredentials>) -> Result<(), FlagError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(|source| FlagError::Signal {
        signal: "SIGHUP",
        source,
    })?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match credentials.reload() {
                Ok(()) => tracing::info!("SIGHUP: credentials reloaded"),
                Err(err) => tracing::error!("SIGHUP: {err}"),
            }
        }
    });
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{config_file, Args};

    /// Where docs/configuration.md keeps the generated table of settings.
    const BEGIN: &str =
        "<!-- settings: generated from lockd's flags; see the test in main.rs -->\n";
    const END: &str = "<!-- end of settings -->\n";

    /// docs/configuration.md lists every setting as the code defines it. With
    /// LOCKD_UPDATE_DOCS=1 the test rewrites the table instead of failing.
    #[test]
    fn the_settings_table_in_the_docs_is_the_flags() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md");
        let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
            panic!("docs/configuration.md lacks the markers {BEGIN:?} and {END:?}");
        };
        let table = config_file::reference(&Args::command());
        let current = &doc[start + BEGIN.len()..end];
        if current == table {
            return;
        }
        if std::env::var_os("LOCKD_UPDATE_DOCS").is_some() {
            let updated = format!("{}{BEGIN}{table}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).expect("docs/configuration.md is writable");
            return;
        }
        panic!(
            "docs/configuration.md's table of settings is not the flags'; run \
             `LOCKD_UPDATE_DOCS=1 cargo test -p lockd --bin lockd` to rewrite it"
        );
    }
}
