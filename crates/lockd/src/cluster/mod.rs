//! Cluster mode: the lock table replicated over Raft (openraft), so that losing a node loses
//! nothing and stops nobody for long.
//!
//! Lock-specific: [`types`] says what is replicated; `machine.rs` applies committed entries to
//! the lock table and delivers the resulting frames to the sessions connected here, and
//! [`snapshot_store`] keeps its snapshots, a file each;
//! `frontend.rs` is the cluster's stand-in for the single server's driver (it proposes every
//! request, and on the leader keeps leases, see `leases.rs`, and checks resumes, see
//! [`resume`]); [`node`] starts a node.
//!
//! Generic over openraft's `RaftTypeConfig`, knowing nothing of locks: [`log_store`] keeps
//! the Raft log and vote in append-only files of its own (`wal.rs`), [`network`] sends Raft RPCs to peers
//! over TCP and [`peer_server`] answers them, in [`wire`]'s frames.

pub(crate) mod append_check;
pub(crate) mod election_timer;
pub(crate) mod frontend;
pub mod leader_contact;
pub(crate) mod leases;
pub mod log_store;
pub(crate) mod machine;
pub(crate) mod membership;
pub mod network;
pub mod node;
pub mod peer_admission;
pub mod peer_server;
pub mod resume;
pub(crate) mod retries;
pub mod snapshot_store;
pub mod transport;
pub mod types;
pub(crate) mod wal;
pub mod wire;

#[cfg(test)]
mod testing;

#[cfg(test)]
mod disk_stall_tests;
#[cfg(test)]
mod election_tests;
#[cfg(test)]
mod test_cluster;

#[cfg(test)]
mod compat_tests;
