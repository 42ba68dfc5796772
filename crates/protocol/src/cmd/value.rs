//! Value commands: `read` and `write` of the one value each resource keeps.
//!
//! Only a holder may touch the value: `read` under either mode, `write` under the exclusive lock.

use serde::{Deserialize, Serialize};

use crate::ids::FenceToken;
use crate::name::ResourceName;

/// The default limit on a value, in UTF-8 bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 256 * 1024;

/// `read`: the resource's value, under a lock held with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    /// The resource.
    pub resource: ResourceName,
    /// The token of a lock this session holds on it, of either mode.
    pub token: FenceToken,
}

/// The result of `read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOk {
    /// The value, or `null` when it was never written.
    pub value: Option<String>,
}

/// `write`: replace the resource's value, under the exclusive lock held with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The resource.
    pub resource: ResourceName,
    /// The token of the exclusive lock this session holds on it.
    pub token: FenceToken,
    /// The new value.
    pub value: String,
}
