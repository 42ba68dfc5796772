//! The client side of Raft RPC: [`PeerNetwork`], openraft's `RaftNetworkFactory` over TCP (or
//! mutual TLS, see `transport.rs`).
//!
//! openraft asks the factory for one client per target and per purpose (a replication stream,
//! heartbeats, an election, a snapshot) and calls it through `&mut self`, so a client has one
//! RPC at a time. Each client therefore keeps one TCP connection: a vote or a snapshot chunk is
//! sent and its reply awaited before the next request; a `stream_append` (replication and
//! heartbeats) keeps up to 16 AppendEntries on it at once (`append_stream::MAX_APPENDS_IN_FLIGHT`),
//! answered in order. Multiplexing several RPCs would buy nothing and would need a reader task
//! per connection. The connection is opened on the first RPC, and dropped after any failure,
//! when a stream ends with requests unanswered, or when openraft cancels an RPC by dropping its
//! future (it does, at `hard_ttl`), so that the next RPC starts on a fresh connection and never
//! reads an earlier request's late reply.
//!
//! openraft also makes a client for single RPCs outside replication: every round of vote
//! requests asks each voter through a new client (and openraft 0.9 did so for every leadership
//! check behind a linearizable read; 0.10 checks through its heartbeat clients). So a client
//! that is dropped with a healthy connection leaves it in a small per-target pool
//! (`KnownPeers`), and a new client takes one from there before it dials: such an RPC
//! costs a round trip, not a TCP and TLS handshake. A pooled connection may have died while
//! idle (the peer restarted); an RPC that fails on one before any reply came on it is sent once
//! more on a fresh connection, which Raft's RPCs allow (they are idempotent).
//!
//! Failures are reported the way openraft's replication loop expects: a peer that cannot be
//! connected to (refused, no route, connect timeout, handshake refused) is `Unreachable`, after
//! which openraft waits for [`PeerClient::backoff`] before trying again; a connection that fails
//! mid-RPC is a `NetworkError`, retried on the next heartbeat; no reply within `hard_ttl` is a
//! `Timeout`; and an error returned by the remote `Raft` is a `RemoteError`. Snapshots go in
//! chunks, one `install_snapshot` RPC each, as openraft 0.9 sent them, so that 0.9 and 0.10
//! nodes exchange them during a rolling upgrade.
//!
//! openraft 0.10 calls networks through `RaftNetworkV2`; [`PeerClient`] implements the v1
//! `RaftNetwork` of `openraft-legacy`, whose `Adapter` turns it into a `RaftNetworkV2` (sending
//! a snapshot in chunks through `install_snapshot`, and a remote `Fatal` error as
//! `Unreachable`). [`PeerLink`], what the factory hands openraft, wraps that adapter and
//! replaces one method: `stream_append`, through which openraft replicates (and sends
//! heartbeats), is pipelined (`append_stream.rs`): several AppendEntries are on the connection
//! at once and their replies come back in order. The adapter would send them one at a time
//! (openraft's `stream_append_sequential`), each waiting for the reply before it, and so for
//! the follower's sync.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::error::decompose::DecomposeResult;
use openraft::error::{
    NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{LogIdOf, SnapshotOf, VoteOf};
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{AnyError, BasicNode, OptionalSend, RaftTypeConfig};
use openraft_legacy::network_v1::{
    Adapter, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse, RaftNetwork,
};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::election_timer::{ElectionSignals, SoonRun};
use super::transport::PeerCredentials;
use super::wire::{
    self, FrameError, Hello, PeerReply, PeerRequest, PeerStream, ReplyFrame, RequestFrame, Welcome,
    PROTOCOL_VERSION,
};

/// The first wait after a peer turned out unreachable; each further failure doubles it.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts to reach an unreachable peer: a restarted peer is back in
/// the cluster within this long, and a dead one costs one connect attempt per interval.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Idle connections kept per peer address: enough for the concurrent leadership checks of one
/// node (the front end runs one at a time) and a vote, few enough to be nothing on the peer's
/// connection limit.
const IDLE_PER_PEER: usize = 4;

/// What the clients of one [`PeerNetwork`] keep of each peer, by peer address, shared by all of
/// them.
#[derive(Clone, Default)]
struct KnownPeers {
    by_address: Arc<Mutex<HashMap<String, KnownPeer>>>,
}

#[derive(Default)]
struct KnownPeer {
    /// Healthy connections whose client was dropped, for the next client to the same peer
    /// (see the module docs); at most [`IDLE_PER_PEER`].
    idle: Vec<PeerStream>,
    /// Whether the peer answers a pre-vote, as it said in the welcome of the last connection
    /// made to it ([`Welcome::pre_vote`]): a peer restarted on another version is connected to
    /// again, and says again. `None` until a connection to it is made.
    answers_pre_votes: Option<bool>,
}

impl KnownPeers {
    fn with<T>(&self, address: &str, f: impl FnOnce(&mut KnownPeer) -> T) -> T {
        let mut peers = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(peers.entry(address.to_owned()).or_default())
    }

    fn take_idle(&self, address: &str) -> Option<PeerStream> {
        self.with(address, |peer| peer.idle.pop())
    }

    fn put_idle(&self, address: &str, connection: PeerStream) {
        self.with(address, |peer| {
            if peer.idle.len() < IDLE_PER_PEER {
                peer.idle.push(connection);
            }
        });
    }

    fn answers_pre_votes(&self, address: &str) -> Option<bool> {
        self.with(address, |peer| peer.answers_pre_votes)
    }

    fn welcomed(&self, address: &str, welcome: &Welcome) {
        self.with(address, |peer| {
            peer.answers_pre_votes = Some(welcome.pre_vote)
        });
    }
}

/// Where a node listens for Raft RPCs from its peers.
pub trait PeerAddress {
    /// A `host:port` to connect to.
    fn peer_addr(&self) -> &str;
}

impl PeerAddress for BasicNode {
    fn peer_addr(&self) -> &str {
        &self.addr
    }
}

/// What a snapshot's data must be for a [`PeerLink`] to send it in chunks: a file, or bytes in
/// memory.
pub trait SnapshotBytes:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin + OptionalSend + 'static
{
}

impl<T> SnapshotBytes for T where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tokio::io::AsyncSeek
        + Unpin
        + OptionalSend
        + 'static
{
}

/// Makes a [`PeerLink`] per target, for snapshots whose data is an `SD`. Cheap to clone.
pub struct PeerNetwork<C: RaftTypeConfig, SD> {
    /// This node's id, which openraft's `Timeout` error names as the sender.
    own_id: C::NodeId,
    /// Presented on every connection: its TLS certificate and its secret, when set.
    credentials: PeerCredentials,
    peers: KnownPeers,
    /// Told when a peer refuses this node's vote request in a way that bears on when this node
    /// should next run (see `election_timer.rs`).
    election_signals: Arc<ElectionSignals>,
    _snapshot_data: PhantomData<fn() -> SD>,
}

impl<C: RaftTypeConfig, SD> PeerNetwork<C, SD> {
    /// A network for the node `own_id`, whose every connection presents `credentials`.
    pub fn new(own_id: C::NodeId, credentials: PeerCredentials) -> Self {
        PeerNetwork {
            own_id,
            credentials,
            peers: KnownPeers::default(),
            election_signals: Arc::default(),
            _snapshot_data: PhantomData,
        }
    }

    /// What this network's clients tell the election timer of the votes peers refuse.
    pub(crate) fn election_signals(&self) -> Arc<ElectionSignals> {
        Arc::clone(&self.election_signals)
    }
}

impl<C: RaftTypeConfig, SD> Clone for PeerNetwork<C, SD> {
    fn clone(&self) -> Self {
        PeerNetwork {
            own_id: self.own_id.clone(),
            credentials: self.credentials.clone(),
            peers: self.peers.clone(),
            election_signals: Arc::clone(&self.election_signals),
            _snapshot_data: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig, SD> Debug for PeerNetwork<C, SD> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerNetwork")
            .field("own_id", &self.own_id)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl<C: RaftTypeConfig, SD> PeerNetwork<C, SD> {
    /// Checks that a node answers on the peer address `address` and accepts this node's
    /// credentials, as a connection for Raft would; says why not.
    pub async fn probe(&self, address: &str) -> Result<(), String> {
        dial(address, &self.credentials).await.map(drop)
    }
}

impl<C, SD> RaftNetworkFactory<C> for PeerNetwork<C, SD>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
    SD: SnapshotBytes,
{
    type Network = PeerLink<C, SD>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        PeerLink::new(PeerClient {
            own_id: self.own_id.clone(),
            target,
            node: node.clone(),
            credentials: self.credentials.clone(),
            peers: self.peers.clone(),
            election_signals: Arc::clone(&self.election_signals),
            address: node.peer_addr().to_owned(),
            connection: None,
            next_request_id: 1,
            _config: PhantomData,
        })
    }
}

/// openraft's client to one peer: a [`PeerClient`] in `openraft-legacy`'s `Adapter` (chunked
/// snapshots, v1 errors), whose `stream_append` is pipelined (`append_stream.rs`) instead of
/// the adapter's one AppendEntries at a time.
pub struct PeerLink<C: RaftTypeConfig, SD> {
    adapter: Adapter<C, PeerClient<C>, SD>,
}

impl<C, SD> PeerLink<C, SD>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
    SD: OptionalSend + 'static,
{
    fn new(client: PeerClient<C>) -> Self {
        PeerLink {
            adapter: Adapter::new(client),
        }
    }

    /// The client inside, which speaks openraft's v1 `RaftNetwork`.
    pub fn into_inner(self) -> PeerClient<C> {
        self.adapter.into_inner()
    }
}

impl<C, SD> RaftNetworkV2<C> for PeerLink<C, SD>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
    SD: SnapshotBytes,
{
    type SnapshotData = SD;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        RaftNetworkV2::append_entries(&mut self.adapter, rpc, option).await
    }

    /// Pipelined: see `append_stream.rs`.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        let stream = append_stream::stream_append(self.adapter.inner_mut(), input, option);
        Box::pin(std::future::ready(Ok(stream)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        RaftNetworkV2::vote(&mut self.adapter, rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.adapter
            .inner_mut()
            .pre_vote(rpc, option)
            .await
            .decompose_infallible()
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SD>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        RaftNetworkV2::full_snapshot(&mut self.adapter, vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        RaftNetworkV2::transfer_leader(&mut self.adapter, rpc, option).await
    }

    fn backoff(&self) -> Option<Backoff> {
        RaftNetworkV2::backoff(&self.adapter)
    }
}

impl<C, SD> Debug for PeerLink<C, SD>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
    SD: OptionalSend + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Debug::fmt(self.adapter.inner(), f)
    }
}

/// Sends Raft RPCs to one peer over one lazily opened TCP connection.
pub struct PeerClient<C: RaftTypeConfig> {
    own_id: C::NodeId,
    target: C::NodeId,
    node: C::Node,
    credentials: PeerCredentials,
    /// Where this client leaves its connection when it is dropped, finds one to start with,
    /// and learns whether the target answers pre-votes.
    peers: KnownPeers,
    /// The target's peer address: its key in `peers`.
    address: String,
    election_signals: Arc<ElectionSignals>,
    /// `Some` only between RPCs that succeeded: an RPC takes it out and puts it back when it
    /// got its reply, so a failed or cancelled RPC leaves `None` and the next one reconnects.
    connection: Option<PeerStream>,
    next_request_id: u64,
    _config: PhantomData<C>,
}

impl<C> PeerClient<C>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
{
    /// Sends `request` and waits for its reply, all within `ttl`.
    async fn call(
        &mut self,
        request: PeerRequest<C>,
        action: RPCTypes,
        ttl: Duration,
    ) -> Result<PeerReply<C>, CallError> {
        let (id, frame) = self
            .encode(request)
            .map_err(|refused| CallError::encoding(refused.0))?;
        self.send_frame(id, frame, action, ttl).await
    }

    /// Numbers and encodes `request`; gives it back with the error if it does not fit a
    /// frame. Encoded before connecting, so a frame too large to send costs no connection.
    fn encode(&mut self, request: PeerRequest<C>) -> Result<(u64, Bytes), Box<Unsent<C>>> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let frame = RequestFrame { id, request };
        match wire::encode(&frame) {
            Ok(bytes) => Ok((id, bytes)),
            Err(err) => Err(Box::new((err, frame.request))),
        }
    }

    /// Numbers and encodes an AppendEntries; if its entries make a frame over
    /// [`wire::MAX_FRAME_BYTES`], only the first half of them (and so on), which the answer
    /// must then report as a partial success ([`Cut::apply`]).
    fn encode_append(
        &mut self,
        mut rpc: AppendEntriesRequest<C>,
    ) -> Result<EncodedAppend<C>, CallError> {
        let all = rpc.entries.len();
        loop {
            let sent = rpc.entries.len();
            let last_sent = rpc.entries.last().map(RaftEntry::log_id);
            let refused = match self.encode(PeerRequest::AppendEntries(rpc)) {
                Ok((id, frame)) => {
                    let cut = match last_sent {
                        Some(last_sent) if sent < all => Cut(Some(last_sent)),
                        _ => Cut(None),
                    };
                    return Ok(EncodedAppend { id, frame, cut });
                }
                Err(refused) => refused,
            };
            rpc = match *refused {
                (err @ FrameError::TooLarge(_), PeerRequest::AppendEntries(mut rpc))
                    if sent > 1 =>
                {
                    tracing::debug!(
                        entries = sent,
                        error = %err,
                        "an AppendEntries is too large for a frame: sending half of it"
                    );
                    rpc.entries.truncate(sent / 2);
                    rpc
                }
                (err, _) => return Err(CallError::encoding(err)),
            };
        }
    }

    /// Sends the encoded request `id` and waits for its reply, all within `ttl`.
    async fn send_frame(
        &mut self,
        id: u64,
        frame: Bytes,
        action: RPCTypes,
        ttl: Duration,
    ) -> Result<PeerReply<C>, CallError> {
        let deadline = Instant::now() + ttl;
        // A connection from the pool may have died while it sat there: if the exchange fails
        // on one, it is tried once more on a fresh connection.
        let (mut connection, mut reused) = match self.connection.take() {
            Some(connection) => (connection, false),
            None => match self.peers.take_idle(&self.address) {
                Some(connection) => (connection, true),
                None => (self.connect_before(deadline, ttl).await?, false),
            },
        };
        loop {
            match timeout_at(deadline, exchange(&mut connection, frame.clone(), id)).await {
                Ok(Ok(reply)) => {
                    self.connection = Some(connection);
                    return Ok(reply);
                }
                Ok(Err(_)) if reused => {
                    reused = false;
                    connection = self.connect_before(deadline, ttl).await?;
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(CallError::Timeout { action, ttl }),
            }
        }
    }

    /// Opens a connection by `deadline`; an RPC given `ttl` in all could not reach the peer
    /// otherwise.
    async fn connect_before(
        &self,
        deadline: Instant,
        ttl: Duration,
    ) -> Result<PeerStream, CallError> {
        match timeout_at(deadline, self.connect()).await {
            Ok(connected) => connected,
            Err(_) => Err(CallError::Unreachable(AnyError::error(format!(
                "cannot connect to {} within {ttl:?}",
                self.node.peer_addr()
            )))),
        }
    }

    /// Opens a connection and completes the handshake. Every failure here means the peer is
    /// unreachable, and openraft should wait before trying again.
    async fn connect(&self) -> Result<PeerStream, CallError> {
        let (connection, welcome) = dial(self.node.peer_addr(), &self.credentials)
            .await
            .map_err(|why| CallError::Unreachable(AnyError::error(why)))?;
        self.peers.welcomed(&self.address, &welcome);
        Ok(connection)
    }

    /// Asks the peer whether it would grant `rpc`'s vote, which changes nothing on either side
    /// (see `election_timer.rs`). A peer that does not answer pre-votes (a lockd from before
    /// them, during a rolling upgrade) is not asked and counts as granting, as openraft counts
    /// a network without pre-votes: otherwise an up-to-date node of the new version could not
    /// win an election while the others still run the old one. A peer that cannot be reached
    /// does not count, whatever it runs.
    pub(crate) async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C, RaftError<C>>> {
        let ttl = option.hard_ttl();
        if self.peers.answers_pre_votes(&self.address) != Some(true) {
            // Never connected to, or it ran a lockd from before pre-votes when last connected
            // to: connect now, which shows that it is reachable, and its welcome says what it
            // runs now.
            let connection = self
                .connect_before(Instant::now() + ttl, ttl)
                .await
                .map_err(|err| self.rpc_error(err))?;
            self.connection = Some(connection);
        }
        if self.peers.answers_pre_votes(&self.address) == Some(false) {
            return Ok(VoteResponse::new(rpc.vote, None, true));
        }
        let (vote, last_log_id) = (rpc.vote.clone(), rpc.last_log_id.clone());
        match self
            .call(PeerRequest::PreVote(rpc), RPCTypes::Vote, ttl)
            .await
        {
            Ok(PeerReply::PreVote(Ok(response))) => {
                self.note_refusal(&response, &vote, &last_log_id);
                Ok(response)
            }
            Ok(PeerReply::PreVote(Err(remote))) => Err(self.remote_error(remote)),
            Ok(other) => Err(self.unexpected_reply(&other)),
            Err(err) => Err(self.rpc_error(err)),
        }
    }

    /// Tells the election timer what a refusal of this node's vote (or pre-vote) for `vote`,
    /// with its log at `last_log_id`, says about when to run next.
    fn note_refusal(
        &self,
        response: &VoteResponse<C>,
        vote: &VoteOf<C>,
        last_log_id: &Option<LogIdOf<C>>,
    ) {
        if response.vote_granted {
            return;
        }
        if response.last_log_id > *last_log_id {
            self.election_signals.greater_log_seen();
        } else if response.last_log_id < *last_log_id
            && RaftVote::partial_cmp(&response.vote, vote) == Some(std::cmp::Ordering::Greater)
            && !response.vote.is_committed()
            && response.vote.leader_id().node_id() == &self.target
        {
            // The peer voted itself into a higher term, and with its shorter log it needs
            // another node's vote to win; it grants this node the next term (the timer waits a
            // heartbeat first: see `election_timer.rs`).
            self.election_signals.run_soon(SoonRun::ElectionAtOnce);
        }
    }

    fn unexpected_reply<E: std::error::Error>(&self, reply: &PeerReply<C>) -> RPCError<C, E> {
        let variant = match reply {
            PeerReply::AppendEntries(_) => "append_entries",
            PeerReply::Vote(_) => "vote",
            PeerReply::InstallSnapshot(_) => "install_snapshot",
            PeerReply::PreVote(_) => "pre_vote",
        };
        RPCError::Network(NetworkError::new(&AnyError::error(format!(
            "the peer answered with a {variant} reply to another RPC"
        ))))
    }

    fn rpc_error<E: std::error::Error>(&self, err: CallError) -> RPCError<C, E> {
        match err {
            CallError::Unreachable(source) => RPCError::Unreachable(Unreachable::new(&source)),
            CallError::Network(source) => RPCError::Network(NetworkError::new(&source)),
            CallError::Timeout { action, ttl } => RPCError::Timeout(Timeout {
                action,
                id: self.own_id.clone(),
                target: self.target.clone(),
                timeout: ttl,
            }),
            CallError::TooLarge(source) => RPCError::Network(NetworkError::new(&source)),
        }
    }

    fn remote_error<E: std::error::Error>(&self, err: E) -> RPCError<C, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target.clone(),
            self.node.clone(),
            err,
        ))
    }
}

