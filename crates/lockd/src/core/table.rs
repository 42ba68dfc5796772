//! The lock table: every resource's holders and FIFO queue, every session, and their deadlines.
//!
//! A deterministic state machine. It does no I/O, reads no clock, spawns nothing and cannot fail
//! on I/O: each input is a method that takes `now` and data, and everything it decides comes
//! back as a return value (for the caller's own request) or as [`Effect`]s (for everyone else).
//! The same inputs in the same order always give the same outputs, which is what lets the
//! Tokio driver be thin, lets tests use a fake clock, and lets a later version replicate the
//! table command by command.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imbl::{HashMap as PersistentMap, OrdMap};
use protocol::cmd::{HolderStatus, Permits, ResourceStatus, WaiterStatus};
use protocol::{FenceToken, LockMode, RequestId, ResourceName, SessionId};

use super::effect::{Effect, LockError, WaitFailure};
use super::elect::Campaigns;
use super::multi::Group;
use super::observation::{HoldEnd, Observation, SessionEnd, WaitEnd};
use super::queue::{Claim, Holder, LockQueue, Ticket, Waiter, Want};
use super::session::Session;
use super::watch::{HoldChange, Watches};

/// The table's settings; the driver fills them from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// The lease of a session that never asks for one.
    pub default_lease: Duration,
    /// The shortest lease `hello` may set.
    pub min_lease: Duration,
    /// The longest lease `hello` may set.
    pub max_lease: Duration,
    /// The largest value `write` accepts, in UTF-8 bytes.
    pub max_value_bytes: usize,
    /// How many resources one session may hold or wait for at once.
    pub max_locks_per_session: usize,
    /// How many of those may be waiting acquires.
    pub max_waits_per_session: usize,
    /// Whether the table expires silent sessions itself. A single server does; a replicated
    /// table does not, because followers never see the clients' frames: the leader decides
    /// when a lease ran out and writes that into the log (`handle_session_expired`).
    pub expire_sessions: bool,
    /// The lock-delay of an acquire that does not ask for one (`--default-lock-delay-ms`).
    pub default_lock_delay: Duration,
    /// The longest lock-delay an acquire may ask for (`--max-lock-delay-ms`); longer ones are
    /// clamped to it.
    pub max_lock_delay: Duration,
    /// The largest `status` page a client may ask for (`--max-status-limit`), in resources.
    pub max_status_limit: u64,
    /// How many watches one session may have open at once (`--max-watches-per-session`).
    pub max_watches_per_session: usize,
    /// How many resources one multi-resource `acquire` may name
    /// (`--max-resources-per-acquire`).
    pub max_resources_per_acquire: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            default_lease: Duration::from_millis(15_000),
            min_lease: Duration::from_millis(1_000),
            max_lease: Duration::from_millis(300_000),
            max_value_bytes: protocol::cmd::DEFAULT_MAX_VALUE_BYTES,
            max_locks_per_session: 10_000,
            max_waits_per_session: 1_000,
            expire_sessions: true,
            default_lock_delay: Duration::ZERO,
            max_lock_delay: Duration::from_millis(60_000),
            max_status_limit: DEFAULT_MAX_STATUS_LIMIT,
            max_watches_per_session: protocol::cmd::DEFAULT_MAX_WATCHES_PER_SESSION,
            max_resources_per_acquire: DEFAULT_MAX_RESOURCES_PER_ACQUIRE,
        }
    }
}

/// The default for [`TableConfig::max_resources_per_acquire`].
pub const DEFAULT_MAX_RESOURCES_PER_ACQUIRE: usize = 64;

/// The largest [`TableConfig::max_resources_per_acquire`] a server accepts: a group's grant
/// hands out one token per member at once, and a token reservation is never asked for before
/// fewer than `MIN_TOKEN_BLOCK / 2` tokens are left, so a group must fit in that.
pub const MAX_RESOURCES_PER_ACQUIRE: usize = 1_024;

/// One page of `status`, from [`LockTable::status_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPage {
    /// The page's resources, in name order.
    pub resources: Vec<ResourceStatus>,
    /// Where the next page starts (the name to pass as its `after`), or `None` when this is
    /// the last page.
    pub next: Option<ResourceName>,
}

/// The default for [`TableConfig::max_status_limit`]: ten default pages. A page of that size is
/// about a megabyte of JSON when every resource has a holder and a waiter.
pub const DEFAULT_MAX_STATUS_LIMIT: u64 = 10_000;

/// What an acquire got at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is held now, with this token.
    Granted(FenceToken),
    /// The request waits in line; 1 = next. Its outcome comes later as an [`Effect`].
    Queued {
        /// Its place in the queue.
        position: u64,
    },
    /// A try-lock (`timeout` 0) of a free resource while no fencing token may be handed out:
    /// it is first in line and granted, as an [`Effect`], as soon as the next token
    /// reservation is durable (see [`LockTable::tokens_wanted`]). Not contention, so not a
    /// `timeout`, and no `queued` event either: the client asked not to wait in line.
    AwaitingTokens,
}

/// The most tokens a reservation covers: one fsync per million grants at full speed.
pub const TOKEN_BLOCK: u64 = 1 << 20;

/// The fewest tokens a reservation covers, so that a run near the clock still fsyncs a
/// reservation only every few thousand grants. A reservation otherwise reaches no further than
/// the wall clock in microseconds (see [`LockTable::tokens_wanted`]): a restarted server skips
/// what is left of the last reservation, and a crash loop must not push tokens ahead of the
/// clock, which a server restored from a backup relies on to start above every token issued
/// since (see `Server::with_store`).
pub const MIN_TOKEN_BLOCK: u64 = 1 << 12;

/// A hold ended by [`LockTable::handle_force_release`]. Serializable, because a cluster's
/// state machine hands it back to the node that proposed the forced release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForcedRelease {
    /// The holder's session, now ended.
    pub session: SessionId,
    /// The token it held the lock with.
    pub token: FenceToken,
    /// The mode it held.
    pub mode: LockMode,
    /// How long it had held the lock.
    pub held: Duration,
}

/// Something the table must act on at a given instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    /// The session's lease may have run out.
    Expiry(SessionId),
    /// A waiting acquire's timeout runs out.
    WaitTimeout(ResourceName, Ticket),
    /// A resource's lock-delay may be over (it is if `delayed` still says this instant).
    LockDelay(ResourceName),
}

