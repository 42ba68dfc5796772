//! Noticing that the server itself stood still, so that its own pause is not taken for its
//! clients' silence.
//!
//! A lockd that is stopped (SIGSTOP, a VM pause, a laptop lid) or starved for longer than a
//! lease wakes up with every lease apparently run out, while the frames its clients sent all
//! along wait unread in the socket buffers. Expiring those sessions would break the promise
//! that every frame renews the lease. So each backend's loop wakes at least every
//! [`PAUSE_CHECK`], and when a turn of the loop comes more than [`PAUSE_THRESHOLD`] after the
//! previous one, the whole gap is credited to every lease (`LockTable::handle_pause` on a
//! single server, `LeaseKeeper::paused` on a cluster leader) before anyone is judged silent.
//! The frames that waited are then read and renew the leases as usual. Crediting only ever
//! moves an expiry later, never earlier, so a client's local lease stays on the safe side
//! (docs/safety.md).
//!
//! Sans-IO: `now` is an argument; the backends read the clock.

use std::time::{Duration, Instant};

/// How often a backend's loop wakes, even with nothing to do, so that a gap between two turns
/// means the server stood still.
pub(crate) const PAUSE_CHECK: Duration = Duration::from_millis(100);

/// A gap between two turns of the loop longer than this is a pause of the server. Well above
/// [`PAUSE_CHECK`] so that a busy runtime's ordinary lateness does not count; a shorter stall
/// than this is paid by the leases (keepalives at a third of the lease absorb it).
pub(crate) const PAUSE_THRESHOLD: Duration = Duration::from_millis(300);

/// The time of the loop's last turn.
#[derive(Debug, Default)]
pub(crate) struct PauseDetector {
    last_turn: Option<Instant>,
}

impl PauseDetector {
    /// A turn of the loop at `now`. Returns how long the server stood still before it, when
    /// that was a pause (longer than [`PAUSE_THRESHOLD`]).
    pub(crate) fn turn(&mut self, now: Instant) -> Option<Duration> {
        let last = self.last_turn.replace(now)?;
        let gap = now.saturating_duration_since(last);
        (gap > PAUSE_THRESHOLD).then_some(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gap_past_the_threshold_is_a_pause() {
        let start = Instant::now();
        let mut detector = PauseDetector::default();
        assert_eq!(
            detector.turn(start),
            None,
            "the first turn has nothing to compare"
        );
        let mut now = start + PAUSE_CHECK;
        assert_eq!(detector.turn(now), None);
        now += PAUSE_THRESHOLD;
        assert_eq!(
            detector.turn(now),
            None,
            "exactly the threshold is not a pause"
        );
        now += Duration::from_secs(2);
        assert_eq!(detector.turn(now), Some(Duration::from_secs(2)));
        assert_eq!(detector.turn(now), None);
    }
}
