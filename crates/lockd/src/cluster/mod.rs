//! Cluster mode: the pieces that replicate the lock table through openraft.
//!
//! The modules here are generic over openraft's `RaftTypeConfig` and know nothing of locks:
//! [`log_store`] keeps the Raft log and vote in the node's redb database, [`network`] sends
//! Raft RPCs to peers over TCP and [`peer_server`] answers them. The lock-table state machine
//! and the cluster driver build on these.

pub mod log_store;
pub mod network;
pub mod peer_server;
pub mod wire;

#[cfg(test)]
mod testing;
