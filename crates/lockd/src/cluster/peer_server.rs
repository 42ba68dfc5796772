//! The server side of Raft RPC: [`serve_peers`] accepts peer connections and hands each request
//! to the local `openraft::Raft`.
//!
//! Each connection gets a task that checks the client's [`Hello`] (the protocol version, and the
//! shared secret in constant time when the cluster has one), then answers its requests in the
//! order they came, each [`ReplyFrame`] carrying its request's id. AppendEntries are pipelined:
//! they go into openraft's `Raft::stream_append` as they are read, so that the next one is read
//! and appended while the one before waits for this node's log sync, and a leader that keeps
//! several on the connection (`append_stream.rs`) is not held to one round trip each. A vote or
//! a snapshot chunk is answered alone, after every AppendEntries before it.
//!
//! The frames are those of a server that answered one request at a time, and so is the order of
//! the answers: a client that waits for each answer (lockd on openraft 0.9, or before this)
//! sees no difference, and a pipelining client needs no new frame or protocol version to talk
//! to an older server, which just reads its next request later.
//!
//! A frame that is too long or does not parse, an AppendEntries whose entries do not follow on
//! from each other (see `append_check.rs`), a wrong secret, or a silent client at the handshake
//! closes that connection with a log line; nothing a peer sends can stop the server. It knows
//! nothing of what the entries mean.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult, VoteResponse,
};
use openraft::type_config::alias::{CommittedLeaderIdOf, LogIdOf, SnapshotDataOf};
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{Raft, RaftTypeConfig};
use openraft_legacy::network_v1::{ChunkedSnapshotReceiver, SnapshotReceiverFactory};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::append_check::check_append_entries;
use super::election_timer::{ElectionSignals, SoonRun};
use super::leader_contact::LeaderContact;
use super::peer_admission::{PeerAdmission, PeerSlot};
use super::transport::PeerCredentials;
use super::wire::{
    self, Hello, PeerReply, PeerRequest, PeerStream, ReplyFrame, RequestFrame, Welcome,
    PROTOCOL_VERSION,
};

/// How long a new connection may take to send its [`Hello`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most AppendEntries a connection reads ahead of its answers: above a lockd leader's
/// `append_stream::MAX_APPENDS_IN_FLIGHT` (16), so that only a peer that sends more is held back,
/// and below the 64 that openraft's `Raft::stream_append` buffers, so that handing one over
/// never waits. What a peer can make this node hold is bounded by it.
const MAX_APPENDS_READ_AHEAD: usize = 32;

