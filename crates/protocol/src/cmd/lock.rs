//! Lock commands: `acquire`, `release`, `cancel`, `validate` and `status`.

use std::num::NonZeroU16;

use serde::{Deserialize, Serialize};

use crate::ids::{FenceToken, LockMode, RequestId, SessionId};
use crate::name::ResourceName;

/// `acquire`: take a lock on a resource, waiting in its FIFO queue if need be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    /// The resource; created on demand.
    pub resource: ResourceName,
    /// Exclusive (the default) or shared.
    #[serde(default)]
    pub mode: LockMode,
    /// How long to wait: absent waits as long as it takes, 0 tries once and never queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Lock-delay: if this holder's lock is freed by anything but its own `release` (its
    /// session expired, its connection closed, an operator evicted it), the resource is granted
    /// to nobody until this many milliseconds have passed. Absent: the server's default
    /// (`--default-lock-delay-ms`, 0 unless set); clamped to `--max-lock-delay-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay_ms: Option<u64>,
    /// A semaphore acquire: `permits` of a resource that `limit` holds can share. Its `mode`
    /// is `shared` (permit holders share the resource: they may `read`, not `write`).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<Permits>,
    /// A campaign for leadership: the value (a candidate's address, say) that the hold carries
    /// from the instant it is granted until it ends. Only on an exclusive lock. Watchers see it
    /// in the same `granted` event as the token, so the new holder's token is never shown with
    /// someone else's value; it is not the resource's stored value (`read`/`write`), and it
    /// goes with the hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The largest `limit` a semaphore may have.
pub const MAX_PERMIT_LIMIT: u16 = u16::MAX;

/// How many permits a semaphore acquire asks for, and the semaphore's limit: at least one
/// permit, at most `limit`, and `limit` at most [`MAX_PERMIT_LIMIT`]. Checked once, when built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPermits")]
pub struct Permits {
    #[serde(rename = "permits")]
    count: NonZeroU16,
    limit: NonZeroU16,
}

#[derive(Deserialize)]
struct RawPermits {
    permits: u64,
    limit: u64,
}

impl TryFrom<RawPermits> for Permits {
    type Error = String;

    fn try_from(raw: RawPermits) -> Result<Permits, String> {
        Permits::new(raw.permits, raw.limit)
    }
}

impl Permits {
    /// `count` permits of a semaphore of `limit`; the error says which rule they break.
    pub fn new(count: u64, limit: u64) -> Result<Permits, String> {
        let limit = u16::try_from(limit)
            .ok()
            .and_then(NonZeroU16::new)
            .ok_or_else(|| format!("`limit` must be from 1 to {MAX_PERMIT_LIMIT}, not {limit}"))?;
        let count = u16::try_from(count)
            .ok()
            .and_then(NonZeroU16::new)
            .filter(|count| *count <= limit)
            .ok_or_else(|| format!("`permits` must be from 1 to the limit {limit}, not {count}"))?;
        Ok(Permits { count, limit })
    }

    /// How many permits are asked for.
    pub fn count(self) -> NonZeroU16 {
        self.count
    }

    /// How many permits the semaphore has in all.
    pub fn limit(self) -> NonZeroU16 {
        self.limit
    }
}

/// The result of a granted `acquire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireOk {
    /// The fencing token of this grant.
    pub token: FenceToken,
    /// The mode granted (the one asked for; `shared` for permits).
    pub mode: LockMode,
    /// For a semaphore acquire: the permits granted and the semaphore's limit.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<Permits>,
}

/// `acquire` with `resources`: several locks granted all at once or not at all.
///
/// The request waits, under one ticket, in the queue of every resource it names, and holds
/// nothing while it waits. It is granted when it can be granted in every one of its queues at
/// once; until then it keeps its place in each, so a later request for any of them waits
/// behind it (FIFO, as a later reader waits behind a waiting writer). Members are locks
/// (exclusive or shared), not semaphore permits. Once granted, each member is an ordinary hold
/// with its own token, released (and fenced) on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireMany {
    /// What to lock: at least one resource, each named once.
    pub resources: Vec<Member>,
    /// How long to wait for all of them: absent waits as long as it takes, 0 tries once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Every member's lock-delay, as for a single `acquire`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay_ms: Option<u64>,
}

/// One resource of an [`AcquireMany`], with the mode to hold it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The resource.
    pub resource: ResourceName,
    /// Exclusive (the default) or shared.
    #[serde(default)]
    pub mode: LockMode,
}

/// The result of a granted [`AcquireMany`]: one token per resource, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireManyOk {
    /// Each member's grant.
    pub tokens: Vec<MemberToken>,
}

