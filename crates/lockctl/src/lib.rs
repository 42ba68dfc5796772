//! A small async client for lockd, and the library the `lockctl` CLI is built on.
//!
//! One [`Client`] is one lockd session, over one connection at a time. It can have many
//! requests in flight at once (replies are matched by id), so one client serves many locks
//! concurrently. Given a cluster's addresses (`"a:5555,b:5555,c:5555"`), it finds the leader,
//! and when the leader fails it resumes the session on the next one, locks and all.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockctl::ClientError> {
//! use lockctl::Client;
//!
//! // Connects, says hello, and pings at a quarter of the lease from now on.
//! let client = Client::connect("127.0.0.1:5555").await?;
//! let lock = client.lock("jobs/nightly").timeout(std::time::Duration::from_secs(30)).acquire().await?;
//! lock.write("last run: today").await?;
//! println!("ran under fencing token {}", lock.token());
//! lock.release().await?;
//! # Ok(()) }
//! ```
//!
//! Examples that run against a live lockd are in `crates/lockctl/examples/`.

mod calls;
pub mod cli;
mod client;
mod cluster;
mod election;
mod error;
mod leader;
pub mod lease;
mod link;
mod lock;
mod multi;
mod session;
mod timeouts;
mod tls;
mod watch;

pub use client::{AcquireCall, AcquireProgress, Client, ClientBuilder, Keepalive, DEFAULT_ADDR};
pub use election::{Election, Leader, LeaderStream, Leadership};
pub use error::{ClientError, ConnectFailure};
pub use link::check_address;
pub use lock::{LockGuard, LockRequest};
pub use multi::{MultiLockGuard, MultiLockRequest};
pub use protocol::cmd::{
    AcquireManyOk, AcquireOk, ClusterMember, ClusterStatusOk, HelloOk, MemberToken, Permits,
    ResourceStatus, WatchChange, WatchEvent, WatchHolder, WatchState, MAX_PERMIT_LIMIT,
};
pub use protocol::{ErrorBody, ErrorCode, FenceToken, LockMode, ResourceName, SessionId};
pub use timeouts::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REPLY_TIMEOUT};
pub use tls::TlsOptions;
pub use watch::WatchStream;
