//! Atomic multi-resource acquire: several locks granted all at once or not at all.
//!
//! A group waits under one ticket in the queue of each of its resources, with one waiter in
//! each (`Waiter::group`), and holds nothing while it waits. A queue never grants a group member
//! by itself; it stops at one at its head that fits beside its holders (the queue is then
//! *ready* for the group). The group is granted when every one of its queues is ready for it,
//! none is in lock-delay, and there are tokens for all its members: checked whenever any of
//! its queues moves, since only a change in one of its queues can make it grantable.
//!
//! Each queue stays FIFO: a group is never overtaken by a later request in any of its queues,
//! and it never blocks a request ahead of it. The price is the same as a waiting writer's: a
//! group at the head of a queue that waits for another of its resources holds up that queue's
//! later requests, even ones that would fit beside the holders.
//!
//! Once granted, each member is an ordinary hold with its own token, released, fenced, watched
//! and lost on its own; nothing here outlives the wait.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use protocol::{FenceToken, LockMode, RequestId, ResourceName, SessionId};

use super::effect::{Effect, LockError, WaitFailure};
use super::observation::Observation;
use super::queue::{Claim, Holder, LockQueue, Ticket, Waiter};
use super::table::{Deadline, LockTable};
use super::watch::HoldChange;

/// What a multi-resource acquire got at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquiredMany {
    /// Every member is held now: its tokens, in the request's order.
    Granted(Vec<FenceToken>),
    /// The request waits in every member's queue. `position` is its place in the queue where
    /// it is furthest back (1 = next in all of them). Its outcome comes later as an
    /// [`Effect`]: `GroupGranted` or `WaitFailed`.
    Queued {
        /// Its place in line.
        position: u64,
    },
    /// A try (`timeout` 0) whose members are all free while no fencing tokens may be handed
    /// out: granted as soon as the next reservation is durable, like
    /// [`Acquired::AwaitingTokens`](super::Acquired::AwaitingTokens).
    AwaitingTokens,
}

/// A waiting multi-resource acquire: what its ticket stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) session: SessionId,
    pub(crate) request: RequestId,
    /// Its resources and modes, in the request's order (which is the order of its tokens).
    /// The first is where its timeout deadline and its `cancel` entry are kept.
    pub(crate) members: Vec<(ResourceName, LockMode)>,
}

