//! The sans-IO core of lockd: the lock table and the types it speaks.
//!
//! Invariant: nothing under `core` touches a socket, a file, a task or a clock. Time comes in as
//! a `now: Instant` argument, and decisions go out as return values and [`Effect`]s.

mod effect;
mod elect;
mod image;
mod multi;
mod observation;
mod queue;
mod session;
mod table;
mod watch;

pub use effect::{Effect, LockError, WaitFailure};
pub use image::{ImageError, ImageWriter, TableImage, TableSnapshot};
pub use multi::AcquiredMany;
pub use observation::{HoldEnd, Observation, SessionEnd, WaitEnd};
pub use queue::Claim;
pub use table::{
    Acquired, ForcedRelease, LockTable, StatusPage, TableConfig, DEFAULT_MAX_RESOURCES_PER_ACQUIRE,
    DEFAULT_MAX_STATUS_LIMIT, MAX_RESOURCES_PER_ACQUIRE, MIN_TOKEN_BLOCK, TOKEN_BLOCK,
};

#[cfg(test)]
mod delay_tests;
#[cfg(test)]
mod elect_tests;
#[cfg(test)]
mod harness;
#[cfg(test)]
mod multi_tests;
#[cfg(test)]
mod observe_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod semaphore_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
