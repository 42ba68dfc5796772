//! openraft 0.9 and 0.10 read each other's JSON, with lockd's types: what a node upgraded in
//! place finds in its data directory (log entries, vote, committed and purge pointers, snapshot
//! metadata), and what a 0.9 node and a 0.10 node send each other during a rolling upgrade
//! (the peer frames of `wire.rs`, whose 0.9 form is copied here from lockd before the port).
//!
//! Every value is written by both versions; each version must read the other's bytes, and both
//! must write the same bytes, except for the differences listed in
//! [`known_differences_are_only_these`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, StoredMembershipOf, VoteOf};
use openraft_legacy::network_v1::{
    InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMismatch,
    SnapshotSegmentId,
};
use protocol::{Request, SessionId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Applied, EntryOp, LockdNode, Proposal, TypeConfig};
use super::wire::{PeerReply, PeerRequest, ReplyFrame, RequestFrame};

openraft09::declare_raft_types!(
    /// lockd's type config as it was on openraft 0.9.25.
    pub Config09:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = LockdNode,
        Entry = openraft09::Entry<Config09>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft09::TokioRuntime,
);

/// `wire.rs` as it was on openraft 0.9.
mod wire09 {
    use openraft09::error::{InstallSnapshotError, RaftError};
    use openraft09::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft09::RaftTypeConfig;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(bound = "")]
    pub struct RequestFrame<C: RaftTypeConfig> {
        pub id: u64,
        pub request: PeerRequest<C>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(bound = "")]
    pub struct ReplyFrame<C: RaftTypeConfig> {
        pub id: u64,
        pub reply: PeerReply<C>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(bound = "")]
    pub enum PeerRequest<C: RaftTypeConfig> {
        AppendEntries(AppendEntriesRequest<C>),
        Vote(VoteRequest<C::NodeId>),
        InstallSnapshot(InstallSnapshotRequest<C>),
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(bound = "")]
    pub enum PeerReply<C: RaftTypeConfig> {
        AppendEntries(Result<AppendEntriesResponse<C::NodeId>, RaftError<C::NodeId>>),
        Vote(Result<VoteResponse<C::NodeId>, RaftError<C::NodeId>>),
        InstallSnapshot(
            Result<InstallSnapshotResponse<C::NodeId>, RaftError<C::NodeId, InstallSnapshotError>>,
        ),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

/// `old` (0.9) and `new` (0.10) are the same value: each reads the other's JSON, and reading
/// then writing it again gives the other's bytes.
#[track_caller]
fn same<Old, New>(old: &Old, new: &New)
where
    Old: Serialize + DeserializeOwned,
    New: Serialize + DeserializeOwned,
{
    let (old_json, new_json) = (json(old), json(new));
    assert_eq!(old_json, new_json, "0.9 and 0.10 write the same bytes");
    let read_by_new: New = serde_json::from_str(&old_json).expect("0.10 reads 0.9's JSON");
    assert_eq!(json(&read_by_new), old_json);
    let read_by_old: Old = serde_json::from_str(&new_json).expect("0.9 reads 0.10's JSON");
    assert_eq!(json(&read_by_old), new_json);
}

fn log_id_09(term: u64, node: u64, index: u64) -> openraft09::LogId<u64> {
    openraft09::LogId::new(openraft09::CommittedLeaderId::new(term, node), index)
}

fn log_id_10(term: u64, node: u64, index: u64) -> LogIdOf<TypeConfig> {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

fn nodes() -> BTreeMap<u64, LockdNode> {
    (1..=4)
        .map(|id| {
            let node = LockdNode {
                client: format!("10.0.0.{id}:5555"),
                peer: format!("10.0.0.{id}:5556"),
            };
            (id, node)
        })
        .collect()
}

/// A joint configuration, {1,2,3} to {1,2,4}, with every node: what a membership change logs.
fn configs() -> Vec<BTreeSet<u64>> {
    vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])]
}

fn membership_09() -> openraft09::Membership<u64, LockdNode> {
    openraft09::Membership::new(configs(), nodes())
}

fn membership_10() -> openraft::Membership<u64, LockdNode> {
    openraft::Membership::new(configs(), nodes()).unwrap()
}

fn proposal() -> Proposal {
    let request = r#"{"id":7,"op":"acquire","resource":"jobs/a","timeout_ms":10}"#;
    Proposal {
        at_ms: 1_733_000_000_000,
        ops: vec![
            EntryOp::Open {
                session: SessionId(3),
                resume_digest: None,
            },
            EntryOp::Request {
                session: SessionId(3),
                request: Request::parse(request.as_bytes()).unwrap(),
            },
            EntryOp::Tick,
        ],
    }
}

