//! Tests of the peer network and server: real `openraft::Raft` nodes with [`WalLogStore`] and
//! the test state machine, on 127.0.0.1, wired by [`PeerNetwork`] and [`serve_peers`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use openraft::raft::ClientWriteResponse;
use openraft::type_config::alias::{EntryOf, VoteOf};
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

    /// Stops the peer server, which closes every peer connection to this node, and starts it
    /// again on the same address; Raft runs on throughout.
    async fn restart_server(&mut self) {
        self.server.cancel();
        (&mut self.server_task).await.unwrap();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.server = CancellationToken::new();
        self.server_task = tokio::spawn(serve_peers(
            listener,
            self.raft.clone(),
            PeerCredentials::default(),
            default_admission(),
            LeaderContact::default(),
            Arc::default(),
            self.server.clone(),
        ));
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

type TestLink = PeerLink<TestConfig, std::io::Cursor<Vec<u8>>>;

/// What openraft gets from node 1's network for the node at `target`, which it takes for node 2.
async fn link(target: SocketAddr, secret: Option<&str>) -> TestLink {
    let mut network = PeerNetwork::<TestConfig, std::io::Cursor<Vec<u8>>>::new(
        1,
        PeerCredentials::secret(secret.map(Arc::from)),
    );
    network.new_client(2, &BasicNode::new(target)).await
}

/// A client from node 1 to the node at `target`, which it takes for node 2.
async fn client(target: SocketAddr, secret: Option<&str>) -> PeerClient<TestConfig> {
    link(target, secret).await.into_inner()
}

/// A fake peer on 127.0.0.1 that welcomes every connection and hands it to `serve`, with the
/// connection's number (from 0). Returns its address and a count of the connections it took.
async fn fake_peer<F, Fut>(serve: F) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(usize, PeerStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        pre_vote: true,
    };
    fake_peer_welcoming(wire::encode(&welcome).unwrap(), serve).await
}

/// [`fake_peer`], with `welcome` for its welcome frame.
async fn fake_peer_welcoming<F, Fut>(
    welcome: bytes::Bytes,
    serve: F,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(usize, PeerStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let number = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut connection = wire::frame_stream(stream);
            connection.next().await.unwrap().unwrap();
            connection.send(welcome.clone()).await.unwrap();
            tokio::spawn(serve(number, connection));
        }
    });
    (addr, connections)
}

/// The next request's id on a fake peer's connection, or `None` once the client closed it.
async fn read_request(connection: &mut PeerStream) -> Option<u64> {
    let bytes = connection.next().await?.ok()?;
    let frame: RequestFrame<TestConfig> = wire::decode(&bytes).unwrap();
    Some(frame.id)
}

/// A fake peer that answers each AppendEntries with success once it has read it, and reads the
/// next only then, as a server that answers one request at a time.
async fn answer_each(connection: &mut PeerStream) {
    while let Some(id) = read_request(connection).await {
        answer_success(connection, id).await;
    }
}

