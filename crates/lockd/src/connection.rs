//! One client connection, served by one task: it reads lines, turns them into requests for the
//! backend (the single server's driver or a cluster node's front end, behind `seam.rs`; this
//! file knows neither), and writes the backend's replies back in batches.
//!
//! One task rather than a reader and a writer: a request then costs one wake-up on the way in
//! (the socket became readable) and one on the way out (the backend filled the outbox), the
//! socket needs no split (and no lock between its halves), and an idle connection is a single
//! small task.
//!
//! Backpressure: the task counts the requests it passed to the backend whose final reply it has
//! not written yet, and stops reading the socket while `max_in_flight` of them are pending. The
//! replies waiting in its outbox therefore never exceed two frames (a `queued` event and a
//! reply) per request in flight. Watch events are not requests: they wait in the outbox's
//! watch backlog, at most `--max-watch-backlog` per watch (`seam::Outbox`). It reads nothing
//! while a write is under way, and one write takes at most `max_unsent_bytes` of replies (plus
//! the frame that crosses the line); the rest wait in the outbox. A `status` reply grows with
//! its page rather than being a few bytes like every other reply (but a `read`'s), so a
//! connection has one `status` at a time in flight: a second one is read but held, and nothing
//! more is read, until the first is written. A client
//! that pipelines statuses and never reads therefore costs one page plus `max_unsent_bytes`,
//! not one page per request. A client that stops reading altogether is dropped when one write
//! stalls for `write_timeout`.
//!
//! Authentication, when the server has a secret, happens here too, before anything reaches the
//! backend: until `hello` carries the right `auth`, every request is answered `unauthorized`.
//!
//! Everything a connection logs, and what the backend logs about its session, is inside one
//! `session` span with the session id, peer address and (after `hello`) client name.
//!
//! It reads the clock only to bound waits (the first-frame and write timeouts) and to stamp a
//! request's arrival for the latency metric; the table's time comes from the backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use protocol::frame::{Frame, LineCodec};
use protocol::{Command, ErrorCode, Request, RequestId, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::metrics::Metrics;
use crate::seam::{BackendMsg, ConnectionId, ConnectionRecord, Outbox, OutboxReceiver};
use crate::secret;

/// How long a closing connection may take to write its last replies.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// How long a connection that is being closed may take to write what is already queued.
const CLOSING_FLUSH: Duration = Duration::from_millis(100);

/// The read buffer a connection starts with. Requests are short (an acquire is under 100
/// bytes), so this holds many; the buffer grows when a client pipelines more, and an idle
/// connection does not pay for the codec's default of 8 KiB.
const INITIAL_READ_BUFFER: usize = 1024;

/// Room made in the read buffer before each read, by moving the unread bytes to its front (or
/// growing it). Without it the free space shrinks with every line consumed until reads return
/// a few bytes each, cutting requests in two and costing extra system calls.
const MIN_READ_SPACE: usize = INITIAL_READ_BUFFER / 2;

/// A read or write buffer that grew past this (for a burst of pipelined requests and their
/// replies, or a large `status` reply) is given back once it has been emptied, so that one
/// burst does not stay allocated for the connection's whole life: with a thousand sessions
/// that each pipelined a few hundred acquires, kept buffers cost more than the locks.
const KEPT_BUFFER: usize = 4 * 1024;

/// Rules that apply to each connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_in_flight: usize,
    /// Serialized replies a connection holds for its client at most; see the module docs.
    pub(crate) max_unsent_bytes: usize,
    /// Watch events each watch of the connection keeps waiting at most before they are
    /// replaced by one `resync` (`--max-watch-backlog`; see `seam::Outbox`).
    pub(crate) max_watch_backlog: usize,
    /// The longest client name `hello` may give, in bytes.
    pub(crate) max_client_name_bytes: usize,
    /// The longest line before the client has authenticated (when `auth` is set).
    pub(crate) max_unauthenticated_frame_bytes: usize,
    /// A connection must send its first complete frame within this time.
    pub(crate) first_frame_timeout: Duration,
    /// A single write to a client may stall this long before the client is dropped.
    pub(crate) write_timeout: Duration,
    /// The secret `hello` must carry, when the server requires one.
    pub(crate) auth: Option<Arc<str>>,
}

