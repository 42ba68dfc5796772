//! A client request applied to the lock table, and the table's effects turned into frames: the
//! one place that knows what each op does, shared by the single server's driver and the
//! cluster's state machine, so that both answer every op the same way.
//!
//! Adding an op means a change in `protocol`, one in `core`, and one here; a backend changes
//! only if the op is truly its own (the cluster's membership commands are). What differs
//! between the backends stays with them: a single server commits the writes this reports, a
//! cluster keeps replies for retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::cmd::{
    AcquireManyOk, AcquireOk, HelloOk, MemberToken, Read, ReadOk, Status, StatusOk, Validate,
    ValidateOk, WatchEvent, DEFAULT_STATUS_LIMIT,
};
use protocol::{
    Command, ErrorCode, Op, ReplyBody, Request, RequestId, ResourceName, ServerFrame, SessionId,
};
use tracing::{debug, warn};

use crate::core::{Acquired, AcquiredMany, Claim, Effect, LockError, LockTable};
use crate::metrics::Metrics;

/// What applying a request gave.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Its final reply.
    Reply(Result<ReplyBody, RequestFailed>),
    /// An acquire that waits in line at this position: send a `queued` event now; the reply
    /// comes later as a [`Delivery`].
    Queued(u64),
    /// An acquire whose reply comes later as a [`Delivery`], with nothing to send now (a
    /// try-lock awaiting fencing tokens).
    Later,
}

/// A value a `write` replaced, for a caller that may have to undo it.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) resource: ResourceName,
    pub(crate) value: Arc<str>,
    pub(crate) previous: Option<Arc<str>>,
}

/// Why a request failed: the table refused it, or the server did before asking the table. Each
/// maps to one wire error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestFailed {
    /// The lock table refused it.
    #[error("{0}{hint}", hint = flag_hint(.0))]
    Lock(#[from] LockError),
    /// `hello` asked to resume a session that does not exist (or cannot be resumed here); the
    /// text says why.
    #[error("no such session: {0}")]
    NoSession(String),
    /// A cluster command (`cluster_status`, `add_node`, `remove_node`) sent to a server that is
    /// not in cluster mode.
    #[error("this lockd is a single server; cluster commands need cluster mode (--node-id)")]
    NotACluster,
    /// A `status` asked for a page larger than the server allows.
    #[error(
        "`limit` {asked} is above this server's largest status page, {max} (--max-status-limit)"
    )]
    PageTooLarge { asked: u64, max: u64 },
}

impl RequestFailed {
    /// The failure of a request whose session no longer exists: its lease ran out, or it was
    /// closed, before the request was applied.
    pub(crate) fn session_gone(session: SessionId) -> RequestFailed {
        RequestFailed::NoSession(format!(
            "session {session} expired or was closed; its locks are gone"
        ))
    }

    /// The wire code for this failure.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            RequestFailed::Lock(err) => err.code(),
            RequestFailed::NoSession(_) => ErrorCode::NoSession,
            RequestFailed::NotACluster | RequestFailed::PageTooLarge { .. } => {
                ErrorCode::BadRequest
            }
        }
    }
}

/// The flag that sets the limit a refusal names, so the message says what to change.
fn flag_hint(err: &LockError) -> &'static str {
    match err {
        LockError::TooManyLocks { .. } => " (--max-locks-per-session)",
        LockError::TooManyWaits { .. } => " (--max-waits-per-session)",
        LockError::TooManyWatches { .. } => " (--max-watches-per-session)",
        LockError::TooManyResources { .. } => " (--max-resources-per-acquire)",
        _ => "",
    }
}

/// What every backend applies requests with: the server's name for `hello`, and the metrics
/// that count what the table does.
#[derive(Debug)]
pub(crate) struct Applier {
    server_name: String,
    metrics: Arc<Metrics>,
}

impl Applier {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Applier {
        Applier {
            server_name: format!("lockd {}", env!("CARGO_PKG_VERSION")),
            metrics,
        }
    }

