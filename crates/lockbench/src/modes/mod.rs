//! The benchmarks, one module each. A mode is a variant of [`Mode`] (in `bench.rs`) plus an
//! async `run` that measures through [`Bench`] and pushes its records to the [`Report`]; adding
//! one is a new module, a variant, and a few match arms.
//!
//! The modes import only the shared bench API (`bench`, `clients`, `measure`, `report`), never
//! this module or each other, and nothing but `main.rs` imports this module.

mod contended;
mod failover;
mod multi;
mod reads;
mod scale;
mod semaphore;
mod shared;
mod uncontended;
mod watch;
mod writes;

use anyhow::Result;

use crate::bench::{Bench, Mode};
use crate::report::Report;

/// Runs the benchmark `mode` and pushes one record per run to `report`.
pub async fn run(mode: Mode, bench: &mut Bench, report: &mut Report) -> Result<()> {
    match mode {
        Mode::Uncontended => uncontended::run(bench, report).await,
        Mode::Contended => contended::run(bench, report).await,
        Mode::Semaphore => semaphore::run(bench, report).await,
        Mode::Shared => shared::run(bench, report).await,
        Mode::Scale => scale::run(bench, report).await,
        Mode::Writes => writes::run(bench, report).await,
        Mode::Multi => multi::run(bench, report).await,
        Mode::Watch => watch::run(bench, report).await,
        Mode::Reads => reads::run(bench, report).await,
        Mode::Failover => failover::run(bench, report).await,
    }
}
