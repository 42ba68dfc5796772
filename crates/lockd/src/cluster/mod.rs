//! Cluster mode: the lock table replicated over Raft (openraft), so that losing a node loses
//! nothing and stops nobody for long.
//!
//! `types.rs` says what is replicated; `machine.rs` applies committed entries to the lock table
//! and delivers the resulting frames to the sessions connected here.

pub mod log_store;
pub mod network;
pub mod peer_server;
pub mod types;
pub mod wire;

#[cfg(test)]
mod testing;
pub(crate) mod frontend;
pub(crate) mod leases;
pub(crate) mod machine;
pub mod node;
