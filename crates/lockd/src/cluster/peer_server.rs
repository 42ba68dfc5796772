//! The server side of Raft RPC: [`serve_peers`] accepts peer connections and hands each request
//! to the local `openraft::Raft`.
//!
//! Each connection gets a task that checks the client's [`Hello`] (the protocol version, and the
//! shared secret in constant time when the cluster has one), then answers requests one at a
//! time, in order, as the client sends them (see `network.rs`). A frame that is too long or
//! does not parse, an AppendEntries whose entries do not follow on from each other (see
//! `append_check.rs`), a wrong secret, or a silent client at the handshake closes that
//! connection with a log line; nothing a peer sends can stop the server. It knows nothing of what the
//! entries mean.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::AppendEntriesResponse;
use openraft::type_config::alias::{CommittedLeaderIdOf, SnapshotDataOf};
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{Raft, RaftTypeConfig};
use openraft_legacy::network_v1::{ChunkedSnapshotReceiver, SnapshotReceiverFactory};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::append_check::check_append_entries;
use super::election_timer::ElectionSignals;
use super::leader_contact::LeaderContact;
use super::peer_admission::{PeerAdmission, PeerSlot};
use super::transport::PeerCredentials;
use super::wire::{
    self, Hello, PeerReply, PeerRequest, PeerStream, ReplyFrame, RequestFrame, Welcome,
    PROTOCOL_VERSION,
};

/// How long a new connection may take to send its [`Hello`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
        while let Some(read) = connection.next().await {
            let bytes = match read {
                Ok(bytes) => bytes,
                // A TLS peer that just drops the connection (openraft cancels an RPC by dropping
                // its connection) sends no close_notify: an ordinary end, not a bad frame.
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    debug!(peer = %self.peer, "peer disconnected without closing TLS");
                    return;
                }
                Err(err) => {
                    warn!(peer = %self.peer, error = ?err.to_string(), "closing a peer connection: bad frame");
                    return;
                }
            };
            let frame: RequestFrame<C> = match wire::decode(&bytes) {
                Ok(frame) => frame,
                Err(err) => {
                    warn!(peer = %self.peer, error = ?err.to_string(), "closing a peer connection: bad request");
                    return;
                }
            };
            if let PeerRequest::AppendEntries(rpc) = &frame.request {
                if let Err(why) = check_append_entries(rpc) {
                    warn!(peer = %self.peer, reason = %why, "closing a peer connection: its AppendEntries does not follow on from its prev_log_id");
                    return;
                }
            }
            let reply = ReplyFrame {
                id: frame.id,
                reply: self.dispatch(frame.request).await,
            };
            let sent = match wire::encode(&reply) {
                Ok(bytes) => connection.send(bytes).await.map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            if let Err(why) = sent {
                warn!(peer = %self.peer, "closing a peer connection: cannot reply: {why}");
                return;
            }
        }
        debug!(peer = %self.peer, "peer disconnected");
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
        })
        .map_err(HandshakeError::BadHello)?;
        connection
            .send(welcome)
            .await
            .map_err(HandshakeError::BadFrame)?;
        debug!(peer = %self.peer, "peer authenticated");
        Ok(())
    }

    async fn dispatch(&self, request: PeerRequest<C>) -> PeerReply<C> {
        match request {
            PeerRequest::AppendEntries(rpc) => {
                // From the leader this node follows (or a newer one): it is alive, whatever
                // this node's disk does now. The answer waits for this node's log sync, which
                // can hang for seconds; counting the leader heard only then would let this
                // node's election timer run out under a live leader, and its election would
                // unseat that leader as soon as the disk came back.
                let metrics = self.raft.metrics();
                let from_leader = rpc.vote.is_committed()
                    && matches!(
                        RaftVote::partial_cmp(&rpc.vote, &metrics.borrow_watched().vote),
                        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                    );
                if from_leader {
                    self.leader_contact.heard(std::time::Instant::now());
                }
                let reply = self.raft.append_entries(rpc).await;
                // Any answer but a higher vote means the sender is the leader this node follows.
                if matches!(&reply, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
                {
                    self.leader_contact.heard(std::time::Instant::now());
                }
                PeerReply::AppendEntries(reply)
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
                    // The candidate cannot win with its shorter log, and its timer ran out:
                    // this node may run at once (see `election_timer.rs`).
                    Ok(response) if response.last_log_id > candidate_log => {
                        self.election_signals.run_soon();
                    }
                    _ => {}
                }
                PeerReply::Vote(reply)
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
