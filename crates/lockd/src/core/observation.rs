//! What the lock table reports for metrics: every grant, and every hold and wait that ended,
//! with how long it lasted and why it ended.
//!
//! Observations are not effects. Nobody has to act on them, and ignoring them changes nothing
//! but the numbers on a dashboard. They exist because only the table knows when a hold began and
//! why it ended (a release, a disconnect, a lease that ran out, an operator), so without them the
//! driver would have to keep a shadow copy of the table to count and time lock traffic. They are
//! small `Copy` values with no resource name, so recording one never allocates once the queue
//! has grown to a turn's worth.

use std::num::NonZeroU16;
use std::time::Duration;

use protocol::LockMode;

/// One fact about lock traffic, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A lock was granted, at once (`waited` is zero) or after waiting in line.
    Granted {
        /// The mode granted.
        mode: LockMode,
        /// For a semaphore: the permits granted.
        permits: Option<NonZeroU16>,
        /// How long the acquire waited in the queue.
        waited: Duration,
    },
    /// A lock stopped being held.
    HoldEnded {
        /// The mode it was held in.
        mode: LockMode,
        /// How long it was held.
        held: Duration,
        /// Why the hold ended.
        reason: HoldEnd,
    },
    /// A waiting acquire left the queue without being granted.
    WaitEnded {
        /// The mode it asked for.
        mode: LockMode,
        /// How long it waited.
        waited: Duration,
        /// Why it stopped waiting.
        reason: WaitEnd,
    },
    /// A hold that carried a lock-delay ended other than by `release`: its resource is granted
    /// to nobody for `delay`.
    /// A multi-resource acquire was granted, at once or after waiting. Each of its members
    /// is also a `Granted`.
    GroupGranted,
    LockDelayed {
        /// How long the resource is held back.
        delay: Duration,
    },
}

/// Why a session ended, and with it everything it held or waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Its connection closed.
    Disconnected,
    /// Nothing was heard from it for its whole lease.
    Expired,
    /// An operator forced the release of a lock it held
    /// ([`LockTable::handle_force_release`](super::LockTable::handle_force_release)).
    Forced,
}

/// Why a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The holder sent `release`.
    Released,
    /// The holder's session ended.
    SessionEnded(SessionEnd),
}

/// Why a wait ended without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// Its `timeout_ms` ran out.
    Timeout,
    /// Its session sent `cancel` for it.
    Cancelled,
    /// The waiting session ended.
    SessionEnded(SessionEnd),
}
