//! Starting a cluster node: its Raft instance over the node's redb file, the peer listener,
//! and the bootstrap of a new cluster.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use redb::Database;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::election_timer;
use super::leader_contact::LeaderContact;
use super::log_store::{WalLogStore, WriteProbe, LOG_DIR};
use super::machine::{Replica, ReplicaMachine, SnapshotError};

use super::network::PeerNetwork;
use super::peer_admission::{watch_member_addresses, PeerAdmission, PeerLimits};
use super::peer_server::serve_peers;
use super::transport::PeerCredentials;
use super::types::{LockdNetwork, LockdNode, LockdRaft, TypeConfig};
use crate::core::TableConfig;
use crate::metrics::Metrics;

/// How a node joins its cluster; `lockd --node-id ...` fills it.
#[derive(Debug)]
pub struct ClusterOptions {
    /// This node's id in `peers`.
    pub node_id: u64,
    /// Bound to `--peer-listen`: where the other nodes reach this one.
    pub peer_listener: TcpListener,
    /// Every voter of a new cluster, this node included (`--peers`).
    pub peers: BTreeMap<u64, LockdNode>,
    /// Initialize a new cluster with `peers` as its voters, if this node has no Raft state
    /// yet (`--bootstrap`).
    pub bootstrap: bool,
    /// A follower that hears no leader for a random time between this and 4/3 of it starts an
    /// election (`--election-timeout-ms`; see [`openraft_election_timeouts`]).
    pub election_timeout: Duration,
    /// How often the leader sends heartbeats (`--heartbeat-ms`).
    pub heartbeat: Duration,
    /// Take a snapshot, and drop the log before it, every this many entries
    /// (`--snapshot-every`).
    pub snapshot_every: u64,
    /// What the nodes present to each other: the shared secret (`--peer-secret-file`, never a
    /// client's) and mutual TLS (`--peer-tls-*`).
    pub credentials: PeerCredentials,
    /// The peer port's connection limits (`--peer-max-connections`,
    /// `--peer-max-handshakes-per-ip`).
    pub peer_limits: PeerLimits,
}

