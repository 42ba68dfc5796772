//! lockd: a lock server with FIFO queues, shared and exclusive locks, and fencing tokens.
//!
//! - [`cluster`]: cluster mode, the table replicated over Raft.
//! - [`core`]: the lock table, a deterministic state machine with no I/O and no clock.
//! - [`server`]: the Tokio side: the accept loop and shutdown, around one backend (the single
//!   server's driver, or a cluster node's front end) behind one seam that connections and the
//!   admin HTTP API (metrics, probes, `/v1/locks`, the live dashboard) talk to.
//! - [`data_dir`]: the data directory and its single-owner lock.
//! - [`store`]: values and the token reservation on disk.
//! - [`tls`]: the TLS acceptor for `--tls-cert`/`--tls-key`.
//!
//! `main.rs` only parses flags, sets up logging and signals, and calls
//! [`Server::run`](server::Server::run).

pub mod cluster;
pub mod core;
pub mod credentials;
pub mod data_dir;
pub mod idle_poll;
pub mod logging;
pub mod server;
pub mod store;
pub mod tls;

mod admin;
mod apply;
mod connection;
mod metrics;
mod pause;
mod report;
mod seam;
mod secret;
mod single;
