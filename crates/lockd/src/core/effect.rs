//! What the lock table tells its driver: effects for other sessions, and errors for the caller.

use std::num::NonZeroU16;

use protocol::cmd::{Permits, WatchEvent};
use protocol::{ErrorCode, FenceToken, LockMode, RequestId, ResourceName, SessionId};

/// Something the driver must deliver, produced as a consequence of an input. The caller's own
/// reply is the input method's return value; effects are for everyone else (and for the
/// caller's earlier requests, such as a waiting acquire that a `cancel` withdrew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A waiting acquire was granted: reply to `request` of `session` with the token.
    Granted {
        /// The session that waited.
        session: SessionId,
        /// Its acquire request.
        request: RequestId,
        /// The resource now held.
        resource: ResourceName,
        /// The fencing token of this grant.
        token: FenceToken,
        /// The mode granted.
        mode: LockMode,
        /// For a semaphore: the permits granted, with its limit.
        permits: Option<Permits>,
    },
    /// A waiting multi-resource acquire was granted, every member at once: reply to `request`
    /// of `session` with a token per resource.
    GroupGranted {
        /// The session that waited.
        session: SessionId,
        /// Its acquire request.
        request: RequestId,
        /// Each member's resource, token and mode, in the request's order.
        tokens: Vec<(ResourceName, FenceToken, LockMode)>,
    },
    /// A waiting acquire ended without a grant: reply with `reason` as the error.
    WaitFailed {
        /// The session that waited.
        session: SessionId,
        /// Its acquire request.
        request: RequestId,
        /// The resource it waited for.
        resource: ResourceName,
        /// Why it stopped waiting.
        reason: WaitFailure,
    },
    /// An event of `session`'s watch `watch` (the id of its `watch` request).
    Watch {
        /// The watching session.
        session: SessionId,
        /// The watch's id.
        watch: RequestId,
        /// What happened.
        event: WatchEvent,
    },
    /// The session sent nothing for its whole lease: its locks are gone, close its connection.
    SessionExpired {
        /// The expired session.
        session: SessionId,
    },
}

/// Why a waiting acquire ended without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFailure {
    /// Its `timeout_ms` ran out.
    Timeout,
    /// The same connection sent `cancel` for it.
    Cancelled,
}

impl WaitFailure {
    /// How the metrics count a wait that ended this way.
    pub(crate) fn wait_end(self) -> super::observation::WaitEnd {
        match self {
            WaitFailure::Timeout => super::observation::WaitEnd::Timeout,
            WaitFailure::Cancelled => super::observation::WaitEnd::Cancelled,
        }
    }

    /// The error to send for it.
    pub fn to_error(self, resource: ResourceName) -> LockError {
        match self {
            WaitFailure::Timeout => LockError::Timeout(resource),
            WaitFailure::Cancelled => LockError::Cancelled(resource),
        }
    }
}