/// Holders, queues, sessions and values, driven by `handle_*` inputs.
///
/// How to drive it:
/// 1. [`open_session`](Self::open_session) for each new connection, and
///    [`touch`](Self::touch) for every frame it sends (that is what keeps its lease alive).
/// 2. One `handle_*` call per request; its return value is that request's reply.
/// 3. After every input, drain [`poll_effect`](Self::poll_effect) and deliver each effect.
/// 4. Sleep until [`next_deadline`](Self::next_deadline), then call
///    [`handle_timeout`](Self::handle_timeout) and drain effects again. Any input may move the
///    next deadline earlier, so ask again after each one.
/// 5. [`handle_session_closed`](Self::handle_session_closed) when a connection ends.
/// 6. For metrics, drain [`poll_observation`](Self::poll_observation) after every input too;
///    observations pile up until they are polled.
///
/// Operators have one more input, [`handle_force_release`](Self::handle_force_release).
#[derive(Debug)]
pub struct LockTable {
    pub(super) config: TableConfig,
    /// Ordered by name, so that a `status` page is a range: its cost follows the page, not the
    /// table.
    pub(super) queues: OrdMap<ResourceName, LockQueue>,
    /// Values outlive locks, so they live apart from the queues (which are dropped when idle).
    pub(super) values: OrdMap<ResourceName, Arc<str>>,
    pub(super) sessions: PersistentMap<SessionId, Session>,
    pub(super) deadlines: BTreeSet<(Instant, Deadline)>,
    pub(super) effects: VecDeque<Effect>,
    /// Grants and ended holds and waits, for metrics; see [`Observation`].
    pub(super) observations: VecDeque<Observation>,
    pub(super) next_session: u64,
    pub(super) next_token: u64,
    /// The highest token that may be handed out: the durable reservation. No grant goes past
    /// it; a grant that would is held back (see `stalled`) until the driver has made a new
    /// reservation durable and called `handle_tokens_reserved`.
    pub(super) token_limit: u64,
    /// Resources whose next grant waits for a token reservation.
    pub(super) stalled: BTreeSet<ResourceName>,
    /// Resources in lock-delay, with the instant it ends: a holder that asked for a lock-delay
    /// lost its lock other than by `release`, and nobody may be granted the resource before
    /// then. Each has a `Deadline::LockDelay` at that instant.
    /// Ordered by name like `queues`, for the same reason.
    pub(super) delayed: OrdMap<ResourceName, Instant>,
    pub(super) next_ticket: u64,
    /// Which sessions watch which resources (`watch.rs`).
    pub(super) watches: Watches,
    /// Multi-resource acquires still waiting, by their ticket (the same in each of their
    /// queues); see `multi.rs`.
    pub(super) groups: PersistentMap<Ticket, Group>,
    /// The values of campaigns that wait or hold (`elect.rs`).
    pub(super) campaigns: Campaigns,
}

impl LockTable {
    /// An empty table whose first grant gets token 1 and that never asks for a token
    /// reservation: for uses where nothing is durable, such as tests.
    pub fn new(config: TableConfig) -> LockTable {
        LockTable::restore(config, HashMap::new(), 0).with_unlimited_tokens()
    }

    /// A table that starts from durable state: the stored values, and the highest token a
    /// previous run may have handed out. Its first grant is above that token, and it hands out
    /// none until a reservation is made durable (see [`tokens_wanted`](Self::tokens_wanted)).
    pub fn restore(
        config: TableConfig,
        values: HashMap<ResourceName, Arc<str>>,
        tokens_reserved: u64,
    ) -> LockTable {
        LockTable {
            config,
            queues: OrdMap::new(),
            values: values.into_iter().collect(),
            sessions: PersistentMap::new(),
            deadlines: BTreeSet::new(),
            effects: VecDeque::new(),
            observations: VecDeque::new(),
            next_session: 1,
            next_token: tokens_reserved.saturating_add(1),
            token_limit: tokens_reserved,
            stalled: BTreeSet::new(),
            delayed: OrdMap::new(),
            next_ticket: 0,
            watches: Watches::default(),
            groups: PersistentMap::new(),
            campaigns: Campaigns::default(),
        }
    }

    fn with_unlimited_tokens(mut self) -> LockTable {
        self.token_limit = u64::MAX;
        self
    }

    // ---- Sessions ------------------------------------------------------------------------

