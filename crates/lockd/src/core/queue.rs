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

/// Holders in token order (which is grant order) and waiters keyed by ticket (so iteration is
/// arrival order); both give O(log n) removal from the middle.
#[derive(Debug, Default)]
pub(crate) struct LockQueue {
    holders: Holders,
    waiters: Waiters,
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
        self.holders.remove(token)
    }

    /// Queues a waiter behind everyone already waiting and returns its position (1 = next).
    pub(crate) fn enqueue(&mut self, ticket: Ticket, waiter: Waiter) -> u64 {
        debug_assert!(self.waiters.iter().next_back().map(|(t, _)| t) < Some(&ticket));
        self.waiters.insert(ticket, waiter)
    }

    pub(crate) fn remove_waiter(&mut self, ticket: Ticket) -> Option<Waiter> {
        self.waiters.remove(ticket)
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
            .iter()
            .next()
            .is_some_and(|(_, first)| self.compatible_with_holders(first.mode))
    }

    pub(crate) fn holders(&self) -> impl Iterator<Item = (FenceToken, &Holder)> {
        self.holders.iter()
    }

    pub(crate) fn waiters(&self) -> impl Iterator<Item = &Waiter> {
        self.waiters.iter().map(|(_, waiter)| waiter)
    }

    /// Waiters with their tickets, in arrival order.
    pub(crate) fn queued(&self) -> impl Iterator<Item = (Ticket, &Waiter)> {
        self.waiters
            .iter()
            .map(|(ticket, waiter)| (*ticket, waiter))
    }

    /// The place in line of the waiter with `ticket` (1 = next), if it waits here.
    pub(crate) fn position(&self, ticket: Ticket) -> Option<u64> {
        self.waiters.get(ticket)?;
        Some(
            self.waiters
                .iter()
                .take_while(|(t, _)| **t <= ticket)
                .count() as u64,
        )
    }

    /// The holder with this token, if any.
    pub(crate) fn holder(&self, token: FenceToken) -> Option<&Holder> {
        self.holders.get(token)
    }

    /// The token `session` holds the lock with, if it holds it. Looks at every holder: one,
    /// except for a shared lock with several readers.
    pub(crate) fn holding_token(&self, session: SessionId) -> Option<FenceToken> {
        self.holders
            .iter()
            .find(|(_, holder)| holder.session == session)
            .map(|(token, _)| token)
    }

    /// The mode of a waiter still in line.
    pub(crate) fn waiter_mode(&self, ticket: Ticket) -> Option<LockMode> {
        self.waiters.get(ticket).map(|waiter| waiter.mode)
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
            .iter()
            .filter(move |(_, holder)| conflicts(holder.mode, mode))
            .map(|(_, holder)| (holder.session, true));
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
                .iter()
                .next()
                .is_none_or(|(_, holder)| holder.mode == LockMode::Shared),
        }
    }
}

/// Whether two modes cannot hold the lock at the same time.
fn conflicts(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}

/// One resource's waiters, by ticket. Most held locks have nobody waiting, and an empty
/// `BTreeMap` still takes 24 bytes in every queue of the table (where a million held locks
/// are a million queues), so the map is boxed and exists only while someone waits.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // reason: the box is what makes an empty queue 8 bytes, not 24
struct Waiters(Option<Box<BTreeMap<Ticket, Waiter>>>);

impl Waiters {
    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Adds a waiter and returns how many wait now.
    fn insert(&mut self, ticket: Ticket, waiter: Waiter) -> u64 {
        let waiters = self.0.get_or_insert_default();
        waiters.insert(ticket, waiter);
        waiters.len() as u64
    }

    fn remove(&mut self, ticket: Ticket) -> Option<Waiter> {
        let waiters = self.0.as_mut()?;
        let removed = waiters.remove(&ticket);
        if waiters.is_empty() {
            self.0 = None;
        }
        removed
    }

    fn pop_first(&mut self) -> Option<(Ticket, Waiter)> {
        let waiters = self.0.as_mut()?;
        let first = waiters.pop_first();
        if waiters.is_empty() {
            self.0 = None;
        }
        first
    }

