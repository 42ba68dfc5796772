//! The driver: one task that owns the lock table and the store, and is the only code that
//! calls them.
//!
//! Connections send it [`DriverMsg`]s over one channel; it feeds them to the table with the
//! current time, delivers the table's effects, and sleeps until the table's next deadline.
//! Owning the table in one task (rather than sharing it behind a mutex) gives every input a
//! single total order, which is what makes grants strictly FIFO and tokens strictly increasing
//! without any further locking.
//!
//! The driver works in turns: it takes every message already waiting, runs them against the
//! table, commits what they wrote (values, and a token reservation when the table asks for one)
//! in one durable batch, and only then sends the turn's frames. So no reply can reveal state
//! that a crash could still lose, and writes that arrive together share one fsync (group
//! commit). While a commit runs, new messages queue up and form the next turn.
//!
//! The driver also serves the admin API (which never touches the table itself): it hands out
//! snapshots of holders and waiters, rebuilt at most every [`SNAPSHOT_INTERVAL`] and only when
//! something changed, so any number of dashboards and scrapers cost it a few table walks a
//! second at most; and it carries out an operator's forced release. It counts what it sees into
//! the server's [`Metrics`] through handles resolved at start, so counting allocates nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::{
    Command, ErrorCode, FenceToken, Request, RequestId, ResourceName, ServerFrame, SessionId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Span};

use crate::connection::Outbox;
use crate::core::{Effect, ForcedRelease, LockError, LockTable};
use crate::execute::{effect_frame, execute, reply_frame, Executed};
use crate::metrics::Metrics;
use crate::snapshot::{LocksSnapshot, SessionInfo};
use crate::store::{CommitBatch, Store};

/// The shortest time between two snapshots for the admin API. Requests that come sooner, while
/// the table has changed, wait for the next one (so they never see state older than themselves)
/// and share it.
pub(crate) const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// Entries the per-turn buffers keep room for between turns; a larger turn's room is given
/// back when it ends.
const TURN_CAPACITY_KEPT: usize = 4096;

/// A message from a connection (or the accept loop) to the driver.
#[derive(Debug)]
pub(crate) enum DriverMsg {
    /// A connection was accepted: open a session for it and answer with its id.
    Open {
        peer: SocketAddr,
        outbox: Outbox,
        /// Cancelled by the driver to close the connection (lease expiry, forced release).
        close: CancellationToken,
        /// The connection's span; the driver records the session id in it and logs about the
        /// session inside it.
        span: Span,
        reply: oneshot::Sender<SessionId>,
    },
    /// A parsed request from the session's client.
    Request {
        session: SessionId,
        request: Request,
        /// When the connection read it, for the request latency metric.
        received: std::time::Instant,
    },
    /// The client sent something that was not a valid request; it still counts as alive.
    Activity { session: SessionId },
    /// The connection is gone.
    Closed { session: SessionId },
    /// The admin API wants holders and waiters. Answered at once with the last snapshot when
    /// nothing changed since it was built, else with a new one as soon as
    /// [`SNAPSHOT_INTERVAL`] has passed since the last.
    Snapshot {
        reply: oneshot::Sender<Arc<LocksSnapshot>>,
    },
    /// An operator forces the release of `resource` (only the hold with `token`, if given); see
    /// [`LockTable::handle_force_release`]. Answered with the holds released.
    ForceRelease {
        resource: ResourceName,
        token: Option<FenceToken>,
        /// Who asked, for the log.
        operator: SocketAddr,
        reply: oneshot::Sender<Vec<Evicted>>,
    },
    /// Readiness: answered as soon as the driver gets to it, which shows it is not stuck.
    Probe { reply: oneshot::Sender<()> },
}

/// A hold ended by a forced release, with what the driver knew of its session.
#[derive(Debug, Clone)]
pub(crate) struct Evicted {
    pub(crate) release: ForcedRelease,
    /// `None` if the session's connection was already closing.
    pub(crate) session: Option<SessionInfo>,
}

