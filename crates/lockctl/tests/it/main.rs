//! Tests of the client library and the real `lockctl` binary against an in-process lockd
//! server (the same `lockd::server::run` the daemon runs) on 127.0.0.1:0, and against an
//! in-process three-node cluster whose leader is killed.

// A test that unwraps fails loudly with the value in the message, which is what we want here.
#![allow(clippy::unwrap_used)]

mod backup;
mod cli;
mod cluster_support;
mod election;
mod failover;
mod flock;
mod help;
mod hints;
// The lockd tests' TCP proxy that blackholes a link with both sockets left open.
#[path = "../../../lockd/tests/it/fault_proxy.rs"]
mod fault_proxy;
mod library;
mod multi;
mod readme;
mod safety;
mod semaphores;
mod support;
mod timeouts;
mod tls_docs;
mod watch;
