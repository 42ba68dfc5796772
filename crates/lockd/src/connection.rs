//! One client connection: a reader that turns lines into requests for the driver, and a writer
//! that sends replies back in batches.
//!
//! Backpressure: each request takes one permit from the connection's in-flight semaphore before
//! it is passed on, and the writer returns the permit once the request's final reply is on its
//! way to the socket. A client that sends faster than it reads replies therefore stops being
//! read once `max_in_flight` requests are pending, and the replies waiting in its outbox can
//! never exceed two frames (a `queued` event and a reply) per permit. A client that stops
//! reading altogether is dropped when one write stalls for `write_timeout`.
//!
//! Authentication, when the server has a secret, happens here too, before anything reaches the
//! driver: until `hello` carries the right `auth`, every request is answered `unauthorized`.
//!
//! Everything a connection logs, and what the driver logs about its session, is inside one
//! `session` span with the session id, peer address and (after `hello`) client name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::frame::{Frame, LineCodec};
use protocol::{Command, ErrorCode, Request, ServerFrame, SessionId};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::driver::DriverMsg;
use crate::metrics::Metrics;

/// How long a closing connection may take to write its last replies.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// Where the driver (and the reader, for frames it rejects itself) put frames for one client.
#[derive(Debug, Clone)]
pub(crate) struct Outbox(mpsc::UnboundedSender<ServerFrame>);

impl Outbox {
    /// Queues a frame for the writer. A closed connection silently drops it: nobody is left to
    /// read it, and the driver learns of the close through [`DriverMsg::Closed`].
    pub(crate) fn send(&self, frame: ServerFrame) {
        let _ = self.0.send(frame);
    }
}

/// Rules that apply to each connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_in_flight: usize,
    /// A connection must send its first complete frame within this time.
    pub(crate) first_frame_timeout: Duration,
    /// A single write to a client may stall this long before the client is dropped.
    pub(crate) write_timeout: Duration,
    /// The secret `hello` must carry, when the server requires one.
    pub(crate) auth: Option<Arc<str>>,
}

/// Serves one accepted connection until the client leaves, its session expires, or the server
/// shuts down (`shutdown` is cancelled). Always tells the driver when it is done.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    driver: mpsc::UnboundedSender<DriverMsg>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // The driver fills in the session id when it opens the session, and the client name when
    // `hello` gives one.
    let span = info_span!(
        "session",
        session = tracing::field::Empty,
        %peer,
        client = tracing::field::Empty
    );
    serve_in_span(
        stream,
        peer,
        driver,
        limits,
        metrics,
        shutdown,
        span.clone(),
    )
    .instrument(span)
    .await;
}

async fn serve_in_span<S>(
    stream: S,
    peer: SocketAddr,
    driver: mpsc::UnboundedSender<DriverMsg>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    span: tracing::Span,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let close = shutdown.child_token();
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let outbox = Outbox(outbox_tx);
    let (reply_tx, reply_rx) = oneshot::channel();
    let open = DriverMsg::Open {
        peer,
        outbox: outbox.clone(),
        close: close.clone(),
        span,
        reply: reply_tx,
    };
    if driver.send(open).is_err() {
        return;
    }
    let Ok(session) = reply_rx.await else {
        return;
    };

    let (read_half, write_half) = tokio::io::split(stream);
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut writer = tokio::spawn(
        write_frames(
            write_half,
            outbox_rx,
            Arc::clone(&in_flight),
            close.clone(),
            limits.write_timeout,
            metrics,
        )
        .in_current_span(),
    );
    let reader = Reader {
        session,
        peer,
        driver: driver.clone(),
        outbox,
        in_flight,
        authenticated: limits.auth.is_none(),
        limits: limits.clone(),
    };
    reader
        .run(
            FramedRead::new(read_half, LineCodec::new(limits.max_frame_bytes)),
            &close,
        )
        .await;
    let _ = driver.send(DriverMsg::Closed { session });
    // The driver answers everything it received before `Closed`, then drops its outbox sender;
    // the writer then flushes those replies (a client that half-closed still gets them) and
    // ends. A client that stopped reading gets a short grace period, then the close token.
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        close.cancel();
        let _ = writer.await;
    }
    debug!("connection finished");
}

struct Reader {
    session: SessionId,
    peer: SocketAddr,
    driver: mpsc::UnboundedSender<DriverMsg>,
    outbox: Outbox,
    in_flight: Arc<Semaphore>,
    authenticated: bool,
    limits: ConnectionLimits,
}

/// What to do with one frame.
enum Verdict {
    /// Pass the request to the driver.
    Forward(Request),
    /// Answer it here.
    Reject(ServerFrame),
    /// Answer it here, then close the connection.
    RejectAndClose(ServerFrame),
}

