//! Elections after a leader dies while one survivor is behind it (a node restarted a moment
//! before, as in a run of leader kills): the survivor that is behind cannot win, and must not
//! hold up the one that can. Real nodes on loopback (`test_cluster.rs`).

use std::time::{Duration, Instant};

use openraft::ServerState;

use super::test_cluster::{
    agreed_leader, commit_one, start_cluster, wait_applied, TestNode, DEADLINE, HEARTBEAT,
};

/// Longer than any test here runs: no node's own election timer runs out during one, so every
/// election in it is one that a refused vote started.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// The survivor behind runs first (its timer happened to run out first, which the test makes
/// certain by starting its election by hand). The up-to-date survivor refuses it, and runs a
/// heartbeat later rather than when its own timer runs out. It has the lower node id, so its
/// first term is one the behind node already voted itself in, and refuses; it runs again a
/// heartbeat later, in the term after, and wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_up_to_date_survivor_runs_soon_when_the_one_behind_runs_first() {
    let live = start_cluster(ELECTION_TIMEOUT).await;
    let leader = agreed_leader(&live).await;
    let mut nodes: Vec<Option<TestNode>> = live.into_iter().map(Some).collect();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // The follower with the higher id falls behind; the other stays up to date.
    let (ahead, behind) = (followers[0], followers[1]);
    let term = nodes[leader].as_ref().unwrap().term();

    let stopped = nodes[behind].take().unwrap().stop().await;
    let missed = commit_one(nodes[leader].as_ref().unwrap()).await;
    wait_applied(nodes[ahead].as_ref().unwrap(), missed).await;
    nodes[leader].take().unwrap().stop().await;
    nodes[behind] = Some(stopped.start().await);

    let ahead_node = nodes[ahead].as_ref().unwrap();
    let behind_node = nodes[behind].as_ref().unwrap();
    assert!(
        behind_node.last_log_index() < missed,
        "node {} should lack entry {missed}",
        behind_node.id()
    );
    let started = Instant::now();
    while !ahead_node
        .node
        .leader_contact
        .in_doubt(Instant::now(), HEARTBEAT)
    {
        assert!(
            started.elapsed() < DEADLINE,
            "node {} still hears from its stopped leader after {DEADLINE:?}",
            ahead_node.id()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    behind_node.node.raft.trigger().elect(false).await.unwrap();

    let started = Instant::now();
    // openraft 0.10 takes writes once a majority acknowledged the leader.
    while ahead_node.state() != ServerState::Leader
        || !ahead_node.quorum_acked()
        || behind_node.current_leader() != Some(ahead_node.id())
    {
        assert!(
            started.elapsed() < DEADLINE,
            "node {} (up to date) did not lead, with node {} (behind) following, within \
             {DEADLINE:?}, far below the {ELECTION_TIMEOUT:?} election timeout: terms {} and {}",
            ahead_node.id(),
            behind_node.id(),
            ahead_node.term(),
            behind_node.term(),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The behind node's term, the refused one, and the winning one.
    assert!(
        ahead_node.term() <= term + 2,
        "node {} leads in term {}, more than two after the old leader's {term}",
        ahead_node.id(),
        ahead_node.term()
    );
    let after = commit_one(ahead_node).await;
    wait_applied(behind_node, after).await;
    for node in nodes.into_iter().flatten() {
        node.node.shutdown().await;
    }
}
