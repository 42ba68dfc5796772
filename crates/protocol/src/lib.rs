//! The wire protocol of lockd, version 1: newline-delimited JSON frames.
//!
//! This crate is shared by the server and by clients. It defines the frames and their types,
//! parses and validates requests (including resource names), and cuts byte streams into lines.
//! It does no I/O of its own and knows nothing of locks beyond their names; docs/protocol.md is
//! the human-readable contract and must agree with it.
//!
//! - [`frame`]: lines of at most N bytes.
//! - [`cmd`]: requests, one module per command family, with their result types.
//! - [`reply`]: server frames, and [`reply::Incoming`] for clients reading them.
//! - [`error`]: the error codes.

pub mod client_env;
pub mod cmd;
pub mod error;
pub mod frame;
pub mod ids;
pub mod name;
pub mod reply;

pub use cmd::{Command, Op, Request, RequestError};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{FenceToken, LockMode, RequestId, SessionId};
pub use name::ResourceName;
pub use reply::{Incoming, ReplyBody, ServerFrame};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
