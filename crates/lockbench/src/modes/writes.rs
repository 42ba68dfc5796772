//! `writes`: writers each take a resource of their own, write a value to it and release it, in
//! a loop, against lockd's durable store: writes/s and commits/s.
//!
//! lockd acknowledges a write only after the commit that holds it has been fsynced, and the
//! writes it applies while one commit runs share the next (group commit). One writer therefore
//! waits for a commit per write; many writers should share commits, so that writes/s grows with
//! writers while commits/s stays near what the disk allows. The run with one writer is the baseline
//! the target compares with. Commits come from lockd's `/metrics`, which lockbench can read
//! only from the lockd it started; against `--server` they are not reported.

use anyhow::Result;

use crate::bench::{connect_each, Bench, Mode};
use crate::clients::lockd::WritingLocker;
use crate::clients::Target;
use crate::measure::run_loops_counting;
use crate::report::{round, Record, Report};

/// Runs one writer, then `--connections` writers (64 by default).
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let connections = bench.connections(Mode::Writes);
    let mut sizes = vec![1];
    if connections > 1 {
        sizes.push(connections);
    }
    for writers in sizes {
        let prefix = bench.run_prefix();
        eprintln!("lockbench: writes, lockd, {writers} writers");
        let addr = bench.lockd_addr;
        let lockers = connect_each(writers, |i| {
            WritingLocker::connect(addr, format!("{prefix}w{i}"))
        })
        .await?;
        let outcome = run_loops_counting(
            lockers,
            bench.window,
            false,
            bench.lockd_cpu(),
            bench.store_commits(),
        )
        .await?;
        let mut record = Record::from_loops(
            Mode::Writes,
            Some("writers"),
            Target::Lockd,
            bench.window,
            &outcome,
        )
        .with("writers", writers);
        if let Some(commits) = outcome.commits {
            let seconds = outcome.elapsed.as_secs_f64().max(1e-9);
            record = record
                .with("commits", commits)
                .with("commits_per_s", round(commits as f64 / seconds, 1));
            if commits > 0 {
                let writes = record.ops as f64;
                record = record.with("writes_per_commit", round(writes / commits as f64, 2));
            }
        }
        report.push(record)?;
    }
    Ok(())
}
