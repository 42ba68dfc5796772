//! The replicated state machine: the lock table, applied from committed log entries.
//!
//! Every node applies every committed entry to its own `LockTable`; only the node a session is
//! connected to (the leader) delivers the frames that produces, through the session's
//! [`Route`]. Applying reads no clock: an entry's time is the leader's, carried in the entry
//! (`Proposal::at_ms`), and each table instant is `clock_origin + at_ms`, where `clock_origin`
//! is the one clock read, when the node opens (an `Instant` only anchors the offsets: every
//! node derives the same deadlines from the same `at_ms`). Fencing tokens are
//! raised to a floor before each entry is applied, so they grow whoever the leader is: the
//! entry's time in microseconds, once the cluster has applied `EntryOp::ClockTokens` (see
//! [`clock_token_floor`]), or in a cluster from before it, its log index (see [`token_floor`]).
//!
//! The table lives in memory; what makes it durable is the Raft log (fsynced by the log store
//! before an entry can commit) and the snapshots (`snapshot_store.rs`: a file each, named in
//! the same redb file), from which a restarted node rebuilds the table before openraft
//! re-applies the log after it.
//!
//! A snapshot stops applying only for an O(1) copy of the replica's state: the table's maps
//! are persistent (`LockTable::snapshot`), and the copy is written out as JSON, straight into
//! the snapshot's file, on the blocking pool while entries keep applying. A snapshot received
//! from the leader is decoded and rebuilt into a table off the lock too, and swapped in.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use openraft_legacy::network_v1::SnapshotReceiverFactory;
use protocol::cmd::{WatchChange, WatchEvent};
use protocol::{Command, ErrorCode, ReplyBody, Request, RequestId, ServerFrame, SessionId};
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::resume::{ResumeCheck, ResumeKeys, ResumeKeysImage, ResumeSecret};
use super::retries::{Retries, RetriesImage, Retry, SAVED_REPLIES};
use super::snapshot_store::{SnapshotFile, SnapshotStore};
use super::types::{Applied, EntryOp, Proposal, TypeConfig};
use crate::apply::{reply_frame, Answer, Applier, Delivery, RequestFailed};
use crate::core::{ImageError, ImageWriter, LockTable, TableConfig, TableImage, TableSnapshot};
use crate::metrics::Metrics;
use crate::seam::Outbox;

/// Tokens granted by the entry at log index `i` are at least `i << TOKEN_SHIFT`: room for 16
/// million grants per entry (an entry holds at most `frontend::MAX_BATCH` requests, and a
/// release wakes at most the waiters of one queue), for 2^40 entries.
pub const TOKEN_SHIFT: u32 = 24;

/// The lowest token an entry at `index` may grant. Entries apply in index order, so tokens
/// are strictly increasing across entries, and within one entry the table counts up.
pub fn token_floor(index: u64) -> u64 {
    index.saturating_mul(1 << TOKEN_SHIFT)
}

/// The lowest token an entry proposed at `at_ms` may grant, in a cluster that counts tokens by
/// the clock: its time in microseconds, the unit of a single server's floor. Entry times never
/// go back, so neither does the floor, and a cluster grants far fewer than a thousand tokens a
/// millisecond, so its tokens stay near the clock: a cluster restored from a backup, whose
/// entries are stamped later than any before, starts above every token issued before it
/// (assuming the leaders' clocks are not set back by more than the time between the backup
/// and the restore).
pub fn clock_token_floor(at_ms: u64) -> u64 {
    at_ms.saturating_mul(1_000)
}

