//! One resource's lock state: its holders and its FIFO queue of waiters.
//!
//! The queue decides who may hold the lock next and nothing else; the table around it keeps
//! sessions, tokens and deadlines. Invariant, true between calls: the first waiter (if any)
//! cannot be granted (or waits for a token reservation, or for its resource's lock-delay), so a
//! new request may skip the queue only when it is empty.

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
    /// The lock-delay this holder asked for, in milliseconds (already clamped): how long the
    /// resource stays ungranted if this hold ends other than by `release`. A `u32` fits in the
    /// padding after `mode`, so a held lock costs no more than before.
    pub(crate) lock_delay_ms: u32,
    pub(crate) since: Instant,
}

/// A session waiting in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) session: SessionId,
    pub(crate) request: RequestId,
    pub(crate) mode: LockMode,
    /// The lock-delay its hold will carry once granted; see [`Holder::lock_delay_ms`].
    pub(crate) lock_delay_ms: u32,
    pub(crate) since: Instant,
    pub(crate) deadline: Option<Instant>,
}

/// Holders in token order (which is grant order) and waiters by ticket (so iteration is arrival
/// order); both give O(log n) removal from the middle.
///
/// The table keeps one queue per busy resource, a million of them at a million held locks, and
/// nearly all have one holder and nobody waiting. That case is kept inline and everything else
/// is boxed, so a queue is 40 bytes (a table entry 56) instead of the 48 it takes to keep a
/// holder inline next to a pointer to the waiters.
#[derive(Debug, Default)]
pub(crate) struct LockQueue {
    shape: Shape,
}

/// The forms a queue takes. A queue is `Busy` only while it needs to be: as soon as nobody
/// waits and at most one holder is left, it goes back to `Held` or `Free`.
#[derive(Debug, Default)]
enum Shape {
    /// Nothing held and nobody waiting; the table drops such a queue.
    #[default]
    Free,
    /// One holder and nobody waiting: nearly every held lock. Allocates nothing.
    Held(FenceToken, Holder),
    /// Several holders (readers), or anyone waiting.
    Busy(Box<Busy>),
}

/// A queue that is not `Free` or `Held`.
#[derive(Debug, Default)]
struct Busy {
    holders: Holders,
    waiters: BTreeMap<Ticket, Waiter>,
}

