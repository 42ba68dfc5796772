//! The frames that Raft peers exchange, shared by [`network`](super::network) (the client) and
//! [`peer_server`](super::peer_server).
//!
//! A peer connection is a TCP stream (or TLS over it, see `transport.rs`) of length-delimited
//! frames (tokio-util's
//! `LengthDelimitedCodec`: a 4-byte big-endian length, then that many bytes), each a JSON
//! document. The client speaks first with a [`Hello`]; the server answers [`Welcome`] or closes.
//! After that, the client sends [`RequestFrame`]s, each with an `id` of its own, and the server
//! answers each with a [`ReplyFrame`] of the same `id`, in the order of the requests. A client
//! may send the next request before the answer to the one before (lockd's leader does with
//! AppendEntries, see `append_stream.rs`); a server that reads one request at a time serves it
//! all the same, so this changed no frame and no [`PROTOCOL_VERSION`]. This module only defines
//! the frames; it owns no socket.

use bytes::Bytes;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::RaftTypeConfig;
use openraft_legacy::network_v1::{
    InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::transport::PeerTransport;

/// The largest frame either side sends or accepts, in bytes.
///
/// JSON writes a snapshot chunk's bytes as an array of numbers, up to four characters per byte,
/// so this fits a chunk of openraft's default `snapshot_max_chunk_size` (3 MiB) with room to
/// spare. Keep `snapshot_max_chunk_size` under a quarter of it. A longer frame closes the
/// connection on the receiving side; the sending side refuses to send it.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The longest frame a peer may send before its hello is accepted: a hello is a version and a
/// secret (so a peer secret must stay well under this).
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// The version of these frames; a peer that speaks another is refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// The client's first frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// The cluster's shared secret, when the client has one.
    pub secret: Option<String>,
}

/// The server's answer to an accepted [`Hello`]. A refused one gets no answer: the server
/// closes the connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    /// The server answers [`PeerRequest::PreVote`]. A lockd from before pre-votes sends no
    /// such field (so it reads as `false`), ignores it in a welcome it reads, and closes the
    /// connection on a request it does not know: its peers must not send it one.
    #[serde(default)]
    pub pre_vote: bool,
}

/// One Raft RPC, numbered by the client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RequestFrame<C: RaftTypeConfig> {
    pub id: u64,
    pub request: PeerRequest<C>,
}

/// The answer to the [`RequestFrame`] with the same `id`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ReplyFrame<C: RaftTypeConfig> {
    pub id: u64,
    pub reply: PeerReply<C>,
}

/// The Raft RPCs. Their JSON is openraft 0.9's (`compat_tests.rs`), so that nodes of lockd on
/// openraft 0.9 and on 0.10 talk during a rolling upgrade: snapshots still travel in 0.9's
/// chunks (`openraft-legacy`'s `InstallSnapshotRequest`, the same JSON), and a vote request's
/// `leadership_transfer`, new in 0.10, is ignored by a 0.9 node (lockd never transfers
/// leadership). `PreVote` is newer than both: it goes only to a peer whose [`Welcome`] says it
/// answers one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PeerRequest<C: RaftTypeConfig> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    InstallSnapshot(InstallSnapshotRequest<C>),
    /// Would the peer grant this vote? Asked before an election, changing nothing on either
    /// side (`election_timer.rs`).
    PreVote(VoteRequest<C>),
}

/// What the remote `Raft` answered, error included: a remote error travels back as data.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PeerReply<C: RaftTypeConfig> {
    AppendEntries(Result<AppendEntriesResponse<C>, RaftError<C>>),
    Vote(Result<VoteResponse<C>, RaftError<C>>),
    InstallSnapshot(Result<InstallSnapshotResponse<C>, RaftError<C, InstallSnapshotError>>),
    PreVote(Result<VoteResponse<C>, RaftError<C>>),
}

/// A peer connection (plain TCP or TLS) cut into frames of at most [`MAX_FRAME_BYTES`].
pub type PeerStream = Framed<PeerTransport, LengthDelimitedCodec>;

/// Wraps a connected stream (a `TcpStream`, or a [`PeerTransport`] past its TLS handshake) in
/// the peer framing.
pub fn frame_stream(stream: impl Into<PeerTransport>) -> PeerStream {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    Framed::new(stream.into(), codec)
}

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the frame would be {0} bytes, over the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("the frame does not encode or decode: {0}")]
    Json(#[from] serde_json::Error),
}

/// Serializes one frame, refusing one the peer would not accept.
pub fn encode<T: Serialize>(frame: &T) -> Result<Bytes, FrameError> {
    let bytes = serde_json::to_vec(frame)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

/// Parses one frame.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(bytes)?)
}
