//! One client request against the lock table, turned into what to send back: shared by the
//! single server's driver and the cluster's state machine, so that both answer every op the
//! same way. What differs between them (a single server's commit of writes, a cluster's
//! retries) stays with the caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::cmd::{AcquireOk, HelloOk, ReadOk, StatusOk, ValidateOk};
use protocol::{
    Command, ErrorCode, ReplyBody, Request, RequestId, ResourceName, ServerFrame, SessionId,
};
use tracing::warn;

use crate::core::{Acquired, Effect, LockError, LockTable};

/// What a request gave.
#[derive(Debug)]
pub(crate) enum Executed {
    /// Its final reply.
    Reply(Result<ReplyBody, LockError>),
    /// An acquire that waits in line at this position: send a `queued` event now; the reply
    /// comes later as an effect.
    Queued(u64),
}

/// A value a `write` replaced, for a caller that may have to undo it.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) resource: ResourceName,
    pub(crate) value: Arc<str>,
    pub(crate) previous: Option<Arc<str>>,
}

/// Runs `request` of `session` against `table` at `now`. `server` is the name `hello` reports.
pub(crate) fn execute(
    table: &mut LockTable,
    now: Instant,
    session: SessionId,
    request: Request,
    server: &str,
) -> (Executed, Option<Written>) {
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
                })
            }),
        Command::Acquire(acquire) => {
            let mode = acquire.mode;
            match table.handle_acquire(
                now,
                session,
                request.id,
                acquire.resource,
                mode,
                acquire.timeout_ms.map(Duration::from_millis),
            ) {
                Ok(Acquired::Granted(token)) => Ok(ReplyBody::Acquired(AcquireOk { token, mode })),
                Ok(Acquired::Queued { position }) => return (Executed::Queued(position), None),
                Err(err) => Err(err),
            }
        }
        Command::Release(release) => table
            .handle_release(now, session, &release.resource, release.token)
            .map(|()| ReplyBody::EMPTY),
        Command::Read(read) => table
            .read(session, &read.resource, read.token)
            .map(|value| {
                ReplyBody::Value(ReadOk {
                    value: value.map(str::to_owned),
                })
            }),
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
        }
        Command::Cancel(cancel) => table
            .handle_cancel(now, session, cancel.target)
            .map(|()| ReplyBody::EMPTY),
        Command::Validate(validate) => Ok(ReplyBody::Validated(ValidateOk {
            valid: table.validate(&validate.resource, validate.token),
        })),
        Command::Ping => Ok(ReplyBody::EMPTY),
        Command::Status(status) => Ok(ReplyBody::Status(StatusOk {
            resources: table.status(now, status.resource.as_ref()),
        })),
        // A cluster's front end answers these itself; a single server has no cluster.
        Command::ClusterStatus | Command::AddNode(_) | Command::RemoveNode(_) => {
            Err(LockError::NotACluster)
        }
    };
    (Executed::Reply(result), written)
}

/// The frame that answers request `id` with `result`.
pub(crate) fn reply_frame(id: RequestId, result: Result<ReplyBody, LockError>) -> ServerFrame {
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

/// The frame an effect sends to its session: a waiting acquire's grant or failure. `None` for
/// a session's expiry, which closes its connection instead (each caller does that its way).
pub(crate) fn effect_frame(effect: &Effect) -> Option<(SessionId, ServerFrame)> {
    match effect {
        Effect::Granted {
            session,
            request,
            token,
            mode,
            ..
        } => {
            let body = ReplyBody::Acquired(AcquireOk {
                token: *token,
                mode: *mode,
            });
            Some((*session, reply_frame(*request, Ok(body))))
        }
        Effect::WaitFailed {
            session,
            request,
            resource,
            reason,
        } => {
            let error = reason.to_error(resource.clone());
            Some((*session, reply_frame(*request, Err(error))))
        }
        Effect::SessionExpired { .. } => None,
    }
}