    /// Applies `request` of `session` to `table` at `now`; see [`apply`].
    pub(crate) fn apply(
        &self,
        table: &mut LockTable,
        now: Instant,
        session: SessionId,
        request: Request,
    ) -> (Answer, Option<Written>) {
        apply(
            table,
            now,
            session,
            request,
            &self.server_name,
            &self.metrics,
        )
    }

    /// What the table produced since the last call; see [`take_deliveries`].
    pub(crate) fn take_deliveries(&self, table: &mut LockTable) -> Vec<Delivery> {
        take_deliveries(table, &self.metrics)
    }
}

/// Applies `request` of `session` to `table` at `now`. `server` is the name `hello` reports;
/// refused acquires are counted in `metrics` (the table observes only waits that end).
fn apply(
    table: &mut LockTable,
    now: Instant,
    session: SessionId,
    request: Request,
    server: &str,
    metrics: &Metrics,
) -> (Answer, Option<Written>) {
    let mut written = None;
    let result = match request.command {
        Command::Hello(hello) => table
            .handle_hello(now, session, hello.client, hello.lease_ms)
            .map(|lease| {
                ReplyBody::Hello(HelloOk {
                    session,
                    lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                    server: server.to_owned(),
                    protocol: protocol::PROTOCOL_VERSION,
                    // The cluster's front end adds it on the connection that opened the session.
                    resume_secret: None,
                })
            })
            .map_err(RequestFailed::from),
        Command::Acquire(acquire) => {
            let (mode, permits) = (acquire.mode, acquire.permits);
            let claim = permits.map_or(Claim::Lock(mode), Claim::Permits);
            let timeout = acquire.timeout_ms.map(Duration::from_millis);
            let lock_delay = acquire.lock_delay_ms.map(Duration::from_millis);
            // Parsing allows a value only on an exclusive lock: that is a campaign.
            let acquired = match acquire.value {
                Some(value) => table.handle_campaign(
                    now,
                    session,
                    request.id,
                    acquire.resource,
                    Arc::from(value),
                    timeout,
                    lock_delay,
                ),
                None => table.handle_acquire(
                    now,
                    session,
                    request.id,
                    acquire.resource,
                    claim,
                    timeout,
                    lock_delay,
                ),
            };
            match acquired {
                Ok(Acquired::Granted(token)) => Ok(ReplyBody::Acquired(AcquireOk {
                    token,
                    mode,
                    permits,
                })),
                Ok(Acquired::Queued { position }) => return (Answer::Queued(position), None),
                Ok(Acquired::AwaitingTokens) => return (Answer::Later, None),
                Err(err) => {
                    match err {
                        LockError::Timeout(_) => metrics.try_once_failed(mode),
                        LockError::Deadlock { .. } => metrics.deadlock(mode),
                        _ => {}
                    }
                    Err(err.into())
                }
            }
        }
        Command::AcquireMany(acquire) => {
            let members: Vec<_> = acquire
                .resources
                .iter()
                .map(|member| (member.resource.clone(), member.mode))
                .collect();
            match table.handle_acquire_many(
                now,
                session,
                request.id,
                members,
                acquire.timeout_ms.map(Duration::from_millis),
                acquire.lock_delay_ms.map(Duration::from_millis),
            ) {
                Ok(AcquiredMany::Granted(tokens)) => {
                    let tokens = acquire
                        .resources
                        .into_iter()
                        .zip(tokens)
                        .map(|(member, token)| MemberToken {
                            resource: member.resource,
                            token,
                            mode: member.mode,
                        })
                        .collect();
                    Ok(ReplyBody::AcquiredMany(AcquireManyOk { tokens }))
                }
                Ok(AcquiredMany::Queued { position }) => return (Answer::Queued(position), None),
                Ok(AcquiredMany::AwaitingTokens) => return (Answer::Later, None),
                Err(err) => {
                    // Counted under the mode of the group's first member.
                    let mode = acquire
                        .resources
                        .first()
                        .map(|m| m.mode)
                        .unwrap_or_default();
                    match err {
                        LockError::Timeout(_) => metrics.try_once_failed(mode),
                        LockError::Deadlock { .. } => metrics.deadlock(mode),
                        _ => {}
                    }
                    Err(err.into())
                }
            }
        }
        Command::Release(release) => table
            .handle_release(now, session, &release.resource, release.token)
            .map(|()| ReplyBody::EMPTY)
            .map_err(RequestFailed::from),
        Command::Write(write) => {
            let value: Arc<str> = Arc::from(write.value);
            table
                .handle_write(session, &write.resource, write.token, Arc::clone(&value))
                .map(|previous| {
                    written = Some(Written {
                        resource: write.resource,
                        value,
                        previous,
                    });
                    ReplyBody::EMPTY
                })
                .map_err(RequestFailed::from)
        }
        Command::Cancel(cancel) => table
            .handle_cancel(now, session, cancel.target)
            .map(|()| ReplyBody::EMPTY)
            .map_err(RequestFailed::from),
        Command::Read(read) => ReadOnly::Read(read).answer(table, now, session),
        Command::Validate(validate) => ReadOnly::Validate(validate).answer(table, now, session),
        Command::Status(status) => ReadOnly::Status(status).answer(table, now, session),
        Command::Ping => ReadOnly::Ping.answer(table, now, session),
        Command::Watch(watch) => table
            .handle_watch(session, request.id, watch.resource)
            .map(|()| ReplyBody::EMPTY)
            .map_err(RequestFailed::from),
        Command::Unwatch(unwatch) => table
            .handle_unwatch(session, unwatch.target)
            .map(|()| ReplyBody::EMPTY)
            .map_err(RequestFailed::from),
        // A cluster's front end answers these itself; a single server has no cluster.
        Command::ClusterStatus | Command::AddNode(_) | Command::RemoveNode(_) => {
            Err(RequestFailed::NotACluster)
        }
    };
    (Answer::Reply(result), written)
}

