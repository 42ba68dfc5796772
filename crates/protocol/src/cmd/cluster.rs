//! Cluster commands: `cluster_status` (any node) and the membership changes `add_node` and
//! `remove_node` (the leader). A single server refuses them with `bad_request`.

use serde::{Deserialize, Serialize};

/// `add_node`: makes a node a member: first a learner that catches up with the log, then a
/// voter.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddNode {
    /// The new node's `--node-id`.
    pub node_id: u64,
    /// Its client address (`--listen`).
    pub client: String,
    /// Its peer address (`--peer-listen`).
    pub peer: String,
    /// The admin credential: the secret in the leader's `--admin-token-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

/// `remove_node`: takes a node out of the cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveNode {
    /// The node's id.
    pub node_id: u64,
    /// The admin credential, as for [`AddNode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

/// What `Debug` shows of a secret: whether there is one.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// Hand-written so that the admin token never reaches a log line.
impl std::fmt::Debug for AddNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddNode")
            .field("node_id", &self.node_id)
            .field("client", &self.client)
            .field("peer", &self.peer)
            .field("admin_token", &redacted(&self.admin_token))
            .finish()
    }
}

/// Hand-written so that the admin token never reaches a log line.
impl std::fmt::Debug for RemoveNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoveNode")
            .field("node_id", &self.node_id)
            .field("admin_token", &redacted(&self.admin_token))
            .finish()
    }
}

/// The result of `cluster_status`, as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusOk {
    /// The answering node.
    pub node_id: u64,
    /// Its Raft role: `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader's id, when known.
    pub leader: Option<u64>,
    /// The index of the last log entry on the answering node.
    pub last_log_index: Option<u64>,
    /// The index of the last entry applied to its lock table.
    pub last_applied: Option<u64>,
    /// The last log index its latest snapshot covers (none before its first snapshot).
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// The last log index it has dropped from its log, every entry up to it being in its
    /// snapshot (none while it has dropped nothing). A node that lacks the entry after it can
    /// catch up from this node only through a snapshot.
    #[serde(default)]
    pub purged_index: Option<u64>,
    /// The members, in id order.
    pub members: Vec<ClusterMember>,
}

/// One member in a `cluster_status` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Its id.
    pub node_id: u64,
    /// Its client address.
    pub client: String,
    /// Its peer address.
    pub peer: String,
    /// A voter (true) or a learner still catching up (false).
    pub voter: bool,
    /// On the leader: the last log index this member is known to have (none if unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
}