/// How long to pause accepting after `accept` fails (out of file descriptors, typically), so
/// that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves Raft RPCs from peers on `listener` until `shutdown` is cancelled, then closes every
/// peer connection and returns once their tasks have ended.
///
/// A peer must meet `credentials`: with TLS, present a certificate signed by the peer CA; with a
/// secret, present the same one in its first frame; or be disconnected. `admission` decides
/// which connections get a slot (see `peer_admission.rs`).
pub async fn serve_peers<C, SM>(
    listener: TcpListener,
    raft: Raft<C, SM>,
    credentials: PeerCredentials,
    admission: PeerAdmission,
    leader_contact: LeaderContact,
    election_signals: Arc<ElectionSignals>,
    shutdown: CancellationToken,
) where
    C: RaftTypeConfig<Term = u64>,
    CommittedLeaderIdOf<C>: RaftLeaderId<Term = u64>,
    SM: SnapshotReceiverFactory<C, SnapshotReceiver = SnapshotDataOf<C, SM>>,
    SnapshotDataOf<C, SM>: tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
{
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "cannot accept a peer connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                warn!(%peer, reason = %refused, "refusing a peer connection");
                continue;
            }
        };
        let connection = PeerConnection {
            raft: raft.clone(),
            credentials: credentials.clone(),
            leader_contact: leader_contact.clone(),
            election_signals: Arc::clone(&election_signals),
            peer,
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection.serve(stream, slot) => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// One accepted peer connection.
struct PeerConnection<C: RaftTypeConfig, SM: SnapshotReceiverFactory<C>> {
    raft: Raft<C, SM>,
    credentials: PeerCredentials,
    /// Told of every AppendEntries this node accepts as its leader's.
    leader_contact: LeaderContact,
    /// Told when this node refuses a candidate whose log is shorter than its own.
    election_signals: Arc<ElectionSignals>,
    peer: SocketAddr,
}

impl<C, SM> PeerConnection<C, SM>
where
    C: RaftTypeConfig<Term = u64>,
    CommittedLeaderIdOf<C>: RaftLeaderId<Term = u64>,
    SM: SnapshotReceiverFactory<C, SnapshotReceiver = SnapshotDataOf<C, SM>>,
    SnapshotDataOf<C, SM>: tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
{
    /// Serves the connection while it holds `slot`, which it tells when the handshake is done.
    async fn serve(self, stream: TcpStream, mut slot: PeerSlot) {
        if let Err(err) = stream.set_nodelay(true) {
            debug!(peer = %self.peer, error = %err, "cannot set TCP_NODELAY on a peer connection");
        }
        let handshake = async {
            let transport = self
                .credentials
                .accept(stream)
                .await
                .map_err(HandshakeError::Tls)?;
            let mut connection = wire::frame_stream(transport);
            // Until the peer has shown the secret, it may send a hello and nothing bigger: the
            // codec reserves room for a frame as soon as its length arrives, so a stranger
            // announcing 64 MiB frames would otherwise make this node hold 64 MiB per connection.
            connection
                .codec_mut()
                .set_max_frame_length(wire::MAX_HELLO_BYTES);
            self.handshake(&mut connection).await?;
            Ok::<_, HandshakeError>(connection)
        };
        let mut connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(mut connection)) => {
                slot.handshake_done();
                connection
                    .codec_mut()
                    .set_max_frame_length(wire::MAX_FRAME_BYTES);
                connection
            }
            Ok(Err(why)) => {
                // As Debug: the reason may quote what the peer sent, and must not forge log lines.
                let why = why.to_string();
                warn!(peer = %self.peer, reason = ?why, "closing a peer connection at the handshake");
                return;
            }
            Err(_) => {
                warn!(peer = %self.peer, "closing a peer connection that sent no hello in {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        debug!(peer = %self.peer, "peer connected");
        let closed = self.answer(&mut connection).await;
        match closed {
            Closed::ByPeer => debug!(peer = %self.peer, "peer disconnected"),
            Closed::Quietly(why) => debug!(peer = %self.peer, "closing a peer connection: {why}"),
            // As Debug: the reason may quote what the peer sent, and must not forge log lines.
            Closed::Badly(why) => {
                warn!(peer = %self.peer, reason = ?why, "closing a peer connection")
            }
        }
    }

    /// Reads requests and writes their answers, in the order read, until the connection ends
    /// or must be closed.
    ///
    /// AppendEntries go to openraft's `Raft::stream_append` as soon as they are read, at most
    /// [`MAX_APPENDS_READ_AHEAD`] unanswered at a time (past that this stops reading, and TCP
    /// holds the sender back), so that a follower takes a leader's next AppendEntries while
    /// the one before waits for its log's sync. Any other request waits until every
    /// AppendEntries before it is answered, and is then answered alone.
    async fn answer(&self, connection: &mut PeerStream) -> Closed {
        let mut appends: Option<AppendPipeline<C>> = None;
        loop {
            let unanswered = appends.as_ref().map_or(0, |appends| appends.ids.len());
            tokio::select! {
                // Answers first: each frees a place for the next request.
                biased;
                result = next_result(&mut appends), if unanswered > 0 => {
                    if let Err(closed) = self.answer_append(connection, &mut appends, result).await {
                        return closed;
                    }
                }
                read = connection.next(), if unanswered < MAX_APPENDS_READ_AHEAD => {
                    if let Err(closed) = self.take_request(connection, &mut appends, read).await {
                        return closed;
                    }
                }
            }
        }
    }

    /// Takes one frame the peer sent: hands an AppendEntries to the pipeline, or answers any
    /// other request once every AppendEntries before it is answered.
    async fn take_request(
        &self,
        connection: &mut PeerStream,
        appends: &mut Option<AppendPipeline<C>>,
        read: Option<std::io::Result<bytes::BytesMut>>,
    ) -> Result<(), Closed> {
        let bytes = match read {
            Some(Ok(bytes)) => bytes,
            None => return Err(Closed::ByPeer),
            // A TLS peer that just drops the connection (openraft cancels an RPC by dropping
            // its connection) sends no close_notify: an ordinary end, not a bad frame.
            Some(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Closed::ByPeer);
            }
            Some(Err(err)) => return Err(Closed::Badly(format!("bad frame: {err}"))),
        };
        let frame: RequestFrame<C> =
            wire::decode(&bytes).map_err(|err| Closed::Badly(format!("bad request: {err}")))?;
        let rpc = match frame.request {
            PeerRequest::AppendEntries(rpc) => rpc,
            other => {
                // Answers go in the order of the requests.
                while appends
                    .as_ref()
                    .is_some_and(|appends| !appends.ids.is_empty())
                {
                    let result = next_result(appends).await;
                    self.answer_append(connection, appends, result).await?;
                }
                let reply = ReplyFrame {
                    id: frame.id,
                    reply: self.dispatch(other).await,
                };
                return send_reply(connection, &reply).await;
            }
        };
        if let Err(why) = check_append_entries(&rpc) {
            return Err(Closed::Badly(format!(
                "its AppendEntries does not follow on from its prev_log_id: {why}"
            )));
        }
        // From the leader this node follows (or a newer one): it is alive, whatever this node's
        // disk does now. The answer waits for this node's log sync, which can hang for seconds;
        // counting the leader heard only then would let this node's election timer run out
        // under a live leader, and its election would unseat that leader as soon as the disk
        // came back.
        let metrics = self.raft.metrics();
        let from_leader = rpc.vote.is_committed()
            && matches!(
                RaftVote::partial_cmp(&rpc.vote, &metrics.borrow_watched().vote),
                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
            );
        if from_leader {
            self.leader_contact.heard(std::time::Instant::now());
        }
        let pipeline = appends.get_or_insert_with(|| AppendPipeline::start(&self.raft));
        // Never full: the channel holds MAX_APPENDS_READ_AHEAD, and no more are unanswered.
        if pipeline.requests.try_send(rpc).is_err() {
            return Err(Closed::Quietly(
                "the Raft node takes no more AppendEntries".into(),
            ));
        }
        pipeline.ids.push_back(frame.id);
        Ok(())
    }

    /// Writes the answer `result` to the oldest unanswered AppendEntries.
    ///
    /// openraft's stream ends after an answer that refuses (a conflict, a higher vote, or a
    /// fatal error): the pipeline is dropped, and the next AppendEntries starts another. The
    /// AppendEntries read behind a refused one have lost their answers, so then the connection
    /// is closed; the pipelining leader drops it anyway, having stopped at the refusal. A
    /// client that sends one at a time never has one behind.
    async fn answer_append(
        &self,
        connection: &mut PeerStream,
        appends: &mut Option<AppendPipeline<C>>,
        result: Option<Result<StreamAppendResult<C>, Fatal<C>>>,
    ) -> Result<(), Closed> {
        let Some(pipeline) = appends.as_mut() else {
            return Ok(());
        };
        let (Some(id), Some(result)) = (pipeline.ids.pop_front(), result) else {
            return Err(Closed::Quietly(
                "the Raft node stopped answering AppendEntries".into(),
            ));
        };
        let refused = !matches!(result, Ok(Ok(_)));
        let reply = match result {
            Ok(result) => Ok(AppendEntriesResponse::from(result)),
            Err(fatal) => Err(RaftError::Fatal(fatal)),
        };
        // Any answer but a higher vote means the sender is the leader this node follows.
        if matches!(&reply, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
        {
            self.leader_contact.heard(std::time::Instant::now());
        }
        let reply = ReplyFrame {
            id,
            reply: PeerReply::AppendEntries(reply),
        };
        send_reply(connection, &reply).await?;
        if refused {
            let behind = pipeline.ids.len();
            *appends = None;
            if behind > 0 {
                return Err(Closed::Quietly(format!(
                    "{behind} AppendEntries were read behind one that was refused"
                )));
            }
        }
        Ok(())
    }

    /// Reads the client's [`Hello`] and answers [`Welcome`], or says why the peer is refused.
    async fn handshake(&self, connection: &mut PeerStream) -> Result<(), HandshakeError> {
        let bytes = match connection.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) => return Err(HandshakeError::BadFrame(err)),
            None => return Err(HandshakeError::Closed),
        };
        let hello: Hello = wire::decode(&bytes).map_err(HandshakeError::BadHello)?;
        if hello.version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version(hello.version));
        }
        if let Some(secret) = &self.credentials.secret {
            let given = hello.secret.as_deref().unwrap_or_default().as_bytes();
            if !crate::secret::matches(given, secret.as_bytes()) {
                return Err(HandshakeError::Secret);
            }
        }
        let welcome = wire::encode(&Welcome {
            version: PROTOCOL_VERSION,
            pre_vote: true,
        })
        .map_err(HandshakeError::BadHello)?;
        connection
            .send(welcome)
            .await
            .map_err(HandshakeError::BadFrame)?;
        debug!(peer = %self.peer, "peer authenticated");
        Ok(())
    }

    /// This node refused a vote or a pre-vote: if the candidate cannot win with its shorter
    /// log, its timer ran out, and this node may run soon, `how` says (see `election_timer.rs`).
    fn refused(&self, response: &VoteResponse<C>, candidate_log: Option<LogIdOf<C>>, how: SoonRun) {
        if response.last_log_id > candidate_log {
            self.election_signals.run_soon(how);
        }
    }

    /// Answers a request other than an AppendEntries.
    async fn dispatch(&self, request: PeerRequest<C>) -> PeerReply<C> {
        match request {
            // Not sent here: `take_request` hands every AppendEntries to the pipeline.
            PeerRequest::AppendEntries(rpc) => {
                PeerReply::AppendEntries(self.raft.append_entries(rpc).await)
            }
            PeerRequest::Vote(rpc) => {
                let candidate_log = rpc.last_log_id.clone();
                let reply = self.raft.vote(rpc).await;
                match &reply {
                    // A vote granted restarts this node's election timer, as hearing from a
                    // leader does: the candidate may be about to lead (see `election_timer.rs`).
                    Ok(response) if response.vote_granted => {
                        self.leader_contact.heard(std::time::Instant::now());
                    }
                    Ok(response) => {
                        self.refused(response, candidate_log, SoonRun::ElectionAtOnce);
                    }
                    Err(_) => {}
                }
                PeerReply::Vote(reply)
            }
            PeerRequest::PreVote(rpc) => {
                // A pre-vote changes nothing here, granted or not: the candidate's election, if
                // it follows, is what this node hears from next.
                let candidate_log = rpc.last_log_id.clone();
                let reply = self.raft.pre_vote(rpc).await;
                if let Ok(response) = &reply {
                    if !response.vote_granted {
                        self.refused(response, candidate_log, SoonRun::PreVoteFirst);
                    }
                }
                PeerReply::PreVote(reply)
            }
            PeerRequest::InstallSnapshot(rpc) => {
                // Chunks, as openraft 0.9 sent them: `openraft-legacy` writes them into the
                // state machine's file and installs the snapshot with the last one.
                PeerReply::InstallSnapshot(
                    ChunkedSnapshotReceiver::install_snapshot(&self.raft, rpc).await,
                )
            }
        }
    }
}