impl LockQueue {
    /// True when nothing is held and nobody waits, so the entry can be dropped.
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.shape, Shape::Free)
    }

    /// How many acquires wait in line.
    pub(crate) fn waiter_count(&self) -> usize {
        self.waiter_map().map_or(0, BTreeMap::len)
    }

    /// Whether a new request in `mode` may be granted at once, without queueing.
    pub(crate) fn can_grant_now(&self, mode: LockMode) -> bool {
        self.waiter_map().is_none_or(BTreeMap::is_empty) && self.compatible_with_holders(mode)
    }

    pub(crate) fn add_holder(&mut self, token: FenceToken, holder: Holder) {
        debug_assert!(self.compatible_with_holders(holder.mode));
        self.shape = match std::mem::take(&mut self.shape) {
            Shape::Free => Shape::Held(token, holder),
            other => {
                let mut busy = other.into_busy();
                busy.holders.insert(token, holder);
                Shape::Busy(busy)
            }
        };
    }

    pub(crate) fn remove_holder(&mut self, token: FenceToken) -> Option<Holder> {
        let removed = match &mut self.shape {
            Shape::Held(held, _) if *held == token => {
                let Shape::Held(_, holder) = std::mem::take(&mut self.shape) else {
                    return None;
                };
                Some(holder)
            }
            Shape::Free | Shape::Held(..) => None,
            Shape::Busy(busy) => busy.holders.remove(token),
        };
        self.settle();
        removed
    }

    /// Queues a waiter behind everyone already waiting and returns its position (1 = next).
    pub(crate) fn enqueue(&mut self, ticket: Ticket, waiter: Waiter) -> u64 {
        debug_assert!(self.waiters_by_ticket().next_back().map(|(t, _)| t) < Some(&ticket));
        let mut busy = std::mem::take(&mut self.shape).into_busy();
        busy.waiters.insert(ticket, waiter);
        let position = busy.waiters.len() as u64;
        self.shape = Shape::Busy(busy);
        position
    }

    pub(crate) fn remove_waiter(&mut self, ticket: Ticket) -> Option<Waiter> {
        let Shape::Busy(busy) = &mut self.shape else {
            return None;
        };
        let removed = busy.waiters.remove(&ticket);
        self.settle();
        removed
    }

    /// Takes the first waiter out of the queue if it can be granted now. Called in a loop after
    /// anything leaves, this grants every waiter that became grantable, in arrival order, and
    /// stops at the first one that must keep waiting: a later reader never overtakes a writer.
    pub(crate) fn pop_grantable(&mut self) -> Option<(Ticket, Waiter)> {
        if !self.has_grantable() {
            return None;
        }
        let Shape::Busy(busy) = &mut self.shape else {
            return None;
        };
        let first = busy.waiters.pop_first();
        self.settle();
        first
    }

    /// Whether the first waiter could be granted now.
    pub(crate) fn has_grantable(&self) -> bool {
        self.waiters_by_ticket()
            .next()
            .is_some_and(|(_, first)| self.compatible_with_holders(first.mode))
    }

    /// In token order.
    pub(crate) fn holders(&self) -> impl Iterator<Item = (FenceToken, &Holder)> {
        let (one, busy) = match &self.shape {
            Shape::Free => (None, None),
            Shape::Held(token, holder) => (Some((*token, holder)), None),
            Shape::Busy(busy) => (None, Some(&busy.holders)),
        };
        one.into_iter()
            .chain(busy.into_iter().flat_map(Holders::iter))
    }

    pub(crate) fn waiters(&self) -> impl Iterator<Item = &Waiter> {
        self.waiters_by_ticket().map(|(_, waiter)| waiter)
    }

    /// Waiters with their tickets, in arrival order.
    pub(crate) fn queued(&self) -> impl Iterator<Item = (Ticket, &Waiter)> {
        self.waiters_by_ticket()
            .map(|(ticket, waiter)| (*ticket, waiter))
    }

    /// The place in line of the waiter with `ticket` (1 = next), if it waits here.
    pub(crate) fn position(&self, ticket: Ticket) -> Option<u64> {
        let waiters = self.waiter_map()?;
        waiters.get(&ticket)?;
        Some(waiters.range(..=ticket).count() as u64)
    }

    /// The holder with this token, if any.
    pub(crate) fn holder(&self, token: FenceToken) -> Option<&Holder> {
        match &self.shape {
            Shape::Held(held, holder) if *held == token => Some(holder),
            Shape::Free | Shape::Held(..) => None,
            Shape::Busy(busy) => busy.holders.get(token),
        }
    }

    /// The token `session` holds the lock with, if it holds it. Looks at every holder: one,
    /// except for a shared lock with several readers.
    pub(crate) fn holding_token(&self, session: SessionId) -> Option<FenceToken> {
        self.holders()
            .find(|(_, holder)| holder.session == session)
            .map(|(token, _)| token)
    }

    /// The mode of a waiter still in line.
    pub(crate) fn waiter_mode(&self, ticket: Ticket) -> Option<LockMode> {
        self.waiter_map()?.get(&ticket).map(|waiter| waiter.mode)
    }

    /// Holders a request in `mode` waits for: those it conflicts with.
    pub(crate) fn conflicting_holders(
        &self,
        mode: LockMode,
    ) -> impl Iterator<Item = SessionId> + '_ {
        self.holders()
            .filter(move |(_, holder)| conflicts(holder.mode, mode))
            .map(|(_, holder)| holder.session)
    }

    /// Waiters with tickets from `from` (inclusive) up to `to` (exclusive; `None`: to the end of
    /// the queue) that a request in `mode` conflicts with. A request waits for every such
    /// waiter ahead of it, since they will be granted first.
    pub(crate) fn conflicting_waiters(
        &self,
        from: Ticket,
        to: Option<Ticket>,
        mode: LockMode,
    ) -> impl Iterator<Item = (Ticket, SessionId)> + '_ {
        use std::ops::Bound;
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        self.waiter_map()
            .into_iter()
            .flat_map(move |waiters| waiters.range((Bound::Included(from), upper)))
            .filter(move |(_, waiter)| conflicts(waiter.mode, mode))
            .map(|(ticket, waiter)| (*ticket, waiter.session))
    }

    /// Everyone a request in `mode` waits for: holders it conflicts with, and waiters ahead of
    /// it (before `ticket`, or all of them for a request not yet queued) that it conflicts with.
    /// `true` marks a holder. The straightforward form of what the table's deadlock search
    /// walks incrementally; kept to check that search against.
    #[cfg(test)]
    pub(crate) fn blockers(
        &self,
        ticket: Option<Ticket>,
        mode: LockMode,
    ) -> impl Iterator<Item = (SessionId, bool)> + '_ {
        let holders = self
            .conflicting_holders(mode)
            .map(|session| (session, true));
        let ahead = self
            .conflicting_waiters(Ticket(0), ticket, mode)
            .map(|(_, session)| (session, false));
        holders.chain(ahead)
    }

    fn compatible_with_holders(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.holders().next().is_none(),
            // An exclusive holder is always alone, so looking at any one holder is enough.
            LockMode::Shared => self
                .holders()
                .next()
                .is_none_or(|(_, holder)| holder.mode == LockMode::Shared),
        }
    }

    fn waiter_map(&self) -> Option<&BTreeMap<Ticket, Waiter>> {
        match &self.shape {
            Shape::Busy(busy) => Some(&busy.waiters),
            Shape::Free | Shape::Held(..) => None,
        }
    }

    /// In arrival (ticket) order.
    fn waiters_by_ticket(&self) -> impl DoubleEndedIterator<Item = (&Ticket, &Waiter)> {
        self.waiter_map().into_iter().flatten()
    }

    /// Back to `Free` or `Held` once a `Busy` queue no longer needs the box.
    fn settle(&mut self) {
        let Shape::Busy(busy) = &mut self.shape else {
            return;
        };
        if !busy.waiters.is_empty() {
            return;
        }
        match std::mem::take(&mut busy.holders) {
            Holders::None => self.shape = Shape::Free,
            Holders::One(token, holder) => self.shape = Shape::Held(token, holder),
            several => busy.holders = several,
        }
    }
}

