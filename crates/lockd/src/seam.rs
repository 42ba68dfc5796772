//! The seam between the connections (and the admin API) and the backend that answers them: the
//! single server's driver (`single/`) or a cluster node's front end (`cluster/frontend.rs`).
//!
//! Everything the two sides share lives here and nowhere else: the message a connection sends
//! ([`BackendMsg`]), the outbox a backend answers through ([`Outbox`]), and what a backend
//! keeps of each connection ([`ConnectionRecord`]). Connections and the admin API import this
//! module and never a backend; backends import it and never a connection. Neither backend
//! answers any message with a stub: what one cannot do, it refuses with an error that says why.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use protocol::cmd::{Hello, WatchChange, WatchEvent, WatchState};
use protocol::{FenceToken, Request, RequestId, ResourceName, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::core::ForcedRelease;
use crate::metrics::Metrics;
use crate::report::{LocksReport, SessionInfo};
use crate::store::{Snapshot, StoreError, StoredState};

/// What a backend calls a connection: the id it gave the connection at [`BackendMsg::Open`].
/// On a single server it is the connection's session id (a session is a connection); in a
/// cluster it is a key of its own, and the session the connection speaks for may change when
/// `hello` resumes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnectionId(pub(crate) u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A message to the backend, from a connection's task or from the admin API. The backend
/// handles them one at a time, in the order of its one channel.
#[derive(Debug)]
pub(crate) enum BackendMsg {
    /// A connection was accepted: keep its record and answer with its id.
    Open {
        record: ConnectionRecord,
        reply: oneshot::Sender<ConnectionId>,
    },
    /// A parsed request from the connection's client.
    Request {
        connection: ConnectionId,
        request: Request,
        /// When the connection read it, for the request latency metric.
        received: Instant,
    },
    /// The client sent something that was not a valid request; it still counts as alive.
    Activity { connection: ConnectionId },
    /// The connection is gone. The backend keeps its outbox sender until it has handled this,
    /// so every reply to an earlier request is in the outbox before the channel ends.
    Closed { connection: ConnectionId },
    /// The admin API wants holders and waiters (see `report.rs`).
    Report {
        reply: oneshot::Sender<Arc<LocksReport>>,
    },
    /// An operator forces the release of `resource` (only the hold with `token`, if given);
    /// see `LockTable::handle_force_release`. Answered with the holds released.
    ForceRelease {
        resource: ResourceName,
        token: Option<FenceToken>,
        /// Who asked, for the log.
        operator: SocketAddr,
        reply: oneshot::Sender<Result<Vec<Evicted>, ForceReleaseRefused>>,
    },
    /// Readiness: answered as soon as the backend gets to it, which shows it is not stuck, with
    /// the reason if it cannot serve: a commit running for longer than `stuck_after` on a single
    /// server, no leader (or no quorum) in a cluster.
    Probe {
        stuck_after: Duration,
        reply: oneshot::Sender<Result<(), NotReady>>,
    },
    /// An operator's online backup (`GET /v1/backup`): a consistent view of the durable state,
    /// to be copied off the backend.
    Backup {
        reply: oneshot::Sender<Result<Box<dyn Snapshot>, BackupRefused>>,
    },
    /// Load a backup's values into an empty cluster (`POST /v1/restore` on its leader).
    Restore {
        state: StoredState,
        reply: oneshot::Sender<Result<Restored, RestoreRefused>>,
    },
}

/// What a restore loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Values loaded.
    pub(crate) values: u64,
    /// The backup's token reservation: every token granted from now on is above it.
    pub(crate) tokens_above: u64,
}

/// Why a restore was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RestoreRefused {
    /// A single server restores by starting on the backup file.
    #[error(
        "a single server restores by starting on the backup: stop lockd, put the file in its \
         data directory as lockd.redb, start lockd (docs/operations.md)"
    )]
    SingleServer,
    /// Only the leader can propose the values.
    #[error("this node is not the leader; send the restore to the leader{}", leader_hint(.leader.as_deref()))]
    NotLeader {
        /// The leader's client address, when known.
        leader: Option<String>,
    },
    /// A restore only fills an empty cluster: it never replaces values written since.
    #[error("this cluster already holds {0} values; restore into a new cluster")]
    NotEmpty(usize),
    /// The cluster could not commit every part of it; what was committed stays.
    #[error("the cluster could not commit the restore: {0}")]
    NotCommitted(String),
}