/// Where frames for a session go on this node: its connection's outbox, and the token that
/// closes the connection when the session ends (expiry, forced release).
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) outbox: Outbox,
    pub(crate) close: CancellationToken,
    /// The session's resume secret, on the connection that opened the session: its `hello`
    /// reply carries it. Never saved for retries, never in the log.
    pub(crate) resume_secret: Option<ResumeSecret>,
    /// The session was resumed on this connection by the `hello` with this id, whose reply
    /// must be the first frame the connection gets (a client reads it first). Until it is sent,
    /// the session's other frames wait in `held` (replies to requests the client made before
    /// the failover, applied by this new leader only now, say; the client sends those requests
    /// again and gets their saved replies too, and ignores a second answer) and its watch
    /// events are dropped (events sent to the connection before may be lost anyway): right
    /// after the reply, each of its watches gets a `resync` with the state as this node has
    /// applied it, and then the held frames follow in order.
    pub(crate) resumed_by: Option<RequestId>,
    pub(crate) held: Vec<ServerFrame>,
}

/// Sends an event of `watch` through `route`'s watch backlog, whose `resync` shows `table`.
fn send_watch_event(route: &Route, table: &LockTable, watch: RequestId, event: WatchEvent) {
    route
        .outbox
        .send_watch_event(watch, event, |resource| table.watch_state(resource));
}

/// The lock table and what openraft asks a state machine to remember.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) table: LockTable,
    /// Table instants are `clock_origin + at_ms`.
    pub(crate) clock_origin: Instant,
    /// The newest entry time applied: entry times never go back, even across leaders.
    pub(crate) last_at_ms: u64,
    pub(crate) last_applied: Option<LogIdOf<TypeConfig>>,
    pub(crate) membership: StoredMembershipOf<TypeConfig>,
    /// The cluster applied `EntryOp::ClockTokens`: token floors follow entry times.
    pub(crate) clock_tokens: bool,
    /// Sessions connected to this node.
    pub(crate) routes: HashMap<SessionId, Route>,
    /// Each session's last replies, for requests retried after a failover.
    retries: Retries,
    /// Each session's resume digest: the front end checks a resume against it.
    resume_keys: ResumeKeys,
    applier: Applier,
}

/// What a snapshot's data holds (written by [`SnapshotParts`], which gives the same JSON).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    last_at_ms: u64,
    table: TableImage,
    retries: RetriesImage,
    /// Absent in snapshots from before resume secrets.
    #[serde(default)]
    resume_keys: ResumeKeysImage,
    /// Absent (false) in snapshots from before `EntryOp::ClockTokens`.
    #[serde(default)]
    clock_tokens: bool,
}

impl Replica {
    /// The table instant of an entry time.
    pub(crate) fn instant_at(&self, at_ms: u64) -> Instant {
        self.clock_origin + Duration::from_millis(at_ms)
    }

    /// Applies one committed entry at `index`, delivering the frames it produces to the
    /// sessions connected here.
    pub(crate) fn apply(&mut self, index: u64, proposal: Proposal) -> Applied {
        self.last_at_ms = self.last_at_ms.max(proposal.at_ms);
        let now = self.instant_at(self.last_at_ms);
        let floor = if self.clock_tokens {
            clock_token_floor(proposal.at_ms)
        } else {
            token_floor(index)
        };
        self.table.raise_token_floor(floor);
        let mut applied = Applied::default();
        for op in proposal.ops {
            match op {
                EntryOp::Open {
                    session,
                    resume_digest,
                } => {
                    if self.table.open_session_as(now, session) {
                        self.resume_keys.opened(session, resume_digest);
                    } else {
                        applied.sessions_taken.push(session);
                    }
                }
                EntryOp::Request { session, request } => {
                    self.apply_client_request(now, session, request);
                }
                EntryOp::Expire { sessions } => {
                    for session in sessions {
                        self.table.handle_session_expired(now, session);
                    }
                }
                EntryOp::Tick => self.table.handle_timeout(now),
                EntryOp::RestoreValues {
                    values,
                    tokens_above,
                } => {
                    self.table.raise_token_floor(tokens_above.saturating_add(1));
                    for (resource, value) in values {
                        self.table.restore_value(resource, Arc::from(value));
                    }
                }
                EntryOp::ClockTokens => {
                    // From this op on: the requests after it in this entry count by the clock.
                    self.clock_tokens = true;
                    self.table
                        .raise_token_floor(clock_token_floor(proposal.at_ms));
                }
                EntryOp::ForceRelease { resource, token } => {
                    let forced = self.table.handle_force_release(now, &resource, token);
                    for release in &forced {
                        self.session_ended(release.session);
                    }
                    applied.forced.push(forced);
                }
            }
            self.deliver();
        }
        applied
    }

