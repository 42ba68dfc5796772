//! `semaphore`: every connection takes turns on one semaphore of [`LIMIT`] permits.
//!
//! Each loop asks for one permit, releases it at once and asks again, so with more connections
//! than permits lockd's queue always holds the rest and every grant after the first [`LIMIT`] is
//! a handoff, as in `contended`, which is this mode with a limit of 1. Measured: grants/s, the
//! handoff latency, and grants per connection (max/min is 1.0 when grants are strictly FIFO).
//! lockd only: Redis has no semaphore to compare with.

use anyhow::Result;

use crate::bench::{Bench, Mode};
use crate::clients::lockd::Mode as LockMode;
use crate::clients::Target;
use crate::measure::run_loops;
use crate::report::{Record, Report};

/// The semaphore's limit: the figure is 16 clients on a limit of 4.
const LIMIT: u16 = 4;

/// Runs the loop against lockd.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let connections = bench.connections(Mode::Semaphore);
    let prefix = bench.run_prefix();
    let resource = format!("{prefix}semaphore");
    eprintln!("lockbench: semaphore of {LIMIT}, lockd, {connections} connections");
    let lockers = bench
        .lockd_lockers(
            connections,
            |_| resource.clone(),
            |_| LockMode::Permit { limit: LIMIT },
        )
        .await?;
    let outcome = run_loops(lockers, bench.window, true, bench.lockd_cpu()).await?;
    report.push(
        Record::from_loops(Mode::Semaphore, None, Target::Lockd, bench.window, &outcome)
            .with("limit", LIMIT),
    )?;
    Ok(())
}
