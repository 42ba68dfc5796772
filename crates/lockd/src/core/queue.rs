//! One resource's lock state: its holders and its FIFO queue of waiters.
//!
//! The queue decides who may hold the lock next and nothing else; the table around it keeps
//! sessions, tokens and deadlines. Invariant, true between calls: the first waiter (if any)
//! cannot be granted (or waits for a token reservation, or for its resource's lock-delay, or is
//! a member of a multi-resource acquire that cannot be granted in another of its queues), so a
//! new request may skip the queue only when it is empty.
//!
//! A multi-resource acquire (a group) has one waiter in each of its queues, all with the same
//! ticket. A queue never grants a group member itself: it only says when one is at its head and
//! fits beside the holders ([`LockQueue::group_head`]), and the table grants the group when that
//! is true in every one of its queues.
//!
//! A resource is a lock (exclusive and shared holders) or a semaphore (holders of permits, at
//! most its limit in all), never both at once: the first acquirer of an idle resource decides,
//! and the queue forgets the limit when it is idle again.

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::time::Instant;

use protocol::cmd::Permits;
use protocol::{FenceToken, LockMode, RequestId, SessionId};

/// What an acquire asks for: a lock in a mode, or permits of a semaphore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// An exclusive or shared lock.
    Lock(LockMode),
    /// Some of a semaphore's permits. Permits are held in shared mode, beside other permits.
    Permits(Permits),
}

impl Claim {
    /// The mode a grant of this claim holds: permits are shared.
    pub fn mode(self) -> LockMode {
        match self {
            Claim::Lock(mode) => mode,
            Claim::Permits(_) => LockMode::Shared,
        }
    }

    /// The semaphore limit this claim assumes; `None` for a lock.
    pub fn limit(self) -> Option<NonZeroU16> {
        match self {
            Claim::Lock(_) => None,
            Claim::Permits(permits) => Some(permits.limit()),
        }
    }

    pub(crate) fn want(self) -> Want {
        Want {
            mode: self.mode(),
            permits: match self {
                Claim::Lock(_) => None,
                Claim::Permits(permits) => Some(permits.count()),
            },
        }
    }
}

impl From<LockMode> for Claim {
    fn from(mode: LockMode) -> Claim {
        Claim::Lock(mode)
    }
}

impl From<Permits> for Claim {
    fn from(permits: Permits) -> Claim {
        Claim::Permits(permits)
    }
}

/// What one holder holds or one waiter asks for, as the queue weighs it: the mode, and in a
/// semaphore the number of permits (the limit is the queue's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) mode: LockMode,
    pub(crate) permits: Option<NonZeroU16>,
}

/// Arrival order in a queue: tickets grow with every request the table queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticket(pub(crate) u64);

/// A session holding the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) session: SessionId,
    pub(crate) mode: LockMode,
    /// In a semaphore: how many permits it holds. Fits, like `lock_delay_ms`, in the padding
    /// after `mode`.
    pub(crate) permits: Option<NonZeroU16>,
    /// The lock-delay this holder asked for, in milliseconds (already clamped): how long the
    /// resource stays ungranted if this hold ends other than by `release`. A `u32` fits in the
    /// padding after `mode`, so a held lock costs no more than before.
    pub(crate) lock_delay_ms: u32,
    pub(crate) since: Instant,
}

impl Holder {
    pub(crate) fn want(&self) -> Want {
        Want {
            mode: self.mode,
            permits: self.permits,
        }
    }
}

/// A session waiting in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) session: SessionId,
    pub(crate) request: RequestId,
    pub(crate) mode: LockMode,
    /// In a semaphore: the permits it asks for, with the limit (its grant reports both).
    pub(crate) permits: Option<Permits>,
    /// The lock-delay its hold will carry once granted; see [`Holder::lock_delay_ms`].
    pub(crate) lock_delay_ms: u32,
    pub(crate) since: Instant,
    pub(crate) deadline: Option<Instant>,
    /// A member of a multi-resource acquire: the table's group with this waiter's ticket says
    /// which other queues it waits in, and it is granted in all of them at once or not at all.
    pub(crate) group: bool,
}

impl Waiter {
    pub(crate) fn want(&self) -> Want {
        Want {
            mode: self.mode,
            permits: self.permits.map(Permits::count),
        }
    }
}

