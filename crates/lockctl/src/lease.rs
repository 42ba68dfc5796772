//! The local lease: how long this client may go on believing it holds its locks without news
//! from the server. The same rule as the Python client's (docs/python.md, "The local lease"),
//! so that both clients behave alike; docs/safety.md explains it.
//!
//! The server expires a session it has not heard from for a whole lease. It heard a request no
//! earlier than the client sent it, so it cannot expire the session before *the send time of
//! the newest request it answered, plus the lease*. The client gives up a margin before that:
//!
//! ```text
//! local_deadline = t_sent + lease − margin
//! margin         = min(max(lease / 10, 50 ms), lease / 2) + lease × 1%
//! ```
//!
//! The margin covers the client's latency in noticing the deadline and a clock-rate difference
//! between client and server of up to 1%.

use std::time::Duration;

use tokio::time::Instant;

/// The smallest part of the margin that covers the client's own latency.
pub const MIN_MARGIN: Duration = Duration::from_millis(50);

/// How much of a lease the client keeps in hand for itself: see the module docs.
pub fn lease_margin(lease: Duration) -> Duration {
    (lease / 10).max(MIN_MARGIN).min(lease / 2) + lease / 100
}

/// The local deadline of a session whose newest answered request was sent at `t_sent`.
pub fn local_deadline(t_sent: Instant, lease: Duration) -> Instant {
    let valid = lease.saturating_sub(lease_margin(lease));
    // A lease too long to represent (none was granted yet) ends in a year: far enough.
    t_sent
        .checked_add(valid)
        .unwrap_or_else(|| t_sent + Duration::from_secs(365 * 86_400))
}

/// How often the keepalive pings: a quarter of the lease, so that a ping answered late or lost
/// still leaves most of the local lease.
pub fn keepalive_interval(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(5))
}

/// How long a session may go unrenewed before it is *in jeopardy*: half the lease, two
/// keepalive pings missed. A healthy session is renewed every quarter of the lease.
pub fn jeopardy_after(lease: Duration) -> Duration {
    lease / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_margin_is_the_python_clients() {
        // docs/python.md: 1.65 s for the default 15 s lease, 110 ms for 1 s.
        assert_eq!(lease_margin(ms(15_000)), ms(1_650));
        assert_eq!(lease_margin(ms(1_000)), ms(110));
        assert_eq!(lease_margin(ms(2_000)), ms(220));
        // Short leases: at least 50 ms, at most half the lease.
        assert_eq!(lease_margin(ms(300)), ms(53));
        assert_eq!(lease_margin(ms(60)), Duration::from_micros(30_600));
        let start = Instant::now();
        assert_eq!(local_deadline(start, ms(1_000)), start + ms(890));
    }
}
