//! The driver: one task that owns the lock table and the store, and is the only code that
//! calls them.
//!
//! Connections send it [`DriverMsg`]s over one channel; it feeds them to the table with the
//! current time, delivers the table's effects, and sleeps until the table's next deadline.
//! Owning the table in one task (rather than sharing it behind a mutex) gives every input a
//! single total order, which is what makes grants strictly FIFO and tokens strictly increasing
//! without any further locking.
//!
//! Durability: what the table's inputs wrote (values, and a token reservation when the table
//! asks for one) is committed in batches on the blocking pool, one commit at a time, while the
//! driver goes on applying requests; writes applied during a commit share the next one (group
//! commit). A frame that shows a value not yet durable (a write's reply, a read of such a
//! value) is held until its commit has finished, so no reply reveals state that a crash could
//! still lose; everything else goes out at once. [`CommitPipeline`] keeps that bookkeeping.
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

use protocol::{Command, FenceToken, Request, ResourceName, ServerFrame, SessionId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Span};

use crate::connection::Outbox;
use crate::core::{Effect, ForcedRelease, LockError, LockTable};
use crate::execute::{effect_frame, execute, reply_frame, Executed};
use crate::metrics::Metrics;
use crate::pipeline::{CommitId, CommitPipeline, Outgoing};
use crate::snapshot::{LocksSnapshot, SessionInfo};
use crate::store::{Store, StoreError};

/// The shortest time between two snapshots for the admin API. Requests that come sooner, while
/// the table has changed, wait for the next one (so they never see state older than themselves)
/// and share it.
pub(crate) const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

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
    /// Readiness: answered as soon as the driver gets to it, which shows it is not stuck;
    /// with an error if a commit has been running for longer than `stuck_after` (the driver
    /// keeps serving locks during a commit, but writes wait for it).
    Probe {
        stuck_after: Duration,
        reply: oneshot::Sender<Result<(), String>>,
    },
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

/// A commit running on the blocking pool.
struct RunningCommit {
    id: CommitId,
    tokens_reserved: Option<u64>,
    started: std::time::Instant,
    /// Gives the store back with the commit's outcome.
    task: JoinHandle<(Box<dyn Store>, Result<(), StoreError>)>,
}

/// How a commit ended.
struct CommitOutcome {
    id: CommitId,
    tokens_reserved: Option<u64>,
    started: std::time::Instant,
    /// The store, back from the blocking pool; `None` if the commit panicked with it.
    store: Option<Box<dyn Store>>,
    result: Result<(), String>,
}