impl LockTable {
    /// `acquire` with `resources`: grants every member at once if each could be granted alone
    /// now (an empty queue, a mode that fits beside the holders, no lock-delay), otherwise
    /// queues the request in every member's queue under one ticket. Members are locks; a member
    /// that is a semaphore fails with `LimitMismatch`. `timeout` and `lock_delay` are as for
    /// [`handle_acquire`](Self::handle_acquire), for the whole group and for each member's hold.
    /// A member the session already holds or waits for fails the whole request, and each
    /// member counts toward `max_locks_per_session` (the group is one wait).
    pub fn handle_acquire_many(
        &mut self,
        now: Instant,
        session_id: SessionId,
        request: RequestId,
        members: Vec<(ResourceName, LockMode)>,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
    ) -> Result<AcquiredMany, LockError> {
        let max = self.config.max_resources_per_acquire;
        if members.len() > max {
            return Err(LockError::TooManyResources {
                asked: members.len(),
                max,
            });
        }
        let Some((first, _)) = members.first() else {
            return Err(LockError::BadGroup(
                "a multi-resource acquire must name at least one resource".into(),
            ));
        };
        let first = first.clone();
        let mut seen = HashSet::with_capacity(members.len());
        if let Some((twice, _)) = members.iter().find(|(r, _)| !seen.insert(r)) {
            return Err(LockError::BadGroup(format!(
                "resource {twice} appears twice in `resources`; name each resource once"
            )));
        }
        let lock_delay_ms = self.lock_delay_ms(lock_delay);
        let session = self
            .sessions
            .get(&session_id)
            .ok_or(LockError::SessionGone)?;
        for (resource, _) in &members {
            let holding = session.held.contains(resource);
            if holding || session.waiting.contains_key(resource) {
                return Err(LockError::AlreadyHeld {
                    resource: resource.clone(),
                    holding,
                });
            }
        }
        if session.waits.contains_key(&request) {
            return Err(LockError::DuplicateRequestId(request));
        }
        if session.lock_count() + members.len() > self.config.max_locks_per_session {
            return Err(LockError::TooManyLocks {
                held: session.lock_count(),
            });
        }
        // An idle queue takes any claim, and a busy lock takes locks: only a busy semaphore
        // refuses a member.
        for (resource, _) in &members {
            let queue = self.queues.get(resource).filter(|queue| !queue.is_idle());
            if let Some(current) = queue.and_then(LockQueue::limit) {
                return Err(LockError::LimitMismatch {
                    resource: resource.clone(),
                    asked: None,
                    current: Some(current),
                });
            }
        }
        let has_tokens = self.has_tokens_for(members.len());
        let blocked = self.first_blocked(&members, None);
        if blocked.is_none() && has_tokens {
            let tokens = members
                .iter()
                .map(|(resource, mode)| {
                    self.grant_member_now(now, session_id, resource, *mode, lock_delay_ms)
                })
                .collect();
            self.observations.push_back(Observation::GroupGranted);
            return Ok(AcquiredMany::Granted(tokens));
        }
        // Members all free: the wait is for tokens only (one fsync), not for a holder, so a try
        // waits for it and the waits limit does not count it.
        let awaits_tokens_only = blocked.is_none();
        let try_awaits_tokens = timeout == Some(Duration::ZERO) && awaits_tokens_only;
        let blocked = blocked.unwrap_or(first.clone());
        if timeout == Some(Duration::ZERO) && !try_awaits_tokens {
            return Err(LockError::Timeout(blocked));
        }
        let session = self
            .sessions
            .get(&session_id)
            .ok_or(LockError::SessionGone)?;
        if !awaits_tokens_only && session.waits.len() >= self.config.max_waits_per_session {
            return Err(LockError::TooManyWaits {
                waiting: session.waits.len(),
            });
        }
        if session.lock_count() > 0 {
            let starts: Vec<_> = members
                .iter()
                .map(|(resource, mode)| (resource, Claim::Lock(*mode).want()))
                .collect();
            if let Some(cycle) = self.find_wait_cycle_from(session_id, &starts) {
                return Err(LockError::Deadlock {
                    resource: first,
                    cycle,
                });
            }
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        // A timeout too large to represent as an instant waits forever, like no timeout; a
        // try awaiting tokens waits for them whatever its timeout.
        let deadline = timeout
            .filter(|_| !try_awaits_tokens)
            .and_then(|timeout| now.checked_add(timeout));
        let mut position = 0;
        for (resource, mode) in &members {
            let queue = self.queues.entry(resource.clone()).or_default();
            let waiter = Waiter {
                session: session_id,
                request,
                mode: *mode,
                permits: None,
                lock_delay_ms,
                since: now,
                deadline,
                group: true,
            };
            position = position.max(queue.enqueue(ticket, waiter));
        }
        if let Some(deadline) = deadline {
            self.deadlines
                .insert((deadline, Deadline::WaitTimeout(first.clone(), ticket)));
        }
        if !has_tokens {
            // Possibly ready, but short of tokens: the reservation's sweep looks again.
            self.stalled.insert(first.clone());
        }
        if let Some(session) = self.sessions.get_mut(&session_id) {
            for (resource, _) in &members {
                session.waiting.insert(resource.clone(), ticket);
            }
            session.waits.insert(request, first);
        }
        for (resource, _) in &members {
            self.notify_queue(resource);
        }
        self.groups.insert(
            ticket,
            Group {
                session: session_id,
                request,
                members,
            },
        );
        if try_awaits_tokens {
            return Ok(AcquiredMany::AwaitingTokens);
        }
        Ok(AcquiredMany::Queued { position })
    }

    /// How many multi-resource acquires wait now.
    pub fn group_waiter_count(&self) -> usize {
        self.groups.len()
    }

    /// The resources of the waiting group with `ticket`, for `status`.
    pub(super) fn group_members(&self, ticket: Ticket) -> Option<Vec<ResourceName>> {
        let group = self.groups.get(&ticket)?;
        Some(group.members.iter().map(|(r, _)| r.clone()).collect())
    }

    /// A waiting group's place in line: in the queue where it is furthest back.
    pub(super) fn group_position(&self, ticket: Ticket, group: &Group) -> Option<u64> {
        group
            .members
            .iter()
            .filter_map(|(resource, _)| self.queues.get(resource)?.position(ticket))
            .max()
    }

    /// Grants the group with `ticket` if all its queues are ready for it, and then, in turn,
    /// whatever that lets go in those queues (other groups included).
    pub(super) fn grant_groups(&mut self, now: Instant, ticket: Ticket) {
        let mut ready = vec![ticket];
        while let Some(ticket) = ready.pop() {
            let Some(resources) = self.grant_group(now, ticket) else {
                continue;
            };
            for resource in resources {
                if let Some(next) = self.grant_queue(now, &resource) {
                    ready.push(next);
                }
            }
        }
    }

    /// Takes a waiting group out of every queue when its wait ends without a grant (timeout or
    /// cancel), tells its session, and grants whatever it held up.
    pub(super) fn end_group_wait(&mut self, now: Instant, ticket: Ticket, reason: WaitFailure) {
        let Some(group) = self.groups.remove(&ticket) else {
            return;
        };
        // The error names a resource the group still waited for.
        let blocked = self
            .first_blocked(&group.members, Some(ticket))
            .unwrap_or_else(|| group.members[0].0.clone());
        let mut deadline = None;
        for (resource, _) in &group.members {
            let Some(waiter) = self
                .queues
                .get_mut(resource)
                .and_then(|queue| queue.remove_waiter(ticket))
            else {
                continue;
            };
            deadline = deadline.or(waiter.deadline);
            self.observations.push_back(Observation::WaitEnded {
                mode: waiter.mode,
                waited: now.saturating_duration_since(waiter.since),
                reason: reason.wait_end(),
            });
            self.notify_queue(resource);
        }
        if let Some(deadline) = deadline {
            let first = group.members[0].0.clone();
            self.deadlines
                .remove(&(deadline, Deadline::WaitTimeout(first, ticket)));
        }
        if let Some(session) = self.sessions.get_mut(&group.session) {
            for (resource, _) in &group.members {
                session.waiting.remove(resource);
            }
            session.waits.remove(&group.request);
        }
        self.effects.push_back(Effect::WaitFailed {
            session: group.session,
            request: group.request,
            resource: blocked,
            reason,
        });
        for (resource, _) in &group.members {
            self.grant_waiters(now, resource);
        }
    }

    /// Whether the next `count` tokens may be handed out now.
    fn has_tokens_for(&self, count: usize) -> bool {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.next_token <= self.token_limit
            && self.token_limit - self.next_token >= count.saturating_sub(1)
    }

    /// The first member that keeps the group from being granted now: in lock-delay, or (for a
    /// group not yet queued, `ticket` `None`) one that could not be granted alone at once, or
    /// (for a queued group) one whose queue is not ready for it.
    fn first_blocked(
        &self,
        members: &[(ResourceName, LockMode)],
        ticket: Option<Ticket>,
    ) -> Option<ResourceName> {
        members
            .iter()
            .find(|(resource, mode)| {
                let queue = self.queues.get(resource);
                let ready = match ticket {
                    None => {
                        queue.is_none_or(|queue| queue.can_grant_now(Claim::Lock(*mode).want()))
                    }
                    Some(ticket) => queue.and_then(LockQueue::group_head) == Some(ticket),
                };
                !ready || self.delayed.contains_key(resource)
            })
            .map(|(resource, _)| resource.clone())
    }

    /// Grants the group with `ticket` in all its queues if every one is ready for it; returns
    /// its resources if it did.
    fn grant_group(&mut self, now: Instant, ticket: Ticket) -> Option<Vec<ResourceName>> {
        let group = self.groups.get(&ticket)?;
        if self.first_blocked(&group.members, Some(ticket)).is_some() {
            return None;
        }
        if !self.has_tokens_for(group.members.len()) {
            let first = group.members[0].0.clone();
            self.stalled.insert(first);
            return None;
        }
        let group = self.groups.remove(&ticket)?;
        let mut tokens = Vec::with_capacity(group.members.len());
        let mut deadline = None;
        for (resource, mode) in &group.members {
            // Every queue was just found ready, with this group at its head.
            let Some(queue) = self.queues.get_mut(resource) else {
                continue;
            };
            let Some(waiter) = queue.remove_waiter(ticket) else {
                continue;
            };
            deadline = deadline.or(waiter.deadline);
            let token = FenceToken(self.next_token);
            self.next_token += 1;
            let holder = Holder {
                session: group.session,
                mode: *mode,
                permits: None,
                lock_delay_ms: waiter.lock_delay_ms,
                since: now,
            };
            queue.add_holder(token, holder.clone());
            if let Some(session) = self.sessions.get_mut(&group.session) {
                session.waiting.remove(resource);
                session.held.insert(resource.clone());
            }
            self.observations.push_back(Observation::Granted {
                mode: *mode,
                permits: None,
                waited: now.saturating_duration_since(waiter.since),
            });
            self.notify_hold(resource, HoldChange::Granted, token, &holder);
            self.notify_queue(resource);
            tokens.push((resource.clone(), token, *mode));
        }
        if let Some(deadline) = deadline {
            let first = group.members[0].0.clone();
            self.deadlines
                .remove(&(deadline, Deadline::WaitTimeout(first, ticket)));
        }
        if let Some(session) = self.sessions.get_mut(&group.session) {
            session.waits.remove(&group.request);
        }
        self.observations.push_back(Observation::GroupGranted);
        self.effects.push_back(Effect::GroupGranted {
            session: group.session,
            request: group.request,
            tokens,
        });
        Some(group.members.into_iter().map(|(r, _)| r).collect())
    }

    /// Makes `session` a holder of `resource` in `mode` at once, as part of a group granted
    /// without waiting; the caller has checked that it may.
    fn grant_member_now(
        &mut self,
        now: Instant,
        session: SessionId,
        resource: &ResourceName,
        mode: LockMode,
        lock_delay_ms: u32,
    ) -> FenceToken {
        let token = FenceToken(self.next_token);
        self.next_token += 1;
        let holder = Holder {
            session,
            mode,
            permits: None,
            lock_delay_ms,
            since: now,
        };
        self.queues
            .entry(resource.clone())
            .or_default()
            .add_holder(token, holder.clone());
        if let Some(session) = self.sessions.get_mut(&session) {
            session.held.insert(resource.clone());
        }
        self.observations.push_back(Observation::Granted {
            mode,
            permits: None,
            waited: Duration::ZERO,
        });
        self.notify_hold(resource, HoldChange::Granted, token, &holder);
        token
    }
}