/// Called once if the connection is closed for a wrong or missing secret, before the client
/// hears so: the accept loop counts failures per address (see `--max-auth-failures-per-minute`).
pub(crate) type AuthFailure = Box<dyn FnOnce() + Send>;

/// Everything a connection's task needs besides its stream.
pub(crate) struct Accepted {
    pub(crate) peer: SocketAddr,
    pub(crate) backend: mpsc::UnboundedSender<BackendMsg>,
    pub(crate) limits: ConnectionLimits,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    pub(crate) on_auth_failure: AuthFailure,
}

/// Serves one accepted connection until the client leaves, its session expires, or the server
/// shuts down (`shutdown` is cancelled). Always tells the backend when it is done.
pub(crate) async fn serve<S>(stream: S, accepted: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        peer,
        backend,
        limits,
        metrics,
        shutdown,
        on_auth_failure,
    } = accepted;
    // The backend fills in the session id when it opens the session, and the client name when
    // `hello` gives one. The task enters the span only to log (`Connection::log`): entering it
    // on every poll, as `Instrument` does, costs more than a request's table work.
    let span = info_span!(
        "session",
        session = tracing::field::Empty,
        %peer,
        client = tracing::field::Empty
    );
    let close = shutdown.child_token();
    let (outbox, outbox_rx) = Outbox::new(limits.max_watch_backlog, Arc::clone(&metrics));
    let (reply_tx, reply_rx) = oneshot::channel();
    let record = ConnectionRecord {
        peer,
        client: None,
        outbox,
        close: close.clone(),
        span: span.clone(),
    };
    let open = BackendMsg::Open {
        record,
        reply: reply_tx,
    };
    if backend.send(open).is_err() {
        return;
    }
    let Ok(id) = reply_rx.await else {
        return;
    };
    // Until a client has authenticated, a line may only be as long as a `hello`.
    let codec = LineCodec::new(match limits.auth {
        Some(_) => limits
            .max_unauthenticated_frame_bytes
            .min(limits.max_frame_bytes),
        None => limits.max_frame_bytes,
    });
    let mut connection = Connection {
        id,
        backend,
        frames: FramedRead::with_capacity(stream, codec, INITIAL_READ_BUFFER),
        outbox: outbox_rx,
        in_flight: 0,
        status_in_flight: None,
        held: None,
        authenticated: limits.auth.is_none(),
        limits,
        metrics,
        close,
        unwritten: Vec::new(),
        span,
        on_auth_failure: Some(on_auth_failure),
    };
    let ended = connection.serve_requests().await;
    let _ = connection
        .backend
        .send(BackendMsg::Closed { connection: id });
    let span = connection.span.clone();
    connection.finish(ended).await;
    span.in_scope(|| debug!("connection finished"));
}