/// Why no backup was taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupRefused {
    /// The store could not give a consistent view.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cluster's backup is taken on its leader, which knows every acknowledged write.
    #[error("this node is not the leader; ask the leader for a backup{}", leader_hint(.leader.as_deref()))]
    NotLeader {
        /// The leader's client address, when known.
        leader: Option<String>,
    },
    /// The leader could not confirm that it still leads (no majority answered).
    #[error("the leader could not confirm it still leads, so a backup might miss writes: {0}")]
    Unconfirmed(String),
}

/// Where a backend puts frames for one client; the connection's task writes them, in the order
/// they were put here.
///
/// Replies and `queued` events go through an unbounded channel: the connection bounds them by
/// reading no more requests while `--max-in-flight` are unanswered. Watch events have no such
/// bound (the client asks for them once and they keep coming), so they wait in the
/// connection's [`WatchBacklog`] instead, which keeps at most `--max-watch-backlog` of them per
/// watch: past that, a watch's waiting events are replaced by one `resync`. The channel then
/// carries only markers, each at the place in the stream where a run of the backlog's events
/// belongs: the events put here between two other frames form one run (a *segment*), and its
/// marker hands out those events and no later ones, so that a reply never passes an event made
/// before it, nor an event one made after it.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    sender: mpsc::UnboundedSender<OutboxItem>,
    watch_backlog: Arc<Mutex<WatchBacklog>>,
}

/// What the channel under an [`Outbox`] carries.
#[derive(Debug)]
enum OutboxItem {
    /// A reply or a `queued` event.
    Frame(ServerFrame),
    /// The backlog's events of this segment and earlier ones: take them here, in their order.
    WatchEvents(Segment),
}

/// Numbers the runs of watch events between other frames, from 1 (see [`Outbox`]).
type Segment = u64;

/// How [`Outbox::send_watch_event`] delivered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchSent {
    /// It waits in the backlog behind the watch's earlier events.
    Queued,
    /// The watch's backlog was full: its waiting events and this one were replaced by one
    /// `resync` with the state the backend gave.
    Resynced,
}

impl Outbox {
    /// An outbox whose watches keep at most `max_watch_backlog` events each (at least 1), and
    /// the receiver its connection's task reads.
    pub(crate) fn new(max_watch_backlog: usize, metrics: Arc<Metrics>) -> (Outbox, OutboxReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let watch_backlog = Arc::new(Mutex::new(WatchBacklog {
            events: VecDeque::new(),
            per_watch: HashMap::new(),
            open_segment: None,
            last_segment: 0,
            limit: max_watch_backlog.max(1),
            metrics,
        }));
        let receiver = OutboxReceiver {
            receiver,
            watch_backlog: Arc::clone(&watch_backlog),
            taken: VecDeque::new(),
        };
        (
            Outbox {
                sender,
                watch_backlog,
            },
            receiver,
        )
    }

    /// Queues a frame for the connection, after every watch event queued before it. A closed
    /// connection silently drops it: nobody is left to read it, and the backend learns of the
    /// close through [`BackendMsg::Closed`].
    pub(crate) fn send(&self, frame: ServerFrame) {
        // Under the backlog's lock, so that closing the segment and queueing the frame are one
        // step for every sender of this outbox.
        let mut backlog = self.lock_backlog();
        backlog.open_segment = None;
        let _ = self.sender.send(OutboxItem::Frame(frame));
    }

