//! The client side of Raft RPC: [`PeerNetwork`], openraft's `RaftNetworkFactory` over TCP (or
//! mutual TLS, see `transport.rs`).
//!
//! openraft asks the factory for one [`PeerClient`] per target and per purpose (a replication
//! stream, an election) and calls it through `&mut self`, so a client never has two RPCs in
//! flight. Each client therefore keeps one TCP connection and sends its requests one after
//! another on it: multiplexing would buy nothing and would need a reader task per connection.
//! The connection is opened on the first RPC, and dropped after any failure, or when openraft
//! cancels an RPC by dropping its future (it does, at `hard_ttl`), so that the next RPC starts
//! on a fresh connection and never reads an earlier request's late reply.
//!
//! openraft also makes a client for each single RPC outside replication: every leadership check
//! behind a linearizable read (`Raft::ensure_linearizable`) asks each voter through a new
//! client. So a client that is dropped with a healthy connection leaves it in a small per-target
//! pool (`IdlePeerConnections`), and a new client takes one from there before it dials: a read
//! costs a round trip to each follower, not a TCP and TLS handshake. A pooled connection may
//! have died while idle (the peer restarted); an RPC that fails on one is sent once more on a
//! fresh connection, which Raft's RPCs allow (they are idempotent).
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
//! `Unreachable`). Replication still sends one AppendEntries at a time on a connection: the
//! adapter uses openraft's sequential `stream_append`.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use openraft::entry::RaftEntry;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{AnyError, BasicNode, OptionalSend, RaftTypeConfig};
use openraft_legacy::network_v1::{
    Adapter, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse, RaftNetwork,
};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::election_timer::ElectionSignals;
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

/// Healthy connections whose client was dropped, by peer address, for the next client to the
/// same peer (see the module docs). Shared by every client of one [`PeerNetwork`].
#[derive(Clone, Default)]
struct IdlePeerConnections {
    by_address: Arc<Mutex<HashMap<String, Vec<PeerStream>>>>,
}

impl IdlePeerConnections {
    fn take(&self, address: &str) -> Option<PeerStream> {
        let mut idle = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle.get_mut(address).and_then(Vec::pop)
    }

    fn put(&self, address: &str, connection: PeerStream) {
        let mut idle = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let connections = idle.entry(address.to_owned()).or_default();
        if connections.len() < IDLE_PER_PEER {
            connections.push(connection);
        }
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

/// Makes a [`PeerClient`] per target, for snapshots whose data is an `SD`. Cheap to clone.
pub struct PeerNetwork<C: RaftTypeConfig, SD> {
    /// This node's id, which openraft's `Timeout` error names as the sender.
    own_id: C::NodeId,
    /// Presented on every connection: its TLS certificate and its secret, when set.
    credentials: PeerCredentials,
    idle: IdlePeerConnections,
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
            idle: IdlePeerConnections::default(),
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
            idle: self.idle.clone(),
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
    SD: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tokio::io::AsyncSeek
        + Unpin
        + OptionalSend
        + 'static,
{
    type Network = Adapter<C, PeerClient<C>, SD>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        Adapter::new(PeerClient {
            own_id: self.own_id.clone(),
            target,
            node: node.clone(),
            credentials: self.credentials.clone(),
            idle: self.idle.clone(),
            election_signals: Arc::clone(&self.election_signals),
            address: node.peer_addr().to_owned(),
            connection: None,
            next_request_id: 1,
            _config: PhantomData,
        })
    }
}

/// Sends Raft RPCs to one peer over one lazily opened TCP connection.
pub struct PeerClient<C: RaftTypeConfig> {
    own_id: C::NodeId,
    target: C::NodeId,
    node: C::Node,
    credentials: PeerCredentials,
    /// Where this client leaves its connection when it is dropped, and finds one to start with.
    idle: IdlePeerConnections,
    /// The target's peer address: the key of its connections in `idle`.
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
    ) -> Result<PeerReply<C>, CallError<C>> {
        let (id, frame) = self
            .encode(request)
            .map_err(|refused| CallError::encoding(refused.0))?;
        self.send_frame(id, frame, action, ttl).await
    }

    /// Numbers and encodes `request`; gives it back with the error if it does not fit a
    /// frame. Encoded before connecting, so a frame too large to send costs no connection.
    fn encode(&mut self, request: PeerRequest<C>) -> Result<(u64, bytes::Bytes), Box<Unsent<C>>> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let frame = RequestFrame { id, request };
        match wire::encode(&frame) {
            Ok(bytes) => Ok((id, bytes)),
            Err(err) => Err(Box::new((err, frame.request))),
        }
    }

