//! `watch` and `unwatch`: a session subscribes to a resource's changes, and the events that
//! follow, tagged with the watch's request id.
//!
//! Every event names its resource, so that a watch of several resources (a prefix, later) fits
//! the same frame. The first event of a watch is `state` (holders, value, queue length); after
//! that come changes, one per event, in the order the table made them. A watcher that fell
//! too far behind gets `resync`, the state as it is now, instead of the changes it missed.

use serde::{Deserialize, Serialize};

use crate::ids::{FenceToken, LockMode, RequestId, SessionId};
use crate::name::ResourceName;

/// `{"id":N,"op":"watch","resource":"..."}`: subscribe to `resource`. The reply is
/// `{"id":N,"ok":true}`, then events with the same id until `unwatch` or the session's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Watch {
    /// The resource to watch.
    pub resource: ResourceName,
}

/// `{"id":M,"op":"unwatch","target":N}`: end the watch started by request `N`. No event of it
/// follows the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unwatch {
    /// The `watch` request's id.
    pub target: RequestId,
}

/// One event of a watch: `{"id":N,"event":"watch","kind":"...","resource":"...", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The resource that changed (or whose state this is).
    pub resource: ResourceName,
    /// What happened, with its fields.
    #[serde(flatten)]
    pub change: WatchChange,
}

/// What a watch event reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchChange {
    /// The first event of every watch: the resource as it is.
    State(WatchState),
    /// The watcher fell behind: the events it missed were dropped, and this is the resource as
    /// it is now. Later events follow on from it.
    Resync(WatchState),
    /// A session was granted the lock.
    Granted(WatchHolder),
    /// A holder gave the lock back: `release`, or its connection closed.
    Released(WatchHolder),
    /// A holder lost the lock without giving it back: its lease ran out, or an operator forced
    /// the release.
    Expired(WatchHolder),
    /// The holder of the exclusive lock wrote the value.
    Written {
        /// The writer's fencing token.
        token: FenceToken,
        /// The new value.
        value: String,
    },
    /// The number of acquires waiting in line changed.
    Queue {
        /// How many wait now.
        queue: u64,
    },
}

/// A resource's state, in `state` and `resync` events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    /// Its holders, in grant order.
    pub holders: Vec<WatchHolder>,
    /// Its value; `null` when never written.
    pub value: Option<String>,
    /// How many acquires wait in line.
    pub queue: u64,
}

/// A holder, in watch events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchHolder {
    /// The holding session.
    pub session: SessionId,
    /// Its fencing token.
    pub token: FenceToken,
    /// The mode held.
    pub mode: LockMode,
    /// The value its campaign carries (an acquire with `value`); absent for a plain lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The default for how many watches one session may have open at once
/// (`--max-watches-per-session`).
pub const DEFAULT_MAX_WATCHES_PER_SESSION: usize = 64;
