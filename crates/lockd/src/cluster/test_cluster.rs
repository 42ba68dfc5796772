//! Test-only: three real nodes (`ClusterNode`, with lockd's election timer, peer network and
//! log store) on loopback, each in a temporary data directory, that a test can stop and start
//! again on the same address and data, as an operator restarts a node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use redb::Database;
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::node::{ClusterNode, ClusterOptions};
use super::peer_admission::PeerLimits;
use super::transport::PeerCredentials;
use super::types::{EntryOp, LockdNode, Proposal};
use crate::core::TableConfig;
use crate::metrics::Metrics;

pub(super) const HEARTBEAT: Duration = Duration::from_millis(50);
/// How long a test waits for anything before it fails, saying what it waited for.
pub(super) const DEADLINE: Duration = Duration::from_secs(20);

/// A running node.
pub(super) struct TestNode {
    pub(super) node: ClusterNode,
    pub(super) dir: TempDir,
    db: Arc<Database>,
    peers: BTreeMap<u64, LockdNode>,
    election_timeout: Duration,
}

/// A node stopped by [`TestNode::stop`], with its data, to start again.
pub(super) struct StoppedNode {
    id: u64,
    dir: TempDir,
    db: Arc<Database>,
    peers: BTreeMap<u64, LockdNode>,
    election_timeout: Duration,
}

impl TestNode {
    pub(super) fn id(&self) -> u64 {
        self.node.node_id
    }

    pub(super) fn term(&self) -> u64 {
        self.node.raft.metrics().borrow_watched().current_term
    }

    pub(super) fn state(&self) -> ServerState {
        self.node.raft.metrics().borrow_watched().state
    }

    /// Whether a majority has acknowledged this node as leader (openraft 0.10 refuses a
    /// leader's writes before).
    pub(super) fn quorum_acked(&self) -> bool {
        self.node
            .raft
            .metrics()
            .borrow_watched()
            .last_quorum_acked
            .is_some()
    }

    pub(super) fn current_leader(&self) -> Option<u64> {
        self.node.raft.metrics().borrow_watched().current_leader
    }

    pub(super) fn applied(&self) -> u64 {
        let metrics = self.node.raft.metrics();
        let applied = metrics.borrow_watched().last_applied;
        applied.map_or(0, |log_id| log_id.index)
    }

    pub(super) fn last_log_index(&self) -> u64 {
        let metrics = self.node.raft.metrics();
        let last = metrics.borrow_watched().last_log_index;
        last.unwrap_or(0)
    }

    /// Stops the node as `lockd` stops on a signal: its peers see its connections close.
    pub(super) async fn stop(self) -> StoppedNode {
        let id = self.id();
        self.node.shutdown().await;
        StoppedNode {
            id,
            dir: self.dir,
            db: self.db,
            peers: self.peers,
            election_timeout: self.election_timeout,
        }
    }
}

impl StoppedNode {
    /// Starts the node again on its peer address and data.
    pub(super) async fn start(self) -> TestNode {
        let address = &self.peers[&self.id].peer;
        let listener = TcpListener::bind(address)
            .await
            .unwrap_or_else(|err| panic!("cannot listen on {address} again: {err}"));
        start_node(
            self.id,
            listener,
            self.dir,
            self.db,
            self.peers,
            self.election_timeout,
        )
        .await
    }
}

async fn start_node(
    id: u64,
    peer_listener: TcpListener,
    dir: TempDir,
    db: Arc<Database>,
    peers: BTreeMap<u64, LockdNode>,
    election_timeout: Duration,
) -> TestNode {
    let options = ClusterOptions {
        node_id: id,
        peer_listener,
        peers: peers.clone(),
        bootstrap: id == 1,
        election_timeout,
        heartbeat: HEARTBEAT,
        snapshot_every: 100_000,
        credentials: PeerCredentials::default(),
        peer_limits: PeerLimits::default(),
    };
    let node = ClusterNode::start(
        Arc::clone(&db),
        dir.path(),
        TableConfig::default(),
        Arc::new(Metrics::new()),
        options,
    )
    .await
    .unwrap();
    TestNode {
        node,
        dir,
        db,
        peers,
        election_timeout,
    }
}

/// A loopback network of the cluster's own, `127.X.Y` with random X and Y, as the integration
/// tests' clusters have (`tests/it/cluster/mod.rs`): a node restarts on its peer port, and no
/// other socket ever binds a port on these IPs, nor another test's cluster picks the same one.
fn private_net() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let random = hasher.finish();
    format!("127.{}.{}", 1 + random % 254, 1 + (random >> 8) % 254)
}

/// Three nodes with `--election-timeout-ms` `election_timeout`; node 1 bootstraps the cluster.
pub(super) async fn start_cluster(election_timeout: Duration) -> Vec<TestNode> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    let net = private_net();
    for id in 1..=3 {
        // Not 127.0.0.1, where the port could be taken as an outgoing connection's source port
        // while the node is stopped; connections to this IP leave from 127.0.0.1.
        let listener = TcpListener::bind((format!("{net}.{}", 110 + id).as_str(), 0))
            .await
            .unwrap();
        let node = LockdNode {
            client: "127.0.0.1:1".to_owned(),
            peer: listener.local_addr().unwrap().to_string(),
        };
        peers.insert(id, node);
        listeners.push((id, listener));
    }
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join(crate::store::DB_FILE)).unwrap();
        let node = start_node(
            id,
            listener,
            dir,
            Arc::new(db),
            peers.clone(),
            election_timeout,
        )
        .await;
        nodes.push(node);
    }
    nodes
}

/// The index of the leader every node follows, once they all agree.
pub(super) async fn agreed_leader(nodes: &[TestNode]) -> usize {
    let started = Instant::now();
    loop {
        let leaders: Vec<_> = nodes.iter().map(TestNode::current_leader).collect();
        if let Some(Some(leader)) = leaders.first().copied() {
            let position = nodes.iter().position(|n| n.id() == leader);
            if let Some(position) = position.filter(|_| leaders.iter().all(|l| *l == Some(leader)))
            {
                // openraft 0.10 takes writes once a majority acknowledged the leader.
                if nodes[position].state() == ServerState::Leader && nodes[position].quorum_acked()
                {
                    return position;
                }
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no leader all nodes follow within {DEADLINE:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `Tick` stamped with the wall clock, as a leader's front end stamps its entries.
pub(super) fn tick_now() -> Proposal {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Proposal {
        at_ms: u64::try_from(at_ms).unwrap(),
        ops: vec![EntryOp::Tick],
    }
}

/// Commits an entry through `leader` and returns its index, or says why it could not.
pub(super) async fn try_commit_one(leader: &TestNode) -> Result<u64, String> {
    match tokio::time::timeout(DEADLINE, leader.node.raft.client_write(tick_now())).await {
        Ok(Ok(written)) => Ok(written.log_id.index),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no commit within {DEADLINE:?}")),
    }
}

pub(super) async fn commit_one(leader: &TestNode) -> u64 {
    try_commit_one(leader)
        .await
        .unwrap_or_else(|err| panic!("node {}: {err}", leader.id()))
}

pub(super) async fn wait_applied(node: &TestNode, index: u64) {
    let started = Instant::now();
    while node.applied() < index {
        assert!(
            started.elapsed() < DEADLINE,
            "node {} did not apply entry {index} within {DEADLINE:?} (applied {})",
            node.id(),
            node.applied()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
