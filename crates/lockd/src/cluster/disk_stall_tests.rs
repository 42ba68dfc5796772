//! A follower whose disk stalls (a sync that hangs for seconds, as cloud disks do) must not
//! unseat a leader that is alive and heard from: it hears the leader's messages even while it
//! cannot answer them. Real nodes (`ClusterNode`, with lockd's election timer) on loopback;
//! the stall is `log_store::test_stall`.

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::ServerState;

use super::log_store::{test_stall, LOG_DIR};
use super::test_cluster::{
    agreed_leader, commit_one, tick_now, try_commit_one, wait_applied, TestNode, DEADLINE,
    HEARTBEAT,
};

const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_stalls_does_not_unseat_a_live_leader() {
    let nodes = super::test_cluster::start_cluster(ELECTION_TIMEOUT).await;
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

/// A leader whose own log's sync hangs is replaced: the other two elect a new leader and
/// serve, and the old one, its disk back, follows the new one; what its client asked meanwhile
/// fails rather than hangs. (openraft 0.9's leader stopped by itself: its core waited for the
/// sync, heartbeats included. 0.10's does not wait, so lockd stops its heartbeats and
/// proposals while the write hangs: `node.rs`, `watch_own_disk`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_stalls_is_replaced_and_follows_once_its_disk_is_back() {
    let nodes = super::test_cluster::start_cluster(ELECTION_TIMEOUT).await;
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
    // The two may need more than one election: on openraft 0.9 a node whose own timer fires
    // while it grants another's vote runs in the next term and deposes the leader it just
    // voted for (seen beside CPU burners). So the write follows the leader, as a client does.
    let started = Instant::now();
    let committed = loop {
        let led: Vec<_> = others
            .iter()
            .map(|n| {
                let metrics = n.node.raft.metrics();
                let metrics = metrics.borrow_watched();
                (
                    metrics.state,
                    metrics.current_term,
                    metrics.last_quorum_acked.is_some(),
                )
            })
            .collect();
        // openraft 0.10 takes writes once a majority acknowledged the leader.
        let leader = led
            .iter()
            .position(|(state, t, acked)| *state == ServerState::Leader && *t > term && *acked);
        if let Some(i) = leader {
            match try_commit_one(others[i]).await {
                Ok(index) => break index,
                Err(err) if err.contains("forward") => {}
                Err(err) => panic!("node {}: {err}", others[i].id()),
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the two nodes with working disks elected no leader that committed within \
             {DEADLINE:?}: {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

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
    assert_ne!(
        position, old,
        "the old leader's log lacks the new leader's entries: it cannot lead again"
    );
    for node in nodes {
        node.node.shutdown().await;
    }
}

/// A leader whose sync is slow, but takes less than a third of the election timeout, keeps its
/// heartbeats and its proposals going (`node.rs`, `disk_stall_threshold`): a write of three
/// heartbeat intervals stopped both while the threshold was one heartbeat interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_sync_is_slow_but_shorter_than_a_third_of_the_timeout_keeps_heartbeating() {
    // A wide margin between the slow write and the threshold, for a loaded machine.
    let election_timeout = Duration::from_millis(1_500);
    let slow = 3 * HEARTBEAT;
    assert!(slow * 3 < super::node::disk_stall_threshold(election_timeout));
    let nodes = super::test_cluster::start_cluster(election_timeout).await;
    let leader = agreed_leader(&nodes).await;
    let index = commit_one(&nodes[leader]).await;
    wait_applied(&nodes[leader], index).await;
    let term = nodes[leader].term();

    let stall = test_stall::stall(&nodes[leader].dir.path().join(LOG_DIR));
    let raft = nodes[leader].node.raft.clone();
    let write = tokio::spawn(async move { raft.client_write(tick_now()).await });
    let started = Instant::now();
    while started.elapsed() < slow {
        assert!(
            !nodes[leader]
                .node
                .disk_stalled
                .load(std::sync::atomic::Ordering::Relaxed),
            "the leader stopped its heartbeats after {:?} of a slow write",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stall.release();
    let written = tokio::time::timeout(DEADLINE, write)
        .await
        .expect("the slow write is answered")
        .unwrap()
        .expect("the slow write commits");
    assert!(written.log_id.index > index);
    assert_eq!(nodes[leader].term(), term, "no election");
    assert_eq!(agreed_leader(&nodes).await, leader);
    for node in nodes {
        node.node.shutdown().await;
    }
}
