//! How long the client waits for a server before it gives up: to accept a connection, and to
//! answer a request. Without these, a frozen server (SIGSTOP, a swap storm) or a firewall
//! that drops packets would hang every caller, cron jobs piling up behind it.
//!
//! They bound the waits that are not bounded otherwise. A lock held is guarded by the local
//! lease (`lease.rs`): once the session opened, the keepalive's pings go unanswered on a frozen
//! server and the session is lost at its local deadline. What the lease cannot cover is the
//! time before the first answer (the connect and `hello`) and a call that waits for its reply;
//! the reply timeout covers those. A waiting acquire has its answer when the server puts it in
//! line (`queued`); from then on its wait is as long as the caller asked for.

use std::time::Duration;

/// The connect timeout unless told otherwise: a TCP handshake on a live network takes
/// milliseconds, and a SYN lost once is resent after one second, so five leaves room for two
/// losses.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reply timeout unless told otherwise: a healthy lockd answers in milliseconds, and a
/// cluster's failover, during which calls wait for the new leader, takes one to two seconds
/// with the default election timeout (docs/cluster.md, "Failover").
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's time limits; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// For the TCP handshake, and again for the TLS one.
    pub(crate) connect: Duration,
    /// From sending a request to its first answer (the reply, or for an acquire its place in
    /// line).
    pub(crate) reply: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            reply: DEFAULT_REPLY_TIMEOUT,
        }
    }
}
