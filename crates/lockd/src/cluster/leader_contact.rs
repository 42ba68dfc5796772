//! When this node last heard from its leader, for the front end of a follower to judge whether
//! the leader it would name to a client is still alive.
//!
//! openraft keeps naming the last leader until a new one is elected, which takes a whole
//! election timeout after the leader died. A follower that named it would send every client to
//! a dead node and back, and clients would poll the cluster with growing pauses. Instead a
//! follower whose leader has been silent for a few heartbeats holds the client's request until
//! a leader is heard from again (the old one, or the new one), and then sends it there at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Heartbeats a leader may miss before its followers doubt it.
const MISSED_HEARTBEATS: u32 = 2;

/// When the current leader's last AppendEntries (heartbeat or entries) arrived, or this node
/// last granted its vote to a candidate (which may be about to lead). Cheap to clone: the peer
/// server writes it; the front end and the election timer read it.
#[derive(Debug, Clone, Default)]
pub struct LeaderContact {
    last: Arc<Mutex<Option<Instant>>>,
}

impl LeaderContact {
    /// The leader was heard from at `now`.
    pub fn heard(&self, now: Instant) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
    }

    /// When the leader was last heard from, if ever.
    pub fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the leader has missed its heartbeats at `now` (or was never heard from), with
    /// one sent every `heartbeat`.
    pub fn in_doubt(&self, now: Instant, heartbeat: Duration) -> bool {
        self.last()
            .is_none_or(|last| now.saturating_duration_since(last) > heartbeat * MISSED_HEARTBEATS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_doubted_after_missing_two_heartbeats() {
        let contact = LeaderContact::default();
        let start = Instant::now();
        let heartbeat = Duration::from_millis(100);
        assert!(contact.in_doubt(start, heartbeat), "never heard from");
        contact.heard(start);
        assert!(!contact.in_doubt(start + Duration::from_millis(200), heartbeat));
        assert!(contact.in_doubt(start + Duration::from_millis(201), heartbeat));
        contact.heard(start + Duration::from_millis(300));
        assert!(!contact.in_doubt(start + Duration::from_millis(301), heartbeat));
    }
}
