//! One resource's lock state: its holders and its FIFO queue of waiters.
//!
//! The queue decides who may hold the lock next and nothing else; the table around it keeps
//! sessions, tokens and deadlines. Invariant, true between calls: the first waiter (if any)
//! cannot be granted (or waits for a token reservation), so a new request may skip the queue
//! only when it is empty.

use std::collections::BTreeMap;
use std::time::Instant;

use protocol::{FenceToken, LockMode, RequestId, SessionId};

/// Arrival order in a queue: tickets grow with every request the table queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticket(pub(crate) u64);

/// A session holding the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) session: SessionId,
    pub(crate) mode: LockMode,
    pub(crate) since: Instant,
}

/// A session waiting in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) session: SessionId,
    pub(crate) request: RequestId,
    pub(crate) mode: LockMode,
    pub(crate) since: Instant,
    pub(crate) deadline: Option<Instant>,
}

/// Holders keyed by their token (so iteration is grant order) and waiters keyed by ticket (so
/// iteration is arrival order); both give O(log n) removal from the middle.
#[derive(Debug, Default)]
pub(crate) struct LockQueue {
    holders: BTreeMap<FenceToken, Holder>,
    waiters: BTreeMap<Ticket, Waiter>,
}

impl LockQueue {
    /// True when nothing is held and nobody waits, so the entry can be dropped.
    pub(crate) fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Whether a new request in `mode` may be granted at once, without queueing.
    pub(crate) fn can_grant_now(&self, mode: LockMode) -> bool {
        self.waiters.is_empty() && self.compatible_with_holders(mode)
    }

    pub(crate) fn add_holder(&mut self, token: FenceToken, holder: Holder) {
        debug_assert!(self.compatible_with_holders(holder.mode));
        self.holders.insert(token, holder);
    }

    pub(crate) fn remove_holder(&mut self, token: FenceToken) -> Option<Holder> {
        self.holders.remove(&token)
    }

    /// Queues a waiter behind everyone already waiting and returns its position (1 = next).
    pub(crate) fn enqueue(&mut self, ticket: Ticket, waiter: Waiter) -> u64 {
        debug_assert!(self.waiters.keys().next_back() < Some(&ticket));
        self.waiters.insert(ticket, waiter);
        self.waiters.len() as u64
    }

    pub(crate) fn remove_waiter(&mut self, ticket: Ticket) -> Option<Waiter> {
        self.waiters.remove(&ticket)
    }

    /// Takes the first waiter out of the queue if it can be granted now. Called in a loop after
    /// anything leaves, this grants every waiter that became grantable, in arrival order, and
    /// stops at the first one that must keep waiting: a later reader never overtakes a writer.
    pub(crate) fn pop_grantable(&mut self) -> Option<(Ticket, Waiter)> {
        if !self.has_grantable() {
            return None;
        }
        self.waiters.pop_first()
    }

    /// Whether the first waiter could be granted now.
    pub(crate) fn has_grantable(&self) -> bool {
        self.waiters
            .first_key_value()
            .is_some_and(|(_, first)| self.compatible_with_holders(first.mode))
    }

    pub(crate) fn holders(&self) -> impl Iterator<Item = (FenceToken, &Holder)> {
        self.holders.iter().map(|(token, holder)| (*token, holder))
    }

    pub(crate) fn waiters(&self) -> impl Iterator<Item = &Waiter> {
        self.waiters.values()
    }

    /// Waiters with their tickets, in arrival order.
    pub(crate) fn queued(&self) -> impl Iterator<Item = (Ticket, &Waiter)> {
        self.waiters
            .iter()
            .map(|(ticket, waiter)| (*ticket, waiter))
    }

    /// The place in line of the waiter with `ticket` (1 = next), if it waits here.
    pub(crate) fn position(&self, ticket: Ticket) -> Option<u64> {
        self.waiters
            .contains_key(&ticket)
            .then(|| self.waiters.range(..=ticket).count() as u64)
    }

    /// Whether a holder has this token.
    pub(crate) fn is_held_with(&self, token: FenceToken) -> bool {
        self.holders.contains_key(&token)
    }

    /// The mode of a waiter still in line.
    pub(crate) fn waiter_mode(&self, ticket: Ticket) -> Option<LockMode> {
        self.waiters.get(&ticket).map(|waiter| waiter.mode)
    }

    /// Everyone a request in `mode` waits for: holders it conflicts with, and waiters ahead of
    /// it (before `ticket`, or all of them for a request not yet queued) that it conflicts with,
    /// since they will be granted first. `true` marks a holder.
    pub(crate) fn blockers(
        &self,
        ticket: Option<Ticket>,
        mode: LockMode,
    ) -> impl Iterator<Item = (SessionId, bool)> + '_ {
        let holders = self
            .holders
            .values()
            .filter(move |holder| conflicts(holder.mode, mode))
            .map(|holder| (holder.session, true));
        let ahead = self
            .waiters
            .iter()
            .take_while(move |(t, _)| ticket.is_none_or(|ticket| **t < ticket))
            .filter(move |(_, waiter)| conflicts(waiter.mode, mode))
            .map(|(_, waiter)| (waiter.session, false));
        holders.chain(ahead)
    }

    fn compatible_with_holders(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.holders.is_empty(),
            // An exclusive holder is always alone, so looking at any one holder is enough.
            LockMode::Shared => self
                .holders
                .values()
                .next()
                .is_none_or(|holder| holder.mode == LockMode::Shared),
        }
    }
}

/// Whether two modes cannot hold the lock at the same time.
fn conflicts(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}
