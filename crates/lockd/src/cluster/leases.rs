//! The leader's view of session leases.
//!
//! Followers never see clients' frames, so a replicated table cannot expire sessions by
//! itself. The leader keeps, for each session, when it last heard from its client on its own
//! monotonic clock, and proposes an `Expire` entry once a session has been silent for its whole
//! lease. A new leader knows nothing of when clients were last heard, so it starts every
//! session's lease afresh (a grace period, as Chubby does): no session expires because its
//! leader changed.
//!
//! Sans-IO like the table: `now` is always an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::SessionId;

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    lease: Duration,
    last_heard: Instant,
    /// An `Expire` for it was proposed and is not applied yet.
    expiring: bool,
}

/// Last-heard times of the sessions in the replicated table, kept by the leader.
#[derive(Debug, Default)]
pub(crate) struct LeaseKeeper {
    sessions: HashMap<SessionId, LeaseState>,
}

impl LeaseKeeper {
    /// Forgets everything: on becoming leader, every session starts a full lease at the first
    /// [`sync`](Self::sync).
    pub(crate) fn reset(&mut self) {
        self.sessions.clear();
    }

    /// Brings the set of sessions and their leases in line with the table's: new sessions
    /// start a full lease at `now`, ended ones are forgotten.
    pub(crate) fn sync(&mut self, now: Instant, table: &[(SessionId, Duration)]) {
        let mut seen = HashMap::with_capacity(table.len());
        for &(session, lease) in table {
            let state = self.sessions.get(&session).copied().unwrap_or(LeaseState {
                lease,
                last_heard: now,
                expiring: false,
            });
            seen.insert(session, LeaseState { lease, ..state });
        }
        self.sessions = seen;
    }

    /// The session's client was heard from: its lease runs again from `now`.
    pub(crate) fn heard(&mut self, now: Instant, session: SessionId) {
        if let Some(state) = self.sessions.get_mut(&session) {
            state.last_heard = state.last_heard.max(now);
            state.expiring = false;
        }
    }

    /// The leader stood still for `paused`, up to `now` (see `pause.rs`): that time is not
    /// counted as any client's silence. Every session's last-heard time moves forward by it
    /// (never past `now`); the frames that waited in the sockets renew them when they are read.
    pub(crate) fn paused(&mut self, now: Instant, paused: Duration) {
        for state in self.sessions.values_mut() {
            let credited = state.last_heard.checked_add(paused).unwrap_or(now).min(now);
            state.last_heard = state.last_heard.max(credited);
        }
    }

    /// Sessions silent for their whole lease at `now`, in id order, each returned once (until
    /// it is heard from again).
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<SessionId> {
        let mut expired: Vec<SessionId> = self
            .sessions
            .iter_mut()
            .filter(|(_, state)| !state.expiring && state.last_heard + state.lease <= now)
            .map(|(session, state)| {
                state.expiring = true;
                *session
            })
            .collect();
        expired.sort();
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: SessionId = SessionId(1);
    const S2: SessionId = SessionId(2);

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_silent_session_expires_once_and_a_heard_one_does_not() {
        let start = Instant::now();
        let mut keeper = LeaseKeeper::default();
        keeper.sync(start, &[(S1, ms(100)), (S2, ms(300))]);
        keeper.heard(start + ms(90), S1);
        assert_eq!(keeper.take_expired(start + ms(150)), vec![]);
        assert_eq!(keeper.take_expired(start + ms(190)), vec![S1]);
        assert_eq!(
            keeper.take_expired(start + ms(200)),
            vec![],
            "proposed once"
        );
        assert_eq!(keeper.take_expired(start + ms(300)), vec![S2]);
    }

    #[test]
    fn a_new_leader_gives_every_session_a_full_lease() {
        let start = Instant::now();
        let mut keeper = LeaseKeeper::default();
        keeper.sync(start, &[(S1, ms(100))]);
        assert_eq!(keeper.take_expired(start + ms(100)), vec![S1]);
        // Leadership moved away and back: the session's clock starts again.
        keeper.reset();
        keeper.sync(start + ms(500), &[(S1, ms(100))]);
        assert_eq!(keeper.take_expired(start + ms(599)), vec![]);
        assert_eq!(keeper.take_expired(start + ms(600)), vec![S1]);
    }

    #[test]
    fn a_pause_of_the_leader_is_credited_to_every_lease() {
        let start = Instant::now();
        let mut keeper = LeaseKeeper::default();
        keeper.sync(start, &[(S1, ms(1_000)), (S2, ms(1_000))]);
        keeper.heard(start + ms(600), S1);
        // The leader stands still from 700 ms to 3700 ms.
        let woke = start + ms(3_700);
        keeper.paused(woke, ms(3_000));
        assert_eq!(keeper.take_expired(woke), vec![]);
        // S2 was silent for 700 ms before the pause, S1 for 100 ms.
        assert_eq!(keeper.take_expired(woke + ms(299)), vec![]);
        assert_eq!(keeper.take_expired(woke + ms(300)), vec![S2]);
        assert_eq!(keeper.take_expired(woke + ms(900)), vec![S1]);
    }

    #[test]
    fn sync_follows_the_table_and_its_leases() {
        let start = Instant::now();
        let mut keeper = LeaseKeeper::default();
        keeper.sync(start, &[(S1, ms(100))]);
        // The session asked for a longer lease (hello) and S2 opened later.
        keeper.sync(start + ms(50), &[(S1, ms(1_000)), (S2, ms(100))]);
        assert_eq!(keeper.take_expired(start + ms(150)), vec![S2]);
        keeper.sync(start + ms(200), &[(S1, ms(1_000))]);
        keeper.heard(start + ms(200), S2);
        assert_eq!(
            keeper.take_expired(start + ms(5_000)),
            vec![S1],
            "S2 is gone"
        );
    }
}