    fn get(&self, ticket: Ticket) -> Option<&Waiter> {
        self.0.as_ref()?.get(&ticket)
    }

    /// In arrival (ticket) order.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (&Ticket, &Waiter)> {
        self.0.iter().flat_map(|waiters| waiters.iter())
    }
}

/// One resource's holders. Nearly every held lock has exactly one holder (an exclusive holder, or
/// a single reader), so that case is kept inline: a `BTreeMap` allocates a node with room for
/// eleven entries (about 460 bytes) for its first entry, which made a held lock cost more than
/// twice what the rest of the table spends on it. The map is only built for several readers.
#[derive(Debug, Default)]
enum Holders {
    #[default]
    None,
    One(FenceToken, Holder),
    /// Two or more, keyed by token.
    Many(BTreeMap<FenceToken, Holder>),
}

impl Holders {
    fn is_empty(&self) -> bool {
        matches!(self, Holders::None)
    }

    fn insert(&mut self, token: FenceToken, holder: Holder) {
        *self = match std::mem::take(self) {
            Holders::None => Holders::One(token, holder),
            Holders::One(first, first_holder) => {
                Holders::Many(BTreeMap::from([(first, first_holder), (token, holder)]))
            }
            Holders::Many(mut many) => {
                many.insert(token, holder);
                Holders::Many(many)
            }
        };
    }

    fn remove(&mut self, token: FenceToken) -> Option<Holder> {
        match self {
            Holders::One(held, _) if *held == token => {
                let Holders::One(_, holder) = std::mem::take(self) else {
                    return None;
                };
                Some(holder)
            }
            Holders::None | Holders::One(..) => None,
            Holders::Many(many) => {
                let removed = many.remove(&token);
                // Back to the inline form once a single holder is left.
                if many.len() == 1 {
                    if let Some((last, holder)) = many.pop_first() {
                        *self = Holders::One(last, holder);
                    }
                }
                removed
            }
        }
    }

    fn get(&self, token: FenceToken) -> Option<&Holder> {
        match self {
            Holders::One(held, holder) if *held == token => Some(holder),
            Holders::None | Holders::One(..) => None,
            Holders::Many(many) => many.get(&token),
        }
    }

    /// In token order.
    fn iter(&self) -> impl Iterator<Item = (FenceToken, &Holder)> {
        let (one, many) = match self {
            Holders::None => (None, None),
            Holders::One(token, holder) => (Some((*token, holder)), None),
            Holders::Many(many) => (None, Some(many)),
        };
        let many = many
            .into_iter()
            .flat_map(|many| many.iter().map(|(token, holder)| (*token, holder)));
        one.into_iter().chain(many)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(session: u64, since: Instant) -> Holder {
        Holder {
            session: SessionId(session),
            mode: LockMode::Shared,
            since,
        }
    }

    fn tokens(holders: &Holders) -> Vec<u64> {
        holders.iter().map(|(token, _)| token.0).collect()
    }

    #[test]
    fn holders_stay_in_token_order_from_one_to_many_and_back() {
        let now = Instant::now();
        let mut holders = Holders::default();
        assert!(holders.is_empty());
        holders.insert(FenceToken(5), reader(1, now));
        assert!(matches!(holders, Holders::One(..)));
        holders.insert(FenceToken(9), reader(2, now));
        holders.insert(FenceToken(7), reader(3, now));
        assert_eq!(tokens(&holders), [5, 7, 9]);
        assert_eq!(holders.remove(FenceToken(6)), None);
        assert_eq!(holders.remove(FenceToken(5)), Some(reader(1, now)));
        assert_eq!(tokens(&holders), [7, 9]);
        assert_eq!(holders.remove(FenceToken(9)), Some(reader(2, now)));
        assert!(matches!(holders, Holders::One(FenceToken(7), _)));
        assert_eq!(holders.remove(FenceToken(8)), None);
        assert_eq!(holders.remove(FenceToken(7)), Some(reader(3, now)));
        assert!(holders.is_empty());
        assert_eq!(holders.remove(FenceToken(7)), None);
    }
}