/// A request that only reads the table. It changes nothing, so a cluster's leader may answer
/// it from the state it has applied once it has confirmed that it still leads (a ReadIndex
/// read), without a log entry.
#[derive(Debug)]
pub(crate) enum ReadOnly {
    Read(Read),
    Validate(Validate),
    Status(Status),
    Ping,
}

impl ReadOnly {
    /// The read-only op `command` is, or `command` back if it may change the table.
    pub(crate) fn from_command(command: Command) -> Result<ReadOnly, Command> {
        match command {
            Command::Read(read) => Ok(ReadOnly::Read(read)),
            Command::Validate(validate) => Ok(ReadOnly::Validate(validate)),
            Command::Status(status) => Ok(ReadOnly::Status(status)),
            Command::Ping => Ok(ReadOnly::Ping),
            other => Err(other),
        }
    }

    /// Its name, for metrics and logs.
    pub(crate) fn op(&self) -> Op {
        match self {
            ReadOnly::Read(_) => Op::Read,
            ReadOnly::Validate(_) => Op::Validate,
            ReadOnly::Status(_) => Op::Status,
            ReadOnly::Ping => Op::Ping,
        }
    }

    /// The command again, for a backend that sends it through its log after all.
    pub(crate) fn into_command(self) -> Command {
        match self {
            ReadOnly::Read(read) => Command::Read(read),
            ReadOnly::Validate(validate) => Command::Validate(validate),
            ReadOnly::Status(status) => Command::Status(status),
            ReadOnly::Ping => Command::Ping,
        }
    }

    /// What `session` is told, from `table` at `now`.
    pub(crate) fn answer(
        &self,
        table: &LockTable,
        now: Instant,
        session: SessionId,
    ) -> Result<ReplyBody, RequestFailed> {
        match self {
            ReadOnly::Read(read) => table
                .read(session, &read.resource, read.token)
                .map(|value| {
                    ReplyBody::Value(ReadOk {
                        value: value.map(str::to_owned),
                    })
                })
                .map_err(RequestFailed::from),
            ReadOnly::Validate(validate) => Ok(ReplyBody::Validated(ValidateOk {
                valid: table.validate(&validate.resource, validate.token),
            })),
            ReadOnly::Status(status) => status_reply(table, now, status).map(ReplyBody::Status),
            ReadOnly::Ping => Ok(ReplyBody::EMPTY),
        }
    }
}

