//! When a follower starts an election: lockd's own timer, in place of openraft's.
//!
//! openraft 0.9 draws a node's election timeout once, when the node starts, and uses it for
//! every election after. Two followers whose timeouts happen to be close start their elections
//! together after every leader death, split the vote, and try again together a fixed time
//! later, until scheduling noise parts them: in a run of 20 leader kills, one failover took
//! three elections and 4.2 election timeouts. So openraft's own elections are switched off
//! (`enable_elect(false)`; a bootstrap still elects at once) and this timer draws a fresh random
//! timeout for each attempt:
//!
//! - after hearing from a leader (or granting its vote to a candidate, or starting), the node
//!   runs once it has heard nothing for a
//!   for a random time between `--election-timeout-ms` and 4/3 of it: longer than the leader lease
//!   the other voters keep (openraft's `election_timeout_max`, see `node.rs`), so they can
//!   grant their vote;
//! - after an attempt of its own that made no leader (a split vote, a lost election), between
//!   1/3 and 2/3 of it, as openraft's candidates retry; and 4/3 of it more if a peer refused its
//!   vote for having a longer log (this node cannot win: it lets that peer run first, as
//!   openraft's `smaller_log_timeout` does; without it, a node just restarted and behind kept
//!   raising the term under the node that could win, for ten elections in a row).
//!
//! It only decides when; [`ElectionTimer`] is a pure function of the times it is given, and
//! [`run`] is the task that sleeps and calls openraft. openraft ignores an election trigger on
//! a leader and on a node that is not a voter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::Raft;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::leader_contact::LeaderContact;
use super::types::TypeConfig;

/// When this node should next start an election; see the module docs.
#[derive(Debug)]
pub(crate) struct ElectionTimer {
    election_timeout: Duration,
    /// The last thing that restarted the wait: a leader heard from (or the start), or an
    /// attempt of this node's own.
    since: Instant,
    after_attempt: bool,
    /// The wait drawn for the current interval.
    wait: Duration,
}

impl ElectionTimer {
    /// A timer for a node that starts at `now` and has heard from no leader yet.
    pub(crate) fn new(now: Instant, election_timeout: Duration) -> ElectionTimer {
        let mut timer = ElectionTimer {
            election_timeout,
            since: now,
            after_attempt: false,
            wait: election_timeout,
        };
        timer.wait = timer.draw();
        timer
    }

    /// A random wait for the current interval: `[T, 4T/3]` after a leader, `[T/3, 2T/3]` after
    /// an attempt.
    fn draw(&self) -> Duration {
        let (low, span) = if self.after_attempt {
            (self.election_timeout / 3, self.election_timeout / 3)
        } else {
            (self.election_timeout, self.election_timeout / 3)
        };
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(self.since.elapsed().as_nanos() as u64);
        let fraction = (hasher.finish() % 1_000_000) as u32;
        low + span.mul_f64(f64::from(fraction) / 1_000_000.0)
    }

    /// The leader was last heard from at `heard` (if ever): a newer contact restarts the wait.
    pub(crate) fn heard(&mut self, heard: Option<Instant>) {
        if let Some(heard) = heard.filter(|heard| *heard > self.since) {
            self.since = heard;
            if self.after_attempt {
                self.after_attempt = false;
                self.wait = self.draw();
            }
        }
    }

    /// When the current wait runs out.
    pub(crate) fn deadline(&self) -> Instant {
        self.since + self.wait
    }

    /// The node leads at `now`: nothing to wait for, so the wait starts again as a
    /// follower's, for when it no longer leads.
    pub(crate) fn restart(&mut self, now: Instant) {
        self.since = now;
        self.after_attempt = false;
        self.wait = self.draw();
    }

    /// The node starts an election at `now`: the next wait is a retry's, longer if
    /// `behind` (a peer refused an earlier vote for having a longer log).
    pub(crate) fn attempted(&mut self, now: Instant, behind: bool) {
        self.since = now;
        self.after_attempt = true;
        self.wait = self.draw();
        if behind {
            self.wait += self.election_timeout * 4 / 3;
        }
    }
}

/// Starts elections for this node when [`ElectionTimer`] says so, until `stop`; openraft's own
/// election timer must be off. A leader is told to elect too (it runs the timer while it
/// leads, hearing from nobody), and openraft ignores that.
pub(crate) async fn run(
    raft: Raft<TypeConfig>,
    contact: LeaderContact,
    greater_log_seen: Arc<AtomicBool>,
    election_timeout: Duration,
    stop: CancellationToken,
) {
    let mut timer = ElectionTimer::new(Instant::now(), election_timeout);
    loop {
        timer.heard(contact.last());
        let deadline = timer.deadline();
        if Instant::now() < deadline {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            continue;
        }
        let leads = {
            let metrics = raft.metrics().borrow().clone();
            metrics.current_leader == Some(metrics.id)
        };
        if leads {
            timer.restart(Instant::now());
            continue;
        }
        timer.attempted(
            Instant::now(),
            greater_log_seen.swap(false, Ordering::Relaxed),
        );
        debug!("no leader heard from within the election timeout: starting an election");
        if let Err(fatal) = raft.trigger().elect().await {
            warn!(error = %fatal, "cannot start an election: Raft stopped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(900);

    #[test]
    fn a_follower_waits_between_the_timeout_and_four_thirds_of_it_after_a_leader() {
        let start = Instant::now();
        for _ in 0..100 {
            let mut timer = ElectionTimer::new(start, T);
            let wait = timer.deadline() - start;
            assert!(wait >= T && wait <= T * 4 / 3, "{wait:?}");
            let heard = start + Duration::from_secs(5);
            timer.heard(Some(heard));
            let wait = timer.deadline() - heard;
            assert!(wait >= T && wait <= T * 4 / 3, "{wait:?}");
            // An older contact changes nothing.
            timer.heard(Some(start));
            assert_eq!(timer.deadline() - heard, wait);
        }
    }

    #[test]
    fn a_retry_waits_a_third_to_two_thirds_and_a_leader_resets_it() {
        let start = Instant::now();
        let mut timer = ElectionTimer::new(start, T);
        let attempt = start + Duration::from_secs(2);
        timer.attempted(attempt, false);
        let retry = timer.deadline() - attempt;
        assert!(retry >= T / 3 && retry <= T * 2 / 3, "{retry:?}");
        timer.attempted(attempt, true);
        let behind = timer.deadline() - attempt;
        assert!(behind >= T * 5 / 3 && behind <= T * 2, "{behind:?}");
        let heard = attempt + Duration::from_millis(100);
        timer.heard(Some(heard));
        let wait = timer.deadline() - heard;
        assert!(wait >= T && wait <= T * 4 / 3, "{wait:?}");
    }

    #[test]
    fn waits_are_drawn_afresh() {
        let start = Instant::now();
        let mut waits = std::collections::HashSet::new();
        let mut timer = ElectionTimer::new(start, T);
        for attempt in 1..=20 {
            let now = start + Duration::from_secs(attempt);
            timer.attempted(now, false);
            waits.insert(timer.deadline() - now);
        }
        assert!(waits.len() > 10, "{waits:?}");
    }
}