    /// Queues an event of watch `watch` behind its earlier ones. If the watch already has
    /// `--max-watch-backlog` events waiting, they and this one are dropped and replaced by one
    /// `resync` event built by `resync` (the resource's state now), so the watcher learns that
    /// it missed events and where things stand, and a watcher that never reads costs at most
    /// that many events per watch.
    pub(crate) fn send_watch_event(
        &self,
        watch: RequestId,
        event: WatchEvent,
        resync: impl FnOnce(&ResourceName) -> WatchState,
    ) -> WatchSent {
        let mut backlog = self.lock_backlog();
        let segment = match backlog.open_segment {
            Some(segment) => segment,
            None => {
                backlog.last_segment += 1;
                let segment = backlog.last_segment;
                backlog.open_segment = Some(segment);
                let _ = self.sender.send(OutboxItem::WatchEvents(segment));
                segment
            }
        };
        backlog.push(segment, watch, event, resync)
    }

    fn lock_backlog(&self) -> MutexGuard<'_, WatchBacklog> {
        // Poisoned only if a holder panicked; the backlog's data stays consistent either way.
        self.watch_backlog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's watch events not yet taken by its task, in the order they were made.
#[derive(Debug)]
struct WatchBacklog {
    events: VecDeque<Waiting>,
    /// How many of `events` each watch has.
    per_watch: HashMap<RequestId, usize>,
    /// The segment that new events join: its marker is in the channel, not yet received, and
    /// no other frame was queued after it. `None` when the next event must open a new one.
    open_segment: Option<Segment>,
    /// The last segment opened.
    last_segment: Segment,
    limit: usize,
    metrics: Arc<Metrics>,
}

/// A watch event in the backlog.
#[derive(Debug)]
struct Waiting {
    segment: Segment,
    watch: RequestId,
    event: WatchEvent,
}

impl WatchBacklog {
    fn push(
        &mut self,
        segment: Segment,
        watch: RequestId,
        event: WatchEvent,
        resync: impl FnOnce(&ResourceName) -> WatchState,
    ) -> WatchSent {
        self.metrics.watch_events.inc();
        let waiting = self.per_watch.entry(watch).or_default();
        if *waiting < self.limit {
            *waiting += 1;
            self.events.push_back(Waiting {
                segment,
                watch,
                event,
            });
            self.metrics.watch_backlog_events.inc();
            return WatchSent::Queued;
        }
        // The resync takes the place of the newest event, in the open segment: it shows the
        // state after every frame queued so far. Earlier segments may be left with no events;
        // their markers then hand out nothing.
        let dropped = std::mem::replace(waiting, 1);
        self.events.retain(|waiting| waiting.watch != watch);
        self.metrics
            .watch_backlog_events
            .dec_by(i64::try_from(dropped).unwrap_or(i64::MAX) - 1);
        self.metrics.watch_resyncs.inc();
        let state = resync(&event.resource);
        self.events.push_back(Waiting {
            segment,
            watch,
            event: WatchEvent {
                resource: event.resource,
                change: WatchChange::Resync(state),
            },
        });
        WatchSent::Resynced
    }

    /// Takes the waiting events of `segment` and earlier ones, as frames. Once the open
    /// segment is taken, the next event opens a new one: its marker is gone.
    fn take(&mut self, segment: Segment, into: &mut VecDeque<ServerFrame>) {
        if self.open_segment == Some(segment) {
            self.open_segment = None;
        }
        let mut taken: usize = 0;
        while let Some(waiting) = self.events.front() {
            if waiting.segment > segment {
                break;
            }
            let Some(Waiting { watch, event, .. }) = self.events.pop_front() else {
                break;
            };
            if let Some(count) = self.per_watch.get_mut(&watch) {
                *count -= 1;
                if *count == 0 {
                    self.per_watch.remove(&watch);
                }
            }
            into.push_back(ServerFrame::Watch { id: watch, event });
            taken += 1;
        }
        self.metrics
            .watch_backlog_events
            .dec_by(i64::try_from(taken).unwrap_or(i64::MAX));
    }
}

impl Drop for WatchBacklog {
    fn drop(&mut self) {
        let waiting = i64::try_from(self.events.len()).unwrap_or(i64::MAX);
        self.metrics.watch_backlog_events.dec_by(waiting);
    }
}

/// The connection's end of an [`Outbox`]: its frames in order, watch events included.
#[derive(Debug)]
pub(crate) struct OutboxReceiver {
    receiver: mpsc::UnboundedReceiver<OutboxItem>,
    watch_backlog: Arc<Mutex<WatchBacklog>>,
    /// Watch events taken from the backlog at their marker and not yet handed out: at most one
    /// backlog's worth, since the next is taken only when these are gone.
    taken: VecDeque<ServerFrame>,
}

impl OutboxReceiver {
    /// The next frame; `None` once every [`Outbox`] is dropped and all was received.
    /// Cancel-safe: nothing is taken across an await.
    pub(crate) async fn recv(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(frame) = self.taken.pop_front() {
                return Some(frame);
            }
            let item = self.receiver.recv().await?;
            if let Some(frame) = self.open(item) {
                return Some(frame);
            }
        }
    }