/// Holders in token order (which is grant order) and waiters by ticket (so iteration is arrival
/// order); both give O(log n) removal from the middle.
///
/// The table keeps one queue per busy resource, a million of them at a million held locks, and
/// nearly all have one holder and nobody waiting. That case is kept inline and everything else
/// is boxed, so a queue is 40 bytes (a table entry 56) instead of the 48 it takes to keep a
/// holder inline next to a pointer to the waiters.
#[derive(Debug, Default, Clone)]
pub(crate) struct LockQueue {
    shape: Shape,
}

/// The forms a queue takes. A queue is `Busy` only while it needs to be: as soon as nobody
/// waits and at most one holder of a lock is left, it goes back to `Held` or `Free`. A
/// semaphore is `Busy` as long as anyone holds or waits, because only the box has room for
/// its limit.
#[derive(Debug, Default, Clone)]
enum Shape {
    /// Nothing held and nobody waiting; the table drops such a queue.
    #[default]
    Free,
    /// One holder and nobody waiting: nearly every held lock. Allocates nothing.
    Held(FenceToken, Holder),
    /// Several holders (readers), anyone waiting, or a semaphore.
    Busy(Box<Busy>),
}

/// A queue that is not `Free` or `Held`.
#[derive(Debug, Default, Clone)]
struct Busy {
    holders: Holders,
    waiters: BTreeMap<Ticket, Waiter>,
    /// Set while the resource is a semaphore.
    semaphore: Option<Semaphore>,
}

/// A semaphore's size and how much of it its holders hold.
#[derive(Debug, Clone, Copy)]
struct Semaphore {
    limit: NonZeroU16,
    /// The sum of the holders' permits, kept so that a grant does not walk the holders.
    used: u32,
}

impl LockQueue {
    /// An idle semaphore of `limit`, to add holders and waiters to (an image's).
    pub(crate) fn new_semaphore(limit: NonZeroU16) -> LockQueue {
        LockQueue {
            shape: Shape::Busy(Box::new(Busy {
                semaphore: Some(Semaphore { limit, used: 0 }),
                ..Busy::default()
            })),
        }
    }

    /// True when nothing is held and nobody waits, so the entry can be dropped.
    pub(crate) fn is_idle(&self) -> bool {
        match &self.shape {
            Shape::Free => true,
            Shape::Held(..) => false,
            Shape::Busy(busy) => matches!(busy.holders, Holders::None) && busy.waiters.is_empty(),
        }
    }

    /// The semaphore's limit, or `None` for a lock.
    pub(crate) fn limit(&self) -> Option<NonZeroU16> {
        self.semaphore().map(|semaphore| semaphore.limit)
    }

    /// How many permits the semaphore's holders hold, or `None` for a lock.
    pub(crate) fn permits_used(&self) -> Option<u32> {
        self.semaphore().map(|semaphore| semaphore.used)
    }

    /// Checks that `claim` fits what the resource is: a lock, or a semaphore of the same limit.
    /// An idle queue fits anything and becomes what `claim` asks for. On a mismatch, returns
    /// the current limit (`None`: it is a lock) and changes nothing.
    pub(crate) fn admit(&mut self, claim: Claim) -> Result<(), Option<NonZeroU16>> {
        if self.is_idle() {
            *self = match claim.limit() {
                Some(limit) => LockQueue::new_semaphore(limit),
                None => LockQueue::default(),
            };
            return Ok(());
        }
        let current = self.limit();
        if current == claim.limit() {
            Ok(())
        } else {
            Err(current)
        }
    }

    /// How many acquires wait in line.
    pub(crate) fn waiter_count(&self) -> usize {
        self.waiter_map().map_or(0, BTreeMap::len)
    }

    /// Whether a new request for `want` may be granted at once, without queueing.
    pub(crate) fn can_grant_now(&self, want: Want) -> bool {
        self.waiter_map().is_none_or(BTreeMap::is_empty) && self.compatible_with_holders(want)
    }