/// The state of one connection's task.
struct Connection<S> {
    /// What the backend calls this connection.
    id: ConnectionId,
    backend: mpsc::UnboundedSender<BackendMsg>,
    /// The socket, read through the line codec. Replies are written to `frames.get_mut()`,
    /// which leaves the codec's read buffer alone.
    frames: FramedRead<S, LineCodec>,
    /// Frames from the backend. The backend holds the sender until it has handled this
    /// connection's [`BackendMsg::Closed`], so after `Closed` the channel ends once every reply
    /// to an earlier request is in it.
    outbox: OutboxReceiver,
    /// Requests passed to the backend whose final reply has not been written yet.
    in_flight: usize,
    /// The id of the `status` passed to the backend whose reply has not been written yet: one
    /// at a time (see the module docs).
    status_in_flight: Option<RequestId>,
    /// A request that waits for `status_in_flight`'s reply before it goes to the backend: a
    /// second `status`, or a request that reuses the first one's id (whose reply could not be
    /// told apart from it). Nothing more is read while it waits.
    held: Option<Request>,
    authenticated: bool,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    /// Cancelled to close the connection: by the backend (its session ended, or this node stopped leading), by the
    /// server (shutdown), or here (a write that stalled).
    close: CancellationToken,
    /// Serialized frames of the batch being written. Empty between batches, so a non-empty
    /// buffer after a write was cut off means the client got part of a frame.
    unwritten: Vec<u8>,
    /// The session's span, entered to log.
    span: tracing::Span,
    /// Taken and called when the client fails authentication.
    on_auth_failure: Option<AuthFailure>,
}

/// Why a connection stopped serving requests.
enum Ended {
    /// The client closed its side, broke the protocol, or failed authentication or the
    /// first-frame timeout (or the backend is gone): replies still owed are written.
    ClientDone,
    /// The close token was cancelled: only what is already queued is written.
    Closed,
    /// A write failed, stalled or was cut off: nothing more can be written.
    WriteFailed,
}

/// What to do with one frame.
enum Verdict {
    /// Pass the request to the backend.
    Forward(Request),
    /// Answer it here.
    Reject(ServerFrame),
    /// Answer it here, then close the connection.
    RejectAndClose(ServerFrame),
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads requests and writes replies until the connection ends, replies first: frames in
    /// the outbox are written before more requests are read.
    async fn serve_requests(&mut self) -> Ended {
        match self.serve_until_ended().await {
            Ok(never) => match never {},
            Err(ended) => ended,
        }
    }

    async fn serve_until_ended(&mut self) -> Result<std::convert::Infallible, Ended> {
        let first_frame_deadline = tokio::time::sleep(self.limits.first_frame_timeout);
        tokio::pin!(first_frame_deadline);
        let mut waiting_for_first_frame = true;
        let mut client_closed = false;
        // One wait for the close token for the connection's whole life: a new one per loop
        // would register with (and leave) the token's waiter list on every request.
        let close = self.close.clone();
        let closed = close.cancelled();
        tokio::pin!(closed);
        loop {
            if self.status_in_flight.is_none() {
                if let Some(request) = self.held.take() {
                    self.forward(request)?;
                }
            }
            // A client that closed its side after a held request still gets its answer.
            if client_closed && self.held.is_none() {
                return Err(Ended::ClientDone);
            }
            // The backpressure point: a client with `max_in_flight` requests unanswered, or
            // with a request held behind a `status`, is not read until a reply goes out.
            let may_read =
                self.in_flight < self.limits.max_in_flight && self.held.is_none() && !client_closed;
            self.make_read_room();
            tokio::select! {
                biased;
                () = &mut closed => return Err(Ended::Closed),
                frame = self.outbox.recv() => {
                    // The backend keeps its sender until this task sends `Closed`.
                    let Some(frame) = frame else { return Err(Ended::ClientDone) };
                    self.write_batch(frame).await?;
                }
                frame = self.frames.next(), if may_read => {
                    waiting_for_first_frame = false;
                    let frame = match frame {
                        None => {
                            client_closed = true;
                            continue;
                        }
                        Some(Err(err)) => {
                            self.span.in_scope(|| debug!(error = %err, "read failed"));
                            return Err(Ended::ClientDone);
                        }
                        Some(Ok(frame)) => frame,
                    };
                    self.handle_frame(frame).await?;
                }
                () = &mut first_frame_deadline, if waiting_for_first_frame => {
                    self.span.in_scope(|| {
                        info!("closing a connection that sent no complete frame in time");
                    });
                    let reply = ServerFrame::error(
                        None,
                        ErrorCode::LimitExceeded,
                        format!(
                            "no complete frame within {} ms (--first-frame-timeout-ms)",
                            self.limits.first_frame_timeout.as_millis()
                        ),
                    );
                    return Err(self.answer_and_end(&reply).await);
                }
            }
        }
    }

