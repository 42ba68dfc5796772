//! What the cluster replicates: openraft's type configuration, the node description, and the
//! entries the leader proposes.

use std::fmt;

use protocol::{FenceToken, Request, ResourceName, SessionId};
use serde::{Deserialize, Serialize};

use super::resume::ResumeDigest;
use crate::core::ForcedRelease;

openraft::declare_raft_types!(
    /// openraft's types for lockd. The rest are openraft's defaults (term `u64`, the
    /// `leader_id_adv` leader id, `Entry`, `Vote`, the tokio runtime), whose JSON is the same
    /// as openraft 0.9's (`compat_tests.rs`).
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = LockdNode,
);

/// lockd's Raft: the type config and the state machine, which openraft 0.10 names in the type.
pub(crate) type LockdRaft = openraft::Raft<TypeConfig, super::machine::ReplicaMachine>;

/// lockd's peer network: snapshots travel as their files.
pub(crate) type LockdNetwork =
    super::network::PeerNetwork<TypeConfig, super::snapshot_store::SnapshotFile>;

/// A cluster member's two addresses, as kept in the replicated membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockdNode {
    /// Where clients connect (`--listen`): what a follower's `not_leader` names.
    pub client: String,
    /// Where the other nodes send Raft messages (`--peer-listen`).
    pub peer: String,
}

impl fmt::Display for LockdNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client, self.peer)
    }
}

impl super::network::PeerAddress for LockdNode {
    fn peer_addr(&self) -> &str {
        &self.peer
    }
}

/// One log entry of the lock table: operations, applied in order, and the leader's clock when
/// it proposed them. Applying it reads no clock of its own, so every node computes the same
/// table. The leader puts every request that arrived together into one entry, so that they
/// share one append and one round of replication (openraft appends entry by entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the Unix epoch on the proposing leader, never less than any earlier
    /// entry's.
    pub at_ms: u64,
    /// What to do, in order.
    pub ops: Vec<EntryOp>,
}

/// The operations of the replicated lock table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EntryOp {
    /// A client connected to the leader: a session with this id (chosen by the leader, so that
    /// requests that follow at once can name it) starts.
    Open {
        /// The new session.
        session: SessionId,
        /// The digest of the secret that resumes it (none in entries from before resume
        /// secrets: such a session cannot be resumed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_digest: Option<ResumeDigest>,
    },
    /// A client's request, exactly as it arrived (without its `auth`).
    Request {
        /// The session that sent it.
        session: SessionId,
        /// The request; stored as its wire JSON.
        #[serde(with = "request_as_json")]
        request: Request,
    },
    /// The leader heard nothing from these sessions for their whole lease.
    Expire {
        /// The sessions, in id order.
        sessions: Vec<SessionId>,
    },
    /// Time passed: waits whose timeout ran out by `at_ms` fail.
    Tick,
    /// From the entry after this one, a grant's token is at least its entry's time in
    /// microseconds (`at_ms * 1000`), as on a single server, instead of its log position
    /// (`index << 24`): a cluster restored from a backup then starts above every token issued
    /// before it, without being told what was issued. A leader proposes it once, in a cluster
    /// that does not count this way yet. A node older than this entry cannot read it, so it
    /// stops following (until it is upgraded) rather than grant other tokens than its peers.
    ClockTokens,
    /// Part of a backup loaded into the cluster (`POST /v1/restore`): values for resources
    /// that have none, and the backup's token reservation, which every later grant is above.
    RestoreValues {
        /// Resource and value pairs.
        values: Vec<(ResourceName, String)>,
        /// The highest token the backup's server may have issued.
        tokens_above: u64,
    },
    /// An operator forced the release of a lock (`DELETE /v1/locks/NAME` on the leader): the
    /// sessions holding it (only the one with `token`, if given) end.
    ForceRelease {
        /// The lock.
        resource: ResourceName,
        /// Only the hold with this token, if given.
        token: Option<FenceToken>,
    },
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal at {} ms, {} ops", self.at_ms, self.ops.len())
    }
}

/// What applying an entry gave back to the proposer. Replies to clients do not travel this
/// way: they are frames the state machine delivers (see `machine.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Sessions whose `Open` found the id taken (ids are random, so practically never).
    pub sessions_taken: Vec<SessionId>,
    /// What each `ForceRelease` of the entry released, in the order of the entry's operations.
    #[serde(default)]
    pub forced: Vec<Vec<ForcedRelease>>,
}

mod request_as_json {
    use protocol::Request;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(request: &Request, out: S) -> Result<S::Ok, S::Error> {
        let json = String::from_utf8(request.to_json()).map_err(serde::ser::Error::custom)?;
        out.serialize_str(&json)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Request, D::Error> {
        let json = String::deserialize(input)?;
        Request::parse(json.as_bytes()).map_err(|err| D::Error::custom(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_survives_the_log() {
        let lines = [
            r#"{"id":1,"op":"hello","client":"c","lease_ms":5000,"session":7}"#,
            r#"{"id":2,"op":"acquire","resource":"a/b","mode":"shared","timeout_ms":10}"#,
            r#"{"id":3,"op":"release","resource":"a","token":9}"#,
            r#"{"id":4,"op":"read","resource":"a","token":9}"#,
            r#"{"id":5,"op":"write","resource":"a","token":9,"value":"x\n\"y\""}"#,
            r#"{"id":6,"op":"cancel","target":2}"#,
            r#"{"id":7,"op":"validate","resource":"a","token":9}"#,
            r#"{"id":8,"op":"ping"}"#,
            r#"{"id":9,"op":"status"}"#,
            r#"{"id":10,"op":"status","resource":"a"}"#,
        ];
        for line in lines {
            let request = Request::parse(line.as_bytes()).unwrap();
            let proposal = Proposal {
                at_ms: 1,
                ops: vec![
                    EntryOp::Tick,
                    EntryOp::Request {
                        session: SessionId(3),
                        request: request.clone(),
                    },
                ],
            };
            let stored = serde_json::to_vec(&proposal).unwrap();
            let back: Proposal = serde_json::from_slice(&stored).unwrap();
            assert_eq!(back, proposal, "{line}");
        }
    }
}
