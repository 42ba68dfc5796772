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
//!   runs once it has heard nothing for a random time between `--election-timeout-ms` and 4/3
//!   of it: longer than the leader lease
//!   the other voters keep (openraft's `election_timeout_max`, see `node.rs`), so they can
//!   grant their vote;
//! - after an attempt of its own that made no leader (a split vote, a lost election), between
//!   1/3 and 2/3 of it, as openraft's candidates retry; and 4/3 of it more, without an attempt
//!   in between, if a peer refused its vote for having a longer log (this node cannot win: it
//!   lets that peer run first, as openraft's `smaller_log_timeout` does; without it, a node just
//!   restarted and behind kept raising the term under the node that could win, for ten
//!   elections in a row).
//!
//! Two refusals also make a node run soon, a heartbeat later, without waiting out its timer
//! ([`ElectionSignals`]):
//!
//! - it refused its vote to a candidate whose log is shorter than its own. That candidate's
//!   timer ran out, so the leader is likely gone, and this node, which could win, would
//!   otherwise wait out its own timer while the candidate retried in vain. openraft (0.9, and
//!   0.10: its `handle_vote_req` refuses by the log before it looks at the term) does not
//!   raise the term of a node that refuses a vote for the log, as Raft's paper does, so this
//!   node's first attempt may land on the term the candidate already holds, hence the second
//!   rule;
//! - a peer refused its vote only because that peer holds a higher term it voted itself in,
//!   while its log is shorter than this node's: the peer cannot win alone, and grants the next
//!   term.
//!
//! It runs only if no leader (nor a candidate it voted for) was heard from in that heartbeat and
//! its leader has missed two heartbeats. The heartbeat's wait is for a whole cluster, where the
//! candidate with the shorter log can still win with a third node's vote: its first message
//! then arrives in time, and this node does not depose it (running at once did, in 2 of 10
//! soak runs of a test that restarts a whole cluster). After a leader death with the other
//! survivor behind, the candidate needs this node's vote and cannot win.
//!
//! In a run of leader kills with one survivor behind (restarted a moment before), the survivor
//! that was behind ran first, took the term the other one needed, and the failover took four
//! elections and over four election timeouts; with these rules the up-to-date survivor leads
//! one or two heartbeats after the other's first attempt.
//!
//! When its wait runs out, a node asks for a pre-vote first (openraft's `trigger().elect(true)`):
//! whether the others *would* vote for it at the next term. Only if a majority would does it
//! raise its term and run. A node cut off from a live leader (its links into it down, the
//! others still hearing from the leader) is refused, keeps its term, and so does not depose the
//! leader when the link comes back, as it did with a term raised at every attempt
//! (docs/cluster.md, "Pre-votes"). The refusals above read the same on a pre-vote as on a
//! vote, and a run they ask for is a pre-vote first too when this node refused a pre-vote: that
//! shows only that one more node has not heard from the leader lately, and this node may have
//! merely missed two heartbeats. When it refused a real vote (which a candidate asks for only
//! once a majority granted its pre-vote, or when forced by hand, as `election_tests.rs` does),
//! or a peer refused it for a term the peer raised itself, the leader is gone, and the run is an
//! election at once ([`SoonRun`]).
//!
//! It only decides when; [`ElectionTimer`] is a pure function of the times it is given, and
//! [`run`] is the task that sleeps and calls openraft. openraft ignores an election trigger on
//! a leader and on a node that is not a voter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::leader_contact::LeaderContact;
use super::types::LockdRaft;

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
    /// A refused vote asked this node to run soon: when it was asked, when to run unless a
    /// leader (or a candidate this node voted for) is heard from after it was asked, and how.
    soon: Option<(Instant, Instant, SoonRun)>,
}