    /// Delivers a frame if the session is connected here, and keeps final replies for
    /// retries (on every node, so that any of them can answer a retry as leader).
    fn send(&mut self, session: SessionId, frame: ServerFrame) {
        let reply_to = match &frame {
            ServerFrame::Ok { id, .. } | ServerFrame::Err { id: Some(id), .. } => Some(*id),
            _ => None,
        };
        if let Some(id) = reply_to {
            if self.table.has_session(session) {
                self.retries.save(session, id, Arc::from(frame.to_json()));
            }
        }
        self.route(session, frame, reply_to);
    }

    /// Puts `frame`, the reply to `reply_to` if it is one, on the session's connection here, if
    /// any; see `Route::resumed_by` for a connection that resumed the session.
    fn route(&mut self, session: SessionId, frame: ServerFrame, reply_to: Option<RequestId>) {
        let Some(route) = self.routes.get_mut(&session) else {
            return;
        };
        match route.resumed_by {
            None => route.outbox.send(with_resume_secret(frame, route)),
            Some(hello) if reply_to != Some(hello) => route.held.push(frame),
            Some(_) => {
                route.resumed_by = None;
                route.outbox.send(with_resume_secret(frame, route));
                for (watch, resource) in self.table.session_watches(session) {
                    let event = WatchEvent {
                        change: WatchChange::Resync(self.table.watch_state(&resource)),
                        resource,
                    };
                    send_watch_event(route, &self.table, watch, event);
                }
                for held in std::mem::take(&mut route.held) {
                    route.outbox.send(held);
                }
            }
        }
    }

    /// Applies one client request (unless it is a retry) and sends its reply (or `queued`
    /// event).
    fn apply_client_request(&mut self, now: Instant, session: SessionId, request: Request) {
        let id = request.id;
        if !self.table.has_session(session) {
            // A resume of a session that is gone, or a request that raced its expiry.
            self.send(
                session,
                reply_frame(id, Err(RequestFailed::session_gone(session))),
            );
            return;
        }
        if let Command::Acquire(_) | Command::AcquireMany(_) = &request.command {
            // A retried acquire that still waits keeps its place; it is told so again.
            if let Some(position) = self.table.waiting_position(session, id) {
                if self.retries.is_retry(session, id) {
                    self.send(session, ServerFrame::Queued { id, position });
                    return;
                }
            }
        }
        match self.retries.check(session, id) {
            Retry::Saved(line) => {
                self.route(session, ServerFrame::Saved(line), Some(id));
                return;
            }
            Retry::TooOld => {
                let message = format!(
                    "request {id} is a retry older than the last {SAVED_REPLIES} replies this \
                     session keeps, so whether it was applied is unknown"
                );
                self.send(
                    session,
                    ServerFrame::error(Some(id), ErrorCode::BadRequest, message),
                );
                return;
            }
            Retry::New => {}
        }
        self.retries.applied(session, id);
        let resumes = matches!(&request.command, Command::Hello(hello) if hello.session.is_some());
        // A cluster's values are durable once the entry is committed: nothing to save here.
        let (answer, _written) = self.applier.apply(&mut self.table, now, session, request);
        match answer {
            Answer::Queued(position) => self.send(session, ServerFrame::Queued { id, position }),
            Answer::Later => {}
            Answer::Reply(result) => {
                if resumes && result.is_ok() {
                    self.retries.resumed(session);
                }
                self.send(session, reply_frame(id, result));
            }
        }
    }

