//! The leader's side of pipelined replication: [`stream_append`], which sends the AppendEntries
//! that openraft's replication (or heartbeat) task produces, each as soon as it comes, on the
//! client's one peer connection, and yields the follower's answers in order.
//!
//! On the wire nothing is new: each AppendEntries is the usual [`RequestFrame`] with its own id,
//! each answer the usual [`ReplyFrame`]. Only the pattern changes: up to
//! [`MAX_APPENDS_IN_FLIGHT`] requests are outstanding on the connection at once, where the
//! sequential stream (openraft's `stream_append_sequential`) sent the next one only after the
//! reply to the one before, so the leader waited a whole round trip, the follower's sync
//! included, between two batches. A peer server answers the requests of a connection in the
//! order it reads them (lockd's, pipelined or not, and lockd on openraft 0.9, which answers
//! one at a time), so no version or frame has to be negotiated: an older server reads the
//! next request once it has answered the one before, which only takes back the gain.
//!
//! What it guarantees openraft's replication loop (`src/replication/mod.rs` in openraft):
//! - the answers come in the order of the requests, each checked against the id of the request
//!   it answers; an answer to another request, or out of order, ends the stream with a network
//!   error, and the connection is closed;
//! - each answer is turned into a [`StreamAppendResult`] as the sequential stream does
//!   (`into_stream_result`), and the stream ends after the first answer that is not a whole
//!   success: a conflict or a higher vote (openraft then re-probes or steps down), or a partial
//!   success short of the request's last entry (a request cut to fit a frame, see
//!   `PeerClient::encode_append`; nothing is sent after such a request);
//! - each request must be answered within the RPC's `hard_ttl`, counted from when it was taken
//!   from the input, connecting included for the first: openraft gives its replication and
//!   heartbeat streams its heartbeat interval, as it gave each sequential request, and a late
//!   answer ends the stream with a `Timeout`;
//! - a connection that breaks ends the stream with a `NetworkError` (or `Unreachable` when it
//!   cannot be opened), so that openraft starts a new stream, from what the follower is known
//!   to have; the next stream opens a new connection.
//!
//! A stream that ends with requests unanswered, by an error, a refusal or openraft dropping it,
//! drops its connection, whose late answers no later stream may read. One that ends with every
//! request answered leaves it to the client for the next RPC.

use std::collections::VecDeque;
use std::future::pending;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use openraft::base::BoxStream;
use openraft::entry::RaftEntry;
use openraft::error::{RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};
use openraft::type_config::alias::LogIdOf;
use openraft::{AnyError, OptionalSend, RaftTypeConfig};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::{network_error, CallError, Cut, PeerAddress, PeerClient};
use crate::cluster::wire::{self, PeerReply, PeerStream, ReplyFrame};

/// The most AppendEntries one stream keeps unanswered on its connection.
///
/// In steady state a lockd leader has little to pipeline: its front end keeps at most two
/// entries in flight (group commit), so a follower sees an entry or two and the commit index
/// that follows them. The bound matters when a follower catches up (openraft sends it up to
/// `max_payload_entries`, 300, entries per request, as fast as the stream takes them): 16
/// requests let its log writer put several of them in one sync, while bounding what the
/// leader holds per follower (each unanswered request's encoded frame, kept to resend it once on
/// a fresh connection) and what is lost and sent again when the connection fails. The peer
/// server reads ahead further (`peer_server.rs`), so this bound, not the server's, limits a
/// lockd leader.
pub(crate) const MAX_APPENDS_IN_FLIGHT: usize = 16;

/// The most bytes of unanswered frames a stream keeps on its connection: past this, it sends
/// nothing more until an answer comes (a single request larger than this still goes, alone).
/// Caps what a catch-up of large entries holds at twice the largest frame.
const MAX_BYTES_IN_FLIGHT: usize = wire::MAX_FRAME_BYTES;

/// What one answer (or failure) becomes in the stream openraft reads.
type StreamItem<C> = Result<StreamAppendResult<C>, RPCError<C>>;

/// Sends `input`'s AppendEntries to `client`'s peer, pipelined, and yields their answers in
/// order (see the module docs). Connects on the first request, unless the client holds a
/// connection.
pub(super) fn stream_append<'s, C, S>(
    client: &'s mut PeerClient<C>,
    input: S,
    option: RPCOption,
) -> BoxStream<'s, StreamItem<C>>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
    S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
{
    let pipeline = Pipeline {
        client,
        input: Some(input),
        connection: None,
        from_pool: false,
        in_flight: VecDeque::new(),
        bytes_in_flight: 0,
        ttl: option.hard_ttl(),
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(
        pipeline,
        |mut pipeline| async move {
            let item = pipeline.next().await?;
            Some((item, pipeline))
        },
    ))
}