/// The driver's half of a connection.
#[derive(Debug)]
struct ConnectionHandle {
    peer: SocketAddr,
    /// The client name from the session's last `hello` that gave one.
    client: Option<Arc<str>>,
    outbox: Outbox,
    close: CancellationToken,
    span: Span,
}

/// Snapshots for the admin API (see [`DriverMsg::Snapshot`]).
#[derive(Debug, Default)]
struct Snapshots {
    latest: Option<Arc<LocksSnapshot>>,
    /// When `latest` was built.
    built: Option<Instant>,
    /// Whether the table may have changed since `latest` was built.
    stale: bool,
    /// Requests waiting for the next build.
    waiting: Vec<oneshot::Sender<Arc<LocksSnapshot>>>,
}

/// A write made this turn, to commit before its reply goes out (or to undo if that fails).
#[derive(Debug)]
struct TurnWrite {
    resource: ResourceName,
    value: Arc<str>,
    previous: Option<Arc<str>>,
    /// Index of its reply in `Driver::outgoing`.
    reply: usize,
}

/// Owns the table, the store and the outboxes of all open sessions.
pub(crate) struct Driver {
    table: LockTable,
    /// `None` only while a commit runs on the blocking pool.
    store: Option<Box<dyn Store>>,
    connections: HashMap<SessionId, ConnectionHandle>,
    server_name: String,
    /// Frames produced this turn, sent once the turn's commit is durable.
    outgoing: Vec<(SessionId, ServerFrame)>,
    /// Values written this turn, in order.
    writes: Vec<TurnWrite>,
    /// `read` replies this turn that returned a value written earlier in the same turn, so
    /// they can be withdrawn if that write fails (indexes in `outgoing`).
    reads_of_writes: Vec<usize>,
    metrics: Arc<Metrics>,
    /// Requests answered this turn: op (a metrics handle index) and when each was read.
    turn_requests: Vec<(usize, std::time::Instant)>,
    snapshots: Snapshots,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("table", &self.table)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(crate) fn new(table: LockTable, store: Box<dyn Store>, metrics: Arc<Metrics>) -> Driver {
        Driver {
            table,
            store: Some(store),
            connections: HashMap::new(),
            server_name: format!("lockd {}", env!("CARGO_PKG_VERSION")),
            outgoing: Vec::new(),
            writes: Vec::new(),
            reads_of_writes: Vec::new(),
            metrics,
            turn_requests: Vec::new(),
            snapshots: Snapshots::default(),
        }
    }