    /// Routes what the table produced since the last call to the sessions connected here.
    fn deliver(&mut self) {
        for delivery in self.applier.take_deliveries(&mut self.table) {
            match delivery {
                Delivery::Frame(session, frame) => self.send(session, frame),
                Delivery::Watch {
                    session,
                    watch,
                    event,
                } => {
                    // Every node makes the event; the one with the session's route sends it.
                    let route = self.routes.get(&session);
                    if let Some(route) = route.filter(|route| route.resumed_by.is_none()) {
                        send_watch_event(route, &self.table, watch, event);
                    }
                }
                Delivery::Expired(session) => self.session_ended(session),
            }
        }
    }

    /// The table ended `session` (its lease ran out, or an operator forced a release): its saved
    /// replies go, and its connection here, if any, is closed.
    fn session_ended(&mut self, session: SessionId) {
        self.retries.forget(session);
        self.resume_keys.ended(session);
        if let Some(route) = self.routes.remove(&session) {
            info!(
                session = session.0,
                "session ended: its connection is closed"
            );
            route.close.cancel();
        }
    }

    /// Whether `secret` resumes `session`, as far as this node has applied the log.
    pub(crate) fn check_resume(&self, session: SessionId, secret: &str) -> ResumeCheck {
        self.resume_keys.check(session, secret)
    }

    /// Everything a snapshot holds, as it is now, in O(1): taken under the replica's lock,
    /// written out after it is released.
    fn snapshot_parts(&self) -> SnapshotParts {
        SnapshotParts {
            origin: self.clock_origin,
            last_at_ms: self.last_at_ms,
            table: self.table.snapshot(),
            retries: self.retries.clone(),
            resume_keys: self.resume_keys.clone(),
            clock_tokens: self.clock_tokens,
        }
    }

    /// Puts a state rebuilt from a snapshot in place of this one. Returns the table it
    /// replaced, for the caller to drop after releasing the replica's lock.
    fn install(&mut self, restored: Restored, meta: &SnapshotMetaOf<TypeConfig>) -> LockTable {
        let old = std::mem::replace(&mut self.table, restored.table);
        self.last_at_ms = restored.last_at_ms;
        self.retries = restored.retries;
        self.resume_keys = restored.resume_keys;
        self.clock_tokens = restored.clock_tokens;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        old
    }
}

/// A replica's state at one log index, sharing the replica's maps (see
/// [`Replica::snapshot_parts`]).
#[derive(Debug)]
struct SnapshotParts {
    origin: Instant,
    last_at_ms: u64,
    table: TableSnapshot,
    retries: Retries,
    resume_keys: ResumeKeys,
    clock_tokens: bool,
}

impl SnapshotParts {
    /// The parts as [`SnapshotData`]'s JSON, serialized as they are written.
    fn writer(&self) -> SnapshotWriter<'_> {
        SnapshotWriter {
            last_at_ms: self.last_at_ms,
            table: self.table.image(self.origin),
            retries: self.retries.to_image(),
            resume_keys: self.resume_keys.to_image(),
            clock_tokens: self.clock_tokens,
        }
    }
}

/// [`SnapshotData`], with the table serialized straight from its snapshot.
#[derive(Debug, Serialize)]
struct SnapshotWriter<'a> {
    last_at_ms: u64,
    table: ImageWriter<'a>,
    retries: RetriesImage,
    resume_keys: ResumeKeysImage,
    clock_tokens: bool,
}

/// A replica's state rebuilt from a snapshot's data, to be put in place with
/// [`Replica::install`].
#[derive(Debug)]
struct Restored {
    table: LockTable,
    last_at_ms: u64,
    retries: Retries,
    resume_keys: ResumeKeys,
    clock_tokens: bool,
}

impl Restored {
    /// Decodes a snapshot's data and rebuilds its table, with times after `origin`.
    fn decode(
        data: &[u8],
        config: &TableConfig,
        origin: Instant,
    ) -> Result<Restored, SnapshotError> {
        let data: SnapshotData = serde_json::from_slice(data)?;
        Ok(Restored {
            table: LockTable::from_image(config.clone(), data.table, origin)?,
            last_at_ms: data.last_at_ms,
            retries: Retries::from_image(data.retries),
            resume_keys: ResumeKeys::from_image(data.resume_keys),
            clock_tokens: data.clock_tokens,
        })
    }