/// The AppendEntries of one connection on their way through `Raft::stream_append`.
struct AppendPipeline<C: RaftTypeConfig> {
    /// Feeds openraft's stream, in the order read; holds [`MAX_APPENDS_READ_AHEAD`].
    requests: mpsc::Sender<AppendEntriesRequest<C>>,
    /// openraft's answers, in the order of `requests`.
    results: BoxStream<'static, Result<StreamAppendResult<C>, Fatal<C>>>,
    /// The ids of the AppendEntries handed over and not answered yet, oldest first.
    ids: VecDeque<u64>,
}

impl<C: RaftTypeConfig> AppendPipeline<C> {
    fn start<SM>(raft: &Raft<C, SM>) -> Self
    where
        SM: openraft::storage::RaftStateMachine<C>,
    {
        let (requests, received) = mpsc::channel(MAX_APPENDS_READ_AHEAD);
        let input = futures_util::stream::unfold(received, |mut received| async move {
            let rpc = received.recv().await?;
            Some((rpc, received))
        });
        AppendPipeline {
            requests,
            results: raft.stream_append(input).boxed(),
            ids: VecDeque::new(),
        }
    }
}

/// The next answer of the pipeline, if there is one; `None` if openraft's stream ended.
async fn next_result<C: RaftTypeConfig>(
    appends: &mut Option<AppendPipeline<C>>,
) -> Option<Result<StreamAppendResult<C>, Fatal<C>>> {
    match appends {
        Some(pipeline) => pipeline.results.next().await,
        None => None,
    }
}

async fn send_reply<C: RaftTypeConfig>(
    connection: &mut PeerStream,
    reply: &ReplyFrame<C>,
) -> Result<(), Closed> {
    let sent = match wire::encode(reply) {
        Ok(bytes) => connection.send(bytes).await.map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    sent.map_err(|why| Closed::Badly(format!("cannot reply: {why}")))
}

/// Why a connection's requests stopped being answered.
enum Closed {
    /// The peer closed it.
    ByPeer,
    /// This node closes it, in the ordinary course of things.
    Quietly(String),
    /// This node closes it because the peer, or the connection, misbehaved.
    Badly(String),
}

/// Why a peer was refused at the handshake.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("bad frame: {0}")]
    BadFrame(#[source] std::io::Error),
    #[error("closed before its hello")]
    Closed,
    #[error("bad hello: {0}")]
    BadHello(#[source] wire::FrameError),
    #[error("it speaks version {0}, this node {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("wrong or missing cluster secret")]
    Secret,
}
