//! What the table remembers about one session: its lease and what it holds or waits for.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use protocol::{RequestId, ResourceName};

use super::queue::Ticket;

/// One session's part in the table. Cloned only when a map node shared with a snapshot is
/// written to (see `LockTable::snapshot`).
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) client: Option<String>,
    pub(crate) lease: Duration,
    /// When the client last sent a frame; the lease runs from here.
    pub(crate) last_seen: Instant,
    /// The lease deadline currently in the table's deadline set. Touching the session does not
    /// move it (that would cost a set update per frame); when it fires, the table checks
    /// `last_seen + lease` and schedules again if the client was heard from since.
    pub(crate) scheduled_expiry: Instant,
    /// Every resource this session holds. Only the names: the token and mode are in the
    /// resource's queue, which has to keep them anyway. A session may hold thousands of locks,
    /// or a million. Persistent like the table's maps, so that a session shared with a snapshot
    /// is copied in O(1) when it is next touched (every frame touches it), not name by name,
    /// which stopped apply for as long as the set took to copy.
    pub(crate) held: imbl::HashSet<ResourceName>,
    /// Every resource this session waits for, with its ticket in that resource's queue. Apart
    /// from `held` because waits are few (at most `max_waits_per_session`) and need the ticket.
    /// A resource is never in both: a session holds or waits for it at most once. Ordered: the
    /// deadlock search walks it, and every replica must find the same cycle (a hash map's
    /// order differs between two copies of one table, and so did the `deadlock` message).
    pub(crate) waiting: BTreeMap<ResourceName, Ticket>,
    /// Waiting acquires by request id, for `cancel`.
    pub(crate) waits: HashMap<RequestId, ResourceName>,
}

impl Session {
    pub(crate) fn new(now: Instant, lease: Duration) -> Session {
        Session {
            client: None,
            lease,
            last_seen: now,
            scheduled_expiry: now + lease,
            held: imbl::HashSet::new(),
            waiting: BTreeMap::new(),
            waits: HashMap::new(),
        }
    }

    /// How many resources the session holds or waits for.
    pub(crate) fn lock_count(&self) -> usize {
        self.held.len() + self.waiting.len()
    }

    /// When the session expires if it stays silent from now on.
    pub(crate) fn expires_at(&self) -> Instant {
        self.last_seen + self.lease
    }
}