    /// Reads and decodes a snapshot's file.
    fn read(path: &Path, config: &TableConfig, origin: Instant) -> Result<Restored, SnapshotError> {
        let data = std::fs::read(path).map_err(SnapshotError::Read)?;
        Restored::decode(&data, config, origin)
    }
}

/// The state machine handed to openraft: the shared [`Replica`] and the store of its
/// snapshots.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaMachine {
    replica: Arc<Mutex<Replica>>,
    snapshots: SnapshotStore,
    config: TableConfig,
    /// The replica's `clock_origin`, which never changes.
    clock_origin: Instant,
}

impl ReplicaMachine {
    /// Opens the state machine of a node over its redb file and data directory: the table of
    /// the node's last snapshot, or an empty one.
    pub(crate) fn open(
        db: Arc<Database>,
        data_dir: &Path,
        mut config: TableConfig,
        metrics: Arc<Metrics>,
    ) -> Result<ReplicaMachine, SnapshotError> {
        config.expire_sessions = false;
        let clock_origin = Instant::now();
        let mut replica = Replica {
            table: LockTable::new(config.clone()),
            clock_origin,
            last_at_ms: 0,
            last_applied: None,
            membership: StoredMembershipOf::<TypeConfig>::default(),
            clock_tokens: false,
            routes: HashMap::new(),
            retries: Retries::default(),
            resume_keys: ResumeKeys::default(),
            applier: Applier::new(metrics),
        };
        let snapshots = SnapshotStore::open(db, data_dir).map_err(SnapshotError::Read)?;
        let current = snapshots.current::<SnapshotMetaOf<TypeConfig>>();
        if let Some((meta, path)) = current.map_err(SnapshotError::Read)? {
            let restored = Restored::read(&path, &config, clock_origin)?;
            drop(replica.install(restored, &meta));
            info!(
                last_log_id = ?meta.last_log_id,
                "state machine restored from the last snapshot"
            );
        }
        Ok(ReplicaMachine {
            replica: Arc::new(Mutex::new(replica)),
            snapshots,
            config,
            clock_origin,
        })
    }

    /// The replica, shared with the cluster front end.
    pub(crate) fn replica(&self) -> Arc<Mutex<Replica>> {
        Arc::clone(&self.replica)
    }

    fn lock(&self) -> MutexGuard<'_, Replica> {
        lock_replica(&self.replica)
    }
}

