//! A small async client for lockd, and the library the `lockctl` CLI is built on.
//!
//! One [`Client`] is one connection, and so one lockd session. It can have many requests in
//! flight at once (replies are matched by id), so one client serves many locks concurrently.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockctl::ClientError> {
//! use lockctl::Client;
//!
//! // Connects, says hello, and pings at a third of the lease from now on.
//! let client = Client::connect("127.0.0.1:5555").await?;
//! let lock = client.lock("jobs/nightly").timeout(std::time::Duration::from_secs(30)).acquire().await?;
//! lock.write("last run: today").await?;
//! println!("ran under fencing token {}", lock.token());
//! lock.release().await?;
//! # Ok(()) }
//! ```
//!
//! Examples that run against a live lockd are in `crates/lockctl/examples/`.

pub mod cli;
mod client;
mod cluster;
mod lock;
mod tls;

pub use client::{
    AcquireCall, AcquireProgress, Client, ClientBuilder, ClientError, Keepalive, DEFAULT_ADDR,
};
pub use lock::{LockGuard, LockRequest};
pub use protocol::cmd::{AcquireOk, ClusterMember, ClusterStatusOk, HelloOk, ResourceStatus};
pub use protocol::{ErrorBody, ErrorCode, FenceToken, LockMode, ResourceName, SessionId};
pub use tls::TlsOptions;
