//! The cluster front end: what the driver is to a single server, for a cluster node.
//!
//! Connections talk to it through the same seam as to the driver (`BackendMsg` in, frames out
//! through their `Outbox`). Instead of calling the table, it turns every request into a log
//! entry and proposes it to Raft; the reply comes from the state machine when the entry is
//! committed and applied (`machine.rs`), so every reply reflects state a majority has on disk.
//!
//! Reads (`read`, `validate`, `status`, `ping`) take no log entry: the leader answers them from
//! the state it has applied, once it has confirmed that it still leads (openraft's
//! `ensure_linearizable`: a heartbeat round to a majority, then applying up to the commit index
//! it had when the read arrived; Raft's ReadIndex). One check covers every read that arrived
//! while the one before was out, so reads cost a round trip shared by many, and no fsync. A
//! connection's requests are still answered in the order they arrived: a read waits for the
//! connection's writes in flight by going through the log behind them, and the connection's
//! next requests wait for a read's answer. A deposed leader cannot confirm, so it never answers
//! a read from stale state; a check that finds no majority sends its reads through the log.
//!
//! Only the leader serves. A follower answers every request with `not_leader`, naming the
//! leader's client address. While it knows no leader, or its leader has missed its heartbeats
//! (it may have died, and an election is coming), it holds the request until it hears from a
//! leader, for up to twice the election timeout: the client is then sent to the new leader as
//! soon as there is one, rather than to a dead node or into a poll with growing pauses (see
//! `leader_contact.rs`). When this node stops being leader it closes its
//! clients' connections, so they find the new leader and resume their sessions there.
//!
//! A session outlives its connection until its lease runs out (unlike on a single server,
//! where a disconnect frees its locks at once): a client cannot tell a failover from a dead
//! server, and the lease is what lets it come back and find its locks and places in line.
//!
//! The leader also keeps the sessions' leases ([`LeaseKeeper`]) and proposes `Expire` and
//! `Tick` entries: the only ways time moves in the replicated table.
//!
//! It reads the clock because it is where a cluster's time comes from: the wall clock stamps
//! each entry (`Proposal::at_ms`, never going back), and the monotonic clock times the leases
//! and notices when the leader itself stood still (`pause.rs`): such a pause is credited to
//! every lease before the leader judges anyone silent.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::{RaftMetrics, ReadPolicy, ServerState};
use protocol::{
    Command, ErrorCode, FenceToken, Op, ReplyBody, Request, RequestId, ResourceName, ServerFrame,
    SessionId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::leader_contact::LeaderContact;
use super::leases::LeaseKeeper;
use super::machine::{lock_replica, Replica, Route};
use super::membership::{self, leader_node, not_leader};
use super::node::ClusterNode;
use super::resume::{ResumeCheck, ResumeSecret};
use super::types::{Applied, EntryOp, LockdNetwork, LockdNode, LockdRaft, Proposal, TypeConfig};
use crate::apply::{reply_frame, ReadOnly, RequestFailed};
use crate::core::ForcedRelease;
use crate::credentials::LiveCredentials;
use crate::metrics::Metrics;
use crate::pause::PauseDetector;
use crate::report::{LocksReport, SessionInfo};
use crate::seam::{
    BackendMsg, BackupRefused, ConnectionId, ConnectionRecord, Evicted, ForceReleaseRefused,
    NotReady, RestoreRefused, Restored,
};
use crate::store::{Snapshot, StateCopy, StoredState};

/// How often the leader looks for expired leases and waits that timed out. Lease expiry and
/// acquire timeouts are therefore late by up to this much in cluster mode.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How often connections that speak for no session are checked for silence: such a
/// connection is closed up to this long after its lease of silence.
const UNBOUND_SWEEP: Duration = Duration::from_millis(500);

/// One client connection to this node.
#[derive(Debug)]
struct Connection {
    record: ConnectionRecord,
    /// The replicated session this connection speaks for, once its first request arrived.
    session: Option<SessionId>,
    /// When this node last heard from the client: a connection that speaks for no session
    /// has no lease in the table, so this is what closes it when it falls silent.
    heard: std::time::Instant,
    /// Its operations proposed to the log and not yet settled: a read waits behind them by
    /// going through the log too.
    unsettled: usize,
    /// It has a read waiting for a leadership check; what it sends meanwhile waits in `held`,
    /// so that it is answered after the read.
    reading: bool,
    held: VecDeque<(Request, std::time::Instant)>,
}

/// A read answered without a log entry, waiting for the leadership check that covers it.
#[derive(Debug)]
struct LocalRead {
    connection: ConnectionId,
    session: SessionId,
    id: RequestId,
    read: ReadOnly,
    /// The op and when its connection read it, for the request latency metric.
    op: Op,
    received: std::time::Instant,
}

/// How a leadership check for reads ended.
#[derive(Debug)]
enum LeadershipCheck {
    /// A majority still follows this node, and it has applied everything committed when the
    /// check began.
    Confirmed,
    /// Another node leads (named if known).
    NotLeader(Option<LockdNode>),
    /// No majority answered in time; why.
    Unconfirmed(String),
}

/// A request a follower holds until it hears from a leader.
#[derive(Debug)]
struct AwaitingLeader {
    connection: ConnectionId,
    request: Request,
    received: std::time::Instant,
    /// When it began to wait.
    since: std::time::Instant,
}

/// Requests held for want of a leader, at most: beyond, a follower answers `not_leader` at
/// once, as it did before it held any (each costs a connection, which has its own limit).
const MAX_AWAITING_LEADER: usize = 65_536;

/// Leadership checks under way (one at a time).
type LeadershipChecks =
    FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = LeadershipCheck> + Send>>>;

/// Most operations in one log entry, and most bytes of them: a batch must stay far below the
/// peers' frame limit (`wire::MAX_FRAME_BYTES`, 64 MiB) and leave room in the token space (see
/// `machine.rs`). An entry is closed once it passes `MAX_BATCH_BYTES`, so it is at most that
/// plus one request; `main.rs` keeps a request (`--max-frame-bytes`) within
/// `node::MAX_CLUSTER_FRAME_BYTES` in cluster mode, so an entry always fits a peer frame.
pub(crate) const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Entries proposed and not yet applied, at most (unless a batch is full). While they are on
/// their way, new requests gather into the next entry: group commit, as the single server's
/// driver does with its turns. openraft appends and replicates entry by entry, so fewer,
/// larger entries are what makes a busy cluster fast.
const MAX_OUTSTANDING_BATCHES: usize = 2;

/// Who is waiting for an operation of a batch: its connection, and its request if it has one
/// (an `Open` has none), to be told if the batch fails.
#[derive(Debug, Clone, Copy, Default)]
struct Proposer {
    /// `None` for the leader's own entries (`Expire`, `Tick`) and an operator's.
    connection: Option<ConnectionId>,
    request: Option<RequestId>,
    /// The request's op and when its connection read it, for the request latency metric:
    /// counted once the batch's outcome is known, when its reply has gone out.
    answers: Option<(Op, std::time::Instant)>,
    /// An operator's forced release: the key of its waiting answer in
    /// [`Frontend::force_releases`].
    force_release: Option<u64>,
    /// A part of an operator's restore: the key of its waiting answer in [`Frontend::restores`].
    restore: Option<u64>,
}

/// An operator's restore: its parts still to be applied, and the answer waiting for them.
#[derive(Debug)]
struct RestoreWait {
    remaining: usize,
    restored: Restored,
    reply: oneshot::Sender<Result<Restored, RestoreRefused>>,
}

/// The most bytes of values in one `RestoreValues` operation: a few go into one entry, which
/// stays far below the peers' frame limit.
const RESTORE_PART_BYTES: usize = 1 << 20;

/// An operator's forced release, waiting for its entry to be applied.
#[derive(Debug)]
struct ForceReleaseWait {
    resource: ResourceName,
    operator: SocketAddr,
    /// Who the resource's holders were when it was proposed: their connections close when the
    /// entry is applied, and the answer still names them.
    holders: HashMap<SessionId, SessionInfo>,
    reply: oneshot::Sender<Result<Vec<Evicted>, ForceReleaseRefused>>,
}

/// A batch whose outcome is awaited: on failure every request in it gets an error.
type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Vec<Proposer>, Outcome)> + Send>>;