    /// Runs until every sender of `inbox` is gone, which happens after the server has stopped
    /// accepting and every connection task has ended. Every turn, including the last, is
    /// committed before it returns; the store closes when the driver is dropped.
    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<DriverMsg>) {
        loop {
            let deadline = self.table.next_deadline();
            let snapshot_due = self.snapshot_due();
            tokio::select! {
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    // Take whatever else is already waiting: one turn, one commit.
                    while let Ok(msg) = inbox.try_recv() {
                        self.handle(msg);
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.table.handle_timeout(now());
                    self.snapshots.stale = true;
                    self.deliver_effects();
                }
                () = sleep_until_instant(snapshot_due), if snapshot_due.is_some() => {
                    self.publish_snapshot();
                }
            }
            self.finish_turn().await;
        }
    }

    /// Commits the turn's writes and token reservation, then sends the turn's frames. If the
    /// commit fails, the writes are undone and every reply that depended on them becomes an
    /// `internal` error; locks keep working.
    async fn finish_turn(&mut self) {
        self.send_frames_before_first_write();
        let batch = CommitBatch {
            values: self
                .writes
                .iter()
                .map(|write| (write.resource.clone(), Arc::clone(&write.value)))
                .collect(),
            tokens_reserved: self.table.tokens_wanted(),
        };
        if !batch.is_empty() {
            let reserved = batch.tokens_reserved;
            let started = now();
            let committed = self.commit(batch).await;
            self.metrics
                .store_commit(now().saturating_duration_since(started), committed.is_ok());
            match committed {
                Ok(()) => {
                    if let Some(reserved) = reserved {
                        debug!(reserved, "fencing tokens reserved");
                        self.table.handle_tokens_reserved(now(), reserved);
                        self.deliver_effects();
                    }
                }
                Err(message) => self.fail_turn_writes(&message),
            }
        }
        self.writes.clear();
        self.reads_of_writes.clear();
        for (session, frame) in self.outgoing.drain(..) {
            if let Some(connection) = self.connections.get(&session) {
                connection.outbox.send(frame);
            }
        }
        if !self.turn_requests.is_empty() {
            let sent = now();
            for (op, received) in self.turn_requests.drain(..) {
                self.metrics
                    .request_done(op, sent.saturating_duration_since(received));
            }
        }
        // A burst (thousands of pipelined requests in one turn) must not leave its buffers
        // allocated for the rest of the process's life.
        self.outgoing.shrink_to(TURN_CAPACITY_KEPT);
        self.turn_requests.shrink_to(TURN_CAPACITY_KEPT);
        self.writes.shrink_to(TURN_CAPACITY_KEPT);
        self.reads_of_writes.shrink_to(TURN_CAPACITY_KEPT);
    }

    /// Sends at once the frames this turn made before its first write: they show only state
    /// that earlier commits made durable (values) or that is never durable (locks; a grant's
    /// token is always under the durable reservation), so they need not wait for this turn's
    /// commit. A writer's acquire and release then no longer wait behind other writers' values.
    fn send_frames_before_first_write(&mut self) {
        let first_write = self
            .writes
            .first()
            .map_or(self.outgoing.len(), |write| write.reply);
        if first_write == 0 {
            return;
        }
        for (session, frame) in self.outgoing.drain(..first_write) {
            if let Some(connection) = self.connections.get(&session) {
                connection.outbox.send(frame);
            }
        }
        for write in &mut self.writes {
            write.reply -= first_write;
        }
        for reply in &mut self.reads_of_writes {
            *reply -= first_write;
        }
    }

    /// Runs the store's blocking commit on the blocking pool, so the async threads keep
    /// reading requests (which then form the next turn).
    async fn commit(&mut self, batch: CommitBatch) -> Result<(), String> {
        let Some(mut store) = self.store.take() else {
            return Err("the store is unavailable after an earlier failure".to_owned());
        };
        let outcome = tokio::task::spawn_blocking(move || {
            let result = store.commit(&batch);
            (store, result)
        })
        .await;
        match outcome {
            Ok((store, result)) => {
                self.store = Some(store);
                result.map_err(|err| err.to_string())
            }
            // The commit panicked and took the store with it: every later write fails too.
            Err(err) => Err(format!("the store failed: {err}")),
        }
    }

    fn fail_turn_writes(&mut self, message: &str) {
        error!(
            error = message,
            writes = self.writes.len(),
            "commit failed: this turn's writes are undone and answered with `internal`"
        );
        let failure = |id| {
            ServerFrame::error(
                Some(id),
                ErrorCode::Internal,
                format!("the value was not saved: {message}"),
            )
        };
        for write in self.writes.drain(..).rev() {
            self.table.revert_write(&write.resource, write.previous);
            if let Some(id) = frame_id(&self.outgoing[write.reply].1) {
                self.outgoing[write.reply].1 = failure(id);
            }
        }
        for reply in self.reads_of_writes.drain(..) {
            if let Some(id) = frame_id(&self.outgoing[reply].1) {
                self.outgoing[reply].1 = failure(id);
            }
        }
    }

    fn handle(&mut self, msg: DriverMsg) {
        match msg {
            DriverMsg::Open {
                peer,
                outbox,
                close,
                span,
                reply,
            } => {
                let session = self.table.open_session(now());
                span.record("session", session.0);
                span.in_scope(|| info!("session opened"));
                self.connections.insert(
                    session,
                    ConnectionHandle {
                        peer,
                        client: None,
                        outbox,
                        close,
                        span,
                    },
                );
                self.snapshots.stale = true;
                self.count_sessions();
                // The connection may already have given up waiting; it then closes itself.
                let _ = reply.send(session);
            }
            DriverMsg::Request {
                session,
                request,
                received,
            } => {
                let now = now();
                self.table.touch(now, session);
                let id = request.id;
                let op = request.command.op();
                debug!(session = session.0, id = id.0, op, "request");
                self.turn_requests.push((Metrics::op_index(op), received));
                self.snapshots.stale = true;
                self.execute(now, session, request);
                self.deliver_effects();
            }
            DriverMsg::Activity { session } => self.table.touch(now(), session),
            DriverMsg::Closed { session } => {
                if let Some(connection) = self.connections.remove(&session) {
                    connection.span.in_scope(|| info!("session closed"));
                    self.count_sessions();
                }
                self.table.handle_session_closed(now(), session);
                self.snapshots.stale = true;
                self.deliver_effects();
            }
            DriverMsg::Snapshot { reply } => match &self.snapshots.latest {
                Some(latest) if !self.snapshots.stale => {
                    let _ = reply.send(Arc::clone(latest));
                }
                _ => {
                    self.snapshots.waiting.push(reply);
                    if self.snapshot_due().is_some_and(|due| due <= Instant::now()) {
                        self.publish_snapshot();
                    }
                }
            },
            DriverMsg::ForceRelease {
                resource,
                token,
                operator,
                reply,
            } => {
                let evicted = self.force_release(&resource, token, operator);
                let _ = reply.send(evicted);
            }
            DriverMsg::Probe { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Carries out an operator's forced release: the table ends the holders' sessions and
    /// moves the queues on; the driver closes their connections, as on lease expiry.
    fn force_release(
        &mut self,
        resource: &ResourceName,
        token: Option<FenceToken>,
        operator: SocketAddr,
    ) -> Vec<Evicted> {
        let forced = self.table.handle_force_release(now(), resource, token);
        let mut evicted = Vec::with_capacity(forced.len());
        for release in forced {
            let connection = self.connections.remove(&release.session);
            let log = || {
                warn!(
                    %operator,
                    %resource,
                    token = release.token.0,
                    mode = %release.mode,
                    held_ms = u64::try_from(release.held.as_millis()).unwrap_or(u64::MAX),
                    "an operator forced the release of a lock: its holder's session is ended \
                     and its connection closed"
                );
            };
            match &connection {
                Some(connection) => connection.span.in_scope(log),
                None => log(),
            }
            evicted.push(Evicted {
                release,
                session: connection.map(|connection| {
                    connection.close.cancel();
                    SessionInfo {
                        client: connection.client,
                        peer: connection.peer,
                    }
                }),
            });
        }
        if !evicted.is_empty() {
            self.snapshots.stale = true;
            self.count_sessions();
        }
        self.deliver_effects();
        evicted
    }

    /// When the next snapshot may be built, if anyone waits for one.
    fn snapshot_due(&self) -> Option<Instant> {
        if self.snapshots.waiting.is_empty() {
            return None;
        }
        Some(match self.snapshots.built {
            Some(built) => built + SNAPSHOT_INTERVAL,
            None => Instant::now(),
        })
    }

    /// Builds a snapshot of holders and waiters and answers everyone waiting for one. Walks
    /// the whole table, which is why it runs at most every [`SNAPSHOT_INTERVAL`]; ordering,
    /// filtering and JSON are left to the admin tasks.
    fn publish_snapshot(&mut self) {
        let taken = now();
        let sessions = self
            .connections
            .iter()
            .map(|(id, connection)| {
                let info = SessionInfo {
                    client: connection.client.clone(),
                    peer: connection.peer,
                };
                (*id, info)
            })
            .collect();
        let snapshot = Arc::new(LocksSnapshot::new(
            taken,
            self.table.status(taken, None),
            sessions,
        ));
        debug!(
            resources = snapshot.resources.len(),
            took_us = now().saturating_duration_since(taken).as_micros(),
            "snapshot built"
        );
        self.snapshots.built = Some(Instant::now());
        self.snapshots.stale = false;
        for reply in self.snapshots.waiting.drain(..) {
            let _ = reply.send(Arc::clone(&snapshot));
        }
        self.snapshots.latest = Some(snapshot);
    }

    fn count_sessions(&self) {
        self.metrics
            .sessions
            .set(i64::try_from(self.connections.len()).unwrap_or(i64::MAX));
    }

    /// Runs one request against the table and queues the frame to send back this turn: its
    /// reply, or for an acquire that has to wait, its `queued` event (the reply comes later as
    /// an effect).
    fn execute(&mut self, now: std::time::Instant, session: SessionId, request: Request) {
        let id = request.id;
        match &request.command {
            Command::Hello(hello) if hello.session.is_some_and(|asked| asked != session) => {
                let error = LockError::NoSession(
                    "a session ends with its connection on a single server; start a new one"
                        .to_owned(),
                );
                self.send(session, reply_frame(id, Err(error)));
                return;
            }
            Command::Hello(hello) => {
                if let (Some(client), Some(connection)) =
                    (&hello.client, self.connections.get_mut(&session))
                {
                    connection.client = Some(Arc::from(client.as_str()));
                    connection.span.record("client", client.as_str());
                }
            }
            _ => {}
        }
        let acquire_mode = match &request.command {
            Command::Acquire(acquire) => Some(acquire.mode),
            _ => None,
        };
        let read_of_turn_write = match &request.command {
            Command::Read(read) => self.writes.iter().any(|w| w.resource == read.resource),
            _ => false,
        };
        let (executed, written) =
            execute(&mut self.table, now, session, request, &self.server_name);
        let result = match executed {
            Executed::Queued(position) => {
                self.send(session, ServerFrame::Queued { id, position });
                return;
            }
            Executed::Reply(result) => result,
        };
        if let (Err(err), Some(mode)) = (&result, acquire_mode) {
            // The table observes waits that end; refusals never waited.
            match err {
                LockError::Timeout(_) => self.metrics.try_once_failed(mode),
                LockError::Deadlock { .. } => self.metrics.deadlock(mode),
                _ => {}
            }
        }
        if result.is_ok() && read_of_turn_write {
            self.reads_of_writes.push(self.outgoing.len());
        }
        if let Some(written) = written {
            self.writes.push(TurnWrite {
                resource: written.resource,
                value: written.value,
                previous: written.previous,
                reply: self.outgoing.len(),
            });
        }
        self.send(session, reply_frame(id, result));
    }

    /// Sends the table's effects (this turn) and counts its observations.
    fn deliver_effects(&mut self) {
        while let Some(observation) = self.table.poll_observation() {
            self.metrics.observe(observation);
        }
        while let Some(effect) = self.table.poll_effect() {
            if let Some((session, frame)) = effect_frame(&effect) {
                if let Effect::Granted {
                    resource, token, ..
                } = &effect
                {
                    debug!(session = session.0, %resource, token = token.0, "granted after waiting");
                }
                self.send(session, frame);
                continue;
            }
            if let Effect::SessionExpired { session } = effect {
                self.metrics.expirations.inc();
                if let Some(connection) = self.connections.remove(&session) {
                    connection.span.in_scope(|| {
                        warn!("session expired: nothing heard from the client for its whole lease");
                    });
                    connection.close.cancel();
                    self.count_sessions();
                }
            }
        }
    }

    /// Queues a frame for the end of the turn.
    fn send(&mut self, session: SessionId, frame: ServerFrame) {
        self.outgoing.push((session, frame));
    }
}

fn frame_id(frame: &ServerFrame) -> Option<RequestId> {
    match frame {
        ServerFrame::Ok { id, .. } | ServerFrame::Queued { id, .. } => Some(*id),
        ServerFrame::Err { id, .. } => *id,
        ServerFrame::Saved(_) => None,
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    sleep_until_instant(deadline.map(Instant::from_std)).await;
}

async fn sleep_until_instant(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