/// A running Raft node and what the front end needs of it.
pub(crate) struct ClusterNode {
    pub(crate) raft: LockdRaft,
    pub(crate) node_id: u64,
    pub(crate) replica: Arc<Mutex<Replica>>,
    /// A copy of the network Raft uses, for membership's check that a new node answers.
    pub(crate) network: LockdNetwork,
    /// When the leader was last heard from, and how often it sends heartbeats: a follower's
    /// front end holds clients' requests while its leader is in doubt.
    pub(crate) leader_contact: LeaderContact,
    pub(crate) heartbeat: Duration,
    /// `--election-timeout-ms`: how long a front end holds a request for want of a leader,
    /// twice over, before it answers `not_leader` without one.
    pub(crate) election_timeout: Duration,
    /// Set while this node's own log write has hung for over a third of the election timeout
    /// (see [`watch_own_disk`]): its front end proposes nothing meanwhile.
    pub(crate) disk_stalled: Arc<AtomicBool>,
    peer_stop: CancellationToken,
    peer_server: JoinHandle<()>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The longest request line a cluster node accepts: `--max-frame-bytes` may not be more, so
/// that a log entry (a few MiB of requests, and one more) always fits a peer frame
/// (`wire::MAX_FRAME_BYTES`, 64 MiB).
pub const MAX_CLUSTER_FRAME_BYTES: usize = 16 << 20;

/// Why a cluster node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A `--peers` item is malformed.
    #[error("--peers item {0:?} is not ID=CLIENT_ADDR/PEER_ADDR")]
    PeerItem(String),
    /// `--peers` names a node twice.
    #[error("--peers names node {0} twice")]
    PeerTwice(u64),
    /// `--peers` is empty.
    #[error("--peers names no node")]
    NoPeers,
    /// This node is not a member of the cluster it is asked to start.
    #[error("--node-id {0} is not among --peers")]
    NotAPeer(u64),
    /// The election timeout and heartbeat do not fit together.
    #[error("invalid cluster timing: {0}")]
    Timing(#[source] Box<openraft::ConfigError>),
    /// The node's redb file cannot be opened.
    #[error("cannot open {}: {source}", path.display())]
    Database {
        /// The file.
        path: std::path::PathBuf,
        /// redb's error.
        source: Box<redb::DatabaseError>,
    },
    /// The Raft log cannot be opened.
    #[error("cannot open the Raft log: {0}")]
    Log(#[source] std::io::Error),
    /// The table cannot be rebuilt from the last snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Raft stopped with a fatal error while starting or bootstrapping.
    #[error("cannot {action}: {source}")]
    Raft {
        /// What it was doing.
        action: &'static str,
        /// openraft's error.
        source: Box<openraft::error::Fatal<TypeConfig>>,
    },
    /// The cluster could not be initialized.
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(#[source] Box<openraft::error::InitializeError<TypeConfig>>),
}

/// Parses `--peers`: `ID=CLIENT_ADDR/PEER_ADDR` items separated by commas, e.g.
/// `1=10.0.0.1:5555/10.0.0.1:5556,2=...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, LockdNode>, NodeError> {
    let mut peers = BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let shape = || NodeError::PeerItem(item.to_owned());
        let (id, addrs) = item.split_once('=').ok_or_else(shape)?;
        let (client, peer) = addrs.split_once('/').ok_or_else(shape)?;
        let id: u64 = id.trim().parse().map_err(|_| shape())?;
        if client.trim().is_empty() || peer.trim().is_empty() {
            return Err(shape());
        }
        let node = LockdNode {
            client: client.trim().to_owned(),
            peer: peer.trim().to_owned(),
        };
        if peers.insert(id, node).is_some() {
            return Err(NodeError::PeerTwice(id));
        }
    }
    if peers.is_empty() {
        return Err(NodeError::NoPeers);
    }
    Ok(peers)
}

/// openraft's election timeouts for `--election-timeout-ms` `election_ms`: `(min, max)`, such
/// that a follower that hears no leader starts an election between `election_ms` and 4/3 of it.
///
/// A follower that has a leader waits for openraft's leader lease, which is
/// `election_timeout_max`, plus its random election timeout, between `election_timeout_min`
/// and `election_timeout_max`, before it runs: `max + [min, max]` in all. openraft's defaults
/// (and this node's before) took `election_ms` and twice it, so a failover took 3 to 4
/// election timeouts. With `max + min = election_ms` and `min` a third of it, the wait is
/// `[election_ms, 4/3 election_ms]` (rounded); the random third keeps two followers from running at once.
/// The heartbeat must stay below `min`: `lockd` checks that it is below a third of
/// `election_ms`.
pub fn openraft_election_timeouts(election_ms: u64) -> (u64, u64) {
    let min = election_ms.div_ceil(3);
    (min, election_ms - min)
}

/// How long the leader waits for each chunk of a snapshot it sends, the last one included,
/// which is answered once the follower has installed the whole snapshot.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;

impl ClusterNode {
    /// Opens the node's Raft log (`data_dir/raft-log/`), its snapshots and its table, starts
    /// serving peers, and bootstraps a new cluster when asked to.
    pub(crate) async fn start(
        db: Arc<Database>,
        data_dir: &std::path::Path,
        table: TableConfig,
        metrics: Arc<Metrics>,
        options: ClusterOptions,
    ) -> Result<ClusterNode, NodeError> {
        if !options.peers.contains_key(&options.node_id) {
            return Err(NodeError::NotAPeer(options.node_id));
        }
        let election_ms = u64::try_from(options.election_timeout.as_millis()).unwrap_or(u64::MAX);
        let heartbeat_ms = u64::try_from(options.heartbeat.as_millis()).unwrap_or(u64::MAX);
        let (election_timeout_min, election_timeout_max) = openraft_election_timeouts(election_ms);
        let config = Config {
            cluster_name: "lockd".to_owned(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min,
            election_timeout_max,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every),
            // Keep some log behind the snapshot, so a follower that is a little behind catches
            // up from the log rather than by a whole snapshot.
            max_in_snapshot_log_to_keep: options.snapshot_every.min(1_000),
            // The last chunk of a snapshot is answered once the follower has decoded it and
            // rebuilt its table (1.3 s for a million held locks on a 2-core machine); openraft's
            // 200 ms would time it out, and the leader would send the whole snapshot again.
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            ..Config::default()
        }
        .validate()
        .map_err(|err| NodeError::Timing(Box::new(err)))?;
        let log_store = WalLogStore::<TypeConfig>::open(
            data_dir.join(LOG_DIR),
            Some(Arc::clone(&db)),
            Some(metrics.raft_log_sync_seconds.clone()),
        )
        .await
        .map_err(NodeError::Log)?;
        let write_probe = log_store.write_probe();
        let campaigns = metrics.raft_campaigns.clone();
        let state_machine = ReplicaMachine::open(db, data_dir, table, metrics)?;
        let replica = state_machine.replica();
        let network = PeerNetwork::new(options.node_id, options.credentials.clone());
        let raft = Raft::new(
            options.node_id,
            Arc::new(config),
            network.clone(),
            log_store,
            state_machine,
        )
        .await
        .map_err(|source| NodeError::Raft {
            action: "start the Raft node",
            source: Box::new(source),
        })?;
        // lockd's election timer draws a fresh timeout for every attempt (openraft's draws one
        // per process, so two nodes can collide again and again): see `election_timer.rs`.
        raft.runtime_config().elect(false);
        let peer_stop = CancellationToken::new();
        let configured = options.peers.values().map(|node| node.peer.clone());
        let members = watch_member_addresses(&raft, configured.collect());
        let leader_contact = LeaderContact::default();
        tokio::spawn(election_timer::run(
            raft.clone(),
            leader_contact.clone(),
            network.election_signals(),
            campaigns,
            options.election_timeout,
            options.heartbeat,
            peer_stop.clone(),
        ));
        let disk_stalled = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch_own_disk(
            raft.clone(),
            write_probe,
            Arc::clone(&disk_stalled),
            disk_stall_threshold(options.election_timeout),
            options.heartbeat / 4,
            peer_stop.clone(),
        ));
        let peer_server = tokio::spawn(serve_peers(
            options.peer_listener,
            raft.clone(),
            options.credentials,
            PeerAdmission::new(options.peer_limits, members),
            leader_contact.clone(),
            network.election_signals(),
            peer_stop.clone(),
        ));
        let node = ClusterNode {
            raft,
            node_id: options.node_id,
            replica,
            network,
            leader_contact,
            heartbeat: options.heartbeat,
            election_timeout: options.election_timeout,
            disk_stalled,
            peer_stop,
            peer_server,
        };
        if options.bootstrap {
            node.bootstrap(options.peers).await?;
        }
        Ok(node)
    }

