//! [`ClientError`], why a call failed. It has a file of its own so that every part of the
//! client can name it without importing `client.rs`, which imports those parts.

use std::time::Duration;

use protocol::{ErrorBody, ErrorCode};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached: nothing listens there, the connect timeout ran out, or
    /// the address is wrong.
    #[error("cannot reach lockd at {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What went wrong, e.g. "connection refused".
        reason: String,
        /// Which kind of failure it was, for a hint that fits.
        kind: ConnectFailure,
    },
    /// The server took the connection (or the request) but did not answer within the reply
    /// timeout (`ClientBuilder::reply_timeout`): it is frozen (stopped, swapping, deadlocked),
    /// or something between drops its replies.
    #[error("lockd did not answer {what} within {} s", seconds(*.waited))]
    NoReply {
        /// What went unanswered: an op's name, or `the TLS handshake`.
        what: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The server answered with an error.
    #[error("{}", .0.message)]
    Server(ErrorBody),
    /// The session ended before the reply came: the server stopped, the network failed, or
    /// the session expired. With a cluster's addresses, the client first tries to resume the
    /// session on the new leader, and this means that failed too (no leader within the
    /// session's lease, or the session was gone). Any lock this session held is no longer
    /// held.
    #[error("the connection to lockd was lost")]
    ConnectionLost,
    /// A name or value was refused before it was sent.
    #[error("{0}")]
    InvalidInput(String),
    /// The server sent something this client cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Why a connection could not be made, as far as a hint to the user cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens at the address (or a firewall rejects the connection).
    Refused,
    /// The connect timeout ran out: packets are dropped on the way, or the host is down.
    TimedOut,
    /// The address is not `host:port`, or its host cannot be resolved.
    BadAddress,
    /// TLS was spoken to a server that does not speak it.
    NotTls,
    /// The server speaks TLS, and the client did not.
    TlsExpected,
    /// The server refused this client's certificate, or its lack of one (mutual TLS).
    ClientCertRefused,
    /// The TLS handshake failed otherwise: the server's certificate is not trusted or not for
    /// that name, or the two sides share no protocol version or cipher.
    Tls,
    /// Anything else (an unreachable network, a reset).
    Other,
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code),
            _ => None,
        }
    }
}

/// A duration in seconds, rounded to the millisecond, as a user gave it (`0.3`, not
/// `0.299985459`).
pub(crate) fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}