    /// Starts a session with the default lease and returns its id.
    pub fn open_session(&mut self, now: Instant) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.insert_session(now, id);
        id
    }

    /// Starts a session with an id the caller chose (a replicated table's leader picks ids, so
    /// that a client can be told its id before the entry that opens it is committed). Returns
    /// false, and changes nothing, if the id is taken.
    pub fn open_session_as(&mut self, now: Instant, id: SessionId) -> bool {
        if self.sessions.contains_key(&id) {
            return false;
        }
        self.insert_session(now, id);
        true
    }

    fn insert_session(&mut self, now: Instant, id: SessionId) {
        let session = Session::new(now, self.config.default_lease);
        if self.config.expire_sessions {
            self.deadlines
                .insert((session.scheduled_expiry, Deadline::Expiry(id)));
        }
        self.sessions.insert(id, session);
    }

    /// Records that the session's client was heard from; its lease runs again from `now`.
    pub fn touch(&mut self, now: Instant, session: SessionId) {
        if let Some(session) = self.sessions.get_mut(&session) {
            session.last_seen = session.last_seen.max(now);
        }
    }

    /// The server could not hear anyone for the `paused` that ended at `now`: it was stopped,
    /// or its clock jumped, or the loop that feeds the table was starved. That time does not
    /// count as anyone's silence: every session's lease is moved forward by it (never past
    /// `now`). The frames its clients sent meanwhile are still in the socket buffers, and the
    /// caller delivers them next; without this, a session would expire for the server's own
    /// stall (docs/safety.md).
    pub fn handle_pause(&mut self, now: Instant, paused: Duration) {
        for (_, session) in self.sessions.iter_mut() {
            let credited = session
                .last_seen
                .checked_add(paused)
                .unwrap_or(now)
                .min(now);
            session.last_seen = session.last_seen.max(credited);
        }
    }

    /// `hello`: names the client and sets the lease, clamped to the allowed range. Returns the
    /// lease granted.
    pub fn handle_hello(
        &mut self,
        now: Instant,
        session_id: SessionId,
        client: Option<String>,
        lease_ms: Option<u64>,
    ) -> Result<Duration, LockError> {
        let config = &self.config;
        let session = self
            .sessions
            .get_mut(&session_id)
            .ok_or(LockError::SessionGone)?;
        if client.is_some() {
            session.client = client;
        }
        if let Some(ms) = lease_ms {
            session.lease = Duration::from_millis(ms).clamp(config.min_lease, config.max_lease);
        }
        session.last_seen = session.last_seen.max(now);
        let new = session.expires_at();
        let old = std::mem::replace(&mut session.scheduled_expiry, new);
        let lease = session.lease;
        if self.config.expire_sessions {
            self.deadlines.remove(&(old, Deadline::Expiry(session_id)));
            self.deadlines.insert((new, Deadline::Expiry(session_id)));
        }
        Ok(lease)
    }

    /// The connection ended: releases everything the session holds, withdraws its waiters, and
    /// grants whatever that frees. Nothing is sent to the closed session itself.
    pub fn handle_session_closed(&mut self, now: Instant, session_id: SessionId) {
        self.end_session(now, session_id, SessionEnd::Disconnected);
    }

    /// The leader of a replicated table decided that the session's lease ran out: ends it
    /// exactly as the table's own expiry would (an `Effect::SessionExpired`, then its holds
    /// and waits go). Does nothing for a session already gone.
    pub fn handle_session_expired(&mut self, now: Instant, session_id: SessionId) {
        if self.sessions.contains_key(&session_id) {
            self.effects.push_back(Effect::SessionExpired {
                session: session_id,
            });
            self.end_session(now, session_id, SessionEnd::Expired);
        }
    }

    /// Every open session with its lease, in id order: what the leader of a replicated table
    /// watches for expiry.
    pub fn session_leases(&self) -> Vec<(SessionId, Duration)> {
        let mut leases: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, session)| (*id, session.lease))
            .collect();
        leases.sort();
        leases
    }

    /// Whether the session is open.
    pub fn has_session(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// An operator's forced release of `resource`: ends the session of every holder of it (only
    /// the one holding it with `token`, when given), exactly as if that session's lease had run
    /// out now. Each such session loses every lock it holds and every wait it has, and the
    /// queues move on as after any release, so the next waiter of `resource` gets it.
    ///
    /// Returns the holds that were forced, in grant order; empty when nobody (or nobody with
    /// `token`) holds the lock, in which case nothing changed. The table has forgotten those
    /// sessions: the caller must close their connections (no effect says so), so that their
    /// clients learn at once that their locks are gone instead of working on unprotected.
    pub fn handle_force_release(
        &mut self,
        now: Instant,
        resource: &ResourceName,
        token: Option<FenceToken>,
    ) -> Vec<ForcedRelease> {
        let Some(queue) = self.queues.get(resource) else {
            return Vec::new();
        };
        let forced: Vec<ForcedRelease> = queue
            .holders()
            .filter(|(held, _)| token.is_none_or(|token| token == *held))
            .map(|(token, holder)| ForcedRelease {
                session: holder.session,
                token,
                mode: holder.mode,
                held: now.saturating_duration_since(holder.since),
            })
            .collect();
        for release in &forced {
            self.end_session(now, release.session, SessionEnd::Forced);
        }
        forced
    }

    /// Ends a session for `why`: releases its holds, withdraws its waits and grants what that
    /// frees.
    fn end_session(&mut self, now: Instant, session_id: SessionId, why: SessionEnd) {
        let Some(session) = self.sessions.remove(&session_id) else {
            return;
        };
        self.deadlines
            .remove(&(session.scheduled_expiry, Deadline::Expiry(session_id)));
        self.forget_watches(session_id);
        // Sorted, so tokens are handed out in the same order on every run. Each resource comes
        // with its ticket if the session waits for it, `None` if the session holds it.
        let mut resources: Vec<(ResourceName, Option<Ticket>)> = session
            .held
            .into_iter()
            .map(|resource| (resource, None))
            .chain(
                session
                    .waiting
                    .into_iter()
                    .map(|(resource, ticket)| (resource, Some(ticket))),
            )
            .collect();
        resources.sort_by(|a, b| a.0.cmp(&b.0));
        // Lock-delays of the holds this ends, started before anything is granted.
        let mut delays = Vec::new();
        for (resource, waiting_ticket) in &resources {
            let Some(queue) = self.queues.get_mut(resource) else {
                continue;
            };
            match *waiting_ticket {
                None => {
                    let removed = queue
                        .holding_token(session_id)
                        .and_then(|token| queue.remove_holder(token).map(|holder| (token, holder)));
                    if let Some((token, holder)) = removed {
                        if holder.lock_delay_ms > 0 {
                            delays.push((resource.clone(), holder.lock_delay_ms));
                        }
                        self.observations.push_back(Observation::HoldEnded {
                            mode: holder.mode,
                            held: now.saturating_duration_since(holder.since),
                            reason: HoldEnd::SessionEnded(why),
                        });
                        let change = HoldChange::session_ended(why);
                        self.notify_hold(resource, change, token, &holder);
                    }
                }
                Some(ticket) => {
                    // A multi-resource acquire waits under this ticket in each of its queues,
                    // every one of them in `waiting`: all its waiters go in this loop.
                    self.groups.remove(&ticket);
                    if let Some(waiter) = queue.remove_waiter(ticket) {
                        self.observations.push_back(Observation::WaitEnded {
                            mode: waiter.mode,
                            waited: now.saturating_duration_since(waiter.since),
                            reason: WaitEnd::SessionEnded(why),
                        });
                        self.forget_wait_deadline(resource, ticket, &waiter);
                        self.notify_queue(resource);
                    }
                }
            }
        }
        // After the holds' events above, which show their campaigns' values.
        self.campaigns.forget_session(session_id);
        for (resource, ms) in delays {
            self.start_lock_delay(now, resource, ms);
        }
        for (resource, _) in &resources {
            self.grant_waiters(now, resource);
        }
    }

    /// Holds `resource` back from every grant until `ms` after `now` (or later, if a longer
    /// lock-delay is already running).
    fn start_lock_delay(&mut self, now: Instant, resource: ResourceName, ms: u32) {
        let delay = Duration::from_millis(u64::from(ms));
        let Some(until) = now.checked_add(delay) else {
            return;
        };
        if let Some(&running) = self.delayed.get(&resource) {
            if running >= until {
                return;
            }
            self.deadlines
                .remove(&(running, Deadline::LockDelay(resource.clone())));
        }
        self.deadlines
            .insert((until, Deadline::LockDelay(resource.clone())));
        self.delayed.insert(resource, until);
        self.observations
            .push_back(Observation::LockDelayed { delay });
    }

    /// How many resources are in lock-delay now.
    pub fn delayed_count(&self) -> usize {
        self.delayed.len()
    }

    /// The lock-delay an acquire asking for `asked` gets, in milliseconds: the server's default
    /// when it asks for none, clamped to the server's maximum.
    pub(super) fn lock_delay_ms(&self, asked: Option<Duration>) -> u32 {
        let delay = asked
            .unwrap_or(self.config.default_lock_delay)
            .min(self.config.max_lock_delay);
        u32::try_from(delay.as_millis()).unwrap_or(u32::MAX)
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    // ---- Locks ---------------------------------------------------------------------------

    /// `acquire`: grants at once when the queue is empty, the claim fits beside the holders and
    /// the resource is not in lock-delay, otherwise queues the request behind everyone already
    /// waiting. `claim` is a lock mode, or permits of a semaphore: the first acquirer of an idle
    /// resource sets its limit, and a claim with another limit (or a lock on a semaphore, or
    /// permits of a lock) fails with `LimitMismatch`. `timeout` of zero never queues (it fails
    /// with `Timeout`); `None` waits as long as it takes. `lock_delay` is the holder's
    /// lock-delay (`None`: the server's default); it is clamped to the server's maximum.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per field of the request"
    )]
    pub fn handle_acquire(
        &mut self,
        now: Instant,
        session_id: SessionId,
        request: RequestId,
        resource: ResourceName,
        claim: impl Into<Claim>,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
    ) -> Result<Acquired, LockError> {
        let claim = claim.into();
        let (mode, want) = (claim.mode(), claim.want());
        let lock_delay_ms = self.lock_delay_ms(lock_delay);
        let delayed = self.delayed.contains_key(&resource);
        let session = self
            .sessions
            .get_mut(&session_id)
            .ok_or(LockError::SessionGone)?;
        let holding = session.held.contains(&resource);
        if holding || session.waiting.contains_key(&resource) {
            return Err(LockError::AlreadyHeld { resource, holding });
        }
        if session.waits.contains_key(&request) {
            return Err(LockError::DuplicateRequestId(request));
        }
        // Every wait becomes a hold, so the lock limit counts both.
        if session.lock_count() >= self.config.max_locks_per_session {
            return Err(LockError::TooManyLocks {
                held: session.lock_count(),
            });
        }
        let queue = self.queues.entry(resource.clone()).or_default();
        if let Err(current) = queue.admit(claim) {
            return Err(LockError::LimitMismatch {
                resource,
                asked: claim.limit(),
                current,
            });
        }
        let has_token = self.next_token <= self.token_limit;
        let free = queue.can_grant_now(want) && !delayed;
        // A try-lock of a free resource waits for tokens only: one fsync, not a holder.
        let try_awaits_tokens = timeout == Some(Duration::ZERO) && free && !has_token;
        if free && has_token {
            let token = FenceToken(self.next_token);
            self.next_token += 1;
            let holder = Holder {
                session: session_id,
                mode,
                permits: want.permits,
                lock_delay_ms,
                since: now,
            };
            queue.add_holder(token, holder.clone());
            session.held.insert(resource.clone());
            self.observations.push_back(Observation::Granted {
                mode,
                permits: want.permits,
                waited: Duration::ZERO,
            });
            self.notify_hold(&resource, HoldChange::Granted, token, &holder);
            return Ok(Acquired::Granted(token));
        }
        // A free resource waits for tokens only (one fsync), which the waits limit is not for.
        if timeout != Some(Duration::ZERO)
            && !free
            && session.waits.len() >= self.config.max_waits_per_session
        {
            if queue.is_idle() {
                self.queues.remove(&resource);
            }
            return Err(LockError::TooManyWaits {
                waiting: session.waits.len(),
            });
        }
        if timeout == Some(Duration::ZERO) && !try_awaits_tokens {
            if queue.is_idle() {
                // Cannot happen (an idle queue grants), but never leave an empty entry behind.
                self.queues.remove(&resource);
            }
            return Err(LockError::Timeout(resource));
        }
        // Only a session that already holds or waits for something can be waited for, so a
        // first lock costs no graph walk.
        if session.lock_count() > 0 {
            if let Some(cycle) = self.find_wait_cycle(session_id, &resource, want) {
                if self.queues.get(&resource).is_some_and(LockQueue::is_idle) {
                    self.queues.remove(&resource);
                }
                return Err(LockError::Deadlock { resource, cycle });
            }
        }
        let (Some(session), Some(queue)) = (
            self.sessions.get_mut(&session_id),
            self.queues.get_mut(&resource),
        ) else {
            return Err(LockError::SessionGone);
        };
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        // A timeout too large to represent as an instant waits forever, like no timeout; a
        // try-lock awaiting tokens waits for them whatever its timeout.
        let deadline = timeout
            .filter(|_| !try_awaits_tokens)
            .and_then(|timeout| now.checked_add(timeout));
        let position = queue.enqueue(
            ticket,
            Waiter {
                session: session_id,
                request,
                mode,
                permits: match claim {
                    Claim::Permits(permits) => Some(permits),
                    Claim::Lock(_) => None,
                },
                lock_delay_ms,
                since: now,
                deadline,
                group: false,
            },
        );
        if let Some(deadline) = deadline {
            self.deadlines
                .insert((deadline, Deadline::WaitTimeout(resource.clone(), ticket)));
        }
        if !has_token && position == 1 {
            // Free, but no token may be handed out until a reservation is durable.
            self.stalled.insert(resource.clone());
        }
        session.waits.insert(request, resource.clone());
        session.waiting.insert(resource.clone(), ticket);
        self.notify_queue(&resource);
        if try_awaits_tokens {
            return Ok(Acquired::AwaitingTokens);
        }
        Ok(Acquired::Queued { position })
    }

    /// `release`: gives back the lock held with `token` and grants whoever can go next.
    pub fn handle_release(
        &mut self,
        now: Instant,
        session_id: SessionId,
        resource: &ResourceName,
        token: FenceToken,
    ) -> Result<(), LockError> {
        let session = self
            .sessions
            .get_mut(&session_id)
            .ok_or(LockError::SessionGone)?;
        let queue = self.queues.get_mut(resource).filter(|queue| {
            queue
                .holder(token)
                .is_some_and(|holder| holder.session == session_id)
        });
        let Some(queue) = queue else {
            return Err(LockError::NotHeld(resource.clone(), token));
        };
        session.held.remove(resource);
        if let Some(holder) = queue.remove_holder(token) {
            self.observations.push_back(Observation::HoldEnded {
                mode: holder.mode,
                held: now.saturating_duration_since(holder.since),
                reason: HoldEnd::Released,
            });
            self.notify_hold(resource, HoldChange::Released, token, &holder);
        }
        self.grant_waiters(now, resource);
        Ok(())
    }

    /// `cancel`: withdraws this session's waiting acquire `target`, which then fails with
    /// `Cancelled` (an effect), and grants whoever that unblocks.
    pub fn handle_cancel(
        &mut self,
        now: Instant,
        session_id: SessionId,
        target: RequestId,
    ) -> Result<(), LockError> {
        let session = self
            .sessions
            .get(&session_id)
            .ok_or(LockError::SessionGone)?;
        let resource = session
            .waits
            .get(&target)
            .ok_or(LockError::NoSuchWaiter(target))?
            .clone();
        let Some(&ticket) = session.waiting.get(&resource) else {
            return Err(LockError::NoSuchWaiter(target));
        };
        self.end_wait(now, &resource, ticket, WaitFailure::Cancelled);
        Ok(())
    }

    /// Where the session's acquire `request` waits in line (1 = next), if it still waits.
    pub fn waiting_position(&self, session_id: SessionId, request: RequestId) -> Option<u64> {
        let session = self.sessions.get(&session_id)?;
        let resource = session.waits.get(&request)?;
        let ticket = session.waiting.get(resource)?;
        if let Some(group) = self.groups.get(ticket) {
            return self.group_position(*ticket, group);
        }
        self.queues.get(resource)?.position(*ticket)
    }

    /// `validate`: whether a current holder of `resource` holds it with `token`.
    pub fn validate(&self, resource: &ResourceName, token: FenceToken) -> bool {
        self.queues
            .get(resource)
            .is_some_and(|queue| queue.holder(token).is_some())
    }

    // ---- Values --------------------------------------------------------------------------

    /// `read`: the resource's value, for a session holding it (either mode) with `token`.
    pub fn read(
        &self,
        session_id: SessionId,
        resource: &ResourceName,
        token: FenceToken,
    ) -> Result<Option<&str>, LockError> {
        self.held_mode(session_id, resource, token)?;
        Ok(self.values.get(resource).map(|value| &**value))
    }

    /// `write`: replaces the value, for the session holding the exclusive lock with `token`.
    /// Returns the value it replaced, so that a write that could not be made durable can be
    /// undone with [`revert_write`](Self::revert_write).
    pub fn handle_write(
        &mut self,
        session_id: SessionId,
        resource: &ResourceName,
        token: FenceToken,
        value: Arc<str>,
    ) -> Result<Option<Arc<str>>, LockError> {
        if value.len() > self.config.max_value_bytes {
            return Err(LockError::ValueTooLarge(
                value.len(),
                self.config.max_value_bytes,
            ));
        }
        if self.held_mode(session_id, resource, token)? != LockMode::Exclusive {
            return Err(LockError::NotExclusive(resource.clone()));
        }
        let previous = self.values.insert(resource.clone(), value);
        self.notify_written(resource, token);
        Ok(previous)
    }

    /// Puts back the value a [`handle_write`](Self::handle_write) replaced. The driver calls it,
    /// newest write first, for the writes of a batch whose commit failed.
    pub fn revert_write(&mut self, resource: &ResourceName, previous: Option<Arc<str>>) {
        match previous {
            Some(value) => self.values.insert(resource.clone(), value),
            None => self.values.remove(resource),
        };
    }

    // ---- Fencing-token reservations ------------------------------------------------------

    /// The reservation to make durable now, if the tokens left under the current one are
    /// running low: the new highest token that may be handed out. Ask after every input.
    ///
    /// `clock_us` is the wall clock in microseconds since the Unix epoch. A reservation covers
    /// the tokens between the last one handed out and the clock, at least [`MIN_TOKEN_BLOCK`]
    /// and at most [`TOKEN_BLOCK`]. A data directory's first run counts from 1, far below the
    /// clock, and reserves [`TOKEN_BLOCK`] at once; a restarted one counts from the clock, and
    /// its reservations grow as the clock moves ahead of its grants. So a reservation reaches
    /// past the clock by at most [`MIN_TOKEN_BLOCK`], as long as grants come slower than one a
    /// microsecond and each run lives longer than [`MIN_TOKEN_BLOCK`] microseconds (4 ms): a
    /// crash loop faster than that could step further ahead, one minimum block per run.
    pub fn tokens_wanted(&self, clock_us: u64) -> Option<u64> {
        let issued = self.next_token - 1;
        let left = self.token_limit.saturating_sub(issued);
        let block = clock_us
            .saturating_sub(issued)
            .clamp(MIN_TOKEN_BLOCK, TOKEN_BLOCK);
        (self.token_limit != u64::MAX && left < block / 2).then(|| issued.saturating_add(block))
    }

    /// A reservation up to `reserved` is durable: tokens up to it may be handed out. Grants
    /// that waited for it are made now.
    pub fn handle_tokens_reserved(&mut self, now: Instant, reserved: u64) {
        self.token_limit = self.token_limit.max(reserved);
        for resource in std::mem::take(&mut self.stalled) {
            self.grant_waiters(now, &resource);
        }
    }

    // ---- Time ----------------------------------------------------------------------------

    /// Makes every later grant's token at least `floor`. A replicated table calls it before
    /// each log entry with a floor derived from the entry's log index, so tokens grow with the
    /// log: strictly, across leaders, restarts and snapshots, without any reservation.
    /// The durable part of the table, as a single server's store keeps it: every value, and a
    /// token no grant so far is above (what a restore must start above). A cluster's backup.
    pub fn durable_state(&self) -> (HashMap<ResourceName, Arc<str>>, u64) {
        let values = self
            .values
            .iter()
            .map(|(resource, value)| (resource.clone(), Arc::clone(value)))
            .collect();
        (values, self.next_token.saturating_sub(1))
    }

    /// How many resources have a value.
    pub fn value_count(&self) -> usize {
        self.values.len()
    }

    /// A restore's value for `resource`, kept only if the resource has none: a value written
    /// since (by a holder, after the restore began) is newer than the backup's.
    pub fn restore_value(&mut self, resource: ResourceName, value: Arc<str>) {
        self.values.entry(resource).or_insert(value);
    }

    /// Hands out no token below `floor` from now on: a single server's start on a store that
    /// handed out tokens before (the wall clock), and a cluster's entries (their time).
    pub fn raise_token_floor(&mut self, floor: u64) {
        self.next_token = self.next_token.max(floor);
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Acts on every deadline at or before `now`: expires silent sessions, fails waiters whose
    /// timeout ran out and ends lock-delays (granting what waited for them), in deadline order.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((at, deadline)) = self.deadlines.pop_first() else {
                break;
            };
            match deadline {
                Deadline::Expiry(session_id) => self.check_expiry(now, at, session_id),
                Deadline::WaitTimeout(resource, ticket) => {
                    self.end_wait(now, &resource, ticket, WaitFailure::Timeout);
                }
                Deadline::LockDelay(resource) => {
                    if self.delayed.get(&resource) == Some(&at) {
                        self.delayed.remove(&resource);
                        self.grant_waiters(now, &resource);
                    }
                }
            }
        }
    }

    // ---- Output --------------------------------------------------------------------------

    /// The next effect to deliver, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next observation for metrics, oldest first.
    pub fn poll_observation(&mut self) -> Option<Observation> {
        self.observations.pop_front()
    }

    // ---- Introspection -------------------------------------------------------------------

    /// `status`: one resource (reported even when idle), or every resource with holders or
    /// waiters, in name order. The whole table: for tests and reports that want all of it;
    /// clients get it a page at a time through [`status_page`](Self::status_page).
    pub fn status(&self, now: Instant, resource: Option<&ResourceName>) -> Vec<ResourceStatus> {
        match resource {
            Some(resource) => vec![self.resource_status(now, resource)],
            None => self.status_page(now, None, usize::MAX).resources,
        }
    }

    /// The table's settings.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// One page of `status`: at most `limit` busy resources (held, awaited or in lock-delay)
    /// whose names come after `after` (from the first when `None`), in name order. Costs
    /// O(log n + page): both indexes are ordered, and only the page's own resources are read.
    pub fn status_page(
        &self,
        now: Instant,
        after: Option<&ResourceName>,
        limit: usize,
    ) -> StatusPage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = (start, Bound::Unbounded);
        // A resource in lock-delay is busy even when nobody holds or waits for it, so the page
        // is the first `limit + 1` names of the two indexes merged; the extra one only says
        // whether there is a next page.
        let wanted = limit.saturating_add(1);
        let mut names: BTreeSet<&ResourceName> = self
            .queues
            .range::<_, ResourceName>(range)
            .map(|(name, _)| name)
            .take(wanted)
            .collect();
        names.extend(
            self.delayed
                .range::<_, ResourceName>(range)
                .map(|(name, _)| name)
                .take(wanted),
        );
        let more = names.len() > limit;
        let resources: Vec<ResourceStatus> = names
            .into_iter()
            .take(limit)
            .map(|name| self.resource_status(now, name))
            .collect();
        let next = if more {
            resources.last().map(|last| last.resource.clone())
        } else {
            None
        };
        StatusPage { resources, next }
    }

    // ---- Helpers -------------------------------------------------------------------------

    /// The name `session`'s `hello` gave, for `status` (the table keeps names, replicated with
    /// the sessions; peers are the backend's, which adds them).
    fn client_name(&self, session: SessionId) -> Option<String> {
        self.sessions
            .get(&session)
            .and_then(|session| session.client.clone())
    }

    fn resource_status(&self, now: Instant, resource: &ResourceName) -> ResourceStatus {
        let queue = self.queues.get(resource);
        ResourceStatus {
            resource: resource.clone(),
            holders: queue
                .into_iter()
                .flat_map(LockQueue::holders)
                .map(|(token, holder)| HolderStatus {
                    session: holder.session,
                    client: self.client_name(holder.session),
                    peer: None,
                    mode: holder.mode,
                    token,
                    held_ms: millis_since(now, holder.since),
                    lock_delay_ms: u64::from(holder.lock_delay_ms),
                    permits: holder.permits.map(NonZeroU16::get),
                    value: self
                        .campaign_value(holder.session, resource)
                        .map(str::to_owned),
                })
                .collect(),
            waiters: queue
                .into_iter()
                .flat_map(LockQueue::queued)
                .map(|(ticket, waiter)| WaiterStatus {
                    session: waiter.session,
                    client: self.client_name(waiter.session),
                    peer: None,
                    mode: waiter.mode,
                    waited_ms: millis_since(now, waiter.since),
                    permits: waiter.permits.map(|permits| permits.count().get()),
                    group: if waiter.group {
                        self.group_members(ticket)
                    } else {
                        None
                    },
                })
                .collect(),
            delayed_ms: self
                .delayed
                .get(resource)
                .map(|until| millis_since(*until, now)),
            limit: queue.and_then(LockQueue::limit).map(NonZeroU16::get),
            permits_used: queue.and_then(LockQueue::permits_used),
        }
    }

    /// Whether `session`, queueing for `resource` with `want`, would wait (through a chain of
    /// sessions each waiting for the next) for itself. Returns the cycle as text if so.
    ///
    /// The wait-for graph is never stored: edges are read off the queues. A session waits for
    /// every holder its request conflicts with and every conflicting waiter ahead of it. Only a
    /// new wait can close a cycle (grants and departures only remove edges), and any new cycle
    /// runs through the new waiter, so a search from its blockers back to it is enough.
    pub(super) fn find_wait_cycle(
        &self,
        session: SessionId,
        resource: &ResourceName,
        want: Want,
    ) -> Option<String> {
        self.find_wait_cycle_from(session, &[(resource, want)])
    }

    /// [`find_wait_cycle`](Self::find_wait_cycle) for a request that would wait in several
    /// queues at once (a multi-resource acquire): it waits for whatever blocks it in any of
    /// them.
    pub(super) fn find_wait_cycle_from<'t>(
        &'t self,
        session: SessionId,
        starts: &[(&'t ResourceName, Want)],
    ) -> Option<String> {
        let mut search = CycleSearch {
            target: session,
            reached: HashMap::new(),
            frontier: Vec::new(),
            scanned: HashMap::new(),
        };
        for &(resource, want) in starts {
            let Some(queue) = self.queues.get(resource) else {
                continue;
            };
            if search.expand(session, resource, queue, None, want) {
                return Some(describe_cycle(session, &search.reached));
            }
        }
        while let Some(waiting) = search.frontier.pop() {
            let Some(state) = self.sessions.get(&waiting) else {
                continue;
            };
            for (name, &ticket) in &state.waiting {
                let Some(queue) = self.queues.get(name) else {
                    continue;
                };
                let Some(waiting_want) = queue.waiter_want(ticket) else {
                    continue;
                };
                if search.expand(waiting, name, queue, Some(ticket), waiting_want) {
                    return Some(describe_cycle(session, &search.reached));
                }
            }
        }
        None
    }

    /// The search above, done the straightforward way (every waiter's every blocker): what
    /// the incremental search must agree with.
    #[cfg(test)]
    pub(super) fn reference_wait_cycle_exists(
        &self,
        session: SessionId,
        starts: &[(&ResourceName, Want)],
    ) -> bool {
        let mut seen = std::collections::HashSet::new();
        let mut frontier: Vec<SessionId> = starts
            .iter()
            .filter_map(|(resource, want)| Some((self.queues.get(*resource)?, *want)))
            .flat_map(|(queue, want)| queue.blockers(None, want).map(|(blocker, _)| blocker))
            .filter(|blocker| *blocker != session)
            .collect();
        while let Some(waiting) = frontier.pop() {
            if !seen.insert(waiting) {
                continue;
            }
            let Some(state) = self.sessions.get(&waiting) else {
                continue;
            };
            for (name, &ticket) in &state.waiting {
                let Some(queue) = self.queues.get(name) else {
                    continue;
                };
                let Some(waiting_want) = queue.waiter_want(ticket) else {
                    continue;
                };
                for (blocker, _) in queue.blockers(Some(ticket), waiting_want) {
                    if blocker == session {
                        return true;
                    }
                    frontier.push(blocker);
                }
            }
        }
        false
    }

    fn held_mode(
        &self,
        session_id: SessionId,
        resource: &ResourceName,
        token: FenceToken,
    ) -> Result<LockMode, LockError> {
        if !self.sessions.contains_key(&session_id) {
            return Err(LockError::SessionGone);
        }
        self.queues
            .get(resource)
            .and_then(|queue| queue.holder(token))
            .filter(|holder| holder.session == session_id)
            .map(|holder| holder.mode)
            .ok_or_else(|| LockError::NotHeld(resource.clone(), token))
    }

    /// A lease deadline fired: expire the session if it stayed silent, else look again later.
    fn check_expiry(&mut self, now: Instant, at: Instant, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if session.scheduled_expiry != at {
            return;
        }
        let expires_at = session.expires_at();
        if expires_at > now {
            session.scheduled_expiry = expires_at;
            self.deadlines
                .insert((expires_at, Deadline::Expiry(session_id)));
            return;
        }
        self.effects.push_back(Effect::SessionExpired {
            session: session_id,
        });
        self.end_session(now, session_id, SessionEnd::Expired);
    }

    /// Takes a waiter out of line for `reason`, tells it so, and grants whoever it blocked.
    fn end_wait(
        &mut self,
        now: Instant,
        resource: &ResourceName,
        ticket: Ticket,
        reason: WaitFailure,
    ) {
        if self.groups.contains_key(&ticket) {
            self.end_group_wait(now, ticket, reason);
            return;
        }
        let Some(waiter) = self
            .queues
            .get_mut(resource)
            .and_then(|queue| queue.remove_waiter(ticket))
        else {
            return;
        };
        self.forget_wait_deadline(resource, ticket, &waiter);
        if let Some(session) = self.sessions.get_mut(&waiter.session) {
            session.waiting.remove(resource);
            session.waits.remove(&waiter.request);
        }
        self.campaigns.remove(waiter.session, resource);
        self.observations.push_back(Observation::WaitEnded {
            mode: waiter.mode,
            waited: now.saturating_duration_since(waiter.since),
            reason: reason.wait_end(),
        });
        self.effects.push_back(Effect::WaitFailed {
            session: waiter.session,
            request: waiter.request,
            resource: resource.clone(),
            reason,
        });
        self.notify_queue(resource);
        self.grant_waiters(now, resource);
    }

    pub(super) fn forget_wait_deadline(
        &mut self,
        resource: &ResourceName,
        ticket: Ticket,
        waiter: &Waiter,
    ) {
        if let Some(deadline) = waiter.deadline {
            self.deadlines
                .remove(&(deadline, Deadline::WaitTimeout(resource.clone(), ticket)));
        }
    }

    /// Grants, in arrival order, every waiter at the front of the queue that can hold the lock
    /// now, and drops the queue when it is idle. A multi-resource acquire that the queue is
    /// ready for is granted if all its other queues are ready too, and so is whatever its grant
    /// lets go next in any of them.
    pub(super) fn grant_waiters(&mut self, now: Instant, resource: &ResourceName) {
        if let Some(ticket) = self.grant_queue(now, resource) {
            self.grant_groups(now, ticket);
        }
    }

    /// [`grant_waiters`](Self::grant_waiters) in one queue: stops at a group member at its head
    /// and returns its ticket when the queue is ready for it.
    pub(super) fn grant_queue(&mut self, now: Instant, resource: &ResourceName) -> Option<Ticket> {
        let queue = self.queues.get_mut(resource)?;
        // In lock-delay: the deadline that ends it grants them.
        let delayed = self.delayed.contains_key(resource);
        // For the watchers, told once the queue is settled.
        let mut granted = Vec::new();
        loop {
            if delayed {
                break;
            }
            if self.next_token > self.token_limit {
                if queue.has_grantable() {
                    self.stalled.insert(resource.clone());
                }
                break;
            }
            let Some((ticket, waiter)) = queue.pop_grantable() else {
                break;
            };
            let token = FenceToken(self.next_token);
            self.next_token += 1;
            if let Some(deadline) = waiter.deadline {
                self.deadlines
                    .remove(&(deadline, Deadline::WaitTimeout(resource.clone(), ticket)));
            }
            queue.add_holder(
                token,
                Holder {
                    session: waiter.session,
                    mode: waiter.mode,
                    permits: waiter.permits.map(Permits::count),
                    lock_delay_ms: waiter.lock_delay_ms,
                    since: now,
                },
            );
            if let Some(session) = self.sessions.get_mut(&waiter.session) {
                session.waits.remove(&waiter.request);
                session.waiting.remove(resource);
                session.held.insert(resource.clone());
            }
            self.observations.push_back(Observation::Granted {
                mode: waiter.mode,
                permits: waiter.permits.map(Permits::count),
                waited: now.saturating_duration_since(waiter.since),
            });
            self.effects.push_back(Effect::Granted {
                session: waiter.session,
                request: waiter.request,
                resource: resource.clone(),
                token,
                mode: waiter.mode,
                permits: waiter.permits,
            });
            if let Some(holder) = queue.holder(token) {
                granted.push((token, holder.clone()));
            }
        }
        let group = if delayed { None } else { queue.group_head() };
        if queue.is_idle() {
            self.queues.remove(resource);
        }
        for (token, holder) in &granted {
            self.notify_hold(resource, HoldChange::Granted, *token, holder);
        }
        if !granted.is_empty() {
            self.notify_queue(resource);
        }
        group
    }
}

