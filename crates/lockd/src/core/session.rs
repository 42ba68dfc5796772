//! What the table remembers about one session: its lease and what it holds or waits for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::{FenceToken, LockMode, RequestId, ResourceName};

use super::queue::Ticket;

/// One session's part in the table.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: Option<String>,
    pub(crate) lease: Duration,
    /// When the client last sent a frame; the lease runs from here.
    pub(crate) last_seen: Instant,
    /// The lease deadline currently in the table's deadline set. Touching the session does not
    /// move it (that would cost a set update per frame); when it fires, the table checks
    /// `last_seen + lease` and schedules again if the client was heard from since.
    pub(crate) scheduled_expiry: Instant,
    /// Every resource this session holds or waits for, at most one entry each.
    pub(crate) resources: HashMap<ResourceName, Involvement>,
    /// Waiting acquires by request id, for `cancel`.
    pub(crate) waits: HashMap<RequestId, ResourceName>,
}

/// How a session takes part in one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Involvement {
    Holding { token: FenceToken, mode: LockMode },
    Waiting { ticket: Ticket, request: RequestId },
}

impl Session {
    pub(crate) fn new(now: Instant, lease: Duration) -> Session {
        Session {
            client: None,
            lease,
            last_seen: now,
            scheduled_expiry: now + lease,
            resources: HashMap::new(),
            waits: HashMap::new(),
        }
    }

    /// When the session expires if it stays silent from now on.
    pub(crate) fn expires_at(&self) -> Instant {
        self.last_seen + self.lease
    }
}
