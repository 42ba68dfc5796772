//! Integration tests of the real `lockd` binary over TCP. One test binary; one module per area.

// A test that unwraps fails loudly with the value in the message, which is what we want here.
#![allow(clippy::unwrap_used)]

mod admin;
mod admin_limits;
mod chaos;
mod cluster;
mod config;
mod dashboard;
mod deploy;
mod docs;
mod durability;
mod fault_proxy;
mod fsync;
mod hardening;
mod multi;
mod ops;
mod process;
mod queueing;
mod replies;
mod safety;
mod semaphores;
mod sessions;
mod support;
mod tls;
mod watch;