/// The deadlock search's state: who was reached and how, and how much of each queue it has
/// already walked.
///
/// Walking each waiter's blockers one by one costs, on one queue of n waiters, n²/2 steps: the
/// waiters ahead of a waiter are the waiters ahead of the one in front of it, and one more.
/// So the search remembers, per queue, up to which ticket it has listed the waiters ahead for
/// an exclusive request (which waits for all of them) and for a shared one (which waits for the
/// exclusive ones), and lists only the part it has not yet seen: every waiter of a queue is
/// listed at most twice per search, and one acquire costs at most O(waiters it can reach).
struct CycleSearch<'t> {
    /// The session whose new wait the search checks.
    target: SessionId,
    /// For each session reached: the session it was reached from, on which resource, and
    /// whether as a holder (or as a waiter ahead).
    reached: HashMap<SessionId, (SessionId, ResourceName, bool)>,
    /// Sessions reached whose own waits are still to be followed.
    frontier: Vec<SessionId>,
    scanned: HashMap<&'t ResourceName, Scanned>,
}

/// How much of one queue a search has listed.
#[derive(Default)]
struct Scanned {
    /// Every waiter with a smaller ticket has been listed (an exclusive request's blockers).
    all_below: Option<Ticket>,
    /// Every exclusive waiter with a smaller ticket has been listed (a shared request's).
    exclusive_below: Option<Ticket>,
    /// Every holder has been listed, or every exclusive holder.
    all_holders: bool,
    exclusive_holders: bool,
    /// In a semaphore: the largest request (in permits) whose blocking holders have been
    /// listed; a larger request is blocked by more of them.
    holders_for_permits: u16,
}