/// A fake peer's answer to the AppendEntries `id`: success.
async fn answer_success(connection: &mut PeerStream, id: u64) {
    let reply = ReplyFrame::<TestConfig> {
        id,
        reply: PeerReply::AppendEntries(Ok(AppendEntriesResponse::Success)),
    };
    connection
        .send(wire::encode(&reply).unwrap())
        .await
        .unwrap();
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

/// `count` AppendEntries of one entry each, from the start of the log.
fn appends(count: u64) -> Vec<AppendEntriesRequest<TestConfig>> {
    (0..count)
        .map(|index| append(index.checked_sub(1), index..=index))
        .collect()
}

type StreamItem = Result<StreamAppendResult<TestConfig>, RPCError<TestConfig>>;

/// Streams `requests` through `link` with a `hard_ttl` of `ttl_ms`, and collects what the
/// stream yields until it ends.
async fn stream(
    link: &mut TestLink,
    requests: Vec<AppendEntriesRequest<TestConfig>>,
    ttl_ms: u64,
) -> Vec<StreamItem> {
    let input = futures_util::stream::iter(requests);
    let answers = link.stream_append(input, option(ttl_ms)).await.unwrap();
    tokio::time::timeout(PATIENCE, answers.collect())
        .await
        .expect("the stream of answers ends")
}

/// What a stream matched, each answer a success.
fn matched(items: Vec<StreamItem>) -> Vec<Option<LogIdOf<TestConfig>>> {
    items
        .into_iter()
        .map(|item| match item {
            Ok(Ok(matched)) => matched,
            other => panic!("expected a success, got {other:?}"),
        })
        .collect()
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

/// A fake peer that counts the requests it reads and answers each pre-vote with a refusal.
async fn refuse_pre_votes(
    mut connection: PeerStream,
    requests: Arc<std::sync::atomic::AtomicUsize>,
) {
    while let Some(Ok(bytes)) = connection.next().await {
        requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let frame: RequestFrame<TestConfig> = wire::decode(&bytes).unwrap();
        let PeerRequest::PreVote(rpc) = frame.request else {
            return; // as a lockd from before pre-votes would, on one
        };
        let refused = VoteResponse::new(VoteOf::<TestConfig>::new(1, 2), rpc.last_log_id, false);
        let reply = ReplyFrame::<TestConfig> {
            id: frame.id,
            reply: PeerReply::PreVote(Ok(refused)),
        };
        connection
            .send(wire::encode(&reply).unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_pre_vote_asks_a_peer_that_answers_them() {
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let (addr, _) =
        fake_peer(move |_, connection| refuse_pre_votes(connection, Arc::clone(&counted))).await;
    let mut client = client(addr, None).await;
    let response = client
        .pre_vote(vote_request(), option(5_000))
        .await
        .unwrap();
    assert!(!response.vote_granted, "{response:?}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A lockd from before pre-votes welcomes without `pre_vote` and closes the connection on a
/// request it does not know: it is not asked, and counts as granting, so that an election can
/// still be won in a cluster in the middle of a rolling upgrade.
#[tokio::test]
async fn a_peer_from_before_pre_votes_is_not_asked_and_counts_as_granting() {
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let welcome = bytes::Bytes::from_static(br#"{"version":1}"#);
    let (addr, connections) = fake_peer_welcoming(welcome, move |_, connection| {
        refuse_pre_votes(connection, Arc::clone(&counted))
    })
    .await;
    let mut client = client(addr, None).await;
    for _ in 0..2 {
        let response = client
            .pre_vote(vote_request(), option(5_000))
            .await
            .unwrap();
        assert!(response.vote_granted, "{response:?}");
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Each pre-vote connects, to learn that the peer is reachable and what it runs now.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Its votes still go to it.
    let result = quick_vote(&mut client, 5_000).await;
    assert!(result.is_err(), "the fake closes on a vote: {result:?}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pre_vote_to_a_peer_that_cannot_be_reached_is_not_a_grant() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = client(addr, None)
        .await
        .pre_vote(vote_request(), option(5_000))
        .await;
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

/// A fake peer that reads requests and never answers.
async fn silent_peer() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    fake_peer(|_, mut connection| async move { while let Some(Ok(_)) = connection.next().await {} })
        .await
}

#[tokio::test]
async fn a_peer_that_stops_answering_times_out_and_the_next_call_reconnects() {
    let (addr, connections) = silent_peer().await;
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

#[tokio::test]
async fn a_stream_sends_the_next_append_entries_before_the_answer_to_the_one_before() {
    // Answers nothing until it holds three requests: a client that waits for each answer
    // before it sends the next never gets one.
    let (addr, connections) = fake_peer(|_, mut connection| async move {
        let mut ids = Vec::new();
        while ids.len() < 3 {
            match read_request(&mut connection).await {
                Some(id) => ids.push(id),
                None => return,
            }
        }
        for id in ids {
            answer_success(&mut connection, id).await;
        }
        answer_each(&mut connection).await;
    })
    .await;
    let mut link = link(addr, None).await;
    let requests = vec![
        append(None, 0..=0),
        append(Some(0), 1..=2),
        append(Some(2), 3..=3),
    ];
    let answers = stream(&mut link, requests, 5_000).await;
    assert_eq!(
        matched(answers),
        vec![Some(log_id(0)), Some(log_id(2)), Some(log_id(3))]
    );
    // Every request was answered: the next stream goes on the same connection.
    let answers = stream(&mut link, vec![append(Some(3), 4..=4)], 5_000).await;
    assert_eq!(matched(answers), vec![Some(log_id(4))]);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_server_that_answers_one_request_at_a_time_serves_a_pipelined_stream() {
    // As lockd on openraft 0.9 (or before pipelining) serves: it reads a request only once it
    // has answered the one before.
    let (addr, _) = fake_peer(|_, mut connection| async move {
        answer_each(&mut connection).await;
    })
    .await;
    let mut link = link(addr, None).await;
    let answers = stream(&mut link, appends(40), 5_000).await;
    let expected: Vec<_> = (0..40).map(|index| Some(log_id(index))).collect();
    assert_eq!(matched(answers), expected);
}

#[tokio::test]
async fn an_answer_out_of_order_or_to_no_request_sent_ends_the_stream() {
    // Reads two requests and answers the second first.
    let (swapped, _) = fake_peer(|_, mut connection| async move {
        let (Some(first), Some(second)) = (
            read_request(&mut connection).await,
            read_request(&mut connection).await,
        ) else {
            return;
        };
        answer_success(&mut connection, second).await;
        answer_success(&mut connection, first).await;
        while let Some(Ok(_)) = connection.next().await {}
    })
    .await;
    // Answers each request with another id.
    let (stranger, _) = fake_peer(|_, mut connection| async move {
        while let Some(id) = read_request(&mut connection).await {
            answer_success(&mut connection, id + 100).await;
        }
    })
    .await;
    for (what, addr, requests) in [
        ("answers out of order", swapped, appends(2)),
        ("an answer to no request sent", stranger, appends(1)),
    ] {
        let mut link = link(addr, None).await;
        let answers = stream(&mut link, requests, 5_000).await;
        assert!(
            matches!(answers.as_slice(), [Err(RPCError::Network(_))]),
            "{what}: {answers:?}"
        );
        // Its answers cannot be trusted: the connection is not kept.
        assert!(link.into_inner().connection.is_none(), "{what}");
    }
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_ends_it_and_the_next_stream_reconnects() {
    // The first connection takes two requests and closes; later ones answer everything.
    let (addr, connections) = fake_peer(|number, mut connection| async move {
        if number == 0 {
            read_request(&mut connection).await;
            read_request(&mut connection).await;
            return;
        }
        answer_each(&mut connection).await;
    })
    .await;
    let mut link = link(addr, None).await;
    let answers = stream(&mut link, appends(3), 5_000).await;
    assert!(
        matches!(answers.as_slice(), [Err(RPCError::Network(_))]),
        "{answers:?}"
    );
    let answers = stream(&mut link, appends(1), 5_000).await;
    assert_eq!(matched(answers), vec![Some(log_id(0))]);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_append_entries_unanswered_within_the_ttl_ends_the_stream_with_a_timeout() {
    let (addr, connections) = silent_peer().await;
    let mut link = link(addr, None).await;
    for _ in 0..2 {
        let answers = stream(&mut link, appends(2), 300).await;
        assert!(
            matches!(answers.as_slice(), [Err(RPCError::Timeout(_))]),
            "{answers:?}"
        );
    }
    // A timed-out connection may still carry late answers: it is never reused.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_the_next_append_entries_while_its_sync_for_the_one_before_hangs() {
    let node = TestNode::start(2, fast_config(), None).await;
    let (mut connection, _) = dial(&node.addr.to_string(), &PeerCredentials::default())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_recovers_when_a_followers_connections_are_cut_mid_stream() {
    let mut nodes = [
        TestNode::start(1, fast_config(), None).await,
        TestNode::start(2, fast_config(), None).await,
        TestNode::start(3, fast_config(), None).await,
    ];
    let all: Vec<&TestNode> = nodes.iter().collect();
    nodes[0].raft.initialize(members(&all)).await.unwrap();
    let leader = wait_for_leader(&all, None).await.id;
    let at = |id: u64| usize::try_from(id - 1).unwrap();
    let follower = if leader == 1 { 2 } else { 1 };
    let first = nodes[at(leader)].write("first", "write").await.log_id.index;

    // Writers keep the leader replicating while the follower's connections are cut.
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let raft = nodes[at(leader)].raft.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let write = KvWrite {
                        key: format!("w{writer}-{i}"),
                        value: "during".to_owned(),
                    };
                    raft.client_write(write).await.unwrap();
                }
            })
        })
        .collect();
    nodes[at(leader)]
        .raft
        .wait(Some(PATIENCE))
        .metrics(
            |m| {
                m.last_applied
                    .is_some_and(|applied| applied.index >= first + 20)
            },
            "the writers are under way",
        )
        .await
        .unwrap();
    nodes[at(follower)].restart_server().await;
    for writer in writers {
        writer.await.unwrap();
    }

    let last = nodes[at(leader)]
        .write("after", "the cut")
        .await
        .log_id
        .index;
    nodes[at(follower)].wait_applied(last).await;
    assert_eq!(
        nodes[at(follower)].state.data(),
        nodes[at(leader)].state.data()
    );
}