/// The answer to `status`: one resource, or one page of busy resources, built in time that
/// follows the page, not the table (so a client cannot make the backend, or a cluster's state
/// machine on every node, walk a huge table for one request).
fn status_reply(
    table: &LockTable,
    now: Instant,
    status: &Status,
) -> Result<StatusOk, RequestFailed> {
    if let Some(resource) = &status.resource {
        return Ok(StatusOk {
            resources: table.status(now, Some(resource)),
            next: None,
        });
    }
    let max = table.config().max_status_limit;
    let limit = status.limit.unwrap_or(DEFAULT_STATUS_LIMIT.min(max));
    if limit > max {
        return Err(RequestFailed::PageTooLarge { asked: limit, max });
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let page = table.status_page(now, status.after.as_ref(), limit);
    Ok(StatusOk {
        resources: page.resources,
        next: page.next,
    })
}

/// The frame that answers request `id` with `result`.
pub(crate) fn reply_frame(id: RequestId, result: Result<ReplyBody, RequestFailed>) -> ServerFrame {
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

/// What the table's effects ask a backend to do.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Send this frame to the session: a waiting acquire's grant or failure.
    Frame(SessionId, ServerFrame),
    /// Send this event of the watch `watch` to the session, through its watch backlog
    /// (`seam::Outbox::send_watch_event`), which bounds what a slow watcher costs.
    Watch {
        session: SessionId,
        watch: RequestId,
        event: WatchEvent,
    },
    /// The session's lease ran out and the table has ended it: close its connection.
    Expired(SessionId),
}

/// Takes what the table produced since the last call: counts its observations (and
/// expirations) in `metrics`, and turns its effects into deliveries, in the table's order.
/// Every backend calls this after every input to the table.
fn take_deliveries(table: &mut LockTable, metrics: &Metrics) -> Vec<Delivery> {
    while let Some(observation) = table.poll_observation() {
        metrics.observe(observation);
    }
    metrics
        .watches
        .set(i64::try_from(table.watch_count()).unwrap_or(i64::MAX));
    metrics
        .group_waiters
        .set(i64::try_from(table.group_waiter_count()).unwrap_or(i64::MAX));
    let mut deliveries = Vec::new();
    while let Some(effect) = table.poll_effect() {
        deliveries.push(match effect {
            Effect::Granted {
                session,
                request,
                resource,
                token,
                mode,
                permits,
            } => {
                debug!(session = session.0, %resource, token = token.0, "granted after waiting");
                let body = ReplyBody::Acquired(AcquireOk {
                    token,
                    mode,
                    permits,
                });
                Delivery::Frame(session, reply_frame(request, Ok(body)))
            }
            Effect::GroupGranted {
                session,
                request,
                tokens,
            } => {
                debug!(
                    session = session.0,
                    members = tokens.len(),
                    "group granted after waiting"
                );
                let tokens = tokens
                    .into_iter()
                    .map(|(resource, token, mode)| MemberToken {
                        resource,
                        token,
                        mode,
                    })
                    .collect();
                let body = ReplyBody::AcquiredMany(AcquireManyOk { tokens });
                Delivery::Frame(session, reply_frame(request, Ok(body)))
            }
            Effect::WaitFailed {
                session,
                request,
                resource,
                reason,
            } => {
                let error = RequestFailed::Lock(reason.to_error(resource));
                Delivery::Frame(session, reply_frame(request, Err(error)))
            }
            Effect::Watch {
                session,
                watch,
                event,
            } => Delivery::Watch {
                session,
                watch,
                event,
            },
            Effect::SessionExpired { session } => {
                metrics.expirations.inc();
                Delivery::Expired(session)
            }
        });
    }
    deliveries
}
