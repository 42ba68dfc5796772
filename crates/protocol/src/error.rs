//! The error codes of protocol v1: one table of wire name and meaning.
//!
//! Every failed request is answered with exactly one of these codes. The table below is the
//! single source of truth: the enum, its wire names and the descriptions in docs/protocol.md
//! all follow it, and a test checks the doc against it.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal : $description:literal,)*) => {
        /// Why a request failed, as sent in `error.code`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The name on the wire, e.g. `not_held`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $wire,)* }
            }

            /// One sentence saying when the server sends this code.
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $description,)* }
            }
        }
    };
}

error_codes! {
    /// The frame is not a JSON object, or a field is missing, ill-typed or out of range.
    BadRequest = "bad_request": "The frame is not a JSON object, or a field is missing, ill-typed or out of range (including an unknown mode and a negative number).",
    /// The `op` field names no operation of this protocol version.
    UnknownOp = "unknown_op": "The `op` field names no operation of this protocol version.",
    /// The resource name is empty, too long, or contains control characters or whitespace.
    InvalidResource = "invalid_resource": "The resource name is empty, longer than 256 bytes, or contains a control character or whitespace.",
    /// The line is longer than the server's frame limit.
    FrameTooLarge = "frame_too_large": "The line is longer than the server's frame limit (`--max-frame-bytes`); the rest of the line is discarded.",
    /// The value of a `write` is longer than the server's value limit.
    ValueTooLarge = "value_too_large": "The value of a `write` is longer than the server's value limit (`--max-value-bytes`).",
    /// An acquire was not granted within its `timeout_ms`.
    Timeout = "timeout": "An acquire was not granted within its `timeout_ms` (with `timeout_ms: 0`, the lock was not free at once).",
    /// A waiting acquire was withdrawn by a `cancel` request.
    Cancelled = "cancelled": "A waiting acquire was withdrawn by a `cancel` request from the same connection.",
    /// The session already holds or waits for this resource.
    AlreadyHeld = "already_held": "The session already holds or waits for this resource (locks are not re-entrant).",
    /// The session holds no lock on this resource with this token.
    NotHeld = "not_held": "The session holds no lock on this resource with this token.",
    /// A `write` was attempted under a shared lock.
    NotExclusive = "not_exclusive": "A `write` was attempted under a shared lock; writing needs the exclusive lock.",
    /// A semaphore acquire's `limit` differs from the limit the resource has now.
    LimitMismatch = "limit_mismatch": "An acquire disagrees with the resource's current kind: its `limit` differs from the limit of the semaphore's holders and waiters, or it asks for permits of a resource held or awaited as a lock (or for a lock on a semaphore). The message gives the current limit; nothing was queued.",
    /// Waiting for this lock would close a cycle of sessions waiting for each other.
    Deadlock = "deadlock": "Waiting for this lock would close a cycle of sessions that wait for each other; the message names the cycle, and nothing was queued.",
    /// The server requires authentication and this connection has not given the right token.
    Unauthorized = "unauthorized": "The server requires `hello` with the right `auth` token before anything else; a wrong token also closes the connection.",
    /// A server limit would be exceeded (connections, locks or waits per session, ...).
    LimitExceeded = "limit_exceeded": "A server limit would be exceeded (connections in total or per client address, locks held or waits queued per session, time to send a first frame); the message names the limit and its flag.",
    /// This server is a follower (or a candidate) of a cluster; only the leader serves.
    NotLeader = "not_leader": "This server is not the cluster's leader and serves nothing; the error's `leader` field gives the leader's client address when it is known. Reconnect there (lockctl does).",
    /// The session `hello` asked to resume does not exist.
    NoSession = "no_session": "The session that `hello` asked to resume does not exist (its lease ran out, or it was closed); its locks are gone. Start a new session.",
    /// The server failed in a way that is not the client's fault.
    Internal = "internal": "The server failed in a way that is not the client's fault; the message says what happened.",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of a failed reply: a code and one clear sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The machine-readable reason.
    pub code: ErrorCode,
    /// A sentence for humans; its wording may change between releases.
    pub message: String,
    /// With `not_leader`: the client address of the cluster's leader, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl ErrorBody {
    /// An error body with the given code and message. The message is sent as a sentence, so
    /// its first letter is made upper case (Rust error messages conventionally start in lower
    /// case so that they read well inside other messages).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut chars = message.chars();
        let message = match chars.next() {
            Some(first) if first.is_lowercase() => first.to_uppercase().chain(chars).collect(),
            _ => message,
        };
        ErrorBody {
            code,
            message,
            leader: None,
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md is the contract: every code must have its row in the error table, with
    /// the description from this file.
    #[test]
    fn every_code_is_documented_in_the_protocol_doc() {
        let doc = include_str!("../../../docs/protocol.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.description());
            assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
        }
    }

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *code);
        }
    }
}