    pub(crate) fn add_holder(&mut self, token: FenceToken, holder: Holder) {
        debug_assert!(self.compatible_with_holders(holder.want()));
        self.shape = match std::mem::take(&mut self.shape) {
            Shape::Free if holder.permits.is_none() => Shape::Held(token, holder),
            other => {
                let mut busy = other.into_busy();
                if let (Some(semaphore), Some(permits)) = (&mut busy.semaphore, holder.permits) {
                    semaphore.used += u32::from(permits.get());
                }
                busy.holders.insert(token, holder);
                Shape::Busy(busy)
            }
        };
        self.settle();
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
            Shape::Busy(busy) => {
                let removed = busy.holders.remove(token);
                if let (Some(semaphore), Some(permits)) = (
                    &mut busy.semaphore,
                    removed.as_ref().and_then(|holder| holder.permits),
                ) {
                    semaphore.used -= u32::from(permits.get());
                }
                removed
            }
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

    /// Takes the first waiter out of the queue if it can be granted now; the caller must make it
    /// a holder at once with [`add_holder`](Self::add_holder). Called in a loop after
    /// anything leaves, this grants every waiter that became grantable, in arrival order, and
    /// stops at the first one that must keep waiting: a later reader never overtakes a writer,
    /// and a later small request for permits never overtakes a larger one.
    /// A group member at the head stops the loop: the table grants groups.
    pub(crate) fn pop_grantable(&mut self) -> Option<(Ticket, Waiter)> {
        if self.group_head().is_some() || !self.has_grantable() {
            return None;
        }
        let Shape::Busy(busy) = &mut self.shape else {
            return None;
        };
        // Not settled yet: the caller adds the waiter as a holder next, and a semaphore must
        // keep its limit until then.
        busy.waiters.pop_first()
    }

    /// The ticket of the first waiter if it is a group member that fits beside the holders:
    /// this queue is ready for its group, which is granted if all its other queues are too.
    pub(crate) fn group_head(&self) -> Option<Ticket> {
        self.waiters_by_ticket()
            .next()
            .filter(|(_, first)| first.group && self.compatible_with_holders(first.want()))
            .map(|(ticket, _)| *ticket)
    }

    /// Whether the first waiter could be granted now (a group member: in this queue).
    pub(crate) fn has_grantable(&self) -> bool {
        self.waiters_by_ticket()
            .next()
            .is_some_and(|(_, first)| self.compatible_with_holders(first.want()))
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

    /// What a waiter still in line asks for.
    pub(crate) fn waiter_want(&self, ticket: Ticket) -> Option<Want> {
        self.waiter_map()?.get(&ticket).map(Waiter::want)
    }

    /// Holders a request for `want` waits for: each one that alone keeps it from being granted.
    /// For a lock, those it conflicts with. For a semaphore, those holding so many permits that
    /// the request does not fit beside them even if every other holder left: the request must
    /// wait for them to release, whereas any one of several smaller holders may be the one that
    /// makes room, so none of them alone is a wait-for edge (a cycle through it would be no
    /// deadlock).
    pub(crate) fn conflicting_holders(&self, want: Want) -> impl Iterator<Item = SessionId> + '_ {
        let limit = self.limit();
        self.holders()
            .filter(move |(_, holder)| blocks(holder.want(), want, limit))
            .map(|(_, holder)| holder.session)
    }

    /// Waiters with tickets from `from` (inclusive) up to `to` (exclusive; `None`: to the end of
    /// the queue) that a request for `want` waits for. A request waits for every waiter ahead of
    /// it that is granted before it and conflicts with it: in a lock, readers are granted
    /// together, so only writers ahead count; in a semaphore, grants are strictly in order, so
    /// every waiter ahead counts. A group member ahead always counts.
    pub(crate) fn conflicting_waiters(
        &self,
        from: Ticket,
        to: Option<Ticket>,
        want: Want,
    ) -> impl Iterator<Item = (Ticket, SessionId)> + '_ {
        use std::ops::Bound;
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        self.waiter_map()
            .into_iter()
            .flat_map(move |waiters| waiters.range((Bound::Included(from), upper)))
            // A group member ahead is waited for in any mode: while its group cannot be granted
            // in another queue, it holds up this queue's line (see `group_head`).
            .filter(move |(_, waiter)| {
                want.permits.is_some() || waiter.group || conflicts(waiter.mode, want.mode)
            })
            .map(|(ticket, waiter)| (*ticket, waiter.session))
    }

