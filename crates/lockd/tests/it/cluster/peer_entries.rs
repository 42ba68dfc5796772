//! What a node does with log entries that cannot follow on from its log: a peer (here a raw
//! connection that knows the peer secret) that sends an AppendEntries with a gap in its indexes is
//! disconnected, and the node keeps serving clients and restarts cleanly from its data directory.

use futures_util::{SinkExt, StreamExt};
use lockd::cluster::types::TypeConfig;
use lockd::cluster::wire::{
    self, Hello, PeerReply, PeerRequest, PeerStream, ReplyFrame, RequestFrame, Welcome,
    PROTOCOL_VERSION,
};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::EntryPayload;
use serde_json::json;
use tokio::net::TcpStream;

use super::Cluster;
use crate::support::{Deadline, PATIENCE};

const PEER_SECRET: &str = "the-nodes-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_entries_with_a_gap_is_refused_and_the_node_restarts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("peer-secret");
    std::fs::write(&secret_file, PEER_SECRET).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let secret_flags = ["--peer-secret-file", secret_file.to_str().unwrap()];
    let mut cluster = Cluster::start(1, &secret_flags).await;
    cluster.leader(None).await;

    let mut peer = authenticated_peer(cluster.specs[0].peer).await;
    let last = last_log_id(&mut peer).await;
    // A leader of a later term whose entries skip index `last + 1`.
    let term = last.leader_id.term + 1;
    let forged = EntryOf::<TypeConfig> {
        log_id: openraft::testing::log_id::<TypeConfig>(term, 2, last.index + 2),
        payload: EntryPayload::Blank,
    };
    let request = PeerRequest::<TypeConfig>::AppendEntries(AppendEntriesRequest {
        vote: VoteOf::<TypeConfig>::new_committed(term, 2),
        prev_log_id: Some(last),
        entries: vec![forged],
        leader_commit: None,
    });
    peer.send(wire::encode(&RequestFrame { id: 2, request }).unwrap())
        .await
        .unwrap();
    match tokio::time::timeout(PATIENCE, peer.next()).await {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(Ok(bytes))) => {
            let reply: ReplyFrame<TypeConfig> = wire::decode(&bytes).unwrap();
            panic!("the node answered an AppendEntries with a gap: {reply:?}");
        }
        Err(_) => panic!("the node neither answered nor closed within {PATIENCE:?}"),
    }

    assert_serves(&cluster, "before-restart").await;
    cluster.kill(0);
    cluster.restart(0, &secret_flags);
    assert_serves(&cluster, "after-restart").await;
}

/// Waits until node 1 grants a client the lock `resource`.
async fn assert_serves(cluster: &Cluster, resource: &str) {
    let deadline = Deadline::new(format!("node 1 to grant the lock {resource}"));
    loop {
        let mut conn = cluster.connect(0).await;
        let hello = conn
            .call(json!({"id": 1, "op": "hello", "lease_ms": 5_000}))
            .await;
        if hello["ok"] == true {
            let reply = conn
                .call(json!({"id": 2, "op": "acquire", "resource": resource}))
                .await;
            assert_eq!(reply["ok"], true, "{resource}: {reply}");
            return;
        }
        deadline.tick(hello).await;
    }
}

/// A peer connection to `addr` past the handshake.
async fn authenticated_peer(addr: std::net::SocketAddr) -> PeerStream {
    let mut peer = wire::frame_stream(TcpStream::connect(addr).await.unwrap());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        secret: Some(PEER_SECRET.to_owned()),
    };
    peer.send(wire::encode(&hello).unwrap()).await.unwrap();
    let welcome = tokio::time::timeout(PATIENCE, peer.next())
        .await
        .expect("a welcome in time")
        .expect("a welcome")
        .expect("a welcome frame");
    let welcome: Welcome = wire::decode(&welcome).unwrap();
    assert_eq!(welcome.version, PROTOCOL_VERSION);
    peer
}

/// The node's last log id, which it tells anyone who asks for its vote (a stale vote request
/// that it refuses, so that nothing changes).
async fn last_log_id(peer: &mut PeerStream) -> LogIdOf<TypeConfig> {
    let request =
        PeerRequest::<TypeConfig>::Vote(VoteRequest::new(VoteOf::<TypeConfig>::new(0, 2), None));
    peer.send(wire::encode(&RequestFrame { id: 1, request }).unwrap())
        .await
        .unwrap();
    let bytes = tokio::time::timeout(PATIENCE, peer.next())
        .await
        .expect("a vote reply in time")
        .expect("a vote reply")
        .expect("a vote reply frame");
    let reply: ReplyFrame<TypeConfig> = wire::decode(&bytes).unwrap();
    match reply.reply {
        PeerReply::Vote(Ok(response)) => {
            assert!(!response.vote_granted, "a stale vote was granted");
            response.last_log_id.expect("a bootstrapped node has a log")
        }
        other => panic!("unexpected reply to a vote request: {other:?}"),
    }
}