    /// Makes room for the next read: moves the unread bytes to the front of the buffer (or
    /// grows it), and gives back a large buffer once everything in it has been read.
    fn make_read_room(&mut self) {
        let buffer = self.frames.read_buffer_mut();
        // Reserving also reclaims the room of bytes already consumed, so the capacity seen
        // afterwards is the whole allocation's.
        buffer.reserve(MIN_READ_SPACE);
        if buffer.is_empty() && buffer.capacity() > KEPT_BUFFER {
            *buffer = BytesMut::with_capacity(INITIAL_READ_BUFFER);
        }
    }

    /// Passes a request to the backend, or answers it here.
    async fn handle_frame(&mut self, frame: Frame) -> Result<(), Ended> {
        match self.judge(frame) {
            Verdict::Forward(request) => {
                let behind_status = matches!(request.command, Command::Status(_))
                    || Some(request.id) == self.status_in_flight;
                if behind_status && self.status_in_flight.is_some() {
                    self.held = Some(request);
                    return Ok(());
                }
                self.forward(request)
            }
            Verdict::Reject(reply) => {
                // A bad frame is still a sign of life, but only from an authenticated client:
                // a stranger must not keep a connection open by sending junk.
                if self.authenticated {
                    let _ = self.backend.send(BackendMsg::Activity {
                        connection: self.id,
                    });
                }
                encode(&reply, &mut self.unwritten, &self.metrics);
                self.write_unwritten().await
            }
            Verdict::RejectAndClose(reply) => Err(self.answer_and_end(&reply).await),
        }
    }

    /// Passes a request to the backend.
    fn forward(&mut self, request: Request) -> Result<(), Ended> {
        if matches!(request.command, Command::Status(_)) {
            self.status_in_flight = Some(request.id);
        }
        let msg = BackendMsg::Request {
            connection: self.id,
            request,
            received: tokio::time::Instant::now().into_std(),
        };
        if self.backend.send(msg).is_err() {
            return Err(Ended::ClientDone);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Writes a last reply of the connection's own (the replies still owed by the backend
    /// follow it, in [`Connection::finish`]).
    async fn answer_and_end(&mut self, reply: &ServerFrame) -> Ended {
        encode(reply, &mut self.unwritten, &self.metrics);
        match self.write_unwritten().await {
            Ok(()) => Ended::ClientDone,
            Err(ended) => ended,
        }
    }

    fn judge(&mut self, frame: Frame) -> Verdict {
        let line = match frame {
            Frame::TooLarge if self.authenticated => {
                let max_frame_bytes = self.limits.max_frame_bytes;
                return Verdict::Reject(ServerFrame::error(
                    None,
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame is longer than {max_frame_bytes} bytes (--max-frame-bytes); \
                         the rest of the line is discarded"
                    ),
                ));
            }
            Frame::TooLarge => {
                // Nothing a client sends before its `hello` can be this long.
                let max = self.frames.decoder().max_frame_bytes();
                self.span.in_scope(|| {
                    warn!("closing a connection whose first frame is too long for a hello");
                });
                return Verdict::RejectAndClose(ServerFrame::error(
                    None,
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame is longer than {max} bytes, the limit before authentication \
                         (--max-unauthenticated-frame-bytes); closing the connection"
                    ),
                ));
            }
            Frame::Line(line) => line,
        };
        let request = match Request::parse(&line) {
            Ok(request) => request,
            Err(err) => {
                return Verdict::Reject(ServerFrame::Err {
                    id: err.id,
                    error: err.error,
                })
            }
        };
        if let Command::Hello(hello) = &request.command {
            if let Some(refusal) = self.check_client_name(hello.client.as_deref()) {
                return Verdict::Reject(ServerFrame::error(
                    Some(request.id),
                    ErrorCode::BadRequest,
                    refusal,
                ));
            }
        }
        if self.authenticated {
            return Verdict::Forward(request);
        }
        let Some(expected) = &self.limits.auth else {
            return Verdict::Forward(request);
        };
        let id = Some(request.id);
        match &request.command {
            Command::Hello(hello) => {
                let given = hello.auth.as_deref().unwrap_or_default().as_bytes();
                if secret::matches(given, expected.as_bytes()) {
                    self.authenticated = true;
                    let max_frame_bytes = self.limits.max_frame_bytes;
                    self.frames
                        .decoder_mut()
                        .set_max_frame_bytes(max_frame_bytes);
                    Verdict::Forward(request)
                } else {
                    self.span.in_scope(|| {
                        warn!("closing a connection whose hello had a wrong or missing auth token");
                    });
                    if let Some(record) = self.on_auth_failure.take() {
                        record();
                    }
                    Verdict::RejectAndClose(ServerFrame::error(
                        id,
                        ErrorCode::Unauthorized,
                        "wrong or missing `auth` token in hello; closing the connection",
                    ))
                }
            }
            _ => Verdict::Reject(ServerFrame::error(
                id,
                ErrorCode::Unauthorized,
                "this server requires authentication: send hello with `auth` first",
            )),
        }
    }