    /// Initializes a new cluster with `peers` as voters, unless this node already has Raft
    /// state (then bootstrapping again is a no-op, so `--bootstrap` may stay in a unit file).
    async fn bootstrap(&self, peers: BTreeMap<u64, LockdNode>) -> Result<(), NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|source| NodeError::Raft {
                action: "read the Raft state",
                source: Box::new(source),
            })?;
        if initialized {
            info!("--bootstrap: this node already belongs to a cluster; nothing to do");
            return Ok(());
        }
        info!(voters = ?peers.keys().collect::<Vec<_>>(), "bootstrapping a new cluster");
        match self.raft.initialize(peers).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(err),
            )) => {
                warn!(error = %err, "--bootstrap: the cluster was initialized meanwhile");
                Ok(())
            }
            Err(openraft::error::RaftError::APIError(err)) => {
                Err(NodeError::Bootstrap(Box::new(err)))
            }
            Err(openraft::error::RaftError::Fatal(source)) => Err(NodeError::Raft {
                action: "bootstrap the cluster",
                source: Box::new(source),
            }),
        }
    }

    /// Stops Raft and the peer listener.
    pub(crate) async fn shutdown(self) {
        if let Err(err) = self.raft.shutdown().await {
            warn!(error = %err, "the Raft node did not stop cleanly");
        }
        self.peer_stop.cancel();
        let _ = self.peer_server.await;
    }
}

