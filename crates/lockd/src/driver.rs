//! The driver: one task that owns the lock table and is the only code that calls it.
//!
//! Connections send it [`DriverMsg`]s over one channel; it feeds them to the table with the
//! current time, replies through each connection's outbox, delivers the table's effects, and
//! sleeps until the table's next deadline. Owning the table in one task (rather than sharing it
//! behind a mutex) gives every input a single total order, which is what makes grants strictly
//! FIFO and tokens strictly increasing without any further locking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::cmd::{AcquireOk, HelloOk, ReadOk, StatusOk};
use protocol::{Command, ErrorCode, ReplyBody, Request, RequestId, ServerFrame, SessionId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection::Outbox;
use crate::core::{Acquired, Effect, LockError, LockTable};

/// A message from a connection (or the accept loop) to the driver.
#[derive(Debug)]
pub(crate) enum DriverMsg {
    /// A connection was accepted: open a session for it and answer with its id.
    Open {
        peer: SocketAddr,
        outbox: Outbox,
        /// Cancelled by the driver to close the connection (lease expiry).
        close: CancellationToken,
        reply: oneshot::Sender<SessionId>,
    },
    /// A parsed request from the session's client.
    Request {
        session: SessionId,
        request: Request,
    },
    /// The client sent something that was not a valid request; it still counts as alive.
    Activity { session: SessionId },
    /// The connection is gone.
    Closed { session: SessionId },
}

/// The driver's half of a connection.
#[derive(Debug)]
struct ConnectionHandle {
    peer: SocketAddr,
    outbox: Outbox,
    close: CancellationToken,
}

/// Owns the table and the outboxes of all open sessions.
#[derive(Debug)]
pub(crate) struct Driver {
    table: LockTable,
    connections: HashMap<SessionId, ConnectionHandle>,
    server_name: String,
}

impl Driver {
    pub(crate) fn new(table: LockTable) -> Driver {
        Driver {
            table,
            connections: HashMap::new(),
            server_name: format!("lockd {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Runs until every sender of `inbox` is gone, which happens after the server has stopped
    /// accepting and every connection task has ended.
    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<DriverMsg>) {
        loop {
            let deadline = self.table.next_deadline();
            tokio::select! {
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    // Take whatever else is already waiting before looking at the clock again.
                    while let Ok(msg) = inbox.try_recv() {
                        self.handle(msg);
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.table.handle_timeout(now());
                    self.deliver_effects();
                }
            }
        }
    }

    fn handle(&mut self, msg: DriverMsg) {
        match msg {
            DriverMsg::Open {
                peer,
                outbox,
                close,
                reply,
            } => {
                let session = self.table.open_session(now());
                info!(session = session.0, %peer, "session opened");
                self.connections.insert(
                    session,
                    ConnectionHandle {
                        peer,
                        outbox,
                        close,
                    },
                );
                // The connection may already have given up waiting; it then closes itself.
                let _ = reply.send(session);
            }
            DriverMsg::Request { session, request } => {
                let now = now();
                self.table.touch(now, session);
                let id = request.id;
                debug!(
                    session = session.0,
                    id = id.0,
                    op = request.command.op(),
                    "request"
                );
                let frame = self.execute(now, session, request);
                self.send(session, frame);
                self.deliver_effects();
            }
            DriverMsg::Activity { session } => self.table.touch(now(), session),
            DriverMsg::Closed { session } => {
                if let Some(connection) = self.connections.remove(&session) {
                    info!(session = session.0, peer = %connection.peer, "session closed");
                }
                self.table.handle_session_closed(now(), session);
                self.deliver_effects();
            }
        }
    }

    /// Runs one request against the table and returns the frame to send back at once: its
    /// reply, or for an acquire that has to wait, its `queued` event (the reply comes later as
    /// an effect).
    fn execute(
        &mut self,
        now: std::time::Instant,
        session: SessionId,
        request: Request,
    ) -> ServerFrame {
        let id = request.id;
        let result = match request.command {
            Command::Hello(hello) => self
                .table
                .handle_hello(now, session, hello.client, hello.lease_ms)
                .map(|lease| {
                    ReplyBody::Hello(HelloOk {
                        session,
                        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                        server: self.server_name.clone(),
                        protocol: protocol::PROTOCOL_VERSION,
                    })
                }),
            Command::Acquire(acquire) => {
                let mode = acquire.mode;
                match self.table.handle_acquire(
                    now,
                    session,
                    id,
                    acquire.resource,
                    mode,
                    acquire.timeout_ms.map(Duration::from_millis),
                ) {
                    Ok(Acquired::Granted(token)) => {
                        Ok(ReplyBody::Acquired(AcquireOk { token, mode }))
                    }
                    Ok(Acquired::Queued { position }) => {
                        return ServerFrame::Queued { id, position }
                    }
                    Err(err) => Err(err),
                }
            }
            Command::Release(release) => self
                .table
                .handle_release(now, session, &release.resource, release.token)
                .map(|()| ReplyBody::EMPTY),
            Command::Read(read) => {
                self.table
                    .read(session, &read.resource, read.token)
                    .map(|value| {
                        ReplyBody::Value(ReadOk {
                            value: value.map(str::to_owned),
                        })
                    })
            }
            Command::Write(write) => self
                .table
                .handle_write(session, &write.resource, write.token, write.value)
                .map(|()| ReplyBody::EMPTY),
            Command::Cancel(cancel) => self
                .table
                .handle_cancel(now, session, cancel.target)
                .map(|()| ReplyBody::EMPTY),
            Command::Ping => Ok(ReplyBody::EMPTY),
            Command::Status(status) => Ok(ReplyBody::Status(StatusOk {
                resources: self.table.status(now, status.resource.as_ref()),
            })),
        };
        reply_frame(id, result)
    }

    fn deliver_effects(&mut self) {
        while let Some(effect) = self.table.poll_effect() {
            match effect {
                Effect::Granted {
                    session,
                    request,
                    resource,
                    token,
                    mode,
                } => {
                    debug!(session = session.0, %resource, token = token.0, "granted after waiting");
                    let body = ReplyBody::Acquired(AcquireOk { token, mode });
                    self.send(session, reply_frame(request, Ok(body)));
                }
                Effect::WaitFailed {
                    session,
                    request,
                    resource,
                    reason,
                } => {
                    let error = reason.to_error(resource);
                    self.send(session, reply_frame(request, Err(error)));
                }
                Effect::SessionExpired { session } => {
                    if let Some(connection) = self.connections.remove(&session) {
                        warn!(
                            session = session.0,
                            peer = %connection.peer,
                            "session expired: nothing heard from the client for its whole lease"
                        );
                        connection.close.cancel();
                    }
                }
            }
        }
    }

    fn send(&mut self, session: SessionId, frame: ServerFrame) {
        if let Some(connection) = self.connections.get(&session) {
            connection.outbox.send(frame);
        }
    }
}

fn reply_frame(id: RequestId, result: Result<ReplyBody, LockError>) -> ServerFrame {
    match result {
        Ok(body) => ServerFrame::Ok { id, body },
        Err(err) => {
            let code = err.code();
            if code == ErrorCode::Internal {
                warn!(id = id.0, error = %err, "request failed inside the server");
            }
            ServerFrame::error(Some(id), code, err.to_string())
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