/// One stream's state.
struct Pipeline<'s, C: RaftTypeConfig, S> {
    client: &'s mut PeerClient<C>,
    /// `None` once it has ended, or once nothing more may be sent (after a request cut to fit
    /// a frame, or a refusal).
    input: Option<S>,
    /// Taken from the client (or its pool, or dialled) for the first request; handed back to
    /// the client only when the stream ends with every request answered.
    connection: Option<PeerStream>,
    /// Whether `connection` came from the idle pool and has not answered yet: it may have died
    /// while idle, and a transport failure on it sends everything again on a fresh connection.
    from_pool: bool,
    /// Sent and unanswered, oldest first: the order the answers must come in.
    in_flight: VecDeque<InFlight<C>>,
    /// The sum of `in_flight`'s frame lengths.
    bytes_in_flight: usize,
    /// How long each request may wait for its answer.
    ttl: Duration,
    /// Set after the last item: the stream yields nothing more.
    ended: bool,
}

/// A request on the connection, waiting for its answer.
struct InFlight<C: RaftTypeConfig> {
    id: u64,
    /// Kept to send it again on a fresh connection (see `Pipeline::from_pool`).
    frame: Bytes,
    /// The request's range of the log, `(prev, last]`, as openraft reads the answer.
    prev: Option<LogIdOf<C>>,
    last: Option<LogIdOf<C>>,
    cut: Cut<C>,
    deadline: Instant,
}

/// What the pipeline waits for next.
enum Event<C: RaftTypeConfig> {
    Answer(Option<std::io::Result<bytes::BytesMut>>),
    Late,
    Request(Option<AppendEntriesRequest<C>>),
}

