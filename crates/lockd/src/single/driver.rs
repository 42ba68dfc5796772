//! The driver's loop: one task that owns the lock table and is the only code that calls it.
//!
//! It takes [`BackendMsg`]s from one channel, applies requests to the table with the current
//! time (`apply.rs`), routes the replies and the table's deliveries to the connections'
//! outboxes, and sleeps until the table's next deadline. Owning the table in one task (rather
//! than sharing it behind a mutex) gives every input a single total order, which is what makes
//! grants strictly FIFO and tokens strictly increasing without any further locking.
//!
//! What the table wrote is committed by the [`Committer`] on the blocking pool while the loop
//! goes on; the [`CommitPipeline`] holds back the frames that show a value not yet durable.
//! The admin API's reports are rationed by the [`ReportCache`]. Each of them keeps its own
//! state and never calls the driver back.
//!
//! The driver reads the clock: it is the time of every table input. It also wakes every
//! `PAUSE_CHECK` to notice when the server itself stood still (`pause.rs`), and credits such a
//! pause to every lease before it judges anyone silent.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::cmd::{WatchChange, WatchEvent};
use protocol::{
    Command, FenceToken, ReplyBody, Request, RequestId, ResourceName, ServerFrame, SessionId,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::commit::{CommitOutcome, Committer};
use super::pipeline::{CommitId, CommitPipeline, Outgoing};
use super::reports::ReportCache;
use crate::apply::{reply_frame, Answer, Applier, Delivery, RequestFailed};
use crate::core::LockTable;
use crate::metrics::Metrics;
use crate::pause::{PauseDetector, PAUSE_CHECK};
use crate::report::LocksReport;
use crate::seam::{
    BackendMsg, ConnectionId, ConnectionRecord, Evicted, NotReady, Outbox, RestoreRefused,
    WatchSent,
};
use crate::store::Store;

/// Owns the table, the committer and the records of all open connections.
pub(crate) struct Driver {
    table: LockTable,
    committer: Committer,
    pipeline: CommitPipeline,
    /// Open connections, by their session: on a single server a session is a connection.
    connections: HashMap<SessionId, ConnectionRecord>,
    /// Outboxes of closed connections that still have frames waiting for a commit: a client
    /// that sent a write and then closed its side still gets the reply.
    draining: HashMap<SessionId, Outbox>,
    applier: Applier,
    metrics: Arc<Metrics>,
    reports: ReportCache,
    /// When the loop last turned, to tell the server's own pauses from clients' silence.
    pauses: PauseDetector,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("table", &self.table)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// A single server's connection id is its session's id.
fn session_of(connection: ConnectionId) -> SessionId {
    SessionId(connection.0)
}

impl Driver {
    pub(crate) fn new(table: LockTable, store: Box<dyn Store>, metrics: Arc<Metrics>) -> Driver {
        Driver {
            table,
            committer: Committer::new(store),
            pipeline: CommitPipeline::new(),
            connections: HashMap::new(),
            draining: HashMap::new(),
            applier: Applier::new(Arc::clone(&metrics)),
            metrics,
            reports: ReportCache::default(),
            pauses: PauseDetector::default(),
        }
    }

    /// Runs until every sender of `inbox` is gone, which happens after the server has stopped
    /// accepting and every connection task has ended. Everything applied is committed (and
    /// its frames sent) before it returns; the store closes when the driver is dropped.
    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<BackendMsg>) {
        // One timer for the table's deadlines, moved only when the next deadline changes: a
        // new timer per loop would enter and leave Tokio's timer wheel for every request.
        let table_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(table_timer);
        let mut timer_set_for = None;
        let mut pause_check = tokio::time::interval(PAUSE_CHECK);
        pause_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.table.next_deadline();
            if deadline != timer_set_for {
                if let Some(deadline) = deadline {
                    table_timer.as_mut().reset(Instant::from_std(deadline));
                }
                timer_set_for = deadline;
            }
            let report_due = self.reports.due();
            tokio::select! {
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.check_pause();
                    self.handle(msg);
                    // Take whatever else is already waiting before starting a commit, so that
                    // writes that arrived together share it.
                    while let Ok(msg) = inbox.try_recv() {
                        self.handle(msg);
                    }
                }
                outcome = self.committer.finished() => {
                    self.check_pause();
                    self.commit_done(outcome);
                }
                () = &mut table_timer, if deadline.is_some() => {
                    // A pause first: the leases it ran out are credited before they are judged.
                    self.check_pause();
                    self.table.handle_timeout(now());
                    self.reports.mark_stale();
                    self.deliver();
                }
                () = sleep_until(report_due), if report_due.is_some() => self.publish_report(),
                _ = pause_check.tick() => self.check_pause(),
            }
            self.start_commit();
        }
        // The inbox is closed: finish what was applied.
        while self.committer.is_running() {
            let outcome = self.committer.finished().await;
            self.commit_done(outcome);
            self.start_commit();
        }
    }

    /// Notes a turn of the loop. If the server stood still since the last one (stopped,
    /// suspended, starved), that time is credited to every lease: the frames clients sent
    /// meanwhile are still unread, and they renew the leases when the connections deliver them.
    fn check_pause(&mut self) {
        let now = now();
        if let Some(paused) = self.pauses.turn(now) {
            warn!(
                paused_ms = u64::try_from(paused.as_millis()).unwrap_or(u64::MAX),
                "the server stood still (stopped, suspended or starved); that time is not \
                 counted as its clients' silence"
            );
            self.metrics.server_pauses.inc();
            self.table.handle_pause(now, paused);
        }
    }

    fn handle(&mut self, msg: BackendMsg) {
        match msg {
            BackendMsg::Open { record, reply } => {
                let session = self.table.open_session(now());
                record.span.record("session", session.0);
                record.span.in_scope(|| info!("session opened"));
                self.connections.insert(session, record);
                self.reports.mark_stale();
                self.count_sessions();
                // The connection may already have given up waiting; it then closes itself.
                let _ = reply.send(ConnectionId(session.0));
            }
            BackendMsg::Request {
                connection,
                request,
                received,
            } => {
                let session = session_of(connection);
                let now = now();
                self.table.touch(now, session);
                debug!(session = session.0, id = request.id.0, op = %request.command.op(), "request");
                self.reports.mark_stale();
                self.on_request(now, session, request, received);
                self.deliver();
            }
            BackendMsg::Activity { connection } => self.table.touch(now(), session_of(connection)),
            BackendMsg::Closed { connection } => {
                let session = session_of(connection);
                if let Some(record) = self.connections.remove(&session) {
                    record.span.in_scope(|| info!("session closed"));
                    self.count_sessions();
                    if self.pipeline.holds_frames_for(session) {
                        self.draining.insert(session, record.outbox);
                    }
                }
                self.table.handle_session_closed(now(), session);
                self.reports.mark_stale();
                self.deliver();
            }
            BackendMsg::Report { reply } => {
                if self.reports.request(reply) {
                    self.publish_report();
                }
            }
            BackendMsg::ForceRelease {
                resource,
                token,
                operator,
                reply,
            } => {
                let evicted = self.force_release(&resource, token, operator);
                let _ = reply.send(Ok(evicted));
            }
            BackendMsg::Backup { reply } => self.committer.snapshot(reply),
            BackendMsg::Restore { reply, .. } => {
                let _ = reply.send(Err(RestoreRefused::SingleServer));
            }
            BackendMsg::Probe { stuck_after, reply } => {
                let answer = match self.committer.running_for() {
                    Some(running) if running > stuck_after => Err(NotReady::CommitStuck(running)),
                    _ => Ok(()),
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Applies one request and sends the frame that answers it: its reply, or for an acquire
    /// that has to wait, its `queued` event (the reply comes later as a delivery).
    fn on_request(
        &mut self,
        now: std::time::Instant,
        session: SessionId,
        request: Request,
        received: std::time::Instant,
    ) {
        let id = request.id;
        let answers = Some((request.command.op(), received));
        let outgoing = |frame| Outgoing {
            session,
            frame,
            answers,
        };
        match &request.command {
            Command::Hello(hello) if hello.session.is_some_and(|asked| asked != session) => {
                let error = RequestFailed::NoSession(
                    "a session ends with its connection on a single server; start a new one"
                        .to_owned(),
                );
                self.send(outgoing(reply_frame(id, Err(error))), None);
                return;
            }
            Command::Hello(hello) => {
                if let Some(record) = self.connections.get_mut(&session) {
                    record.note_hello(hello);
                }
            }
            _ => {}
        }
        // A read shows the value as it is now, which may not be durable yet.
        let reads_undurable = match &request.command {
            Command::Read(read) => self.pipeline.undurable_write(&read.resource),
            _ => None,
        };
        let (answer, written) = self.applier.apply(&mut self.table, now, session, request);
        let mut result = match answer {
            Answer::Queued(position) => {
                self.send(outgoing(ServerFrame::Queued { id, position }), None);
                return;
            }
            Answer::Later => return,
            Answer::Reply(result) => result,
        };
        if let Ok(ReplyBody::Status(status)) = &mut result {
            let connections = &self.connections;
            crate::report::add_peers(&mut status.resources, |session| {
                connections.get(&session).map(|record| record.peer)
            });
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
        self.send(outgoing(reply_frame(id, result)), shows);
    }

    /// Routes what the table produced since the last call.
    fn deliver(&mut self) {
        // Watches that got a `resync` in this turn: it shows the table as it is after the
        // whole turn, so the turn's later events of those watches are already in it.
        let mut resynced = HashSet::new();
        for delivery in self.applier.take_deliveries(&mut self.table) {
            match delivery {
                Delivery::Watch {
                    session,
                    watch,
                    event,
                } => {
                    if resynced.contains(&(session, watch)) {
                        continue;
                    }
                    if self.send_watch(session, watch, event) == Some(WatchSent::Resynced) {
                        resynced.insert((session, watch));
                    }
                }
                Delivery::Frame(session, frame) => {
                    let outgoing = Outgoing {
                        session,
                        frame,
                        answers: None,
                    };
                    self.send(outgoing, None);
                }
                Delivery::Expired(session) => {
                    if let Some(record) = self.connections.remove(&session) {
                        record.span.in_scope(|| {
                            warn!(
                                "session expired: nothing heard from the client for its whole \
                                 lease"
                            );
                        });
                        record.close.cancel();
                        self.count_sessions();
                    }
                }
            }
        }
    }

    /// Sends an event of `session`'s watch `watch`: now, or, when its resource has a write not
    /// yet durable, once that write's commit has finished (so no watcher sees a value that a
    /// failed commit takes back, and the events after it keep their order). Returns how it was
    /// sent, `None` if it waits for the commit.
    fn send_watch(
        &mut self,
        session: SessionId,
        watch: RequestId,
        event: WatchEvent,
    ) -> Option<WatchSent> {
        let shows = self.pipeline.undurable_write(&event.resource);
        let outgoing = Outgoing {
            session,
            frame: ServerFrame::Watch { id: watch, event },
            answers: None,
        };
        let outgoing = self.pipeline.route(outgoing, shows)?;
        self.send_now(outgoing)
    }

    /// Sends `outgoing` now, or once commit `shows` (which saves the value it shows) has
    /// finished and its session's earlier held frames have gone out (see [`CommitPipeline`]).
    fn send(&mut self, outgoing: Outgoing, shows: Option<CommitId>) {
        if let Some(outgoing) = self.pipeline.route(outgoing, shows) {
            self.send_now(outgoing);
        }
    }

    /// Puts a frame in its session's outbox; a watch event goes through the outbox's watch
    /// backlog, and how it went is returned.
    fn send_now(&mut self, outgoing: Outgoing) -> Option<WatchSent> {
        let Outgoing {
            session,
            frame,
            answers,
        } = outgoing;
        let outbox = match self.connections.get(&session) {
            Some(record) => Some(&record.outbox),
            None => self.draining.get(&session),
        };
        let mut sent = None;
        if let Some(outbox) = outbox {
            match frame {
                ServerFrame::Watch { id, event } => {
                    let (table, pipeline) = (&self.table, &self.pipeline);
                    sent = Some(outbox.send_watch_event(id, event, |resource| {
                        // The value as it is on disk: the events of later writes are held
                        // until their commits, and follow the resync.
                        let mut state = table.watch_state(resource);
                        if let Some(durable) = pipeline.durable_value(resource) {
                            state.value = durable.as_deref().map(str::to_owned);
                        }
                        state
                    }));
                }
                frame => outbox.send(frame),
            }
        }
        if let Some((op, received)) = answers {
            self.metrics
                .request_done(op, now().saturating_duration_since(received));
        }
        sent
    }

    /// Starts committing what was written since the last commit, and the token reservation
    /// the table wants, if there is either and no commit is running.
    fn start_commit(&mut self) {
        if self.committer.is_running() {
            return;
        }
        let tokens_reserved = self.table.tokens_wanted(super::wall_clock_us());
        let Some((id, batch)) = self.pipeline.start_commit(tokens_reserved) else {
            return;
        };
        if let Err(failed) = self.committer.start(id, batch, tokens_reserved) {
            self.commit_done(failed);
        }
    }

    /// Sends the frames that waited for a finished commit. If it failed, every write not yet
    /// durable is undone and every reply that depended on one becomes an `internal` error;
    /// locks keep working.
    fn commit_done(&mut self, outcome: CommitOutcome) {
        self.metrics
            .store_commit(outcome.took, outcome.result.is_ok());
        let released = match outcome.result {
            Ok(()) => {
                let released = self.pipeline.commit_succeeded(outcome.id);
                if let Some(reserved) = outcome.tokens_reserved {
                    debug!(reserved, "fencing tokens reserved");
                    self.table.handle_tokens_reserved(now(), reserved);
                }
                released
            }
            Err(err) => {
                let message = err.to_string();
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
                self.fill_resyncs(released)
            }
        };
        for outgoing in released {
            self.send_now(outgoing);
        }
        self.draining
            .retain(|session, _| self.pipeline.holds_frames_for(*session));
        // Grants that waited for the token reservation.
        self.deliver();
    }

    /// After a failed commit: the watch events that showed or followed an undone value came
    /// back from the pipeline as resyncs without a state. Each watch gets one, with the state as
    /// it is now that the writes are undone.
    fn fill_resyncs(&self, mut released: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut resynced = HashSet::new();
        released.retain_mut(|outgoing| match &mut outgoing.frame {
            ServerFrame::Watch { id, event } if matches!(event.change, WatchChange::Resync(_)) => {
                let first = resynced.insert((outgoing.session, *id));
                if first {
                    let state = self.table.watch_state(&event.resource);
                    event.change = WatchChange::Resync(state);
                }
                first
            }
            _ => true,
        });
        released
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
            let record = self.connections.remove(&release.session);
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
            match &record {
                Some(record) => record.span.in_scope(log),
                None => log(),
            }
            evicted.push(Evicted {
                release,
                session: record.map(|record| {
                    record.close.cancel();
                    record.info()
                }),
            });
        }
        if !evicted.is_empty() {
            self.reports.mark_stale();
            self.count_sessions();
        }
        self.deliver();
        evicted
    }

    /// Builds a report of holders and waiters and answers everyone waiting for one.
    fn publish_report(&mut self) {
        let taken = now();
        let sessions = self
            .connections
            .iter()
            .map(|(session, record)| (*session, record.info()));
        let report = LocksReport::build(taken, &self.table, sessions);
        debug!(
            resources = report.resources.len(),
            took_us = now().saturating_duration_since(taken).as_micros(),
            "locks report built"
        );
        self.reports.publish(report);
    }

    fn count_sessions(&self) {
        self.metrics.set_sessions(self.connections.len());
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
