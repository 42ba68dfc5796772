//! Integration tests of the real `lockd` binary over TCP. One test binary; one module per area.

// A test that unwraps fails loudly with the value in the message, which is what we want here.
#![allow(clippy::unwrap_used)]

mod admin;
mod chaos;
mod cluster;
mod dashboard;
mod durability;
mod fault_proxy;
mod fsync;
mod hardening;
mod ops;
mod process;
mod queueing;
mod safety;
mod semaphores;
mod sessions;
mod support;
mod tls;