    /// The next frame if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(frame) = self.taken.pop_front() {
                return Some(frame);
            }
            let item = self.receiver.try_recv().ok()?;
            if let Some(frame) = self.open(item) {
                return Some(frame);
            }
        }
    }

    fn open(&mut self, item: OutboxItem) -> Option<ServerFrame> {
        match item {
            OutboxItem::Frame(frame) => Some(frame),
            OutboxItem::WatchEvents(segment) => {
                self.watch_backlog
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(segment, &mut self.taken);
                self.taken.pop_front()
            }
        }
    }
}

/// What a backend keeps of an open connection, beyond what the lock table knows of its session.
#[derive(Debug)]
pub(crate) struct ConnectionRecord {
    pub(crate) peer: SocketAddr,
    /// The client name from the last `hello` that gave one.
    pub(crate) client: Option<Arc<str>>,
    pub(crate) outbox: Outbox,
    /// Cancelled by the backend to close the connection (its session ended, or this node
    /// stopped being the leader).
    pub(crate) close: CancellationToken,
    /// The connection's span; the backend records the session id in it and logs about the
    /// session inside it.
    pub(crate) span: Span,
}

impl ConnectionRecord {
    /// Notes the client name a `hello` gives, for the admin API and the session's log span.
    pub(crate) fn note_hello(&mut self, hello: &Hello) {
        if let Some(client) = &hello.client {
            self.client = Some(Arc::from(client.as_str()));
            self.span.record("client", client.as_str());
        }
    }

    /// Who the connection is, for the admin API.
    pub(crate) fn info(&self) -> SessionInfo {
        SessionInfo {
            client: self.client.clone(),
            peer: self.peer,
        }
    }
}

/// A hold ended by a forced release, with what the backend knew of its session.
#[derive(Debug, Clone)]
pub(crate) struct Evicted {
    pub(crate) release: ForcedRelease,
    /// `None` if the session's connection was already gone.
    pub(crate) session: Option<SessionInfo>,
}

/// Why a forced release was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForceReleaseRefused {
    /// A cluster follower cannot change the table; only the leader can.
    #[error("this node is not the leader; send the forced release to the leader{}", leader_hint(.leader.as_deref()))]
    NotLeader {
        /// The leader's client address, when known.
        leader: Option<String>,
    },
    /// The cluster could not commit it.
    #[error("the cluster could not commit the forced release: {0}")]
    NotCommitted(String),
}

fn leader_hint(leader: Option<&str>) -> String {
    match leader {
        Some(leader) => format!(" (its lock port is {leader})"),
        None => ", once one is elected".to_owned(),
    }
}

/// Why a backend is not ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotReady {
    /// A single server's commit has hung for this long: locks are served, writes wait.
    #[error(
        "a commit to the data directory has run for {} ms (a stuck disk? see \
         lockd_store_commit_seconds in /metrics); writes wait for it",
        .0.as_millis()
    )]
    CommitStuck(Duration),
    /// A cluster node that knows no leader: an election is under way, or no quorum is reachable.
    #[error(
        "this cluster node knows no leader (an election is under way, or no majority is reachable)"
    )]
    NoLeader,
    /// A cluster leader that has not heard from a majority lately may already be deposed.
    #[error("this node is the leader but no majority has acknowledged it for {} ms", .0.as_millis())]
    NoQuorum(Duration),
}

#[cfg(test)]
#[path = "seam_tests.rs"]
mod tests;
