//! [`ClientError`], why a call failed. It has a file of its own so that every part of the
//! client can name it without importing `client.rs`, which imports those parts.

use protocol::{ErrorBody, ErrorCode};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach lockd at {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What went wrong, e.g. "connection refused".
        reason: String,
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

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code),
            _ => None,
        }
    }
}
