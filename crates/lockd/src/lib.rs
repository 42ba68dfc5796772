//! lockd: a lock server with FIFO queues, shared and exclusive locks, and fencing tokens.

pub mod core;