impl Reader {
    async fn run<R>(mut self, mut frames: FramedRead<R, LineCodec>, close: &CancellationToken)
    where
        R: AsyncRead + Unpin,
    {
        let in_flight = Arc::clone(&self.in_flight);
        let mut first = true;
        loop {
            let frame = if first {
                let first_frame =
                    tokio::time::timeout(self.limits.first_frame_timeout, frames.next());
                tokio::select! {
                    () = close.cancelled() => return,
                    frame = first_frame => match frame {
                        Ok(frame) => frame,
                        Err(_) => {
                            info!(session = self.session.0, peer = %self.peer,
                                "closing a connection that sent no complete frame in time");
                            self.outbox.send(ServerFrame::error(
                                None,
                                ErrorCode::LimitExceeded,
                                format!(
                                    "no complete frame within {} ms (--first-frame-timeout-ms)",
                                    self.limits.first_frame_timeout.as_millis()
                                ),
                            ));
                            return;
                        }
                    },
                }
            } else {
                tokio::select! {
                    () = close.cancelled() => return,
                    frame = frames.next() => frame,
                }
            };
            first = false;
            let frame = match frame {
                None => return,
                Some(Err(err)) => {
                    debug!(session = self.session.0, error = %err, "read failed");
                    return;
                }
                Some(Ok(frame)) => frame,
            };
            // Wait for room before passing the frame on: this is the backpressure point.
            let permit = tokio::select! {
                () = close.cancelled() => return,
                permit = in_flight.acquire() => permit,
            };
            let Ok(permit) = permit else { return };
            // The writer gives the permit back when it sends this request's final reply.
            permit.forget();
            match self.judge(frame, frames.decoder().max_frame_bytes()) {
                Verdict::Forward(request) => {
                    let msg = DriverMsg::Request {
                        session: self.session,
                        request,
                        received: tokio::time::Instant::now().into_std(),
                    };
                    if self.driver.send(msg).is_err() {
                        return;
                    }
                }
                Verdict::Reject(reply) => {
                    // A bad frame is still a sign of life, but only from an authenticated
                    // client: a stranger must not keep a connection open by sending junk.
                    if self.authenticated {
                        let _ = self.driver.send(DriverMsg::Activity {
                            session: self.session,
                        });
                    }
                    self.outbox.send(reply);
                }
                Verdict::RejectAndClose(reply) => {
                    self.outbox.send(reply);
                    return;
                }
            }
        }
    }

    fn judge(&mut self, frame: Frame, max_frame_bytes: usize) -> Verdict {
        let line = match frame {
            Frame::TooLarge => {
                return Verdict::Reject(ServerFrame::error(
                    None,
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame is longer than {max_frame_bytes} bytes (--max-frame-bytes); \
                         the rest of the line is discarded"
                    ),
                ))
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
        if self.authenticated {
            return Verdict::Forward(request);
        }
        let Some(secret) = &self.limits.auth else {
            return Verdict::Forward(request);
        };
        let id = Some(request.id);
        match &request.command {
            Command::Hello(hello) => {
                let given = hello.auth.as_deref().unwrap_or_default().as_bytes();
                if bool::from(given.ct_eq(secret.as_bytes())) {
                    self.authenticated = true;
                    Verdict::Forward(request)
                } else {
                    warn!(session = self.session.0, peer = %self.peer,
                        "closing a connection whose hello had a wrong or missing auth token");
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
}

/// Writes frames as they come, one syscall per batch: everything already queued is serialized
/// into one buffer before the buffer is written.
///
/// Every error frame is counted here, whoever produced it (the driver, or the reader for frames
/// it rejected itself), by its code.
async fn write_frames<W: AsyncWrite>(
    socket: W,
    mut frames: mpsc::UnboundedReceiver<ServerFrame>,
    in_flight: Arc<Semaphore>,
    close: CancellationToken,
    write_timeout: Duration,
    metrics: Arc<Metrics>,
) {
    tokio::pin!(socket);
    let mut buf = Vec::with_capacity(4096);
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            () = close.cancelled() => None,
        };
        let Some(frame) = frame else { break };
        let mut finished = 0;
        encode(&frame, &mut buf, &mut finished, &metrics);
        while let Ok(frame) = frames.try_recv() {
            encode(&frame, &mut buf, &mut finished, &metrics);
        }
        let written = tokio::select! {
            result = tokio::time::timeout(write_timeout, socket.write_all(&buf)) => match result {
                Ok(result) => result.is_ok(),
                Err(_) => {
                    info!("dropping a client that has not read its replies for {write_timeout:?} \
                        (--write-timeout-ms)");
                    close.cancel();
                    false
                }
            },
            () = close.cancelled() => false,
        };
        buf.clear();
        in_flight.add_permits(finished);
        if !written {
            return;
        }
    }
    // Closing: send what is already queued (replies to the last requests) without waiting on a
    // client that does not read.
    while let Ok(frame) = frames.try_recv() {
        encode(&frame, &mut buf, &mut 0, &metrics);
    }
    if !buf.is_empty() {
        let flush = socket.write_all(&buf);
        let _ = tokio::time::timeout(Duration::from_millis(100), flush).await;
    }
    let _ = socket.shutdown().await;
}

fn encode(frame: &ServerFrame, buf: &mut Vec<u8>, finished: &mut usize, metrics: &Metrics) {
    if let ServerFrame::Err { error, .. } = frame {
        metrics.error(error.code);
    }
    frame.write_json(buf);
    buf.push(b'\n');
    if !matches!(frame, ServerFrame::Queued { .. }) {
        *finished += 1;
    }
}
