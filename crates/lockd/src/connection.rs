//! One client connection: a reader that turns lines into requests for the driver, and a writer
//! that sends replies back in batches.
//!
//! Backpressure: each request takes one permit from the connection's in-flight semaphore before
//! it is passed on, and the writer returns the permit once the request's final reply is on its
//! way to the socket. A client that sends faster than it reads replies therefore stops being
//! read once `max_in_flight` requests are pending, and the replies waiting in its outbox can
//! never exceed two frames (a `queued` event and a reply) per permit.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use protocol::frame::{Frame, LineCodec};
use protocol::{ErrorCode, Request, ServerFrame, SessionId};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::driver::DriverMsg;

/// How long a closing connection may take to write its last replies.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Limits that apply to each connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_in_flight: usize,
}

/// Serves one accepted connection until the client leaves, its session expires, or the server
/// shuts down (`shutdown` is cancelled). Always tells the driver when it is done.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    driver: mpsc::UnboundedSender<DriverMsg>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let close = shutdown.child_token();
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let outbox = Outbox(outbox_tx);
    let (reply_tx, reply_rx) = oneshot::channel();
    let open = DriverMsg::Open {
        peer,
        outbox: outbox.clone(),
        close: close.clone(),
        reply: reply_tx,
    };
    if driver.send(open).is_err() {
        return;
    }
    let Ok(session) = reply_rx.await else {
        return;
    };

    let (read_half, write_half) = stream.into_split();
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let writer = tokio::spawn(write_frames(
        write_half,
        outbox_rx,
        Arc::clone(&in_flight),
        close.clone(),
    ));
    let reader = Reader {
        session,
        driver: driver.clone(),
        outbox,
        in_flight,
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
    let mut writer = writer;
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        close.cancel();
        let _ = writer.await;
    }
    debug!(session = session.0, %peer, "connection finished");
}

struct Reader {
    session: SessionId,
    driver: mpsc::UnboundedSender<DriverMsg>,
    outbox: Outbox,
    in_flight: Arc<Semaphore>,
}

impl Reader {
    async fn run<R>(self, mut frames: FramedRead<R, LineCodec>, close: &CancellationToken)
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        loop {
            let frame = tokio::select! {
                () = close.cancelled() => return,
                frame = frames.next() => frame,
            };
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
                permit = self.in_flight.acquire() => permit,
            };
            let Ok(permit) = permit else { return };
            // The writer gives the permit back when it sends this request's final reply.
            permit.forget();
            let rejected = match frame {
                Frame::TooLarge => ServerFrame::error(
                    None,
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame is longer than {} bytes; the rest of the line is discarded",
                        frames.decoder().max_frame_bytes()
                    ),
                ),
                Frame::Line(line) => match Request::parse(&line) {
                    Ok(request) => {
                        let msg = DriverMsg::Request {
                            session: self.session,
                            request,
                        };
                        if self.driver.send(msg).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(err) => ServerFrame::Err {
                        id: err.id,
                        error: err.error,
                    },
                },
            };
            let _ = self.driver.send(DriverMsg::Activity {
                session: self.session,
            });
            self.outbox.send(rejected);
        }
    }
}

/// Writes frames as they come, one syscall per batch: everything already queued is serialized
/// into one buffer before the buffer is written.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut frames: mpsc::UnboundedReceiver<ServerFrame>,
    in_flight: Arc<Semaphore>,
    close: CancellationToken,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            () = close.cancelled() => None,
        };
        let Some(frame) = frame else { break };
        let mut finished = 0;
        encode(&frame, &mut buf, &mut finished);
        while let Ok(frame) = frames.try_recv() {
            encode(&frame, &mut buf, &mut finished);
        }
        let written = tokio::select! {
            result = socket.write_all(&buf) => result.is_ok(),
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
        encode(&frame, &mut buf, &mut 0);
    }
    if !buf.is_empty() {
        let flush = socket.write_all(&buf);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), flush).await;
    }
    let _ = socket.shutdown().await;
}

fn encode(frame: &ServerFrame, buf: &mut Vec<u8>, finished: &mut usize) {
    frame.write_json(buf);
    buf.push(b'\n');
    if !matches!(frame, ServerFrame::Queued { .. }) {
        *finished += 1;
    }
}