impl Shape {
    /// The same holders and waiters in the boxed form, to add to.
    fn into_busy(self) -> Box<Busy> {
        match self {
            Shape::Free => Box::default(),
            Shape::Held(token, holder) => Box::new(Busy {
                holders: Holders::One(token, holder),
                waiters: BTreeMap::new(),
            }),
            Shape::Busy(busy) => busy,
        }
    }
}

/// Whether two modes cannot hold the lock at the same time.
fn conflicts(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}

/// The holders of a `Busy` queue. Most busy queues have one holder and waiters behind it, so
/// that case is kept inline: a `BTreeMap` allocates a node with room for eleven entries (about
/// 460 bytes) for its first entry. The map is only built for several readers.
#[derive(Debug, Default)]
enum Holders {
    #[default]
    None,
    One(FenceToken, Holder),
    /// Two or more, keyed by token.
    Many(BTreeMap<FenceToken, Holder>),
}

impl Holders {
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
            lock_delay_ms: 0,
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
        assert!(matches!(holders, Holders::None));
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
        assert!(matches!(holders, Holders::None));
        assert_eq!(holders.remove(FenceToken(7)), None);
    }

    fn writer(session: u64, since: Instant) -> Holder {
        Holder {
            session: SessionId(session),
            mode: LockMode::Exclusive,
            lock_delay_ms: 0,
            since,
        }
    }

    fn waiter(session: u64, mode: LockMode, since: Instant) -> Waiter {
        Waiter {
            session: SessionId(session),
            request: RequestId(session),
            mode,
            lock_delay_ms: 0,
            since,
            deadline: None,
        }
    }

    fn shape(queue: &LockQueue) -> &'static str {
        match queue.shape {
            Shape::Free => "free",
            Shape::Held(..) => "held",
            Shape::Busy(_) => "busy",
        }
    }

    #[test]
    fn a_held_lock_is_small_and_allocates_nothing() {
        // The table keeps one queue per held lock: a larger queue is paid for a million times.
        assert!(std::mem::size_of::<LockQueue>() <= 40);
        let mut queue = LockQueue::default();
        queue.add_holder(FenceToken(1), writer(1, Instant::now()));
        assert_eq!(shape(&queue), "held");
    }

    #[test]
    fn a_queue_is_boxed_only_while_someone_waits_or_several_read() {
        let now = Instant::now();
        let mut queue = LockQueue::default();
        assert!(queue.is_idle());
        queue.add_holder(FenceToken(1), writer(1, now));
        assert_eq!(
            queue.enqueue(Ticket(0), waiter(2, LockMode::Shared, now)),
            1
        );
        assert_eq!(
            queue.enqueue(Ticket(1), waiter(3, LockMode::Shared, now)),
            2
        );
        assert_eq!(shape(&queue), "busy");
        assert_eq!(queue.pop_grantable(), None);
        assert_eq!(queue.holding_token(SessionId(1)), Some(FenceToken(1)));

        assert_eq!(queue.remove_holder(FenceToken(1)), Some(writer(1, now)));
        assert_eq!(shape(&queue), "busy", "nobody holds, two wait");
        let (ticket, first) = queue.pop_grantable().unwrap();
        assert_eq!((ticket, first.session), (Ticket(0), SessionId(2)));
        queue.add_holder(FenceToken(2), reader(2, now));
        let (ticket, second) = queue.pop_grantable().unwrap();
        assert_eq!((ticket, second.session), (Ticket(1), SessionId(3)));
        queue.add_holder(FenceToken(3), reader(3, now));
        assert_eq!(shape(&queue), "busy", "two readers");
        assert_eq!(queue.holder(FenceToken(3)), Some(&reader(3, now)));
        assert_eq!(queue.holding_token(SessionId(2)), Some(FenceToken(2)));

        assert_eq!(queue.remove_holder(FenceToken(2)), Some(reader(2, now)));
        assert_eq!(
            shape(&queue),
            "held",
            "back inline with one reader and nobody waiting"
        );
        assert_eq!(queue.holder(FenceToken(3)), Some(&reader(3, now)));
        assert_eq!(
            queue.enqueue(Ticket(2), waiter(4, LockMode::Exclusive, now)),
            1
        );
        assert_eq!(
            queue.remove_waiter(Ticket(2)).map(|w| w.session),
            Some(SessionId(4))
        );
        assert_eq!(shape(&queue), "held");
        assert_eq!(queue.remove_holder(FenceToken(3)), Some(reader(3, now)));
        assert!(queue.is_idle());

        // A waiter that leaves an unheld queue leaves it idle too.
        assert_eq!(
            queue.enqueue(Ticket(3), waiter(5, LockMode::Exclusive, now)),
            1
        );
        assert!(!queue.is_idle());
        assert!(queue.remove_waiter(Ticket(3)).is_some());
        assert!(queue.is_idle());
    }
}