impl<'t> CycleSearch<'t> {
    /// Lists what `waiting`'s request (in `mode`, with `ticket` in `resource`'s queue, or not
    /// yet queued) waits for, skipping what this search listed before. Returns true when that
    /// reaches the target: a cycle.
    fn expand(
        &mut self,
        waiting: SessionId,
        resource: &'t ResourceName,
        queue: &LockQueue,
        ticket: Option<Ticket>,
        want: Want,
    ) -> bool {
        let scanned = self.scanned.entry(resource).or_default();
        // A request for permits waits, like an exclusive one, for every waiter ahead.
        let exclusive = want.mode == LockMode::Exclusive || want.permits.is_some();
        let mut found = Vec::new();
        if let Some(permits) = want.permits {
            if permits.get() > scanned.holders_for_permits {
                found.extend(queue.conflicting_holders(want).map(|s| (s, true)));
                scanned.holders_for_permits = permits.get();
            }
        } else if !scanned.all_holders && (exclusive || !scanned.exclusive_holders) {
            found.extend(queue.conflicting_holders(want).map(|s| (s, true)));
            scanned.exclusive_holders = true;
            scanned.all_holders |= exclusive;
        }
        // An exclusive request waits for every waiter ahead, a shared one for the exclusive
        // ones: what a shared request's listing covered is not enough for an exclusive one.
        let covered = if exclusive {
            scanned.all_below
        } else {
            scanned.all_below.max(scanned.exclusive_below)
        };
        // `None` (not yet queued) is behind every ticket.
        let up_to = |t: Option<Ticket>| t.map_or(u64::MAX, |Ticket(n)| n);
        if covered.is_none() || up_to(ticket) > up_to(covered) {
            let from = covered.unwrap_or(Ticket(0));
            found.extend(
                queue
                    .conflicting_waiters(from, ticket, want)
                    .map(|(_, s)| (s, false)),
            );
            let mark = Some(ticket.unwrap_or(Ticket(u64::MAX)));
            if exclusive {
                scanned.all_below = mark;
            } else {
                scanned.exclusive_below = mark;
            }
        }
        for (blocker, held) in found {
            if blocker == self.target {
                if waiting == self.target {
                    // Not a cycle: the new request itself (it neither holds nor waits here).
                    continue;
                }
                self.reached
                    .insert(self.target, (waiting, resource.clone(), held));
                return true;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = self.reached.entry(blocker) {
                entry.insert((waiting, resource.clone(), held));
                self.frontier.push(blocker);
            }
        }
        false
    }
}

/// "session 1 waits for b held by session 2; session 2 waits for a held by session 1", walking
/// the `reached` links back from `start` to itself.
fn describe_cycle(
    start: SessionId,
    reached: &HashMap<SessionId, (SessionId, ResourceName, bool)>,
) -> String {
    let mut steps = Vec::new();
    let mut blocker = start;
    while let Some((waiter, resource, held)) = reached.get(&blocker) {
        let how = if *held { "held by" } else { "queued behind" };
        steps.push(format!(
            "session {waiter} waits for {resource} {how} session {blocker}"
        ));
        blocker = *waiter;
        if blocker == start || steps.len() > reached.len() {
            break;
        }
    }
    steps.reverse();
    steps.join("; ")
}

fn millis_since(now: Instant, since: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
}
