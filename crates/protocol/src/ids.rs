//! Newtypes for the numbers and enums that cross the wire, so that a session id can never be
//! passed where a fencing token is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id a client gives a request; replies and events carry it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

/// A session: one connection, from connect (or `hello`) to close or lease expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

/// A fencing token: greater than 0 and strictly increasing over every grant the server makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FenceToken(pub u64);

/// How a lock is held: alone, or together with other shared holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// One holder at a time; the only mode that may `write`.
    #[default]
    Exclusive,
    /// Any number of holders at once, as long as no exclusive lock is held or queued ahead.
    Shared,
}

impl LockMode {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn from_wire(name: &str) -> Option<LockMode> {
        match name {
            "exclusive" => Some(LockMode::Exclusive),
            "shared" => Some(LockMode::Shared),
            _ => None,
        }
    }
}

macro_rules! display_inner {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

display_inner!(RequestId, SessionId, FenceToken);

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
