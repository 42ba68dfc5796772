//! The operator's cluster commands: `cluster_status` (any node answers for itself) and the
//! membership changes `add_node` (learner first, voter once it has caught up) and
//! `remove_node`. They go to openraft directly, not through the lock table's log entries.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use protocol::cmd::{AddNode, ClusterMember, ClusterStatusOk, RemoveNode};
use protocol::{Command, ErrorCode, ReplyBody, RequestId, ServerFrame};
use tracing::{info, warn};

use super::types::{LockdNetwork, LockdNode, LockdRaft, TypeConfig};
use crate::seam::Outbox;

/// How long `add_node` waits for the new node to catch up before answering that it stays a
/// learner.
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `add_node` waits for the new node to complete a peer handshake (TCP, TLS, hello)
/// before it refuses to add a node that is not there.
const PEER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin credential a command carries, if it is a membership change (which needs it).
pub(crate) fn admin_token_of(command: &Command) -> Option<Option<&str>> {
    match command {
        Command::AddNode(add) => Some(add.admin_token.as_deref()),
        Command::RemoveNode(remove) => Some(remove.admin_token.as_deref()),
        _ => None,
    }
}

/// Whether a membership change carrying `given` may go ahead on a node whose admin
/// credential is `expected`: changing the members decides who elects leaders and holds the
/// log, so a client's secret is not enough. `Err` says why not, for the client.
pub(crate) fn authorize(expected: Option<&str>, given: Option<&str>) -> Result<(), String> {
    let Some(expected) = expected else {
        return Err(
            "membership changes need the admin credential, and this lockd has none: \
                    start it with --admin-token-file"
                .to_owned(),
        );
    };
    match given {
        None => Err(
            "membership changes need the admin credential: send admin_token (lockctl: \
                     --admin-token-file or LOCKD_ADMIN_TOKEN)"
                .to_owned(),
        ),
        Some(given) if crate::secret::matches(given.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err("the admin_token given is not this cluster's admin credential".to_owned()),
    }
}

/// The cluster as this node sees it.
pub(crate) fn status(metrics: &RaftMetrics<TypeConfig>) -> ClusterStatusOk {
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
                .and_then(|replication| replication.get(id).cloned().flatten())
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
        last_applied: metrics.last_applied.as_ref().map(|log_id| log_id.index),
        snapshot_index: metrics.snapshot.as_ref().map(|log_id| log_id.index),
        purged_index: metrics.purged.as_ref().map(|log_id| log_id.index),
        members,
    }
}

/// Adds a member in the background and answers `id` on `outbox` when it is a voter.
pub(crate) fn spawn_add(
    raft: LockdRaft,
    network: LockdNetwork,
    outbox: Outbox,
    id: RequestId,
    add: AddNode,
) {
    tokio::spawn(async move {
        let node = LockdNode {
            client: add.client,
            peer: add.peer,
        };
        info!(node_id = add.node_id, %node, "adding a node: as a learner first");
        let frame = match add_voter(&raft, &network, add.node_id, node).await {
            Ok(()) => {
                info!(node_id = add.node_id, "the node is now a voter");
                ServerFrame::Ok {
                    id,
                    body: ReplyBody::EMPTY,
                }
            }
            Err(frame) => frame(id),
        };
        outbox.send(frame);
    });
}

/// A refusal, as the frame that answers the request.
type Refusal = Box<dyn FnOnce(RequestId) -> ServerFrame + Send>;

/// Adds `node_id` as a learner, waits until it has really replicated the log, then makes it a
/// voter. A node whose peer port does not answer, or does not accept this node's credentials
/// (its secret, its TLS certificate), is not added at all, and one that does not catch up stays
/// a learner: a voter that is not there would stop the cluster at the next failure.
async fn add_voter(
    raft: &LockdRaft,
    network: &LockdNetwork,
    node_id: u64,
    node: LockdNode,
) -> Result<(), Refusal> {
    let peer = node.peer.clone();
    let probe = match tokio::time::timeout(PEER_CHECK_TIMEOUT, network.probe(&peer)).await {
        Ok(probe) => probe,
        Err(_) => Err(format!("no handshake within {PEER_CHECK_TIMEOUT:?}")),
    };
    if let Err(why) = probe {
        return Err(Box::new(move |id| {
            ServerFrame::error(
                Some(id),
                ErrorCode::BadRequest,
                format!(
                    "node {node_id} does not answer as a peer on its peer address {peer} \
                     ({why}); start it (with --peer-listen {peer} and the cluster's peer \
                     credentials) before adding it"
                ),
            )
        }));
    }
    let target = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    if let Err(err) = raft.add_learner(node_id, node, false).await {
        return Err(Box::new(move |id| refusal(id, err)));
    }
    // The learner's entry itself comes after `target`; having matched up to it, the node has
    // everything the cluster had when it was asked to join.
    let mut metrics = raft.metrics();
    let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
        loop {
            let matched = metrics
                .borrow_and_update()
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&node_id).cloned().flatten())
                .map(|log_id| log_id.index);
            if matched.is_some_and(|index| index >= target) {
                return true;
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    if caught_up != Ok(true) {
        return Err(Box::new(move |id| {
            ServerFrame::error(
                Some(id),
                ErrorCode::Internal,
                format!(
                    "node {node_id} did not catch up with the log within {CATCH_UP_TIMEOUT:?}; \
                     it stays a learner (check that it runs and that its peer address is \
                     reachable), and add_node can be sent again"
                ),
            )
        }));
    }
    let voters = BTreeSet::from([node_id]);
    match raft
        .change_membership(ChangeMembers::AddVoterIds(voters), false)
        .await
    {
        Ok(_) => Ok(()),
        Err(err) => Err(Box::new(move |id| refusal(id, err))),
    }
}

/// Removes a member in the background and answers `id` on `outbox`.
pub(crate) fn spawn_remove(raft: LockdRaft, outbox: Outbox, id: RequestId, remove: RemoveNode) {
    tokio::spawn(async move {
        let is_member = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&remove.node_id)
            .is_some();
        if !is_member {
            let message = format!(
                "node {} is not a member of this cluster; nothing to remove",
                remove.node_id
            );
            outbox.send(ServerFrame::error(Some(id), ErrorCode::BadRequest, message));
            return;
        }
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
fn refusal(id: RequestId, err: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ServerFrame {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            not_leader(Some(id), forward.leader_node)
        }
        // openraft 0.10: the change's entry was appended here, and then this node followed
        // another leader whose log does not have it; it may still commit there.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
            let leader = forward.leader_node.map(|node| node.client);
            let message = format!(
                "the leader changed while the membership change was in flight, and it may or \
                 may not take effect; check `cluster status` (leader: {})",
                leader.as_deref().unwrap_or("not known yet")
            );
            ServerFrame::error(Some(id), ErrorCode::Internal, message)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            ServerFrame::error(Some(id), ErrorCode::BadRequest, err.to_string())
        }
        RaftError::APIError(ClientWriteError::PreconditionFailed(err)) => {
            ServerFrame::error(Some(id), ErrorCode::BadRequest, err.to_string())
        }
        RaftError::Fatal(fatal) => {
            warn!(error = %fatal, "a membership change failed");
            ServerFrame::error(Some(id), ErrorCode::Internal, fatal.to_string())
        }
    }
}

/// The leader's node entry, from a node's Raft metrics.
pub(crate) fn leader_node(metrics: &RaftMetrics<TypeConfig>) -> Option<LockdNode> {
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