/// Why an input to the lock table was refused. Each maps to one wire error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The session already holds or waits for the resource.
    #[error(
        "this session already {} {resource}; locks are not re-entrant",
        if *holding { "holds" } else { "waits for" }
    )]
    AlreadyHeld {
        /// The resource.
        resource: ResourceName,
        /// True when it holds the lock, false when it waits for it.
        holding: bool,
    },
    /// The lock was not free and the acquire asked not to wait (or its wait ran out).
    #[error("the lock on {0} was not granted within the acquire's timeout")]
    Timeout(ResourceName),
    /// A waiting acquire was withdrawn by `cancel`.
    #[error("the acquire of {0} was cancelled")]
    Cancelled(ResourceName),
    /// The session holds no lock on the resource with that token.
    #[error("this session holds no lock on {0} with token {1}")]
    NotHeld(ResourceName, FenceToken),
    /// A write under a shared lock.
    #[error("the lock on {0} is held shared; writing needs the exclusive lock")]
    NotExclusive(ResourceName),
    /// A value over the size limit.
    #[error("the value is {0} bytes; the limit is {1}")]
    ValueTooLarge(usize, usize),
    /// Waiting would close a cycle of sessions waiting for each other; the text names it.
    #[error("acquiring {resource} would deadlock: {cycle}")]
    Deadlock {
        /// The resource asked for.
        resource: ResourceName,
        /// The cycle, e.g. "session 1 waits for b held by session 2; session 2 waits for a
        /// held by session 1".
        cycle: String,
    },
    /// The acquire's limit is not the resource's: another limit, or a lock against a semaphore.
    #[error("{}", describe_mismatch(.resource, *.asked, *.current))]
    LimitMismatch {
        /// The resource asked for.
        resource: ResourceName,
        /// The limit the acquire gave; `None` for a lock.
        asked: Option<NonZeroU16>,
        /// The limit the resource has; `None` while it is held or awaited as a lock.
        current: Option<NonZeroU16>,
    },
    /// The session already holds or waits for as many resources as it may.
    #[error("this session already holds or waits for {held} locks, the limit")]
    TooManyLocks {
        /// How many it holds or waits for.
        held: usize,
    },
    /// The session already waits for as many resources as it may.
    #[error("this session already waits for {waiting} locks, the limit")]
    TooManyWaits {
        /// How many it waits for.
        waiting: usize,
    },
    /// `cancel` named no waiting acquire of this session.
    #[error("no acquire with id {0} is waiting on this connection")]
    NoSuchWaiter(RequestId),
    /// An acquire reused the id of an acquire of this session that still waits.
    #[error("request id {0} is already used by a waiting acquire on this connection")]
    DuplicateRequestId(RequestId),
    /// The session already has as many watches open as it may.
    #[error("this session already has {watches} watches open, the limit")]
    TooManyWatches {
        /// How many it has open.
        watches: usize,
    },
    /// A `watch` reused the id of a watch of this session that is still open.
    #[error("request id {0} is already used by an open watch on this connection")]
    DuplicateWatchId(RequestId),
    /// `unwatch` named no open watch of this session.
    #[error("no watch with id {0} is open on this connection")]
    NoSuchWatch(RequestId),
    /// A multi-resource acquire names more resources than the server allows in one.
    #[error("this acquire names {asked} resources; one acquire may name at most {max}")]
    TooManyResources {
        /// How many it names.
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// A multi-resource acquire that is no group: no resources, or one named twice. The
    /// protocol refuses both before they reach the table; the table checks again, since it
    /// must hold its invariants whatever its caller does.
    #[error("{0}")]
    BadGroup(String),
    /// The session is gone (closed or expired) while a request of it was still in flight.
    #[error("the session has ended")]
    SessionGone,
}

impl LockError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            LockError::AlreadyHeld { .. } => ErrorCode::AlreadyHeld,
            LockError::Timeout(_) => ErrorCode::Timeout,
            LockError::Cancelled(_) => ErrorCode::Cancelled,
            LockError::NotHeld(..) => ErrorCode::NotHeld,
            LockError::NotExclusive(_) => ErrorCode::NotExclusive,
            LockError::ValueTooLarge(..) => ErrorCode::ValueTooLarge,
            LockError::Deadlock { .. } => ErrorCode::Deadlock,
            LockError::LimitMismatch { .. } => ErrorCode::LimitMismatch,
            LockError::TooManyLocks { .. }
            | LockError::TooManyWaits { .. }
            | LockError::TooManyWatches { .. }
            | LockError::TooManyResources { .. } => ErrorCode::LimitExceeded,
            LockError::NoSuchWaiter(_)
            | LockError::DuplicateRequestId(_)
            | LockError::DuplicateWatchId(_)
            | LockError::NoSuchWatch(_)
            | LockError::BadGroup(_) => ErrorCode::BadRequest,
            LockError::SessionGone => ErrorCode::Internal,
        }
    }
}

/// The message of [`LockError::LimitMismatch`]: what the resource is now, and what to do.
fn describe_mismatch(
    resource: &ResourceName,
    asked: Option<NonZeroU16>,
    current: Option<NonZeroU16>,
) -> String {
    let forgotten = "a limit is forgotten once nobody holds or waits for the resource";
    match (asked, current) {
        (Some(asked), Some(current)) => format!(
            "semaphore {resource} has limit {current}, not {asked}; every acquirer must give \
             the same limit ({forgotten})"
        ),
        (Some(_), None) => format!(
            "resource {resource} is held or awaited as a lock, not a semaphore; acquire it \
             without a limit ({forgotten})"
        ),
        (None, Some(current)) => format!(
            "semaphore {resource} has limit {current}; acquire permits with limit {current} \
             ({forgotten})"
        ),
        (None, None) => format!("resource {resource} is a lock"),
    }
}