impl ElectionTimer {
    /// A timer for a node that starts at `now` and has heard from no leader yet.
    pub(crate) fn new(now: Instant, election_timeout: Duration) -> ElectionTimer {
        let mut timer = ElectionTimer {
            election_timeout,
            since: now,
            after_attempt: false,
            wait: election_timeout,
            soon: None,
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

    /// The leader was last heard from at `heard` (if ever): a newer contact restarts the wait,
    /// and one after a request to run soon cancels that. Returns whether it was newer.
    pub(crate) fn heard(&mut self, heard: Option<Instant>) -> bool {
        let Some(heard) = heard else {
            return false;
        };
        if self.soon.is_some_and(|(asked, _, _)| heard > asked) {
            self.soon = None;
        }
        if heard <= self.since {
            return false;
        }
        self.since = heard;
        if self.after_attempt {
            self.after_attempt = false;
            self.wait = self.draw();
        }
        true
    }

    /// A refused vote at `now` says this node can win: it runs after `delay`, `how` it says,
    /// unless a leader is heard from first (one may have been elected without this node's
    /// vote, and its first message is on the way). An earlier request keeps its time, and runs
    /// at once if either request says so.
    pub(crate) fn run_soon(&mut self, now: Instant, delay: Duration, how: SoonRun) {
        let (_, _, earlier) = self.soon.get_or_insert((now, now + delay, how));
        if how == SoonRun::ElectionAtOnce {
            *earlier = how;
        }
    }

    /// When the next thing is due: the wait running out, or a run asked for by a refused vote.
    pub(crate) fn deadline(&self) -> Instant {
        let wait_over = self.since + self.wait;
        self.soon
            .map_or(wait_over, |(_, run_at, _)| run_at.min(wait_over))
    }

    /// What is due at `now`, if anything: a run asked for by a refused vote comes first.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Due> {
        if let Some((_, _, how)) = self.soon.filter(|&(_, run_at, _)| now >= run_at) {
            self.soon = None;
            Some(Due::RunSoon(how))
        } else if now >= self.since + self.wait {
            Some(Due::WaitOver)
        } else {
            None
        }
    }

    /// The node leads at `now`: nothing to wait for, so the wait starts again as a
    /// follower's, for when it no longer leads.
    pub(crate) fn restart(&mut self, now: Instant) {
        self.since = now;
        self.after_attempt = false;
        self.wait = self.draw();
        self.soon = None;
    }

    /// The wait ran out at `now`, but a peer refused this node's last vote for having a longer
    /// log: this node cannot win, so it waits 4/3 of the timeout more, and that peer runs first.
    pub(crate) fn defer(&mut self, now: Instant) {
        self.since = now;
        self.after_attempt = true;
        self.wait = self.election_timeout * 4 / 3;
    }

    /// The node starts an election at `now`: the next wait is a retry's.
    pub(crate) fn attempted(&mut self, now: Instant) {
        self.since = now;
        self.after_attempt = true;
        self.wait = self.draw();
        self.soon = None;
    }
}

/// What [`ElectionTimer::due`] found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The wait ran out with no leader heard from.
    WaitOver,
    /// A refused vote asked this node to run, and no leader was heard from since.
    RunSoon(SoonRun),
}

/// How a node that a refused vote told to run soon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoonRun {
    /// A pre-vote first, as when its wait runs out: the refusal was of a pre-vote, which shows
    /// only that one more node has not heard from the leader lately, and one that merely
    /// missed two heartbeats must not depose a leader the others still follow.
    PreVoteFirst,
    /// An election at once: the refusal was of a real vote, which a candidate asks for only
    /// once a majority granted its pre-vote (or when forced), or a peer refused this node for
    /// a term it raised itself. Either way the leader is gone, and this node's own leader
    /// lease, which a pre-vote honours, need not be waited out.
    ElectionAtOnce,
}

/// What the peer network and the peer server tell the election timer about votes refused, on
/// either side; see the module docs. Shared by one node's network, peer server and timer.
#[derive(Debug, Default)]
pub struct ElectionSignals {
    /// A peer refused this node's vote for having a longer log.
    greater_log_seen: AtomicBool,
    /// A refusal says this node can win, and should run soon rather than when its timer runs
    /// out.
    run_soon: Notify,
    /// One of the refusals since the timer last took `run_soon` says to run without a pre-vote
    /// ([`SoonRun::ElectionAtOnce`]).
    soon_at_once: AtomicBool,
}

impl ElectionSignals {
    /// A peer refused this node's vote request because the peer's log is longer.
    pub fn greater_log_seen(&self) {
        self.greater_log_seen.store(true, Ordering::Relaxed);
    }

    /// This node refused its vote (or pre-vote) to a candidate with a shorter log, or a peer
    /// with a shorter log refused this node's only for holding a higher term: this node should
    /// run a heartbeat from now, `how` says, if no leader is heard from by then and its leader
    /// is in doubt.
    pub fn run_soon(&self, how: SoonRun) {
        if how == SoonRun::ElectionAtOnce {
            self.soon_at_once.store(true, Ordering::Relaxed);
        }
        self.run_soon.notify_one();
    }

    /// How to run for the requests since the last call.
    fn take_soon_run(&self) -> SoonRun {
        if self.soon_at_once.swap(false, Ordering::Relaxed) {
            SoonRun::ElectionAtOnce
        } else {
            SoonRun::PreVoteFirst
        }
    }
}

