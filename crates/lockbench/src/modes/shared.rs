//! `shared`: readers and one writer on one resource.
//!
//! Connection 0 takes the lock exclusively, every other connection in shared mode, each in the
//! same acquire/release loop. Readers share the lock with each other; the writer must wait for
//! every reader ahead of it to leave, and readers that arrive after the writer queue behind it
//! (lockd never lets a later reader overtake a waiting writer). Measured: grants/s of readers
//! and of the writer, the writer's wait, and how evenly the readers were served.

use anyhow::Result;
use serde_json::json;

use crate::bench::{Bench, Mode};
use crate::clients::lockd::Mode as LockMode;
use crate::clients::Target;
use crate::measure::{run_loops, Latency};
use crate::report::{round, Fairness, Record, Report};

/// Runs readers and one writer against lockd.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    // At least one reader next to the writer, or there is nothing to share.
    let connections = bench.connections(Mode::Shared).max(2);
    let prefix = bench.run_prefix();
    let resource = format!("{prefix}shared");
    eprintln!(
        "lockbench: shared, lockd, 1 writer and {} readers",
        connections - 1
    );
    let lockers = bench
        .lockd_lockers(
            connections,
            |_| resource.clone(),
            |i| {
                if i == 0 {
                    LockMode::Exclusive
                } else {
                    LockMode::Shared
                }
            },
        )
        .await?;
    let outcome = run_loops(lockers, bench.window, false, bench.lockd_cpu()).await?;
    let seconds = outcome.elapsed.as_secs_f64().max(1e-9);
    let (writer, readers) = outcome.per_loop.split_at(1);
    let writer_grants: u64 = writer.iter().map(|stats| stats.pairs).sum();
    let reader_grants: u64 = readers.iter().map(|stats| stats.pairs).sum();
    let mut reader_acquire = Latency::new();
    for stats in readers {
        reader_acquire.merge(&stats.acquire);
    }
    let mut record = Record::from_loops(Mode::Shared, None, Target::Lockd, bench.window, &outcome)
        .with("writers", 1)
        .with("readers", readers.len())
        .with(
            "writer_grants_per_s",
            round(writer_grants as f64 / seconds, 1),
        )
        .with(
            "reader_grants_per_s",
            round(reader_grants as f64 / seconds, 1),
        );
    // Fairness among readers: the writer is expected to get fewer grants than any reader.
    record.fairness = Fairness::of(readers.iter().map(|stats| stats.pairs));
    if let Some(summary) = writer.first().and_then(|stats| stats.acquire.summary()) {
        record.latency_us.insert("writer_acquire", summary);
    }
    if let Some(summary) = reader_acquire.summary() {
        record.latency_us.insert("reader_acquire", summary);
    }
    record = record.with("fairness_over", json!("readers"));
    report.push(record)
}