/// How a proposal ended, as far as the front end cares.
#[derive(Debug)]
enum Outcome {
    Applied(Applied),
    NotLeader(Option<LockdNode>),
    Failed(String),
}

/// Whether a resume has already waited for this node to apply everything committed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumeStage {
    AsReceived,
    AfterBarrier,
}

/// A resume of a session this node did not know, once the node has caught up with the log
/// (`barrier` is `Ok`), or found it may not lead (`Err`, with the leader if known).
#[derive(Debug)]
struct DeferredResume {
    connection: ConnectionId,
    request: Request,
    received: std::time::Instant,
    barrier: Result<(), Option<LockdNode>>,
}

/// Resumes waiting for this node to catch up with the log.
type DeferredResumes =
    FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = DeferredResume> + Send>>>;

/// Why a proposal was not applied.
#[derive(Debug)]
enum Failure {
    NotLeader(Option<LockdNode>),
    Failed(String),
}

/// The front end of a cluster node; see the module docs.
pub(crate) struct Frontend {
    raft: LockdRaft,
    /// Raft's network, for `add_node`'s check that the new node answers.
    network: LockdNetwork,
    node_id: u64,
    replica: Arc<Mutex<Replica>>,
    connections: HashMap<ConnectionId, Connection>,
    /// Which connection speaks for each bound session (a resumed session moves).
    owners: HashMap<SessionId, ConnectionId>,
    leases: LeaseKeeper,
    /// How long a connection that speaks for no session may stay silent: the default lease,
    /// as for a session on a single server.
    unbound_idle: Duration,
    /// Holds the admin credential membership changes must carry (none refuses them all).
    credentials: Arc<LiveCredentials>,
    /// When `close_silent_unbound` last walked the connections.
    last_unbound_sweep: Option<std::time::Instant>,
    /// When the loop last turned (every `TICK` at least), to tell the leader's own pauses from
    /// clients' silence.
    pauses: PauseDetector,
    leader: bool,
    /// This leader proposed `EntryOp::ClockTokens` (the cluster did not count tokens by the
    /// clock yet): not again until it is applied, or until leadership changes.
    clock_tokens_proposed: bool,
    /// The latest entry time proposed, so entry times never go back.
    last_at_ms: u64,
    pending: FuturesUnordered<Pending>,
    deferred_resumes: DeferredResumes,
    /// Reads that arrived since the last leadership check began; the next one covers them.
    reads_arrived: Vec<LocalRead>,
    /// Reads the check under way covers.
    reads_checked: Vec<LocalRead>,
    leadership_checks: LeadershipChecks,
    /// On a follower: requests held until a leader is heard from (see the module docs).
    awaiting_leader: Vec<AwaitingLeader>,
    leader_contact: LeaderContact,
    /// Set while this node's own log write hangs (`node.rs`, `watch_own_disk`).
    disk_stalled: Arc<std::sync::atomic::AtomicBool>,
    heartbeat: Duration,
    /// How long a request is held at most for want of a leader.
    leader_wait: Duration,
    /// How long a follower's leader may be silent before this node stops naming it
    /// ([`Frontend::known_leader`]): the election timeout.
    leader_lost_after: Duration,
    /// Operations gathered in this turn, proposed together as one entry.
    batch: Vec<EntryOp>,
    batch_proposers: Vec<Proposer>,
    batch_bytes: usize,
    /// Forced releases proposed and not yet applied, by key.
    force_releases: HashMap<u64, ForceReleaseWait>,
    next_force_release: u64,
    /// Parts of restores waiting for room in an entry (a restore is split, so that no entry
    /// grows past `MAX_BATCH_BYTES` by much), and the restores not yet all applied, by key.
    restore_parts: VecDeque<(Proposer, EntryOp)>,
    restores: HashMap<u64, RestoreWait>,
    next_restore: u64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("node_id", &self.node_id)
            .field("leader", &self.leader)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Frontend {
    pub(crate) fn new(
        node: &ClusterNode,
        metrics: Arc<Metrics>,
        unbound_idle: Duration,
        credentials: Arc<LiveCredentials>,
    ) -> Self {
        Frontend {
            raft: node.raft.clone(),
            network: node.network.clone(),
            node_id: node.node_id,
            replica: Arc::clone(&node.replica),
            awaiting_leader: Vec::new(),
            leader_contact: node.leader_contact.clone(),
            disk_stalled: Arc::clone(&node.disk_stalled),
            heartbeat: node.heartbeat,
            leader_wait: node.election_timeout * 2,
            leader_lost_after: node.election_timeout,
            credentials,
            unbound_idle,
            last_unbound_sweep: None,
            connections: HashMap::new(),
            owners: HashMap::new(),
            leases: LeaseKeeper::default(),
            pauses: PauseDetector::default(),
            leader: false,
            clock_tokens_proposed: false,
            last_at_ms: 0,
            pending: FuturesUnordered::new(),
            deferred_resumes: FuturesUnordered::new(),
            reads_arrived: Vec::new(),
            reads_checked: Vec::new(),
            leadership_checks: FuturesUnordered::new(),
            batch: Vec::new(),
            batch_proposers: Vec::new(),
            batch_bytes: 0,
            force_releases: HashMap::new(),
            next_force_release: 0,
            restore_parts: VecDeque::new(),
            restores: HashMap::new(),
            next_restore: 0,
            metrics,
        }
    }

    /// Runs until every sender of `inbox` is gone (the server stopped and its connections
    /// ended).
    pub(crate) async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<BackendMsg>) {
        let mut metrics = self.raft.metrics();
        self.observe_role(&metrics.borrow_and_update().clone());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.check_pause();
                    self.handle(msg);
                    // Everything already waiting joins the same entry: one append, one round
                    // of replication for all of them.
                    while let Ok(msg) = inbox.try_recv() {
                        self.handle(msg);
                        if self.batch_full() {
                            self.flush().await;
                        }
                    }
                }
                Some((proposers, outcome)) = self.pending.next(), if !self.pending.is_empty() => {
                    self.check_pause();
                    self.settle(&proposers, outcome);
                }
                Some(deferred) = self.deferred_resumes.next(),
                    if !self.deferred_resumes.is_empty() =>
                {
                    self.check_pause();
                    self.on_deferred_resume(deferred);
                }
                Some(check) = self.leadership_checks.next(),
                    if !self.leadership_checks.is_empty() =>
                {
                    self.check_pause();
                    self.on_leadership_checked(check);
                }
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let latest = metrics.borrow_and_update().clone();
                    self.observe_role(&latest);
                }
                _ = tick.tick() => {
                    // A pause first: the leases it ran out are credited before they are judged.
                    self.check_pause();
                    self.on_tick();
                }
            }
            self.flush().await;
            self.check_leadership_for_reads();
        }
    }

    /// Notes a turn of the loop; if this node stood still since the last one, credits that
    /// time to every lease (see `pause.rs`).
    fn check_pause(&mut self) {
        let now = Instant::now().into_std();
        if let Some(paused) = self.pauses.turn(now) {
            warn!(
                paused_ms = u64::try_from(paused.as_millis()).unwrap_or(u64::MAX),
                leader = self.leader,
                "this node stood still (stopped, suspended or starved); that time is not \
                 counted as its clients' silence"
            );
            self.metrics.server_pauses.inc();
            self.leases.paused(now, paused);
            // Connections that speak for no session are judged by the same clock.
            for connection in self.connections.values_mut() {
                connection.heard += paused;
            }
        }
    }

    /// Follows this node's role: becoming leader restarts every lease (grace period); losing
    /// it closes every client connection, so that clients go to the new leader.
    ///
    /// openraft 0.10 refuses a leader's writes until a majority has acknowledged it (its
    /// leader lease, `ForwardReason::LeaseExpired`), which 0.9 did not: a node elected a moment
    /// ago would refuse the first entries it was given. So this node counts as leader once a
    /// majority acknowledged it (or it is the only voter); until then its clients' requests
    /// wait, as while no leader is known.
    fn observe_role(&mut self, metrics: &RaftMetrics<TypeConfig>) {
        self.metrics
            .raft_term
            .set(i64::try_from(metrics.current_term).unwrap_or(i64::MAX));
        let sole_voter = {
            let mut voters = metrics.membership_config.membership().voter_ids();
            voters.next() == Some(self.node_id) && voters.next().is_none()
        };
        let leader = metrics.state == ServerState::Leader
            && metrics.current_leader == Some(self.node_id)
            && (metrics.last_quorum_acked.is_some() || sole_voter);
        if leader == self.leader {
            self.release_awaiting_leader();
            return;
        }
        self.leader = leader;
        self.clock_tokens_proposed = false;
        if leader {
            info!(term = metrics.current_term, "this node is now the leader");
            self.leases.reset();
            // Before any request it serves, so that their grants follow the clock already.
            self.switch_to_clock_tokens();
        } else {
            info!(
                leader = ?metrics.current_leader,
                "this node is not the leader: closing its {} client connection(s)",
                self.connections.len()
            );
            let mut replica = lock_replica(&self.replica);
            replica.routes.clear();
            drop(replica);
            for connection in self.connections.values() {
                connection.record.close.cancel();
            }
            self.owners.clear();
            self.count_sessions();
        }
        self.release_awaiting_leader();
    }

    fn handle(&mut self, msg: BackendMsg) {
        match msg {
            BackendMsg::Open { record, reply } => {
                let id = self.unused_connection_id();
                record.span.record("session", id.0);
                let connection = Connection {
                    record,
                    session: None,
                    heard: Instant::now().into_std(),
                    unsettled: 0,
                    reading: false,
                    held: VecDeque::new(),
                };
                self.connections.insert(id, connection);
                let _ = reply.send(id);
            }
            BackendMsg::Request {
                connection,
                request,
                received,
            } => self.on_request(connection, request, received),
            BackendMsg::Activity { connection } => {
                let now = Instant::now().into_std();
                if let Some(connection) = self.connections.get_mut(&connection) {
                    connection.heard = now;
                    if let Some(session) = connection.session {
                        self.leases.heard(now, session);
                    }
                }
            }
            BackendMsg::Closed { connection } => self.on_closed(connection),
            BackendMsg::Report { reply } => {
                let _ = reply.send(Arc::new(self.locks_report()));
            }
            BackendMsg::ForceRelease {
                resource,
                token,
                operator,
                reply,
            } => self.on_force_release(resource, token, operator, reply),
            BackendMsg::Probe { stuck_after, reply } => {
                let _ = reply.send(self.readiness(stuck_after));
            }
            BackendMsg::Backup { reply } => self.on_backup(reply),
            BackendMsg::Restore { state, reply } => self.on_restore(state, reply),
        }
    }

    /// A backup: on the leader, once a majority confirmed that it still leads and it has
    /// applied everything committed before (the leadership check of a read), a copy of its
    /// table's durable part, which holds every write acknowledged before the request. The
    /// check runs on a task of its own; the copy takes the replica's lock for as long as it
    /// takes to clone the values.
    fn on_backup(&self, reply: oneshot::Sender<Result<Box<dyn Snapshot>, BackupRefused>>) {
        if !self.leader {
            let leader = self.known_leader().map(|node| node.client);
            let _ = reply.send(Err(BackupRefused::NotLeader { leader }));
            return;
        }
        let raft = self.raft.clone();
        let replica = Arc::clone(&self.replica);
        tokio::spawn(async move {
            let copy = match check_leadership(raft).await {
                LeadershipCheck::Confirmed => {
                    let (values, tokens_reserved) = lock_replica(&replica).table.durable_state();
                    let state = StoredState {
                        values,
                        tokens_reserved,
                    };
                    Ok(Box::new(StateCopy { state }) as Box<dyn Snapshot>)
                }
                LeadershipCheck::NotLeader(leader) => Err(BackupRefused::NotLeader {
                    leader: leader.map(|node| node.client),
                }),
                LeadershipCheck::Unconfirmed(why) => Err(BackupRefused::Unconfirmed(why)),
            };
            let _ = reply.send(copy);
        });
    }

    /// An operator's restore of a backup into this cluster, which must hold no value: the
    /// values go into the log in parts (`EntryOp::RestoreValues`), a few per entry, and the
    /// answer comes once every part is applied.
    fn on_restore(
        &mut self,
        state: StoredState,
        reply: oneshot::Sender<Result<Restored, RestoreRefused>>,
    ) {
        if !self.leader {
            let leader = self.known_leader().map(|node| node.client);
            let _ = reply.send(Err(RestoreRefused::NotLeader { leader }));
            return;
        }
        let held = lock_replica(&self.replica).table.value_count();
        if held > 0 {
            let _ = reply.send(Err(RestoreRefused::NotEmpty(held)));
            return;
        }
        let key = self.next_restore;
        self.next_restore += 1;
        let proposer = Proposer {
            restore: Some(key),
            ..Proposer::default()
        };
        let tokens_above = state.tokens_reserved;
        let restored = Restored {
            values: state.values.len() as u64,
            tokens_above,
        };
        let mut parts = Vec::new();
        let mut part = Vec::new();
        let mut part_bytes = 0;
        for (resource, value) in state.values {
            part_bytes += resource.as_str().len() + value.len();
            part.push((resource, value.to_string()));
            if part_bytes >= RESTORE_PART_BYTES {
                parts.push(std::mem::take(&mut part));
                part_bytes = 0;
            }
        }
        // The last part, even an empty one: it raises the token floor of an empty backup too.
        parts.push(part);
        info!(
            values = restored.values,
            tokens_above,
            parts = parts.len(),
            "restoring a backup into the cluster"
        );
        self.restores.insert(
            key,
            RestoreWait {
                remaining: parts.len(),
                restored,
                reply,
            },
        );
        for values in parts {
            let op = EntryOp::RestoreValues {
                values,
                tokens_above,
            };
            self.restore_parts.push_back((proposer, op));
        }
    }

    /// Moves parts of restores into this turn's entry while it has room, and while few
    /// entries are on their way (a large restore must not crowd out clients' requests).
    fn take_restore_parts(&mut self) {
        while self.pending.len() < MAX_OUTSTANDING_BATCHES && !self.batch_full() {
            let Some((proposer, op)) = self.restore_parts.pop_front() else {
                return;
            };
            self.add_to_batch(proposer, op);
        }
    }

    /// A part of restore `key` was applied, or failed (then the restore fails; what was
    /// applied stays, and its parts not yet proposed are dropped).
    fn settle_restore_part(&mut self, key: u64, failure: Option<RestoreRefused>) {
        match failure {
            None => {
                let Some(wait) = self.restores.get_mut(&key) else {
                    return;
                };
                wait.remaining -= 1;
                if wait.remaining == 0 {
                    if let Some(wait) = self.restores.remove(&key) {
                        info!(values = wait.restored.values, "restore applied");
                        let _ = wait.reply.send(Ok(wait.restored));
                    }
                }
            }
            Some(refused) => {
                self.restore_parts
                    .retain(|(proposer, _)| proposer.restore != Some(key));
                if let Some(wait) = self.restores.remove(&key) {
                    warn!(error = %refused, "a restore failed");
                    let _ = wait.reply.send(Err(refused));
                }
            }
        }
    }

    /// Ready when this node can serve or redirect a client: it knows a leader, and if it is
    /// the leader, a majority acknowledged it within `stuck_after` (else it may be deposed).
    fn readiness(&self, stuck_after: Duration) -> Result<(), NotReady> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if self.leader {
            let since_ack = metrics
                .last_quorum_acked
                .as_ref()
                .map(|acked| openraft::Instant::elapsed(&**acked));
            return match since_ack {
                Some(since) if since > stuck_after => Err(NotReady::NoQuorum(since)),
                _ => Ok(()),
            };
        }
        match self.known_leader() {
            Some(_) => Ok(()),
            None => Err(NotReady::NoLeader),
        }
    }

    /// The leader to name to clients and operators: openraft's current leader, unless this node
    /// follows it and has heard nothing from it for an election timeout. openraft keeps naming
    /// a leader until another one is elected, and with pre-votes a follower cut off from its
    /// leader changes nothing on itself (its pre-votes fail), so it would name that leader
    /// for as long as the cut lasts; the silence is what says the leader is lost to it.
    fn known_leader(&self) -> Option<LockdNode> {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow_watched();
        let leader = metrics.current_leader?;
        let lost = leader != self.node_id
            && self
                .leader_contact
                .last()
                .is_none_or(|heard| heard.elapsed() > self.leader_lost_after);
        if lost {
            return None;
        }
        leader_node(&metrics)
    }

    /// An operator's forced release: proposed as an entry like any request, so that every node
    /// ends the same sessions at the same point of the log. Only the leader can propose it.
    fn on_force_release(
        &mut self,
        resource: ResourceName,
        token: Option<FenceToken>,
        operator: SocketAddr,
        reply: oneshot::Sender<Result<Vec<Evicted>, ForceReleaseRefused>>,
    ) {
        if !self.leader {
            let leader = self.known_leader().map(|node| node.client);
            let _ = reply.send(Err(ForceReleaseRefused::NotLeader { leader }));
            return;
        }
        let key = self.next_force_release;
        self.next_force_release += 1;
        let holders = self.holders_info(&resource);
        let op = EntryOp::ForceRelease {
            resource: resource.clone(),
            token,
        };
        self.force_releases.insert(
            key,
            ForceReleaseWait {
                resource,
                operator,
                holders,
                reply,
            },
        );
        self.add_to_batch(
            Proposer {
                connection: None,
                request: None,
                answers: None,
                force_release: Some(key),
                restore: None,
            },
            op,
        );
    }

    fn on_request(
        &mut self,
        connection_id: ConnectionId,
        request: Request,
        received: std::time::Instant,
    ) {
        self.serve_request(connection_id, request, received, ResumeStage::AsReceived);
    }

    /// Puts `frame` on the connection's outbox, if it is still open.
    fn send_to(&self, connection_id: ConnectionId, frame: ServerFrame) {
        if let Some(connection) = self.connections.get(&connection_id) {
            connection.record.outbox.send(frame);
        }
    }

    /// Serves one request; `stage` says whether a resume in it was already deferred until
    /// this node had applied everything committed before it.
    fn serve_request(
        &mut self,
        connection_id: ConnectionId,
        mut request: Request,
        received: std::time::Instant,
        stage: ResumeStage,
    ) {
        let Some(connection) = self.connections.get_mut(&connection_id) else {
            return;
        };
        connection.heard = Instant::now().into_std();
        if connection.reading {
            connection.held.push_back((request, received));
            return;
        }
        if let Command::ClusterStatus = request.command {
            // Any node answers for itself, so that an operator can ask a follower too.
            let mut status = membership::status(&self.raft.metrics().borrow_watched());
            if self.known_leader().is_none() {
                status.leader = None;
            }
            self.send_to(
                connection_id,
                ServerFrame::Ok {
                    id: request.id,
                    body: ReplyBody::Cluster(status),
                },
            );
            return;
        }
        if !self.leader {
            let leader = self.known_leader();
            let now = std::time::Instant::now();
            let in_doubt = leader.is_none() || self.leader_contact.in_doubt(now, self.heartbeat);
            if in_doubt && self.awaiting_leader.len() < MAX_AWAITING_LEADER {
                self.awaiting_leader.push(AwaitingLeader {
                    connection: connection_id,
                    request,
                    received,
                    since: now,
                });
                self.count_awaiting_leader();
                return;
            }
            self.send_to(connection_id, not_leader(Some(request.id), leader));
            return;
        }
        if let Some(given) = membership::admin_token_of(&request.command) {
            let expected = self.credentials.current().admin_token;
            if let Err(refused) = membership::authorize(expected.as_deref(), given) {
                warn!(
                    peer = %connection.record.peer,
                    op = %request.command.op(),
                    "refused a membership change: {refused}"
                );
                connection.record.outbox.send(ServerFrame::error(
                    Some(request.id),
                    ErrorCode::Unauthorized,
                    refused,
                ));
                return;
            }
        }
        match request.command {
            Command::AddNode(add) => {
                let outbox = connection.record.outbox.clone();
                membership::spawn_add(
                    self.raft.clone(),
                    self.network.clone(),
                    outbox,
                    request.id,
                    add,
                );
                return;
            }
            Command::RemoveNode(remove) => {
                let outbox = connection.record.outbox.clone();
                membership::spawn_remove(self.raft.clone(), outbox, request.id, remove);
                return;
            }
            _ => {}
        }
        let now = Instant::now().into_std();
        let resume = match &request.command {
            Command::Hello(hello) => hello.session,
            _ => None,
        };
        let bound = connection.session;
        let session = match (bound, resume) {
            (Some(bound), Some(asked)) if bound != asked => {
                connection.record.outbox.send(ServerFrame::error(
                    Some(request.id),
                    ErrorCode::NoSession,
                    format!("this connection already speaks for session {bound}"),
                ));
                return;
            }
            (Some(bound), _) => {
                if connection.unsettled == 0 {
                    match ReadOnly::from_command(request.command) {
                        Ok(read) => {
                            connection.reading = true;
                            self.leases.heard(now, bound);
                            self.reads_arrived.push(LocalRead {
                                connection: connection_id,
                                session: bound,
                                id: request.id,
                                op: read.op(),
                                read,
                                received,
                            });
                            return;
                        }
                        Err(command) => request.command = command,
                    }
                }
                bound
            }
            (None, Some(asked)) => {
                if !self.take_over(connection_id, asked, &request, received, stage) {
                    return;
                }
                asked
            }
            (None, None) => {
                // A new session takes its connection's id: random, and not in use here.
                let session = SessionId(connection_id.0);
                let secret = ResumeSecret::generate();
                if secret.is_none() {
                    warn!(
                        session = session.0,
                        "the OS gave no randomness for a resume secret: this session cannot be \
                         resumed"
                    );
                }
                let resume_digest = secret.as_ref().map(ResumeSecret::digest);
                self.bind(connection_id, session, secret, None);
                self.propose(
                    Some(connection_id),
                    EntryOp::Open {
                        session,
                        resume_digest,
                    },
                );
                session
            }
        };
        if let Command::Hello(hello) = &mut request.command {
            // The secrets were checked here; they never go into the log.
            hello.auth = None;
            hello.resume_secret = None;
            if let Some(connection) = self.connections.get_mut(&connection_id) {
                connection.record.note_hello(hello);
            }
        }
        self.leases.heard(now, session);
        debug!(
            session = session.0,
            id = request.id.0,
            op = %request.command.op(),
            "propose"
        );
        let proposer = Proposer {
            connection: Some(connection_id),
            request: Some(request.id),
            answers: Some((request.command.op(), received)),
            force_release: None,
            restore: None,
        };
        self.add_to_batch(proposer, EntryOp::Request { session, request });
    }

    /// A `hello` on an unbound connection asks to resume `asked`: routes the session here if
    /// the request carries its resume secret, and says whether it did. Otherwise the client is
    /// told why not, and the session's own connection is left alone.
    ///
    /// A session this node does not know may still exist: a new leader may not have applied
    /// the entry that opened it yet. The resume then waits until this node has applied all
    /// that was committed before it (openraft's linearizable-read barrier), and is checked
    /// again.
    fn take_over(
        &mut self,
        connection_id: ConnectionId,
        asked: SessionId,
        request: &Request,
        received: std::time::Instant,
        stage: ResumeStage,
    ) -> bool {
        let Some(connection) = self.connections.get(&connection_id) else {
            return false;
        };
        let secret = match &request.command {
            Command::Hello(hello) => hello.resume_secret.as_deref(),
            _ => None,
        };
        let refuse = |message: String| {
            connection.record.outbox.send(ServerFrame::error(
                Some(request.id),
                ErrorCode::NoSession,
                message,
            ));
            false
        };
        let Some(secret) = secret else {
            return refuse(format!(
                "resuming session {asked} needs its resume_secret, which the hello that \
                 opened it returned"
            ));
        };
        match lock_replica(&self.replica).check_resume(asked, secret) {
            ResumeCheck::Matches => {}
            ResumeCheck::DoesNotMatch => {
                warn!(
                    session = asked.0,
                    peer = %connection.record.peer,
                    "refused a resume with the wrong secret"
                );
                return refuse(format!("the resume_secret given is not session {asked}'s"));
            }
            ResumeCheck::UnknownSession if stage == ResumeStage::AfterBarrier => {
                return refuse(format!(
                    "session {asked} expired or was closed; its locks are gone"
                ));
            }
            ResumeCheck::UnknownSession => {
                let raft = self.raft.clone();
                let request = request.clone();
                self.deferred_resumes.push(Box::pin(async move {
                    let barrier = raft
                        .ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .map(|_| ())
                        .map_err(|error| {
                            error
                                .forward_to_leader()
                                .and_then(|forward| forward.leader_node.clone())
                        });
                    DeferredResume {
                        connection: connection_id,
                        request,
                        received,
                        barrier,
                    }
                }));
                return false;
            }
        }
        info!(session = asked.0, peer = %connection.record.peer, "session resumed");
        self.bind(connection_id, asked, None, Some(request.id));
        true
    }

    /// A resume waited for this node to catch up with the log: serves it again, now that a
    /// session this node does not know does not exist; or, if this node is no longer sure it
    /// leads, sends the client to the leader.
    fn on_deferred_resume(&mut self, deferred: DeferredResume) {
        let DeferredResume {
            connection,
            request,
            received,
            barrier,
        } = deferred;
        match barrier {
            Ok(()) => {
                self.serve_request(connection, request, received, ResumeStage::AfterBarrier);
            }
            Err(leader) => self.send_to(connection, not_leader(Some(request.id), leader)),
        }
    }

    /// Routes the frames of `session` to `connection`, taking it over from any connection that
    /// spoke for it before (which is closed). `resume_secret` is the secret of a session this
    /// connection opens, for its `hello` reply. `resumed_by`: the session spoke through
    /// another connection before, and this `hello` resumes it here: its reply is the first
    /// frame the connection gets, and the session's watches are resynced after it (see
    /// `Route::resumed_by`).
    fn bind(
        &mut self,
        connection_id: ConnectionId,
        session: SessionId,
        resume_secret: Option<ResumeSecret>,
        resumed_by: Option<RequestId>,
    ) {
        let Some(connection) = self.connections.get(&connection_id) else {
            return;
        };
        let route = Route {
            outbox: connection.record.outbox.clone(),
            close: connection.record.close.clone(),
            resume_secret,
            resumed_by,
            held: Vec::new(),
        };
        if let Some(connection) = self.connections.get_mut(&connection_id) {
            connection.session = Some(session);
        }
        if let Some(previous) = self.owners.insert(session, connection_id) {
            if previous != connection_id {
                if let Some(old) = self.connections.get_mut(&previous) {
                    old.session = None;
                    old.record.close.cancel();
                }
            }
        }
        lock_replica(&self.replica).routes.insert(session, route);
        self.count_sessions();
    }

    /// Sessions whose client is connected to this node.
    fn count_sessions(&self) {
        self.metrics.set_sessions(self.owners.len());
    }

    /// A connection ended. Its session lives on until its lease runs out, so that its client
    /// can resume it, here or on the next leader: in a cluster a dropped connection may be a
    /// failover, a network blip or a dead client, and only the lease tells them apart.
    fn on_closed(&mut self, connection_id: ConnectionId) {
        let Some(connection) = self.connections.remove(&connection_id) else {
            return;
        };
        let Some(session) = connection.session else {
            return;
        };
        if self.owners.get(&session) != Some(&connection_id) {
            return;
        }
        self.owners.remove(&session);
        lock_replica(&self.replica).routes.remove(&session);
        self.count_sessions();
        connection
            .record
            .span
            .in_scope(|| info!("connection closed; the session lives until its lease runs out"));
    }

    /// The leader's periodic work: expire silent sessions and time out waits. Any node's:
    /// release the requests held for a leader once there is one, or they waited too long.
    fn on_tick(&mut self) {
        self.close_silent_unbound();
        self.release_awaiting_leader();
        if !self.leader {
            return;
        }
        let now = Instant::now().into_std();
        let at_ms = self.next_at_ms();
        let (leases, tick_due) = {
            let replica = lock_replica(&self.replica);
            let due = replica
                .table
                .next_deadline()
                .is_some_and(|deadline| deadline <= replica.instant_at(at_ms));
            (replica.table.session_leases(), due)
        };
        self.switch_to_clock_tokens();
        self.leases.sync(now, &leases);
        let expired = self.leases.take_expired(now);
        if !expired.is_empty() {
            info!(sessions = ?expired, "sessions silent for their whole lease: expiring them");
            self.propose(None, EntryOp::Expire { sessions: expired });
        }
        if tick_due {
            self.propose(None, EntryOp::Tick);
        }
    }

    /// Closes connections that speak for no session and have been silent for the default
    /// lease (on any node): a stranger that sent nothing valid, or a client that only ever
    /// asked a follower. A single server's sessions expire the same way.
    ///
    /// It walks every connection, so it runs at most every `UNBOUND_SWEEP`, not every `TICK`:
    /// with thousands of connections the walk would otherwise run 20 times a second for
    /// nothing.
    fn close_silent_unbound(&mut self) {
        let now = Instant::now().into_std();
        if self
            .last_unbound_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < UNBOUND_SWEEP)
        {
            return;
        }
        self.last_unbound_sweep = Some(now);
        for connection in self.connections.values() {
            let silent = now.saturating_duration_since(connection.heard);
            if connection.session.is_none()
                && silent >= self.unbound_idle
                && !connection.record.close.is_cancelled()
            {
                connection.record.span.in_scope(|| {
                    info!(
                        silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
                        "closing a connection that speaks for no session and sent nothing for \
                         the default lease"
                    );
                });
                connection.record.close.cancel();
            }
        }
    }

    /// Serves the requests held for want of a leader once this node leads or hears from a
    /// leader (the follower's answer then names it), and answers `not_leader` to those held for
    /// `leader_wait` without one. A connection's requests keep their order.
    fn release_awaiting_leader(&mut self) {
        if self.awaiting_leader.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let leader = self.known_leader();
        let leader_known =
            self.leader || (leader.is_some() && !self.leader_contact.in_doubt(now, self.heartbeat));
        let oldest = self.awaiting_leader[0].since;
        if !leader_known && now.saturating_duration_since(oldest) < self.leader_wait {
            return;
        }
        for held in std::mem::take(&mut self.awaiting_leader) {
            if leader_known {
                self.serve_request(
                    held.connection,
                    held.request,
                    held.received,
                    ResumeStage::AsReceived,
                );
            } else if now.saturating_duration_since(held.since) >= self.leader_wait {
                self.send_to(
                    held.connection,
                    not_leader(Some(held.request.id), leader.clone()),
                );
            } else {
                self.awaiting_leader.push(held);
            }
        }
        self.count_awaiting_leader();
    }

    fn count_awaiting_leader(&self) {
        let held = i64::try_from(self.awaiting_leader.len()).unwrap_or(i64::MAX);
        self.metrics.requests_awaiting_leader.set(held);
    }

    /// Starts a leadership check for the reads that arrived, unless one is under way (it will
    /// start when that one ends): one check answers them all.
    fn check_leadership_for_reads(&mut self) {
        if self.reads_arrived.is_empty() || !self.leadership_checks.is_empty() {
            return;
        }
        self.reads_checked = std::mem::take(&mut self.reads_arrived);
        self.leadership_checks
            .push(Box::pin(check_leadership(self.raft.clone())));
    }

    /// Answers the reads a leadership check covered, sends them to the leader, or, if no
    /// majority answered, proposes them as entries (which commit once a majority is back, or
    /// fail if another node leads by then).
    fn on_leadership_checked(&mut self, check: LeadershipCheck) {
        let reads = std::mem::take(&mut self.reads_checked);
        let mut answered = Vec::with_capacity(reads.len());
        match check {
            LeadershipCheck::Confirmed => {
                let replica = lock_replica(&self.replica);
                let now = replica.instant_at(replica.last_at_ms);
                let done = std::time::Instant::now();
                for read in reads {
                    let Some(connection) = self.connections.get_mut(&read.connection) else {
                        continue;
                    };
                    let result = if replica.table.has_session(read.session) {
                        read.read.answer(&replica.table, now, read.session)
                    } else {
                        Err(RequestFailed::session_gone(read.session))
                    };
                    connection.record.outbox.send(reply_frame(read.id, result));
                    connection.reading = false;
                    self.metrics
                        .request_done(read.op, done.saturating_duration_since(read.received));
                    answered.push(read.connection);
                }
            }
            LeadershipCheck::NotLeader(leader) => {
                for read in reads {
                    if let Some(connection) = self.connections.get(&read.connection) {
                        connection
                            .record
                            .outbox
                            .send(not_leader(Some(read.id), leader.clone()));
                        // Whatever follows cannot be served here either.
                        connection.record.close.cancel();
                    }
                }
            }
            LeadershipCheck::Unconfirmed(why) => {
                debug!(reads = reads.len(), error = %why, "leadership not confirmed: reads go through the log");
                for read in reads {
                    let Some(connection) = self.connections.get_mut(&read.connection) else {
                        continue;
                    };
                    connection.reading = false;
                    let request = Request {
                        id: read.id,
                        command: read.read.into_command(),
                    };
                    let proposer = Proposer {
                        connection: Some(read.connection),
                        request: Some(read.id),
                        answers: Some((read.op, read.received)),
                        force_release: None,
                        restore: None,
                    };
                    self.add_to_batch(
                        proposer,
                        EntryOp::Request {
                            session: read.session,
                            request,
                        },
                    );
                    answered.push(read.connection);
                }
            }
        }
        for connection in answered {
            self.serve_held(connection);
        }
    }

    /// Serves what `connection` sent while its read waited, until it has none left or waits
    /// for a read again.
    fn serve_held(&mut self, connection_id: ConnectionId) {
        loop {
            let Some(connection) = self.connections.get_mut(&connection_id) else {
                return;
            };
            if connection.reading {
                return;
            }
            let Some((request, received)) = connection.held.pop_front() else {
                return;
            };
            self.serve_request(connection_id, request, received, ResumeStage::AsReceived);
        }
    }

    /// On the leader of a cluster that counts tokens by log position: proposes the switch to the
    /// clock (`EntryOp::ClockTokens`), once per leadership unless it fails.
    fn switch_to_clock_tokens(&mut self) {
        if !self.leader || self.clock_tokens_proposed || lock_replica(&self.replica).clock_tokens {
            return;
        }
        info!("this cluster counts fencing tokens by log position: switching to the clock");
        self.clock_tokens_proposed = true;
        self.propose(None, EntryOp::ClockTokens);
    }

    /// The time for a new entry: the wall clock, but never before an earlier entry's.
    fn next_at_ms(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let applied = lock_replica(&self.replica).last_at_ms;
        self.last_at_ms = self.last_at_ms.max(applied).max(wall);
        self.last_at_ms
    }

    /// Adds an operation of the front end's own to this turn's entry, on behalf of
    /// `connection` (whose request needs it) if any.
    fn propose(&mut self, connection: Option<ConnectionId>, op: EntryOp) {
        let proposer = Proposer {
            connection,
            request: None,
            answers: None,
            force_release: None,
            restore: None,
        };
        self.add_to_batch(proposer, op);
    }

    /// Adds an operation to this turn's entry (sent by [`flush`](Self::flush)).
    fn add_to_batch(&mut self, proposer: Proposer, op: EntryOp) {
        if let Some(connection) = proposer
            .connection
            .and_then(|id| self.connections.get_mut(&id))
        {
            connection.unsettled += 1;
        }
        self.batch_bytes += encoded_size(&op);
        self.batch.push(op);
        self.batch_proposers.push(proposer);
    }

    /// Whether the entry being gathered is full.
    fn batch_full(&self) -> bool {
        self.batch.len() >= MAX_BATCH || self.batch_bytes >= MAX_BATCH_BYTES
    }

    /// Hands this turn's operations to Raft as one entry. Raft keeps the order of entries and
    /// the machine applies an entry's operations in order, so a connection's requests are
    /// applied in the order they arrived. The outcome is awaited in `pending`.
    async fn flush(&mut self) {
        self.take_restore_parts();
        if self.batch.is_empty()
            || (self.pending.len() >= MAX_OUTSTANDING_BATCHES && !self.batch_full())
        {
            return;
        }
        // While this node's own disk hangs it proposes nothing, so that the others notice it
        // is gone and replace it (`node.rs`, `watch_own_disk`); the batch waits.
        if self.disk_stalled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let proposal = Proposal {
            at_ms: self.next_at_ms(),
            ops: std::mem::take(&mut self.batch),
        };
        let proposers = std::mem::take(&mut self.batch_proposers);
        self.batch_bytes = 0;
        let (responder, receiver) = ProgressResponder::complete_only();
        match self.raft.client_write_ff(proposal, Some(responder)).await {
            Ok(()) => self.pending.push(Box::pin(async move {
                let outcome = match receiver.await {
                    Ok(Ok(response)) => Outcome::Applied(response.data),
                    // openraft 0.10 tells apart an entry refused before it was appended and one
                    // appended here and then dropped for another leader's log (which may still
                    // commit it): either way this node no longer leads, and the client resumes
                    // on the leader and re-sends, where a retry is applied once (`retries.rs`),
                    // as after openraft 0.9's `ForwardToLeader` for both.
                    Ok(Err(
                        ClientWriteError::ForwardToLeader(forward)
                        | ClientWriteError::LogEntryDiscarded(forward),
                    )) => Outcome::NotLeader(forward.leader_node),
                    Ok(Err(err)) => Outcome::Failed(err.to_string()),
                    Err(_) => Outcome::Failed("the Raft node stopped".to_owned()),
                };
                (proposers, outcome)
            })),
            Err(fatal) => self.settle(&proposers, Outcome::Failed(fatal.to_string())),
        }
    }

    /// Answers the requests of a batch that failed; successful ones were answered by the
    /// state machine. Either way each request has its reply now, so its latency is counted.
    /// An operator's forced release is answered here either way.
    fn settle(&mut self, proposers: &[Proposer], outcome: Outcome) {
        let now = std::time::Instant::now();
        for (op, received) in proposers.iter().filter_map(|proposer| proposer.answers) {
            self.metrics
                .request_done(op, now.saturating_duration_since(received));
        }
        for id in proposers.iter().filter_map(|proposer| proposer.connection) {
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.unsettled = connection.unsettled.saturating_sub(1);
            }
        }
        let failure = match outcome {
            Outcome::Applied(applied) => {
                self.settle_applied(proposers, applied);
                return;
            }
            Outcome::NotLeader(leader) => Failure::NotLeader(leader),
            Outcome::Failed(message) => {
                warn!(error = %message, requests = proposers.len(), "a proposal failed");
                Failure::Failed(message)
            }
        };
        for proposer in proposers {
            if let Some(key) = proposer.restore {
                let refusal = match &failure {
                    Failure::NotLeader(leader) => RestoreRefused::NotLeader {
                        leader: leader.as_ref().map(|node| node.client.clone()),
                    },
                    Failure::Failed(message) => RestoreRefused::NotCommitted(message.clone()),
                };
                self.settle_restore_part(key, Some(refusal));
            }
            if let Some(key) = proposer.force_release {
                let refusal = match &failure {
                    Failure::NotLeader(leader) => ForceReleaseRefused::NotLeader {
                        leader: leader.as_ref().map(|node| node.client.clone()),
                    },
                    Failure::Failed(message) => ForceReleaseRefused::NotCommitted(message.clone()),
                };
                self.answer_force_release(key, Err(refusal));
            }
            let Some(connection) = proposer.connection.and_then(|id| self.connections.get(&id))
            else {
                continue;
            };
            connection.record.outbox.send(match &failure {
                Failure::NotLeader(leader) => not_leader(proposer.request, leader.clone()),
                Failure::Failed(message) => ServerFrame::error(
                    proposer.request,
                    ErrorCode::Internal,
                    format!("the cluster could not commit the request: {message}"),
                ),
            });
            // Whatever follows cannot be served here either.
            connection.record.close.cancel();
        }
    }

    /// The rest of settling an applied batch: its clients were answered by the state machine.
    fn settle_applied(&mut self, proposers: &[Proposer], applied: Applied) {
        for key in proposers.iter().filter_map(|proposer| proposer.restore) {
            self.settle_restore_part(key, None);
        }
        for session in &applied.sessions_taken {
            warn!(
                session = session.0,
                "a random session id was already taken; closing"
            );
            if let Some(connection) = self.connections.get(&ConnectionId(session.0)) {
                connection.record.close.cancel();
            }
        }
        // The entry's forced releases, in the order of its operations.
        let keys = proposers
            .iter()
            .filter_map(|proposer| proposer.force_release);
        for (key, forced) in keys.zip(applied.forced) {
            self.answer_force_release(key, Ok(forced));
        }
    }

    /// Answers an operator's forced release once its entry is applied (the state machine has
    /// closed the evicted sessions' connections) or has failed.
    fn answer_force_release(
        &mut self,
        key: u64,
        result: Result<Vec<ForcedRelease>, ForceReleaseRefused>,
    ) {
        let Some(wait) = self.force_releases.remove(&key) else {
            return;
        };
        let result = result.map(|forced| {
            forced
                .into_iter()
                .map(|release| {
                    warn!(
                        operator = %wait.operator,
                        resource = %wait.resource,
                        session = release.session.0,
                        token = release.token.0,
                        mode = %release.mode,
                        "an operator forced the release of a lock: its holder's session is \
                         ended and its connection closed"
                    );
                    let session = wait.holders.get(&release.session).cloned();
                    Evicted { release, session }
                })
                .collect()
        });
        let _ = wait.reply.send(result);
    }

    /// A fresh connection id, which also becomes the id of the session the connection opens
    /// (if it does not resume one): random (so that ids chosen by different leaders do not
    /// collide and a session cannot be resumed by guessing), below 2^53 (so that JavaScript
    /// clients read it exactly), never 0, and not in use here.
    fn unused_connection_id(&self) -> ConnectionId {
        loop {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(self.connections.len() as u64);
            let id = hasher.finish() & ((1 << 53) - 1);
            let taken = id == 0
                || self.connections.contains_key(&ConnectionId(id))
                || lock_replica(&self.replica).table.has_session(SessionId(id));
            if !taken {
                return ConnectionId(id);
            }
        }
    }

    /// What this node knows of the sessions holding `resource` now.
    fn holders_info(&self, resource: &ResourceName) -> HashMap<SessionId, SessionInfo> {
        let replica = lock_replica(&self.replica);
        let now = replica.instant_at(replica.last_at_ms);
        let statuses = replica.table.status(now, Some(resource));
        let holders = statuses.iter().flat_map(|status| &status.holders);
        holders
            .filter_map(|holder| {
                let connection = self.owners.get(&holder.session)?;
                let record = &self.connections.get(connection)?.record;
                Some((holder.session, record.info()))
            })
            .collect()
    }

    /// Holders and waiters for the admin API, from this node's replica.
    fn locks_report(&self) -> LocksReport {
        let replica = lock_replica(&self.replica);
        let now = replica.instant_at(replica.last_at_ms);
        let sessions = self.owners.iter().filter_map(|(session, connection)| {
            let connection = self.connections.get(connection)?;
            Some((*session, connection.record.info()))
        });
        LocksReport::build(now, &replica.table, sessions)
    }
}