    /// Everyone a request for `want` waits for: holders that block it, and waiters ahead of it
    /// (before `ticket`, or all of them for a request not yet queued) that it waits for. `true`
    /// marks a holder. The straightforward form of what the table's deadlock search walks
    /// incrementally; kept to check that search against.
    #[cfg(test)]
    pub(crate) fn blockers(
        &self,
        ticket: Option<Ticket>,
        want: Want,
    ) -> impl Iterator<Item = (SessionId, bool)> + '_ {
        let holders = self
            .conflicting_holders(want)
            .map(|session| (session, true));
        let ahead = self
            .conflicting_waiters(Ticket(0), ticket, want)
            .map(|(_, session)| (session, false));
        holders.chain(ahead)
    }

    fn compatible_with_holders(&self, want: Want) -> bool {
        if let Some(permits) = want.permits {
            return self.semaphore().is_some_and(|semaphore| {
                semaphore.used + u32::from(permits.get()) <= u32::from(semaphore.limit.get())
            });
        }
        match want.mode {
            LockMode::Exclusive => self.holders().next().is_none(),
            // An exclusive holder is always alone, so looking at any one holder is enough.
            LockMode::Shared => self
                .holders()
                .next()
                .is_none_or(|(_, holder)| holder.mode == LockMode::Shared),
        }
    }

    fn semaphore(&self) -> Option<Semaphore> {
        match &self.shape {
            Shape::Busy(busy) => busy.semaphore,
            Shape::Free | Shape::Held(..) => None,
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

    /// Back to `Free` or `Held` once a `Busy` queue no longer needs the box. A semaphore needs
    /// it until it is idle, and then forgets its limit.
    fn settle(&mut self) {
        let Shape::Busy(busy) = &mut self.shape else {
            return;
        };
        if !busy.waiters.is_empty() {
            return;
        }
        match std::mem::take(&mut busy.holders) {
            Holders::None => self.shape = Shape::Free,
            Holders::One(token, holder) if busy.semaphore.is_none() => {
                self.shape = Shape::Held(token, holder);
            }
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
                semaphore: None,
            }),
            Shape::Busy(busy) => busy,
        }
    }
}

/// Whether two modes cannot hold the lock at the same time.
fn conflicts(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}

/// Whether `held` alone keeps `want` from being granted, in a queue with `limit` (a semaphore)
/// or without (a lock).
fn blocks(held: Want, want: Want, limit: Option<NonZeroU16>) -> bool {
    match (held.permits, want.permits, limit) {
        (Some(held), Some(want), Some(limit)) => {
            u32::from(held.get()) + u32::from(want.get()) > u32::from(limit.get())
        }
        _ => conflicts(held.mode, want.mode),
    }
}

/// The holders of a `Busy` queue. Most busy queues have one holder and waiters behind it, so
/// that case is kept inline: a `BTreeMap` allocates a node with room for eleven entries (about
/// 460 bytes) for its first entry. The map is only built for several readers.
#[derive(Debug, Default, Clone)]
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
            permits: None,
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
            permits: None,
            lock_delay_ms: 0,
            since,
        }
    }

    fn waiter(session: u64, mode: LockMode, since: Instant) -> Waiter {
        Waiter {
            session: SessionId(session),
            request: RequestId(session),
            mode,
            permits: None,
            lock_delay_ms: 0,
            since,
            deadline: None,
            group: false,
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

    #[test]
    fn a_semaphore_keeps_its_limit_boxed_until_idle_then_forgets_it() {
        let now = Instant::now();
        let permits = |count, limit| Claim::Permits(Permits::new(count, limit).unwrap());
        let holder = |session, count| Holder {
            permits: NonZeroU16::new(count),
            ..reader(session, now)
        };
        let mut queue = LockQueue::default();
        assert_eq!(queue.admit(permits(2, 3)), Ok(()));
        assert!(queue.is_idle(), "admitted, nothing held yet");
        queue.add_holder(FenceToken(1), holder(1, 2));
        assert_eq!(
            shape(&queue),
            "busy",
            "one holder, but the limit needs the box"
        );
        assert_eq!(
            (queue.limit(), queue.permits_used()),
            (NonZeroU16::new(3), Some(2))
        );
        assert_eq!(queue.admit(permits(1, 4)), Err(NonZeroU16::new(3)));
        assert_eq!(
            queue.admit(Claim::Lock(LockMode::Shared)),
            Err(NonZeroU16::new(3))
        );
        assert!(queue.can_grant_now(permits(1, 3).want()));
        assert!(!queue.can_grant_now(permits(2, 3).want()));
        assert_eq!(queue.remove_holder(FenceToken(1)), Some(holder(1, 2)));
        assert!(queue.is_idle());
        assert_eq!(shape(&queue), "free");
        assert_eq!(queue.limit(), None, "forgotten");
        assert_eq!(queue.admit(Claim::Lock(LockMode::Exclusive)), Ok(()));
    }
}