impl<C, S> Pipeline<'_, C, S>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
    S: Stream<Item = AppendEntriesRequest<C>> + Unpin,
{
    /// The stream's next item, or `None` once it has ended.
    async fn next(&mut self) -> Option<StreamItem<C>> {
        if self.ended {
            return None;
        }
        loop {
            if self.in_flight.is_empty() && self.input.is_none() {
                self.end();
                return None;
            }
            let may_send = self.in_flight.len() < MAX_APPENDS_IN_FLIGHT
                && self.bytes_in_flight < MAX_BYTES_IN_FLIGHT;
            let due = self.in_flight.front().map(|oldest| oldest.deadline);
            let Pipeline {
                connection, input, ..
            } = self;
            let answer = async {
                match (connection, due) {
                    (Some(connection), Some(_)) => connection.next().await,
                    _ => pending().await,
                }
            };
            let late = async {
                match due {
                    Some(due) => sleep_until(due).await,
                    None => pending().await,
                }
            };
            let request = async {
                match input {
                    Some(input) if may_send => input.next().await,
                    _ => pending().await,
                }
            };
            // Answers first: each frees a place for the next request.
            let event = tokio::select! {
                biased;
                read = answer => Event::Answer(read),
                () = late => Event::Late,
                request = request => Event::Request(request),
            };
            match event {
                Event::Answer(read) => {
                    if let Some(item) = self.on_answer(read).await {
                        return Some(item);
                    }
                }
                Event::Late => {
                    return Some(self.fail(CallError::Timeout {
                        action: RPCTypes::AppendEntries,
                        ttl: self.ttl,
                    }));
                }
                Event::Request(None) => self.input = None,
                Event::Request(Some(rpc)) => {
                    if let Err(err) = self.send(rpc).await {
                        return Some(self.fail(err));
                    }
                }
            }
        }
    }

    /// Encodes `rpc` and sends it, connecting first if need be.
    async fn send(&mut self, rpc: AppendEntriesRequest<C>) -> Result<(), CallError> {
        let deadline = Instant::now() + self.ttl;
        let prev = rpc.prev_log_id.clone();
        let last = rpc
            .entries
            .last()
            .map(RaftEntry::log_id)
            .or_else(|| prev.clone());
        let append = self.client.encode_append(rpc)?;
        if append.cut.0.is_some() {
            // The follower must answer the part sent before the rest can follow.
            self.input = None;
        }
        if self.connection.is_none() {
            let (connection, from_pool) = match self.client.connection.take() {
                Some(connection) => (connection, false),
                None => match self.client.peers.take_idle(&self.client.address) {
                    Some(connection) => (connection, true),
                    None => (self.client.connect_before(deadline, self.ttl).await?, false),
                },
            };
            self.connection = Some(connection);
            self.from_pool = from_pool;
        }
        self.bytes_in_flight += append.frame.len();
        self.in_flight.push_back(InFlight {
            id: append.id,
            frame: append.frame.clone(),
            prev,
            last,
            cut: append.cut,
            deadline,
        });
        match self.write(append.frame).await {
            Err(err) if self.from_pool && !matches!(err, CallError::Timeout { .. }) => {
                self.send_again().await
            }
            written => written,
        }
    }

    /// Writes one frame, by the oldest unanswered request's deadline.
    async fn write(&mut self, frame: Bytes) -> Result<(), CallError> {
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| CallError::Network(AnyError::error("no connection to write to")))?;
        let due = self
            .in_flight
            .front()
            .map_or_else(|| Instant::now() + self.ttl, |oldest| oldest.deadline);
        match timeout_at(due, connection.send(frame)).await {
            Ok(written) => written.map_err(network_error),
            Err(_) => Err(CallError::Timeout {
                action: RPCTypes::AppendEntries,
                ttl: self.ttl,
            }),
        }
    }

    /// After a pooled connection failed before its first answer: sends every unanswered
    /// request again, in order, on a fresh connection.
    async fn send_again(&mut self) -> Result<(), CallError> {
        self.from_pool = false;
        self.connection = None;
        let due = match self.in_flight.front() {
            Some(oldest) => oldest.deadline,
            None => return Ok(()),
        };
        self.connection = Some(self.client.connect_before(due, self.ttl).await?);
        let frames: Vec<Bytes> = self
            .in_flight
            .iter()
            .map(|sent| sent.frame.clone())
            .collect();
        for frame in frames {
            self.write(frame).await?;
        }
        Ok(())
    }

    /// Takes what the connection gave while requests were unanswered: the oldest one's answer,
    /// or a failure. Returns the item to yield, or `None` to go on (a pooled connection that
    /// died was replaced).
    async fn on_answer(
        &mut self,
        read: Option<std::io::Result<bytes::BytesMut>>,
    ) -> Option<StreamItem<C>> {
        let bytes = match read {
            Some(Ok(bytes)) => bytes,
            broken => {
                let err = match broken {
                    Some(Err(err)) => network_error(err),
                    _ => CallError::Network(AnyError::error("the peer closed the connection")),
                };
                if self.from_pool {
                    return match self.send_again().await {
                        Ok(()) => None,
                        Err(err) => Some(self.fail(err)),
                    };
                }
                return Some(self.fail(err));
            }
        };
        let reply: ReplyFrame<C> = match wire::decode(&bytes) {
            Ok(reply) => reply,
            Err(err) => return Some(self.fail(network_error(err))),
        };
        self.from_pool = false;
        let Some(sent) = self.in_flight.pop_front() else {
            return Some(self.fail(CallError::Network(AnyError::error(format!(
                "the peer answered request {} when no request was waiting",
                reply.id
            )))));
        };
        self.bytes_in_flight -= sent.frame.len();
        if reply.id != sent.id {
            return Some(self.fail(CallError::Network(AnyError::error(format!(
                "the peer answered request {} where the answer to request {} was due",
                reply.id, sent.id
            )))));
        }
        let response = match reply.reply {
            PeerReply::AppendEntries(Ok(response)) => sent.cut.apply(response),
            // As the adapter reports it for a single AppendEntries: the peer has stopped.
            PeerReply::AppendEntries(Err(RaftError::Fatal(fatal))) => {
                let err = RPCError::Unreachable(Unreachable::new(&fatal));
                return Some(self.fail_with(err));
            }
            PeerReply::AppendEntries(Err(RaftError::APIError(never))) => match never {},
            other => {
                let err = self.client.unexpected_reply(&other);
                return Some(self.fail_with(err));
            }
        };
        if matches!(response, AppendEntriesResponse::Conflict) && sent.prev.is_none() {
            // openraft would unwrap the missing `prev_log_id`: nothing precedes the first entry.
            return Some(self.fail(CallError::Network(AnyError::error(
                "the peer answered a conflict to an AppendEntries from the start of the log",
            ))));
        }
        let short = match &response {
            AppendEntriesResponse::PartialSuccess(matched) => *matched != sent.last,
            _ => false,
        };
        let result = response.into_stream_result(sent.prev, sent.last);
        if result.is_err() || short {
            self.input = None;
            self.end();
        }
        Some(Ok(result))
    }

    /// Ends the stream on `err`, dropping the connection.
    fn fail(&mut self, err: CallError) -> StreamItem<C> {
        let err = self.client.rpc_error(err);
        self.fail_with(err)
    }

    fn fail_with(&mut self, err: RPCError<C>) -> StreamItem<C> {
        self.connection = None;
        self.input = None;
        self.in_flight.clear();
        self.bytes_in_flight = 0;
        self.ended = true;
        Err(err)
    }

    /// Ends the stream: the connection goes back to the client if every request on it was
    /// answered, and is dropped otherwise.
    fn end(&mut self) {
        self.ended = true;
        self.input = None;
        let connection = self.connection.take();
        if self.in_flight.is_empty() {
            if let Some(connection) = connection {
                self.client.connection = Some(connection);
            }
        }
    }
}