/// Whether this node still leads, as a linearizable read must know: a heartbeat round that a
/// majority answers, then applying everything committed when the check began (openraft's
/// `ensure_linearizable`).
async fn check_leadership(raft: LockdRaft) -> LeadershipCheck {
    match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
        Ok(_) => LeadershipCheck::Confirmed,
        Err(error) => match error.forward_to_leader() {
            Some(forward) => LeadershipCheck::NotLeader(forward.leader_node.clone()),
            None => LeadershipCheck::Unconfirmed(error.to_string()),
        },
    }
}

/// About how many bytes `op` takes in an entry: its strings, which can be long, plus a bound
/// for the rest of its JSON. Serializing every op to measure it would cost more than the op.
fn encoded_size(op: &EntryOp) -> usize {
    const FIXED: usize = 128;
    let EntryOp::Request { request, .. } = op else {
        return FIXED;
    };
    FIXED
        + match &request.command {
            Command::Write(write) => write.resource.as_str().len() + write.value.len(),
            Command::Hello(hello) => hello.client.as_deref().map_or(0, str::len),
            Command::Acquire(acquire) => acquire.resource.as_str().len(),
            // Each member's name, and its `{"resource":...,"mode":"exclusive"}` around it.
            Command::AcquireMany(acquire) => acquire
                .resources
                .iter()
                .map(|member| member.resource.as_str().len() + 40)
                .sum(),
            Command::Release(release) => release.resource.as_str().len(),
            Command::Read(read) => read.resource.as_str().len(),
            Command::Validate(validate) => validate.resource.as_str().len(),
            Command::Status(status) => status.resource.as_ref().map_or(0, |r| r.as_str().len()),
            Command::AddNode(add) => add.client.len() + add.peer.len(),
            Command::Watch(watch) => watch.resource.as_str().len(),
            Command::Cancel(_)
            | Command::Unwatch(_)
            | Command::Ping
            | Command::ClusterStatus
            | Command::RemoveNode(_) => 0,
        }
}
