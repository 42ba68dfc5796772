//! Tests of the peer network and server: real `openraft::Raft` nodes with [`WalLogStore`] and
//! the test state machine, on 127.0.0.1, wired by [`PeerNetwork`] and [`serve_peers`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use openraft::raft::ClientWriteResponse;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{Config, EntryPayload, Raft, ServerState, SnapshotPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cluster::leader_contact::LeaderContact;
use crate::cluster::log_store::{test_stall, LOG_DIR};
use crate::cluster::peer_admission::{PeerAdmission, PeerLimits};
use crate::cluster::peer_server::serve_peers;
use crate::cluster::testing::{open_log_store, KvWrite, MemStateMachine, TestConfig};
use crate::cluster::transport::PeerCredentials;

/// The longest any test waits for the cluster to get somewhere.
const PATIENCE: Duration = Duration::from_secs(10);

fn fast_config() -> Config {
    Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        ..Config::default()
    }
}

/// One node: its Raft, a handle on its state machine, and its peer server.
struct TestNode {
    id: u64,
    raft: Raft<TestConfig, MemStateMachine>,
    state: MemStateMachine,
    addr: SocketAddr,
    server: CancellationToken,
    server_task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

/// The default limits, with no member addresses: every test peer is a stranger.
fn default_admission() -> PeerAdmission {
    let (_, members) = tokio::sync::watch::channel(std::collections::HashSet::new());
    PeerAdmission::new(PeerLimits::default(), members)
}

impl TestNode {
    async fn start(id: u64, config: Config, secret: Option<&str>) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let log_store = open_log_store(dir.path()).await.unwrap();
        let state = MemStateMachine::default();
        let credentials = PeerCredentials::secret(secret.map(Arc::from));
        let network = PeerNetwork::new(id, credentials.clone());
        let config = Arc::new(config.validate().unwrap());
        let raft = Raft::new(id, config, network, log_store, state.clone())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = CancellationToken::new();
        let server_task = tokio::spawn(serve_peers(
            listener,
            raft.clone(),
            credentials,
            default_admission(),
            LeaderContact::default(),
            Arc::default(),
            server.clone(),
        ));
        TestNode {
            id,
            raft,
            state,
            addr,
            server,
            server_task,
            dir,
        }
    }

    fn node(&self) -> BasicNode {
        BasicNode::new(self.addr)
    }

    /// Stops answering peers and stops Raft, as if the process had died.
    async fn crash(self) {
        self.server.cancel();
        self.server_task.await.unwrap();
        self.raft.shutdown().await.unwrap();
    }

    async fn write(&self, key: &str, value: &str) -> ClientWriteResponse<TestConfig> {
        let write = KvWrite {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        self.raft.client_write(write).await.unwrap()
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(Some(PATIENCE))
            .applied_index_at_least(Some(index), format!("node {} applies {index}", self.id))
            .await
            .unwrap();
    }
}

fn members(nodes: &[&TestNode]) -> BTreeMap<u64, BasicNode> {
    nodes.iter().map(|node| (node.id, node.node())).collect()
}

/// Waits until `nodes` agree on a leader other than `not`, and it knows it leads.
async fn wait_for_leader<'a>(nodes: &[&'a TestNode], not: Option<u64>) -> &'a TestNode {
    let metrics = nodes[0]
        .raft
        .wait(Some(PATIENCE))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a new leader",
        )
        .await
        .unwrap();
    let leader_id = metrics.current_leader.unwrap();
    let leader = nodes.iter().find(|node| node.id == leader_id).unwrap();
    leader
        .raft
        .wait(Some(PATIENCE))
        // openraft 0.10 takes writes once a majority acknowledged the leader (its lease).
        .metrics(
            |m| m.state == ServerState::Leader && m.last_quorum_acked.is_some(),
            "the leader leads, acknowledged by a majority",
        )
        .await
        .unwrap();
    leader
}

/// A client from node 1 to the node at `target`, which it takes for node 2.
async fn client(target: SocketAddr, secret: Option<&str>) -> PeerClient<TestConfig> {
    let mut network = PeerNetwork::<TestConfig, std::io::Cursor<Vec<u8>>>::new(
        1,
        PeerCredentials::secret(secret.map(Arc::from)),
    );
    network
        .new_client(2, &BasicNode::new(target))
        .await
        .into_inner()
}

fn log_id(index: u64) -> LogIdOf<TestConfig> {
    openraft::testing::log_id::<TestConfig>(1, 1, index)
}

/// An AppendEntries from node 1, leader in term 1, of blank entries at `indexes`, after the
/// entry at `prev` (none: from the start of the log).
fn append(
    prev: Option<u64>,
    indexes: std::ops::RangeInclusive<u64>,
) -> AppendEntriesRequest<TestConfig> {
    AppendEntriesRequest {
        vote: VoteOf::<TestConfig>::new_committed(1, 1),
        prev_log_id: prev.map(log_id),
        entries: indexes
            .map(|index| EntryOf::<TestConfig> {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            })
            .collect(),
        leader_commit: None,
    }
}