/// Starts elections for this node when [`ElectionTimer`] or [`ElectionSignals`] say so, until
/// `stop`; openraft's own election timer must be off. The leader is in doubt once it has missed
/// two `heartbeat`s (see `leader_contact.rs`).
pub(crate) async fn run(
    raft: LockdRaft,
    contact: LeaderContact,
    signals: Arc<ElectionSignals>,
    campaigns: Counter,
    election_timeout: Duration,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let node = raft.metrics().borrow_watched().id;
    let mut timer = ElectionTimer::new(Instant::now(), election_timeout);
    loop {
        if timer.heard(contact.last()) {
            // A leader (or a candidate this node voted for) was heard since: the refusal is old.
            signals.greater_log_seen.store(false, Ordering::Relaxed);
        }
        let now = Instant::now();
        // `Some(pre_vote)` to run: see the module docs for which runs ask for a pre-vote.
        let campaign = match timer.due(now) {
            None => None,
            Some(Due::RunSoon(how)) => (contact.in_doubt(now, heartbeat)
                && !signals.greater_log_seen.load(Ordering::Relaxed))
            .then_some(how == SoonRun::PreVoteFirst),
            Some(Due::WaitOver) if signals.greater_log_seen.swap(false, Ordering::Relaxed) => {
                timer.defer(now);
                None
            }
            Some(Due::WaitOver) => Some(true),
        };
        if let Some(pre_vote) = campaign {
            let leads = {
                let metrics = raft.metrics().borrow_watched().clone();
                metrics.current_leader == Some(metrics.id)
            };
            if leads {
                timer.restart(now);
            } else {
                timer.attempted(now);
                debug!(node, pre_vote, "starting an election");
                campaigns.inc();
                if let Err(fatal) = raft.trigger().elect(pre_vote).await {
                    warn!(error = %fatal, "cannot start an election: Raft stopped");
                    return;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(timer.deadline().into()) => {}
            () = signals.run_soon.notified() => {
                debug!(node, "a refused vote says this node can win: it runs a heartbeat from now");
                timer.run_soon(Instant::now(), heartbeat, signals.take_soon_run());
            }
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
            assert!(timer.heard(Some(heard)));
            let wait = timer.deadline() - heard;
            assert!(wait >= T && wait <= T * 4 / 3, "{wait:?}");
            // An older contact changes nothing.
            assert!(!timer.heard(Some(start)));
            assert_eq!(timer.deadline() - heard, wait);
        }
    }

    #[test]
    fn a_retry_waits_a_third_to_two_thirds_and_a_leader_resets_it() {
        let start = Instant::now();
        let mut timer = ElectionTimer::new(start, T);
        let attempt = start + Duration::from_secs(2);
        timer.attempted(attempt);
        let retry = timer.deadline() - attempt;
        assert!(retry >= T / 3 && retry <= T * 2 / 3, "{retry:?}");
        // The retry's wait runs out, and a peer had refused the attempt for a longer log.
        let expired = timer.deadline();
        timer.defer(expired);
        assert_eq!(timer.deadline() - expired, T * 4 / 3);
        let heard = expired + Duration::from_millis(100);
        timer.heard(Some(heard));
        let wait = timer.deadline() - heard;
        assert!(wait >= T && wait <= T * 4 / 3, "{wait:?}");
    }

    #[test]
    fn a_refused_vote_runs_a_heartbeat_later_unless_a_leader_is_heard_first() {
        let start = Instant::now();
        let heartbeat = Duration::from_millis(50);
        let mut timer = ElectionTimer::new(start, T);
        let asked = start + Duration::from_millis(100);
        timer.run_soon(asked, heartbeat, SoonRun::PreVoteFirst);
        assert_eq!(timer.deadline(), asked + heartbeat);
        assert_eq!(timer.due(asked), None);
        // A second request does not push the first one back, but one to run at once makes
        // the run one at once.
        timer.run_soon(
            asked + Duration::from_millis(20),
            heartbeat,
            SoonRun::ElectionAtOnce,
        );
        timer.run_soon(
            asked + Duration::from_millis(30),
            heartbeat,
            SoonRun::PreVoteFirst,
        );
        // A contact from before the request does not cancel it.
        timer.heard(Some(asked - Duration::from_millis(1)));
        assert_eq!(
            timer.due(asked + heartbeat),
            Some(Due::RunSoon(SoonRun::ElectionAtOnce))
        );
        assert_eq!(timer.due(asked + heartbeat), None, "taken once");
        timer.run_soon(asked, heartbeat, SoonRun::PreVoteFirst);
        assert_eq!(
            timer.due(asked + heartbeat),
            Some(Due::RunSoon(SoonRun::PreVoteFirst))
        );

        // A leader heard from after the request cancels it.
        timer.run_soon(asked, heartbeat, SoonRun::PreVoteFirst);
        timer.heard(Some(asked + Duration::from_millis(10)));
        assert_eq!(timer.due(asked + heartbeat), None);
        assert!(
            timer.deadline() > asked + T,
            "{:?}",
            timer.deadline() - asked
        );

        // An attempt of the node's own takes its place.
        let mut timer = ElectionTimer::new(start, T);
        timer.run_soon(asked, heartbeat, SoonRun::ElectionAtOnce);
        timer.attempted(asked);
        assert_eq!(timer.due(asked + heartbeat), None);
        // The wait running out is due as before.
        let over = timer.deadline();
        assert_eq!(timer.due(over), Some(Due::WaitOver));
    }

    #[test]
    fn waits_are_drawn_afresh() {
        let start = Instant::now();
        let mut waits = std::collections::HashSet::new();
        let mut timer = ElectionTimer::new(start, T);
        for attempt in 1..=20 {
            let now = start + Duration::from_secs(attempt);
            timer.attempted(now);
            waits.insert(timer.deadline() - now);
        }
        assert!(waits.len() > 10, "{waits:?}");
    }
}