    /// Sends the encoded request `id` and waits for its reply, all within `ttl`.
    async fn send_frame(
        &mut self,
        id: u64,
        frame: bytes::Bytes,
        action: RPCTypes,
        ttl: Duration,
    ) -> Result<PeerReply<C>, CallError<C>> {
        let deadline = Instant::now() + ttl;
        // A connection from the pool may have died while it sat there: if the exchange fails
        // on one, it is tried once more on a fresh connection.
        let (mut connection, mut reused) = match self.connection.take() {
            Some(connection) => (connection, false),
            None => match self.idle.take(&self.address) {
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
    ) -> Result<PeerStream, CallError<C>> {
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
    async fn connect(&self) -> Result<PeerStream, CallError<C>> {
        dial(self.node.peer_addr(), &self.credentials)
            .await
            .map_err(|why| CallError::Unreachable(AnyError::error(why)))
    }

    fn unexpected_reply<E: std::error::Error>(&self, reply: &PeerReply<C>) -> RPCError<C, E> {
        let variant = match reply {
            PeerReply::AppendEntries(_) => "append_entries",
            PeerReply::Vote(_) => "vote",
            PeerReply::InstallSnapshot(_) => "install_snapshot",
        };
        RPCError::Network(NetworkError::new(&AnyError::error(format!(
            "the peer answered with a {variant} reply to another RPC"
        ))))
    }

    fn rpc_error<E: std::error::Error>(&self, err: CallError<C>) -> RPCError<C, E> {
        match err {
            CallError::Unreachable(source) => RPCError::Unreachable(Unreachable::new(&source)),
            CallError::Network(source) => RPCError::Network(NetworkError::new(&source)),
            CallError::Timeout { action, ttl } => RPCError::Timeout(Timeout {
                action,
                id: self.own_id.clone(),
                target: self.target.clone(),
                timeout: ttl,
            }),
            CallError::TooLarge(source) | CallError::Shrink(source, _) => {
                RPCError::Network(NetworkError::new(&source))
            }
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
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C, RaftError<C>>> {
        let all = rpc.entries.len();
        loop {
            let sent = rpc.entries.len();
            let last_sent = rpc.entries.last().map(RaftEntry::log_id);
            let call = match self.encode(PeerRequest::AppendEntries(rpc)) {
                Ok((id, frame)) => {
                    self.send_frame(id, frame, RPCTypes::AppendEntries, option.hard_ttl())
                        .await
                }
                Err(refused) => match *refused {
                    (err @ FrameError::TooLarge(_), PeerRequest::AppendEntries(rpc))
                        if sent > 1 =>
                    {
                        Err(CallError::Shrink(err, Box::new(rpc)))
                    }
                    (err, _) => Err(CallError::encoding(err)),
                },
            };
            rpc = match call {
                Ok(PeerReply::AppendEntries(Ok(AppendEntriesResponse::Success))) if sent < all => {
                    return Ok(AppendEntriesResponse::PartialSuccess(last_sent));
                }
                Ok(PeerReply::AppendEntries(Ok(response))) => return Ok(response),
                Ok(PeerReply::AppendEntries(Err(remote))) => return Err(self.remote_error(remote)),
                Ok(other) => return Err(self.unexpected_reply(&other)),
                Err(CallError::Shrink(source, rpc)) => {
                    let mut rpc = *rpc;
                    tracing::debug!(
                        entries = sent,
                        error = %source,
                        "an AppendEntries is too large for a frame: sending half of it"
                    );
                    rpc.entries.truncate(sent / 2);
                    rpc
                }
                Err(err) => return Err(self.rpc_error(err)),
            };
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
                if !response.vote_granted {
                    if response.last_log_id > last_log_id {
                        self.election_signals.greater_log_seen();
                    } else if response.last_log_id < last_log_id
                        && RaftVote::partial_cmp(&response.vote, &vote)
                            == Some(std::cmp::Ordering::Greater)
                        && !response.vote.is_committed()
                        && response.vote.leader_id().node_id() == &self.target
                    {
                        // The peer voted itself into a higher term, and with its shorter log
                        // it needs another node's vote to win; it grants this node the next
                        // term (the timer waits a heartbeat first: see `election_timer.rs`).
                        self.election_signals.run_soon();
                    }
                }
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
    frame: bytes::Bytes,
    id: u64,
) -> Result<PeerReply<C>, CallError<C>> {
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
            self.idle.put(&self.address, connection);
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
async fn dial(address: &str, credentials: &PeerCredentials) -> Result<PeerStream, String> {
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
    Ok(connection)
}

/// A request that could not be encoded, given back with why.
type Unsent<C> = (FrameError, PeerRequest<C>);

/// How one RPC failed, before it is put in the error type of its method.
enum CallError<C: RaftTypeConfig> {
    Unreachable(AnyError),
    Network(AnyError),
    Timeout {
        action: RPCTypes,
        ttl: Duration,
    },
    TooLarge(FrameError),
    /// An AppendEntries of several entries too large for a frame, given back to be split.
    Shrink(FrameError, Box<AppendEntriesRequest<C>>),
}

impl<C: RaftTypeConfig> CallError<C> {
    fn encoding(err: FrameError) -> Self {
        match err {
            FrameError::TooLarge(_) => CallError::TooLarge(err),
            FrameError::Json(_) => CallError::Network(AnyError::new(&err)),
        }
    }
}

fn network_error<C: RaftTypeConfig>(err: impl std::error::Error + 'static) -> CallError<C> {
    CallError::Network(AnyError::new(&err))
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