/// Owns the table, the store and the outboxes of all open sessions.
pub(crate) struct Driver {
    table: LockTable,
    /// `None` while a commit runs on the blocking pool, and for good after a commit panicked.
    store: Option<Box<dyn Store>>,
    connections: HashMap<SessionId, ConnectionHandle>,
    /// Outboxes of closed connections that still have frames waiting for a commit: a client
    /// that sent a write and then closed its side still gets the reply.
    draining: HashMap<SessionId, Outbox>,
    server_name: String,
    pipeline: CommitPipeline,
    /// When the running commit started, for readiness.
    committing_since: Option<std::time::Instant>,
    metrics: Arc<Metrics>,
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
            draining: HashMap::new(),
            server_name: format!("lockd {}", env!("CARGO_PKG_VERSION")),
            pipeline: CommitPipeline::new(),
            committing_since: None,
            metrics,
            snapshots: Snapshots::default(),
        }
    }

    /// Runs until every sender of `inbox` is gone, which happens after the server has stopped
    /// accepting and every connection task has ended. Everything applied is committed (and
    /// its frames sent) before it returns; the store closes when the driver is dropped.
    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<DriverMsg>) {
        let mut running: Option<RunningCommit> = None;
        // One timer for the table's deadlines, moved only when the next deadline changes: a
        // new timer per loop would enter and leave Tokio's timer wheel for every request.
        let table_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(table_timer);
        let mut timer_set_for = None;
        loop {
            let deadline = self.table.next_deadline();
            if deadline != timer_set_for {
                if let Some(deadline) = deadline {
                    table_timer.as_mut().reset(Instant::from_std(deadline));
                }
                timer_set_for = deadline;
            }
            let snapshot_due = self.snapshot_due();
            tokio::select! {
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    // Take whatever else is already waiting before starting a commit, so that
                    // writes that arrived together share it.
                    while let Ok(msg) = inbox.try_recv() {
                        self.handle(msg);
                    }
                }
                outcome = commit_finished(&mut running) => self.commit_done(outcome),
                () = &mut table_timer, if deadline.is_some() => {
                    self.table.handle_timeout(now());
                    self.snapshots.stale = true;
                    self.deliver_effects();
                }
                () = sleep_until_instant(snapshot_due), if snapshot_due.is_some() => {
                    self.publish_snapshot();
                }
            }
            if running.is_none() {
                running = self.start_commit();
            }
        }
        // The inbox is closed: finish what was applied.
        while let Some(commit) = running {
            let outcome = commit_finished(&mut Some(commit)).await;
            self.commit_done(outcome);
            running = self.start_commit();
        }
    }

    /// Starts committing what was written since the last commit, and the token reservation
    /// the table wants, if there is either.
    fn start_commit(&mut self) -> Option<RunningCommit> {
        let tokens_reserved = self.table.tokens_wanted();
        let (id, batch) = self.pipeline.start_commit(tokens_reserved)?;
        let started = now();
        let Some(mut store) = self.store.take() else {
            // An earlier commit panicked and took the store with it: this one fails too.
            self.commit_done(CommitOutcome {
                id,
                tokens_reserved,
                started,
                store: None,
                result: Err("the store is unavailable after an earlier failure".to_owned()),
            });
            return None;
        };
        let task = tokio::task::spawn_blocking(move || {
            let result = store.commit(&batch);
            (store, result)
        });
        self.committing_since = Some(started);
        Some(RunningCommit {
            id,
            tokens_reserved,
            started,
            task,
        })
    }

    /// Sends the frames that waited for a finished commit. If it failed, every write not yet
    /// durable is undone and every reply that depended on one becomes an `internal` error;
    /// locks keep working.
    fn commit_done(&mut self, outcome: CommitOutcome) {
        if outcome.store.is_some() {
            self.store = outcome.store;
        }
        self.committing_since = None;
        self.metrics.store_commit(
            now().saturating_duration_since(outcome.started),
            outcome.result.is_ok(),
        );
        let released = match outcome.result {
            Ok(()) => {
                let released = self.pipeline.commit_succeeded(outcome.id);
                if let Some(reserved) = outcome.tokens_reserved {
                    debug!(reserved, "fencing tokens reserved");
                    self.table.handle_tokens_reserved(now(), reserved);
                }
                released
            }
            Err(message) => {
                let (undone, released) = self.pipeline.commit_failed(outcome.id, &message);
                error!(
                    error = message,
                    writes = undone.len(),
                    "commit failed: every write not yet saved is undone and answered with \
                     `internal`"
                );
                for write in undone {
                    self.table.revert_write(&write.resource, write.previous);
                }
                released
            }
        };
        for outgoing in released {
            self.send_now(outgoing);
        }
        self.draining
            .retain(|session, _| self.pipeline.holds_frames_for(*session));
        // Grants that waited for the token reservation.
        self.deliver_effects();
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
                self.snapshots.stale = true;
                self.execute(now, session, request, (Metrics::op_index(op), received));
                self.deliver_effects();
            }
            DriverMsg::Activity { session } => self.table.touch(now(), session),
            DriverMsg::Closed { session } => {
                if let Some(connection) = self.connections.remove(&session) {
                    connection.span.in_scope(|| info!("session closed"));
                    self.count_sessions();
                    if self.pipeline.holds_frames_for(session) {
                        self.draining.insert(session, connection.outbox);
                    }
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
            DriverMsg::Probe { stuck_after, reply } => {
                let committing = self
                    .committing_since
                    .map(|started| now().saturating_duration_since(started));
                let answer = match committing {
                    Some(running) if running > stuck_after => Err(format!(
                        "a commit to the data directory has run for {} ms (a stuck disk? see \
                         lockd_store_commit_seconds in /metrics); writes wait for it",
                        running.as_millis()
                    )),
                    _ => Ok(()),
                };
                let _ = reply.send(answer);
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

    /// Runs one request against the table and sends the frame that answers it: its reply, or
    /// for an acquire that has to wait, its `queued` event (the reply comes later as an
    /// effect). `answers` is the request's op and arrival, for the latency metric.
    fn execute(
        &mut self,
        now: std::time::Instant,
        session: SessionId,
        request: Request,
        answers: (usize, std::time::Instant),
    ) {
        let id = request.id;
        let reply = |frame| Outgoing {
            session,
            frame,
            answers: Some(answers),
        };
        match &request.command {
            Command::Hello(hello) if hello.session.is_some_and(|asked| asked != session) => {
                let error = LockError::NoSession(
                    "a session ends with its connection on a single server; start a new one"
                        .to_owned(),
                );
                self.send(reply(reply_frame(id, Err(error))), None);
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
        // A read shows the value as it is now, which may not be durable yet.
        let reads_undurable = match &request.command {
            Command::Read(read) => self.pipeline.undurable_write(&read.resource),
            _ => None,
        };
        let (executed, written) =
            execute(&mut self.table, now, session, request, &self.server_name);
        let result = match executed {
            Executed::Queued(position) => {
                let queued = ServerFrame::Queued { id, position };
                self.send(reply(queued), None);
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
        // The commit that saves the value this reply reports or shows, if not yet durable.
        let shows = match written {
            Some(written) => Some(self.pipeline.write_applied(
                written.resource,
                written.value,
                written.previous,
            )),
            None if result.is_ok() => reads_undurable,
            None => None,
        };
        self.send(reply(reply_frame(id, result)), shows);
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
                let outgoing = Outgoing {
                    session,
                    frame,
                    answers: None,
                };
                self.send(outgoing, None);
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

    /// Sends `outgoing` now, or once commit `shows` (which saves the value it shows) has
    /// finished and its session's earlier held frames have gone out (see [`CommitPipeline`]).
    fn send(&mut self, outgoing: Outgoing, shows: Option<CommitId>) {
        if let Some(outgoing) = self.pipeline.route(outgoing, shows) {
            self.send_now(outgoing);
        }
    }

    fn send_now(&mut self, outgoing: Outgoing) {
        let Outgoing {
            session,
            frame,
            answers,
        } = outgoing;
        let outbox = match self.connections.get(&session) {
            Some(connection) => Some(&connection.outbox),
            None => self.draining.get(&session),
        };
        if let Some(outbox) = outbox {
            outbox.send(frame);
        }
        if let Some((op, received)) = answers {
            self.metrics
                .request_done(op, now().saturating_duration_since(received));
        }
    }
}

/// Waits for the running commit, if any (forever if none), and takes it once it has finished.
/// Cancel-safe: dropped before the commit finishes, it leaves the commit in `running`.
async fn commit_finished(running: &mut Option<RunningCommit>) -> CommitOutcome {
    let Some(commit) = running.as_mut() else {
        return std::future::pending().await;
    };
    let joined = (&mut commit.task).await;
    let commit = running.take().expect("the commit just finished");
    let (store, result) = match joined {
        Ok((store, result)) => (Some(store), result.map_err(|err| err.to_string())),
        Err(err) => (None, Err(format!("the store failed: {err}"))),
    };
    CommitOutcome {
        id: commit.id,
        tokens_reserved: commit.tokens_reserved,
        started: commit.started,
        store,
        result,
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until_instant(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