fn entries_09() -> Vec<openraft09::Entry<Config09>> {
    use openraft09::EntryPayload;
    vec![
        openraft09::Entry {
            log_id: log_id_09(2, 1, 10),
            payload: EntryPayload::Blank,
        },
        openraft09::Entry {
            log_id: log_id_09(2, 1, 11),
            payload: EntryPayload::Normal(proposal()),
        },
        openraft09::Entry {
            log_id: log_id_09(2, 1, 12),
            payload: EntryPayload::Membership(membership_09()),
        },
    ]
}

fn entries_10() -> Vec<EntryOf<TypeConfig>> {
    use openraft::EntryPayload;
    vec![
        EntryOf::<TypeConfig> {
            log_id: log_id_10(2, 1, 10),
            payload: EntryPayload::Blank,
        },
        EntryOf::<TypeConfig> {
            log_id: log_id_10(2, 1, 11),
            payload: EntryPayload::Normal(proposal()),
        },
        EntryOf::<TypeConfig> {
            log_id: log_id_10(2, 1, 12),
            payload: EntryPayload::Membership(membership_10()),
        },
    ]
}

#[test]
fn the_log_store_reads_what_openraft_09_wrote() {
    // `log_store.rs`: the vote, the committed and purge pointers, each entry.
    same(
        &openraft09::Vote::<u64>::new(4, 2),
        &VoteOf::<TypeConfig>::new(4, 2),
    );
    same(
        &openraft09::Vote::<u64>::new_committed(4, 2),
        &VoteOf::<TypeConfig>::new_committed(4, 2),
    );
    same(&Some(log_id_09(3, 2, 17)), &Some(log_id_10(3, 2, 17)));
    same(
        &None::<openraft09::LogId<u64>>,
        &None::<LogIdOf<TypeConfig>>,
    );
    same(&log_id_09(3, 2, 17), &log_id_10(3, 2, 17));
    for (old, new) in entries_09().iter().zip(entries_10().iter()) {
        same(old, new);
    }
}

#[test]
fn the_state_machine_reads_snapshot_metadata_that_openraft_09_wrote() {
    // `machine.rs` and `snapshot_store.rs`: the applied membership and the snapshot's metadata
    // in redb.
    let stored_09 = openraft09::StoredMembership::new(Some(log_id_09(2, 1, 12)), membership_09());
    let stored_10 =
        StoredMembershipOf::<TypeConfig>::new(Some(log_id_10(2, 1, 12)), membership_10());
    same(&stored_09, &stored_10);
    same(
        &openraft09::StoredMembership::<u64, LockdNode>::default(),
        &StoredMembershipOf::<TypeConfig>::default(),
    );
    let meta_09 = openraft09::SnapshotMeta {
        last_log_id: Some(log_id_09(2, 1, 40)),
        last_membership: stored_09,
        snapshot_id: "2-40-1733000000000".to_owned(),
    };
    let meta_10 = SnapshotMetaOf::<TypeConfig> {
        last_log_id: Some(log_id_10(2, 1, 40)),
        last_membership: stored_10,
    };
    let read: SnapshotMetaOf<TypeConfig> = serde_json::from_str(&json(&meta_09)).unwrap();
    assert_eq!(read, meta_10);
    // 0.10 writes the id's slot empty, and 0.9 reads it (a node downgraded again).
    let back: openraft09::SnapshotMeta<u64, LockdNode> =
        serde_json::from_str(&json(&meta_10)).unwrap();
    assert_eq!(back.last_log_id, meta_09.last_log_id);
    assert_eq!(back.last_membership, meta_09.last_membership);
    assert_eq!(back.snapshot_id, "");
}