fn vote_request() -> VoteRequest<TestConfig> {
    VoteRequest::new(VoteOf::<TestConfig>::new(1, 1), None)
}

fn option(ttl_ms: u64) -> RPCOption {
    RPCOption::new(Duration::from_millis(ttl_ms))
}

type VoteResult = Result<VoteResponse<TestConfig>, RPCError<TestConfig, RaftError<TestConfig>>>;

/// Sends a vote with a `hard_ttl` of `ttl_ms` and checks that the answer, whatever it is, came
/// well within 2 s: a failing peer must never make a client hang.
async fn quick_vote(client: &mut PeerClient<TestConfig>, ttl_ms: u64) -> VoteResult {
    let started = StdInstant::now();
    let result = client.vote(vote_request(), option(ttl_ms)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_survive_losing_the_leader() {
    let nodes = [
        TestNode::start(1, fast_config(), None).await,
        TestNode::start(2, fast_config(), None).await,
        TestNode::start(3, fast_config(), None).await,
    ];
    let all: Vec<&TestNode> = nodes.iter().collect();
    nodes[0].raft.initialize(members(&all)).await.unwrap();
    let leader = wait_for_leader(&all, None).await;
    let mut last = 0;
    for i in 0..3 {
        last = leader.write(&format!("k{i}"), "before").await.log_id.index;
    }
    for node in &all {
        node.wait_applied(last).await;
        assert_eq!(node.state.data().len(), 3, "node {}", node.id);
    }

    let old_leader = leader.id;
    let mut nodes = Vec::from(nodes);
    let at = nodes.iter().position(|node| node.id == old_leader).unwrap();
    nodes.remove(at).crash().await;
    let survivors: Vec<&TestNode> = nodes.iter().collect();
    let leader = wait_for_leader(&survivors, Some(old_leader)).await;
    assert_ne!(leader.id, old_leader);
    let last = leader.write("k0", "after").await.log_id.index;
    for node in &survivors {
        node.wait_applied(last).await;
        assert_eq!(node.state.data()["k0"], "after", "node {}", node.id);
        assert_eq!(node.state.data().len(), 3, "node {}", node.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_from_a_snapshot_sent_in_chunks() {
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        // Many chunks for a snapshot of a few hundred bytes.
        snapshot_max_chunk_size: 64,
        ..fast_config()
    };
    let first = [
        TestNode::start(1, config.clone(), None).await,
        TestNode::start(2, config.clone(), None).await,
    ];
    let first: Vec<&TestNode> = first.iter().collect();
    first[0].raft.initialize(members(&first)).await.unwrap();
    let leader = wait_for_leader(&first, None).await;
    let mut last = 0;
    for i in 0..25 {
        last = leader
            .write(&format!("k{i:02}"), &format!("v{i}"))
            .await
            .log_id
            .index;
    }
    leader
        .raft
        .wait(Some(PATIENCE))
        .metrics(
            |m| m.purged.is_some_and(|purged| purged.index >= 10),
            "the leader purges",
        )
        .await
        .unwrap();

    let late = TestNode::start(3, config, None).await;
    leader
        .raft
        .add_learner(late.id, late.node(), true)
        .await
        .unwrap();
    late.wait_applied(last).await;
    assert!(late.state.snapshots_installed() >= 1);
    assert_eq!(late.state.data(), leader.state.data());
    // Entries after the snapshot reach it through the log as usual.
    let last = leader.write("after", "snapshot").await.log_id.index;
    late.wait_applied(last).await;
    assert_eq!(late.state.data()["after"], "snapshot");
}

#[tokio::test]
async fn a_closed_port_is_unreachable_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = quick_vote(&mut client(addr, None).await, 5_000).await;
    assert!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_peer_silent_at_the_handshake_is_unreachable_within_the_ttl() {
    // The kernel completes the TCP handshake for a listener nobody accepts from.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = client(listener.local_addr().unwrap(), None).await;
    let result = quick_vote(&mut client, 300).await;
    assert!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_times_out_and_the_next_call_reconnects() {
    // A fake peer that welcomes every connection, then reads requests and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut connection = wire::frame_stream(stream);
                connection.next().await.unwrap().unwrap();
                let welcome = Welcome {
                    version: PROTOCOL_VERSION,
                };
                connection
                    .send(wire::encode(&welcome).unwrap())
                    .await
                    .unwrap();
                while let Some(Ok(_)) = connection.next().await {}
            });
        }
    });
    let mut client = client(addr, None).await;
    for _ in 0..2 {
        let result = quick_vote(&mut client, 300).await;
        assert!(matches!(result, Err(RPCError::Timeout(_))), "{result:?}");
    }
    // A timed-out connection may still carry a late reply: it is never reused.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_after_the_peer_server_restarts() {
    let node = TestNode::start(2, fast_config(), None).await;
    let mut client = client(node.addr, None).await;
    client.vote(vote_request(), option(2_000)).await.unwrap();
    node.server.cancel();
    node.server_task.await.unwrap();
    let result = client.vote(vote_request(), option(2_000)).await;
    assert!(
        matches!(result, Err(RPCError::Network(_) | RPCError::Unreachable(_))),
        "{result:?}"
    );
    let listener = TcpListener::bind(node.addr).await.unwrap();
    let server = CancellationToken::new();
    let task = tokio::spawn(serve_peers(
        listener,
        node.raft.clone(),
        PeerCredentials::default(),
        default_admission(),
        LeaderContact::default(),
        Arc::default(),
        server.clone(),
    ));
    client.vote(vote_request(), option(2_000)).await.unwrap();
    server.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_secret_refuses_peers_without_it() {
    let node = TestNode::start(2, fast_config(), Some("cluster-secret")).await;
    client(node.addr, Some("cluster-secret"))
        .await
        .vote(vote_request(), option(2_000))
        .await
        .unwrap();
    for wrong in [Some("cluster-secreT"), Some(""), None] {
        let result = client(node.addr, wrong)
            .await
            .vote(vote_request(), option(2_000))
            .await;
        assert!(
            matches!(result, Err(RPCError::Unreachable(_))),
            "{wrong:?}: {result:?}"
        );
    }
    // A client with a secret is welcome at a server without one.
    let open = TestNode::start(3, fast_config(), None).await;
    client(open.addr, Some("anything"))
        .await
        .vote(vote_request(), option(2_000))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_and_the_server_keeps_serving() {
    let node = TestNode::start(2, fast_config(), None).await;
    let hello = serde_json::to_vec(&Hello {
        version: PROTOCOL_VERSION,
        secret: None,
    })
    .unwrap();
    let frame = |body: &[u8]| {
        let mut bytes = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    };
    let over_limit = u32::try_from(wire::MAX_FRAME_BYTES + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    let cases: [(&str, Vec<u8>); 4] = [
        ("a hello that is not JSON", frame(b"{nope")),
        (
            "a hello of another version",
            frame(br#"{"version":99,"secret":null}"#),
        ),
        ("a length over the limit", over_limit),
        (
            "a request that is not a request",
            [frame(&hello), frame(br#"{"id":1}"#)].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        // The end of the stream, or a reset if the server closed with bytes unread.
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "{what}: the server did not close the connection"
        );
    }
    client(node.addr, None)
        .await
        .vote(vote_request(), option(2_000))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_the_next_append_entries_while_its_sync_for_the_one_before_hangs() {
    let node = TestNode::start(2, fast_config(), None).await;
    let mut connection = dial(&node.addr.to_string(), &PeerCredentials::default())
        .await
        .unwrap();
    let request = |id: u64, rpc: AppendEntriesRequest<TestConfig>| {
        wire::encode(&RequestFrame::<TestConfig> {
            id,
            request: PeerRequest::AppendEntries(rpc),
        })
        .unwrap()
    };
    async fn answer(connection: &mut PeerStream) -> ReplyFrame<TestConfig> {
        let bytes = tokio::time::timeout(PATIENCE, connection.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        wire::decode(&bytes).unwrap()
    }
    // The follower takes node 1 for its leader (a vote it must write before it takes
    // entries), and a first entry.
    connection
        .send(request(1, append(None, 0..=0)))
        .await
        .unwrap();
    assert_eq!(answer(&mut connection).await.id, 1);

    let stall = test_stall::stall(&node.dir.path().join(LOG_DIR));
    let taken =
        |index: u64| move |m: &openraft::RaftMetrics<TestConfig>| m.last_log_index >= Some(index);
    connection
        .send(request(2, append(Some(0), 1..=1)))
        .await
        .unwrap();
    node.raft
        .wait(Some(PATIENCE))
        .metrics(taken(1), "the follower takes the second AppendEntries")
        .await
        .unwrap();
    // Its answer waits for the stalled sync; a server that answered one request at a time
    // would not read the next before it.
    connection
        .send(request(3, append(Some(1), 2..=2)))
        .await
        .unwrap();
    node.raft
        .wait(Some(PATIENCE))
        .metrics(
            taken(2),
            "the follower takes the third AppendEntries while its sync for the second hangs",
        )
        .await
        .unwrap();
    stall.release();
    for expected in [2, 3] {
        let reply = answer(&mut connection).await;
        assert_eq!(reply.id, expected);
        assert!(
            matches!(
                reply.reply,
                PeerReply::AppendEntries(Ok(AppendEntriesResponse::Success))
            ),
            "{:?}",
            reply.reply
        );
    }
}