/// One member's grant in an [`AcquireManyOk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberToken {
    /// The resource.
    pub resource: ResourceName,
    /// Its fencing token: release, read, write and validate it with this token.
    pub token: FenceToken,
    /// The mode granted.
    pub mode: LockMode,
}

/// `release`: give back a lock held with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The resource.
    pub resource: ResourceName,
    /// The token the lock was granted with.
    pub token: FenceToken,
}

/// `cancel`: withdraw a waiting `acquire` sent earlier on the same connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The `id` of the waiting acquire.
    pub target: RequestId,
}

/// `validate`: whether `token` is the token of a current holder of `resource`. Any session may
/// ask, so a downstream service can check a writer's fencing token before it accepts a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validate {
    /// The resource.
    pub resource: ResourceName,
    /// The token to check.
    pub token: FenceToken,
}

/// The result of `validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateOk {
    /// True when a current holder of the resource holds it with that token.
    pub valid: bool,
}

/// The page size of a `status` that does not give `limit`. A server may allow larger pages up
/// to its own maximum (lockd: `--max-status-limit`).
pub const DEFAULT_STATUS_LIMIT: u64 = 1_000;

/// `status`: who holds and who waits, one page of resources at a time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Status {
    /// One resource (always reported, even when idle), or busy resources when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceName>,
    /// The most resources in the reply; absent means [`DEFAULT_STATUS_LIMIT`]. Not with
    /// `resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Only resources whose names sort after this one: the `next` of the previous page. Not
    /// with `resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ResourceName>,
}

impl Status {
    /// The page that follows `previous`'s `next` cursor, of `limit` resources (the server's
    /// default when `None`).
    pub fn page(after: Option<ResourceName>, limit: Option<u64>) -> Status {
        Status {
            resource: None,
            limit,
            after,
        }
    }

    /// One resource, reported even when idle.
    pub fn one(resource: ResourceName) -> Status {
        Status {
            resource: Some(resource),
            limit: None,
            after: None,
        }
    }
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusOk {
    /// Resources in name order.
    pub resources: Vec<ResourceStatus>,
    /// Where the next page starts: send it as `after` to get that page. `null` on the last
    /// page (and for one resource); absent from servers older than paging, which always sent
    /// everything.
    #[serde(default)]
    pub next: Option<ResourceName>,
}

impl StatusOk {
    /// The `after` that asks for the page following this one, which was asked for with
    /// `after`: `None` on the last page. Also `None` if the server's cursor does not move
    /// forward, so that a client that follows cursors always comes to an end.
    pub fn next_after(&self, after: Option<&ResourceName>) -> Option<ResourceName> {
        self.next
            .clone()
            .filter(|next| after.is_none_or(|after| next > after))
    }
}

/// One resource in a `status` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// The resource.
    pub resource: ResourceName,
    /// Current holders, in grant order.
    pub holders: Vec<HolderStatus>,
    /// Waiters, first in line first.
    pub waiters: Vec<WaiterStatus>,
    /// While the resource is in lock-delay (a holder that asked for one lost its lock other
    /// than by `release`): how many milliseconds remain before it can be granted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_ms: Option<u64>,
    /// For a semaphore: how many permits its holders share in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u16>,
    /// For a semaphore: how many permits its holders hold now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits_used: Option<u32>,
}

/// A holder in a `status` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderStatus {
    /// The holding session.
    pub session: SessionId,
    /// The client name its `hello` gave; absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Its connection's address (`ip:port`), as the server sees it; absent in a cluster, whose
    /// replicated table answers `status` and knows no connections (see `/v1/locks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The mode held.
    pub mode: LockMode,
    /// The fencing token of the grant.
    pub token: FenceToken,
    /// How long the lock has been held, in milliseconds.
    pub held_ms: u64,
    /// The lock-delay this holder asked for (in force if it loses the lock other than by
    /// `release`); absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_delay_ms: u64,
    /// For a semaphore: how many of its permits this holder holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<u16>,
    /// The value its campaign carries (an acquire with `value`: it leads); absent for a plain
    /// lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn is_zero(ms: &u64) -> bool {
    *ms == 0
}

/// A waiter in a `status` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterStatus {
    /// The waiting session.
    pub session: SessionId,
    /// The client name its `hello` gave; absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Its connection's address, as for a holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The mode asked for.
    pub mode: LockMode,
    /// How long it has waited, in milliseconds.
    pub waited_ms: u64,
    /// For a semaphore: how many permits it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<u16>,
    /// For a multi-resource acquire: every resource it waits for, this one included, in its
    /// request's order. It waits in each of their queues and is granted in all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Vec<ResourceName>>,
}
