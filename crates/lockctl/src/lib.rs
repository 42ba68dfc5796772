//! A small async client for lockd, and the library the `lockctl` CLI is built on.
//!
//! One [`Client`] is one connection, and so one lockd session. It can have many requests in
//! flight at once (replies are matched by id), so one client serves many locks concurrently.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockctl::ClientError> {
//! use lockctl::{Client, LockMode};
//!
//! let client = Client::connect("127.0.0.1:5555").await?;
//! let _keepalive = client.spawn_keepalive(std::time::Duration::from_secs(5));
//! let lock = client.acquire("jobs/nightly", LockMode::Exclusive, None).await?;
//! client.write("jobs/nightly", lock.token, "last run: today").await?;
//! client.release("jobs/nightly", lock.token).await?;
//! # Ok(()) }
//! ```

pub mod cli;
mod client;

pub use client::{AcquireCall, AcquireProgress, Client, ClientError, Keepalive, DEFAULT_ADDR};
pub use protocol::cmd::{AcquireOk, HelloOk, ResourceStatus};
pub use protocol::{ErrorBody, ErrorCode, FenceToken, LockMode, ResourceName, SessionId};