impl<C> RaftNetwork<C> for PeerClient<C>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
{
    /// Sends the entries; if they make a frame over [`wire::MAX_FRAME_BYTES`], sends the first
    /// half of them (and so on) and reports that part as a partial success, which openraft
    /// follows with the rest at once. (openraft 0.9 had a `PayloadTooLarge` error for this.)
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C, RaftError<C>>> {
        let append = self.encode_append(rpc).map_err(|err| self.rpc_error(err))?;
        let call = self
            .send_frame(
                append.id,
                append.frame,
                RPCTypes::AppendEntries,
                option.hard_ttl(),
            )
            .await;
        match call {
            Ok(PeerReply::AppendEntries(Ok(response))) => Ok(append.cut.apply(response)),
            Ok(PeerReply::AppendEntries(Err(remote))) => Err(self.remote_error(remote)),
            Ok(other) => Err(self.unexpected_reply(&other)),
            Err(err) => Err(self.rpc_error(err)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<C>, RPCError<C, RaftError<C, InstallSnapshotError>>> {
        let request = PeerRequest::InstallSnapshot(rpc);
        match self
            .call(request, RPCTypes::InstallSnapshot, option.hard_ttl())
            .await
        {
            Ok(PeerReply::InstallSnapshot(Ok(response))) => Ok(response),
            Ok(PeerReply::InstallSnapshot(Err(remote))) => Err(self.remote_error(remote)),
            Ok(other) => Err(self.unexpected_reply(&other)),
            Err(err) => Err(self.rpc_error(err)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C, RaftError<C>>> {
        let (vote, last_log_id) = (rpc.vote.clone(), rpc.last_log_id.clone());
        let request = PeerRequest::Vote(rpc);
        match self.call(request, RPCTypes::Vote, option.hard_ttl()).await {
            Ok(PeerReply::Vote(Ok(response))) => {
                self.note_refusal(&response, &vote, &last_log_id);
                Ok(response)
            }
            Ok(PeerReply::Vote(Err(remote))) => Err(self.remote_error(remote)),
            Ok(other) => Err(self.unexpected_reply(&other)),
            Err(err) => Err(self.rpc_error(err)),
        }
    }

    /// Exponential, from `BACKOFF_FIRST` to `BACKOFF_MAX`, in place of openraft's constant
    /// interval: a peer that blinked is retried sooner, a dead one less often.
    fn backoff(&self) -> Backoff {
        let intervals = std::iter::successors(Some(BACKOFF_FIRST), |previous| {
            Some((*previous * 2).min(BACKOFF_MAX))
        });
        Backoff::new(intervals)
    }
}

/// Sends one encoded request on `connection` and reads its reply, which must answer `id`.
async fn exchange<C: RaftTypeConfig>(
    connection: &mut PeerStream,
    frame: Bytes,
    id: u64,
) -> Result<PeerReply<C>, CallError> {
    connection.send(frame).await.map_err(network_error)?;
    let bytes = match connection.next().await {
        Some(read) => read.map_err(network_error)?,
        None => {
            return Err(CallError::Network(AnyError::error(
                "the peer closed the connection",
            )))
        }
    };
    let reply: ReplyFrame<C> = wire::decode(&bytes).map_err(network_error)?;
    if reply.id != id {
        return Err(CallError::Network(AnyError::error(format!(
            "the peer answered request {} to request {id}",
            reply.id
        ))));
    }
    Ok(reply.reply)
}

impl<C: RaftTypeConfig> Drop for PeerClient<C> {
    /// A connection that finished its last RPC goes to the pool; one dropped mid-RPC was
    /// taken out of `connection` by the RPC and is closed, as it may still carry a reply.
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.peers.put_idle(&self.address, connection);
        }
    }
}

impl<C: RaftTypeConfig> Debug for PeerClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("target", &self.target)
            .field("node", &self.node)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

/// Connects to the peer port at `address` and completes the handshake with `credentials`: TLS
/// when they have it, then hello and welcome. Says why it failed, naming the address.
async fn dial(
    address: &str,
    credentials: &PeerCredentials,
) -> Result<(PeerStream, Welcome), String> {
    let failed = |what: &str, err: &dyn fmt::Display| format!("{what} {address}: {err}");
    let stream = TcpStream::connect(address)
        .await
        .map_err(|err| failed("cannot connect to", &err))?;
    // Raft RPCs are small and latency-bound: do not let Nagle hold them back.
    stream
        .set_nodelay(true)
        .map_err(|err| failed("cannot configure the connection to", &err))?;
    let transport = credentials
        .connect(stream)
        .await
        .map_err(|err| failed("TLS handshake failed with", &err))?;
    let mut connection = wire::frame_stream(transport);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        secret: credentials.secret.as_deref().map(str::to_owned),
    };
    let hello = wire::encode(&hello).map_err(|err| failed("cannot greet", &err))?;
    connection
        .send(hello)
        .await
        .map_err(|err| failed("cannot greet", &err))?;
    let welcome = match connection.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(err)) => return Err(failed("no welcome from", &err)),
        None => {
            return Err(failed(
                "refused by",
                &"the peer closed the connection at the handshake (wrong secret or version?)",
            ))
        }
    };
    let welcome: Welcome =
        wire::decode(&welcome).map_err(|err| failed("bad welcome from", &err))?;
    if welcome.version != PROTOCOL_VERSION {
        return Err(failed("protocol version mismatch with", &welcome.version));
    }
    Ok((connection, welcome))
}

/// A request that could not be encoded, given back with why.
type Unsent<C> = (FrameError, PeerRequest<C>);

/// An AppendEntries numbered and encoded, ready to send.
struct EncodedAppend<C: RaftTypeConfig> {
    id: u64,
    frame: Bytes,
    cut: Cut<C>,
}

/// Where an AppendEntries was cut to fit a frame: the last entry sent, or `None` when it went
/// whole.
struct Cut<C: RaftTypeConfig>(Option<LogIdOf<C>>);

impl<C: RaftTypeConfig> Cut<C> {
    /// The follower's answer to what was sent, as an answer to the whole request: a success
    /// for a cut request is a partial success up to its last entry sent.
    fn apply(&self, response: AppendEntriesResponse<C>) -> AppendEntriesResponse<C> {
        match (response, &self.0) {
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                AppendEntriesResponse::PartialSuccess(Some(last_sent.clone()))
            }
            (response, _) => response,
        }
    }
}

/// How one RPC failed, before it is put in the error type of its method.
enum CallError {
    Unreachable(AnyError),
    Network(AnyError),
    Timeout { action: RPCTypes, ttl: Duration },
    TooLarge(FrameError),
}

impl CallError {
    fn encoding(err: FrameError) -> Self {
        match err {
            FrameError::TooLarge(_) => CallError::TooLarge(err),
            FrameError::Json(_) => CallError::Network(AnyError::new(&err)),
        }
    }
}

fn network_error(err: impl std::error::Error + 'static) -> CallError {
    CallError::Network(AnyError::new(&err))
}

#[path = "append_stream.rs"]
mod append_stream;

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