/// Why a node's table could not be rebuilt from its snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot could not be read from the node's redb file or its snapshot directory.
    #[error("cannot read the snapshot: {0}")]
    Read(#[source] io::Error),
    /// The snapshot's data is not what this lockd writes.
    #[error("the snapshot's data cannot be read: {0}")]
    Decode(#[from] serde_json::Error),
    /// The snapshot's table contradicts itself.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Locks the replica. A panic while it was held cannot leave it half-applied in a way a
/// later apply would make worse than stopping, and the process exits on a panic anyway.
pub(crate) fn lock_replica(replica: &Mutex<Replica>) -> MutexGuard<'_, Replica> {
    replica.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `frame` as the session's connection gets it: the reply to the `hello` of a session opened
/// on this connection carries the session's resume secret. Only the connection's copy does:
/// the reply saved for retries does not.
fn with_resume_secret(mut frame: ServerFrame, route: &Route) -> ServerFrame {
    if let (
        ServerFrame::Ok {
            body: ReplyBody::Hello(hello),
            ..
        },
        Some(secret),
    ) = (&mut frame, &route.resume_secret)
    {
        hello.resume_secret = Some(secret.as_str().to_owned());
    }
    frame
}

/// A snapshot that could not be written, as openraft 0.10 takes a storage error.
fn write_error(meta: &SnapshotMetaOf<TypeConfig>, error: impl ToString) -> io::Error {
    io::Error::other(format!(
        "cannot write the snapshot at {:?}: {}",
        meta.last_log_id,
        error.to_string()
    ))
}

/// A snapshot that could not be read, likewise.
fn read_error(error: impl ToString) -> io::Error {
    io::Error::other(format!("cannot read the snapshot: {}", error.to_string()))
}

impl RaftSnapshotBuilder<TypeConfig> for ReplicaMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        // Under the replica's lock only an O(1) copy of its state; it is written out on the
        // blocking pool while entries keep applying.
        let copied = Instant::now();
        let (meta, id, parts) = {
            let replica = self.lock();
            let parts = replica.snapshot_parts();
            let last = replica.last_applied;
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: last,
                last_membership: replica.membership.clone(),
            };
            let id = SnapshotStore::built_id(&meta, replica.last_at_ms);
            (meta, id, parts)
        };
        let copy = copied.elapsed();
        let store = self.snapshots.clone();
        let built = meta.clone();
        let written = Instant::now();
        let current = tokio::task::spawn_blocking(move || {
            store.write(&meta, &id, |writer| {
                serde_json::to_writer(writer, &parts.writer()).map_err(io::Error::from)
            })?;
            // Ours, unless a newer snapshot from the leader was installed meanwhile, which
            // `write` kept: what is returned is what is stored.
            store.current::<SnapshotMetaOf<TypeConfig>>()
        })
        .await
        .map_err(|err| write_error(&built, err))?
        .map_err(|err| write_error(&built, err))?;
        let (meta, path) = current.ok_or_else(|| write_error(&built, "no snapshot stored"))?;
        let file = SnapshotFile::open(path)
            .await
            .map_err(|err| write_error(&built, err))?;
        info!(
            last_log_id = ?meta.last_log_id,
            copy_us = copy.as_micros(),
            write_ms = written.elapsed().as_millis(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for ReplicaMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = ReplicaMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let replica = self.lock();
        Ok((replica.last_applied, replica.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        // openraft 0.10 streams the entries; each is applied under the replica's lock, which
        // is not held across the wait for the next one.
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            let applied = {
                let mut replica = self.lock();
                replica.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Applied::default(),
                    EntryPayload::Membership(membership) => {
                        replica.membership =
                            StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), membership);
                        Applied::default()
                    }
                    EntryPayload::Normal(proposal) => replica.apply(entry.log_id.index, proposal),
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        // Decoded and rebuilt off the lock, and only then made durable and current: a snapshot
        // that does not decode is never kept.
        let temp: PathBuf = snapshot.path().to_owned();
        drop(snapshot);
        let store = self.snapshots.clone();
        let config = self.config.clone();
        let origin = self.clock_origin;
        let meta_copy = meta.clone();
        let id = self.snapshots.received_id(meta);
        let restored = tokio::task::spawn_blocking(move || {
            let restored = Restored::read(&temp, &config, origin).map_err(io::Error::other)?;
            store.commit(&meta_copy, &id, &temp)?;
            Ok::<_, io::Error>(restored)
        })
        .await
        .map_err(read_error)?
        .map_err(read_error)?;
        let old = self.lock().install(restored, meta);
        // The old table is freed here, not under the lock.
        drop(old);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        let store = self.snapshots.clone();
        let current = tokio::task::spawn_blocking(move || store.current())
            .await
            .map_err(read_error)?
            .map_err(read_error)?;
        let Some((meta, path)) = current else {
            return Ok(None);
        };
        let file = SnapshotFile::open(path).await.map_err(read_error)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: file,
        }))
    }
}

/// Receives a snapshot sent in chunks (openraft 0.9's `install_snapshot` RPC, which lockd
/// keeps on the peer wire) into a temporary file of the snapshot directory.
impl SnapshotReceiverFactory<TypeConfig> for ReplicaMachine {
    type SnapshotReceiver = SnapshotFile;

    async fn begin_receiving_snapshot(&mut self) -> Result<SnapshotFile, io::Error> {
        self.snapshots.receiving().await
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