/// How long this node's own log write may take before [`watch_own_disk`] stops its heartbeats
/// and proposals: a third of the election timeout.
///
/// Stopping them starts no election for a write that ends sooner than the followers' election
/// timeout, but it holds the front end's proposals, and a pause past the leader lease (two
/// thirds of the election timeout after the last heartbeat a majority answered) makes openraft
/// refuse the writes that follow with `not_leader` naming no leader, until the next heartbeat
/// round. At `--heartbeat-ms` (the threshold before: 200 ms by default) an ordinary slow sync
/// did the first, and one of about 0.9 s the second. A third of the election timeout is never
/// below the heartbeat (lockd requires the heartbeat below it), and a hung leader is replaced
/// at most that much minus a heartbeat later than before (133 ms by default).
pub(crate) fn disk_stall_threshold(election_timeout: Duration) -> Duration {
    election_timeout / 3
}

/// A leader whose own log write hangs stops leading in effect, so that the others replace it,
/// as under openraft 0.9 (whose core waited for the leader's sync, heartbeats included).
///
/// openraft 0.10 does not wait for the leader's sync: its heartbeats go on, and the followers
/// commit the entries it sends, but it cannot apply them before its own log has them, and its
/// clients' replies come from what it applies. So while its writer has been in one write for
/// over `threshold` ([`disk_stall_threshold`]), checked every `every`, this node sends no
/// heartbeats and its front end proposes nothing (`disk_stalled`); the followers then hear
/// nothing and elect one of themselves after an election timeout. Once the write is done,
/// heartbeats resume: if no one was elected meanwhile, nothing changed; if someone was, this
/// node's vote was taken over and it follows.
async fn watch_own_disk(
    raft: LockdRaft,
    probe: WriteProbe,
    disk_stalled: Arc<AtomicBool>,
    threshold: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut check = tokio::time::interval(every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = check.tick() => {}
        }
        let hung = probe
            .busy_for(std::time::Instant::now())
            .is_some_and(|busy| busy > threshold);
        if hung == disk_stalled.load(Ordering::Relaxed) {
            continue;
        }
        if hung {
            warn!(
                "this node's Raft log write has hung for over {threshold:?}: no heartbeats and \
                 no proposals until it is done"
            );
        } else {
            info!("this node's Raft log write is done: heartbeats resume");
        }
        disk_stalled.store(hung, Ordering::Relaxed);
        raft.runtime_config().heartbeat(!hung);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_election_starts_between_the_timeout_and_four_thirds_of_it() {
        for election_ms in [20, 300, 600, 1_000, 1_001, 60_000] {
            let (min, max) = openraft_election_timeouts(election_ms);
            assert!(min < max, "{election_ms}: {min} < {max}");
            // A follower that had a leader waits the leader lease (max) and then [min, max].
            assert_eq!(max + min, election_ms);
            assert!(2 * max <= election_ms * 4 / 3 + 1, "{election_ms}: {max}");
        }
    }

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let peers = parse_peers("1=127.0.0.1:5555/127.0.0.1:6555, 2=h2:5555/h2:6555").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&2].client, "h2:5555");
        assert_eq!(peers[&2].peer, "h2:6555");
        for bad in ["", "1=a", "x=a/b", "1=/b", "1=a/b,1=c/d"] {
            let err = parse_peers(bad).unwrap_err();
            assert!(err.to_string().contains("--peers"), "{bad}: {err}");
        }
    }
}