#[test]
fn peer_frames_pass_between_openraft_09_and_010_nodes() {
    use openraft::raft as r10;
    use openraft09::raft as r09;

    let append_09 = r09::AppendEntriesRequest::<Config09> {
        vote: openraft09::Vote::new_committed(2, 1),
        prev_log_id: Some(log_id_09(2, 1, 9)),
        entries: entries_09(),
        leader_commit: Some(log_id_09(2, 1, 9)),
    };
    let append_10 = r10::AppendEntriesRequest::<TypeConfig> {
        vote: VoteOf::<TypeConfig>::new_committed(2, 1),
        prev_log_id: Some(log_id_10(2, 1, 9)),
        entries: entries_10(),
        leader_commit: Some(log_id_10(2, 1, 9)),
    };
    same(
        &wire09::RequestFrame::<Config09> {
            id: 1,
            request: wire09::PeerRequest::AppendEntries(append_09),
        },
        &RequestFrame::<TypeConfig> {
            id: 1,
            request: PeerRequest::AppendEntries(append_10),
        },
    );

    let replies_09 = [
        r09::AppendEntriesResponse::Success,
        r09::AppendEntriesResponse::PartialSuccess(Some(log_id_09(2, 1, 11))),
        r09::AppendEntriesResponse::Conflict,
        r09::AppendEntriesResponse::HigherVote(openraft09::Vote::new_committed(3, 2)),
    ];
    let replies_10 = [
        r10::AppendEntriesResponse::Success,
        r10::AppendEntriesResponse::PartialSuccess(Some(log_id_10(2, 1, 11))),
        r10::AppendEntriesResponse::Conflict,
        r10::AppendEntriesResponse::HigherVote(VoteOf::<TypeConfig>::new_committed(3, 2)),
    ];
    for (old, new) in replies_09.into_iter().zip(replies_10) {
        same(
            &wire09::ReplyFrame::<Config09> {
                id: 2,
                reply: wire09::PeerReply::AppendEntries(Ok(old)),
            },
            &ReplyFrame::<TypeConfig> {
                id: 2,
                reply: PeerReply::AppendEntries(Ok(new)),
            },
        );
    }
    same(
        &wire09::ReplyFrame::<Config09> {
            id: 3,
            reply: wire09::PeerReply::AppendEntries(Err(openraft09::error::RaftError::Fatal(
                openraft09::error::Fatal::Stopped,
            ))),
        },
        &ReplyFrame::<TypeConfig> {
            id: 3,
            reply: PeerReply::AppendEntries(Err(openraft::error::RaftError::Fatal(
                openraft::error::Fatal::Stopped,
            ))),
        },
    );

    let vote_reply_09 = r09::VoteResponse {
        vote: openraft09::Vote::new(3, 2),
        vote_granted: false,
        last_log_id: Some(log_id_09(2, 1, 12)),
    };
    let vote_reply_10 = r10::VoteResponse::<TypeConfig> {
        vote: VoteOf::<TypeConfig>::new(3, 2),
        vote_granted: false,
        last_log_id: Some(log_id_10(2, 1, 12)),
    };
    same(
        &wire09::ReplyFrame::<Config09> {
            id: 4,
            reply: wire09::PeerReply::Vote(Ok(vote_reply_09)),
        },
        &ReplyFrame::<TypeConfig> {
            id: 4,
            reply: PeerReply::Vote(Ok(vote_reply_10)),
        },
    );

    // A snapshot still travels in 0.9's chunks (openraft-legacy's types, the same JSON).
    let chunk_09 = r09::InstallSnapshotRequest::<Config09> {
        vote: openraft09::Vote::new_committed(2, 1),
        meta: openraft09::SnapshotMeta {
            last_log_id: Some(log_id_09(2, 1, 40)),
            last_membership: openraft09::StoredMembership::new(
                Some(log_id_09(2, 1, 12)),
                membership_09(),
            ),
            snapshot_id: "40-77-1733000000000000000".to_owned(),
        },
        offset: 3 << 20,
        data: b"{\"table\":".to_vec(),
        done: false,
    };
    let chunk_10 = InstallSnapshotRequest::<TypeConfig> {
        vote: VoteOf::<TypeConfig>::new_committed(2, 1),
        meta: openraft_legacy::network_v1::SnapshotMeta {
            last_log_id: Some(log_id_10(2, 1, 40)),
            last_membership: StoredMembershipOf::<TypeConfig>::new(
                Some(log_id_10(2, 1, 12)),
                membership_10(),
            ),
            snapshot_id: "40-77-1733000000000000000".to_owned(),
        },
        offset: 3 << 20,
        data: b"{\"table\":".to_vec(),
        done: false,
    };
    same(
        &wire09::RequestFrame::<Config09> {
            id: 5,
            request: wire09::PeerRequest::InstallSnapshot(chunk_09),
        },
        &RequestFrame::<TypeConfig> {
            id: 5,
            request: PeerRequest::InstallSnapshot(chunk_10),
        },
    );
    same(
        &wire09::ReplyFrame::<Config09> {
            id: 5,
            reply: wire09::PeerReply::InstallSnapshot(Ok(r09::InstallSnapshotResponse {
                vote: openraft09::Vote::new_committed(2, 1),
            })),
        },
        &ReplyFrame::<TypeConfig> {
            id: 5,
            reply: PeerReply::InstallSnapshot(Ok(InstallSnapshotResponse {
                vote: VoteOf::<TypeConfig>::new_committed(2, 1),
            })),
        },
    );
    let mismatch_09 = openraft09::error::InstallSnapshotError::SnapshotMismatch(
        openraft09::error::SnapshotMismatch {
            expect: openraft09::SnapshotSegmentId {
                id: "a".to_owned(),
                offset: 0,
            },
            got: openraft09::SnapshotSegmentId {
                id: "a".to_owned(),
                offset: 3 << 20,
            },
        },
    );
    let mismatch_10 = InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
        expect: SnapshotSegmentId {
            id: "a".to_owned(),
            offset: 0,
        },
        got: SnapshotSegmentId {
            id: "a".to_owned(),
            offset: 3 << 20,
        },
    });
    same(
        &wire09::ReplyFrame::<Config09> {
            id: 6,
            reply: wire09::PeerReply::InstallSnapshot(Err(openraft09::error::RaftError::APIError(
                mismatch_09,
            ))),
        },
        &ReplyFrame::<TypeConfig> {
            id: 6,
            reply: PeerReply::InstallSnapshot(Err(openraft::error::RaftError::APIError(
                mismatch_10,
            ))),
        },
    );
}

