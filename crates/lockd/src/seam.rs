//! The seam between the connections (and the admin API) and the backend that answers them: the
//! single server's driver (`single/`) or a cluster node's front end (`cluster/frontend.rs`).
//!
//! Everything the two sides share lives here and nowhere else: the message a connection sends
//! ([`BackendMsg`]), the outbox a backend answers through ([`Outbox`]), and what a backend
//! keeps of each connection ([`ConnectionRecord`]). Connections and the admin API import this
//! module and never a backend; backends import it and never a connection. Neither backend
//! answers any message with a stub: what one cannot do, it refuses with an error that says why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::cmd::Hello;
use protocol::{FenceToken, Request, ResourceName, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::core::ForcedRelease;
use crate::report::{LocksReport, SessionInfo};
use crate::store::{Snapshot, StoreError};

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
}

/// Why no backup was taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupRefused {
    /// The store could not give a consistent view.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cluster keeps its state in Raft, on every node; an online backup of it is not built.
    #[error(
        "online backup is built for a single server; a cluster keeps every value on each node \
         and survives the loss of a minority of them (docs/operations.md)"
    )]
    Cluster,
}

/// Where a backend puts frames for one client; the connection's task writes them.
#[derive(Debug, Clone)]
pub(crate) struct Outbox(mpsc::UnboundedSender<ServerFrame>);

impl Outbox {
    /// An outbox and the receiver its connection's task reads.
    pub(crate) fn new() -> (Outbox, mpsc::UnboundedReceiver<ServerFrame>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Outbox(sender), receiver)
    }

    /// Queues a frame for the connection. A closed connection silently drops it: nobody is left
    /// to read it, and the backend learns of the close through [`BackendMsg::Closed`].
    pub(crate) fn send(&self, frame: ServerFrame) {
        let _ = self.0.send(frame);
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
