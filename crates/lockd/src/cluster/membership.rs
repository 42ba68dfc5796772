//! The operator's cluster commands: `cluster_status` (any node answers for itself) and the
//! membership changes `add_node` (learner first, voter once it has caught up) and
//! `remove_node`. They go to openraft directly, not through the lock table's log entries.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, RaftMetrics, ServerState};
use protocol::cmd::{AddNode, ClusterMember, ClusterStatusOk, RemoveNode};
use protocol::{ErrorCode, ReplyBody, RequestId, ServerFrame};
use tracing::{info, warn};

use super::types::{LockdNode, TypeConfig};
use crate::seam::Outbox;

/// How long `add_node` waits for the new node to catch up before answering that it stays a
/// learner.
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster as this node sees it.
pub(crate) fn status(metrics: &RaftMetrics<u64, LockdNode>) -> ClusterStatusOk {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| ClusterMember {
            node_id: *id,
            client: node.client.clone(),
            peer: node.peer.clone(),
            voter: voters.contains(id),
            matched: metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(id).copied().flatten())
                .map(|log_id| log_id.index)
                .or_else(|| {
                    (*id == metrics.id)
                        .then_some(metrics.last_log_index)
                        .flatten()
                }),
        })
        .collect();
    ClusterStatusOk {
        node_id: metrics.id,
        role: match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
        .to_owned(),
        term: metrics.current_term,
        leader: metrics.current_leader,
        last_log_index: metrics.last_log_index,
        last_applied: metrics.last_applied.map(|log_id| log_id.index),
        members,
    }
}

/// Adds a member in the background and answers `id` on `outbox` when it is a voter.
pub(crate) fn spawn_add(raft: Raft<TypeConfig>, outbox: Outbox, id: RequestId, add: AddNode) {
    tokio::spawn(async move {
        let node = LockdNode {
            client: add.client,
            peer: add.peer,
        };
        info!(node_id = add.node_id, %node, "adding a node: as a learner first");
        let caught_up =
            tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(add.node_id, node, true)).await;
        let frame = match caught_up {
            Err(_) => ServerFrame::error(
                Some(id),
                ErrorCode::Internal,
                format!(
                    "node {} did not catch up with the log within {CATCH_UP_TIMEOUT:?}; it stays \
                     a learner (check that it runs and that its peer address is reachable), \
                     and add_node can be sent again",
                    add.node_id
                ),
            ),
            Ok(Err(err)) => refusal(id, err),
            Ok(Ok(_)) => {
                let voters = BTreeSet::from([add.node_id]);
                match raft
                    .change_membership(ChangeMembers::AddVoterIds(voters), false)
                    .await
                {
                    Ok(_) => {
                        info!(node_id = add.node_id, "the node is now a voter");
                        ServerFrame::Ok {
                            id,
                            body: ReplyBody::EMPTY,
                        }
                    }
                    Err(err) => refusal(id, err),
                }
            }
        };
        outbox.send(frame);
    });
}

/// Removes a member in the background and answers `id` on `outbox`.
pub(crate) fn spawn_remove(
    raft: Raft<TypeConfig>,
    outbox: Outbox,
    id: RequestId,
    remove: RemoveNode,
) {
    tokio::spawn(async move {
        info!(node_id = remove.node_id, "removing a node");
        let voters = BTreeSet::from([remove.node_id]);
        let frame = match raft
            .change_membership(ChangeMembers::RemoveVoters(voters), false)
            .await
        {
            Ok(_) => ServerFrame::Ok {
                id,
                body: ReplyBody::EMPTY,
            },
            Err(err) => refusal(id, err),
        };
        outbox.send(frame);
    });
}

/// The reply to a membership change openraft refused.
fn refusal(id: RequestId, err: RaftError<u64, ClientWriteError<u64, LockdNode>>) -> ServerFrame {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            not_leader(Some(id), forward.leader_node)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            ServerFrame::error(Some(id), ErrorCode::BadRequest, err.to_string())
        }
        RaftError::Fatal(fatal) => {
            warn!(error = %fatal, "a membership change failed");
            ServerFrame::error(Some(id), ErrorCode::Internal, fatal.to_string())
        }
    }
}

/// The leader's node entry, from a node's Raft metrics.
pub(crate) fn leader_node(metrics: &RaftMetrics<u64, LockdNode>) -> Option<LockdNode> {
    let leader = metrics.current_leader?;
    metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .cloned()
}

/// The `not_leader` error, naming the leader's client address when known.
pub(crate) fn not_leader(request: Option<RequestId>, leader: Option<LockdNode>) -> ServerFrame {
    let message = match &leader {
        Some(node) => format!(
            "this node is not the leader; the leader is at {}",
            node.client
        ),
        None => "this node is not the leader, and no leader is known yet; retry shortly".to_owned(),
    };
    let mut frame = ServerFrame::error(request, ErrorCode::NotLeader, message);
    if let ServerFrame::Err { error, .. } = &mut frame {
        error.leader = leader.map(|node| node.client);
    }
    frame
}
