//! Cluster mode: the pieces that replicate the lock table through openraft.
//!
//! The modules here are generic over openraft's `RaftTypeConfig` and know nothing of locks:
//! [`log_store`] keeps the Raft log and vote in the node's redb database. The lock-table state
//! machine and the cluster driver build on these.

pub mod log_store;

#[cfg(test)]
mod testing;