    /// Why a `hello`'s client name is refused, if it is: it goes into every log line of the
    /// session, the admin API and, in a cluster, the replicated log, so it must be short and
    /// printable (a newline in it could forge a log line).
    fn check_client_name(&self, client: Option<&str>) -> Option<String> {
        let client = client?;
        let limit = self.limits.max_client_name_bytes;
        if client.len() > limit {
            return Some(format!(
                "the client name is {} bytes; the limit is {limit} (--max-client-name-bytes)",
                client.len()
            ));
        }
        if client.chars().any(char::is_control) {
            return Some("the client name has a control character; use printable text".to_owned());
        }
        None
    }

    /// Writes `first` and the frames after it in the outbox, in one write of at most
    /// `max_unsent_bytes` (plus the frame that crosses it); the rest wait for the next write.
    async fn write_batch(&mut self, first: ServerFrame) -> Result<(), Ended> {
        let mut answered = usize::from(self.encode_reply(&first));
        while self.unwritten.len() < self.limits.max_unsent_bytes {
            let Some(frame) = self.outbox.try_recv() else {
                break;
            };
            answered += usize::from(self.encode_reply(&frame));
        }
        // Counted as answered once on their way to the socket, as soon as they are serialized,
        // so that a stalled write cannot also stop the reading that would notice the stall.
        self.in_flight = self.in_flight.saturating_sub(answered);
        self.write_unwritten().await
    }

    /// Serializes a frame from the backend into the write buffer, noting the answer to the
    /// `status` in flight. Returns whether it is a request's final reply.
    fn encode_reply(&mut self, frame: &ServerFrame) -> bool {
        let answered = match frame {
            ServerFrame::Ok { id, .. } => Some(*id),
            ServerFrame::Err { id, .. } => *id,
            // A saved reply (a cluster's answer to a retry) keeps its id inside its bytes; it
            // is taken as the answer, which may let a second `status` in early but can never
            // leave the connection waiting for a reply that already went out.
            ServerFrame::Saved(_) => self.status_in_flight,
            ServerFrame::Queued { .. } | ServerFrame::Watch { .. } => None,
        };
        if answered.is_some() && answered == self.status_in_flight {
            self.status_in_flight = None;
        }
        encode(frame, &mut self.unwritten, &self.metrics)
    }

