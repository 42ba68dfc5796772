//! A follower whose disk stalls (a sync that hangs for seconds, as cloud disks do) must not
//! unseat a leader that is alive and heard from: it hears the leader's messages even while it
//! cannot answer them. Real nodes (`ClusterNode`, with lockd's election timer) on loopback;
//! the stall is `log_store::test_stall`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use openraft::ServerState;
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::log_store::{test_stall, LOG_DIR};
use super::node::{ClusterNode, ClusterOptions};
use super::peer_admission::PeerLimits;
use super::transport::PeerCredentials;
use super::types::{EntryOp, LockdNode, Proposal};
use crate::core::TableConfig;
use crate::metrics::Metrics;

const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_millis(50);
const DEADLINE: Duration = Duration::from_secs(20);

struct TestNode {
    node: ClusterNode,
    dir: TempDir,
}

impl TestNode {
    fn term(&self) -> u64 {
        self.node.raft.metrics().borrow().current_term
    }

    fn applied(&self) -> u64 {
        let metrics = self.node.raft.metrics();
        let applied = metrics.borrow().last_applied;
        applied.map_or(0, |log_id| log_id.index)
    }
}

async fn start_cluster() -> Vec<TestNode> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = LockdNode {
            client: "127.0.0.1:1".to_owned(),
            peer: listener.local_addr().unwrap().to_string(),
        };
        peers.insert(id, node);
        listeners.push((id, listener));
    }
    let mut nodes = Vec::new();
    for (id, peer_listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join(crate::store::DB_FILE)).unwrap();
        let options = ClusterOptions {
            node_id: id,
            peer_listener,
            peers: peers.clone(),
            bootstrap: id == 1,
            election_timeout: ELECTION_TIMEOUT,
            heartbeat: HEARTBEAT,
            snapshot_every: 100_000,
            credentials: PeerCredentials::default(),
            peer_limits: PeerLimits::default(),
        };
        let metrics = Arc::new(Metrics::new());
        let node = ClusterNode::start(
            Arc::new(db),
            dir.path(),
            TableConfig::default(),
            metrics,
            options,
        )
        .await
        .unwrap();
        nodes.push(TestNode { node, dir });
    }
    nodes
}

/// The index of the leader every node follows, once they all agree.
async fn agreed_leader(nodes: &[TestNode]) -> usize {
    let started = Instant::now();
    loop {
        let leaders: Vec<_> = nodes
            .iter()
            .map(|n| n.node.raft.metrics().borrow().current_leader)
            .collect();
        if let Some(Some(leader)) = leaders.first().copied() {
            let position = nodes.iter().position(|n| n.node.node_id == leader);
            if let Some(position) = position.filter(|_| leaders.iter().all(|l| *l == Some(leader)))
            {
                let state = nodes[position].node.raft.metrics().borrow().state;
                if state == ServerState::Leader {
                    return position;
                }
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no leader all three nodes follow within {DEADLINE:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `Tick` stamped with the wall clock, as a leader's front end stamps its entries.
fn tick_now() -> Proposal {
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
async fn try_commit_one(leader: &TestNode) -> Result<u64, String> {
    match tokio::time::timeout(DEADLINE, leader.node.raft.client_write(tick_now())).await {
        Ok(Ok(written)) => Ok(written.log_id.index),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no commit within {DEADLINE:?}")),
    }
}

async fn commit_one(leader: &TestNode) -> u64 {
    try_commit_one(leader)
        .await
        .unwrap_or_else(|err| panic!("node {}: {err}", leader.node.node_id))
}

async fn wait_applied(node: &TestNode, index: u64) {
    let started = Instant::now();
    while node.applied() < index {
        assert!(
            started.elapsed() < DEADLINE,
            "node {} did not apply entry {index} within {DEADLINE:?} (applied {})",
            node.node.node_id,
            node.applied()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_stalls_does_not_unseat_a_live_leader() {
    let nodes = start_cluster().await;
    let leader = agreed_leader(&nodes).await;
    let follower = (leader + 1) % nodes.len();
    let index = commit_one(&nodes[leader]).await;
    for node in &nodes {
        wait_applied(node, index).await;
    }
    let term = nodes[leader].term();

    // The follower's log hangs for three election timeouts, long past when it would run for
    // leader if it took its leader for dead, while the other two commit without it.
    let log_dir = nodes[follower].dir.path().join(LOG_DIR);
    let stall = test_stall::stall(&log_dir);
    let during = commit_one(&nodes[leader]).await;
    tokio::time::sleep(3 * ELECTION_TIMEOUT).await;
    stall.release();

    // It catches up, and a commit after the stall reaches it: any vote it asked for by now
    // has been answered, and any higher term it took has reached the leader.
    wait_applied(&nodes[follower], during).await;
    let after = try_commit_one(&nodes[leader]).await.unwrap_or_else(|err| {
        panic!("the follower whose disk stalled unseated the live leader: {err}")
    });
    wait_applied(&nodes[follower], after).await;
    let terms: Vec<u64> = nodes.iter().map(TestNode::term).collect();
    assert_eq!(
        terms,
        vec![term; 3],
        "no election: node {} stayed leader in term {term}",
        nodes[leader].node.node_id
    );
    assert_eq!(agreed_leader(&nodes).await, leader);
    for node in nodes {
        node.node.shutdown().await;
    }
}

/// openraft 0.9's leader stops when its own log's sync hangs (its core waits for the sync
/// before it goes on, heartbeats included): the other two elect a new leader and serve, and
/// the old one, its disk back, follows the new one; what its client asked meanwhile fails
/// rather than hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_stalls_is_replaced_and_follows_once_its_disk_is_back() {
    let nodes = start_cluster().await;
    let old = agreed_leader(&nodes).await;
    let index = commit_one(&nodes[old]).await;
    for node in &nodes {
        wait_applied(node, index).await;
    }
    let term = nodes[old].term();

    let stall = test_stall::stall(&nodes[old].dir.path().join(LOG_DIR));
    let raft = nodes[old].node.raft.clone();
    let stuck_write = tokio::spawn(async move { raft.client_write(tick_now()).await });
    // The other two elect one of themselves and commit without the old leader.
    let others: Vec<&TestNode> = (0..nodes.len())
        .filter(|&i| i != old)
        .map(|i| &nodes[i])
        .collect();
    let started = Instant::now();
    let new = loop {
        let led: Vec<_> = others
            .iter()
            .map(|n| {
                let metrics = n.node.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state, metrics.current_term)
            })
            .collect();
        if let Some(i) = led
            .iter()
            .position(|(state, t)| *state == ServerState::Leader && *t > term)
        {
            break others[i];
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the two nodes with working disks elected no leader within {DEADLINE:?}: {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let committed = commit_one(new).await;

    stall.release();
    let stuck = tokio::time::timeout(DEADLINE, stuck_write)
        .await
        .expect("the write sent to the stalled leader is answered once its disk is back")
        .unwrap();
    // Committed after all, if the old leader replicated it before it stopped (then the new
    // leader has it, by Raft's leader completeness), or refused, naming the new leader.
    if let Err(err) = &stuck {
        assert!(
            matches!(
                err,
                openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(_))
            ),
            "the write sent to the stalled leader: {err}"
        );
    }
    wait_applied(&nodes[old], committed).await;
    let position = agreed_leader(&nodes).await;
    assert_eq!(nodes[position].node.node_id, new.node.node_id);
    for node in nodes {
        node.node.shutdown().await;
    }
}