/// What does differ, kept here so that a change to either is noticed.
#[test]
fn known_differences_are_only_these() {
    // 1. A vote request: 0.10 adds `leadership_transfer` (lockd never sets it); 0.9 ignores
    //    the field, and 0.10 reads 0.9's request without it as `false`.
    let request_09 = openraft09::raft::VoteRequest::<u64> {
        vote: openraft09::Vote::new(3, 2),
        last_log_id: Some(log_id_09(2, 1, 12)),
    };
    let request_10 = openraft::raft::VoteRequest::<TypeConfig>::new(
        VoteOf::<TypeConfig>::new(3, 2),
        Some(log_id_10(2, 1, 12)),
    );
    assert!(!request_10.leadership_transfer);
    let frame_09 = wire09::RequestFrame::<Config09> {
        id: 8,
        request: wire09::PeerRequest::Vote(request_09),
    };
    let frame_10 = RequestFrame::<TypeConfig> {
        id: 8,
        request: PeerRequest::Vote(request_10),
    };
    assert_eq!(
        json(&frame_10),
        json(&frame_09).replace("}}}", "},\"leadership_transfer\":false}}")
    );
    let read_by_new: RequestFrame<TypeConfig> = serde_json::from_str(&json(&frame_09)).unwrap();
    assert_eq!(json(&read_by_new), json(&frame_10));
    let read_by_old: wire09::RequestFrame<Config09> =
        serde_json::from_str(&json(&frame_10)).unwrap();
    assert_eq!(json(&read_by_old), json(&frame_09));

    // 2. A snapshot's metadata: 0.10 has no `snapshot_id` and writes its slot empty (above).

    // 3. A remote storage failure (`Fatal::StorageError`) is shaped differently, and neither
    //    version reads the other's. The reading side counts the frame as a network error and
    //    reconnects; the sending node has stopped anyway (a fatal error).
    let storage_09 = openraft09::StorageError::<u64>::from_io_error(
        openraft09::ErrorSubject::Vote,
        openraft09::ErrorVerb::Write,
        std::io::Error::other("disk"),
    );
    let storage_10 = openraft::StorageError::<TypeConfig>::from_io_error(
        openraft::ErrorSubject::Vote,
        openraft::ErrorVerb::Write,
        std::io::Error::other("disk"),
    );
    let reply_09 = wire09::ReplyFrame::<Config09> {
        id: 9,
        reply: wire09::PeerReply::AppendEntries(Err(openraft09::error::RaftError::Fatal(
            openraft09::error::Fatal::StorageError(storage_09),
        ))),
    };
    let reply_10 = ReplyFrame::<TypeConfig> {
        id: 9,
        reply: PeerReply::AppendEntries(Err(openraft::error::RaftError::Fatal(
            openraft::error::Fatal::StorageError(storage_10),
        ))),
    };
    assert!(serde_json::from_str::<ReplyFrame<TypeConfig>>(&json(&reply_09)).is_err());
    assert!(serde_json::from_str::<wire09::ReplyFrame<Config09>>(&json(&reply_10)).is_err());
}