    /// Writes the serialized frames, giving up on a client that has not read for
    /// `write_timeout` (and closing its connection) or when the connection is closed.
    async fn write_unwritten(&mut self) -> Result<(), Ended> {
        let _unsent = Unsent::count(&self.metrics, self.unwritten.len());
        let write = self.frames.get_mut().write_all(&self.unwritten);
        let written = tokio::select! {
            // The write first: a write that completes at once never waits on the close token.
            biased;
            result = tokio::time::timeout(self.limits.write_timeout, write) => result,
            () = self.close.cancelled() => return Err(Ended::WriteFailed),
        };
        match written {
            Ok(Ok(())) => {
                self.unwritten.clear();
                if self.unwritten.capacity() > KEPT_BUFFER {
                    self.unwritten = Vec::new();
                }
                Ok(())
            }
            Ok(Err(err)) => {
                self.span.in_scope(|| debug!(error = %err, "write failed"));
                Err(Ended::WriteFailed)
            }
            Err(_) => {
                self.span.in_scope(|| {
                    info!(
                        "dropping a client that has not read its replies for {:?} \
                         (--write-timeout-ms)",
                        self.limits.write_timeout
                    );
                });
                self.close.cancel();
                Err(Ended::WriteFailed)
            }
        }
    }

    /// Called after the backend was told `Closed`: writes the replies still owed, then closes
    /// the socket.
    async fn finish(mut self, ended: Ended) {
        match ended {
            Ended::ClientDone => {
                // The backend answers everything it received before `Closed`, then drops its
                // outbox sender; those replies go out (a client that half-closed still gets
                // them). A client that stopped reading gets a short grace period.
                let owed = tokio::time::timeout(WRITER_GRACE, self.write_owed_replies()).await;
                if let Ok(Err(Ended::WriteFailed)) = owed {
                    return;
                }
            }
            Ended::Closed => {}
            Ended::WriteFailed => return,
        }
        // A write cut off by the grace period left part of a frame on the wire: another frame
        // after it would be garbage to the client.
        if !self.unwritten.is_empty() {
            return;
        }
        // Closing: send what is already queued (replies to the last requests) without waiting
        // on a client that does not read.
        while let Some(frame) = self.outbox.try_recv() {
            encode(&frame, &mut self.unwritten, &self.metrics);
        }
        let socket = self.frames.get_mut();
        if !self.unwritten.is_empty() {
            let _ = tokio::time::timeout(CLOSING_FLUSH, socket.write_all(&self.unwritten)).await;
        }
        let _ = socket.shutdown().await;
    }

    /// Writes replies until the backend drops its outbox sender, or the connection is closed.
    async fn write_owed_replies(&mut self) -> Result<(), Ended> {
        loop {
            let frame = tokio::select! {
                biased;
                () = self.close.cancelled() => return Err(Ended::Closed),
                frame = self.outbox.recv() => frame,
            };
            let Some(frame) = frame else { return Ok(()) };
            self.write_batch(frame).await?;
        }
    }
}

/// Bytes being written to a client, counted in `lockd_unsent_reply_bytes` for as long as this
/// lives: however the write ends (done, failed, timed out, or its task dropped).
struct Unsent<'a> {
    metrics: &'a Metrics,
    bytes: i64,
}

impl<'a> Unsent<'a> {
    fn count(metrics: &'a Metrics, bytes: usize) -> Unsent<'a> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        metrics.unsent_reply_bytes.inc_by(bytes);
        Unsent { metrics, bytes }
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.metrics.unsent_reply_bytes.dec_by(self.bytes);
    }
}

/// Serializes one frame into `buf`, counting it if it is an error. Returns whether it is a
/// request's final reply (anything but an event).
fn encode(frame: &ServerFrame, buf: &mut Vec<u8>, metrics: &Metrics) -> bool {
    if let ServerFrame::Err { error, .. } = frame {
        metrics.error(error.code);
    }
    frame.write_json(buf);
    buf.push(b'\n');
    !matches!(
        frame,
        ServerFrame::Queued { .. } | ServerFrame::Watch { .. }
    )
}
